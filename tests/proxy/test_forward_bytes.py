"""A response going upstream is the bytes it came as, minus our Via line
(RFC 3261 16.7 steps 3 and 9: the proxy removes its Via and changes
nothing else); an edit of the copy makes it serialise as before."""

from __future__ import annotations

from sosimple_proxy.proxy.context import forwarded
from sosimple_proxy.sip.message import Response
from sosimple_proxy.sip.parser import parse_message

OURS = b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsp1;rport=5060\r\n"
RESPONSE = (
    b"SIP/2.0 200 OK\r\n" + OURS +
    b"v: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-ua\r\n"
    b"f: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\nCall-ID: c1@h\r\n"
    b"CSeq: 1 INVITE\r\nContact:<sip:b@10.0.0.3>\r\nX-Unknown: ;;;odd,,\r\nContent-Length: 3\r\n\r\nabc"
)


def received(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    msg.keep_raw(data)
    return msg


def test_forwarded_response_is_the_received_bytes_minus_our_via() -> None:
    out = forwarded(received(RESPONSE))
    assert out.serialize() == RESPONSE.replace(OURS, b"")
    assert [str(v) for v in out.vias] == ["SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-ua"]


def test_forwarded_response_edited_is_serialised() -> None:
    out = forwarded(received(RESPONSE))
    out.headers.add("Proxy-Authenticate", 'Digest realm="x"')
    wire = out.serialize()
    assert b"Proxy-Authenticate: Digest realm=\"x\"\r\n" in wire and OURS not in wire
    assert parse_message(wire).body == b"abc"


def test_forwarded_without_the_bytes_is_serialised() -> None:
    out = forwarded(parse_message(RESPONSE))  # type: ignore[arg-type]
    wire = out.serialize()
    assert OURS not in wire and wire != RESPONSE.replace(OURS, b"")  # rewritten (names, Content-Length last)
    assert parse_message(wire).headers.get("x-unknown") == ";;;odd,,"


def test_loop_hash_kept_across_edits_of_what_it_does_not_read() -> None:
    from sosimple_proxy.proxy import routing
    from sosimple_proxy.proxy.forward import request_loop_hash

    req = parse_message(
        b"BYE sip:b@10.0.0.3 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\n"
        b"Route: <sip:127.0.0.1;lr>\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
        b"Call-ID: c\r\nCSeq: 2 BYE\r\nProxy-Authorization: Digest username=\"a\"\r\nContent-Length: 0\r\n\r\n"
    )
    first = request_loop_hash(req)
    calls: list[int] = []
    real = routing.loop_hash
    routing.loop_hash = lambda r: calls.append(1) or real(r)  # type: ignore[assignment]
    try:
        req.headers.pop_first_value("route")
        req.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKsp2")
        assert request_loop_hash(req) == first and not calls
        req.headers.remove("proxy-authorization")  # what it reads: computed again
        assert request_loop_hash(req) == real(req) != first and len(calls) == 1
        req.uri = "sip:b@10.0.0.4"  # the Request-URI too
        assert request_loop_hash(req) == real(req) and len(calls) == 2
    finally:
        routing.loop_hash = real  # type: ignore[assignment]
