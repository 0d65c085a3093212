"""parse_message: start lines, header lines, framing, validation, errors."""

from __future__ import annotations

import re

import pytest

from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.parser import ParseError, parse_message, validate_request

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)


def req(*headers: bytes, start: bytes = b"OPTIONS sip:bob@example.com SIP/2.0", body: bytes = b"") -> bytes:
    base = [
        b"Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx",
        b"To: <sip:bob@example.com>",
        b"From: <sip:a@example.com>;tag=1",
        b"Call-ID: c1",
        b"CSeq: 1 OPTIONS",
        b"Max-Forwards: 70",
    ]
    return start + b"\r\n" + b"".join(h + b"\r\n" for h in base + list(headers)) + b"\r\n" + body


def test_invite_views() -> None:
    m = parse_message(INVITE)
    assert isinstance(m, Request)
    assert (m.method, m.uri, m.version) == ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0")
    assert m.top_via.branch == "z9hG4bK776asdhds" and m.top_via.rport is True
    assert m.cseq.seq == 314159 and m.cseq.method == "INVITE"
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert m.from_.tag == "1928301774" and m.to.tag is None
    assert m.max_forwards == 70
    assert m.ruri.user == "bob"
    assert m.body == b"v=0\n"
    assert m.serialize() == INVITE


def test_response() -> None:
    data = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    m = parse_message(data)
    assert isinstance(m, Response) and m.status == 180 and m.reason == "Ringing"
    assert m.serialize() == data


def test_reason_phrase_with_spaces_and_empty() -> None:
    base = b"\r\nVia: SIP/2.0/UDP h\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    assert parse_message(b"SIP/2.0 486 Busy Here  now" + base).reason == "Busy Here  now"
    assert parse_message(b"SIP/2.0 100 " + base).reason == ""
    assert parse_message(b"SIP/2.0 100" + base).reason == ""


def test_compact_and_case_insensitive_names() -> None:
    m = parse_message(
        b"OPTIONS sip:b@x SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nt: <sip:b@x>\r\nf: <sip:a@x>;tag=1\r\n"
        b"i: cid\r\ncSeQ: 1 OPTIONS\r\nm: <sip:a@h>\r\nk: path\r\nl: 0\r\n\r\n"
    )
    assert m.headers.get("Via") == "SIP/2.0/UDP h;branch=z9hG4bK1"
    assert m.headers.get("supported") == "path"
    assert m.call_id == "cid"
    assert m.contacts[0].uri.host == "h"


def test_folding_is_unfolded_to_one_space() -> None:
    m = parse_message(req(b"Subject: a\r\n  b\r\n\tc", b"X:\r\n y"))
    assert m.headers.get("subject") == "a b c"
    assert m.headers.get("x") == "y"


def test_leading_crlf_skipped() -> None:
    assert parse_message(b"\r\n\r\n" + req()).method == "OPTIONS"


def test_body_exact_bytes_and_truncation() -> None:
    body = b"\x00\r\n\xff\nabc"
    m = parse_message(req(b"Content-Length: %d" % len(body), body=body + b"trailing junk"))
    assert m.body == body
    # Datagram without Content-Length: the rest of the datagram.
    assert parse_message(req(body=b"xyz")).body == b"xyz"


@pytest.mark.parametrize(
    "data,text",
    [
        (req(b"Content-Length: 10", body=b"short"), "Content-Length 10 exceeds the 5 bytes of body"),
        (req(b"Content-Length: -999"), "Content-Length -999 is negative"),
        (req(b"Content-Length: abc"), "Content-Length 'abc' is not a number"),
        (req(b"Content-Length: 1", b"l: 2", body=b"xx"), "conflicting Content-Length values 1 and 2"),
        (req(b"Max-Forwards: 300"), "more than one Max-Forwards"),
        (req(start=b"OPTIONS sip:b@x SIP/3.0"), "SIP version SIP/3.0 is not supported"),
        (req(start=b"OPTIONS  sip:b@x SIP/2.0"), "Request-Line has extra white space"),
        (req(start=b"OPTIONS <sip:b@x> SIP/2.0"), "Request-URI must not be enclosed in <>"),
        (req(start=b"OPTIONS sip:b@x?Route=x SIP/2.0"), "Request-URI must not contain headers"),
        (req(start=b"OPT@ONS sip:b@x SIP/2.0"), "invalid method"),
        (req(start=b"INVITE sip:b@x SIP/2.0"), "CSeq method OPTIONS does not match request method INVITE"),
        (req(b"Bad Name: x"), "invalid header name"),
        (req(b"NoColon"), "invalid header line 'NoColon'"),
        (req(b"X: a\nb"), "bare CR or LF"),
        (req(b"X: a\x00b"), "control character"),
        (req(b"Contact: <sip:a@b>;;"), "Contact: empty parameter"),
        (req(b"Route: sip:a@b"), "Route: URI must be enclosed in <>"),
    ],
)
def test_errors(data: bytes, text: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert text in str(info.value)
    assert info.value.is_request is True


def test_version_error_is_505() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(req(start=b"OPTIONS sip:b@x SIP/7.0"))
    assert info.value.status == 505


def test_stream_requires_content_length() -> None:
    with pytest.raises(ParseError, match="missing Content-Length"):
        parse_message(req(), stream=True)
    assert parse_message(req(b"Content-Length: 0"), stream=True).body == b""


def test_partial_answers_400() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(req(b"Content-Length: -999"))
    err = info.value
    resp = make_response(err.partial, err.status, err.reason)
    wire = resp.serialize()
    assert wire.startswith(b"SIP/2.0 400 Content-Length -999 is negative\r\n")
    assert b"Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n" in wire
    assert b"Call-ID: c1\r\n" in wire


def test_reason_is_printable() -> None:
    for bad in (b"Call-ID: c1\xff\x01", b"Call-ID: \xe9t\xe9 x"):
        with pytest.raises(ParseError) as info:
            parse_message(req().replace(b"Call-ID: c1", bad))
        assert all(0x20 <= ord(ch) < 0x7F for ch in info.value.reason), info.value.reason


def test_garbage() -> None:
    for data in (b"", b"\r\n", b"x", b"\x00\x01", b"SIP/2.0", b"INVITE", b"\r\n\r\n\r\n"):
        with pytest.raises(ParseError):
            parse_message(data)


def test_validate_request_missing() -> None:
    m = parse_message(b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", validate=False)
    with pytest.raises(ParseError, match="missing To, From, Call-ID, CSeq headers"):
        validate_request(m)


def test_max_forwards_may_be_absent() -> None:
    m = parse_message(req().replace(b"Max-Forwards: 70\r\n", b""))
    assert m.max_forwards is None


def test_views_follow_header_changes() -> None:
    m = parse_message(INVITE)
    assert m.top_via.host == "pc33.atlanta.example.com"
    m.headers.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp")
    assert m.top_via.host == "proxy.example.com"
    assert [v.host for v in m.vias] == ["proxy.example.com", "pc33.atlanta.example.com"]
    other = parse_message(INVITE.replace(b"314159 INVITE", b"7 INVITE"))
    m.headers = other.headers.copy()
    assert m.cseq.seq == 7  # a different Headers object never reuses the cache


def test_validate_is_remembered_until_headers_change() -> None:
    m = parse_message(INVITE)
    validate_request(m)  # already done by parse_message: no work, no error
    m.headers.set("CSeq", "1 BYE")
    with pytest.raises(ParseError, match="CSeq method BYE does not match"):
        validate_request(m)


def test_response_validation_partial() -> None:
    data = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:b@x>;tag=2\r\nFrom: <sip:a@x>;tag=1\r\n"
            b"Call-ID: c\r\nCSeq: 99999999999 INVITE\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ParseError) as info:
        parse_message(data)
    assert info.value.is_request is False
    assert isinstance(info.value.partial, Response)


def test_unknown_headers_byte_faithful() -> None:
    data = req(b"UnknownHeaderWithUnusualValue: ;;,,;;,;", b"X-Odd:   a;b=\"c,d\" ;;  ", b"x-lower: V",
               b"Route: <sip:p.example.com;lr;unknownwith=value;unknown-no-value>")
    m = parse_message(data)
    wire = m.serialize()
    assert b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n" in wire
    assert b'X-Odd: a;b="c,d" ;;\r\n' in wire
    assert b"x-lower: V\r\n" in wire
    assert b"Route: <sip:p.example.com;lr;unknownwith=value;unknown-no-value>\r\n" in wire
    r = m.routes[0]
    assert r.uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert str(r) == "<sip:p.example.com;lr;unknownwith=value;unknown-no-value>"


def test_param_spelling_preserved_on_reserialization() -> None:
    m = parse_message(req().replace(b"branch=z9hG4bKx", b"Branch=z9hG4bKx;MyParam=Q"))
    via = m.top_via
    assert via.branch == "z9hG4bKx" and via.params["myparam"] == "Q"
    via.received = "192.0.2.7"
    assert str(via) == "SIP/2.0/UDP h.example.com;Branch=z9hG4bKx;MyParam=Q;received=192.0.2.7"


def test_every_compact_form() -> None:
    # RFC 3261 7.3.3 and the RFCs that added the others.
    compact = {"i": "call-id", "m": "contact", "v": "via", "f": "from", "t": "to", "l": "content-length",
               "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding", "o": "event",
               "u": "allow-events", "r": "refer-to", "b": "referred-by", "x": "session-expires", "y": "identity"}
    lines = [b"OPTIONS sip:b@x SIP/2.0", b"v: SIP/2.0/UDP h;branch=z9hG4bK1", b"f: <sip:a@x>;tag=1", b"t: <sip:b@x>",
             b"i: cid", b"CSeq: 1 OPTIONS", b"m: <sip:a@h>", b"c: text/plain", b"k: path", b"s: hi", b"e: gzip",
             b"o: presence", b"u: dialog", b"r: <sip:c@x>", b"b: <sip:d@x>", b"x: 1800", b"y: abc", b"l: 2"]
    m = parse_message(b"\r\n".join(lines) + b"\r\n\r\nok")
    keys = [k for k, _n, _v in m.headers._fields]
    assert set(compact.values()) <= set(keys)
    assert m.body == b"ok"
    for letter, key in compact.items():
        assert m.headers.get(letter) == m.headers.get(key) is not None


def test_garbage_is_neither_request_nor_response() -> None:
    with pytest.raises(ParseError) as info:
        parse_message(b"hello\r\n\r\n")
    assert info.value.is_request is None and info.value.partial is None
    with pytest.raises(ParseError) as info:
        parse_message(b"SIP/2.0 abc Nope\r\n\r\n")
    assert info.value.is_request is False


@pytest.mark.parametrize(
    "mf,text",
    [(b"300", "Max-Forwards 300 is out of range (0-255)"), (b"-1", "Max-Forwards '-1' is not a number"),
     (b"7 8", "Max-Forwards '7 8' is not a number")],
)
def test_max_forwards_errors(mf: bytes, text: str) -> None:
    with pytest.raises(ParseError, match=re.escape(text)):
        parse_message(req().replace(b"Max-Forwards: 70", b"Max-Forwards: " + mf))


def test_a_line_without_colon_is_never_a_header_whatever_was_seen_before() -> None:
    """The parser is a pure function of its bytes: a bare ``Via`` line is an
    error even after messages whose Via lines filled the name cache."""
    parse_message(req())  # "Via" is a known name now
    with pytest.raises(ParseError, match="invalid header line 'Via'"):
        parse_message(req(b"Via"))
