"""Properties: no exception but ParseError escapes parse_message, for any
bytes and for mutations of valid messages; valid messages round-trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sosimple_proxy.sip.grammar import split_commas
from sosimple_proxy.sip.headers import parse_name_addr
from sosimple_proxy.sip.message import Request
from sosimple_proxy.sip.parser import ParseError, parse_message
from sosimple_proxy.sip.uri import parse_uri
from sosimple_proxy.sip.via import parse_via

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")

ROOT = Path(__file__).parent.parent / "data" / "torture"
MANIFEST = json.loads((ROOT / "manifest.json").read_text())
TORTURE = [(ROOT / e.get("wire_file", e["file"])).read_bytes() for e in MANIFEST]

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:[2001:db8::1]:5070;lr>\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=tcp>;expires=60\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 36\r\n"
    b"\r\n"
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n"
)
REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::9:1]:5060;branch=z9hG4bKnashds7;received=[2001:db8::9:255]\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.4>;expires=7200, \"B\" <tel:+1-201-555-0123>;q=0.5\r\n"
    b"Expires: 7200\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
SEEDS = TORTURE + [INVITE, REGISTER]

# SOSIMPLE_HYPOTHESIS_EXAMPLES=5000 for a deeper run than the default one.
FAST = settings(
    max_examples=int(os.environ.get("SOSIMPLE_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def check_views_unvalidated(data: bytes) -> None:
    """Without validation, every lazy view raises nothing but ParseError."""
    try:
        msg = parse_message(data, validate=False)
    except ParseError:
        return
    for view in ("top_via", "vias", "cseq", "from_", "to", "contacts", "routes", "record_routes", "max_forwards",
                 "call_id", "ruri"):
        try:
            getattr(msg, view)
        except ParseError:
            pass
        except AttributeError:
            assert view == "ruri"
    msg.serialize()


def check(data: bytes) -> None:
    """parse_message either returns a message or raises ParseError, which
    is printable and never an internal error; a message re-parses."""
    check_views_unvalidated(data)
    try:
        msg = parse_message(data)
    except ParseError as err:
        assert "internal parser error" not in str(err), str(err)
        assert all(0x20 <= ord(c) < 0x7F for c in err.reason)
        assert err.is_request in (True, False, None)
        return
    wire = msg.serialize()
    again = parse_message(wire)
    assert again.start_line() == msg.start_line()
    assert [(k, v) for k, _n, v in again.headers._fields if k != "content-length"] == [
        (k, v) for k, _n, v in msg.headers._fields if k != "content-length"
    ]
    assert again.body == msg.body
    # The lazy views a proxy reads never raise anything but ParseError.
    for view in ("top_via", "vias", "cseq", "from_", "to", "contacts", "routes", "max_forwards"):
        try:
            getattr(msg, view)
        except ParseError:
            pass
    if isinstance(msg, Request):
        msg.ruri


@FAST
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FAST
@given(st.lists(st.sampled_from([b"INVITE ", b"SIP/2.0", b" ", b"\r\n", b":", b";", b",", b"<", b">",
                                 b"sip:", b"Via", b"v", b"SIP/2.0/UDP h", b"branch=", b"\"", b"\\",
                                 b"Content-Length: ", b"l: ", b"1", b"0", b"[", b"]", b"@", b"%", b"\r\n\r\n",
                                 b"CSeq: 1 INVITE", b"To", b"From", b"tag=", b"=", b"\t", b"\x00", b"\xff"]),
                max_size=60))
def test_token_soup(parts: list[bytes]) -> None:
    check(b"".join(parts))


@FAST
@given(st.sampled_from(SEEDS), st.data())
def test_byte_flips(seed: bytes, data: st.DataObject) -> None:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    check(bytes(buf))


@FAST
@given(st.sampled_from(SEEDS), st.data())
def test_truncations(seed: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(seed)))
    check(seed[:i])
    check(seed[i:])


@FAST
@given(st.sampled_from(SEEDS), st.data())
def test_insertions(seed: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(seed)))
    ins = data.draw(st.sampled_from([b" ", b"\r\n", b"\r\n ", b";", b",", b"<", b">", b'"', b"\\", b":", b"%",
                                     b"\x00", b"\n", b"\r", b"[", b"]", b"@", b"=", b"?", b";;,;,,"])
                    | st.binary(max_size=8))
    check(seed[:i] + ins + seed[i:])


@FAST
@given(st.sampled_from(SEEDS), st.data())
def test_header_deletions_and_duplications(seed: bytes, data: st.DataObject) -> None:
    head, sep, body = seed.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assume(len(lines) > 1)
    i = data.draw(st.integers(1, len(lines) - 1))
    if data.draw(st.booleans()):
        del lines[i]
    else:
        lines.insert(i, lines[data.draw(st.integers(1, len(lines) - 1))])
    check(b"\r\n".join(lines) + sep + body)


_HEADER_TEXT = st.text(alphabet=st.sampled_from(list(' \t;,=<>"\\:@[]%?&sipSIP/2.0UDPabc1\r\n')), max_size=50)


@FAST
@given(_HEADER_TEXT)
def test_structured_parsers_raise_only_parse_error(text: str) -> None:
    for fn in (parse_via, lambda t: parse_name_addr(t, "To"), parse_uri, split_commas):
        try:
            fn(text)
        except ParseError:
            pass


_USER = st.text(alphabet=st.sampled_from(list("abcXYZ019-_.!~*'()&=+$,;?/")), min_size=1, max_size=12)
_HOST = st.sampled_from(["example.com", "a.b-c.example", "192.0.2.1", "[2001:db8::1]", "[::ffff:192.0.2.1]", "h"])
_PNAME = st.text(alphabet=st.sampled_from(list("abcLR-_.!~*'()[]/:&+$")), min_size=1, max_size=8)


@FAST
@given(
    st.sampled_from(["sip", "sips"]),
    st.none() | _USER,
    _HOST,
    st.none() | st.integers(0, 65535),
    st.lists(st.tuples(_PNAME, st.none() | _PNAME), max_size=4, unique_by=lambda t: t[0].lower()),
)
def test_uri_round_trip(scheme, user, host, port, params) -> None:  # type: ignore[no-untyped-def]
    text = f"{scheme}:" + (f"{user}@" if user else "") + host + (f":{port}" if port is not None else "")
    text += "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    uri = parse_uri(text)
    assert str(uri) == text
    assert uri == parse_uri(text)


# -- the fast paths agree with the general parsers ---------------------------

from sosimple_proxy.sip import headers as _H  # noqa: E402
from sosimple_proxy.sip import uri as _U  # noqa: E402
from sosimple_proxy.sip import via as _V  # noqa: E402

_PIECES = st.sampled_from(
    ["sip:", "sips:", "tel:", "bob", "@", "example.com", "192.0.2.1", "999.1.1.1", "[2001:db8::1]", "[::1", ":5060",
     ":99999", ";lr", ";transport=tcp", ";tag=x", ";TAG=y", ";tag=x;tag=y", "=", ";", "<", ">", '"Bob"', "Bob ",
     " ", "a..b", "-h", "h-", "?h=v", "%41", ",", "\\", "x:y", "[", "]", ";q=0.5", ";expires=60"]
)


def _outcome(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(*args))
    except ParseError:
        return ("error", None)


@FAST
@given(st.lists(_PIECES, max_size=10).map("".join))
def test_fast_name_addr_matches_general(text: str) -> None:
    for brackets in (False, True):
        try:
            fast = _H._fast_name_addr(text, "To", brackets)
        except ParseError:
            fast = "error"
        if fast is None:
            continue  # not the fast path's shape
        kind, general = _outcome(_H._parse_name_addr_general, text, "To", brackets)
        if fast == "error":
            assert kind == "error", text
            continue
        assert kind == "ok", text
        try:
            fast_uri = str(fast.uri)
            fast_params = fast.params
        except ParseError:
            raise AssertionError(f"lazy parts of {text!r} failed after the fast path accepted it")
        assert (fast.raw_display, fast_uri, fast_params) == (general.raw_display, str(general.uri), general.params), text
        # str() gives a value that parses back to the same thing.
        again = _H.parse_name_addr(str(general), "To", brackets_required=True)
        assert str(again) == str(general)


@FAST
@given(st.lists(st.sampled_from(["SIP/2.0/UDP ", "SIP/2.0/TCP ", "sip/2.0/udp ", "h.example.com", "192.0.2.1",
                                 "1.2.3.400", "[2001:db8::1]", ":5060", ":70000", ";branch=z9hG4bK1", ";branch=",
                                 ";rport", ";rport=5", ";received=192.0.2.2", ";received=x", ";ttl=300",
                                 ";maddr=[::1]", ";BRANCH=a", " ", ";", "-", ".."]), max_size=8).map("".join))
def test_fast_via_matches_general(text: str) -> None:
    a = _outcome(_V.parse_via, text)
    b = _outcome(_V._parse_via_general, text)
    assert a[0] == b[0], text
    if a[0] == "ok":
        assert str(a[1]) == str(b[1]) or a[1].params == b[1].params, text
        again = _V.parse_via(str(b[1]))
        assert str(again) == str(b[1])
        assert (again.host, again.port, again.params) == (b[1].host, b[1].port, b[1].params)


@FAST
@given(st.lists(_PIECES, max_size=8).map("".join))
def test_fast_uri_matches_general(text: str) -> None:
    if not text.startswith("sip:"):
        return
    a = _outcome(_U._parse_sip, "sip", text[4:], "URI")
    b = _outcome(_U._parse_sip_general, "sip", text[4:], "URI")
    assert a[0] == b[0], text
    if a[0] == "ok":
        assert str(a[1]) == str(b[1]), text
