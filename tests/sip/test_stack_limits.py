"""The stack's door ([limits]): banned sources cost no parse, the request
over the rate gets 503 with Retry-After, emergency calls always pass, and a
full transaction table turns new requests away while calls carry on.
Driven with a fake clock and a recording transport: no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

import sosimple_proxy.sip.stack as stack_module
from sosimple_proxy.security.limits import Limits, LimitsConfig, parse_networks
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Request, Response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.stack import SipStack
from sosimple_proxy.sip.transaction import TransactionUser

LOCAL = ListenAddress("udp", "127.0.0.1", 5060)
FLOODER = Peer("udp", "192.0.2.66", 5070)
OTHER = Peer("udp", "192.0.2.7", 5070)


def request(
    method: str = "OPTIONS",
    uri: str = "sip:bob@localhost",
    *,
    branch: str = "z9hG4bK-1",
    call_id: str = "call-1",
    to_tag: str | None = None,
    cseq: int = 1,
    host: str = "192.0.2.66",
) -> bytes:
    to = "<sip:bob@localhost>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5070;branch={branch}\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:alice@localhost>;tag=a1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def response(status: int = 200, branch: str = "z9hG4bK-out") -> bytes:
    return (
        f"SIP/2.0 {status} OK\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
        f"From: <sip:alice@localhost>;tag=a1\r\nTo: <sip:bob@localhost>;tag=b1\r\n"
        f"Call-ID: out-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


class RecordingTU(TransactionUser):
    """Keeps every request, ACK and response it is given; answers nothing,
    so each new non-ACK request stays a live server transaction."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.acks: list[Request] = []
        self.responses: list[Response] = []

    def requestReceived(self, request: Request, transaction: Any) -> None:
        self.requests.append(request)

    def strayAck(self, ack: Request, source: Peer) -> None:
        self.acks.append(ack)

    def strayResponse(self, response: Response, source: Peer) -> None:
        self.responses.append(response)


class Wire:
    """The transport under the transaction layer: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Peer]] = []

    def send(self, data: bytes, dest: Peer, local: ListenAddress | None = None) -> defer.Deferred:
        self.sent.append((parse_message(data), dest))
        return defer.succeed(None)

    def statuses(self) -> list[int]:
        return [m.status for m, _ in self.sent if isinstance(m, Response)]


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, emergency: tuple[str, ...] = (), **limits: Any) -> None:
        self.clock = MemoryReactorClock()
        self.limits = Limits(self.clock, LimitsConfig(**limits))
        self.tu = RecordingTU()
        self.stack = SipStack(self.clock, [], self.tu, limits=self.limits, emergency=emergency)
        self.wire = Wire()
        self.stack.transactions.transport = self.wire
        self.stack.transactions.trying_delay = None  # no 100 Trying: only our answers on the wire
        self.parsed = 0

        def counting_parse(data: bytes, **kw: Any) -> Any:
            self.parsed += 1
            return parse_message(data, **kw)

        monkeypatch.setattr(stack_module, "parse_message", counting_parse)

    def receive(self, data: bytes, source: Peer = FLOODER) -> None:
        self.stack.messageReceived(data, source, LOCAL)


def test_banned_source_is_dropped_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=2, ban_seconds=60)
    for i in range(2):
        h.receive(request(branch=f"z9hG4bK-{i}"))
    assert len(h.tu.requests) == 2 and h.parsed == 2
    h.receive(request(branch="z9hG4bK-over"))  # over the rate: parsed once, answered 503
    assert h.parsed == 3 and h.wire.statuses() == [503]
    for i in range(1000):
        h.receive(request(branch=f"z9hG4bK-flood-{i}"))
    assert h.parsed == 3, "a banned source's datagrams must not be parsed"
    assert h.wire.statuses() == [503] and len(h.tu.requests) == 2
    assert h.stack.gate.dropped == 1000
    # Everyone else is untouched.
    h.receive(request(branch="z9hG4bK-other", host="192.0.2.7"), OTHER)
    assert len(h.tu.requests) == 3


def test_limited_request_is_answered_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=1, ban_seconds=60)
    h.receive(request(branch="z9hG4bK-a"))
    h.clock.advance(10)
    h.receive(request(branch="z9hG4bK-b"))
    h.receive(request(branch="z9hG4bK-c"))
    [(answer, dest)] = h.wire.sent
    assert answer.status == 503
    assert "requests/s" in answer.reason
    assert answer.headers.get("Retry-After") == "60"
    assert answer.top_via.branch == "z9hG4bK-c"
    assert dest == FLOODER
    assert len(h.tu.requests) == 2
    assert [b["address"] for b in h.limits.bans()] == ["192.0.2.66"]


def test_ban_ends_on_time(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=1, ban_seconds=30)
    h.receive(request(branch="z9hG4bK-a"))
    h.receive(request(branch="z9hG4bK-b"))  # 503, banned
    h.clock.advance(29.9)
    h.receive(request(branch="z9hG4bK-c"))
    assert len(h.tu.requests) == 1
    h.clock.advance(0.2)
    h.receive(request(branch="z9hG4bK-d"))
    assert len(h.tu.requests) == 2 and h.limits.bans() == []


def test_limited_ack_and_garbage_get_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=1, ban_seconds=0)  # no bans: every excess is limited
    h.receive(request(branch="z9hG4bK-a"))
    h.receive(request("ACK", branch="z9hG4bK-b", to_tag="t"))
    h.receive(b"INVITE nonsense\r\n\r\n")
    h.receive(request(branch="z9hG4bK-c"))
    assert h.wire.statuses() == [503]  # only the OPTIONS; no 400 for the garbage


def test_responses_are_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=1)
    for i in range(20):
        h.receive(response(branch=f"z9hG4bK-out{i}"))
    assert len(h.tu.responses) == 20 and h.limits.bans() == []


def test_allowed_networks_are_never_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=1, allow=parse_networks("192.0.2.0/24"))
    for i in range(300):
        h.receive(request(branch=f"z9hG4bK-{i}"))
    assert len(h.tu.requests) == 300 and h.wire.sent == [] and h.limits.bans() == []


@pytest.mark.parametrize(
    "uri",
    ["sip:911@localhost", "sip:911;phone-context=+1@localhost;user=phone", "tel:911;phone-context=+1", "sips:1-1-2@localhost"],
)
def test_emergency_invite_from_a_banned_source_passes(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    h = Harness(monkeypatch, emergency=("911", "112"), requests_per_second=1, burst=1, ban_seconds=300)
    h.receive(request(branch="z9hG4bK-a"))
    h.receive(request(branch="z9hG4bK-b"))  # 503, banned
    assert h.limits.is_banned(FLOODER.host)
    h.receive(request("INVITE", "sip:bob@localhost", branch="z9hG4bK-c", call_id="x"))
    assert [r.method for r in h.tu.requests] == ["OPTIONS"]
    h.receive(request("INVITE", uri, branch="z9hG4bK-sos", call_id="sos-1"))
    assert [r.method for r in h.tu.requests] == ["OPTIONS", "INVITE"]
    assert h.tu.requests[-1].call_id == "sos-1"
    # The rest of that call passes too: its ACK, a re-INVITE, the BYE.
    h.receive(request("ACK", uri, branch="z9hG4bK-ack", call_id="sos-1", to_tag="gw"))
    h.receive(request("INVITE", uri, branch="z9hG4bK-re", call_id="sos-1", to_tag="gw", cseq=2))
    h.receive(request("BYE", uri, branch="z9hG4bK-bye", call_id="sos-1", to_tag="gw", cseq=3))
    assert [r.method for r in h.tu.requests] == ["OPTIONS", "INVITE", "INVITE", "BYE"]
    assert len(h.tu.acks) == 1
    # Another call from the banned source is still dropped.
    h.receive(request("BYE", "sip:bob@localhost", branch="z9hG4bK-z", call_id="x", to_tag="q"))
    assert len(h.tu.requests) == 4
    # The BYE shortened what is remembered: its retransmissions for 32 s.
    h.clock.advance(40)
    h.receive(request("BYE", uri, branch="z9hG4bK-bye", call_id="sos-1", to_tag="gw", cseq=3))
    assert len(h.tu.requests) == 4 and h.stack.gate.emergency_calls() == 0


def test_emergency_calls_are_never_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, emergency=("112",), requests_per_second=1, burst=1)
    for i in range(50):
        h.receive(request("INVITE", "sip:112@localhost", branch=f"z9hG4bK-{i}", call_id=f"sos-{i}"))
    assert len(h.tu.requests) == 50 and h.limits.bans() == [] and h.wire.statuses() == []
    h.receive(request(branch="z9hG4bK-opt"))  # the source's bucket is still full
    assert len(h.tu.requests) == 51


def test_emergency_passes_a_full_transaction_table(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, emergency=("911",), max_transactions=1)
    h.receive(request(branch="z9hG4bK-a"))
    h.receive(request(branch="z9hG4bK-b"))
    h.receive(request("INVITE", "sip:911@localhost", branch="z9hG4bK-sos", call_id="sos"))
    assert [r.method for r in h.tu.requests] == ["OPTIONS", "INVITE"] and h.wire.statuses() == [503]


def test_max_transactions_turns_new_requests_away_while_calls_carry_on(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, max_transactions=2)
    h.receive(request(branch="z9hG4bK-1", call_id="c1"))
    h.receive(request("INVITE", branch="z9hG4bK-2", call_id="c2"))
    assert h.stack.transactions.server_count == 2
    h.receive(request(branch="z9hG4bK-3", call_id="c3"))  # new: 503
    [(answer, _)] = h.wire.sent
    assert answer.status == 503 and "too many transactions" in answer.reason
    assert int(answer.headers.get("Retry-After")) > 0
    # What keeps calls going still passes.
    h.receive(request("BYE", branch="z9hG4bK-4", call_id="dialog", to_tag="t", cseq=2))
    h.receive(request("ACK", branch="z9hG4bK-5", call_id="dialog", to_tag="t"))
    h.receive(request("CANCEL", branch="z9hG4bK-2", call_id="c2"))
    h.receive(response(branch="z9hG4bK-out"))
    assert [r.method for r in h.tu.requests] == ["OPTIONS", "INVITE", "BYE", "CANCEL"]
    assert len(h.tu.acks) == 1 and len(h.tu.responses) == 1
    # A retransmission of a live transaction is absorbed, not refused.
    h.receive(request(branch="z9hG4bK-1", call_id="c1"))
    assert h.wire.statuses() == [503]
    # Once transactions end, new requests are served again.
    h.stack.transactions.clear()
    h.receive(request(branch="z9hG4bK-6", call_id="c6"))
    assert h.tu.requests[-1].call_id == "c6"


def test_without_limits_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = MemoryReactorClock()
    tu = RecordingTU()
    stack = SipStack(clock, [], tu)
    stack.transactions.transport = Wire()
    for i in range(500):
        stack.messageReceived(request(branch=f"z9hG4bK-{i}"), FLOODER, LOCAL)
    assert len(tu.requests) == 500 and stack.gate is None


def test_an_oversized_datagram_from_a_banned_source_is_not_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, requests_per_second=1, burst=1, ban_seconds=60)
    head = request(branch="z9hG4bK-big")
    assert h.stack.framingError(head, 513, "Message Too Large", FLOODER) is not None
    h.receive(request(branch="z9hG4bK-b"))  # 503: banned
    parsed = h.parsed
    assert h.stack.framingError(head, 513, "Message Too Large", FLOODER) is None
    assert h.parsed == parsed


def test_allowed_sources_pass_a_full_transaction_table(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, max_transactions=1, allow=parse_networks("192.0.2.7"))
    h.receive(request(branch="z9hG4bK-a"))
    h.receive(request(branch="z9hG4bK-b"))
    h.receive(request(branch="z9hG4bK-gw", host="192.0.2.7"), OTHER)
    assert len(h.tu.requests) == 2 and h.wire.statuses() == [503]
