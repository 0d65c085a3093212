"""``Sosimple-Sig``: the canonical string, parsing, verification, replays, key formats."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sosimple_proxy.security import usersig

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()


def test_the_canonical_string_is_four_lines():
    body = b"hello"
    expected = f"PUT\n/store/a@b/c\n1700000000\n{hashlib.sha256(body).hexdigest()}".encode()
    assert usersig.canonical("put", "/store/a@b/c", "1700000000", body) == expected
    assert usersig.canonical("GET", "/p", "1", b"").endswith(hashlib.sha256(b"").hexdigest().encode())


def test_sign_parse_verify_round_trip():
    header = usersig.sign(KEY, "PUT", "/store/a@b/c", b"v", now=1_700_000_000)
    assert header.startswith("Sosimple-Sig key=" + PUBLIC.hex() + ", ts=1700000000, sig=")
    creds = usersig.parse(header)
    assert (creds.key, creds.ts) == (PUBLIC, "1700000000")
    usersig.verify(creds, "PUT", "/store/a@b/c", b"v", now=1_700_000_000 + 300)
    with pytest.raises(usersig.SignatureError) as e:
        usersig.verify(creds, "PUT", "/store/a@b/c", b"v", now=1_700_000_000 + 301)
    assert e.value.stale
    for method, path, body in (("GET", "/store/a@b/c", b"v"), ("PUT", "/store/a@b/d", b"v"), ("PUT", "/store/a@b/c", b"w")):
        with pytest.raises(usersig.SignatureError, match="does not verify"):
            usersig.verify(creds, method, path, body, now=1_700_000_000)


@pytest.mark.parametrize(
    "value, problem",
    [
        ("Digest username=x", "not Sosimple-Sig"),
        ("Sosimple-Sig key=00, ts=1", "without sig"),
        ("Sosimple-Sig key=zz, ts=1, sig=00", "key is not hex"),
        (f"Sosimple-Sig key={PUBLIC.hex()[:-2]}, ts=1, sig={'00' * 64}", "key is 31 bytes"),
        (f"Sosimple-Sig key={PUBLIC.hex()}, ts=-1, sig={'00' * 64}", "ts is not a number"),
        (f"Sosimple-Sig key={PUBLIC.hex()}, ts=1, sig=00", "sig is 1 bytes"),
        ('Sosimple-Sig key="unterminated', "malformed"),
    ],
)
def test_malformed_headers(value, problem):
    with pytest.raises(usersig.SignatureError, match=problem):
        usersig.parse(value)


def test_a_signature_is_accepted_once_within_the_window():
    now = [1000.0]
    seen = usersig.SeenSignatures(lambda: now[0], limit=2)
    assert seen.add(b"a") and not seen.add(b"a")
    now[0] += 2 * usersig.MAX_SKEW + 1  # past the window: forgotten, but ts would be stale by then
    assert seen.add(b"a")
    assert seen.add(b"b") and seen.add(b"c")  # over the limit: the oldest goes
    assert seen.add(b"a")


def test_bound_key_values_in_every_format():
    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for value in (PUBLIC, PUBLIC.hex().encode(), PUBLIC.hex().encode() + b"\n", pem, der):
        assert usersig.public_key(value) == PUBLIC
    assert usersig.public_key(b"not a key") is None
    assert usersig.public_key(b"") is None


def test_a_der_key_ending_in_a_whitespace_byte_is_read_whole():
    """CI once drew a key whose last byte was 0x0b; stripping the DER lost it."""
    for seed in range(10_000):
        key = Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
        raw = key.public_key().public_bytes_raw()
        if raw[-1:].isspace():
            break
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert der[-1:].isspace()
    assert usersig.public_key(der) == raw
