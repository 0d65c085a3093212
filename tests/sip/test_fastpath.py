"""The fast paths of the message model and the transport (issue 12): each
gives what the slow path would, or steps aside.

- a response's wire can be its received bytes minus the top Via line;
- a Via we stamp or write ourselves is cached as the view parsing it gives;
- a response's From, To, Contact and Record-Route are parsed when read;
- ``TransportLayer.send_nowait`` sends a datagram without a Deferred, and
  leaves the ICMP error it may meet to the usual path.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest
from twisted.internet import defer, protocol, reactor as global_reactor, task
from twisted.trial import unittest
from zope.interface import alsoProvides

from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.errors import ParseError
from sosimple_proxy.sip.interfaces import IUnreachableObserver
from sosimple_proxy.sip.message import Response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.transport import TransportLayer
from sosimple_proxy.sip.via import parse_top_via, stamp_via

RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsp1;rport=5060\r\n"
    b"Via:   SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-ua;received=10.0.0.9\r\n"
    b"Record-Route: <sip:127.0.0.1;lr>\r\n"
    b"f: <sip:a@example.com>;tag=1\r\n"
    b"To: <sip:b@example.com>;tag=2\r\n"
    b"Call-ID: c1@h\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"X-Odd:  kept   as is \r\n"
    b"Content-Length: 4\r\n\r\n"
    b"abcd"
)


def received(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response)
    msg.keep_raw(data)
    return msg


def without_line(data: bytes, line: bytes) -> bytes:
    assert line + b"\r\n" in data
    return data.replace(line + b"\r\n", b"", 1)


def test_raw_without_top_via_is_the_bytes_minus_that_line() -> None:
    msg = received(RESPONSE + b"trailing bytes past Content-Length")
    wire = msg.raw_without_top_via()
    assert wire == without_line(RESPONSE, b"v: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsp1;rport=5060")
    # ... and it says the same as the message with its top Via popped.
    again = parse_message(wire)
    msg.headers.pop_first_value("via")
    assert [(k, v) for k, _n, v in again.headers._fields] == [(k, v) for k, _n, v in msg.headers._fields]
    assert again.body == b"abcd"


@pytest.mark.parametrize(
    "change",
    [
        # two Via values on the top line: the line stays, one value goes
        lambda d: d.replace(b"rport=5060\r\nVia:  ", b"rport=5060,"),
        # a folded line: lines and fields no longer correspond
        lambda d: d.replace(b"X-Odd:  kept", b"X-Odd:\r\n  kept"),
        # no Content-Length: the bytes would not say where the body ends on a stream
        lambda d: d.replace(b"Content-Length: 4\r\n", b""),
        # CRLFs in front of the start line
        lambda d: b"\r\n" + d,
    ],
)
def test_raw_without_top_via_steps_aside(change) -> None:  # type: ignore[no-untyped-def]
    msg = received(change(RESPONSE))
    assert msg.raw_without_top_via() is None


def test_raw_is_forgotten_once_the_headers_change() -> None:
    msg = received(RESPONSE)
    msg.headers.add("Warning", '399 x "y"')
    assert msg.raw_without_top_via() is None
    assert parse_message(RESPONSE).raw_without_top_via() is None  # never kept


def test_wire_is_used_only_while_nothing_changed() -> None:
    msg = received(RESPONSE)
    wire = msg.raw_without_top_via()
    assert wire is not None
    msg.headers.pop_first_value("via")
    msg.set_wire(b"WIRE")
    assert msg.serialize() == b"WIRE"
    msg.status, msg.reason = 183, "Session Progress"
    assert msg.serialize().startswith(b"SIP/2.0 183 Session Progress\r\n")
    msg.status, msg.reason = 180, "Ringing"
    assert msg.serialize() == b"WIRE"
    msg.body = b"other"
    assert msg.serialize().endswith(b"\r\n\r\nother")
    msg.body = b"abcd"
    msg.set_wire(b"WIRE")
    msg.headers.add("X-More", "1")
    out = msg.serialize()
    assert b"X-More: 1\r\n" in out and b"127.0.0.1:5060;branch" not in out


def test_response_names_parsed_when_read() -> None:
    """RFC 3261 16.7: a proxy forwards From, To, Contact and Record-Route
    untouched; a bad one no longer drops the response, and reading it
    raises ParseError as before."""
    data = RESPONSE.replace(b"Record-Route: <sip:127.0.0.1;lr>", b"Contact: <sip:b@x y>")
    msg = received(data)
    with pytest.raises(ParseError):
        msg.contacts
    assert msg.to.tag == "2" and msg.from_.tag == "1"
    # The Vias below the top one too.
    msg = received(RESPONSE.replace(b"10.0.0.2:5070", b"10.0.0.2:99999"))
    assert msg.top_via.branch == "z9hG4bKsp1"
    with pytest.raises(ParseError):
        msg.vias
    # What a proxy reads of a response is still checked at once.
    with pytest.raises(ParseError, match="CSeq"):
        parse_message(RESPONSE.replace(b"CSeq: 1 INVITE", b"CSeq: 99999999999 INVITE"))
    with pytest.raises(ParseError):
        parse_message(RESPONSE.replace(b"v: SIP/2.0/UDP 127.0.0.1:5060", b"v: SIP/2.0/UDP 127.0.0.1:99999"))
    # A request's are checked at once, as before.
    with pytest.raises(ParseError, match="Contact"):
        parse_message(
            b"INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1\r\n"
            b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\n"
            b"CSeq: 1 INVITE\r\nContact: <sip:b@x y>\r\nContent-Length: 0\r\n\r\n"
        )


@pytest.mark.parametrize(
    "via, source",
    [
        (b"SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-1;rport", Peer("udp", "10.0.0.2", 5070)),
        (b"SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-1;rport", Peer("udp", "192.0.2.7", 40000)),
        (b"SIP/2.0/UDP ua.example.com;Received=1.2.3.4;branch=z9hG4bK-1", Peer("udp", "192.0.2.7", 5060)),
        (b"SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK-1;rport", Peer("tcp", "2001:db8::2", 40000)),
    ],
)
def test_stamped_via_view_is_what_parsing_gives(via: bytes, source: Peer) -> None:
    data = (
        b"OPTIONS sip:b@example.com SIP/2.0\r\nVia: " + via + b"\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bK-2\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c\r\n"
        b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    req = parse_message(data)
    assert stamp_via(req, source)
    cached = req.top_via
    parsed = parse_top_via(req.headers.get("via"))
    assert parsed is not None
    for attr in ("transport", "host", "port", "received", "rport", "branch"):
        assert getattr(cached, attr) == getattr(parsed, attr), attr
    assert dict(cached.params) == dict(parsed.params)
    assert [str(v) for v in req.vias][1:] == ["SIP/2.0/UDP 10.9.9.9;branch=z9hG4bK-2"]
    assert req.vias[0] is cached


def test_own_via_view_is_what_parsing_gives() -> None:
    from sosimple_proxy.proxy import routing

    for local, transport in ((ListenAddress("udp", "127.0.0.1", 5060), "udp"), (ListenAddress("tcp", "::1", 5062), "tcp")):
        own = routing.own_via(local, transport, "z9hG4bKsp-x")
        parsed = parse_top_via(routing.via_value(local, transport, "z9hG4bKsp-x"))
        assert parsed is not None
        assert (own.transport, own.host, own.port, dict(own.params)) == (
            parsed.transport, parsed.host, parsed.port, dict(parsed.params))


class _Client(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: object) -> None:
        self.received.append(data)


class SendNowaitTests(unittest.TestCase):
    timeout = 15

    def _layer(self) -> TransportLayer:
        from tests.sip.test_transport import RecordingSink

        self.sink = RecordingSink()
        layer = TransportLayer(global_reactor, [ListenAddress("udp", "127.0.0.1", 0)], self.sink)
        layer.startService()
        self.addCleanup(layer.stopService)
        return layer

    async def _until(self, cond) -> None:  # type: ignore[no-untyped-def]
        for _ in range(100):
            if cond():
                return
            await task.deferLater(global_reactor, 0.02, lambda: None)

    def test_a_datagram_goes_without_a_deferred(self) -> defer.Deferred:
        async def run() -> None:
            layer = self._layer()
            client = _Client()
            cport = global_reactor.listenUDP(0, client, interface="127.0.0.1")
            self.addCleanup(cport.stopListening)
            assert layer.send_nowait(b"hello", Peer("udp", "127.0.0.1", cport.getHost().port)) is None
            await self._until(lambda: client.received)
            self.assertEqual(client.received, [b"hello"])
            # Not an address literal: the usual send, and its Deferred (a failure).
            d = layer.send_nowait(b"x", Peer("udp", "host.invalid", 5060))
            self.assertIsNotNone(d)
            failures: list = []
            d.addErrback(failures.append)
            self.assertEqual(len(failures), 1)

        return defer.ensureDeferred(run())

    def test_icmp_error_met_is_reported_and_the_datagram_still_goes(self) -> defer.Deferred:
        if not sys.platform.startswith("linux"):
            raise unittest.SkipTest("IP_RECVERR is Linux's")

        async def run() -> None:
            layer = self._layer()
            unreachable: list = []
            self.sink.peerUnreachable = lambda peer, reason: unreachable.append(peer)  # type: ignore[attr-defined]
            alsoProvides(self.sink, IUnreachableObserver)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
                gone.bind(("127.0.0.1", 0))
                closed = gone.getsockname()[1]
            client = _Client()
            cport = global_reactor.listenUDP(0, client, interface="127.0.0.1")
            self.addCleanup(cport.stopListening)
            assert layer.send_nowait(b"to nobody", Peer("udp", "127.0.0.1", closed)) is None
            time.sleep(0.05)  # the ICMP error is queued before our next send
            d = layer.send_nowait(b"hello", Peer("udp", "127.0.0.1", cport.getHost().port))
            if d is not None:
                await d
            await self._until(lambda: client.received and unreachable)
            self.assertEqual(client.received, [b"hello"])
            self.assertEqual(unreachable, [Peer("udp", "127.0.0.1", closed)])

        return defer.ensureDeferred(run())


@pytest.mark.parametrize(
    "raw",
    ["SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bK-1;rport", "SIP/2.0/UDP h;rport", "SIP/2.0/UDP h;x=\"a;b\";rport",
     "SIP/2.0/UDP h;Received=1.2.3.4;rport", "SIP/2.0/UDP h;rport=9;rport", "SIP/2.0/UDP h;RPORT=9;rport"],
)
def test_stamped_via_text_fast_path_agrees(raw: str) -> None:
    from sosimple_proxy.sip.via import _stamped_via_text, _stamped_via_text_general

    for received in (None, "192.0.2.7"):
        assert _stamped_via_text(raw, received, 40000) == _stamped_via_text_general(raw, received, 40000)
