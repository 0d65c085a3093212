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

    def __init__(self, layer: TransportLayer, transport_name: str, local: ListenAddress | None) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.local = local
        self.framer = StreamFramer(layer.max_message_size)
        self.last_activity = 0.0
        self._idle_call: Any = None
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
        self.last_activity = self.layer.reactor.seconds()
        self._idle_call = self.layer.reactor.callLater(self.layer.tcp_idle_timeout, self._checkIdle)
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
        for event in self.framer.feed(data):
            if self.closing:
                return
            if type(event) is Frame:
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

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self._lost_reason = reason or Failure(ConnectionDone("connection closed"))
        if self._deadline is not None:
            if self._deadline.expired:
                # Say why we aborted it, not that it was aborted.
                seconds = self.layer.tls.handshake_timeout
                self._lost_reason = Failure(HandshakeTimeout(f"TLS handshake not finished in {seconds:g} s"))
            self._deadline.cancel()
            self._deadline = None
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(self._lost_reason)
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self.layer._closed(self)
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
