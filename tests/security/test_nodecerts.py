"""Node certificates: a key and request, the CA's certificate, id and domains read back."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from sosimple_proxy.security import nodecerts
from sosimple_proxy.security.tls import sip_domain_identities
from tests.certs import CA

NODE_ID = 0x00C0FFEE00000000000000000000000000000001


def issue(ca: CA, node_id: int = NODE_ID, domains=("example.com", "Other.TEST"), **kw) -> tuple[x509.Certificate, ed25519.Ed25519PrivateKey]:
    key = nodecerts.generate_key()
    csr = nodecerts.make_csr(key)
    return nodecerts.sign_node(csr, ca.cert, ca.key, node_id, list(domains), **kw), key


def test_sign_round_trip_carries_id_and_domains():
    ca = CA("Ring CA")
    cert, key = issue(ca)
    assert nodecerts.node_id_of(cert) == NODE_ID
    assert nodecerts.domains_of(cert) == ("example.com", "other.test")
    assert cert.public_key() == key.public_key()
    assert nodecerts.issued_by(cert, ca.cert)
    assert not nodecerts.issued_by(cert, CA("Another CA").cert)
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris[0] == "urn:sosimple:node:00c0ffee00000000000000000000000000000001"
    # the domains are RFC 5922 SIP domain identities as well
    assert sip_domain_identities(cert) == ("uri", ("example.com", "other.test"))
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == nodecerts.DEFAULT_DAYS


def test_validity_days_and_pem_round_trip():
    cert, _ = issue(CA(), days=7)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc) == datetime.timedelta(days=7)
    again = x509.load_pem_x509_certificate(nodecerts.pem(cert))
    assert nodecerts.node_id_of(again) == NODE_ID


def test_a_certificate_without_a_node_id_names_none():
    leaf = CA().issue(cn="example.com", sip_uris=["sip:example.com"])
    with pytest.raises(nodecerts.NodeCertError, match="names no node id"):
        nodecerts.node_id_of(leaf.cert)


@pytest.mark.parametrize(
    "text, problem",
    [("xyz", "not a hex node id"), ("1" + "0" * 40, "more than 160 bits"), ("", "not a hex node id")],
)
def test_bad_ids_are_refused(text, problem):
    with pytest.raises(nodecerts.NodeCertError, match=problem):
        nodecerts.parse_id(text)


def test_ids_and_domains_parse():
    assert nodecerts.parse_id("0xFF") == 255
    assert nodecerts.format_id(255) == "0" * 38 + "ff"
    assert nodecerts.parse_domains("Example.com, other.test example.com") == ("example.com", "other.test")
    with pytest.raises(nodecerts.NodeCertError, match="not a domain"):
        nodecerts.parse_domains("exa mple..com")


def test_the_ca_key_must_match_the_ca_certificate():
    ca, other = CA(), CA()
    csr = nodecerts.make_csr(nodecerts.generate_key())
    with pytest.raises(nodecerts.NodeCertError, match="does not belong"):
        nodecerts.sign_node(csr, ca.cert, other.key, 1, [])


def test_private_files_are_0600(tmp_path):
    import os

    path = str(tmp_path / "node.key")
    nodecerts.write_private(path, nodecerts.key_pem(nodecerts.generate_key()))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert isinstance(nodecerts.load_private_key(path), ed25519.Ed25519PrivateKey)
