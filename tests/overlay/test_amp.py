"""Nodes talking AMP over real TCP on 127.0.0.1, in one reactor.

These use twisted.trial's TestCase (pytest runs it) because they need the
real reactor; they wait for conditions by polling with a deadline, never
by asserting on elapsed time.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp as tamp
from twisted.trial import unittest

from sosimple_proxy.overlay import wire
from sosimple_proxy.overlay.amp import (
    AMPRPC,
    PROTOCOL_VERSION,
    BadRequest,
    VersionMismatch,
    Find,
    Hello,
    OverlayProtocol,
    OverlayServerFactory,
    State,
    Store,
)
from sosimple_proxy.overlay.node import ChordNode, NodeConfig
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.store import MemoryRecordStore
from sosimple_proxy.testing.polling import until, until_quiet

M = 32
CONFIG = NodeConfig(m=M, stabilize_interval=0.1, successors=4, replicas=2)


class Bogus(tamp.Command):
    commandName = b"Bogus"
    arguments = [(b"body", tamp.String())]
    response = []


class Running:
    """One node over AMP: its listening port, client pool and node."""

    def __init__(self, node: ChordNode, port, factory: OverlayServerFactory, rpc: AMPRPC) -> None:
        self.node, self.port, self.factory, self.rpc = node, port, factory, rpc

    def stop(self) -> defer.Deferred:
        self.node.stop()
        self.rpc.close()
        self.factory.close_all()
        return defer.maybeDeferred(self.port.stopListening)


class AMPRingTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.running: list[Running] = []

    @defer.inlineCallbacks
    def tearDown(self):
        yield defer.DeferredList([r.stop() for r in self.running if r.node.running or r.port.connected])
        # let calls in flight time out (within 4 RPC timeouts), so the reactor is left clean
        yield until_quiet(4 * CONFIG.rpc_timeout + 0.2)

    @defer.inlineCallbacks
    def start(self, node_id: int, bootstrap=()):
        factory = OverlayServerFactory()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        address = f"127.0.0.1:{port.getHost().port}"
        rpc = AMPRPC(reactor)
        node = ChordNode(node_id, address, rpc, reactor, MemoryRecordStore(reactor.seconds), CONFIG)
        rpc.local = node.peer
        factory.node = node
        r = Running(node, port, factory, rpc)
        self.running.append(r)
        yield node.start(bootstrap)
        return r

    @defer.inlineCallbacks
    def ring(self, n: int):
        first = yield self.start(1 << (M - 3))
        for i in range(1, n):
            yield self.start((i * 0x9E3779B9) % (1 << M), [first.node.address])
        nodes = [r.node for r in self.running]
        order = sorted(nodes, key=lambda x: x.id)

        def correct() -> bool:
            for i, x in enumerate(order):
                if not x.successors or x.successors[0].id != order[(i + 1) % n].id:
                    return False
                if x.predecessor is None or x.predecessor.id != order[i - 1].id:
                    return False
            return True

        yield until(correct)
        return order

    @defer.inlineCallbacks
    def test_records_across_a_ring_of_four(self):
        nodes = yield self.ring(4)
        big = bytes(range(256)) * 800  # 200 KB: several AMP values, several chunks
        rec = Record(12345, "blob", "", "test", big, reactor.seconds() + 60, 1)
        acks = yield nodes[0].put(rec)
        self.assertEqual(acks, 3)
        for n in nodes:
            got = yield n.get(12345)
            self.assertEqual(got, [rec])
        removed = yield nodes[2].remove(12345, "blob")
        self.assertTrue(removed)
        got = yield nodes[3].get(12345)
        self.assertEqual(got, [])
        # many small records in one store: more than one batch
        many = [Record(777, "registration", f"e{i}", "t", b"x" * 1000, reactor.seconds() + 60, 1) for i in range(120)]
        yield nodes[1].put(many)
        got = yield nodes[3].get(777, "registration")
        self.assertEqual(len(got), 120)
        # connections are pooled: one per peer, however many calls
        for r in self.running:
            self.assertLessEqual(r.rpc.connects, 3)

    @defer.inlineCallbacks
    def test_a_watch_is_pushed_over_amp(self):
        nodes = yield self.ring(4)
        seen: list[list[bytes]] = []
        key = 4242
        nodes[3].watch(key, lambda k, records: seen.append([r.value for r in records]))
        yield until(lambda: seen == [[]])
        yield nodes[1].put(Record(key, "blob", "", "t", b"pushed", reactor.seconds() + 60, 1))
        yield until(lambda: seen[-1] == [b"pushed"])
        self.assertGreater(nodes[3].watches.pushes_received, 0)

    @defer.inlineCallbacks
    def test_a_crashed_node_is_routed_around(self):
        nodes = yield self.ring(5)
        keys = [(i * 0x2545F491) % (1 << M) for i in range(20)]
        for k in keys:
            yield nodes[0].put(Record(k, "blob", "", "t", b"%d" % k, reactor.seconds() + 60, 1))
        victim = next(r for r in self.running if r.node is nodes[2])
        yield victim.stop()
        survivors = [n for n in nodes if n is not victim.node]
        for k in keys:
            got = yield survivors[-1].get(k)
            self.assertEqual([r.value for r in got], [b"%d" % k])
        yield until(lambda: all(victim.node.peer not in n.successors for n in survivors))

    @defer.inlineCallbacks
    def test_graceful_leave(self):
        nodes = yield self.ring(3)
        yield nodes[0].put(Record(99, "blob", "", "t", b"v", reactor.seconds() + 60, 1))
        leaving = next(r for r in self.running if r.node is nodes[1])
        yield leaving.node.leave()
        yield leaving.stop()
        got = yield nodes[2].get(99)
        self.assertEqual([r.value for r in got], [b"v"])

    @defer.inlineCallbacks
    def test_bad_requests_get_error_answers(self):
        r = yield self.start(5)
        host = r.port.getHost()
        client = yield TCP4ClientEndpoint(reactor, "127.0.0.1", host.port).connect(Factory.forProtocol(OverlayProtocol))
        try:
            hello = yield client.callRemote(Hello, body=wire.encode_hello(*PROTOCOL_VERSION, None))
            self.assertEqual(wire.decode_hello(hello["body"])[0], PROTOCOL_VERSION[0])
            # a body that does not decode
            yield self.assertFailure(client.callRemote(Find, body=b"\xff\xff"), BadRequest)
            # records that break the format
            yield self.assertFailure(client.callRemote(Store, body=b"\x00\x00\x00\x01\x01"), BadRequest)
            # a command nobody knows
            yield self.assertFailure(client.callRemote(Bogus, body=b"x"), tamp.UnhandledCommand)
            # another major version
            yield self.assertFailure(client.callRemote(Hello, body=wire.encode_hello(99, 0, None)), VersionMismatch)
            # and the node still answers
            state = yield client.callRemote(State, body=b"")
            self.assertEqual(wire.decode_state(state["body"]).peer, r.node.peer)
        finally:
            client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_garbage_on_the_wire_drops_only_that_connection(self):
        r = yield self.start(6)
        port = r.port.getHost().port
        raw = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol))
        closed = defer.Deferred()
        raw.connectionLost = lambda reason: closed.callback(None)
        # a 300-byte key: more than AMP allows (255)
        raw.transport.write(b"\x01\x2c" + b"k" * 300)
        yield closed
        # the node is still there for everyone else
        client = AMPRPC(reactor)
        state = yield client.state(r.node.address)
        self.assertEqual(state.peer, r.node.peer)
        client.close()

    @defer.inlineCallbacks
    def test_connections_send_without_nagle_delays(self):
        """Both ends of a pooled connection set TCP_NODELAY: a box written
        while an earlier one is unacknowledged leaves at once (issue 12)."""
        import socket

        r = yield self.start(7)
        client = AMPRPC(reactor)
        try:
            yield client.state(r.node.address)
            ends = [client._open[r.node.address], *r.factory.connections]
            self.assertEqual(len(ends), 2)
            for proto in ends:
                sock = proto.transport.getHandle()
                self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        finally:
            client.close()

    @defer.inlineCallbacks
    def test_an_unreachable_address_fails_the_call(self):
        rpc = AMPRPC(reactor, connect_timeout=1)
        # a port we bound and closed: nothing listens there
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(OverlayProtocol))
        number = port.getHost().port
        yield port.stopListening()
        yield self.assertFailure(rpc.state(f"127.0.0.1:{number}"), Exception)
        rpc.close()
