"""Self-validating nonces, the secret file, the nonce-count table; and the layer rule."""

from __future__ import annotations

import os
import stat
import threading

import pytest
from twisted.internet.task import Clock

from sosimple_proxy.security import nonces
from sosimple_proxy.security.nonces import CountVerdict, NonceCounts, NonceIssuer, NonceState, SecretFileError

SECRET = b"k" * 32


def issuer(clock, **kw):
    return NonceIssuer(clock, SECRET, "example.com", **kw)


def test_a_nonce_is_a_token_and_unique():
    clock = Clock()
    clock.advance(1_700_000_000)
    made = {issuer(clock).make() for _ in range(200)}
    assert len(made) == 200
    for nonce in made:
        assert len(nonce) == 43
        assert all(c.isalnum() or c in "-_" for c in nonce)


def test_fresh_until_the_ttl_then_expired():
    clock = Clock()
    clock.advance(1000)
    i = issuer(clock, ttl=60)
    nonce = i.make()
    assert i.check(nonce) == nonces.NonceCheck(NonceState.FRESH, 1000.0)
    clock.advance(60)
    assert i.check(nonce).state is NonceState.FRESH
    clock.advance(1)
    assert i.check(nonce).state is NonceState.EXPIRED


def test_the_timestamp_cannot_be_moved():
    """Changing the issue time inside a nonce breaks its HMAC."""
    import base64

    clock = Clock()
    clock.advance(1000)
    i = issuer(clock, ttl=60)
    raw = bytearray(base64.urlsafe_b64decode(i.make() + "="))
    raw[7] ^= 0x40  # a later issue time
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert i.check(forged).state is NonceState.FORGED


@pytest.mark.parametrize("nonce", ["", "é", "====", "A" * 43, "A" * 200, "not base64!"])
def test_garbage_is_forged(nonce):
    assert issuer(Clock()).check(nonce).state is NonceState.FORGED


def test_only_the_exact_spelling_is_accepted():
    """No second spelling of a good nonce: stray characters, padding, spare low bits."""
    import base64

    i = issuer(Clock())
    good = i.make()
    assert i.check(good).state is NonceState.FRESH
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 43 characters carry 258 bits for 256: the last one's lowest bit is spare
    respelled = good[:-1] + alphabet[alphabet.index(good[-1]) ^ 1]
    assert base64.urlsafe_b64decode(respelled + "=") == base64.urlsafe_b64decode(good + "=")
    for other in (good + "=", good[:10] + "!" + good[10:], " " + good, respelled):
        assert i.check(other).state is NonceState.FORGED, other


def test_deterministic_with_an_injected_random():
    clock = Clock()
    a = NonceIssuer(clock, SECRET, "example.com", random=lambda n: b"\x01" * n)
    b = NonceIssuer(clock, SECRET, "example.com", random=lambda n: b"\x01" * n)
    assert a.make() == b.make()


def test_counts_expire_with_their_nonce():
    clock = Clock()
    counts = NonceCounts(clock, ttl=10)
    assert counts.accept("n1", 0.0, 1) is CountVerdict.ACCEPTED
    assert counts.accept("n1", 0.0, 1) is CountVerdict.REPLAY
    clock.advance(100)
    assert counts.accept("n2", 100.0, 1) is CountVerdict.ACCEPTED
    assert len(counts) == 1


def test_secret_created_once_with_mode_0600(tmp_path):
    path = str(tmp_path / "var" / "nonce-secret")
    secret = nonces.load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert nonces.load_or_create_secret(path) == secret
    assert sorted(os.listdir(tmp_path / "var")) == ["nonce-secret"]


def test_an_administrators_secret_is_read(tmp_path):
    path = tmp_path / "secret"
    path.write_text("00112233445566778899aabbccddeeff\n")
    assert nonces.load_or_create_secret(str(path)) == bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.mark.parametrize("text, words", [("not hex", "hex digits"), ("0011", "at least 16"), ("", "at least 16")])
def test_a_bad_secret_file_is_refused(tmp_path, text, words):
    path = tmp_path / "secret"
    path.write_text(text)
    with pytest.raises(SecretFileError, match=words):
        nonces.load_or_create_secret(str(path))


def test_proxies_starting_together_agree_on_the_secret(tmp_path):
    path = str(tmp_path / "shared" / "secret")
    got = []
    threads = [threading.Thread(target=lambda: got.append(nonces.load_or_create_secret(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1
