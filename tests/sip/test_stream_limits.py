"""Stream connections under [limits]: connection caps and bans refuse a
connection at once (logged once per source), and the per-message deadline
closes a sender that trickles a message that never ends.  Fake reactor
(a Clock) and StringTransport only."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from twisted.internet.error import ConnectionDone
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from sosimple_proxy.security.limits import Limits, LimitsConfig, parse_networks
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.admission import emergency_number, is_emergency_invite, peek_call_id, request_uri_number
from tests.sip.test_transport import accept, fake_layer, message


@pytest.fixture
def refusals() -> Iterator[list[dict[str, Any]]]:
    """The log events that say a connection was refused."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "connection refused" in (event.get("log_format") or ""):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def limited_layer(**config: Any) -> tuple[Any, Any, Any, Limits]:
    layer, r, sink = fake_layer()
    limits = Limits(r, LimitsConfig(**config))
    layer.limits = limits
    return layer, r, sink, limits


def test_connections_beyond_the_per_source_cap_are_closed_at_once(refusals: list) -> None:
    # the caps alone (the connection rate has its own test)
    layer, r, sink, limits = limited_layer(max_connections_per_source=2, max_connections=10, connections_per_second=0)
    a1, t1 = accept(r, "10.0.0.1", 5001)
    a2, t2 = accept(r, "10.0.0.1", 5002)
    assert not t1.disconnecting and not t2.disconnecting
    refused = [accept(r, "10.0.0.1", 5003 + i) for i in range(5)]
    assert all(t.disconnecting for _, t in refused)
    assert len(layer.connections()) == 2 and limits.connections == 2
    assert len(refusals) == 1, "one log line per source, not per connection"
    # A refused connection's data is ignored and its close is not counted.
    proto, t = refused[0]
    proto.dataReceived(message())
    proto.connectionLost(Failure(ConnectionDone()))
    assert sink.messages == [] and limits.connections == 2
    # Another source is not affected; a closed connection frees its place.
    _, tb = accept(r, "10.0.0.2", 5001)
    assert not tb.disconnecting
    a1.connectionLost(Failure(ConnectionDone()))
    assert limits.connections_from("10.0.0.1") == 1
    _, t3 = accept(r, "10.0.0.1", 5010)
    assert not t3.disconnecting
    # That accepted connection ended the episode: the next refusal is logged again.
    accept(r, "10.0.0.1", 5011)
    assert len(refusals) == 2
    assert r.getDelayedCalls() and all(c.getTime() > r.seconds() for c in r.getDelayedCalls())


def test_connections_beyond_the_total_cap_are_closed(refusals: list) -> None:
    layer, r, sink, limits = limited_layer(max_connections=3, allow=parse_networks("10.9.0.0/16"))
    for i in range(3):
        assert not accept(r, f"10.0.0.{i + 1}", 5000)[1].disconnecting
    assert accept(r, "10.0.0.9", 5000)[1].disconnecting
    # Allowed networks are always accepted.
    assert not accept(r, "10.9.0.1", 5000)[1].disconnecting
    assert len(refusals) == 1


def test_a_banned_source_cannot_connect_and_its_open_connection_is_closed_on_its_next_message() -> None:
    from sosimple_proxy.sip.stack import SipStack
    from sosimple_proxy.sip.transaction import TransactionUser
    from tests.sip.test_transport import LISTEN, FakeReactor

    r = FakeReactor()
    limits = Limits(r, LimitsConfig(ban_seconds=60))
    stack = SipStack(r, LISTEN, TransactionUser(), limits=limits)
    stack.startService()
    proto, t = accept(r, "10.0.0.1", 5001)
    limits.ban("10.0.0.1", "test")
    proto.dataReceived(message())
    assert t.disconnecting
    assert accept(r, "10.0.0.1", 5002)[1].disconnecting
    assert not accept(r, "10.0.0.2", 5002)[1].disconnecting
    stack.stopService()


def test_a_trickled_message_is_closed_at_its_deadline() -> None:
    layer, r, sink = fake_layer(tcp_idle_timeout=600.0, message_timeout=30.0)
    proto, t = accept(r)
    proto.dataReceived(b"O")  # the first byte starts the clock
    for _ in range(5):
        r.advance(5)
        proto.dataReceived(b"X")  # a byte every 5 s: never idle
    assert not t.disconnecting
    r.advance(4.9)
    assert not t.disconnecting
    r.advance(0.1)
    assert t.disconnecting and layer.connections() == []
    proto.connectionLost(Failure(ConnectionDone()))
    assert r.getDelayedCalls() == []


def test_a_slow_but_complete_message_is_not_closed() -> None:
    layer, r, sink = fake_layer(tcp_idle_timeout=600.0, message_timeout=30.0)
    proto, t = accept(r)
    whole = message(b"v=0\r\n")
    pieces = [whole[i : i + 10] for i in range(0, len(whole), 10)]
    step = 25.0 / len(pieces)
    for piece in pieces:
        proto.dataReceived(piece)
        r.advance(step)
    assert len(sink.messages) == 1
    r.advance(100)
    assert not t.disconnecting, "no message pending: only the idle timeout applies"
    # The next message gets its own 30 s, even when it begins in the read
    # that completes the one before.
    second = message(cseq=2)
    proto.dataReceived(message(cseq=3) + second[:5])
    r.advance(20)
    proto.dataReceived(second[5:20])
    r.advance(9)
    proto.dataReceived(second[20:])
    assert len(sink.messages) == 3
    r.advance(60)
    assert not t.disconnecting


def test_keepalives_between_messages_do_not_start_the_deadline() -> None:
    layer, r, sink = fake_layer(tcp_idle_timeout=600.0, message_timeout=30.0)
    proto, t = accept(r)
    proto.dataReceived(b"\r\n")  # a lone CRLF, held in case it becomes a ping
    r.advance(100)
    assert not t.disconnecting
    proto.dataReceived(b"\r\n")  # now a ping: answered
    assert t.value().endswith(b"\r\n")
    r.advance(100)
    assert not t.disconnecting


def test_the_body_counts_too() -> None:
    layer, r, sink = fake_layer(tcp_idle_timeout=600.0, message_timeout=30.0)
    proto, t = accept(r)
    data = message(b"x" * 100)
    proto.dataReceived(data[:-50])  # the whole head, half the body
    r.advance(30)
    assert t.disconnecting and sink.messages == []


def test_no_deadline_when_turned_off() -> None:
    layer, r, sink = fake_layer(tcp_idle_timeout=600.0, message_timeout=None)
    proto, t = accept(r)
    proto.dataReceived(b"OPTIONS sip:x")
    r.advance(599)
    assert not t.disconnecting


# --- reading the request line before parsing


def test_emergency_peeks() -> None:
    numbers = frozenset({b"911", b"112"})
    assert is_emergency_invite(b"INVITE sip:911@example.com SIP/2.0\r\n", numbers)
    assert is_emergency_invite(b"INVITE sip:%39%31%31@example.com SIP/2.0\r\n", numbers)
    assert is_emergency_invite(b"INVITE tel:1-1-2;phone-context=+44 SIP/2.0\r\n", numbers)
    assert not is_emergency_invite(b"INVITE sip:9110@example.com SIP/2.0\r\n", numbers)
    assert not is_emergency_invite(b"MESSAGE sip:911@example.com SIP/2.0\r\n", numbers)
    assert not is_emergency_invite(b"INVITE sip:example.com SIP/2.0\r\n", numbers)
    assert not is_emergency_invite(b"INVITE sip:911@example.com SIP/2.0\r\n", frozenset())
    assert request_uri_number(b"INVITE  \r\n") is None
    assert request_uri_number(b"INVITE urn:service:sos SIP/2.0\r\n") is None
    assert emergency_number(" (112) ") == b"112"
    assert peek_call_id(b"BYE sip:x SIP/2.0\r\ni:  abc@h \r\nCSeq: 1 BYE\r\n\r\n") == b"abc@h"
    assert peek_call_id(b"BYE sip:x SIP/2.0\r\nCALL-ID:abc\r\n\r\n") == b"abc"
    assert peek_call_id(b"BYE sip:x SIP/2.0\r\n\r\n") is None


def test_peer_of_a_refused_connection_is_known() -> None:
    layer, r, sink, limits = limited_layer(max_connections=1)
    accept(r, "10.0.0.1", 5000)
    proto, t = accept(r, "10.0.0.2", 5000)
    assert proto.peer == Peer("tcp", "10.0.0.2", 5000) and t.disconnecting


def emergency_stack(**config: Any) -> tuple[Any, Any, Limits, Any]:
    from sosimple_proxy.sip.stack import SipStack
    from tests.sip.test_stack_limits import RecordingTU
    from tests.sip.test_transport import LISTEN, FakeReactor

    r = FakeReactor()
    limits = Limits(r, LimitsConfig(**config))
    tu = RecordingTU()
    stack = SipStack(r, LISTEN, tu, limits=limits, emergency=("911",), message_timeout=30.0)
    stack.startService()
    return stack, r, limits, tu


def test_with_emergency_numbers_a_banned_source_may_connect_for_an_emergency_call() -> None:
    from tests.sip.test_stack_limits import request

    stack, r, limits, tu = emergency_stack(ban_seconds=600, max_connections_per_source=2)
    limits.ban("10.0.0.1", "test")
    proto, t = accept(r, "10.0.0.1", 5001)
    assert not t.disconnecting
    sos = request("INVITE", "sip:911@localhost", call_id="sos", host="10.0.0.1").replace(b"UDP", b"TCP")
    proto.dataReceived(sos)
    assert [q.call_id for q in tu.requests] == ["sos"] and not t.disconnecting
    # Anything else from the banned source: dropped, and its connection closed.
    other, t2 = accept(r, "10.0.0.1", 5002)
    other.dataReceived(request("REGISTER", "sip:localhost", call_id="reg", host="10.0.0.1").replace(b"UDP", b"TCP"))
    assert t2.disconnecting and len(tu.requests) == 1
    # The caps still hold for it.
    other.connectionLost(Failure(ConnectionDone()))
    accept(r, "10.0.0.1", 5003)
    assert accept(r, "10.0.0.1", 5004)[1].disconnecting
    stack.stopService()


def test_a_banned_source_on_probation_must_speak_within_the_message_timeout() -> None:
    stack, r, limits, tu = emergency_stack(ban_seconds=600)
    limits.ban("10.0.0.1", "test")
    proto, t = accept(r, "10.0.0.1", 5001)
    r.advance(29)
    assert not t.disconnecting
    r.advance(1)
    assert t.disconnecting
    # A source that is not banned only meets the idle timeout.
    proto, t = accept(r, "10.0.0.2", 5001)
    r.advance(100)
    assert not t.disconnecting
    stack.stopService()


def test_an_oversized_datagram_from_a_banned_source_is_dropped_without_a_word() -> None:
    layer, r, sink, limits = limited_layer(ban_seconds=60)
    proto, port = r.udp[0]
    proto.datagramReceived(message(b"x" * 2000), ("10.0.0.1", 5070))
    assert len(sink.errors) == 1
    limits.ban("10.0.0.1", "test")
    proto.datagramReceived(message(b"x" * 2000), ("10.0.0.1", 5070))
    assert len(sink.errors) == 1 and port.written == [(b"SIP/2.0 513 Message Too Large\r\nContent-Length: 0\r\n\r\n", ("10.0.0.1", 5070))]


def test_tls_connections_are_refused_before_their_handshake(tmp_path: Any) -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from sosimple_proxy.sip.address import ListenAddress
    from sosimple_proxy.sip.transport import TransportLayer
    from tests.sip.test_tls_transport import Certs
    from tests.sip.test_transport import FakeReactor, RecordingSink

    r = FakeReactor()
    limits = Limits(r, LimitsConfig(max_connections_per_source=1, connections_per_second=0))
    layer = TransportLayer(
        r, [ListenAddress("tls", "127.0.0.1", 5061)], RecordingSink(), tls_server=Certs(tmp_path).server(),
        limits=limits,
    )
    layer.startService()

    def connect(port: int) -> StringTransport:
        proto = r.tcpServers[0][1].buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
        proto.makeConnection(t)
        return t

    first = connect(40000)
    calls = len(r.getDelayedCalls())
    second = connect(40001)
    assert not first.disconnecting and second.disconnecting
    assert second.value() == b"", "not one byte of a handshake for a refused connection"
    assert len(r.getDelayedCalls()) == calls, "no timer for a refused connection"


def test_a_tls_connection_flood_is_banned_and_then_refused_before_the_handshake(tmp_path) -> None:
    """Connections opened faster than [limits] connections_per_second ban
    their source; from then on each is closed before a byte of TLS."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from sosimple_proxy.sip.address import ListenAddress
    from sosimple_proxy.sip.transport import TransportLayer
    from tests.sip.test_tls_transport import Certs
    from tests.sip.test_transport import FakeReactor, RecordingSink

    r = FakeReactor()
    limits = Limits(r, LimitsConfig(max_connections_per_source=2, connections_per_second=5))
    layer = TransportLayer(
        r, [ListenAddress("tls", "127.0.0.1", 5061)], RecordingSink(), tls_server=Certs(tmp_path).server(), limits=limits,
    )
    layer.startService()
    transports = []
    for port in range(40000, 40010):
        proto = r.tcpServers[0][1].buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
        proto.makeConnection(t)
        transports.append(t)
        if not t.disconnecting:
            proto.connectionLost(Failure(ConnectionDone()))  # the flooder hangs up mid-handshake
    assert limits.is_banned("192.0.2.7")
    assert [b["reason"] for b in limits.report()["banned"]] == ["over 5 new connections/s (burst 4)"]
    assert all(t.disconnecting and t.value() == b"" for t in transports[4:]), "no handshake once banned"
