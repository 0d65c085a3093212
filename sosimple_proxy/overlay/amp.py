"""The overlay's wire protocol: node-to-node calls over AMP.

Every command carries one ``body`` argument, the call's arguments in a
small binary encoding (:mod:`.wire`), and answers with one ``body``.  AMP
caps a value at 64 KiB, so a body travels as a :class:`Chunked` argument
split over as many keys as it needs, and a list of records is stored in
batches of at most :data:`STORE_BATCH` bytes, each its own call.

On connecting, the client sends :class:`Hello` with the protocol version
(and its node, for the server's logs); a major version the server does not
speak gets an error and the connection is dropped.  Connections are pooled
per address and reused; a call that does not answer in time is the node's
business (it cancels the Deferred).  An unknown command gets AMP's
"unhandled" error, a body that does not decode an error answer; neither
disturbs the node.

In a CA ring (``ringtls.py``) the connections are mutual TLS, and a peer
that names itself in a message (Hello, Notify, Leave) must name the node
its certificate is for: anything else gets :class:`WrongIdentity`.  An
open ring (``claims`` given) binds a connection to a node the same way
without certificates: after Hello the client asks for a :class:`Challenge`
and answers it with a :class:`Claim`, a proof signed with its node key for
the node it named in Hello; Notify and Leave are then checked against that
node, as a certificate's id would be.  Besides, a node proves its key at its
advertised address to whoever asks (:class:`Prove`, see :mod:`.admission`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Hashable, Sequence

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IReactorTCP
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from OpenSSL import SSL

from sosimple_proxy.security.tls import TLSVerificationError

from . import watch as watching
from . import wire
from .errors import NotAdmitted
from .errors import StoreRefused
from .interfaces import IOverlayPeer, IOverlayRPC
from .messages import Peer
from .ringtls import failure_reason

log = Logger()

#: (major, minor): a peer with another major version is refused.  1.1 adds
#: Prove, Challenge and Claim (an open ring's admission); an open ring's
#: member refuses a 1.0 node, which proves no key.
PROTOCOL_VERSION = (1, 1)
CHUNK = amp.MAX_VALUE_LENGTH
#: the largest encoded record batch one Store call carries
STORE_BATCH = 48 * 1024


class Chunked(amp.Argument):
    """A bytes value of any length, split over ``name``, ``name.1``, ``name.2``..."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = objects[str(name, "ascii")]
        if not isinstance(value, bytes):
            raise TypeError("a Chunked argument takes bytes")
        chunks = [value[i : i + CHUNK] for i in range(0, len(value), CHUNK)] or [b""]
        strings[name] = chunks[0]
        for i, chunk in enumerate(chunks[1:], 1):
            strings[b"%s.%d" % (name, i)] = chunk

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        parts = [strings.get(name, b"")]
        i = 1
        while (key := b"%s.%d" % (name, i)) in strings:
            parts.append(strings[key])
            i += 1
        objects[str(name, "ascii")] = b"".join(parts)


class VersionMismatch(Exception):
    """The other side speaks another major version of the protocol."""


class BadRequest(Exception):
    """A body that does not decode, or breaks the record format."""


class WrongIdentity(Exception):
    """A peer names itself as another node than its certificate is for."""


_ERRORS = {
    VersionMismatch: b"VERSION_MISMATCH",
    BadRequest: b"BAD_REQUEST",
    WrongIdentity: b"WRONG_IDENTITY",
    NotAdmitted: b"NOT_ADMITTED",
    # a node whose disk is full answers a Store with this, not a traceback
    StoreRefused: b"STORE_REFUSED",
}


def _command(name: str) -> type[amp.Command]:
    return type(
        name,
        (amp.Command,),
        {
            "commandName": name.encode(),
            "arguments": [(b"body", Chunked())],
            "response": [(b"body", Chunked())],
            "errors": _ERRORS,
        },
    )


Hello = _command("Hello")
State = _command("State")
Find = _command("Find")
Notify = _command("Notify")
SuccessorHint = _command("SuccessorHint")
Store = _command("Store")
Fetch = _command("Fetch")
Sync = _command("Sync")
Leave = _command("Leave")
Fingers = _command("Fingers")
Prove = _command("Prove")
Challenge = _command("Challenge")
Claim = _command("Claim")
Watch = _command("Watch")
WatchNotify = _command("WatchNotify")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


@implementer(IHandshakeListener)
class OverlayProtocol(amp.AMP):
    """One AMP connection; on the listening side it answers for a node.

    ``certified`` (a CA ring) reads the node id from the peer's
    certificate; the ids a peer claims are checked against it.  ``claims``
    (an open ring) checks a signed claim, ``(proof, peer, nonce)`` to why
    not (None: good); the claimed node is then the connection's.
    """

    def __init__(
        self,
        node: IOverlayPeer | None = None,
        local: Peer | None = None,
        certified: Callable[[Any], int | None] | None = None,
        claims: Callable[[Any, Peer, bytes], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.node = node
        self.local = local
        self.certified = certified
        self.claims = claims
        self.proven: int | None = None
        self._nonce: bytes | None = None
        self.remote: Peer | None = None
        self.handshake_done = False
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        # Calls are small request/answer boxes, many in flight on one pooled
        # connection: with Nagle's algorithm a box written while an earlier
        # one is unacknowledged waits for that ACK (a delayed ACK: up to
        # 40 ms on Linux).  Twisted already sends each reactor turn's writes
        # in one go, so turning Nagle off adds no small segments of its own.
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)  # a TLS wrapper passes it on
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass  # not a TCP socket (a test's loopback transport)

    def handshakeCompleted(self) -> None:
        """TLS is up (a CA ring): the peer's certificate is known now."""
        self.handshake_done = True

    def certified_id(self) -> int | None:
        """The id in the peer's certificate (an open ring: the id its signed
        claim proved); None without either."""
        if self.claims is not None:
            return self.proven
        if self.certified is None:
            return None
        return self.certified(self.transport)

    def check_claim(self, peer: Peer | None) -> None:
        """Refuse a peer naming itself as a node its certificate (or its
        signed claim) is not for."""
        if (self.certified is None and self.claims is None) or peer is None:
            return
        got = self.certified_id()
        if got is None:
            what = "signed claim" if self.claims is not None else "node certificate"
            raise WrongIdentity(f"no {what} on this connection")
        if peer.id != got:
            what = "its signed claim" if self.claims is not None else "the certificate"
            raise WrongIdentity(f"{what} is for node {got:x}, not {peer.id:x}")

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if not self.lost.called:
            self.lost.callback(None)

    # -- answering
    def _serve(self, handler: Callable[[bytes], Any], body: bytes) -> Any:
        if self.node is None:
            raise BadRequest("this side serves no node")
        try:
            result = handler(body)
        except (ValueError, IndexError, TypeError, KeyError) as e:
            raise BadRequest(str(e)) from None
        if isinstance(result, defer.Deferred):
            return result.addCallback(lambda body: {"body": body})
        return {"body": result}

    @Hello.responder
    def answer_hello(self, body: bytes) -> dict:
        try:
            major, minor, peer = wire.decode_hello(body)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if major != PROTOCOL_VERSION[0]:
            raise VersionMismatch(f"we speak {PROTOCOL_VERSION[0]}.x, not {major}.{minor}")
        if self.claims is None:  # an open ring: the claim comes next
            self._claimed(peer)
        self.remote = peer
        return {"body": wire.encode_hello(*PROTOCOL_VERSION, self.local)}

    @Challenge.responder
    def answer_challenge(self, body: bytes) -> dict:
        if self.claims is None:
            raise BadRequest("this ring takes no signed claims")
        self._nonce = os.urandom(32)
        return {"body": self._nonce}

    @Claim.responder
    def answer_claim(self, body: bytes) -> dict:
        nonce, self._nonce = self._nonce, None
        if self.claims is None or nonce is None or self.remote is None:
            raise BadRequest("a claim needs a Hello naming the node, then a Challenge")
        try:
            proof = wire.decode_proof(body)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        reason = self.claims(proof, self.remote, nonce)
        if reason is not None:
            refusals = getattr(self.factory, "refusals", None)
            if refusals is not None:
                host = getattr(self.transport.getPeer(), "host", "?")
                refusals.refused("from", str(host), f"it claims to be node {self.remote.id:x}: {reason}")
            raise WrongIdentity(reason)
        self.proven = self.remote.id
        return {"body": b""}

    def _claimed(self, peer: Peer | None) -> None:
        """:meth:`check_claim`, logging a refusal once per peer and reason."""
        try:
            self.check_claim(peer)
        except WrongIdentity as e:
            refusals = getattr(self.factory, "refusals", None)
            if refusals is not None:
                host = getattr(self.transport.getPeer(), "host", "?")
                refusals.refused("from", str(host), f"it claims to be node {peer.id:x}: {e}")
            raise

    @State.responder
    def answer_state(self, body: bytes) -> Any:
        return self._serve(lambda b: wire.encode_state(self.node.remote_state()), body)

    @Find.responder
    def answer_find(self, body: bytes) -> Any:
        return self._serve(lambda b: wire.encode_find_result(self.node.remote_find(wire.decode_int(b))), body)

    @Notify.responder
    def answer_notify(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            peer = wire.decode_peer(b)
            self._claimed(peer)  # a node only says "I may be your predecessor" of itself
            state = self.node.remote_notify(peer)
            if isinstance(state, defer.Deferred):  # an open ring: once it proved its key
                return state.addCallback(wire.encode_state)
            return wire.encode_state(state)

        return self._serve(run, body)

    @SuccessorHint.responder
    def answer_successor_hint(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            self.node.remote_successor_hint(wire.decode_peer(b))
            return b""

        return self._serve(run, body)

    @Store.responder
    def answer_store(self, body: bytes) -> Any:
        return self._serve(lambda b: wire.encode_int(self.node.remote_store(wire.decode_records(b))), body)

    @Fetch.responder
    def answer_fetch(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            key, kind = wire.decode_fetch(b)
            return wire.encode_fetch_result(self.node.remote_fetch(key, kind))

        return self._serve(run, body)

    @Sync.responder
    def answer_sync(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            lo, hi, versions = wire.decode_sync(b)
            return wire.encode_sync_result(self.node.remote_sync(lo, hi, versions))

        return self._serve(run, body)

    @Leave.responder
    def answer_leave(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            peer, predecessor, successors = wire.decode_leave(b)
            self._claimed(peer)  # only a node itself may say it leaves
            self.node.remote_leave(peer, predecessor, successors)
            return b""

        return self._serve(run, body)

    @Fingers.responder
    def answer_fingers(self, body: bytes) -> Any:
        return self._serve(lambda b: wire.encode_peers(self.node.remote_fingers()), body)

    @Prove.responder
    def answer_prove(self, body: bytes) -> Any:
        return self._serve(lambda b: wire.encode_proof(self.node.remote_prove(b)), body)

    @Watch.responder
    def answer_watch(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            key, watcher, ttl = watching.decode_watch(b)
            self._claimed(watcher)  # a node watches for itself only
            return wire.encode_records(self.node.remote_watch(key, watcher, ttl))

        return self._serve(run, body)

    @WatchNotify.responder
    def answer_watch_notify(self, body: bytes) -> Any:
        def run(b: bytes) -> bytes:
            self.node.remote_watch_notify(*watching.decode_watch_notify(b))
            return b""

        return self._serve(run, body)


class OverlayServerFactory(Factory):
    """Listening side: every connection answers for ``node``.

    ``node`` may be set after listening starts (a node's address is only
    known once the port is bound); until then calls get an error.
    """

    def __init__(
        self,
        node: IOverlayPeer | None = None,
        certified: Callable[[Any], int | None] | None = None,
        refusals: Any = None,
        claims: Callable[[Any, Peer, bytes], str | None] | None = None,
    ) -> None:
        self.node = node
        self.certified = certified
        self.refusals = refusals
        self.claims = claims
        self.connections: set[OverlayProtocol] = set()

    def buildProtocol(self, addr: Any) -> OverlayProtocol:
        local = getattr(self.node, "peer", None)
        proto = OverlayProtocol(self.node, local, self.certified, self.claims)
        proto.factory = self
        self.connections.add(proto)
        proto.lost.addCallback(lambda _: self.connections.discard(proto))
        return proto

    def close_all(self) -> None:
        """Drop every open connection (a stopping node)."""
        for proto in list(self.connections):
            if proto.transport is not None:
                proto.transport.abortConnection()


def _tls_refusal(error: BaseException) -> bool:
    """A failed handshake (not an unreachable or slow node)."""
    return isinstance(error, (SSL.Error, TLSVerificationError))


def _batches(records: Sequence[Any], limit: int) -> list[list[Any]]:
    out: list[list[Any]] = [[]]
    size = 0
    for r in records:
        n = wire.record_size(r)
        if out[-1] and size + n > limit:
            out.append([])
            size = 0
        out[-1].append(r)
        size += n
    return out


@implementer(IOverlayRPC, watching.IWatchRPC)
class AMPRPC:
    """Calls to other nodes over pooled AMP connections.

    ``local`` is our own node (sent in Hello); ``connect_timeout`` bounds
    connection setup, the node's own timeouts bound each call.  With
    ``tls`` (a CA ring's :class:`~.ringtls.RingTLS`) every connection is
    mutual TLS; ``expected_id(address)`` says which node the caller means
    to reach there, when its tables know (the certificate must be that
    node's), and the id the server names in Hello must be its certificate's.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        local: Peer | None = None,
        connect_timeout: float = 5.0,
        tls: Any = None,
        expected_id: Callable[[Hashable], int | None] | None = None,
        signer: Any = None,
    ) -> None:
        self.reactor = reactor
        #: an open ring's node key: each connection starts with a signed claim
        self.signer = signer
        self.local = local
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.expected_id = expected_id
        self._waiting: dict[Hashable, list[defer.Deferred]] = {}
        self._open: dict[Hashable, OverlayProtocol] = {}
        self.connects = 0

    def _connection(self, address: Hashable) -> defer.Deferred:
        proto = self._open.get(address)
        if proto is not None:
            return defer.succeed(proto)
        # every caller waiting for a connection gets its own Deferred, so
        # one caller's timeout (cancelling its Deferred) spares the others
        mine: defer.Deferred = defer.Deferred()
        waiters = self._waiting.get(address)
        if waiters is None:
            self._waiting[address] = [mine]
            self._connect(address).addBoth(self._connected, address)
        else:
            waiters.append(mine)
        return mine

    def _connected(self, result: Any, address: Hashable) -> None:
        for d in self._waiting.pop(address, []):
            if d.called:
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    @defer.inlineCallbacks
    def _connect(self, address: Hashable):
        try:
            host, port = split_address(str(address))
            endpoint: Any = HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
            certified = None
            if self.tls is not None:
                expected = self.expected_id(address) if self.expected_id is not None else None
                endpoint = wrapClientTLS(self.tls.client_creator(expected), endpoint)
                certified = self.tls.certified_id
            proto = yield endpoint.connect(Factory.forProtocol(lambda: OverlayProtocol(certified=certified)))
            self.connects += 1
            proto.lost.addCallback(lambda _: self._forget(address, proto))
            answer = yield proto.callRemote(Hello, body=wire.encode_hello(*PROTOCOL_VERSION, self.local))
            major, minor, peer = wire.decode_hello(answer["body"])
            if major != PROTOCOL_VERSION[0]:
                proto.transport.loseConnection()
                raise VersionMismatch(f"{address} speaks {major}.{minor}")
            try:
                proto.check_claim(peer)
            except WrongIdentity as e:
                proto.transport.loseConnection()
                self._refused(address, f"it names itself node {peer.id:x}: {e}")
                raise
            proto.remote = peer
            if self.signer is not None and self.local is not None:
                try:
                    nonce = (yield proto.callRemote(Challenge, body=b""))["body"]
                    yield proto.callRemote(Claim, body=wire.encode_proof(self.signer.prove(nonce, self.local)))
                except Exception:
                    proto.transport.loseConnection()
                    raise
        except (VersionMismatch, WrongIdentity):
            raise
        except Exception as e:
            if self.tls is not None and _tls_refusal(e):
                self._refused(address, failure_reason(e))
            log.debug("overlay: cannot reach {address}: {error}", address=address, error=e)
            raise
        self._open[address] = proto
        return proto

    def _refused(self, address: Hashable, reason: str) -> None:
        refusals = getattr(self.tls, "refusals", None)
        if refusals is not None:
            refusals.refused("to", str(address), reason)

    def _forget(self, address: Hashable, proto: OverlayProtocol) -> None:
        if self._open.get(address) is proto:
            del self._open[address]

    def close(self) -> None:
        """Drop every pooled connection."""
        for proto in list(self._open.values()):
            if proto.transport is not None:
                proto.transport.loseConnection()
        self._open.clear()

    def _call(self, address: Hashable, command: type[amp.Command], body: bytes, decode: Callable[[bytes], Any]) -> defer.Deferred:
        d = self._connection(address)
        d.addCallback(lambda proto: proto.callRemote(command, body=body))
        d.addCallback(lambda answer: decode(answer["body"]))
        return d

    # -- IOverlayRPC
    def state(self, address: Hashable) -> defer.Deferred:
        return self._call(address, State, b"", wire.decode_state)

    def find(self, address: Hashable, key: int) -> defer.Deferred:
        return self._call(address, Find, wire.encode_int(key), wire.decode_find_result)

    def notify(self, address: Hashable, peer: Peer) -> defer.Deferred:
        return self._call(address, Notify, wire.encode_peer(peer), wire.decode_state)

    def successor_hint(self, address: Hashable, peer: Peer) -> defer.Deferred:
        return self._call(address, SuccessorHint, wire.encode_peer(peer), lambda b: None)

    def store(self, address: Hashable, records: Sequence[Any]) -> defer.Deferred:
        batches = _batches(list(records), STORE_BATCH)
        if len(batches) == 1:
            return self._call(address, Store, wire.encode_records(batches[0]), wire.decode_int)
        return self._store_batches(address, batches)

    @defer.inlineCallbacks
    def _store_batches(self, address: Hashable, batches: list[list[Any]]):
        total = 0
        for batch in batches:
            total += yield self._call(address, Store, wire.encode_records(batch), wire.decode_int)
        return total

    def fetch(self, address: Hashable, key: int, kind: str | None) -> defer.Deferred:
        return self._call(address, Fetch, wire.encode_fetch(key, kind), wire.decode_fetch_result)

    def sync(self, address: Hashable, lo: int, hi: int, versions: dict) -> defer.Deferred:
        return self._call(address, Sync, wire.encode_sync(lo, hi, versions), wire.decode_sync_result)

    def leave(self, address: Hashable, peer: Peer, predecessor: Peer | None, successors: Sequence[Peer]) -> defer.Deferred:
        return self._call(address, Leave, wire.encode_leave(peer, predecessor, successors), lambda b: None)

    def fingers(self, address: Hashable) -> defer.Deferred:
        return self._call(address, Fingers, b"", wire.decode_peers)

    def prove(self, address: Hashable, nonce: bytes) -> defer.Deferred:
        return self._call(address, Prove, nonce, wire.decode_proof)

    # -- IWatchRPC
    def watch(self, address: Hashable, key: int, watcher: Peer, ttl: float) -> defer.Deferred:
        return self._call(address, Watch, watching.encode_watch(key, watcher, ttl), wire.decode_records)

    def watch_notify(self, address: Hashable, key: int, records: Sequence[Any]) -> defer.Deferred:
        return self._call(address, WatchNotify, watching.encode_watch_notify(key, records), lambda b: None)


__all__ = [
    "AMPRPC",
    "Chunked",
    "OverlayProtocol",
    "OverlayServerFactory",
    "PROTOCOL_VERSION",
    "VersionMismatch",
    "BadRequest",
    "WrongIdentity",
    "split_address",
]
