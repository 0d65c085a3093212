"""One host check (RFC 3261 25.1 host) for URIs, Via and name-addr, fast
paths and general paths alike: they used to disagree (the Via fast path
took ``a.-b`` and ``01.2.3.4``)."""

from __future__ import annotations

import pytest

from sosimple_proxy.sip.errors import ParseError
from sosimple_proxy.sip.grammar import check_host
from sosimple_proxy.sip.headers import parse_name_addr
from sosimple_proxy.sip.uri import parse_uri
from sosimple_proxy.sip.via import parse_via

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")

GOOD = ["example.com", "a-b.c", "a.", "a.b.", "a_b", "_a", "a.1b", "1.2.3.4", "0.0.0.0", "1.2.3.4.", "x"]
BAD = ["a.-b", "a-.b", "a..b", "-a", "a-", ".a", "a.b-", "x.y-.z", "123", "1.2.3", "1.2.3.256", "01.2.3.4",
       "1.2.3.04", "a b"]

PARSERS = {
    "uri fast": lambda h: parse_uri(f"sip:u@{h}"),
    "uri with port": lambda h: parse_uri(f"sip:u@{h}:5060;lr"),
    "uri general": lambda h: parse_uri(f"sip:u%40x@{h}"),
    "via hot": lambda h: parse_via(f"SIP/2.0/UDP {h};branch=z9hG4bKx"),
    "via fast": lambda h: parse_via(f"SIP/2.0/UDP {h}:5060;branch=z9hG4bKx;foo"),
    "via general": lambda h: parse_via(f"SIP/2.0/UDP  {h} ;branch=z9hG4bKx"),
    "name-addr": lambda h: parse_name_addr(f"<sip:u@{h}>;tag=1").uri,
    "addr-spec": lambda h: parse_name_addr(f"sip:u@{h};tag=1").uri,
    "maddr": lambda h: parse_via(f"SIP/2.0/UDP x;maddr={h}"),
}


@pytest.mark.parametrize("host", GOOD)
@pytest.mark.parametrize("where", sorted(PARSERS))
def test_a_good_host_is_good_everywhere(where: str, host: str) -> None:
    assert check_host(host, "test") == host
    PARSERS[where](host)


@pytest.mark.parametrize("host", BAD)
@pytest.mark.parametrize("where", sorted(PARSERS))
def test_a_bad_host_is_bad_everywhere(where: str, host: str) -> None:
    with pytest.raises(ParseError):
        check_host(host, "test")
    with pytest.raises(ParseError):
        PARSERS[where](host)
