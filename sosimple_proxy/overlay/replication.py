"""Replication: records at a key's successor and its next ``replicas`` nodes.

Records are written by the client to the key's successor and the next
``replicas`` nodes, as the paper does with REGISTER, and repaired by the
ring afterwards: each node regularly syncs its own range with its first
``replicas`` successors (both ways, so a newcomer or a node whose range grew
pulls what it lacks), and hands records it should not hold (strays) to the
nodes that should.  A node answers a read *authoritatively* only for the
part of its range it has synced since it last grew; otherwise a reader
also asks the replicas and merges.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from . import ids, quorum
from .errors import LookupFailed, NotRunning, NotVouched, OverlayError, StoreRefused
from .interfaces import ILookup, IPeerCalls
from .jobs import Jobs, sleep
from .lookup import LookupResult
from .messages import EntryId, FetchResult, Peer, SyncResult, Version, versions_of
from .records import Record, merge_all
from .repair import ReadRepair
from .routing import RoutingTable
from .store import IRecordStore
from .tuning import NodeConfig


class Replicator:
    """One node's side of the replicated store: writes, reads, syncs, repair."""

    #: keys of stray records handed over per sweep
    STRAYS_PER_ROUND = 50
    #: a read nobody could vouch for is asked again this many times, one
    #: RPC timeout apart (a ring settling syncs its ranges within a round)
    UNVOUCHED_RETRIES = 3

    def __init__(
        self,
        writer: str,
        table: RoutingTable,
        calls: IPeerCalls,
        lookups: ILookup,
        store: IRecordStore,
        jobs: Jobs,
        clock: IReactorTime,
        config: NodeConfig,
        guard: Any = None,
    ) -> None:
        self.me = table.me
        #: signs our writes and checks what comes in (:class:`.recordguard.RecordGuard`); None: neither
        self.guard = guard
        self.writer = writer
        self.table = table
        self.calls = calls
        self.lookups = lookups
        self.store = store
        self.jobs = jobs
        self.clock = clock
        self.config = config
        #: we have synced every key in ``(_covered_from, id]``; None: nothing yet
        self._covered_from: int | None = None
        self._sync_call: IDelayedCall | None = None
        self._sync_again = False
        self._handed: set[tuple[EntryId, int]] = set()
        self._last_seq = 0
        #: records a replica sync pulled in or pushed out (the metrics' repairs)
        self.repairs = 0
        #: read repair (overlay/repair.py), when ``config.read_repair``
        self.repair: ReadRepair | None = (
            ReadRepair(self.me, calls, clock, self.take) if config.read_repair else None
        )

    # --------------------------------------------------------------- coverage

    def cover_whole_ring(self) -> None:
        """Alone on the ring: every key is ours, and we hold all there is."""
        self._covered_from = self.me.id

    def range_changed(self, predecessor: Peer | None) -> None:
        """Our range is now ``(predecessor, us]``: vouch only for what we synced."""
        if predecessor is None:
            return
        if self._covers(predecessor.id):
            # the range shrank (a newcomer): we only vouch for what we still own
            self._covered_from = predecessor.id
        else:
            # our range grew past what we have synced
            self.sync_soon()

    def _covers(self, lo: int) -> bool:
        """Whether we have synced every key in ``(lo, id]``."""
        cf = self._covered_from
        return cf is not None and (lo == cf or ids.in_open(lo, cf, self.me.id))

    def authoritative(self, key: int) -> bool:
        """Whether a miss of ``key`` here is a real miss: ours, and synced since our range grew."""
        if not self.table.responsible_for(key):
            return False
        if getattr(self.store, "refusing", None):
            return False  # a full disk refused records that are ours: a miss here proves nothing
        cf = self._covered_from
        return cf is not None and ids.in_half_open(key, cf, self.me.id)

    def counts(self) -> tuple[int, int]:
        """Live records held: ``(primary, replica)``; primary is our own range."""
        total = self.store.count()
        if not self.table.successors:
            return total, 0
        pred = self.table.predecessor
        if pred is None:
            return 0, total
        primary = self.store.count(pred.id, self.me.id)
        return primary, total - primary

    # ----------------------------------------------------------------- writes

    def next_seq(self, floor: int = 0) -> int:
        """A sequence number for a record this node writes: above ``floor`` and
        every one it gave before, from the clock in microseconds."""
        seq = max(int(self.clock.seconds() * 1_000_000), self._last_seq + 1, floor + 1)
        self._last_seq = seq
        return seq

    def put(self, records: Record | Sequence[Record]) -> defer.Deferred:
        """Store records (all under one key) at the key's successor and replicas.

        Deferred[int]: how many nodes took them (up to ``replicas + 1``);
        fails with :class:`.quorum.QuorumFailed` (a :class:`.errors.StoreFailed`)
        when fewer than the write quorum did.
        """
        batch = (records,) if isinstance(records, Record) else tuple(records)
        if not batch:
            return defer.succeed(0)
        key = batch[0].key
        if any(r.key != key for r in batch):
            return defer.fail(ValueError("put takes records of a single key"))
        return self._put(batch, None)

    @defer.inlineCallbacks
    def _put(self, batch: tuple[Record, ...], result: LookupResult | None):
        """:meth:`put`, at the holders ``result`` names when a read just found them."""
        key = batch[0].key
        if not self.jobs.running:
            raise NotRunning("the node is not running")
        if self.guard is not None:
            batch = yield self.guard.prepare(batch)
        if result is None:
            result = yield self.lookups.lookup(key)
        missed: list[Peer] = []
        acks = yield self._store_at(result.successors, batch, self.config.replicas + 1, missed)
        holders = [p.address for p in result.successors]
        if acks < quorum.needed(self.config.write_quorum, self.config.replicas, holders) and missed and self.jobs.running:
            # one more try of those that did not answer (a busy node, a lost
            # message) before the write counts as not done
            acks += yield self._store_at(missed, batch, len(missed))
        # Done only once a quorum of copies holds it (overlay/quorum.py).
        quorum.check(acks, self.config.write_quorum, self.config.replicas, holders, key)
        return acks

    @defer.inlineCallbacks
    def _store_at(self, peers: Sequence[Peer], batch: tuple[Record, ...], want: int, missed: list[Peer] | None = None):
        queue = list(peers)
        acks = 0
        while acks < want and queue:
            now, queue = queue[: want - acks], queue[want - acks :]
            results = yield defer.DeferredList([self._store_one(p, batch) for p in now], consumeErrors=True)
            acks += sum(1 for ok, _ in results if ok)
            if missed is not None:
                missed.extend(p for p, (ok, _) in zip(now, results) if not ok)
        return acks

    def _store_one(self, peer: Peer, batch: tuple[Record, ...]) -> defer.Deferred:
        if peer.address == self.me.address:
            # our own store may refuse (a full disk): a failed copy, not an exception here
            return defer.maybeDeferred(self.take, batch)
        d = self.calls.call(peer.address, "store", batch)

        def failed(f):
            if not f.check(StoreRefused):  # a full node is alive: the next successor takes the copy
                self.table.failed(peer.address)
            return f

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def put_value(
        self, key: int, kind: str, value: bytes, ttl: float, entry: str = "", owner_key_id: bytes = b"", name: str = ""
    ):
        """Write one entry so that it replaces what the ring holds: Deferred[Record].

        Reads the entry first so the new sequence number beats the stored
        one even if another writer's clock runs ahead of ours.
        """
        # The read finds the holders too: the write goes to them without a
        # second lookup, and skips read repair (the write itself brings
        # every holder to the newest version of the entry).
        current, result = yield self._read(key, kind, repair=False)
        floor = max((r.seq for r in current if r.entry == entry), default=0)
        record = Record(
            key, kind, entry, self.writer, value, self.clock.seconds() + ttl, self.next_seq(floor), owner_key_id, name=name
        )
        yield self._put((record,), result)
        return record

    @defer.inlineCallbacks
    def remove(self, key: int, kind: str, entry: str | None = None):
        """Remove an entry (or every entry of ``kind``): Deferred[bool], whether there was one.

        Writes tombstones, so replicas that missed the removal cannot bring
        the records back.
        """
        found, result = yield self._read(key, kind, repair=False)
        current = merge_all(found, self.clock.seconds())
        gone = [r for r in current if entry is None or r.entry == entry]
        if not gone:
            return False
        yield self._put(tuple(r.tombstone(seq=self.next_seq(r.seq), writer=self.writer) for r in gone), result)
        return True

    # ------------------------------------------------------------------ reads

    @defer.inlineCallbacks
    def get(self, key: int, kind: str | None = None):
        """Deferred[list[Record]]: the live records under ``key``, merged.

        Asks the key's successor; when it does not answer, or cannot vouch
        for its range yet, asks the replicas too.  An empty list is a real
        miss; :class:`.errors.LookupFailed` means nobody answered.
        """
        records = yield self._fetch(key, kind)
        return merge_all(records, self.clock.seconds())

    @defer.inlineCallbacks
    def _fetch(self, key: int, kind: str | None):
        records, _ = yield self._read(key, kind)
        return records

    @defer.inlineCallbacks
    def _read(self, key: int, kind: str | None, repair: bool = True):
        """Deferred[(records, LookupResult)]: what the holders of ``key`` hold, and who they are.

        A miss nobody could vouch for (holders that joined or grew their
        range a moment ago and have not synced it) is asked again a few
        times, an RPC timeout apart, before it fails: a write right after a
        ring formed, or a lookup during churn, then waits for the sync
        instead of failing or calling a present key absent.
        """
        for _ in range(self.UNVOUCHED_RETRIES):
            try:
                return (yield self._read_once(key, kind, repair))
            except NotVouched:
                yield sleep(self.clock, self.config.rpc_timeout)
                if not self.jobs.running:
                    raise NotRunning("the node is not running") from None
        return (yield self._read_once(key, kind, repair))

    @defer.inlineCallbacks
    def _read_once(self, key: int, kind: str | None, repair: bool = True):
        """One round of :meth:`_read`.

        The lookup's last step (asking the candidate successor whether the
        key is in its range) and the read are one call: the lookup runs
        unverified, and the candidate's *authoritative* fetch answer says
        the same as the verifying ``find`` would (the key is in its range,
        and it has synced that range).  Anything else (no answer, not
        authoritative, a successor list too short to name every holder)
        falls back to the verified lookup, as before.
        """
        if not self.jobs.running:
            raise NotRunning("the node is not running")
        want = self.config.replicas + 1
        first_answer: FetchResult | None = None
        result = yield self.lookups.lookup(key, verify=False)
        first = result.successors[0]
        if first.address == self.me.address:
            pass  # our own tables say we hold it: as verified as a lookup gets
        elif len(_distinct(result.successors)) < want:
            result = yield self.lookups.lookup(key)  # a list cut short: the successor's own names them all
        else:
            try:
                first_answer = yield self.calls.hop(first.address, "fetch", key, kind)
            except Exception:
                self.table.failed(first.address)
            if first_answer is None or not first_answer.authoritative:
                # its answer stays good as that holder's (used if the verified
                # lookup names it), but only the verified lookup says who holds the key
                result = yield self.lookups.lookup(key)
        collected: list[Record] = []
        answered = 0
        vouched = False
        holders = result.successors[:want]
        answers: list[tuple[Peer, tuple[Record, ...]]] = []
        reads = quorum.reads(self.config.write_quorum, self.config.replicas)
        for p in holders:
            if p.address == self.me.address:
                answer = self.answer_fetch(key, kind)
            elif first_answer is not None and p.address == first.address:
                answer = first_answer
            else:
                try:
                    answer = yield self.calls.hop(p.address, "fetch", key, kind)
                except Exception:
                    self.table.failed(p.address)
                    continue
            answered += 1
            answers.append((p, answer.records))
            collected.extend(answer.records)
            vouched = vouched or answer.authoritative
            # enough holders to meet every write a quorum took (quorum.py)
            if vouched and answered >= reads:
                break
        if repair and self.repair is not None and answers and self.jobs.running:
            # in the background: the reader does not wait (overlay/repair.py)
            self.repair.after_read(key, kind, answers, holders, self.answer_fetch).addErrback(
                self.jobs.log_failure, "read repair"
            )
        if not answered:
            raise LookupFailed(f"no holder of key {key:x} answered")
        if self.guard is not None and collected:
            collected = yield self.guard.accept(collected, "fetch")
        if not collected and not vouched:
            # Nobody who answered could vouch for the key (our view of who
            # holds it may be off for a moment after a failure): a miss here
            # is not a real miss, and saying so would break completeness.
            raise NotVouched(f"no holder of key {key:x} could vouch for a miss yet")
        return collected, result

    # ------------------------------------------------- answering other nodes

    def take(self, records: Sequence[Record], origin: str = "store") -> int:
        """Merge records another node (or our own write) hands us: how many were new."""
        if self.guard is None:
            return self._put_many(records)
        decided: list = []
        d = self.guard.accept(records, origin).addCallback(self._put_many)
        d.addBoth(decided.append)
        if decided:
            if isinstance(decided[0], Failure):
                decided[0].raiseException()
            return decided[0]
        # The check reads the ring (a domain's record, a user's key): answer
        # now, not after the caller's call timed out; what passes is kept later.
        d.addErrback(self.jobs.log_failure, "checking records")
        return 0

    def _put_many(self, records: Sequence[Record]) -> int:
        try:
            return self.store.put_many(records)
        except StoreRefused:
            # Our store refused a record (a full disk): we lack it, and a
            # later write that fits (a smaller record, a page freed) does not
            # bring it back.  So we vouch for no miss in our range until a
            # sync with our replicas has pulled what we lack (_sync_range
            # covers the range again only when its take succeeded).
            self._covered_from = None
            raise

    def answer_fetch(self, key: int, kind: str | None) -> FetchResult:
        lo = ids.add(key, -1, self.config.m)
        records = tuple(r for r in self.store.in_range(lo, key) if kind is None or r.kind == kind)
        return FetchResult(records, self.authoritative(key), self.me)

    def answer_sync(self, lo: int, hi: int, versions: dict[EntryId, Version]) -> SyncResult:
        give: list[Record] = []
        mine: dict[EntryId, Version] = {}
        for r in self.store.in_range(lo, hi):
            v = mine[r.entry_id] = (r.seq, r.deleted, r.expires)
            theirs = versions.get(r.entry_id)
            if theirs is None or v > theirs:
                give.append(r)
        wanted = tuple(e for e, v in versions.items() if e not in mine or mine[e] < v)
        return SyncResult(tuple(give), wanted)

    # ---------------------------------------------------------------- syncing

    def each_round(self, rounds: int) -> None:
        """The periodic part of repair, run from the maintenance round."""
        if rounds % self.config.sync_every == 0:
            self.sync_soon()
        if rounds % (4 * self.config.sync_every) == 0:
            self.store.purge()
        if rounds % (2 * self.config.sync_every) == 0:
            self.jobs.guarded("strays", self._hand_over_strays)

    def sync_soon(self) -> None:
        """Sync our range with its replicas as soon as the current sync (if any) is done."""
        if not self.jobs.running or (self._sync_call is not None and self._sync_call.active()):
            return
        self._sync_call = self.clock.callLater(0, self._run_sync)

    def stop(self) -> None:
        if self._sync_call is not None and self._sync_call.active():
            self._sync_call.cancel()
        self._sync_call = None

    def _run_sync(self) -> None:
        self._sync_call = None
        if self.jobs.busy("sync"):
            # the running sync may predate the change: run again after it
            self._sync_again = True
            return
        self.jobs.guarded("sync", self._sync_replicas)

    def _sync_replicas(self) -> defer.Deferred:
        """Bring our range and its replicas to the same newest versions."""
        return self._sync_range().addBoth(self._sync_finished)

    def _sync_finished(self, result: object) -> object:
        if self._sync_again:
            self._sync_again = False
            self.clock.callLater(0, self.sync_soon)
        return result

    @defer.inlineCallbacks
    def _sync_range(self):
        pred = self.table.predecessor
        if pred is None or not self.table.successors:
            return None
        lo, hi = pred.id, self.me.id
        if self._covers(lo):
            targets = self.table.successors[: max(1, self.config.replicas)]
        else:
            # We are new, or our range grew: pull from the whole successor
            # list.  After joins in quick succession our first successors
            # may be as new as we are, and the copies further down.
            targets = list(self.table.successors)
        results = yield defer.DeferredList([self._sync_with(p, lo, hi) for p in targets], consumeErrors=True)
        if results[0][0] and results[0][1] is not None and self.table.predecessor == pred and not self._covers(lo):
            self._covered_from = lo
        return None

    @defer.inlineCallbacks
    def _sync_with(self, peer: Peer, lo: int, hi: int):
        mine = self.store.in_range(lo, hi)
        try:
            result = yield self.calls.call(peer.address, "sync", lo, hi, versions_of(mine))
        except Exception:
            self.table.failed(peer.address)
            return None
        if result.records:
            yield self.take(result.records, "sync")
            self.repairs += len(result.records)
        if result.wanted:
            give = [r for r in (self.store.entry(e) for e in result.wanted) if r is not None]
            if give:
                self.repairs += len(give)
                try:
                    yield self.calls.call(peer.address, "store", tuple(give))
                except StoreRefused:
                    # its disk is full: it answered, so it is alive and stays
                    # in our lists (evicting it made the ring flap around it);
                    # what we pulled from it still counts
                    return result
                except Exception:
                    self.table.failed(peer.address)
                    return None
        return result

    # ----------------------------------------------------------------- strays

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
        me = self.me
        p = self.table.predecessor
        for _ in range(self.config.replicas):
            if p is None or p.address == me.address:
                return None
            try:
                state = yield self.calls.call(p.address, "state")
            except Exception:
                return None
            p = state.predecessor
        if p is None or p.address == me.address:
            return None
        by_key: dict[int, list[Record]] = {}
        for r in self.store.records():
            if not ids.in_half_open(r.key, p.id, me.id) and (r.entry_id, r.seq) not in self._handed:
                by_key.setdefault(r.key, []).append(r)
        for key, records in list(by_key.items())[: self.STRAYS_PER_ROUND]:
            if not self.jobs.running:
                break
            try:
                result = yield self.lookups.lookup(key)
            except OverlayError:
                continue
            holders = result.successors[: self.config.replicas + 1]
            if any(h.address == me.address for h in holders):
                continue  # our view was stale: we are a holder after all
            # One digest call: the key's primary takes only what it lacks
            # (mostly nothing: a newcomer in front of us pulled it), and its
            # own syncs spread it to its replicas.
            answer = yield self._sync_with(holders[0], ids.add(key, -1, self.config.m), key)
            if answer is not None:
                self._handed.update((r.entry_id, r.seq) for r in records)
        return None

    @defer.inlineCallbacks
    def offer_held(self):
        """After a (re)join, put what we hold outside our range back where it belongs."""
        by_key: dict[int, list[Record]] = {}
        for r in self.store.records():
            if not self.table.responsible_for(r.key):
                by_key.setdefault(r.key, []).append(r)
        for key, records in sorted(by_key.items()):
            if not self.jobs.running:
                break
            try:
                yield self.put(records)
            except OverlayError:
                pass
        return None

    def own_range(self) -> list[Record]:
        """What we hold of our own range, to hand over when leaving."""
        pred = self.table.predecessor
        if pred is not None:
            return self.store.in_range(pred.id, self.me.id)
        return list(self.store.records())


def _distinct(peers: Sequence[Peer]) -> list[Peer]:
    """``peers`` without repeats (a small ring's successor list wraps round)."""
    seen: set[Any] = set()
    return [p for p in peers if not (p.address in seen or seen.add(p.address))]
