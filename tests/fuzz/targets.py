"""The fuzz targets: one function per input surface, bytes in, a bug out.

Each target takes arbitrary bytes and raises :class:`FuzzBug` (or lets an
unexpected exception escape) only when the code under test misbehaves:

- ``sip_parser``: :func:`parse_message` as a datagram and as a stream
  message; its only exception is :class:`ParseError`, never its
  "internal parser error" wrapper (that is a bug it caught), and every
  structured view of a message it accepted parses or raises ParseError.
  A message it accepts serializes into bytes it accepts again.
- ``parser_c_vs_pure``: the compiled fast paths of the parser
  (``sip/_cparse.c``) against the pure code: the same message, views and
  serialization, or the same error (``sip_parser`` runs the compiled code,
  as the proxy does, when it is built).
- ``framing``: :class:`StreamFramer` fed the bytes in chunks (the first
  byte chooses the chunk size): never an exception, never more buffered
  than ``max_size`` plus one chunk, and the bytes it framed are the bytes
  it was fed (no message invented, none reordered).
- ``transaction_input``: the stack's input path (:class:`SipStack` on a
  fake reactor, a recording wire under the transaction layer, a TU that
  answers every request) over UDP and TCP, then every timer run out: no
  ``log.failure`` anywhere (the stack swallows exceptions into the log, so
  the log is where a bug shows), and the transaction table empties.
- ``amp_decoder``: every :mod:`overlay.wire` decoder (``ValueError`` only),
  then the bytes as an AMP command body to a real node and as raw AMP box
  bytes: no ``log.failure``, every call answered.

The atheris runner (``tests/fuzz/run.py``) and the regression tests
(``tests/fuzz/test_fuzz_regressions.py``) share these functions.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols import amp as tamp
from twisted.python.failure import Failure

from sosimple_proxy.overlay import amp as oamp
from sosimple_proxy.overlay import wire
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.errors import ParseError
from sosimple_proxy.sip.framing import Frame, FramingError, KeepAlive, StreamFramer
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.stack import SipStack
from sosimple_proxy.sip.transaction import TransactionUser

__all__ = ["FuzzBug", "TARGETS", "sip_parser", "parser_c_vs_pure", "framing", "transaction_input", "amp_decoder"]


class FuzzBug(AssertionError):
    """The code under test misbehaved on this input."""


# -- catching what the code only logs


@contextmanager
def failures_logged() -> Iterator[list[str]]:
    """Collect every ``log.failure`` (and any critical event) while inside."""
    seen: list[str] = []

    def observer(event: dict) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            seen.append(failure.getTraceback())
        elif getattr(event.get("log_level"), "name", "") == "critical":
            seen.append(str(event.get("log_format")))

    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)


def _no_failures(seen: list[str], what: str) -> None:
    if seen:
        raise FuzzBug(f"{what} logged a failure:\n{seen[0]}")


# -- the SIP parser


def _views(msg: Request | Response) -> None:
    """Every structured view the proxy reads: each parses or raises ParseError."""
    views: list[Callable[[], Any]] = [
        lambda: msg.vias,
        lambda: msg.top_via,
        lambda: msg.cseq,
        lambda: msg.call_id,
        lambda: msg.from_,
        lambda: msg.to,
        lambda: msg.max_forwards,
        lambda: msg.contacts,
        lambda: msg.routes,
        lambda: msg.record_routes,
    ]
    if isinstance(msg, Request):
        views.append(lambda: msg.ruri)
    for view in views:
        try:
            view()
        except ParseError:
            pass


def _parse(data: bytes, stream: bool) -> Request | Response | None:
    try:
        return parse_message(data, stream=stream)
    except ParseError as e:
        if str(e).startswith("internal parser error"):
            raise FuzzBug(f"parse_message(stream={stream}) hit a bug: {e}") from e
        return None


def sip_parser(data: bytes) -> None:
    for stream in (False, True):
        msg = _parse(data, stream)
        if msg is None:
            continue
        _views(msg)
        again = _parse(msg.serialize(), stream)
        if again is None:
            raise FuzzBug(f"a message accepted (stream={stream}) does not parse once serialized")
        if type(again) is not type(msg):
            raise FuzzBug("serializing turned a request into a response or back")


def parser_c_vs_pure(data: bytes) -> None:
    """Differential: the compiled fast paths (sip/_cparse.c) and the pure
    code give the same message, views and serialization, or the same error
    (``sip_parser`` already runs the compiled code, as the proxy does)."""
    from sosimple_proxy.sip import accel
    from tests.sip.differential import both, outcome

    if not accel.available():
        return
    for stream in (False, True):
        pure, fast = both(lambda: outcome(data, stream))
        if pure != fast:
            raise FuzzBug(f"compiled and pure parsers differ (stream={stream}):\npure: {pure!r}\nfast: {fast!r}")


# -- stream framing

MAX_FRAME = 4096


def framing(data: bytes) -> None:
    if not data:
        return
    chunk = 1 + data[0] % 64
    body = data[1:]
    framer = StreamFramer(MAX_FRAME)
    frames: list[bytes] = []
    failed = False
    for i in range(0, len(body), chunk):
        for event in framer.feed(body[i : i + chunk]):
            if failed:
                raise FuzzBug("an event after a FramingError")
            if isinstance(event, Frame):
                if len(event.data) > MAX_FRAME:
                    raise FuzzBug(f"a frame of {len(event.data)} bytes over max_size {MAX_FRAME}")
                frames.append(event.data)
            elif isinstance(event, FramingError):
                failed = True
                if event.status not in (400, 413, 513):
                    raise FuzzBug(f"framing error status {event.status}")
            elif not isinstance(event, KeepAlive):
                raise FuzzBug(f"unknown event {event!r}")
        if framer.buffered > MAX_FRAME + chunk:
            raise FuzzBug(f"{framer.buffered} bytes buffered, max_size {MAX_FRAME}")
    # Frames are the input's own bytes, in order, with only line ends and
    # pings between them dropped: each is found after the one before.
    pos = 0
    for frame in frames:
        found = body.find(frame, pos)
        if found < 0:
            raise FuzzBug("a frame whose bytes were not fed in that order")
        pos = found + len(frame)


# -- the transaction layer's input, through the stack

LOCAL_UDP = ListenAddress("udp", "127.0.0.1", 5060)
LOCAL_TCP = ListenAddress("tcp", "127.0.0.1", 5060)
SOURCES = (
    (Peer("udp", "192.0.2.1", 5060), LOCAL_UDP),
    (Peer("tcp", "192.0.2.1", 40001), LOCAL_TCP),
)


class _Wire:
    """The transport under the transaction layer: every send succeeds;
    every sent message must parse (we never put junk on the wire).  A 400
    to a request without To/From/Call-ID cannot copy them (RFC 3261
    8.2.6.2), so only the grammar is checked, not the mandatory headers."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, data: bytes, dest: Peer, local: Any = None) -> defer.Deferred:
        self.sent += 1
        try:
            parse_message(data, stream=dest.reliable, validate=False)
        except ParseError as e:
            raise FuzzBug(f"the stack sent bytes that do not parse ({e}):\n{data[:300]!r}") from e
        return defer.succeed(None)


class _AnsweringTU(TransactionUser):
    """Answers every request: INVITE with 180 then 486, others with 200."""

    def requestReceived(self, request: Request, transaction: Any) -> None:
        if request.method == "INVITE":
            transaction.respond(make_response(request, 180, to_tag="fz"))
            transaction.respond(make_response(request, 486, to_tag="fz"))
        else:
            transaction.respond(make_response(request, 200, to_tag="fz"))


def transaction_input(data: bytes) -> None:
    """One or more messages (split at NUL NUL) into a fresh stack, from a
    UDP and a TCP source, then every timer run out."""
    clock = MemoryReactorClock()
    tu = _AnsweringTU()
    stack = SipStack(clock, [], tu)
    wire_ = _Wire()
    stack.transactions.transport = wire_
    parts = data.split(b"\x00\x00")[:8]
    with failures_logged() as seen:
        for source, local in SOURCES:
            for part in parts:
                stack.messageReceived(part, source, local)
                clock.advance(0.5)
        for _ in range(80):  # Timer B/F/H... 64*T1 = 32 s; J and K end it
            clock.advance(1.0)
        stack.tu.detach()
    _no_failures(seen, "the stack")
    if stack.transactions.server_count or stack.transactions.client_count:
        raise FuzzBug(
            f"transactions left after every timer ran: {stack.transactions.server_count} server, "
            f"{stack.transactions.client_count} client"
        )


# -- the overlay's AMP decoder

DECODERS: tuple[Callable[[bytes], Any], ...] = (
    wire.decode_int,
    wire.decode_hello,
    wire.decode_peer,
    wire.decode_peers,
    wire.decode_state,
    wire.decode_find_result,
    wire.decode_records,
    wire.decode_fetch,
    wire.decode_fetch_result,
    wire.decode_sync,
    wire.decode_sync_result,
    wire.decode_leave,
)
COMMANDS = (
    oamp.Hello,
    oamp.State,
    oamp.Find,
    oamp.Notify,
    oamp.SuccessorHint,
    oamp.Store,
    oamp.Fetch,
    oamp.Sync,
    oamp.Leave,
    oamp.Fingers,
)

_AMP_ERRORS = tuple(name for name in dir(tamp) if isinstance(getattr(tamp, name), type)
                    and issubclass(getattr(tamp, name), tamp.AmpError))

_RING: Any = None


def _ring() -> Any:
    """One settled simulated ring of three nodes, built once (a fuzz run
    calls the target millions of times)."""
    global _RING
    if _RING is None:
        from sosimple_proxy.testing.ring import sim_ring

        _RING = sim_ring(3, seed=7)
    return _RING


def amp_decoder(data: bytes) -> None:
    for decode in DECODERS:
        try:
            decode(data)
        except ValueError:
            pass
    if not data:
        return
    ring = _ring()
    node = ring.live()[0]
    command = COMMANDS[data[0] % len(COMMANDS)]
    body = data[1:]
    with failures_logged() as seen:
        # The body as a well-formed AMP call, so the decoder behind it is reached.
        proto = oamp.OverlayProtocol(node, node.peer)
        transport = StringTransport()
        proto.makeConnection(transport)
        box = tamp.AmpBox({b"_command": command.commandName, b"_ask": b"1"})
        if len(body) <= tamp.MAX_VALUE_LENGTH:
            box[b"body"] = body
        proto.dataReceived(box.serialize())
        ring.clock.advance(ring.interval)
        answered = transport.value()
        if not answered:
            raise FuzzBug(f"{command.commandName!r} with this body got no answer")
        if b"_error_code" in answered and b"UNHANDLED" in answered:
            raise FuzzBug(f"{command.commandName!r} with this body raised an unhandled error:\n{answered[:400]!r}")
        proto.connectionLost(Failure(ConnectionDone()))
        # The bytes as raw AMP input: framing errors only drop the connection.
        proto = oamp.OverlayProtocol(node, node.peer)
        transport = StringTransport()
        proto.makeConnection(transport)
        called = len(seen)
        try:
            proto.dataReceived(data)
        except tamp.AmpError:
            pass  # in a reactor: logged, and the connection dropped (Twisted's own answer to a bad box)
        finally:
            ring.clock.advance(ring.interval)
        # Twisted's AMP logs its own protocol errors (an empty box, a key too
        # long...) as it drops the connection: that is the answer to junk.
        raw = seen[called:]
        del seen[called:]
        for text in raw:
            if not any(f"twisted.protocols.amp.{name}" in text for name in _AMP_ERRORS):
                seen.append(text)
            elif not transport.disconnecting:
                raise FuzzBug(f"AMP logged a protocol error but kept the connection:\n{text}")
        proto.connectionLost(Failure(ConnectionDone()))
    _no_failures(seen, "the AMP side")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "sip_parser": sip_parser,
    "parser_c_vs_pure": parser_c_vs_pure,
    "framing": framing,
    "transaction_input": transaction_input,
    "amp_decoder": amp_decoder,
}
