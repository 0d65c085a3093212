"""Parsed views survive edits of other headers (issue 12): a proxy adds a
Via or decrements Max-Forwards without parsing From, To, CSeq again."""

from __future__ import annotations

import pytest

from sosimple_proxy.proxy.routing import copy_request
from sosimple_proxy.sip.parser import parse_message

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")

RAW = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:p1.example.com;lr>\r\n"
    b"From: <sip:alice@example.com>;tag=a1\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b"Call-ID: c1@192.0.2.1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_an_edit_keeps_the_views_of_other_headers_only():
    msg = parse_message(RAW)
    frm, to, cseq, routes, via = msg.from_, msg.to, msg.cseq, msg.routes, msg.top_via
    calls = msg.cached("custom", lambda: object())
    msg.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb")
    assert msg.from_ is frm and msg.to is to and msg.cseq is cseq and msg.routes is routes
    assert msg.top_via is not via and msg.top_via.host == "192.0.2.9"
    assert [v.host for v in msg.vias] == ["192.0.2.9", "192.0.2.1"]
    assert msg.cached("custom", lambda: object()) is not calls  # unknown views: dropped on any edit
    msg.headers.set("To", "<sip:bob@example.com>;tag=b2")
    assert msg.to is not to and msg.to.tag == "b2" and msg.from_ is frm
    msg.headers.pop_first_value("route")
    assert msg.routes == [] and msg.cseq is cseq
    msg.headers.set("Max-Forwards", "69")
    assert msg.max_forwards == 69


def test_many_edits_drop_every_view():
    msg = parse_message(RAW)
    frm = msg.from_
    for i in range(20):
        msg.headers.add("X-Thing", str(i))
    assert msg.from_ is not frm and msg.from_.tag == "a1"


def test_replaced_headers_drop_every_view():
    msg = parse_message(RAW)
    frm = msg.from_
    other = parse_message(RAW.replace(b"tag=a1", b"tag=zz"))
    msg.headers = other.headers.copy()
    assert msg.from_.tag == "zz" and msg.from_ is not frm


def test_a_proxy_copy_adopts_the_views_and_edits_its_own():
    msg = parse_message(RAW)
    frm, via = msg.from_, msg.top_via
    copy = copy_request(msg)
    assert copy.from_ is frm and copy.top_via is via
    copy.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb")
    assert copy.top_via.host == "192.0.2.9" and msg.top_via is via  # the original is untouched
    assert len(msg.vias) == 1 and len(copy.vias) == 2
