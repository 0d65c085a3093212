"""Structured header values: Via, CSeq, name-addr, lists, parameters."""

from __future__ import annotations

import pytest

from sosimple_proxy.sip.grammar import split_commas
from sosimple_proxy.sip.headers import (
    CSeq,
    NameAddr,
    parse_contacts,
    parse_cseq,
    parse_max_forwards,
    parse_name_addr,
    parse_name_addr_header,
)
from sosimple_proxy.sip.parser import ParseError
from sosimple_proxy.sip.via import Via, parse_top_via, parse_vias, parse_via

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")


def test_via_basic() -> None:
    v = parse_via("SIP/2.0/UDP pc33.example.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1")
    assert (v.transport, v.host, v.port) == ("UDP", "pc33.example.com", 5066)
    assert v.branch == "z9hG4bK776asdhds"
    assert v.rport is True
    assert v.received == "192.0.2.1"
    assert v.params == {"branch": "z9hG4bK776asdhds", "rport": None, "received": "192.0.2.1"}
    assert str(v) == "SIP/2.0/UDP pc33.example.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1"


def test_via_rport_value_and_setters() -> None:
    v = parse_via("SIP/2.0/TCP h;rport=5070;branch=z9hG4bKx")
    assert v.rport == 5070 and v.port is None
    v.received = "192.0.2.9"
    v.rport = 4000
    assert str(v) == "SIP/2.0/TCP h;rport=4000;branch=z9hG4bKx;received=192.0.2.9"
    v.rport = None
    assert "rport" not in str(v)


def test_via_folded_and_lws() -> None:
    v = parse_via("SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8")
    assert (v.transport, v.host, v.branch) == ("TCP", "spindle.example.com", "z9hG4bK9ikj8")


def test_via_ipv6() -> None:
    v = parse_via("SIP/2.0/UDP [2001:db8::9:1]:5060;received=2001:db8::9:255;branch=z9hG4bKas3")
    assert v.host == "2001:db8::9:1" and v.port == 5060
    assert v.received == "2001:db8::9:255"
    assert str(v).startswith("SIP/2.0/UDP [2001:db8::9:1]:5060;")
    # RFC 5118 4.5: with delimiters is accepted too.
    assert parse_via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255]").received == "2001:db8::9:255"


@pytest.mark.parametrize(
    "bad",
    [
        "SIP/2.0/UDP 192.0.2.15;;",
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "SIP/2.0/UDP 2001:db8::1",
        "SIP/2.0/UDP [2001:db8:::192.0.2.1]",
        "SIP/2.0/UDP h;received=foo",
        "SIP/2.0/UDP h;ttl=256",
        "SIP/2.0/UDP h;rport=x",
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h;branch",
    ],
)
def test_via_invalid(bad: str) -> None:
    with pytest.raises(ParseError, match="^Via"):
        parse_via(bad)


def test_vias_list_and_top() -> None:
    vals = ["SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b", "SIP/2.0/UDP c"]
    assert [v.host for v in parse_vias(vals)] == ["a", "b", "c"]
    assert parse_top_via(vals[0]).host == "a"
    assert parse_top_via(None) is None
    with pytest.raises(ParseError):
        parse_vias(["SIP/2.0/UDP 192.0.2.15;;,;,,"])


def test_cseq() -> None:
    assert parse_cseq("0009\r\n  INVITE") == CSeq(9, "INVITE")
    assert parse_cseq("1 INVITE").seq == 1
    with pytest.raises(ParseError, match="too large"):
        parse_cseq("2147483648 INVITE")
    with pytest.raises(ParseError, match="too large"):
        parse_cseq("9" * 5000 + " INVITE")
    with pytest.raises(ParseError, match="CSeq"):
        parse_cseq("INVITE 1")
    with pytest.raises(ParseError, match="missing CSeq"):
        parse_cseq(None)


def test_max_forwards() -> None:
    assert parse_max_forwards("0068") == 68
    assert parse_max_forwards(None) is None
    for bad in ("256", "-1", "x", "99999999999999"):
        with pytest.raises(ParseError, match="Max-Forwards"):
            parse_max_forwards(bad)


def test_split_commas() -> None:
    assert split_commas('"a, b" <sip:x@y>, <sip:z;p=1,2>, c') == ['"a, b" <sip:x@y>', "<sip:z;p=1,2>", "c"]
    assert split_commas(r'"a \", b" <sip:x>, d') == [r'"a \", b" <sip:x>', "d"]
    assert split_commas("") == []
    assert split_commas("a,,b") == ["a", "", "b"]


def test_name_addr_forms() -> None:
    n = parse_name_addr('"J Rosenberg \\\\\\""       <sip:jdrosen@example.com>  ;  tag = 98asjd8', "From")
    assert n.display == 'J Rosenberg \\"'
    assert n.tag == "98asjd8"
    assert n.uri.user == "jdrosen"
    n = parse_name_addr("sip:caller@example.net;tag=134161461246", "From")
    assert n.display is None and n.tag == "134161461246" and not n.uri.params
    n = parse_name_addr("Bob Smith <sip:bob@b.example;transport=tcp>;expires=60", "Contact")
    assert n.display == "Bob Smith" and n.uri.params == {"transport": "tcp"} and n.expires == 60
    assert str(n) == "Bob Smith <sip:bob@b.example;transport=tcp>;expires=60"


@pytest.mark.parametrize(
    "bad",
    [
        "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
        '"Joe" <sip:joe@example.org>;;;;',
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
        '"unterminated <sip:a@b>',
        "<sip:a@b",
        "",
        "<>",
    ],
)
def test_name_addr_invalid(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_name_addr(bad, "Contact")


def test_name_addr_header_missing() -> None:
    with pytest.raises(ParseError, match="missing From header"):
        parse_name_addr_header(None, "From")


def test_contacts_star() -> None:
    assert parse_contacts(["*"])[0].wildcard
    assert str(parse_contacts(["*"])[0]) == "*"
    with pytest.raises(ParseError):
        parse_contacts(["*, <sip:a@b>"])


def test_constructors() -> None:
    v = Via("udp", "[2001:db8::1]", 5060, {"branch": "z9hG4bKabc", "rport": None})
    assert str(v) == "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKabc;rport"
    n = NameAddr('A "B"', "sip:a@b", {"tag": "1"})
    assert str(n) == '"A \\"B\\"" <sip:a@b>;tag=1'
    assert parse_name_addr(str(n), "To").display == 'A "B"'


def test_contact_with_instance_id_and_quoted_commas() -> None:
    v = '<sip:bob@192.0.2.4;ob>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>", "A, B" <sip:a@b>'
    c1, c2 = parse_contacts([v])
    assert c1.uri.params == {"ob": None}
    assert c1.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    assert c2.display == "A, B"
    assert str(c1) == v.split(", ")[0]


def test_headers_pop_first_value() -> None:
    from sosimple_proxy.sip.message import Headers

    h = Headers([("Via", ""), ("Via", ""), ("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b"), ("To", "x")])
    assert h.pop_first_value("v") == "SIP/2.0/UDP a"
    assert h.items() == [("Via", "SIP/2.0/UDP b"), ("To", "x")]
    assert h.pop_first_value("via") == "SIP/2.0/UDP b"
    assert h.pop_first_value("via") is None
    assert h.values("to") == ["x"]


def test_uri_helpers_reexported() -> None:
    from sosimple_proxy.sip.headers import unescape, uri_equivalent

    assert unescape("%75ser") == "user"
    assert uri_equivalent("sip:%75ser@EXAMPLE.com", "sip:user@example.com;x=1")
    assert not uri_equivalent("sip:user@example.com", "not a uri")


def test_via_maddr_ttl() -> None:
    v = parse_via("SIP/2.0/UDP h;maddr=239.255.255.1;ttl=16;branch=z9hG4bK1")
    assert v.maddr == "239.255.255.1" and v.ttl == 16
    v = parse_via("SIP/2.0/UDP [2001:db8::1];maddr=[ff02::1]")
    assert v.maddr == "ff02::1" and v.branch is None and v.rport is None
