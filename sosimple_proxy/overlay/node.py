"""The Chord logic of one node, with no I/O of its own.

A :class:`ChordNode` is given an :class:`.interfaces.IOverlayRPC` to reach
other nodes, an ``IReactorTime`` for its timers and timeouts, and an
:class:`.store.IRecordStore`; it answers other nodes through the
``remote_*`` methods of :class:`.interfaces.IOverlayPeer`.  The same node
therefore runs over the simulated network in tests and over AMP in a
process.

Lookups are *iterative*: the node asking walks the ring itself, one
``find`` call per hop, each with its own timeout.  That costs some latency
against recursive routing, but the asker sees every hop: when one times
out it marks that peer suspect, routes around it at once with the next best
candidate, and no intermediate node holds state for someone else's lookup.
A lookup ends by asking the candidate successor itself (one more hop), so
a dead successor or a newcomer its predecessor has not yet heard of does
not produce a wrong answer.

Records are written by the client to the key's successor and the next
``replicas`` nodes, as the paper does with REGISTER, and repaired by the
ring afterwards: each node regularly syncs its own range with its first
``replicas`` successors (both ways, so a newcomer or a node whose range grew
pulls what it lacks).  A node answers a read *authoritatively* only for the
part of its range it has synced since it last grew; otherwise a reader
also asks the replicas and merges.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import random
from typing import Hashable, Iterable, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import ids
from .interfaces import IOverlayPeer, IOverlayRPC
from .messages import EntryId, FetchResult, FindResult, NodeState, Peer, SyncResult, Version, versions_of
from .records import Record, merge_all
from .store import IRecordStore

log = Logger()


class OverlayError(Exception):
    """The ring could not do what was asked."""


class LookupFailed(OverlayError):
    """No live node answered for the key within the lookup's time."""


class StoreFailed(OverlayError):
    """No node took the records."""


class NotRunning(OverlayError):
    """The node has left or was never started."""


@attrs.frozen
class LookupResult:
    """The successor of a key and the nodes after it (the replica set first)."""

    key: int
    successors: tuple[Peer, ...]
    hops: int

    @property
    def responsible(self) -> Peer:
        return self.successors[0]


@attrs.define
class NodeConfig:
    """Tuning of one node; site.ini's ``[overlay]`` keys map onto the first ones."""

    m: int = ids.DEFAULT_BITS
    successors: int = 8
    replicas: int = 2
    stabilize_interval: float = 5.0
    #: each round waits ``interval * (1 +- jitter)``, so nodes do not beat in step
    jitter: float = 0.25
    #: per call; default: half an interval, at most 2 s
    rpc_timeout: float = 0.0
    #: a whole lookup, retries included; default: four calls' worth
    lookup_timeout: float = 0.0
    #: a full sync with the replicas every so many rounds (besides on changes)
    sync_every: int = 4
    #: how long a peer that failed a call is kept out of our tables
    suspect_time: float = 0.0
    #: next-hop candidates a ``find`` answer carries
    candidates: int = 3

    def __attrs_post_init__(self) -> None:
        if self.successors < 1:
            raise ValueError("a node needs a successor list of at least one")
        if self.replicas >= self.successors + 1:
            # replicas live on successors: the list must reach them
            self.successors = self.replicas + 1
        if self.rpc_timeout <= 0:
            self.rpc_timeout = min(2.0, self.stabilize_interval / 2)
        if self.lookup_timeout <= 0:
            self.lookup_timeout = 4 * self.rpc_timeout
        if self.suspect_time <= 0:
            self.suspect_time = 2 * self.stabilize_interval


def _ignore(failure) -> None:
    return None


@implementer(IOverlayPeer)
class ChordNode:
    """One member of the ring.

    Construct it, then ``start(bootstrap)`` (a list of addresses; empty
    starts a new ring).  Use ``lookup``, ``put``, ``get``, ``remove``;
    ``leave()`` hands the node's range over and stops it, ``stop()`` just
    stops it (as a crash would, for tests).
    """

    #: how far stabilize may walk back from its successor in one round
    WALK_BACK = 64
    #: keys of stray records handed over per sweep
    STRAYS_PER_ROUND = 50

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
    ) -> None:
        self.config = config or NodeConfig()
        if not 0 <= node_id < 1 << self.config.m:
            raise ValueError(f"node id does not fit in {self.config.m} bits")
        self.id = node_id
        self.address = address
        self.peer = Peer(node_id, address)
        self.rpc = rpc
        self.clock = clock
        self.store = store
        self.rng = rng or random.Random(node_id)
        #: what this node writes into records it makes (its id, by default)
        self.writer = writer or ids.format_id(node_id, self.config.m)

        self.predecessor: Peer | None = None
        self.successors: list[Peer] = []
        self.fingers: dict[int, Peer] = {}
        self.running = False
        self.joined = False
        self.rounds = 0

        self._table_dirty = True
        self._table_d: list[int] = []
        self._table_p: list[Peer] = []
        self._suspects: dict[Hashable, float] = {}
        self._handed: set[tuple[EntryId, int]] = set()
        self._next_finger = 0
        self._round_call: IDelayedCall | None = None
        self._busy: set[str] = set()
        self._replica_set: tuple[Hashable, ...] = ()
        #: we have synced every key in ``(_covered_from, id]``; None: nothing yet
        self._covered_from: int | None = None
        self._sync_call: IDelayedCall | None = None
        self._sync_again = False
        self._last_seq = 0
        self._pred_heard = float("-inf")
        self._rtts: collections.deque[float] = collections.deque(maxlen=32)

    # ------------------------------------------------------------------ life

    def start(self, bootstrap: Sequence[Hashable] = ()) -> defer.Deferred:
        """Join through any of ``bootstrap``, or start a ring alone.

        The Deferred fires with the node once it is in the ring; while no
        bootstrap node answers it keeps trying every interval.
        """
        self.running = True
        bootstrap = [a for a in bootstrap if a != self.address]
        if not bootstrap:
            self._covered_from = self.id  # alone: the whole ring is ours
            self.joined = True
            self._schedule_round()
            return defer.succeed(self)
        return self._join(bootstrap)

    @defer.inlineCallbacks
    def _join(self, bootstrap: list[Hashable]):
        while self.running:
            for address in bootstrap:
                try:
                    result = yield self.lookup(self.id, via=address)
                except Exception:
                    continue
                peers = [p for p in result.successors if p.address != self.address and p.id != self.id]
                if not peers:
                    continue
                first = peers[0]
                try:
                    state = yield self._call(first.address, "state")
                except Exception:
                    self._failed(first.address)
                    continue
                self._set_successors([first, *state.successors])
                p = state.predecessor
                if p is not None and p.address != self.address and ids.in_open(self.id, p.id, first.id):
                    self._set_predecessor(p)
                self._call(first.address, "notify", self.peer).addErrback(_ignore)
                self.joined = True
                self._schedule_round()
                self._sync_soon()
                self._seed_fingers(first).addErrback(self._log_failure, "seeding fingers")
                self._offer_held().addErrback(self._log_failure, "offering held records")
                return self
            yield self._sleep(self.config.stabilize_interval)
        raise NotRunning("stopped before joining")

    def stop(self) -> None:
        """Stop all timers, as a crash would: nothing is handed over."""
        self.running = False
        for call in (self._round_call, self._sync_call):
            if call is not None and call.active():
                call.cancel()
        self._round_call = self._sync_call = None

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
        if pred is not None:
            mine = self.store.in_range(pred.id, self.id)
        else:
            mine = list(self.store.records())
        try:
            if mine:
                yield self._call(succ.address, "store", tuple(mine))
            yield self._call(succ.address, "leave", self.peer, pred, tuple(self.successors))
        except Exception:
            log.warn("overlay: successor {peer} did not take our range on leaving", peer=succ)
        if pred is not None and pred.address != succ.address:
            try:
                yield self._call(pred.address, "leave", self.peer, pred, tuple(self.successors))
            except Exception:
                pass
        return None

    def _sleep(self, seconds: float) -> defer.Deferred:
        d = defer.Deferred()
        self.clock.callLater(seconds, d.callback, None)
        return d

    def _log_failure(self, failure, what: str) -> None:
        log.failure("overlay node {id}: {what} failed", failure, id=self.writer, what=what)

    # ------------------------------------------------------------ the tables

    def _now(self) -> float:
        return self.clock.seconds()

    def _is_suspect(self, address: Hashable) -> bool:
        until = self._suspects.get(address)
        if until is None:
            return False
        if until > self.clock.seconds():
            return True
        del self._suspects[address]
        return False

    def _failed(self, address: Hashable) -> None:
        """A call to ``address`` failed: route around it until it proves alive."""
        if address == self.address:
            return
        self._suspects[address] = self.clock.seconds() + self.config.suspect_time
        if self.predecessor is not None and self.predecessor.address == address:
            self.predecessor = None
        if any(s.address == address for s in self.successors):
            self._set_successors([s for s in self.successors if s.address != address])
        for i in [i for i, p in self.fingers.items() if p.address == address]:
            del self.fingers[i]
        self._table_dirty = True

    def _set_successors(self, peers: Iterable[Peer]) -> None:
        out: list[Peer] = []
        seen = set()
        for p in peers:
            if p.address == self.address or p.id == self.id or p.address in seen or self._is_suspect(p.address):
                continue
            seen.add(p.address)
            out.append(p)
            if len(out) >= self.config.successors:
                break
        self.successors = out
        self._table_dirty = True
        replica_set = tuple(p.address for p in out[: self.config.replicas])
        if replica_set != self._replica_set:
            self._replica_set = replica_set
            self._sync_soon()
            pred = self.predecessor
            if pred is not None and self.running and self.joined:
                # Our predecessor's replicas are among our successors: tell
                # it now rather than at its next round.  Each node back has
                # the change one place further down its list, so this stops
                # after ``replicas`` nodes.
                self._call(pred.address, "successor_hint", self.peer).addErrback(_ignore)

    def _set_predecessor(self, peer: Peer | None) -> None:
        self.predecessor = peer
        self._table_dirty = True
        if peer is None:
            return
        if self._covers(peer.id):
            # the range shrank (a newcomer): we only vouch for what we still own
            self._covered_from = peer.id
        else:
            # our range grew past what we have synced
            self._sync_soon()

    def _refresh_table(self) -> None:
        if not self._table_dirty:
            return
        peers: dict[Hashable, Peer] = {}
        for p in self.successors:
            peers[p.address] = p
        for p in self.fingers.values():
            peers.setdefault(p.address, p)
        if self.predecessor is not None:
            peers.setdefault(self.predecessor.address, self.predecessor)
        m = self.config.m
        entries = sorted((ids.distance(self.id, p.id, m), i, p) for i, p in enumerate(peers.values()) if p.id != self.id)
        self._table_d = [d for d, _, _ in entries]
        self._table_p = [p for _, _, p in entries]
        self._table_dirty = False

    def _closest_preceding(self, key: int, count: int) -> list[Peer]:
        """Up to ``count`` known live peers in ``(self, key)``, closest to the key first."""
        self._refresh_table()
        i = bisect.bisect_left(self._table_d, ids.distance(self.id, key, self.config.m))
        out: list[Peer] = []
        while i > 0 and len(out) < count:
            i -= 1
            p = self._table_p[i]
            if not self._is_suspect(p.address):
                out.append(p)
        return out

    def known_peers(self) -> list[Peer]:
        """Every distinct peer in our tables, in ring order from us."""
        self._refresh_table()
        return list(self._table_p)

    def finger_peers(self) -> list[Peer]:
        """The distinct nodes of the finger table, in ring order."""
        seen: dict[Hashable, Peer] = {}
        for i in sorted(self.fingers):
            seen.setdefault(self.fingers[i].address, self.fingers[i])
        return list(seen.values())

    def responsible_for(self, key: int) -> bool:
        """Whether we think ``key`` falls in our range ``(predecessor, us]``."""
        if not self.successors:
            return True
        return self.predecessor is not None and ids.in_half_open(key, self.predecessor.id, self.id)

    def _covers(self, lo: int) -> bool:
        """Whether we have synced every key in ``(lo, id]``."""
        cf = self._covered_from
        return cf is not None and (lo == cf or ids.in_open(lo, cf, self.id))

    def _authoritative(self, key: int) -> bool:
        if not self.responsible_for(key):
            return False
        cf = self._covered_from
        return cf is not None and ids.in_half_open(key, cf, self.id)

    def counts(self) -> tuple[int, int]:
        """Live records held: ``(primary, replica)``; primary is our own range."""
        total = self.store.count()
        if not self.successors:
            return total, 0
        if self.predecessor is None:
            return 0, total
        primary = self.store.count(self.predecessor.id, self.id)
        return primary, total - primary

    # ------------------------------------------------------------------ calls

    def _call(self, address: Hashable, method: str, *args: object) -> defer.Deferred:
        return self._timed(getattr(self.rpc, method)(address, *args), self.config.rpc_timeout)

    def _timed(self, d: defer.Deferred, timeout: float) -> defer.Deferred:
        """Cancel ``d`` after ``timeout`` (failing it with TimeoutError).

        ``Deferred.addTimeout`` does the same with more wrapping; this runs
        millions of times in a simulation, so it is kept to one timer and
        one callback.
        """
        timer = self.clock.callLater(timeout, d.cancel)
        d.addBoth(self._settled, timer, self.clock.seconds(), timeout)
        return d

    def _settled(self, result: object, timer: IDelayedCall, started: float, timeout: float) -> object:
        if timer.active():
            timer.cancel()
            if not isinstance(result, Failure):
                self._rtts.append(self.clock.seconds() - started)
            return result
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            raise defer.TimeoutError(f"no answer within {timeout:g} s")
        return result

    def _hop(self, address: Hashable, method: str, *args: object) -> defer.Deferred:
        """A lookup or read step: timed out as soon as the answer is overdue.

        A dead hop costs the whole lookup its timeout, so lookups do not
        wait ``rpc_timeout`` but twice the slowest of the last answers (the
        peers asked vary, so TCP's per-peer SRTT would be too eager), between
        a quarter of ``rpc_timeout`` and all of it; under churn that is what
        keeps lookups inside their deadline.
        """
        return self._timed(getattr(self.rpc, method)(address, *args), self.hop_timeout())

    def hop_timeout(self) -> float:
        cap = self.config.rpc_timeout
        if len(self._rtts) < 8:
            return cap
        return min(cap, max(cap / 4, 2 * max(self._rtts)))


    # ------------------------------------------------------------ maintenance

    def _schedule_round(self) -> None:
        if not self.running:
            return
        j = self.config.jitter
        delay = self.config.stabilize_interval * (1 + self.rng.uniform(-j, j))
        self._round_call = self.clock.callLater(delay, self._round)

    def _round(self) -> None:
        self._round_call = None
        if not self.running:
            return
        self.rounds += 1
        self._guarded("stabilize", self._stabilize)
        self._guarded("check_predecessor", self._check_predecessor)
        self._guarded("fix_fingers", self._fix_fingers)
        if self.rounds % self.config.sync_every == 0:
            self._sync_soon()
        if self.rounds % (4 * self.config.sync_every) == 0:
            self.store.purge()
        if self.rounds % (2 * self.config.sync_every) == 0:
            self._guarded("strays", self._hand_over_strays)
        self._schedule_round()

    def _guarded(self, name: str, job) -> None:
        """Run a maintenance job unless the last one of its name is still going.

        A job returns a Deferred, or None when it had nothing to wait for.
        """
        if name in self._busy:
            return
        d = job()
        if d is None:
            return
        self._busy.add(name)
        d.addCallbacks(self._job_done, self._job_failed, (name,), None, (name,))

    def _job_done(self, result: object, name: str) -> None:
        self._busy.discard(name)

    def _job_failed(self, failure: Failure, name: str) -> None:
        self._busy.discard(name)
        self._log_failure(failure, name)

    def _stabilize(self) -> defer.Deferred | None:
        """Ask the successor for its view (telling it about us), adopt a closer one.

        Plain callbacks rather than inlineCallbacks: this runs for every node
        every round, and in a simulation of thousands that overhead shows.
        """
        if not self.successors:
            if self.predecessor is None:
                return None
            self._set_successors([self.predecessor])
        return self._stabilize_step(self.successors[0], 0)

    def _stabilize_step(self, succ: Peer, walked: int) -> defer.Deferred:
        # one call both tells the successor about us and asks its view
        d = self._call(succ.address, "notify", self.peer)
        d.addCallbacks(self._stabilize_answer, self._stabilize_failed, (succ, walked), None, (succ, walked))
        return d

    def _stabilize_answer(self, state: NodeState, succ: Peer, walked: int) -> defer.Deferred | None:
        # Walk back while the successor's predecessor sits between us: after
        # many joins at once this closes in a round what one step a round
        # would take as many rounds as there were joiners.
        x = state.predecessor
        if (
            walked < self.WALK_BACK
            and x is not None
            and x.address != self.address
            and ids.in_open(x.id, self.id, succ.id)
            and not self._is_suspect(x.address)
        ):
            d = self._call(x.address, "notify", self.peer)
            d.addCallbacks(self._stabilize_answer, self._walk_failed, (x, walked + 1), None, (x, succ, state))
            return d
        self._set_successors([succ, *state.successors])
        return None

    def _walk_failed(self, failure: Failure, x: Peer, succ: Peer, state: NodeState) -> None:
        self._failed(x.address)
        self._set_successors([succ, *state.successors])

    def _stabilize_failed(self, failure: Failure, succ: Peer, walked: int) -> defer.Deferred:
        self._failed(succ.address)
        if self.successors:
            return self._stabilize_step(self.successors[0], walked)
        return self._recover()

    @defer.inlineCallbacks
    def _recover(self):
        """Every successor is gone: find our place again through anyone we know."""
        for p in self.known_peers():
            try:
                result = yield self.lookup(ids.add(self.id, 1, self.config.m), via=p.address)
            except Exception:
                continue
            others = [s for s in result.successors if s.address != self.address]
            if others:
                self._set_successors(others)
                return None
        return None

    def _check_predecessor(self) -> defer.Deferred | None:
        pred = self.predecessor
        if pred is None:
            return None
        if self._pred_heard > self.clock.seconds() - 1.5 * self.config.stabilize_interval:
            return None  # it notified us lately: alive
        return self._call(pred.address, "state").addErrback(lambda _: self._failed(pred.address))

    @defer.inlineCallbacks
    def _probe_predecessor(self, pred: Peer, candidate: Peer):
        try:
            yield self._hop(pred.address, "state")
        except Exception:
            self._failed(pred.address)
            if self.predecessor is None and not self._is_suspect(candidate.address):
                self._set_predecessor(candidate)
        return None

    def _first_finger(self) -> int:
        """Fingers below this index all point at our successor."""
        if not self.successors:
            return self.config.m
        d = ids.distance(self.id, self.successors[0].id, self.config.m)
        return max(0, (d - 1).bit_length())

    def _fix_fingers(self) -> defer.Deferred | None:
        first = self._first_finger()
        for i in [i for i in self.fingers if i < first]:
            del self.fingers[i]
            self._table_dirty = True
        if first >= self.config.m:
            return None
        if not first <= self._next_finger < self.config.m:
            self._next_finger = first
        i = self._next_finger
        self._next_finger += 1
        return self._fix_finger(i)

    def _fix_finger(self, i: int) -> defer.Deferred:
        start = ids.finger_start(self.id, i, self.config.m)
        current = self.fingers.get(i)
        if current is None or self._is_suspect(current.address):
            return self._finger_lookup(i, start)
        # one call instead of a lookup: the finger is still right if nothing
        # sits between the finger's start and the finger
        d = self._call(current.address, "state")
        d.addCallbacks(self._finger_checked, self._finger_check_failed, (i, start, current), None, (i, start, current))
        return d

    def _finger_checked(self, state: NodeState, i: int, start: int, current: Peer):
        p = state.predecessor
        if p is None or p.address == self.address or not ids.in_closed_open(p.id, start, current.id):
            return current
        if self._is_suspect(p.address):
            return self._finger_lookup(i, start)
        # a node joined in between: step back to it, and check it next time
        # round (one call, where a lookup costs several)
        self.fingers[i] = p
        self._table_dirty = True
        return p

    def _finger_check_failed(self, failure: Failure, i: int, start: int, current: Peer):
        self._failed(current.address)
        return self._finger_lookup(i, start)

    @defer.inlineCallbacks
    def _finger_lookup(self, i: int, start: int):
        try:
            result = yield self.lookup(start, verify=False)
        except LookupFailed:
            return None
        found = next((p for p in result.successors if p.address != self.address), None)
        if found is None:
            self.fingers.pop(i, None)
        else:
            self.fingers[i] = found
        self._table_dirty = True
        return found

    @defer.inlineCallbacks
    def _seed_fingers(self, succ: Peer):
        """Start from the successor's fingers; fix_fingers refines them later.

        Our finger ``i`` is the first node at or after ``id + 2**i``; the
        successor's fingers (and its successors) hold nearly those nodes,
        so one call gives a table that routes in O(log N) from the start.
        """
        try:
            theirs = yield self._call(succ.address, "fingers")
        except Exception:
            yield self._build_fingers()
            return None
        m = self.config.m
        known = {p.address: p for p in (*theirs, *self.successors) if p.address != self.address}
        ordered = sorted(known.values(), key=lambda p: ids.distance(self.id, p.id, m))
        dists = [ids.distance(self.id, p.id, m) for p in ordered]
        for i in range(self._first_finger(), m):
            j = bisect.bisect_left(dists, 1 << i)
            if j < len(ordered):
                self.fingers[i] = ordered[j]
        self._table_dirty = True
        return None

    @defer.inlineCallbacks
    def _build_fingers(self):
        """Fill the finger table at join, skipping starts a found finger already covers."""
        i = self._first_finger()
        last: Peer | None = None
        while i < self.config.m and self.running:
            start = ids.finger_start(self.id, i, self.config.m)
            if last is not None and ids.in_half_open(start, self.id, last.id):
                self.fingers[i] = last
                self._table_dirty = True
            else:
                last = yield self._fix_finger(i)
            i += 1
        return None

    # ---------------------------------------------------------------- syncing

    def _sync_soon(self) -> None:
        if not self.running or (self._sync_call is not None and self._sync_call.active()):
            return
        self._sync_call = self.clock.callLater(0, self._run_sync)

    def _run_sync(self) -> None:
        self._sync_call = None
        if "sync" in self._busy:
            # the running sync may predate the change: run again after it
            self._sync_again = True
            return
        self._guarded("sync", self._sync_replicas)

    def _sync_finished(self, result: object) -> object:
        if self._sync_again:
            self._sync_again = False
            self.clock.callLater(0, self._sync_soon)
        return result

    def _sync_replicas(self) -> defer.Deferred:
        """Bring our range and its replicas to the same newest versions."""
        return self._sync_range().addBoth(self._sync_finished)

    @defer.inlineCallbacks
    def _sync_range(self):
        pred = self.predecessor
        if pred is None or not self.successors:
            return None
        lo, hi = pred.id, self.id
        if self._covers(lo):
            targets = self.successors[: max(1, self.config.replicas)]
        else:
            # We are new, or our range grew: pull from the whole successor
            # list.  After joins in quick succession our first successors
            # may be as new as we are, and the copies further down.
            targets = list(self.successors)
        results = yield defer.DeferredList([self._sync_with(p, lo, hi) for p in targets], consumeErrors=True)
        if results[0][0] and results[0][1] is not None and self.predecessor == pred and not self._covers(lo):
            self._covered_from = lo
        return None

    @defer.inlineCallbacks
    def _sync_with(self, peer: Peer, lo: int, hi: int):
        mine = self.store.in_range(lo, hi)
        try:
            result = yield self._call(peer.address, "sync", lo, hi, versions_of(mine))
        except Exception:
            self._failed(peer.address)
            return None
        if result.records:
            self.store.put_many(result.records)
        if result.wanted:
            give = [r for r in (self.store.entry(e) for e in result.wanted) if r is not None]
            if give:
                try:
                    yield self._call(peer.address, "store", tuple(give))
                except Exception:
                    self._failed(peer.address)
                    return None
        return result

    @defer.inlineCallbacks
    def _hand_over_strays(self):
        """Give records we should not hold to the nodes that should.

        We hold a key as its primary or one of ``replicas`` copies exactly
        when it falls in ``(P, us]``, P our ``replicas + 1``-th predecessor.
        Anything else is a stray: left behind by joins and crashes, perhaps
        the last copy there is.  A few state calls find P.  We keep our copy
        (a view of the ring can be stale: a leaving node may still answer for
        a range it just handed us) and offer each version once.
        """
        p = self.predecessor
        for _ in range(self.config.replicas):
            if p is None or p.address == self.address:
                return None
            try:
                state = yield self._call(p.address, "state")
            except Exception:
                return None
            p = state.predecessor
        if p is None or p.address == self.address:
            return None
        by_key: dict[int, list[Record]] = {}
        for r in self.store.records():
            if not ids.in_half_open(r.key, p.id, self.id) and (r.entry_id, r.seq) not in self._handed:
                by_key.setdefault(r.key, []).append(r)
        for key, records in list(by_key.items())[: self.STRAYS_PER_ROUND]:
            if not self.running:
                break
            try:
                result = yield self.lookup(key)
            except OverlayError:
                continue
            holders = result.successors[: self.config.replicas + 1]
            if any(h.address == self.address for h in holders):
                continue  # our view was stale: we are a holder after all
            # One digest call: the key's primary takes only what it lacks
            # (mostly nothing: a newcomer in front of us pulled it), and its
            # own syncs spread it to its replicas.
            answer = yield self._sync_with(holders[0], ids.add(key, -1, self.config.m), key)
            if answer is not None:
                self._handed.update((r.entry_id, r.seq) for r in records)
        return None

    @defer.inlineCallbacks
    def _offer_held(self):
        """After a (re)join, put what we hold outside our range back where it belongs."""
        by_key: dict[int, list[Record]] = {}
        for r in self.store.records():
            if not self.responsible_for(r.key):
                by_key.setdefault(r.key, []).append(r)
        for key, records in sorted(by_key.items()):
            if not self.running:
                break
            try:
                yield self.put(records)
            except OverlayError:
                pass
        return None

    # ---------------------------------------------------------------- lookups

    def _find_local(self, key: int) -> FindResult:
        succs = self.successors
        pred = self.predecessor
        if not succs:
            return FindResult(True, (self.peer,), self.peer, pred)
        if pred is not None and ids.in_half_open(key, pred.id, self.id):
            return FindResult(True, (self.peer, *succs), self.peer, pred)
        prev = self.id
        for i, s in enumerate(succs):
            if ids.in_half_open(key, prev, s.id):
                return FindResult(True, tuple(succs[i:]), self.peer, pred)
            prev = s.id
        return FindResult(False, tuple(self._closest_preceding(key, self.config.candidates)), self.peer, pred)

    def lookup(self, key: int, verify: bool = True, via: Hashable | None = None) -> defer.Deferred:
        """Deferred[LookupResult]: the successor of ``key`` and those after it.

        ``verify``: end by asking the successor itself (costs a hop; off for
        fingers, which only need to be close).  ``via``: start at that
        address instead of our own tables (joining).  Retries within the
        lookup timeout; fails with :class:`LookupFailed`.
        """
        return self._lookup(key, verify, via)

    @defer.inlineCallbacks
    def _lookup(self, key: int, verify: bool, via: Hashable | None):
        deadline = self.clock.seconds() + self.config.lookup_timeout
        hops = 0
        m = self.config.m
        while True:
            tried: set[Hashable] = {self.address}
            verified: set[Hashable] = set()
            pool: list[tuple[int, int, Peer]] = []
            counter = 0
            redirects = 0
            res: FindResult | None
            if via is not None:
                try:
                    res = yield self._hop(via, "find", key)
                except Exception:
                    # the caller has other addresses to try: let it
                    raise LookupFailed(f"{via} did not answer") from None
                hops += 1
                tried.add(via)
            else:
                res = self._find_local(key)
            while self.clock.seconds() < deadline:
                if res is not None and res.done:
                    peers = [p for p in res.peers if p.address == self.address or not self._is_suspect(p.address)]
                    if not peers:
                        res = None
                        continue
                    first = peers[0]
                    if (
                        not verify
                        or first.address == res.responder.address
                        or first.address == self.address
                        or first.address in verified
                    ):
                        return LookupResult(key, tuple(peers), hops)
                    try:
                        answer = yield self._hop(first.address, "find", key)
                    except Exception:
                        hops += 1
                        self._failed(first.address)
                        res = attrs.evolve(res, peers=tuple(peers[1:]))
                        continue
                    hops += 1
                    verified.add(first.address)
                    if answer.done:
                        if answer.peers and answer.peers[0].address == first.address:
                            return LookupResult(key, answer.peers, hops)
                        res = answer
                        continue
                    x = answer.predecessor
                    if (
                        x is not None
                        and redirects < 3
                        and x.address not in (first.address, self.address)
                        and not self._is_suspect(x.address)
                        and ids.in_half_open(key, res.responder.id, x.id)
                    ):
                        # a newcomer our source had not heard of yet
                        redirects += 1
                        res = FindResult(True, (x, *peers), res.responder, None)
                        continue
                    return LookupResult(key, tuple(peers), hops)
                if res is not None:
                    for p in res.peers:
                        if p.address not in tried:
                            counter += 1
                            heapq.heappush(pool, (ids.distance(p.id, key, m), counter, p))
                res = None
                nxt = None
                while pool:
                    _, _, p = heapq.heappop(pool)
                    if p.address not in tried and not self._is_suspect(p.address):
                        nxt = p
                        break
                if nxt is None:
                    break
                tried.add(nxt.address)
                try:
                    res = yield self._hop(nxt.address, "find", key)
                except Exception:
                    self._failed(nxt.address)
                    res = None
                hops += 1
            if self.clock.seconds() + self.config.rpc_timeout / 2 >= deadline:
                raise LookupFailed(f"no answer for key {key:x}")
            yield self._sleep(self.config.rpc_timeout / 2)

    # ---------------------------------------------------------------- records

    def next_seq(self, floor: int = 0) -> int:
        """A sequence number for a record this node writes: above ``floor``
        and above every one it gave before (for writers of their own records)."""
        return self._next_seq(floor)

    def _next_seq(self, floor: int = 0) -> int:
        """A sequence number above ``floor`` and our last, from the clock in microseconds."""
        seq = max(int(self.clock.seconds() * 1_000_000), self._last_seq + 1, floor + 1)
        self._last_seq = seq
        return seq

    @defer.inlineCallbacks
    def put(self, records: Record | Sequence[Record]):
        """Store records (all under one key) at the key's successor and replicas.

        Deferred[int]: how many nodes took them (up to ``replicas + 1``);
        fails with :class:`StoreFailed` when none did.
        """
        batch = (records,) if isinstance(records, Record) else tuple(records)
        if not batch:
            return 0
        key = batch[0].key
        if any(r.key != key for r in batch):
            raise ValueError("put takes records of a single key")
        if not self.running:
            raise NotRunning("the node is not running")
        result = yield self.lookup(key)
        acks = yield self._store_at(result.successors, batch, self.config.replicas + 1)
        if acks == 0:
            raise StoreFailed(f"no node took key {key:x}")
        return acks

    @defer.inlineCallbacks
    def _store_at(self, peers: Sequence[Peer], batch: tuple[Record, ...], want: int):
        queue = list(peers)
        acks = 0
        while acks < want and queue:
            now, queue = queue[: want - acks], queue[want - acks :]
            results = yield defer.DeferredList([self._store_one(p, batch) for p in now], consumeErrors=True)
            acks += sum(1 for ok, _ in results if ok)
        return acks

    def _store_one(self, peer: Peer, batch: tuple[Record, ...]) -> defer.Deferred:
        if peer.address == self.address:
            return defer.succeed(self.remote_store(batch))
        d = self._call(peer.address, "store", batch)

        def failed(f):
            self._failed(peer.address)
            return f

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def get(self, key: int, kind: str | None = None):
        """Deferred[list[Record]]: the live records under ``key``, merged.

        Asks the key's successor; when it does not answer, or cannot vouch
        for its range yet, asks the replicas too.  An empty list is a real
        miss; :class:`LookupFailed` means nobody answered.
        """
        records = yield self._fetch(key, kind)
        return merge_all(records, self.clock.seconds())

    @defer.inlineCallbacks
    def _fetch(self, key: int, kind: str | None):
        if not self.running:
            raise NotRunning("the node is not running")
        result = yield self.lookup(key)
        collected: list[Record] = []
        answered = 0
        vouched = False
        for p in result.successors[: self.config.replicas + 1]:
            if p.address == self.address:
                answer = self.remote_fetch(key, kind)
            else:
                try:
                    answer = yield self._hop(p.address, "fetch", key, kind)
                except Exception:
                    self._failed(p.address)
                    continue
            answered += 1
            collected.extend(answer.records)
            if answer.authoritative:
                vouched = True
                break
        if not answered:
            raise LookupFailed(f"no holder of key {key:x} answered")
        if not collected and not vouched:
            # Nobody who answered could vouch for the key (our view of who
            # holds it may be off for a moment after a failure): a miss here
            # is not a real miss, and saying so would break completeness.
            raise LookupFailed(f"no holder of key {key:x} could vouch for a miss yet")
        return collected

    @defer.inlineCallbacks
    def put_value(self, key: int, kind: str, value: bytes, ttl: float, entry: str = "", owner_key_id: bytes = b""):
        """Write one entry so that it replaces what the ring holds: Deferred[Record].

        Reads the entry first so the new sequence number beats the stored
        one even if another writer's clock runs ahead of ours.
        """
        current = yield self._fetch(key, kind)
        floor = max((r.seq for r in current if r.entry == entry), default=0)
        record = Record(
            key, kind, entry, self.writer, value, self.clock.seconds() + ttl, self._next_seq(floor), owner_key_id
        )
        yield self.put(record)
        return record

    @defer.inlineCallbacks
    def remove(self, key: int, kind: str, entry: str | None = None):
        """Remove an entry (or every entry of ``kind``): Deferred[bool], whether there was one.

        Writes tombstones, so replicas that missed the removal cannot bring
        the records back.
        """
        current = yield self.get(key, kind)
        gone = [r for r in current if entry is None or r.entry == entry]
        if not gone:
            return False
        yield self.put([r.tombstone(seq=self._next_seq(r.seq), writer=self.writer) for r in gone])
        return True

    # ------------------------------------------------- answering other nodes

    def remote_state(self) -> NodeState:
        return NodeState(self.peer, self.predecessor, tuple(self.successors))

    def remote_find(self, key: int) -> FindResult:
        return self._find_local(key)

    def remote_notify(self, peer: Peer) -> NodeState:
        if peer.address == self.address or peer.id == self.id:
            return self.remote_state()
        self._suspects.pop(peer.address, None)
        pred = self.predecessor
        if pred is None or ids.in_open(peer.id, pred.id, self.id):
            self._set_predecessor(peer)
            if pred is not None and pred.address != peer.address and self.running:
                # tell the old predecessor at once, rather than at its next round
                self._call(pred.address, "successor_hint", peer).addErrback(_ignore)
        elif pred.address != peer.address and self.running:
            # Someone before our predecessor takes us for its successor: our
            # predecessor may be dead.  Find out now rather than rounds later.
            self._guarded("probe_predecessor", lambda: self._probe_predecessor(pred, peer))
        if self.predecessor is not None and self.predecessor.address == peer.address:
            self._pred_heard = self.clock.seconds()
        if not self.successors:
            self._set_successors([peer])
        return self.remote_state()

    def remote_successor_hint(self, peer: Peer) -> None:
        """``peer`` is our new successor, or our successor's list changed."""
        if peer.address == self.address:
            return None
        self._suspects.pop(peer.address, None)
        if not self.successors or ids.in_open(peer.id, self.id, self.successors[0].id):
            self._set_successors([peer, *self.successors])
        elif peer.address == self.successors[0].address and self.running:
            self.clock.callLater(0, self._guarded, "stabilize", self._stabilize)
        return None

    def remote_store(self, records: Sequence[Record]) -> int:
        # The security work verifies signatures here, before anything is kept.
        return self.store.put_many(records)

    def remote_fetch(self, key: int, kind: str | None) -> FetchResult:
        lo = ids.add(key, -1, self.config.m)
        records = tuple(r for r in self.store.in_range(lo, key) if kind is None or r.kind == kind)
        return FetchResult(records, self._authoritative(key), self.peer)

    def remote_sync(self, lo: int, hi: int, versions: dict[EntryId, Version]) -> SyncResult:
        give: list[Record] = []
        mine: dict[EntryId, Version] = {}
        for r in self.store.in_range(lo, hi):
            v = mine[r.entry_id] = (r.seq, r.deleted, r.expires)
            theirs = versions.get(r.entry_id)
            if theirs is None or v > theirs:
                give.append(r)
        wanted = tuple(e for e, v in versions.items() if e not in mine or mine[e] < v)
        return SyncResult(tuple(give), wanted)

    def remote_fingers(self) -> tuple[Peer, ...]:
        return tuple(self.finger_peers())

    def remote_leave(self, peer: Peer, predecessor: Peer | None, successors: Sequence[Peer]) -> None:
        self._suspects[peer.address] = self.clock.seconds() + self.config.suspect_time
        if self.predecessor is not None and self.predecessor.address == peer.address:
            ok = predecessor is not None and predecessor.address != self.address
            self._set_predecessor(predecessor if ok else None)
        if self.successors and self.successors[0].address == peer.address:
            self._set_successors([*successors, *self.successors[1:]])
        else:
            self._set_successors(self.successors)
        for i in [i for i, p in self.fingers.items() if p.address == peer.address]:
            del self.fingers[i]
        self._table_dirty = True
        return None
