"""Records signed by their writers, and the check of a signature.

A record carries its writer's *credential* in ``owner_key_id`` and a
signature over :meth:`.records.Record.signed_bytes` (which covers the
credential too, so it cannot be swapped):

- in an open ring, the raw 32-byte Ed25519 public key of the node
  (``state_dir/node.key``) or of a user;
- in a CA ring, the writer's node certificate (DER), whose key signs and
  whose subjectAltNames say which SIP domains it may write for; the CA's
  own certificate signs what only the CA may (``sosimple rebind``).

Ed25519 costs ~50 µs a check, so a signature is checked once: the digests
of records already verified (and of those refused) are remembered, and a
certificate is parsed once.  Keys of other types (a CA's EC or RSA key)
verify too; they are only slower.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from .records import Record

#: the length of a raw Ed25519 public key
RAW_KEY_BYTES = 32


class CredentialError(ValueError):
    """A credential that is neither a raw Ed25519 key nor a certificate."""


def fingerprint(public_key: Any) -> str:
    """How domain records and the CLI name a key: the hex of a raw Ed25519
    key (64 digits), else ``sha256:`` and the hex digest of its DER form."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


@attrs.frozen(eq=False)
class Credential:
    """Who signed a record: the key, and the certificate that vouches for it (if any)."""

    public_key: Any
    fingerprint: str
    certificate: x509.Certificate | None = None


@lru_cache(maxsize=4096)
def credential(raw: bytes) -> Credential:
    """The credential a record carries (parsed once per distinct value)."""
    if len(raw) == RAW_KEY_BYTES:
        key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        return Credential(key, fingerprint(key))
    if raw[:1] == b"\x30":
        try:
            cert = x509.load_der_x509_certificate(raw)
            key = cert.public_key()
        except ValueError as e:
            raise CredentialError(f"an unreadable certificate ({e})") from None
        return Credential(key, fingerprint(key), cert)
    raise CredentialError("the record names no writer key" if not raw else "an unknown kind of writer credential")


def credential_bytes(private_key: Any, certificate: x509.Certificate | None = None) -> bytes:
    """What a writer puts in ``owner_key_id``: its certificate, or its raw Ed25519 key."""
    if certificate is not None:
        return certificate.public_bytes(serialization.Encoding.DER)
    if not isinstance(private_key, ed25519.Ed25519PrivateKey):
        raise CredentialError("without a certificate only an Ed25519 key can sign records")
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_bytes(private_key: Any, data: bytes) -> bytes:
    if isinstance(private_key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return private_key.sign(data)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise CredentialError(f"cannot sign with a {type(private_key).__name__}")


def verify_bytes(public_key: Any, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


class Signer:
    """Signs the records this node (or a CLI acting for a key) writes."""

    def __init__(self, private_key: Any, certificate: x509.Certificate | None = None) -> None:
        self.private_key = private_key
        self.credential = credential_bytes(private_key, certificate)
        self.fingerprint = fingerprint(private_key.public_key())

    def sign(self, record: Record) -> Record:
        """``record`` with our credential and signature."""
        unsigned = attrs.evolve(record, owner_key_id=self.credential, signature=b"")
        return attrs.evolve(unsigned, signature=sign_bytes(self.private_key, unsigned.signed_bytes()))


def digest(record: Record) -> bytes:
    """What identifies one signed version (for the verified/refused caches)."""
    return hashlib.sha256(record.signed_bytes() + record.signature).digest()


class SignatureCheck:
    """Checks signatures, each distinct version once."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self._good: set[bytes] = set()
        self._bad: dict[bytes, str] = {}
        self.checked = 0

    def remember(self, record: Record) -> None:
        """A version we signed ourselves: no need to check it again."""
        self._add(self._good, digest(record))

    def _add(self, where: Any, d: bytes, why: str | None = None) -> None:
        if len(where) >= self.LIMIT:
            where.clear()
        if why is None:
            where.add(d)
        else:
            where[d] = why

    def check(self, record: Record) -> tuple[Credential | None, str | None]:
        """(the writer's credential, None) or (maybe a credential, why it fails)."""
        try:
            cred = credential(record.owner_key_id)
        except (CredentialError, ValueError) as e:
            return None, str(e)
        if not record.signature:
            return cred, "the record is not signed"
        d = digest(record)
        if d in self._good:
            return cred, None
        why = self._bad.get(d)
        if why is not None:
            return cred, why
        self.checked += 1
        if verify_bytes(cred.public_key, record.signature, record.signed_bytes()):
            self._add(self._good, d)
            return cred, None
        why = "a bad signature"
        self._add(self._bad, d, why)
        return cred, why


def load_public_key(data: bytes) -> Any:
    """A public key from a PEM (public key, private key or certificate), a
    DER SubjectPublicKeyInfo, a raw Ed25519 key or the hex of one."""
    if len(data) == RAW_KEY_BYTES:
        return ed25519.Ed25519PublicKey.from_public_bytes(data)
    if data[:1] == b"\x30":
        try:
            return serialization.load_der_public_key(data)
        except ValueError:
            pass
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        if b"CERTIFICATE-----" in text:
            return x509.load_pem_x509_certificate(text).public_key()
        if b"PRIVATE KEY-----" in text:
            return serialization.load_pem_private_key(text, password=None).public_key()
        return serialization.load_pem_public_key(text)
    try:
        raw = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise CredentialError("neither a PEM key or certificate nor the hex of an Ed25519 key") from None
    if len(raw) != RAW_KEY_BYTES:
        raise CredentialError(f"an Ed25519 key is {RAW_KEY_BYTES} bytes, not {len(raw)}")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)
