"""SIP transports: UDP datagrams and TCP (later TLS) streams, IPv4 and IPv6.

The transport layer only moves whole messages: a datagram, or one message
cut out of a stream by :class:`~sosimple_proxy.sip.framing.StreamFramer`.
It never parses SIP beyond Content-Length; what arrives goes to an
:class:`IMessageSink` (the transaction layer), and what the layers above send
goes out with :meth:`TransportLayer.send`, whose Deferred reports errors
instead of raising, because a transport error is a normal SIP event (RFC 3261
section 8.1.3.1: the transaction user turns it into a 503).

Stream connections live in one table keyed by the remote :class:`Peer`
(transport, host, port), so that a response goes back on the connection its
request came in on (RFC 3261 section 18.2.2) and a new request to the same
peer reuses it.  TLS only differs in how a connection is made: it is another
transport name in the same table.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import sys
from typing import Any, Callable, Sequence

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor, IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sosimple_proxy.config import ListenAddress
from sosimple_proxy.sip.framing import Frame, FramingError, KeepAlive, StreamFramer

__all__ = [
    "Peer",
    "TransportError",
    "IMessageSink",
    "ITransportLayer",
    "IConnectionObserver",
    "TransportLayer",
    "STREAM_TRANSPORTS",
    "stun_binding_response",
]

log = Logger()

STREAM_TRANSPORTS = ("tcp", "tls")
# Linux: SO_RCVBUFFORCE lets root go past net.core.rmem_max (not in `socket`).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Big enough that the kernel never truncates a datagram: anything over
# max_message_size must be seen whole to be recognised as too large.
_UDP_READ_SIZE = 65536
# UDP send errors that mean "the packet was lost", not "the peer is unreachable";
# retransmission deals with them, a 503 would be wrong.
_UDP_TRANSIENT = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR}


@attrs.frozen
class Peer:
    """A remote SIP address: where a message came from or goes to.

    ``host`` is an IP address literal (no brackets); names are resolved
    above this layer (RFC 3263).
    """

    transport: str
    host: str
    port: int

    @property
    def family6(self) -> bool:
        return ":" in self.host

    @property
    def reliable(self) -> bool:
        """A stream transport: no retransmissions (RFC 3261 section 17)."""
        return self.transport in STREAM_TRANSPORTS

    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family6 else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.hostport()}"


class TransportError(Exception):
    """A message could not be sent to ``dest``; ``reason`` says why (for logs and 503s)."""

    def __init__(self, dest: Peer, reason: str) -> None:
        super().__init__(f"{dest}: {reason}")
        self.dest = dest
        self.reason = reason


class IMessageSink(Interface):
    """Who gets what the transports receive (the transaction layer)."""

    def messageReceived(data: bytes, source: Peer, local: ListenAddress) -> None:
        """One whole datagram, or one framed stream message, from ``source``
        that arrived on our address ``local``."""

    def framingError(head: bytes, status: int, reason: str, source: Peer) -> bytes | None:
        """Input that cannot be delivered (a stream out of step, a datagram
        over the size limit).  Return a response to write back first (e.g. a
        513 built from ``head``), or None; a stream is closed afterwards."""


class IUnreachableObserver(Interface):
    """Optional, for a sink that wants ICMP errors on UDP sends (RFC 3261
    18.4: "ICMP errors [...] are transport errors").  Linux reports them on
    an unconnected socket only with IP_RECVERR, through its error queue."""

    def peerUnreachable(peer: Peer, reason: str) -> None:
        """A datagram we sent to ``peer`` came back as unreachable."""


class IConnectionObserver(Interface):
    """Optional, for a sink that tracks stream connections (RFC 5626 flows:
    a registration bound to a connection is gone when the connection is)."""

    def connectionClosed(peer: Peer) -> None:
        """The stream connection with ``peer`` is closed, by either side."""


class ITransportLayer(Interface):
    """Sending SIP messages, and knowing where we listen."""

    def send(data: bytes, dest: Peer, local: ListenAddress | None = None) -> defer.Deferred:
        """Send one message.  Fires None once the data is handed to the
        kernel or to the connection; fails with :class:`TransportError`.
        Never raises.  ``local`` picks the UDP socket to send from (a
        response leaves from where its request arrived, RFC 3581)."""

    def listening() -> list[ListenAddress]:
        """The addresses we listen on, with the ports really bound."""

    def has_connection(peer: Peer) -> bool:
        """Is there a usable stream connection to ``peer`` (a UA's flow)?"""


@functools.lru_cache(maxsize=4096)
def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


@functools.lru_cache(maxsize=64)
def _is_unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


@functools.lru_cache(maxsize=4096)
def _normal_host(host: str) -> str:
    """One spelling per address, so table lookups match (``::0:1`` is ``::1``)."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return str(ipaddress.ip_address(h))


# What an ICMP error on a UDP socket turns into (RFC 1122 3.2.2.1).
_ICMP_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN))

# Linux socket options and flags that Python does not name everywhere.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


@implementer(IHalfCloseableDescriptor)
class _UDPPort(udp.Port):
    """A UDP port that reads its socket's error queue (IP_RECVERR).

    With IP_RECVERR an ICMP "port unreachable" for a datagram we sent is
    queued on the socket, and poll reports POLLERR without POLLIN.  The
    reactor takes that for the end of input: it stops reading and calls
    :meth:`readConnectionLost` (we are "half-closeable" for that reason
    only), where the queue is read and reading resumes.  When a datagram
    arrives too, the queue is read first in :meth:`doRead`.
    """

    recverr = False

    def enable_recverr(self) -> None:
        family6 = self.socket.family == socket.AF_INET6
        try:
            if family6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                self.socket.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            self.recverr = True
        except OSError as e:
            log.info("UDP error queue unavailable ({e}): ICMP errors will not be noticed", e=e)

    def doRead(self) -> None:
        if self.recverr:
            self._read_errors()
        super().doRead()

    def readConnectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self._read_errors()
        self.startReading()

    def _read_errors(self) -> None:
        for _ in range(256):
            try:
                _data, ancdata, _flags, addr = self.socket.recvmsg(1, 1024, _MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            code = 0
            for _level, _type, cdata in ancdata:
                if len(cdata) >= 4:
                    code = int.from_bytes(cdata[:4], sys.byteorder)  # sock_extended_err.ee_errno
            if addr:
                try:
                    self.protocol.unreachable(addr, os.strerror(code) if code else "unreachable")
                except Exception:
                    log.failure("UDP error report failed")


def _ignore(failure: Failure) -> None:
    """For sends nobody waits on: send() has logged the error already."""


def _reason(failure: Failure | BaseException) -> str:
    exc = failure.value if isinstance(failure, Failure) else failure
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _cut_head(data: bytes, limit: int) -> bytes:
    """The header section of an oversized message, for building a 513."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep, 0, limit)
        if end >= 0:
            return data[: end + len(sep)]
    part = data[:limit]
    nl = part.rfind(b"\n")
    return part[: nl + 1] if nl >= 0 else part


_STUN_COOKIE = 0x2112A442


def stun_binding_response(request: bytes, host: str, port: int) -> bytes | None:
    """A STUN Binding success response (RFC 5389) to ``request`` telling the
    client it is seen at ``host``:``port``, or None if it is no Binding request.

    RFC 5626 section 4.4.2: a UA keeps its UDP flow alive with STUN, and an
    edge proxy answers on its SIP port; XOR-MAPPED-ADDRESS is all it needs.
    """
    if len(request) < 20 or request[0:2] != b"\x00\x01":
        return None
    length = int.from_bytes(request[2:4], "big")
    if length % 4 or len(request) != 20 + length or int.from_bytes(request[4:8], "big") != _STUN_COOKIE:
        return None
    txid = request[8:20]
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        family, xaddr = 1, (int(ip) ^ _STUN_COOKIE).to_bytes(4, "big")
    else:
        mask = int.from_bytes(request[4:20], "big")  # cookie + transaction id
        family, xaddr = 2, (int(ip) ^ mask).to_bytes(16, "big")
    value = bytes([0, family]) + (port ^ (_STUN_COOKIE >> 16)).to_bytes(2, "big") + xaddr
    attr = (0x0020).to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
    return b"\x01\x01" + len(attr).to_bytes(2, "big") + request[4:8] + txid + attr


def _set_rcvbuf(sock: socket.socket, wanted: int) -> int:
    """Ask for a ``wanted``-byte receive buffer; return what the kernel granted.

    Linux caps SO_RCVBUF at net.core.rmem_max and reports double the
    usable size; root may go past the cap with SO_RCVBUFFORCE.
    """
    linux = sys.platform.startswith("linux")

    def granted() -> int:
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return got // 2 if linux else got

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    except OSError as e:
        log.warn("SO_RCVBUF {wanted} refused: {err}", wanted=wanted, err=e)
    got = granted()
    if got < wanted and linux and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
            got = granted()
        except OSError as e:
            log.warn("SO_RCVBUFFORCE {wanted} refused: {err}", wanted=wanted, err=e)
    return got


class _Datagrams(DatagramProtocol):
    """One UDP socket: each datagram is one message."""

    noisy = False

    def __init__(self, layer: TransportLayer, local: ListenAddress) -> None:
        self.layer = layer
        self.local = local
        # Peers seen recently: a frozen attrs instance per datagram is a
        # measurable cost at tens of thousands of messages a second.
        self._peers: dict[Any, Peer] = {}

    def unreachable(self, addr: Any, reason: str) -> None:
        self.layer._unreachable(Peer("udp", addr[0], addr[1]), reason)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        source = self._peers.get(addr)
        if source is None:
            if len(self._peers) >= 8192:
                self._peers.clear()
            source = self._peers[addr] = Peer("udp", addr[0], addr[1])
        layer = self.layer
        if len(data) > layer.max_message_size:
            log.info("{source}: datagram of {n} bytes over the limit", source=source, n=len(data))
            answer = layer._sinkFramingError(
                _cut_head(data, layer.max_message_size), 513, "Message Too Large", source
            )
            if answer:
                layer.send(answer, source, self.local).addErrback(_ignore)
            return
        if data[:1] in (b"\r", b"\n", b"", b"\0") and not data.strip(b"\r\n\t \0"):
            # A CRLF keep-alive some UAs send over UDP: nothing to answer.
            log.debug("{source}: empty keep-alive datagram dropped", source=source)
            return
        if data[0] < 0x04:
            # STUN (RFC 5389: first two bits zero), the RFC 5626 UDP keep-alive:
            # answer a Binding request with the address we see.
            answer = stun_binding_response(data, source.host, source.port)
            if answer is None:
                log.debug("{source}: non-SIP binary datagram dropped", source=source)
            else:
                layer.send(answer, source, self.local).addErrback(_ignore)
            return
        try:
            layer.sink.messageReceived(data, source, self.local)
        except Exception:
            log.failure("message sink failed on a datagram from {source}", source=source)


class _Stream(Protocol):
    """One stream connection (TCP or TLS), accepted or made by us."""

    peer: Peer | None = None
    closing = False

    def __init__(self, layer: TransportLayer, transport_name: str, local: ListenAddress | None) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.local = local
        self.framer = StreamFramer(layer.max_message_size)
        self.last_activity = 0.0
        self._idle_call: Any = None
        self.keys: list[Peer] = []  # the table entries that point here
        self.lost: defer.Deferred = defer.Deferred()

    # -- Protocol

    def connectionMade(self) -> None:
        addr = self.transport.getPeer()
        self.peer = Peer(self.transport_name, _normal_host(addr.host), addr.port)
        if self.local is None:
            self.local = self.layer._localFor(self.transport_name, self.transport.getHost())
        elif _is_unspecified(self.local.host):
            # A wildcard listener: say which of our addresses the peer reached,
            # since that is what belongs in Via and Record-Route.
            self.local = attrs.evolve(self.local, host=_normal_host(self.transport.getHost().host))
        self.last_activity = self.layer.reactor.seconds()
        self._idle_call = self.layer.reactor.callLater(self.layer.tcp_idle_timeout, self._checkIdle)
        self.layer._register(self, self.peer)
        log.debug("{peer}: connected (local {local})", peer=self.peer, local=self.local)

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
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        self.layer._unregister(self)
        self.layer._all_streams.discard(self)
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
        return not self.closing and self.connected

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


class _StreamFactory(Factory):
    noisy = False

    def __init__(self, layer: TransportLayer, transport_name: str, local: ListenAddress | None) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.local = local  # set once the listening port is known

    def buildProtocol(self, addr: Any) -> _Stream:
        return _Stream(self.layer, self.transport_name, self.local)


@attrs.define
class _Connecting:
    """An outgoing connection being made, and what waits to be sent on it."""

    queue: list[tuple[bytes, defer.Deferred]] = attrs.field(factory=list)
    attempt: defer.Deferred | None = None


@implementer(ITransportLayer)
class TransportLayer(service.Service):
    """All SIP listening sockets and stream connections of one proxy.

    ``tls_server`` (an OpenSSL context factory, e.g. ``CertificateOptions``,
    for listening) and ``tls_client`` (:class:`Peer` ->
    ``IOpenSSLClientConnectionCreator``, e.g. ``optionsForClientTLS``: it
    gets the whole peer so that it can pick the name to verify) are for the
    TLS work: with them, ``tls:`` addresses listen and ``Peer("tls", ...)``
    connects, sharing the connection table, framing and idle handling with
    TCP.
    """

    def __init__(
        self,
        reactor: Any,
        listen: Sequence[ListenAddress],
        sink: IMessageSink,
        max_message_size: int = 65536,
        udp_rcvbuf: int = 4194304,
        tcp_idle_timeout: float = 600.0,
        connect_timeout: float = 30.0,
        stop_grace: float = 5.0,
        tls_server: Any = None,
        tls_client: Callable[[Peer], Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.listen = tuple(listen)
        self.sink = sink
        self.max_message_size = max_message_size
        self.udp_rcvbuf = udp_rcvbuf
        self.tcp_idle_timeout = tcp_idle_timeout
        self.connect_timeout = connect_timeout
        self.stop_grace = stop_grace
        self.tls_server = tls_server
        self.tls_client = tls_client
        self._ports: list[tuple[ListenAddress, IListeningPort]] = []
        self._bound = False
        self._udp: list[tuple[ListenAddress, Any]] = []  # (bound address, port)
        self._udp_by_local: dict[ListenAddress, Any] = {}
        self._udp_choice: dict[tuple[bool, bool], Any] = {}  # (IPv6, loopback dest) -> port
        self._streams: dict[Peer, _Stream] = {}
        self._all_streams: set[_Stream] = set()
        self._connecting: dict[Peer, _Connecting] = {}
        #: What the kernel granted for each UDP socket's receive buffer.
        self.rcvbuf: dict[ListenAddress, int] = {}

    # -- Service

    def privilegedStartService(self) -> None:
        """Bind while twistd still has its privileges (``--uid``, ports below 1024)."""
        self._bind()
        super().privilegedStartService()

    def startService(self) -> None:
        if not self._bound:
            self._bind()
        super().startService()

    def _bind(self) -> None:
        """Bind every listen address now, or raise and bind none (a port in
        use must stop startup, not leave half a proxy running)."""
        if self._bound:
            return
        try:
            for addr in self.listen:
                if addr.transport == "udp":
                    self._listenUDP(addr)
                else:
                    self._listenStream(addr)
        except BaseException:
            for _, port in self._ports:
                port.stopListening()
            self._ports.clear()
            self._udp.clear()
            self._udp_by_local.clear()
            self._udp_choice.clear()
            raise
        self._bound = True

    def stopService(self) -> defer.Deferred:
        """Stop listening, close every connection, abandon pending connects;
        fires when all of it is done."""
        super().stopService()
        self._bound = False
        waits = []
        for _, port in self._ports:
            waits.append(defer.maybeDeferred(port.stopListening))
        self._ports.clear()
        self._udp.clear()
        self._udp_by_local.clear()
        self._udp_choice.clear()
        for pending in list(self._connecting.values()):
            if pending.attempt is not None:
                pending.attempt.cancel()
        streams = list(self._all_streams)
        for conn in streams:
            waits.append(conn.lost)
            conn.close()
        done = defer.DeferredList(waits, consumeErrors=True)
        if streams:
            # A peer that stops reading would keep a graceful close waiting
            # for its flush forever; shutdown must not hang on it.
            def abort() -> None:
                for conn in streams:
                    if not conn.lost.called:
                        log.info("{peer}: not closed in {t:g}s, aborting", peer=conn.peer, t=self.stop_grace)
                        conn.transport.abortConnection()

            timer = self.reactor.callLater(self.stop_grace, abort)
            done.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return done.addCallback(lambda _: None)

    def _listenUDP(self, addr: ListenAddress) -> None:
        proto = _Datagrams(self, addr)
        if isinstance(self.reactor, PosixReactorBase) and sys.platform.startswith("linux"):
            # as reactor.listenUDP does, with a port that reads ICMP errors
            port = _UDPPort(addr.port, proto, addr.host, _UDP_READ_SIZE, self.reactor)
            port.startListening()
            port.enable_recverr()
        else:
            port = self.reactor.listenUDP(addr.port, proto, interface=addr.host, maxPacketSize=_UDP_READ_SIZE)
        bound = attrs.evolve(addr, port=port.getHost().port)
        proto.local = bound
        self._ports.append((bound, port))
        self._udp.append((bound, port))
        self._udp_by_local[bound] = port
        self._udp_choice.clear()
        sock = getattr(port, "socket", None)
        if sock is not None and self.udp_rcvbuf:
            got = _set_rcvbuf(sock, self.udp_rcvbuf)
            self.rcvbuf[bound] = got
            level = log.info if got >= self.udp_rcvbuf else log.warn
            level("SIP {addr}: UDP receive buffer {got} bytes (asked {wanted})", addr=bound, got=got, wanted=self.udp_rcvbuf)
        log.info("SIP listening on {addr}", addr=bound)

    def _serverEndpoint(self, addr: ListenAddress) -> Any:
        if addr.transport == "tcp":
            if addr.family6:
                return serverFromString(self.reactor, f"tcp6:{addr.port}:interface={addr.host.replace(':', chr(92) + ':')}")
            return serverFromString(self.reactor, f"tcp:{addr.port}:interface={addr.host}")
        if addr.transport == "tls":
            if self.tls_server is None:
                raise ValueError(f"{addr}: no TLS certificate configured")
            return SSL4ServerEndpoint(self.reactor, addr.port, self.tls_server, interface=addr.host)
        raise ValueError(f"{addr}: unknown transport")

    def _listenStream(self, addr: ListenAddress) -> None:
        factory = _StreamFactory(self, addr.transport, addr)
        result: list[Any] = []
        self._serverEndpoint(addr).listen(factory).addBoth(result.append)
        # Server endpoints for TCP listen synchronously; anything else is a bug here.
        if not result:
            raise RuntimeError(f"{addr}: listening did not complete at once")
        if isinstance(result[0], Failure):
            result[0].raiseException()
        port = result[0]
        bound = attrs.evolve(addr, port=port.getHost().port)
        factory.local = bound
        self._ports.append((bound, port))
        log.info("SIP listening on {addr}", addr=bound)

    def listening(self) -> list[ListenAddress]:
        return [addr for addr, _ in self._ports]

    def connections(self) -> list[Peer]:
        """Remote ends of the usable stream connections (for tests and admin)."""
        return list(self._streams)

    def has_connection(self, peer: Peer) -> bool:
        """Is there a usable stream connection to ``peer`` (a UA's flow)?"""
        try:
            peer = attrs.evolve(peer, host=_normal_host(peer.host))
        except ValueError:
            return False
        return peer in self._streams

    # -- sending

    def send(self, data: bytes, dest: Peer, local: ListenAddress | None = None) -> defer.Deferred:
        try:
            try:
                host = _normal_host(dest.host)
            except ValueError:
                return defer.fail(TransportError(dest, f"{dest.host!r} is not an IP address"))
            if host != dest.host:
                dest = attrs.evolve(dest, host=host)
            if not 0 < dest.port < 65536:
                return defer.fail(TransportError(dest, f"port {dest.port} is out of range"))
            if dest.transport == "udp":
                return self._sendUDP(data, dest, local)
            if dest.transport in STREAM_TRANSPORTS:
                return self._sendStream(data, dest)
            return defer.fail(TransportError(dest, f"unknown transport {dest.transport!r}"))
        except TransportError as e:
            log.info("{dest}: cannot send: {reason}", dest=dest, reason=e.reason)
            return defer.fail(e)
        except Exception as e:
            log.failure("sending to {dest}", dest=dest)
            return defer.fail(TransportError(dest, _reason(e)))

    def _udpPort(self, dest: Peer, local: ListenAddress | None) -> Any:
        if local is not None:
            port = self._udp_by_local.get(local)
            if port is not None:
                return port
        key = (dest.family6, _is_loopback(dest.host))
        try:
            return self._udp_choice[key]
        except KeyError:
            pass
        fallback = None
        chosen = None
        for addr, port in self._udp:
            if addr.family6 != dest.family6:
                continue
            if fallback is None:
                fallback = port
            # Prefer a socket that can reach the destination: loopback to
            # loopback, anything else from a non-loopback (or wildcard) address.
            ip = ipaddress.ip_address(addr.host)
            if ip.is_loopback == key[1] or ip.is_unspecified:
                chosen = port
                break
        if chosen is None:
            chosen = fallback
        if chosen is not None:
            self._udp_choice[key] = chosen
        return chosen

    def _sendUDP(self, data: bytes, dest: Peer, local: ListenAddress | None) -> defer.Deferred:
        port = self._udpPort(dest, local)
        if port is None:
            family = "IPv6" if dest.family6 else "IPv4"
            return defer.fail(TransportError(dest, f"no {family} UDP socket to send from"))
        sock = getattr(port, "socket", None)
        try:
            try:
                if sock is not None:
                    # Straight to the socket: port.write re-validates the address
                    # on every datagram, and the address is known good here.
                    sock.sendto(data, (dest.host, dest.port))
                else:
                    port.write(data, (dest.host, dest.port))
            except OSError as e:
                if e.errno not in _ICMP_ERRNOS or not getattr(port, "recverr", False):
                    raise
                # An ICMP error for an *earlier* datagram (to anyone) is
                # reported by the next call on the socket, this send, which
                # then did not happen.  Read the queue (it names the real
                # peer) and send again.
                port._read_errors()
                sock.sendto(data, (dest.host, dest.port))
        except OSError as e:
            if e.errno in _UDP_TRANSIENT:
                log.warn("{dest}: UDP datagram dropped on send ({err})", dest=dest, err=e)
                return defer.succeed(None)
            log.info("{dest}: UDP send failed: {err}", dest=dest, err=e)
            return defer.fail(TransportError(dest, e.strerror or _reason(e)))
        return defer.succeed(None)

    def _sendStream(self, data: bytes, dest: Peer) -> defer.Deferred:
        conn = self._streams.get(dest)
        if conn is not None and conn.usable():
            conn.write(data)
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        pending = self._connecting.get(dest)
        if pending is not None:
            pending.queue.append((data, d))
            return d
        if not self.running:
            return defer.fail(TransportError(dest, "transport layer is stopped"))
        endpoint = self._clientEndpoint(dest)
        # Queue first: the attempt may succeed or fail before connect() returns.
        pending = self._connecting[dest] = _Connecting([(data, d)])
        attempt = endpoint.connect(_StreamFactory(self, dest.transport, None))
        if not attempt.called:
            pending.attempt = attempt
        attempt.addCallbacks(self._connected, self._connectFailed, callbackArgs=(dest,), errbackArgs=(dest,))
        return d

    def _clientEndpoint(self, dest: Peer) -> Any:
        cls = TCP6ClientEndpoint if dest.family6 else TCP4ClientEndpoint
        tcp = cls(self.reactor, dest.host, dest.port, timeout=self.connect_timeout)
        if dest.transport == "tcp":
            return tcp
        if self.tls_client is None:
            raise TransportError(dest, "TLS is not configured")
        return wrapClientTLS(self.tls_client(dest), tcp)

    def _connected(self, proto: _Stream, dest: Peer) -> None:
        pending = self._connecting.pop(dest, None)
        if pending is None:
            return
        log.debug("{dest}: connected, {n} queued", dest=dest, n=len(pending.queue))
        if proto.peer != dest and proto.usable():
            # The table is keyed by what the socket says; keep the asked-for
            # address too so the next send finds it.
            self._register(proto, dest)
        for data, d in pending.queue:
            if proto.usable():
                proto.write(data)
                d.callback(None)
            else:
                d.errback(TransportError(dest, "connection closed"))

    def _connectFailed(self, failure: Failure, dest: Peer) -> None:
        pending = self._connecting.pop(dest, None)
        reason = "connect cancelled" if failure.check(defer.CancelledError) else _reason(failure)
        log.info("{dest}: connect failed: {reason}", dest=dest, reason=reason)
        if pending is None:
            return
        for _, d in pending.queue:
            d.errback(TransportError(dest, reason))

    # -- connection table

    def _register(self, conn: _Stream, key: Peer) -> None:
        """Offer ``conn`` for sends to ``key`` (replacing an older connection
        to the same peer, which stays open until it closes by itself)."""
        self._all_streams.add(conn)
        conn.keys.append(key)
        self._streams[key] = conn

    def _unregister(self, conn: _Stream) -> None:
        """Stop offering ``conn`` for sends (it is closing or closed)."""
        for key in conn.keys:
            if self._streams.get(key) is conn:
                del self._streams[key]

    def _localFor(self, transport_name: str, host: Any) -> ListenAddress:
        """The listen address to advertise for an outgoing connection: a
        listener of the same transport and family, else the socket itself."""
        family6 = ":" in host.host
        for addr, _ in self._ports:
            if addr.transport == transport_name and addr.family6 == family6:
                return addr
        return ListenAddress(transport_name, host.host, host.port)

    def _unreachable(self, peer: Peer, reason: str) -> None:
        log.debug("{peer}: {reason} (ICMP)", peer=peer, reason=reason)  # the transactions it fails say so
        observe = getattr(self.sink, "peerUnreachable", None)
        if observe is not None:
            try:
                observe(peer, reason)
            except Exception:
                log.failure("message sink failed on an unreachable {peer}", peer=peer)

    def _sinkFramingError(self, head: bytes, status: int, reason: str, source: Peer) -> bytes | None:
        try:
            return self.sink.framingError(head, status, reason, source)
        except Exception:
            log.failure("message sink failed on a framing error from {source}", source=source)
            return None
