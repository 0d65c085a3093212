"""Node certificates of a CA ring: the key and request a node makes, the
certificate its CA issues, and what a certificate says about its holder.

Pure functions on ``cryptography`` objects and PEM bytes, no network: the
``sosimple keygen`` and ``sign`` verbs and the ring's TLS both use them.

The CA binds two things to the node's key, both as subjectAltName URIs so
that any X.509 tool shows them (``openssl x509 -text``):

- the ring id, ``urn:sosimple:node:<hex id>`` (exactly one; 40 hex digits
  for the 160-bit ring).  The CA chooses it, so an administrator can still
  place a node; a node cannot move itself without a new certificate;
- the SIP domains its holder may write for, ``sip:example.com`` each.
  These are RFC 5922 SIP domain identities too, so the same certificate
  identifies the node's proxy to other ring members over SIP/TLS.

The node key is Ed25519, like the key an open ring derives ids from
(``state_dir/node.key``), so one key file serves both.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the subjectAltName URI prefix that carries the node's ring id
NODE_URN = "urn:sosimple:node:"
DEFAULT_BITS = 160
DEFAULT_DAYS = 365

_HEX = re.compile(r"(0x)?([0-9a-f]+)")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


class NodeCertError(ValueError):
    """A key, request or certificate that cannot be used; one readable line."""


# --- ids and domains ---------------------------------------------------------


def parse_id(text: str, bits: int = DEFAULT_BITS) -> int:
    """A hex node id (``--node-id``), checked against the ring's size."""
    m = _HEX.fullmatch(text.strip().lower())
    if not m:
        raise NodeCertError(f"{text.strip()!r} is not a hex node id")
    value = int(m.group(2), 16)
    if value >> bits:
        raise NodeCertError(f"{text.strip()!r} has more than {bits} bits")
    return value


def format_id(node_id: int, bits: int = DEFAULT_BITS) -> str:
    """The id as the certificate writes it: lower-case hex, zero-padded."""
    return format(node_id, f"0{(bits + 3) // 4}x")


def parse_domains(text: str | Iterable[str]) -> tuple[str, ...]:
    """``example.com,other.test`` (or a list) -> checked, lower-case domains."""
    words = text.replace(",", " ").split() if isinstance(text, str) else [w.strip() for w in text]
    domains: list[str] = []
    for word in words:
        domain = word.lower().rstrip(".")
        if not _DOMAIN.match(domain):
            raise NodeCertError(f"{word!r} is not a domain name")
        if domain not in domains:
            domains.append(domain)
    return tuple(domains)


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def node_id_of(cert: x509.Certificate, bits: int = DEFAULT_BITS) -> int:
    """The ring id the CA wrote into ``cert``; :class:`NodeCertError` if it
    names none, several, or a malformed one."""
    found = [u[len(NODE_URN) :] for u in _san_uris(cert) if u.lower().startswith(NODE_URN)]
    if not found:
        raise NodeCertError("the certificate names no node id (no subjectAltName URI " + NODE_URN + "...)")
    if len(found) > 1:
        raise NodeCertError("the certificate names more than one node id")
    return parse_id(found[0], bits)


def domains_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The SIP domains ``cert`` entitles its holder to write for."""
    out: list[str] = []
    for uri in _san_uris(cert):
        scheme, _, rest = uri.partition(":")
        if scheme.lower() == "sip" and rest and "@" not in rest:
            domain = rest.split(";", 1)[0].lower()
            if domain not in out:
                out.append(domain)
    return tuple(out)


# --- keys and requests --------------------------------------------------------


def generate_key() -> ed25519.Ed25519PrivateKey:
    """A new node key."""
    return ed25519.Ed25519PrivateKey.generate()


def key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_csr(key: ed25519.Ed25519PrivateKey, name: str = "sosimple node") -> x509.CertificateSigningRequest:
    """A certificate request for ``key``.  It asks for no id or domains:
    those are the CA's decision (``sosimple sign``)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, _hash_for(key))


def _hash_for(key: object) -> hashes.HashAlgorithm | None:
    """EdDSA signs without a separate hash; RSA and ECDSA with SHA-256."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def write_private(path: str, data: bytes) -> None:
    """Write a secret file with mode 0600 from the start (no window where
    others could read it), replacing any old one atomically."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --- reading files --------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NodeCertError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise NodeCertError(f"{what} {path}: cannot read ({e.strerror or e})") from None


def load_certificate(path: str, what: str = "certificate") -> x509.Certificate:
    """The first certificate of a PEM file."""
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except (ValueError, IndexError):
        raise NodeCertError(f"{what} {path}: not a PEM certificate") from None


def load_private_key(path: str, what: str = "key") -> object:
    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise NodeCertError(f"{what} {path}: not an unencrypted PEM private key ({e})") from None


def load_csr(path: str) -> x509.CertificateSigningRequest:
    data = _read(path, "request")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise NodeCertError(f"request {path}: not a PEM certificate request") from None
    if not csr.is_signature_valid:
        raise NodeCertError(f"request {path}: its signature does not verify")
    return csr


# --- the CA side ------------------------------------------------------------------


def sign_node(
    csr: x509.CertificateSigningRequest,
    ca_cert: x509.Certificate,
    ca_key: object,
    node_id: int,
    domains: Sequence[str],
    days: float = DEFAULT_DAYS,
    bits: int = DEFAULT_BITS,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """The node certificate for the key in ``csr``: its ring id and SIP
    domains as subjectAltName URIs, usable as a TLS server and client
    (members connect both ways)."""
    if not csr.is_signature_valid:
        raise NodeCertError("the certificate request's signature does not verify")
    if node_id >> bits or node_id < 0:
        raise NodeCertError(f"node id {node_id:x} has more than {bits} bits")
    if days <= 0:
        raise NodeCertError(f"{days:g} days: a certificate must be valid for a positive time")
    try:
        if ca_key.public_key() != ca_cert.public_key():  # type: ignore[attr-defined]
            raise NodeCertError("the CA key does not belong to the CA certificate")
    except AttributeError:
        raise NodeCertError("the CA key is not a private key") from None
    start = (now or datetime.datetime.now(datetime.timezone.utc)) - datetime.timedelta(minutes=5)
    hexid = format_id(node_id, bits)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE_URN + hexid)]
    names += [x509.UniformResourceIdentifier(f"sip:{d}") for d in parse_domains(list(domains))]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sosimple node {hexid}")]))
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
    )
    return builder.sign(ca_key, _hash_for(ca_key))  # type: ignore[arg-type]


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``ca_cert`` signed ``cert`` (a quick startup check; the TLS
    handshake does the full chain verification)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def pem(cert: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
