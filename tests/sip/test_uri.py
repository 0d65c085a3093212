"""URIs: sip, sips, tel, opaque; comparison per RFC 3261 19.1.4."""

from __future__ import annotations

import pytest

from sosimple_proxy.sip.parser import ParseError
from sosimple_proxy.sip.uri import URI, canonical, parse_uri, unescape

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:alice:secretword@atlanta.com;transport=tcp",
        "sips:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sips:1212@gateway.com",
        "sip:alice@192.0.2.4",
        "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:[2001:db8::10]",
        "sip:[2001:db8::10]:5070",
        "sip:user@[2001:db8::192.0.2.1]",
        "sip:services.example.com;lr;unknownwith=value;unknown-no-value",
        "sip:sips%3Auser%40example.com@example.net",
        "sip:user;par=u%40example.net@example.com",
        "tel:+1-201-555-0123",
        "tel:7042;phone-context=example.com",
        "soap.beep://192.0.2.103:3002",
        "urn:service:sos",
    ],
)
def test_round_trip(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_components() -> None:
    u = parse_uri("sip:alice:pw@[2001:db8::1]:5061;transport=TLS;lr?h=v")
    assert (u.scheme, u.user, u.password, u.host, u.port) == ("sip", "alice", "pw", "2001:db8::1", 5061)
    assert u.params == {"transport": "TLS", "lr": None}
    assert u.transport == "tls" and u.lr
    assert u.headers == [("h", "v")]
    s = parse_uri("sip:user;par=u%40example.net@example.com")
    assert s.user == "user;par=u%40example.net" and s.host == "example.com"
    t = parse_uri("tel:+1-201-555-0123;ext=1")
    assert t.scheme == "tel" and t.user == "+1-201-555-0123" and t.params == {"ext": "1"}
    o = parse_uri("soap.beep://192.0.2.103:3002")
    assert o.scheme == "soap.beep" and o.opaque == "//192.0.2.103:3002"


@pytest.mark.parametrize(
    "bad",
    [
        "sip:2001:db8::10",
        "sip:[2001:db8:::192.0.2.1]",
        "sip:user@",
        "sip:a@b:port",
        "sip:a@b:99999",
        "sip:a@b;x=1;X=2",
        "sip:%zz@b",
        "sip:a@b?noval",
        "tel:7042",
        "tel:abc+",
        "<sip:a@b>",
        "nocolon",
        "sip:a b@c",
        "sip:a@256.1.1.1",
    ],
)
def test_invalid(bad: str) -> None:
    with pytest.raises(ParseError):
        parse_uri(bad)


def test_escapes_once() -> None:
    # RFC 4475 3.1.1.3: n%61me=v%61lue%25%34%31 means name=value%41, not valueA.
    u = parse_uri("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert unescape(u.params["n%61me"]) == "value%41"
    assert u == parse_uri("sip:caller@host5.example.net;lr;name=value%2541")
    assert u != parse_uri("sip:caller@host5.example.net;lr;name=valueA")
    assert canonical("%75se%72") == "user"
    assert parse_uri("sip:%75se%72@example.com") == parse_uri("sip:user@example.com")
    # An escaped reserved character is not the character itself.
    assert parse_uri("sip:a%40b@x") != parse_uri("sip:a%3Bb@x")


# RFC 3261 19.1.4 examples
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ("sip:[2001:db8::10]", "sip:[2001:db8:0:0:0:0:0:10]"),
    ("tel:+1-201-555-0123", "tel:+1201.555.0123"),
]
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;user=phone"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;method=INVITE"),
    ("sip:bob@biloxi.com;maddr=239.255.255.1", "sip:bob@biloxi.com"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:a@b", "sips:a@b"),
    ("sip:a@b;ttl=1", "sip:a@b"),
    ("tel:+1-201-555-0123", "tel:+1-201-555-0123;ext=1"),
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal(a: str, b: str) -> None:
    ua, ub = parse_uri(a), parse_uri(b)
    assert ua == ub and ub == ua
    assert ua.equivalent(ub)
    assert hash(ua) == hash(ub)


@pytest.mark.parametrize("a,b", NOT_EQUAL)
def test_not_equal(a: str, b: str) -> None:
    assert parse_uri(a) != parse_uri(b)


def test_build() -> None:
    u = URI("sip", "bob", "[2001:db8::1]", 5060, {"transport": "tcp"})
    assert str(u) == "sip:bob@[2001:db8::1]:5060;transport=tcp"
    c = u.copy()
    c.params["lr"] = None
    assert "lr" not in u.params


def test_tel_comparison() -> None:
    assert parse_uri("tel:7042;phone-context=example.com") == parse_uri("tel:7042;PHONE-CONTEXT=Example.COM")
    assert parse_uri("tel:+1-201-555-0123") != parse_uri("tel:+1-201-555-0124")
    assert parse_uri("tel:+1(201)555-0123") == parse_uri("tel:+12015550123")
