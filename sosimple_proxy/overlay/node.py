"""One member of the ring: the facade that composes a node's parts.

A :class:`ChordNode` is given an :class:`.interfaces.IOverlayRPC` to reach
other nodes, an ``IReactorTime`` for its timers and timeouts, and an
:class:`.store.IRecordStore`; it answers other nodes through the
``remote_*`` methods of :class:`.interfaces.IOverlayPeer`.  The same node
therefore runs over the simulated network in tests and over AMP in a
process.

It has no Chord logic of its own; each concern is a part, as
``twisted.names`` splits a resolver's concerns:

- :mod:`.routing`: successor list, predecessor, fingers, suspects;
- :mod:`.calls`: calls to peers with the node's timeouts;
- :mod:`.lookup`: the iterative lookup of a key's successor;
- :mod:`.replication`: records at a key's successor and replicas, syncs, repair;
- :mod:`.maintenance`: stabilize, notify, fix-fingers, check-predecessor rounds;
- :mod:`.admission` (an open ring given ``trust``): peers prove their key
  before they enter the tables.
- :mod:`.rejoin`: probing lost members, so rings split by a partition merge.

The node keeps the life cycle (join, stop, leave) and what goes between
parts: a change of replica set or predecessor in the table (it is the
table's :class:`.interfaces.IRoutingListener`) starts a sync and tells
the predecessor.
"""

from __future__ import annotations

import random
from typing import Any, Hashable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from . import ids
from .admission import OpenRingTrust, PeerGate
from .calls import TimedCalls, ignore
from .errors import LookupFailed, NotAdmitted, NotRunning, OverlayError, StoreFailed
from .interfaces import IOverlayPeer, IOverlayRPC, IRoutingListener
from .jobs import Jobs, sleep
from .lookup import IterativeLookup, LookupResult
from .maintenance import Maintenance
from .messages import EntryId, FetchResult, FindResult, NodeState, Peer, Proof, SyncResult, Version
from .records import Record
from .rejoin import Rejoin
from .replication import Replicator
from .routing import RoutingTable, Suspects
from .store import IRecordStore
from .tuning import NodeConfig
from .watch import Callback, IWatchPeer, Watch, Watches

__all__ = [
    "ChordNode",
    "LookupFailed",
    "LookupResult",
    "NodeConfig",
    "NotRunning",
    "OverlayError",
    "StoreFailed",
]

log = Logger()


@implementer(IOverlayPeer, IRoutingListener, IWatchPeer)
class ChordNode:
    """One member of the ring.

    Construct it, then ``start(bootstrap)`` (a list of addresses; empty
    starts a new ring).  Use ``lookup``, ``put``, ``get``, ``remove``;
    ``leave()`` hands the node's range over and stops it, ``stop()`` just
    stops it (as a crash would, for tests).
    """

    def __init__(
        self,
        node_id: int,
        address: Hashable,
        rpc: IOverlayRPC,
        clock: IReactorTime,
        store: IRecordStore,
        config: NodeConfig | None = None,
        rng: random.Random | None = None,
        writer: str | None = None,
        trust: OpenRingTrust | None = None,
        guard: Any = None,
    ) -> None:
        self.config = config = config or NodeConfig()
        if not 0 <= node_id < 1 << config.m:
            raise ValueError(f"node id does not fit in {config.m} bits")
        self.id = node_id
        self.address = address
        self.peer = Peer(node_id, address)
        self.rpc = rpc
        self.clock = clock
        self.store = store
        self.rng = rng or random.Random(node_id)
        #: what this node writes into records it makes (its id, by default)
        self.writer = writer or ids.format_id(node_id, config.m)
        self.joined = False

        self.jobs = Jobs(self.writer)
        suspects = Suspects(clock.seconds, config.suspect_time)
        #: an open ring's admission (None: every peer is taken as it says)
        self.trust = trust
        self.gate: PeerGate | None = None
        admit = self._admit if trust is not None else None
        self.table = RoutingTable(self.peer, config.m, config.successors, config.replicas, suspects, self, admit)
        self.calls = TimedCalls(rpc, clock, config.rpc_timeout)
        if trust is not None:
            self.gate = PeerGate(
                self.peer, self.calls, clock, trust, config.m, config.suspect_time, on_proved=self._proved
            )
        self.lookups = IterativeLookup(self.table, self.calls, clock, config)
        self.replication = Replicator(
            self.writer, self.table, self.calls, self.lookups, store, self.jobs, clock, config, guard
        )
        #: signs and checks records (:class:`.recordguard.RecordGuard`); None in plain simulations
        self.guard = guard
        if guard is not None:
            guard.attach(self)
        self.rejoin = Rejoin(self.table, self.calls, self.lookups, self.jobs, config)
        self.maintenance = Maintenance(
            self.table, self.calls, self.lookups, self.jobs, clock, config, self.rng, self._each_round
        )
        self.watches = Watches(self.table, self.calls, self.lookups, store, self.jobs, clock, config)

    def _each_round(self, rounds: int) -> None:
        self.replication.each_round(rounds)
        self.rejoin.each_round(rounds)

    # ------------------------------------------------------------ the tables

    @property
    def running(self) -> bool:
        return self.jobs.running

    @property
    def predecessor(self) -> Peer | None:
        return self.table.predecessor

    @property
    def successors(self) -> list[Peer]:
        return self.table.successors

    def finger_peers(self) -> list[Peer]:
        """The distinct nodes of the finger table, in ring order."""
        return self.table.finger_peers()

    def responsible_for(self, key: int) -> bool:
        """Whether we think ``key`` falls in our range ``(predecessor, us]``."""
        return self.table.responsible_for(key)

    def authoritative(self, key: int) -> bool:
        """Whether our miss of ``key`` is a real miss (we own it and have synced our range)."""
        return self.replication.authoritative(key)

    def counts(self) -> tuple[int, int]:
        """Live records held: ``(primary, replica)``; primary is our own range."""
        return self.replication.counts()

    # ------------------------------------------------------------------ life

    def start(self, bootstrap: Sequence[Hashable] = ()) -> defer.Deferred:
        """Join through any of ``bootstrap``, or start a ring alone.

        The Deferred fires with the node once it is in the ring; while no
        bootstrap node answers it keeps trying every interval.
        """
        self.jobs.running = True
        bootstrap = [a for a in bootstrap if a != self.address]
        self.rejoin.remember_bootstrap(bootstrap)  # a partition may split us from them
        if not bootstrap:
            self.replication.cover_whole_ring()
            self.joined = True
            self.maintenance.schedule_round()
            return defer.succeed(self)
        return self._join(bootstrap)

    @defer.inlineCallbacks
    def _join(self, bootstrap: list[Hashable]):
        table = self.table
        while self.running:
            for address in bootstrap:
                try:
                    result = yield self.lookups.lookup(self.id, via=address)
                except Exception:
                    continue
                peers = [p for p in result.successors if p.address != self.address and p.id != self.id]
                if not peers and result.successors and result.successors[0].address == self.address:
                    # The ring already names us as our own id's successor: the
                    # others joined through us while we waited for our
                    # bootstraps, and their lists end at us.  Take the
                    # answering node's successors; stabilisation then puts us
                    # in our place (waiting for a better answer never ended).
                    try:
                        state = yield self.calls.call(address, "state")
                    except Exception:
                        continue
                    peers = [p for p in state.successors if p.address != self.address and p.id != self.id]
                if not peers:
                    continue
                first = peers[0]
                if self.gate is not None and not (yield self.gate.verify(first)):
                    table.failed(first.address)  # it could not prove its place
                    continue
                try:
                    state = yield self.calls.call(first.address, "state")
                except Exception:
                    table.failed(first.address)
                    continue
                table.set_successors([first, *state.successors])
                p = state.predecessor
                if p is not None and p.address != self.address and ids.in_open(self.id, p.id, first.id):
                    table.set_predecessor(p)
                self.calls.call(first.address, "notify", self.peer).addErrback(ignore)
                self.joined = True
                self.maintenance.schedule_round()
                self.replication.sync_soon()
                self.maintenance.seed_fingers(first).addErrback(self.jobs.log_failure, "seeding fingers")
                self.replication.offer_held().addErrback(self.jobs.log_failure, "offering held records")
                return self
            yield sleep(self.clock, self.config.stabilize_interval)
        raise NotRunning("stopped before joining")

    def stop(self) -> None:
        """Stop all timers, as a crash would: nothing is handed over."""
        self.jobs.running = False
        self.maintenance.stop()
        self.replication.stop()
        self.watches.stop()

    @defer.inlineCallbacks
    def leave(self):
        """Hand our range to the successor, tell the neighbours, stop.

        The local copy stays in the store, so a restart can offer it again.
        """
        if not self.running:
            return None
        succ = self.successors[0] if self.successors else None
        pred = self.predecessor
        self.stop()
        if succ is None:
            return None
        mine = self.replication.own_range()
        try:
            if mine:
                yield self.calls.call(succ.address, "store", tuple(mine))
            yield self.calls.call(succ.address, "leave", self.peer, pred, tuple(self.successors))
        except Exception:
            log.warn("overlay: successor {peer} did not take our range on leaving", peer=succ)
        if pred is not None and pred.address != succ.address:
            try:
                yield self.calls.call(pred.address, "leave", self.peer, pred, tuple(self.successors))
            except Exception:
                pass
        return None

    # ------------------------------------------------- between the parts

    def replica_set_changed(self) -> None:
        self.replication.sync_soon()
        if self.running and self.joined:
            self.maintenance.hint_predecessor()

    def predecessor_changed(self, peer: Peer | None) -> None:
        self.replication.range_changed(peer)

    # ------------------------------------------------------ using the ring

    def lookup(self, key: int, verify: bool = True, via: Hashable | None = None) -> defer.Deferred:
        """Deferred[LookupResult]: the successor of ``key`` and those after it.

        ``verify``: end by asking the successor itself (costs a hop).
        ``via``: start at that address instead of our own tables (joining).
        Fails with :class:`LookupFailed`.
        """
        return self.lookups.lookup(key, verify, via)

    def put(self, records: Record | Sequence[Record]) -> defer.Deferred:
        """Deferred[int]: store records of one key at its successor and replicas; how many took them."""
        return self.replication.put(records)

    def get(self, key: int, kind: str | None = None) -> defer.Deferred:
        """Deferred[list[Record]]: the live records under ``key`` ([] is a real miss)."""
        return self.replication.get(key, kind)

    def put_value(
        self, key: int, kind: str, value: bytes, ttl: float, entry: str = "", owner_key_id: bytes = b"", name: str = ""
    ) -> defer.Deferred:
        """Deferred[Record]: write one entry so that it replaces what the ring holds."""
        return self.replication.put_value(key, kind, value, ttl, entry, owner_key_id, name)

    def remove(self, key: int, kind: str, entry: str | None = None) -> defer.Deferred:
        """Deferred[bool]: tombstone an entry (or every entry of ``kind``); whether there was one."""
        return self.replication.remove(key, kind, entry)

    def next_seq(self, floor: int = 0) -> int:
        """A sequence number for a record this node writes: above ``floor``
        and above every one it gave before (for writers of their own records)."""
        return self.replication.next_seq(floor)

    def watch(self, key: int, callback: Callback) -> Watch:
        """Call ``callback(key, live records)`` now and on each change of ``key``
        anywhere in the ring (see :mod:`.watch`); cancel the result to stop."""
        return self.watches.watch(key, callback)

    # ------------------------------------------------- answering other nodes

    def remote_state(self) -> NodeState:
        return self.table.state()

    def remote_find(self, key: int) -> FindResult:
        return self.table.find(key, self.config.candidates)

    def remote_notify(self, peer: Peer) -> NodeState | defer.Deferred:
        gate = self.gate
        if gate is None or gate.public_key(peer) is not None:
            return self.maintenance.notified(peer)
        # an open ring: the node proves its key before we take it in
        return gate.verify(peer).addCallback(self._notified_if_proved, peer)

    def _notified_if_proved(self, proved: bool, peer: Peer) -> NodeState:
        if proved:
            return self.maintenance.notified(peer)
        if self.gate is not None and self.gate.refused(peer):
            raise NotAdmitted(f"node {ids.format_id(peer.id, self.config.m)} at {peer.address} did not prove its key")
        # not answered in time (a busy node): our state, without taking it
        # in; it asks again next round, and we are not dead to it
        return self.table.state()

    def remote_prove(self, nonce: bytes) -> Proof:
        if self.trust is None:
            raise NotAdmitted("this node has no node key to prove")
        return self.trust.signer.prove(nonce, self.peer)

    def remote_successor_hint(self, peer: Peer) -> None:
        return self.maintenance.successor_hint(peer)

    def remote_store(self, records: Sequence[Record]) -> int:
        return self.replication.take(records)

    def remote_fetch(self, key: int, kind: str | None) -> FetchResult:
        return self.replication.answer_fetch(key, kind)

    def remote_sync(self, lo: int, hi: int, versions: dict[EntryId, Version]) -> SyncResult:
        return self.replication.answer_sync(lo, hi, versions)

    def remote_fingers(self) -> tuple[Peer, ...]:
        return tuple(self.table.finger_peers())

    def _proved(self, peer: Peer) -> None:
        if self.running:
            self.table.offer_again()

    def _admit(self, peer: Peer) -> bool | None:
        gate = self.gate
        return True if gate is None else gate.status(peer)

    def remote_leave(self, peer: Peer, predecessor: Peer | None, successors: Sequence[Peer]) -> None:
        if self.gate is not None and self.gate.public_key(peer) is None:
            return None  # an open ring: a node we never admitted has nothing to leave
        self.table.neighbour_left(peer, predecessor, successors)
        return None

    def remote_watch(self, key: int, watcher: Peer, ttl: float) -> tuple[Record, ...]:
        return self.watches.serve(key, watcher, ttl)

    def remote_watch_notify(self, key: int, records: Sequence[Record]) -> None:
        self.watches.notified(key, records)
        return None
