"""Watching a key: the nodes holding it push each change to the watchers.

Presence and the contact cache must hear of a change of a key's records
(a registration added or removed anywhere in the ring) within a second or
two, without polling the ring.  ``watch(key, callback)`` asks the key's
successor and its replicas (the nodes every write reaches) to push the
key's records to us whenever their store takes a newer version; they keep
the watch for ``ttl`` seconds.

The watcher renews every stabilisation round: it looks the key up again
and re-registers at the replica set it finds, and each registration
answers with the records held, so a change made while the responsible
node was failing, or moving to a newcomer (failure, join), is delivered
at the latest one round later.  Every holder pushes; the watcher merges
what comes in (the records' own merge rules) and calls back only when the
live set changed, so duplicates cost nothing but bytes.  Expiry is a
change too: the watcher calls back when the first live record expires.

Both halves are on every node (:class:`Watches`), because a node both
holds keys others watch and watches keys for its proxy.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Interface

from . import ids, wire
from .calls import ignore
from .interfaces import ILookup, IPeerCalls
from .jobs import Jobs
from .messages import EntryId, Peer
from .records import Record, merge
from .routing import RoutingTable
from .store import IRecordStore
from .tuning import NodeConfig

log = Logger()

#: what a watcher is told: the key and its live records
Callback = Callable[[int, list[Record]], Any]


class IWatchRPC(Interface):
    """The two calls of watching (next to :class:`.interfaces.IOverlayRPC`)."""

    def watch(address: Hashable, key: int, watcher: Peer, ttl: float):
        """Deferred[tuple[Record, ...]]: keep pushing ``key`` to ``watcher``
        for ``ttl`` seconds; the answer is what the callee holds now
        (tombstones included)."""

    def watch_notify(address: Hashable, key: int, records: Sequence[Record]):
        """Deferred[None]: the records the callee holds under ``key`` changed."""


class IWatchPeer(Interface):
    """What a node answers for watching."""

    def remote_watch(key: int, watcher: Peer, ttl: float):
        """tuple[Record, ...]."""

    def remote_watch_notify(key: int, records: Sequence[Record]):
        """None."""


# -- the wire (the AMP bodies of Watch and WatchNotify)


def encode_watch(key: int, watcher: Peer, ttl: float) -> bytes:
    return wire._Writer().int(key).peer(watcher).float(ttl).bytes()


def decode_watch(data: bytes) -> tuple[int, Peer, float]:
    r = wire._Reader(data)
    key, watcher, ttl = r.int(), r.some_peer(), r.float()
    r.end()
    return key, watcher, ttl


def encode_watch_notify(key: int, records: Sequence[Record]) -> bytes:
    return wire._Writer().int(key).records(records).bytes()


def decode_watch_notify(data: bytes) -> tuple[int, tuple[Record, ...]]:
    r = wire._Reader(data)
    key, records = r.int(), r.records()
    r.end()
    return key, records


class Watch:
    """One watcher's interest in a key (cancel it to stop)."""

    def __init__(self, owner: Watches, key: int, callback: Callback) -> None:
        self.owner = owner
        self.key = key
        self.callback = callback

    def cancel(self) -> None:
        self.owner.unwatch(self)


class _Watched:
    """What a watcher knows of one key: every entry's newest version seen."""

    def __init__(self) -> None:
        self.callbacks: list[Watch] = []
        self.known: dict[EntryId, Record] = {}
        self.delivered: frozenset[tuple[EntryId, int]] | None = None
        self.holders: tuple[Hashable, ...] = ()
        self.expiry: IDelayedCall | None = None
        self.renewing = False


class Watches:
    """Both sides of watching on one node.

    ``store.listeners`` tells the holding side of each record the store
    took; ``calls`` reaches other nodes (``watch``, ``watch_notify``).
    """

    #: how many rounds a holder keeps a watch the watcher does not renew
    TTL_ROUNDS = 3
    #: at most this many keys watched by others per node (beyond: refused)
    MAX_HELD = 100_000

    def __init__(
        self,
        table: RoutingTable,
        calls: IPeerCalls,
        lookups: ILookup,
        store: IRecordStore,
        jobs: Jobs,
        clock: IReactorTime,
        config: NodeConfig,
    ) -> None:
        self.me = table.me
        self.table = table
        self.calls = calls
        self.lookups = lookups
        self.store = store
        self.jobs = jobs
        self.clock = clock
        self.config = config
        # holding side: key -> watcher address -> (watcher, watched until)
        self.held: dict[int, dict[Hashable, tuple[Peer, float]]] = {}
        self._dirty: set[int] = set()
        self._push_call: IDelayedCall | None = None
        self._sweep_call: IDelayedCall | None = None
        # watching side
        self.watched: dict[int, _Watched] = {}
        self._round_call: IDelayedCall | None = None
        #: pushes sent and received (for tests and the admin page)
        self.pushes_sent = 0
        self.pushes_received = 0
        listeners = getattr(store, "listeners", None)
        if listeners is not None:
            listeners.append(self.stored)

    @property
    def ttl(self) -> float:
        return self.TTL_ROUNDS * self.config.stabilize_interval

    # ------------------------------------------------------ the holding side

    def serve(self, key: int, watcher: Peer, ttl: float) -> tuple[Record, ...]:
        """A watcher (re)registers: keep pushing ``key`` to it; what we hold."""
        slot = self.held.get(key)
        if slot is None:
            if len(self.held) >= self.MAX_HELD:
                self._expire_held()
                if len(self.held) >= self.MAX_HELD:
                    raise ValueError("too many watched keys")
            slot = self.held[key] = {}
        slot[watcher.address] = (watcher, self.clock.seconds() + max(0.0, min(ttl, 10 * self.ttl)))
        if self._sweep_call is None or not self._sweep_call.active():
            self._sweep_call = self.clock.callLater(self.ttl, self._sweep)
        return self._holding(key)

    def _sweep(self) -> None:
        self._sweep_call = None
        self._expire_held()
        if self.held and self.jobs.running:
            self._sweep_call = self.clock.callLater(self.ttl, self._sweep)

    def _holding(self, key: int) -> tuple[Record, ...]:
        lo = ids.add(key, -1, self.config.m)
        return tuple(self.store.in_range(lo, key))

    def stored(self, record: Record) -> None:
        """The store took a newer version of an entry: push its key soon.

        Pushes of one key are coalesced into one per reactor turn (a
        registration's entries arrive as one batch)."""
        if record.key not in self.held:
            return
        self._dirty.add(record.key)
        if self._push_call is None or not self._push_call.active():
            self._push_call = self.clock.callLater(0, self._push)

    def _push(self) -> None:
        self._push_call = None
        dirty, self._dirty = self._dirty, set()
        now = self.clock.seconds()
        for key in dirty:
            slot = self.held.get(key)
            if not slot:
                continue
            records = self._holding(key)
            for address, (watcher, until) in list(slot.items()):
                if until <= now:
                    del slot[address]
                    continue
                self.pushes_sent += 1
                if address == self.me.address:
                    self.notified(key, records)
                else:
                    self.calls.call(address, "watch_notify", key, records).addErrback(ignore)
            if not slot:
                del self.held[key]

    def _expire_held(self) -> None:
        now = self.clock.seconds()
        for key in list(self.held):
            slot = self.held[key]
            for address in [a for a, (_, until) in slot.items() if until <= now]:
                del slot[address]
            if not slot:
                del self.held[key]

    # ----------------------------------------------------- the watching side

    def watch(self, key: int, callback: Callback) -> Watch:
        """Call ``callback(key, live records)`` on every change of ``key``.

        The first call comes once the holders answered (with what they
        hold, even if nothing); then on each change.  Cancel the returned
        :class:`Watch` to stop."""
        handle = Watch(self, key, callback)
        state = self.watched.get(key)
        if state is None:
            state = self.watched[key] = _Watched()
            state.callbacks.append(handle)
            self._renew(key)
        else:
            state.callbacks.append(handle)
            if state.delivered is not None:
                self._call(handle, self._live(state))
        self._schedule_round()
        return handle

    def unwatch(self, handle: Watch) -> None:
        state = self.watched.get(handle.key)
        if state is None:
            return
        if handle in state.callbacks:
            state.callbacks.remove(handle)
        if not state.callbacks:
            if state.expiry is not None and state.expiry.active():
                state.expiry.cancel()
            del self.watched[handle.key]
            # the holders forget us after their ttl

    def notified(self, key: int, records: Sequence[Record]) -> None:
        """A holder pushed ``key``'s records."""
        self.pushes_received += 1
        state = self.watched.get(key)
        if state is not None:
            self._take(key, state, records)

    def each_round(self) -> None:
        """Renew every watch: re-register at the key's replica set as it is now."""
        for key in list(self.watched):
            self._renew(key)

    def stop(self) -> None:
        if self._round_call is not None and self._round_call.active():
            self._round_call.cancel()
        self._round_call = None
        if self._push_call is not None and self._push_call.active():
            self._push_call.cancel()
        self._push_call = None
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self._sweep_call = None
        for state in self.watched.values():
            if state.expiry is not None and state.expiry.active():
                state.expiry.cancel()

    def _schedule_round(self) -> None:
        if self._round_call is None or not self._round_call.active():
            self._round_call = self.clock.callLater(self.config.stabilize_interval, self._round)

    def _round(self) -> None:
        self._round_call = None
        if not self.jobs.running or not self.watched:
            return
        self.each_round()
        self._schedule_round()

    def _renew(self, key: int) -> None:
        state = self.watched.get(key)
        if state is None or state.renewing or not self.jobs.running:
            return
        state.renewing = True
        d = self._register(key, state)

        def done(result: object) -> None:
            state.renewing = False

        d.addBoth(done)

    @defer.inlineCallbacks
    def _register(self, key: int, state: _Watched):
        try:
            result = yield self.lookups.lookup(key)
        except Exception as e:
            log.debug("overlay watch {key:x}: lookup failed: {e}", key=key, e=e)
            return None
        holders = result.successors[: self.config.replicas + 1]
        calls = []
        for p in holders:
            if p.address == self.me.address:
                calls.append(defer.succeed(self.serve(key, self.me, self.ttl)))
            else:
                calls.append(self.calls.call(p.address, "watch", key, self.me, self.ttl))
        answers = yield defer.DeferredList(calls, consumeErrors=True)
        got: list[Record] = []
        for (ok, records), p in zip(answers, holders):
            if ok:
                got.extend(records)
            else:
                self.table.failed(p.address)
        if any(ok for ok, _ in answers):
            if self.watched.get(key) is state:
                state.holders = tuple(p.address for p in holders)
                self._take(key, state, got, always=state.delivered is None)
        return None

    def _take(self, key: int, state: _Watched, records: Sequence[Record], always: bool = False) -> None:
        for r in records:
            if r.key != key:
                continue
            current = state.known.get(r.entry_id)
            best = merge(current, r)
            if best is not current:
                state.known[r.entry_id] = best
        self._deliver(key, state, always)

    def _live(self, state: _Watched) -> list[Record]:
        now = self.clock.seconds()
        for eid in [e for e, r in state.known.items() if r.expired(now)]:
            del state.known[eid]
        return sorted((r for r in state.known.values() if r.alive(now)), key=lambda r: (r.kind, r.entry))

    def _deliver(self, key: int, state: _Watched, always: bool = False) -> None:
        live = self._live(state)
        signature = frozenset((r.entry_id, r.seq) for r in live)
        if state.expiry is not None and state.expiry.active():
            state.expiry.cancel()
        state.expiry = None
        if live:
            first = min(r.expires for r in live)
            delay = max(0.0, first - self.clock.seconds()) + 0.001
            state.expiry = self.clock.callLater(delay, self._expired, key, state)
        if not always and signature == state.delivered:
            return
        state.delivered = signature
        for handle in list(state.callbacks):
            self._call(handle, live)

    def _expired(self, key: int, state: _Watched) -> None:
        state.expiry = None
        if self.watched.get(key) is state:
            self._deliver(key, state)

    @staticmethod
    def _call(handle: Watch, live: list[Record]) -> None:
        try:
            handle.callback(handle.key, list(live))
        except Exception:
            log.failure("overlay watch {key:x}: callback failed", key=handle.key)
