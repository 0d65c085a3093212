"""SIP over a stream (TCP, TLS): one connection, many messages.

:class:`StreamConnection` cuts messages out of the byte stream with
:class:`~sosimple_proxy.sip.framing.StreamFramer`, answers CRLF keep-alives,
closes an idle or out-of-step connection, and tells the transport layer when
it opens and closes so that its table of connections stays right.

Over TLS the same protocol runs inside Twisted's ``TLSMemoryBIOProtocol``;
such a connection is offered for sends only once its handshake is done (a
message handed to a connection whose peer then fails verification would be
lost without an error), and one whose handshake is not done in
``[tls] handshake_timeout`` seconds is aborted.

Two more clocks guard a connection: the idle timeout (nothing at all for
``tcp_idle_timeout``) and the message deadline (a message begun must be
complete within ``message_timeout``), without which a sender that trickles
one never-ending header line, a byte every few seconds, would hold its
connection and buffer forever.  An accepted connection is first admitted by
the layer (the ``[limits]`` connection caps and bans): a refused one is
closed at once, before it costs a timer, a table entry or a TLS handshake.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sosimple_proxy.security.tls import HandshakeDeadline
from sosimple_proxy.sip.address import ListenAddress, Peer, normal_host
from sosimple_proxy.sip.framing import Frame, FramingError, KeepAlive, StreamFramer
from sosimple_proxy.sip.interfaces import IConnectionObserver

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.transport import TransportLayer

__all__ = ["StreamConnection", "StreamFactory", "Connecting", "HandshakeTimeout"]

log = Logger()


@functools.lru_cache(maxsize=64)
def _is_unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


class HandshakeTimeout(Exception):
    """A TLS connection was closed because its handshake took too long."""


@implementer(IHandshakeListener)
class StreamConnection(Protocol):
    """One stream connection (TCP or TLS), accepted or made by us."""

    peer: Peer | None = None
    closing = False
    _deadline: HandshakeDeadline | None = None
    # Passed the layer's admission (limits); counted against its caps.
    admitted = False
    counted = False
    # From a banned source, let in to read one message (an emergency call?).
    probation = False

    def __init__(self, layer: TransportLayer, transport_name: str, local: ListenAddress | None) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.local = local
        self._inbound = local is not None  # a listener's factory knows its address
        self.framer = StreamFramer(layer.max_message_size)
        self.last_activity = 0.0
        self._idle_call: Any = None
        self._message_call: Any = None  # the deadline of the message being received
        self.keys: list[Peer] = []  # the table entries that point here
        self.lost: defer.Deferred = defer.Deferred()
        #: TLS: whether the handshake is done (a TCP connection is ready at once).
        self.secure = transport_name == "tls"
        self.ready = not self.secure
        self._ready_waiters: list[defer.Deferred] = []
        self._lost_reason: Failure | None = None

    # -- Protocol

    def connectionMade(self) -> None:
        addr = self.transport.getPeer()
        self.peer = Peer(self.transport_name, normal_host(addr.host), addr.port)
        if self.local is None:
            self.local = self.layer._localFor(self.transport_name, self.transport.getHost())
        elif _is_unspecified(self.local.host):
            # A wildcard listener: say which of our addresses the peer reached,
            # since that is what belongs in Via and Record-Route.
            self.local = attrs.evolve(self.local, host=normal_host(self.transport.getHost().host))
        if self.inbound and not self.layer._admit(self):
            self.closing = True
            self.transport.abortConnection()
            return
        self.last_activity = self.layer.reactor.seconds()
        self._idle_call = self.layer.reactor.callLater(self.layer.tcp_idle_timeout, self._checkIdle)
        if self.probation and self.layer.message_timeout:
            # Not the idle timeout: a banned source must speak up at once.
            self._message_call = self.layer.reactor.callLater(self.layer.message_timeout, self._messageTimedOut)
        self.layer._track(self)
        if self.secure:
            self._deadline = HandshakeDeadline(
                self.layer.reactor, self.layer.tls.handshake_timeout, self.transport.abortConnection, peer=str(self.peer)
            )
        else:
            self.layer._register(self, self.peer)
        log.debug("{peer}: connected (local {local})", peer=self.peer, local=self.local)

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS peer is verified; offer the connection."""
        if self._deadline is not None:
            self._deadline.completed()
            self._deadline = None
        if self.closing:
            return
        self.ready = True
        assert self.peer is not None
        self.layer._register(self, self.peer)
        log.debug("{peer}: TLS handshake done", peer=self.peer)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(self)

    def when_ready(self) -> defer.Deferred:
        """Fires with this connection once it can carry messages (TLS: after
        the handshake); fails with why it closed first (for TLS, e.g. a
        :class:`~sosimple_proxy.security.tls.TLSVerificationError`)."""
        if self.ready and not self.closing:
            return defer.succeed(self)
        if self._lost_reason is not None or self.closing:
            return defer.fail(self._lost_reason or Failure(ConnectionDone("connection closed")))
        d: defer.Deferred = defer.Deferred()
        self._ready_waiters.append(d)
        return d

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_activity = self.layer.reactor.seconds()
        assert self.peer is not None and self.local is not None
        completed = False
        for event in self.framer.feed(data):
            if self.closing:
                return
            if type(event) is Frame:
                completed = True
                try:
                    self.layer.sink.messageReceived(event.data, self.peer, self.local)
                except Exception:
                    log.failure("message sink failed on a message from {peer}", peer=self.peer)
            elif type(event) is KeepAlive:
                self.transport.write(event.pong)
            elif type(event) is FramingError:
                log.info(
                    "{peer}: stream framing error {status} {reason}; closing",
                    peer=self.peer,
                    status=event.status,
                    reason=event.reason,
                )
                answer = self.layer._sinkFramingError(event.head, event.status, event.reason, self.peer)
                if answer:
                    self.transport.write(answer)
                self.close()
        if not self.closing:
            self._watchMessage(completed)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self._lost_reason = reason or Failure(ConnectionDone("connection closed"))
        if self._deadline is not None:
            self.layer.tls.handshake_failures += 1
            if self._deadline.expired:
                # Say why we aborted it, not that it was aborted.
                seconds = self.layer.tls.handshake_timeout
                self._lost_reason = Failure(HandshakeTimeout(f"TLS handshake not finished in {seconds:g} s"))
            self._deadline.cancel()
            self._deadline = None
            limits = self.layer.limits
            if limits is not None and self.inbound and self.admitted and self.peer is not None:
                # [limits]: failing handshakes again and again bans a source
                limits.handshake_failed(self.peer.host)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(self._lost_reason)
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self._stopDeadline()
        self.layer._closed(self)
        if not self.admitted and self.inbound:
            self.lost.callback(None)
            return  # refused at once: nobody saw it open
        if self.framer.buffered:
            log.info("{peer}: closed with {n} bytes of an unfinished message", peer=self.peer, n=self.framer.buffered)
        log.debug("{peer}: connection closed", peer=self.peer)
        self.lost.callback(None)
        sink = self.layer.sink
        if self.peer is not None and IConnectionObserver.providedBy(sink):
            try:
                sink.connectionClosed(self.peer)
            except Exception:
                log.failure("connection observer failed for {peer}", peer=self.peer)

    # -- used by the layer

    def usable(self) -> bool:
        return not self.closing and self.connected and self.ready

    def write(self, data: bytes) -> None:
        self.last_activity = self.layer.reactor.seconds()
        self.transport.write(data)

    def close(self) -> None:
        """Close after what was written is flushed; no longer offered for sends."""
        if not self.closing:
            self.closing = True
            self.layer._unregister(self)
            self.transport.loseConnection()

    @property
    def inbound(self) -> bool:
        """Accepted from a peer (made by a listener), not made by us."""
        return self._inbound

    def _watchMessage(self, completed: bool) -> None:
        """Start the message deadline at a message's first byte, restart it
        when one completed and the next has begun, clear it when nothing is
        pending.  A message that arrives in one read costs no timer."""
        timeout = self.layer.message_timeout
        if not timeout:
            return
        if self.framer.in_message:
            if self._message_call is None or completed:
                self._stopDeadline()
                self._message_call = self.layer.reactor.callLater(timeout, self._messageTimedOut)
        elif self._message_call is not None:
            self._stopDeadline()

    def _stopDeadline(self) -> None:
        if self._message_call is not None and self._message_call.active():
            self._message_call.cancel()
        self._message_call = None

    def _messageTimedOut(self) -> None:
        self._message_call = None
        if self.closing:
            return
        log.info(
            "{peer}: no complete message within {t:g}s ({n} bytes held), closing",
            peer=self.peer,
            t=self.layer.message_timeout,
            n=self.framer.buffered,
        )
        self.close()

    def _checkIdle(self) -> None:
        # One timer per connection, pushed back lazily: cheaper than resetting
        # a DelayedCall on every message.
        self._idle_call = None
        if self.closing:
            return
        now = self.layer.reactor.seconds()
        remaining = self.last_activity + self.layer.tcp_idle_timeout - now
        if remaining > 0:
            self._idle_call = self.layer.reactor.callLater(remaining, self._checkIdle)
            return
        log.info("{peer}: idle for {t:g}s, closing", peer=self.peer, t=self.layer.tcp_idle_timeout)
        self.close()


class StreamFactory(Factory):
    noisy = False

    def __init__(self, layer: TransportLayer, transport_name: str, local: ListenAddress | None) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.local = local  # set once the listening port is known

    def buildProtocol(self, addr: Any) -> StreamConnection:
        return StreamConnection(self.layer, self.transport_name, self.local)


@attrs.define
class Connecting:
    """An outgoing connection being made, and what waits to be sent on it."""

    queue: list[tuple[bytes, defer.Deferred]] = attrs.field(factory=list)
    attempt: defer.Deferred | None = None
