"""Certificates made by the tests: a CA and leaves with chosen names.

    ca = CA("Test CA")
    leaf = ca.issue(cn="example.com", sip_uris=["sip:example.com"], dns=["example.com"])
    cert_path, key_path = leaf.write(tmp_path, "server")   # PEM files
    ca.write(tmp_path)                                    # ca.pem

EC P-256 keys keep generation fast.  ``days`` and ``not_before`` make
expired or not-yet-valid certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@attrs.define
class Issued:
    """A certificate with its key, and the chain up to (not including) the root."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: Sequence[x509.Certificate] = ()

    @property
    def cert_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.cert, *self.chain))

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``name.pem`` (leaf then chain) and ``name.key``; their paths."""
        cert_path, key_path = Path(directory) / f"{name}.pem", Path(directory) / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


class CA:
    """A self-signed root (or, with ``parent``, an intermediate) that issues leaves."""

    def __init__(self, cn: str = "sosimple test CA", parent: CA | None = None) -> None:
        self.key = _key()
        issuer_key = parent.key if parent else self.key
        issuer_name = parent.cert.subject if parent else _name(cn)
        self.parent = parent
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, name: str = "ca") -> Path:
        """The root's certificate as ``name.pem`` (the trust bundle)."""
        path = Path(directory) / f"{name}.pem"
        path.write_bytes(self.pem)
        return path

    def _chain(self) -> tuple[x509.Certificate, ...]:
        """Intermediates from this CA up to (not including) the root."""
        return (self.cert, *self.parent._chain()) if self.parent else ()

    def issue(
        self,
        cn: str | None = None,
        sip_uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: float = 30,
        not_before: datetime.datetime | None = None,
    ) -> Issued:
        """A leaf for TLS servers and clients, with a subjectAltName made of
        ``sip_uris`` (URI entries), ``dns`` and ``ips`` (none at all when all
        are empty), and CN ``cn`` if given."""
        key = _key()
        start = not_before or _now() - datetime.timedelta(hours=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in sip_uris]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            # PKIX: critical when the subject is empty.
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=cn is None)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert, key, self._chain())
