"""A JSON object with a detached signature, for the ring's configuration
document (``GET /.well-known/sosimple-config``, RFC 6940 section 11 in
spirit).

The envelope (what is served)::

    {"config": {...},
     "signature": {"algorithm": "ed25519" | "ecdsa-sha256" | "rsa-pkcs1-sha256",
                   "value": "<base64 of the signature>",
                   "certificate": "<PEM of the signer>" | absent}}

What is signed is the *canonical* form of ``config``: UTF-8 JSON with sorted
keys and no spaces (``json.dumps(config, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``), so the reader recomputes it
from what it parsed and any change to any value breaks the signature.

Signed by the ring CA's own key, the envelope has no ``certificate``: the
reader checks against the CA certificate it already has (``[overlay] ca``).
Signed by a node (which holds no CA key), ``certificate`` is that node's
certificate: the reader checks that the CA issued it, then the signature
with its key.  An open ring's document has ``"signature": null``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

from sosimple_proxy.security import nodecerts


class SignatureError(ValueError):
    """The document is not signed as the reader requires; ``str()`` says why, in one line."""


def canonical(config: Any) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _algorithm(key: Any) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ed448.Ed448PrivateKey, ed448.Ed448PublicKey)):
        return "ed448"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa-sha256"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa-pkcs1-sha256"
    raise SignatureError(f"cannot sign with a {type(key).__name__}")


def sign(config: Any, key: Any, certificate: x509.Certificate | None = None) -> dict[str, Any]:
    """The envelope of ``config`` signed with ``key`` (a CA's, or a node's
    whose ``certificate`` goes along)."""
    data = canonical(config)
    algorithm = _algorithm(key)
    if algorithm in ("ed25519", "ed448"):
        value = key.sign(data)
    elif algorithm == "ecdsa-sha256":
        value = key.sign(data, ec.ECDSA(hashes.SHA256()))
    else:
        value = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    signature: dict[str, Any] = {"algorithm": algorithm, "value": base64.b64encode(value).decode("ascii")}
    if certificate is not None:
        signature["certificate"] = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return {"config": config, "signature": signature}


def _check(public_key: Any, algorithm: str, value: bytes, data: bytes) -> None:
    if _algorithm(public_key) != algorithm:
        raise SignatureError(f"signed with {algorithm!r}, but the signer's key is {_algorithm(public_key)}")
    try:
        if algorithm in ("ed25519", "ed448"):
            public_key.verify(value, data)
        elif algorithm == "ecdsa-sha256":
            public_key.verify(value, data, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(value, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise SignatureError("bad signature: the document was changed or not signed by the ring's CA") from None


def verify(envelope: Any, ca_certificates: list[x509.Certificate] | None) -> dict[str, Any]:
    """The ``config`` of a parsed envelope, once its signature is good.

    ``ca_certificates``: the ring CA(s) the reader trusts; None when the
    reader is in an open ring (then an unsigned document is accepted, and a
    signed one taken as is: the reader has nothing to check it against).
    Raises :class:`SignatureError`.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("config"), dict):
        raise SignatureError("not a configuration document (no \"config\" object)")
    config = envelope["config"]
    signature = envelope.get("signature")
    if ca_certificates is None:
        return config
    if not isinstance(signature, dict):
        raise SignatureError("the document is not signed, and this node's ring has a CA ([overlay] ca)")
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except ValueError:
        raise SignatureError("the signature is not base64") from None
    algorithm = str(signature.get("algorithm", ""))
    data = canonical(config)
    pem = signature.get("certificate")
    if pem is None:
        errors = []
        for ca in ca_certificates:
            try:
                _check(ca.public_key(), algorithm, value, data)
                return config
            except SignatureError as e:
                errors.append(str(e))
        raise SignatureError(errors[0] if errors else "no CA certificate to check the signature with")
    try:
        signer = x509.load_pem_x509_certificate(str(pem).encode("ascii"))
    except ValueError:
        raise SignatureError("the signer's certificate is not PEM") from None
    if not any(nodecerts.issued_by(signer, ca) for ca in ca_certificates):
        raise SignatureError("the signer's certificate is not issued by the ring's CA")
    _check(signer.public_key(), algorithm, value, data)
    return config


def load_cas(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (the ring's ``ca``)."""
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())
