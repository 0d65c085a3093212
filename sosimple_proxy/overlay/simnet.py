"""An in-memory network for rings of thousands of nodes, deterministic by seed.

Every node sits at a random point of a unit square; a message between two
nodes takes a base latency plus a delay growing with their distance, so a
ring has a geography without a table of N^2 links (a link can still be
given its own latency or loss).  Messages are Python calls scheduled on a
:class:`.simclock.SimClock`: a request arrives after the link's latency, the
answer comes back after it again.  A lost message, or one to a dead node,
is simply never answered; the caller's own timeout deals with it, as it
would on a real network.

:class:`SimCluster` builds rings out of :class:`.node.ChordNode` on such a
network and knows the truth (who is alive, who holds what) that tests
compare the nodes' answers with.  With ``proofs`` its nodes form an open
ring as ``[overlay] trust = tofu`` makes one: each has an Ed25519 key, its
id derived from it, and challenges peers before they enter its tables
(:mod:`.admission`).
"""

from __future__ import annotations

import bisect
import math
import random
from typing import Any, Callable, Hashable, Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from .admission import NodeSigner, OpenRingTrust
from .interfaces import IOverlayPeer, IOverlayRPC
from .node import ChordNode
from .records import Record
from .simclock import SimClock
from .store import MemoryRecordStore
from .tuning import NodeConfig


class SimNetwork:
    """Delivers calls between handlers (``IOverlayPeer``) by address."""

    def __init__(
        self,
        clock: SimClock,
        seed: int = 0,
        latency: tuple[float, float] = (0.005, 0.05),
        loss: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rng = random.Random(seed)
        self.base_latency, self.spread = latency[0], latency[1] - latency[0]
        self.loss = loss
        self.handlers: dict[Hashable, IOverlayPeer] = {}
        self.alive: set[Hashable] = set()
        self.position: dict[Hashable, tuple[float, float]] = {}
        self.link_latency: dict[tuple[Hashable, Hashable], float] = {}
        self.link_loss: dict[tuple[Hashable, Hashable], float] = {}
        self.sent = 0
        self.lost = 0
        #: a partition: these addresses reach only each other
        self.cut: set[Hashable] | None = None

    def add(self, address: Hashable, handler: IOverlayPeer) -> None:
        """Attach a live handler at ``address``."""
        self.handlers[address] = handler
        self.alive.add(address)
        self.position.setdefault(address, (self.rng.random(), self.rng.random()))

    def kill(self, address: Hashable) -> None:
        """The node at ``address`` stops answering (and its answers are lost)."""
        self.alive.discard(address)

    def set_link(self, a: Hashable, b: Hashable, latency: float | None = None, loss: float | None = None) -> None:
        """Give the link between ``a`` and ``b`` (both ways) its own latency or loss."""
        for pair in ((a, b), (b, a)):
            if latency is not None:
                self.link_latency[pair] = latency
            if loss is not None:
                self.link_loss[pair] = loss

    def latency(self, a: Hashable, b: Hashable) -> float:
        fixed = self.link_latency.get((a, b))
        if fixed is not None:
            return fixed
        pa, pb = self.position[a], self.position[b]
        d = ((pa[0] - pb[0]) ** 2 + (pa[1] - pb[1]) ** 2) ** 0.5 / 1.4143
        return self.base_latency + self.spread * d

    def partition(self, side: Iterable[Hashable]) -> None:
        """Cut ``side`` off from everyone else (both ways) until :meth:`heal`."""
        self.cut = set(side)

    def heal(self) -> None:
        self.cut = None

    def _lost(self, a: Hashable, b: Hashable) -> bool:
        if self.cut is not None and (a in self.cut) != (b in self.cut):
            return True
        p = self.link_loss.get((a, b), self.loss)
        if p and self.rng.random() < p:
            self.lost += 1
            return True
        return False

    def rpc(self, address: Hashable) -> SimRPC:
        """The ``IOverlayRPC`` a node at ``address`` calls others with."""
        return SimRPC(self, address)

    def call(self, src: Hashable, dst: Hashable, method: str, args: tuple) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.sent += 1
        if src not in self.alive or dst not in self.position or self._lost(src, dst):
            return d
        self.clock.callLater(self.latency(src, dst), self._arrive, src, dst, method, args, d)
        return d

    def _arrive(self, src: Hashable, dst: Hashable, method: str, args: tuple, d: defer.Deferred) -> None:
        if dst not in self.alive:
            return
        handler = self.handlers[dst]
        try:
            result = getattr(handler, "remote_" + method)(*args)
        except Exception:
            result = Failure()
        if isinstance(result, defer.Deferred):
            result.addBoth(self._reply, src, dst, d)
        else:
            self._reply(result, src, dst, d)

    def _reply(self, result: Any, src: Hashable, dst: Hashable, d: defer.Deferred) -> None:
        if dst not in self.alive or self._lost(dst, src):
            return
        self.clock.callLater(self.latency(dst, src), self._answer, result, src, d)

    def _answer(self, result: Any, src: Hashable, d: defer.Deferred) -> None:
        if d.called or src not in self.alive:
            return
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


def _forward(method: str) -> Callable[..., defer.Deferred]:
    def call(self: SimRPC, address: Hashable, *args: object) -> defer.Deferred:
        return self.network.call(self.address, address, method, args)

    call.__name__ = method
    return call


@implementer(IOverlayRPC)
class SimRPC:
    """A node's view of the simulated network."""

    def __init__(self, network: SimNetwork, address: Hashable) -> None:
        self.network = network
        self.address = address

    state = _forward("state")
    find = _forward("find")
    notify = _forward("notify")
    successor_hint = _forward("successor_hint")
    store = _forward("store")
    fetch = _forward("fetch")
    sync = _forward("sync")
    leave = _forward("leave")
    fingers = _forward("fingers")
    prove = _forward("prove")
    watch = _forward("watch")
    watch_notify = _forward("watch_notify")


class SimCluster:
    """A ring of ChordNodes on a SimNetwork, with the truth to check them by."""

    def __init__(
        self,
        seed: int,
        config: NodeConfig | None = None,
        latency: tuple[float, float] = (0.005, 0.05),
        loss: float = 0.0,
        proofs: bool = False,
        allow_chosen_ids: bool = False,
        guards: Callable[[Hashable], Any] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.proofs = proofs
        self.allow_chosen_ids = allow_chosen_ids
        #: makes each new node's record guard (signing and checking), if given
        self.guards = guards
        self.clock = SimClock()
        self.net = SimNetwork(self.clock, seed, latency, loss)
        self.config = config or NodeConfig(stabilize_interval=1.0)
        self.nodes: dict[Hashable, ChordNode] = {}
        self._next_address = 0
        self._ring: list[int] | None = None
        self._members: list[ChordNode] | None = None
        self._live: list[ChordNode] | None = None
        self._up: dict[Hashable, ChordNode] = {}  # not crashed (a superset of live)

    # -- membership
    @property
    def interval(self) -> float:
        return self.config.stabilize_interval

    def live(self) -> list[ChordNode]:
        """Nodes that have not crashed (cached, like :meth:`joined`)."""
        if self._live is None:
            self._live = [n for a, n in self._up.items() if a in self.net.alive]
        return self._live

    def joined(self) -> list[ChordNode]:
        """Live nodes that have joined (cached: tests ask for it per event)."""
        if self._members is None:
            self._members = [n for n in self.live() if n.joined]
        return self._members

    def add_node(
        self,
        bootstrap: Sequence[Hashable] | None = None,
        node_id: int | None = None,
        trust: OpenRingTrust | None = None,
    ) -> ChordNode:
        """Start a node; it joins through ``bootstrap`` (default: a random joined node).

        With ``proofs`` it gets a key (or ``trust``, for a node of the
        test's making) and, without ``node_id``, the id its key gives."""
        address = self._next_address
        self._next_address += 1
        if self.proofs and trust is None:
            trust = self.open_ring_trust()
        if node_id is None:
            node_id = trust.signer.node_id(self.config.m) if trust is not None else self.rng.getrandbits(self.config.m)
        node = ChordNode(
            node_id,
            address,
            self.net.rpc(address),
            self.clock,
            MemoryRecordStore(self.clock.seconds),
            self.config,
            random.Random(self.rng.getrandbits(64)),
            trust=trust,
            guard=self.guards(address) if self.guards is not None else None,
        )
        self.net.add(address, node)
        self.nodes[address] = node
        self._up[address] = node
        self._ring = self._members = self._live = None
        if bootstrap is None:
            members = self.joined()
            bootstrap = [self.rng.choice(members).address] if members else []
        node.start(bootstrap).addBoth(self._on_join)
        return node

    def open_ring_trust(self, allow_chosen_ids: bool | None = None) -> OpenRingTrust:
        """A fresh node key (from the seed), as an open ring's node has one."""
        key = Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        chosen = self.allow_chosen_ids if allow_chosen_ids is None else allow_chosen_ids
        return OpenRingTrust(NodeSigner(key), chosen, random_bytes=random.Random(self.rng.getrandbits(64)).randbytes)

    def forget_truth(self) -> None:
        """Recompute membership next time (after changing ``nodes`` by hand)."""
        self._up = {a: n for a, n in self.nodes.items() if a in self.net.alive}
        self._ring = self._members = self._live = None

    def _on_join(self, result: Any) -> None:
        self._ring = self._members = self._live = None  # the truth changed: one more member

    def kill(self, node: ChordNode) -> None:
        """Crash a node: no handover, no goodbye."""
        node.stop()
        self.net.kill(node.address)
        self._up.pop(node.address, None)
        self._ring = self._members = self._live = None

    def grow(self, n: int, per_round: int = 50, settle_rounds: int = 0) -> None:
        """Add ``n`` nodes, one batch per interval, then run ``settle_rounds``.

        A batch is at most ``per_round`` nodes and at most as many as are
        already in, so a ring grows as real ones do rather than by a flash
        crowd of newcomers through one lone node.
        """
        if not self.nodes:
            self.add_node([])
            n -= 1
        while n > 0:
            batch = min(per_round, n, max(1, len(self.joined())))
            for _ in range(batch):
                self.add_node()
            n -= batch
            self.run(1)
        self.run(settle_rounds)

    def run(self, rounds: float) -> None:
        """Run the simulation for ``rounds`` stabilization intervals."""
        self.clock.advance(rounds * self.interval)

    def settle(self, until: Callable[[], bool] | None = None, max_rounds: int = 100, lists: bool = True) -> int:
        """Run rounds until the ring is right (see :meth:`ring_correct`) and ``until()``."""
        for r in range(max_rounds):
            if self.ring_correct(lists) and (until is None or until()):
                return r
            self.run(1)
        raise AssertionError(f"ring not stable after {max_rounds} rounds")

    # -- the truth
    def ring(self) -> list[int]:
        if self._ring is None:
            self._ring = sorted(n.id for n in self.joined())
        return self._ring

    def by_id(self) -> dict[int, ChordNode]:
        return {n.id: n for n in self.joined()}

    def true_successor(self, key: int) -> int:
        ring = self.ring()
        i = bisect.bisect_left(ring, key)
        return ring[i % len(ring)]

    def true_replica_set(self, key: int, k: int | None = None) -> list[int]:
        """The key's successor and the next ``k`` nodes (default: ``replicas``)."""
        k = self.config.replicas if k is None else k
        ring = self.ring()
        i = bisect.bisect_left(ring, key)
        return [ring[(i + j) % len(ring)] for j in range(min(k + 1, len(ring)))]

    def ring_correct(self, lists: bool = True) -> bool:
        """Every joined live node has the true predecessor and successor
        (and, with ``lists``, the true successor list)."""
        ring = self.ring()
        if len(ring) <= 1:
            return True
        nodes = self.by_id()
        want = min(self.config.successors, len(ring) - 1) if lists else 1
        for i, nid in enumerate(ring):
            n = nodes[nid]
            if len(n.successors) < want:
                return False
            for j in range(want):
                if n.successors[j].id != ring[(i + 1 + j) % len(ring)]:
                    return False
            if n.predecessor is None or n.predecessor.id != ring[i - 1]:
                return False
        return True

    def holders(self, record: Record) -> list[ChordNode]:
        """Live nodes holding this version (or a newer one) of the record's entry."""
        out = []
        for n in self.live():
            r = n.store.entry(record.entry_id)
            if r is not None and r.seq >= record.seq:
                out.append(n)
        return out

    def copies_in_place(self, record: Record) -> int:
        """How many of the key's true replica set hold the record."""
        nodes = self.by_id()
        return sum(
            1
            for nid in self.true_replica_set(record.key)
            if (r := nodes[nid].store.entry(record.entry_id)) is not None and r.seq >= record.seq
        )

    # -- driving operations to completion
    def wait(self, d: defer.Deferred, rounds: float = 20) -> Any:
        """Run the clock until ``d`` fires; its result (a Failure is raised)."""
        out: list[Any] = []
        d.addBoth(out.append)
        step = self.interval / 10
        deadline = self.clock.seconds() + rounds * self.interval
        while not out and self.clock.seconds() < deadline:
            self.clock.advance(step)
        if not out:
            raise AssertionError("operation did not finish")
        if isinstance(out[0], Failure):
            out[0].raiseException()
        return out[0]

    def gather(self, ds: Iterable[defer.Deferred], rounds: float = 20) -> list[tuple[bool, Any]]:
        """Run until every Deferred fired; ``(ok, result-or-failure)`` for each."""
        return self.wait(defer.DeferredList(list(ds), consumeErrors=True), rounds)

    def random_key(self) -> int:
        return self.rng.getrandbits(self.config.m)

    def make_record(self, key: int | None = None, value: bytes = b"v", ttl: float = 1e9, seq: int = 1) -> Record:
        key = self.random_key() if key is None else key
        return Record(key, "blob", "", "sim", value, self.clock.seconds() + ttl, seq)


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]

