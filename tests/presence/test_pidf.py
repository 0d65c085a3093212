"""PIDF (RFC 3863): checking published documents, composing devices, deriving from registrations."""

import pytest

from sosimple_proxy.presence import pidf
from sosimple_proxy.testing.presence_ua import pidf_document


def test_devices_compose_into_one_document_with_unique_tuple_ids():
    a = pidf_document("bob@example.com", "open", "desk").encode()
    b = pidf_document("bob@example.com", "closed", "phone").encode()  # the same tuple id, t1
    doc = pidf.compose("sip:bob@example.com", [("e1", a), ("e2", b)])
    root = pidf.check(doc)
    ids = [t.get("id") for t in pidf.tuples(doc)]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert pidf.basic(doc) == ["open", "closed"]
    assert root.get("entity") == "sip:bob@example.com"
    assert b"desk" in doc and b"phone" in doc


def test_derived_is_open_per_contact_or_one_closed_tuple():
    assert pidf.basic(pidf.derived("sip:bob@example.com", [])) == ["closed"]
    doc = pidf.derived("sip:bob@example.com", ["sip:bob@192.0.2.1", "sip:bob@192.0.2.2", "sip:bob@192.0.2.1"])
    assert pidf.basic(doc) == ["open", "open"]


@pytest.mark.parametrize(
    "body",
    [b"not xml", b"<presence/>", b'<!DOCTYPE x [<!ENTITY a "b">]><presence xmlns="urn:ietf:params:xml:ns:pidf"/>',
     b"<x>" * 10000],
)
def test_what_is_not_a_pidf_document_is_refused(body):
    with pytest.raises(pidf.PidfError):
        pidf.check(body)
