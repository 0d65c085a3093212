"""Fakes for tests of the transaction layer and of what sits on it.

A :class:`RecordingWire` stands where the transport layer would be: it
records every send with the clock's time (so retransmission schedules can
be asserted exactly) and fails sends on demand.  A :class:`RecordingTU`
stands where the proxy would be: it records every call the layer makes.
:func:`make_layer` wires both to a real ``TransactionLayer`` on a
``task.Clock``; :func:`request` and :func:`response` build the messages
RFC 3261's examples use.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.interfaces import ITransactionUser
from sosimple_proxy.sip.message import Headers, Request, Response, make_response
from sosimple_proxy.sip.transaction import TransactionLayer
from sosimple_proxy.sip.transport import TransportError

__all__ = [
    "UA",
    "UA_TCP",
    "NEXT",
    "NEXT_TCP",
    "RecordingWire",
    "RecordingTU",
    "make_layer",
    "request",
    "response",
    "copy",
]

# The documentation addresses (RFC 5737) of a caller and of the next hop.
UA = Peer("udp", "192.0.2.1", 5060)
UA_TCP = Peer("tcp", "192.0.2.1", 40001)
NEXT = Peer("udp", "192.0.2.9", 5060)
NEXT_TCP = Peer("tcp", "192.0.2.9", 5060)


class RecordingWire:
    """Records every send with the clock time; fails sends on demand
    (``fail_all``, or a destination in ``fail_dests``)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes, Peer, Any]] = []
        self.fail_all = False
        self.fail_dests: set[Peer] = set()

    def send(self, data: bytes, dest: Peer, local: Any = None) -> defer.Deferred:
        self.sent.append((self.clock.seconds(), data, dest, local))
        if self.fail_all or dest in self.fail_dests:
            return defer.fail(TransportError(dest, "connection refused"))
        return defer.succeed(None)

    def times(self, start: bytes | None = None) -> list[float]:
        """Send times of messages whose first line starts with ``start``."""
        return [t for t, d, _, _ in self.sent if start is None or d.startswith(start)]

    def first_lines(self) -> list[str]:
        return [d.split(b"\r\n", 1)[0].decode() for _, d, _, _ in self.sent]

    def clear(self) -> None:
        del self.sent[:]


@implementer(ITransactionUser)
class RecordingTU:
    """Records every call; optionally answers new requests with a callback."""

    def __init__(self) -> None:
        self.requests: list[tuple[Request, Any]] = []
        self.responses: list[tuple[Response, Any]] = []
        self.stray_acks: list[tuple[Request, Peer]] = []
        self.stray_responses: list[tuple[Response, Peer]] = []
        self.failures: list[tuple[Any, str]] = []
        self.on_request: Any = None

    def requestReceived(self, request: Request, transaction: Any) -> None:
        self.requests.append((request, transaction))
        if self.on_request is not None:
            self.on_request(request, transaction)

    def responseReceived(self, response: Response, transaction: Any) -> None:
        self.responses.append((response, transaction))

    def strayAck(self, ack: Request, source: Peer) -> None:
        self.stray_acks.append((ack, source))

    def strayResponse(self, response: Response, source: Peer) -> None:
        self.stray_responses.append((response, source))

    def serverTransactionFailed(self, transaction: Any, reason: str) -> None:
        self.failures.append((transaction, reason))

    @property
    def statuses(self) -> list[int]:
        return [r.status for r, _ in self.responses]


def make_layer(**kw: Any) -> tuple[TransactionLayer, Clock, RecordingWire, RecordingTU]:
    """A ``TransactionLayer`` (``kw`` go to it) on a fresh ``Clock``, a
    recording wire and a recording TU."""
    clock = Clock()
    wire = RecordingWire(clock)
    tu = RecordingTU()
    layer = TransactionLayer(clock, wire, tu, **kw)
    return layer, clock, wire, tu


def request(
    method: str = "INVITE",
    branch: str | None = "z9hG4bK776asdhds",
    host: str = "192.0.2.1",
    port: int | None = 5060,
    transport: str = "UDP",
    via_params: str = "",
    to_tag: str | None = None,
    from_tag: str = "1928301774",
    cseq: int = 314159,
    uri: str = "sip:bob@example.com",
    call_id: str = "a84b4c76e66710@pc33.example.com",
    extra: tuple[tuple[str, str], ...] = (),
    more_vias: tuple[str, ...] = (),
) -> Request:
    """A request as a UA at ``host:port`` sends it (RFC 3261's Alice to Bob)."""
    hostport = host if port is None else f"{host}:{port}"
    via = f"SIP/2.0/{transport} {hostport}"
    if branch is not None:
        via += f";branch={branch}"
    via += via_params
    to = "Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    fields = [("Via", via)]
    fields += [("Via", v) for v in more_vias]
    fields += [
        ("Max-Forwards", "70"),
        ("To", to),
        ("From", f"Alice <sip:alice@example.com>;tag={from_tag}"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", "<sip:alice@192.0.2.1>"),
    ]
    fields += list(extra)
    return Request(method, uri, Headers(fields))


def response(req: Request, status: int, to_tag: str | None = "b0b") -> Response:
    """A response as the next hop would send it (same Vias, a To tag)."""
    return make_response(req, status, to_tag=to_tag)


def copy(req: Request) -> Request:
    """A fresh object for a retransmission (the layer may stamp the original)."""
    return Request(req.method, req.uri, Headers(list(req.headers)), req.body)
