"""SIP transports: UDP datagrams and TCP and TLS streams, IPv4 and IPv6.

The transport layer only moves whole messages: a datagram
(:mod:`~sosimple_proxy.sip.udp`), or one message cut out of a stream
(:mod:`~sosimple_proxy.sip.stream`).  It never parses SIP beyond
Content-Length; what arrives goes to an
:class:`~sosimple_proxy.sip.interfaces.IMessageSink` (the stack), and what the layers above send
goes out with :meth:`TransportLayer.send`, whose Deferred reports errors
instead of raising, because a transport error is a normal SIP event (RFC 3261
section 8.1.3.1: the transaction user turns it into a 503).

Stream connections live in one table keyed by the remote :class:`Peer`
(transport, host, port), so that a response goes back on the connection its
request came in on (RFC 3261 section 18.2.2) and a new request to the same
peer reuses it.  TLS only differs in how a connection is made and when it
is ready (:mod:`~sosimple_proxy.sip.tls_transport`): it is another transport
name in the same table.

With ``limits`` (a :class:`~sosimple_proxy.security.limits.Limits`), every
accepted connection is counted against ``[limits] max_connections`` and
``max_connections_per_source`` and refused while its source is banned; a
refused connection is closed at once, logged once per source until one from
there is accepted again (never once per connection: a flood would flood the
log).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import sys
from typing import Any, Sequence

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sosimple_proxy.security.limits import Limits, Verdict
from sosimple_proxy.security.tls import DEFAULT_HANDSHAKE_TIMEOUT, ClientTLS
from sosimple_proxy.sip.address import STREAM_TRANSPORTS, ListenAddress, Peer, normal_host
from sosimple_proxy.sip.interfaces import IMessageSink, ITransportLayer, IUnreachableObserver
from sosimple_proxy.sip.reuseport import ReusePortTCP, ReusePortUDP
from sosimple_proxy.sip.stream import Connecting, StreamConnection, StreamFactory
from sosimple_proxy.sip.tls_transport import TLSTransport, expected_domain, handshake_failure_reason
from sosimple_proxy.sip.udp import ICMP_ERRNOS, UDP_READ_SIZE, Datagrams, UDPPort, set_rcvbuf

__all__ = ["TransportError", "TransportLayer"]

log = Logger()

# UDP send errors that mean "the packet was lost", not "the peer is unreachable";
# retransmission deals with them, a 503 would be wrong.
_UDP_TRANSIENT = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR}
# Sources remembered as "refusal already logged"; past this the memory is
# cleared (a few repeated log lines, never unbounded memory).
_MAX_REFUSING = 10_000


class TransportError(Exception):
    """A message could not be sent to ``dest``; ``reason`` says why (for logs and 503s)."""

    def __init__(self, dest: Peer, reason: str) -> None:
        super().__init__(f"{dest}: {reason}")
        self.dest = dest
        self.reason = reason


@functools.lru_cache(maxsize=4096)
def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _reason(failure: Failure | BaseException) -> str:
    exc = failure.value if isinstance(failure, Failure) else failure
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@implementer(ITransportLayer)
class TransportLayer(service.Service):
    """All SIP listening sockets and stream connections of one proxy.

    ``tls_server`` (a :class:`~sosimple_proxy.security.tls.ServerTLS`, or
    any connection creator ``TLSMemoryBIOFactory`` takes) lets ``tls:``
    addresses listen; ``tls_client`` (a
    :class:`~sosimple_proxy.security.tls.ClientTLS`) lets ``Peer("tls",
    ...)`` connect, verifying the peer's certificate for ``Peer.domain`` (or
    its address).  TLS shares the connection table, framing and idle handling
    with TCP; ``tls_handshake_timeout`` bounds each handshake.
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
        tls_client: ClientTLS | None = None,
        tls_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        message_timeout: float | None = 30.0,
        limits: Limits | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.reactor = reactor
        self.listen = tuple(listen)
        # [proxy] workers: every worker binds every address (SO_REUSEPORT),
        # and ``workers`` (a :class:`~.handoff.Handoff`) knows which other
        # worker holds a connection we lack, and hears of ours.
        self.reuse_port = reuse_port
        self.workers: Any = None
        self.sink = sink
        self.max_message_size = max_message_size
        self.udp_rcvbuf = udp_rcvbuf
        self.tcp_idle_timeout = tcp_idle_timeout
        self.connect_timeout = connect_timeout
        self.stop_grace = stop_grace
        self.tls = TLSTransport(tls_server, tls_client, tls_handshake_timeout)
        self.message_timeout = message_timeout
        self.limits = limits
        # Let banned sources connect (the stack reads their first message for
        # an emergency call): set by the stack when there are emergency numbers.
        self.admit_banned = False
        # Sources whose refused connections were logged (one line an episode).
        self._refusing: set[str] = set()
        self._ports: list[tuple[ListenAddress, IListeningPort]] = []
        self._bound = False
        self._udp: list[tuple[ListenAddress, Any]] = []  # (bound address, port)
        self._udp_by_local: dict[ListenAddress, Any] = {}
        self._udp_choice: dict[tuple[bool, bool], Any] = {}  # (IPv6, loopback dest) -> port
        self._streams: dict[Peer, StreamConnection] = {}
        self._all_streams: set[StreamConnection] = set()
        self._connecting: dict[Peer, Connecting] = {}
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
        proto = Datagrams(self, addr)
        if isinstance(self.reactor, PosixReactorBase) and sys.platform.startswith("linux"):
            # as reactor.listenUDP does, with a port that reads ICMP errors
            kind = ReusePortUDP if self.reuse_port else UDPPort
            port = kind(addr.port, proto, addr.host, UDP_READ_SIZE, self.reactor)
            port.startListening()
            port.enable_recverr()
        else:
            port = self.reactor.listenUDP(addr.port, proto, interface=addr.host, maxPacketSize=UDP_READ_SIZE)
        bound = attrs.evolve(addr, port=port.getHost().port)
        proto.local = bound
        self._ports.append((bound, port))
        self._udp.append((bound, port))
        self._udp_by_local[bound] = port
        self._udp_choice.clear()
        sock = getattr(port, "socket", None)
        if sock is not None and self.udp_rcvbuf:
            got = set_rcvbuf(sock, self.udp_rcvbuf)
            self.rcvbuf[bound] = got
            level = log.info if got >= self.udp_rcvbuf else log.warn
            level("SIP {addr}: UDP receive buffer {got} bytes (asked {wanted})", addr=bound, got=got, wanted=self.udp_rcvbuf)
        log.info("SIP listening on {addr}", addr=bound)

    def _serverEndpoint(self, addr: ListenAddress) -> Any:
        """A TCP server endpoint; TLS runs over it (see :meth:`_listenStream`)."""
        if addr.transport not in STREAM_TRANSPORTS:
            raise ValueError(f"{addr}: unknown transport")
        if addr.family6:
            return serverFromString(self.reactor, f"tcp6:{addr.port}:interface={addr.host.replace(':', chr(92) + ':')}")
        return serverFromString(self.reactor, f"tcp:{addr.port}:interface={addr.host}")

    def _listenStream(self, addr: ListenAddress) -> None:
        factory = StreamFactory(self, addr.transport, addr)
        wire: Any = factory
        if addr.transport == "tls":
            wire = self.tls.server_factory(factory, self.reactor, addr)
        result: list[Any] = []
        if self.reuse_port:
            shared = ReusePortTCP(addr.port, wire, 50, addr.host, self.reactor)
            shared.startListening()
            result.append(shared)
        else:
            self._serverEndpoint(addr).listen(wire).addBoth(result.append)
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

    def reload_tls(self) -> bool:
        """Re-read the TLS certificate, key and CA files (the composition
        root calls this on SIGHUP).  Connections made from now on use them;
        established ones, and the calls on them, carry on with theirs.
        Returns whether everything reloaded (a bad file keeps the old one)."""
        return self.tls.reload()

    def listening(self) -> list[ListenAddress]:
        return [addr for addr, _ in self._ports]

    def connections(self) -> list[Peer]:
        """Remote ends of the usable stream connections (for tests and admin)."""
        return list(self._streams)

    def has_connection(self, peer: Peer) -> bool:
        """Is there a usable stream connection to ``peer`` (a UA's flow)?"""
        try:
            peer = attrs.evolve(peer, host=normal_host(peer.host))
        except ValueError:
            return False
        return peer in self._streams or (self.workers is not None and self.workers.holder(peer) is not None)

    def own_streams(self) -> list[Peer]:
        """Peers of the connections this process holds (other workers send through them)."""
        return [p for p in self._streams if p.domain is None]

    def send_own_stream(self, data: bytes, peer: Peer) -> None:
        """Send over our connection to ``peer``, for another worker."""
        conn = self._streams.get(peer)
        if conn is not None and conn.usable():
            conn.write(data)

    def peer_certificate(self, peer: Peer) -> Any:
        """The certificate the TLS client or server at ``peer`` presented on
        its connection (a ``cryptography`` certificate; None without one,
        or for a peer not on TLS): who it is, for whoever knows its CA."""
        conn = self._streams.get(peer)
        if conn is None or not conn.secure or not conn.ready or conn.transport is None:
            return None
        get = getattr(conn.transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        return cert.to_cryptography() if cert is not None else None

    # -- sending

    def send(self, data: bytes, dest: Peer, local: ListenAddress | None = None) -> defer.Deferred:
        try:
            try:
                host = normal_host(dest.host)
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

    def send_nowait(self, data: bytes, dest: Peer, local: ListenAddress | None = None) -> defer.Deferred | None:
        """:meth:`send`, but None once a datagram to an address literal has
        gone: the transactions send a dozen messages per call, and a
        Deferred with an errback each, only to learn that nothing failed,
        was a measurable part of the cost.  Anything else -- a stream, a
        failed or refused ``sendto``, a host to normalise -- goes through
        :meth:`send` and its Deferred."""
        if dest.transport == "udp" and 0 < dest.port < 65536:
            host = dest.host
            try:
                ok = normal_host(host) == host
            except ValueError:
                ok = False
            if ok:
                port = self._udpPort(dest, local)
                sock = getattr(port, "socket", None) if port is not None else None
                if sock is not None:
                    try:
                        sock.sendto(data, (host, dest.port))
                        return None
                    except OSError as e:
                        # Not sent.  An ICMP error for an earlier datagram
                        # (see _sendUDP): report it; send() below sends again
                        # and handles any other error.
                        if e.errno in ICMP_ERRNOS and getattr(port, "recverr", False):
                            port.read_errors()
        return self.send(data, dest, local)

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
                if e.errno not in ICMP_ERRNOS or not getattr(port, "recverr", False):
                    raise
                # An ICMP error for an *earlier* datagram (to anyone) is
                # reported by the next call on the socket, this send, which
                # then did not happen.  Read the queue (it names the real
                # peer) and send again.
                port.read_errors()
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
        workers = self.workers
        if workers is not None:
            holder = workers.holder(dest)
            if holder is not None and workers.send_via(holder, data, dest):
                return defer.succeed(None)  # over the connection another worker holds
        if not self.running:
            return defer.fail(TransportError(dest, "transport layer is stopped"))
        endpoint, wire = self._clientEndpoint(dest)
        # Queue first: the attempt may succeed or fail before connect() returns.
        pending = self._connecting[dest] = Connecting([(data, d)])
        attempt = endpoint.connect(wire)
        if not attempt.called:
            pending.attempt = attempt
        attempt.addCallbacks(self._connected, self._connectFailed, callbackArgs=(dest,), errbackArgs=(dest,))
        return d

    def _clientEndpoint(self, dest: Peer) -> tuple[Any, Any]:
        """The TCP endpoint to ``dest`` and the factory to connect it with
        (TLS runs inside the factory's protocol)."""
        cls = TCP6ClientEndpoint if dest.family6 else TCP4ClientEndpoint
        tcp = cls(self.reactor, dest.host, dest.port, timeout=self.connect_timeout)
        factory = StreamFactory(self, dest.transport, None)
        if dest.transport == "tcp":
            return tcp, factory
        try:
            return tcp, self.tls.client_factory(factory, self.reactor, dest)
        except ValueError as e:
            raise TransportError(dest, str(e)) from None

    def _connected(self, proto: Any, dest: Peer) -> None:
        # TLS: the endpoint gives the TLS protocol; ours runs inside it.
        proto = getattr(proto, "wrappedProtocol", proto)
        if proto.ready or proto.closing:
            self._flush(proto, dest)
            return
        # TLS: the TCP connection is up; the queue waits for the handshake,
        # so that a peer refused by verification fails the sends.
        proto.when_ready().addCallbacks(self._flush, self._connectFailed, callbackArgs=(dest,), errbackArgs=(dest,))

    def _flush(self, proto: StreamConnection, dest: Peer) -> None:
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
        if failure.check(defer.CancelledError):
            reason = "connect cancelled"
        elif dest.transport == "tls":
            reason = handshake_failure_reason(failure)
        else:
            reason = _reason(failure)
        if dest.transport == "tls" and not failure.check(defer.CancelledError):
            # Said once per connection attempt, with the reason: the
            # transactions that fail with it only say "transport error".
            log.warn(
                "tls: connection to {dest} (expecting {domain}) failed: {reason}",
                dest=dest, domain=expected_domain(dest), reason=reason,
            )
        else:
            log.info("{dest}: connect failed: {reason}", dest=dest, reason=reason)
        if pending is None:
            return
        for _, d in pending.queue:
            d.errback(TransportError(dest, reason))

    # -- called by the protocols (udp.Datagrams, stream.StreamConnection)

    def _track(self, conn: StreamConnection) -> None:
        """``conn`` is open: close it when the layer stops."""
        self._all_streams.add(conn)

    def _register(self, conn: StreamConnection, key: Peer) -> None:
        """Offer ``conn`` for sends to ``key`` (replacing an older connection
        to the same peer, which stays open until it closes by itself)."""
        self._all_streams.add(conn)
        conn.keys.append(key)
        self._streams[key] = conn
        if self.workers is not None and key.domain is None:
            self.workers.stream_opened(key)

    def _closed(self, conn: StreamConnection) -> None:
        """``conn`` is closed: forget it."""
        self._unregister(conn)
        self._all_streams.discard(conn)
        if conn.counted:
            conn.counted = False
            if self.limits is not None and conn.peer is not None:
                self.limits.connection_closed(conn.peer.host)

    def _admit(self, conn: StreamConnection) -> bool:
        """Whether an accepted connection may stay open ([limits] caps and
        bans); the caller closes it at once otherwise."""
        limits = self.limits
        if limits is None or conn.peer is None:
            conn.admitted = True
            return True
        host = conn.peer.host
        verdict = limits.connection_opened(host, banned_ok=self.admit_banned)
        if verdict is Verdict.ALLOW:
            conn.admitted = conn.counted = True
            # A banned source on probation: its first message must come soon.
            conn.probation = self.admit_banned and limits.is_banned(host)
            if self._refusing:
                self._refusing.discard(host)
            return True
        if host not in self._refusing:
            if len(self._refusing) >= _MAX_REFUSING:
                self._refusing.clear()
            self._refusing.add(host)
            why = "it is banned" if verdict is Verdict.BANNED else (
                f"{limits.connections_from(host)} open from there, {limits.connections} in all "
                f"(max_connections_per_source {limits.config.max_connections_per_source}, "
                f"max_connections {limits.config.max_connections})"
            )
            log.warn("{peer}: {transport} connection refused: {why}; further refusals from {host} are not logged",
                     peer=conn.peer, transport=conn.transport_name.upper(), why=why, host=host)
        return False

    def close_from(self, peer: Peer) -> None:
        """Close the connection a message from ``peer`` came on (its source
        is banned: nothing more from it will be read)."""
        conn = self._streams.get(peer)
        if conn is not None:
            conn.close()

    def _unregister(self, conn: StreamConnection) -> None:
        """Stop offering ``conn`` for sends (it is closing or closed)."""
        for key in conn.keys:
            if self._streams.get(key) is conn:
                del self._streams[key]
                if self.workers is not None and key.domain is None:
                    self.workers.stream_closed(key)

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
        sink = self.sink
        if IUnreachableObserver.providedBy(sink):
            try:
                sink.peerUnreachable(peer, reason)
            except Exception:
                log.failure("message sink failed on an unreachable {peer}", peer=peer)

    def _sinkFramingError(self, head: bytes, status: int, reason: str, source: Peer) -> bytes | None:
        try:
            return self.sink.framingError(head, status, reason, source)
        except Exception:
            log.failure("message sink failed on a framing error from {source}", source=source)
            return None
