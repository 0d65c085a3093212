"""``Authorization: Sosimple-Sig``: a user's key signs one HTTP request.

The users' store (``web/store.py``) lets the holder of the Ed25519 key bound
to an AoR read and write that AoR's data without a password::

    Authorization: Sosimple-Sig key=<hex public key>, ts=<unix seconds>, sig=<hex signature>

The signature covers four lines joined by ``\\n`` (no newline at the end),
encoded as UTF-8 (:func:`canonical`):

    METHOD          upper case, as sent (``PUT``)
    path            the request path percent-decoded, without the query
                    (``/store/alice@example.com/friends``)
    ts              the decimal seconds exactly as in the header
    body            the lower-case hex SHA-256 of the body (of b"" when none)

The path is decoded so that a client and a server that spell it
differently (``@`` or ``%40``) agree.  ``ts`` must lie within
:data:`MAX_SKEW` seconds of the server's clock; within that window a
verifier refuses a signature it has already seen (:class:`SeenSignatures`),
so a captured request cannot be played again.  Whether the key is the one
bound to the AoR is the caller's question (a ring lookup); this module has
no I/O.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .authparams import MalformedCredentials, parse_auth_header

SCHEME = "Sosimple-Sig"
#: how far ``ts`` may lie from our clock, either way (seconds)
MAX_SKEW = 300
KEY_BYTES = 32
SIG_BYTES = 64


class SignatureError(ValueError):
    """A ``Sosimple-Sig`` that does not authenticate; ``stale`` when only its ``ts`` is off."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


@attrs.frozen
class SigCredentials:
    """One parsed ``Sosimple-Sig`` header value."""

    key: bytes
    ts: str
    sig: bytes


def is_sig(value: str) -> bool:
    """Whether an ``Authorization`` value uses our scheme."""
    return value.strip().split(" ", 1)[0].lower() == SCHEME.lower()


def _hex(name: str, text: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise SignatureError(f"{name} is not hex") from None
    if len(raw) != size:
        raise SignatureError(f"{name} is {len(raw)} bytes, not {size}")
    return raw


def parse(value: str) -> SigCredentials:
    """``Sosimple-Sig key=..., ts=..., sig=...`` -> :class:`SigCredentials`; SignatureError."""
    try:
        header = parse_auth_header(value)
    except MalformedCredentials as e:
        raise SignatureError(f"malformed {SCHEME}: {e}") from None
    if header.scheme.lower() != SCHEME.lower():
        raise SignatureError(f"not {SCHEME}")
    missing = [p for p in ("key", "ts", "sig") if p not in header.params]
    if missing:
        raise SignatureError(f"{SCHEME} without {', '.join(missing)}")
    ts = header.params["ts"]
    if not ts.isdigit() or len(ts) > 15:
        raise SignatureError("ts is not a number of seconds")
    return SigCredentials(
        _hex("key", header.params["key"], KEY_BYTES), ts, _hex("sig", header.params["sig"], SIG_BYTES)
    )


def canonical(method: str, path: str, ts: str, body: bytes) -> bytes:
    """The bytes a ``Sosimple-Sig`` signs (see the module's docstring)."""
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join((method.upper(), path, ts, digest)).encode("utf-8")


def sign(private: Ed25519PrivateKey, method: str, path: str, body: bytes, now: float | None = None) -> str:
    """The ``Authorization`` value for a request, signed now (for clients and tests)."""
    ts = str(int(time.time() if now is None else now))
    public = private.public_key().public_bytes_raw()
    sig = private.sign(canonical(method, path, ts, body))
    return f"{SCHEME} key={public.hex()}, ts={ts}, sig={sig.hex()}"


class SeenSignatures:
    """Signatures accepted within the last ``2 * MAX_SKEW`` seconds (a replay
    is refused); at most ``limit`` are remembered, the oldest forgotten first."""

    def __init__(self, seconds: Callable[[], float], limit: int = 100_000) -> None:
        self._seconds = seconds
        self._limit = limit
        self._seen: dict[bytes, float] = {}

    def add(self, sig: bytes) -> bool:
        """Remember ``sig``; False when it was already there (a replay)."""
        now = self._seconds()
        for old, until in list(self._seen.items()):
            if until > now and len(self._seen) <= self._limit:
                break  # insertion order is expiry order
            del self._seen[old]
        if sig in self._seen:
            return False
        self._seen[sig] = now + 2 * MAX_SKEW
        return True


def verify(
    credentials: SigCredentials, method: str, path: str, body: bytes, now: float, seen: SeenSignatures | None = None
) -> None:
    """Raise :class:`SignatureError` unless the signature is good, fresh and new."""
    if abs(int(credentials.ts) - now) > MAX_SKEW:
        raise SignatureError(f"ts {credentials.ts} is more than {MAX_SKEW} s from the server's clock", stale=True)
    try:
        Ed25519PublicKey.from_public_bytes(credentials.key).verify(
            credentials.sig, canonical(method, path, credentials.ts, body)
        )
    except InvalidSignature:
        raise SignatureError("the signature does not verify") from None
    if seen is not None and not seen.add(credentials.sig):
        raise SignatureError("this signature was used before (a replay)")


def public_key(value: bytes) -> bytes | None:
    """The raw Ed25519 key in a bound-key record's value: 32 raw bytes, 64
    hex digits, or a PEM/DER SubjectPublicKeyInfo; None when it is none."""
    text = value.strip()
    if len(value) == KEY_BYTES:
        return value
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    from cryptography.hazmat.primitives import serialization

    # DER is binary: stripping could eat a key byte that happens to be
    # whitespace (0x0b, 0x20 ...), so it gets the value as given.
    attempts = ((serialization.load_pem_public_key, text), (serialization.load_der_public_key, value))
    for load, data in attempts:
        try:
            key = load(data)
        except (ValueError, TypeError):
            continue
        if isinstance(key, Ed25519PublicKey):
            return key.public_bytes_raw()
    return None
