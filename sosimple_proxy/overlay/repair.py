"""Read repair: a read that meets copies of different versions repairs the stale ones.

Replicas converge through the periodic syncs anyway, but a sync runs every
few rounds; a copy that missed a write (its holder was briefly away, a
store call was lost) answers readers with the old version until then.  A
read already asks the key's successor; after it has answered, the other
holders of the key are asked in the background, and every holder that
lacks the newest version of an entry (or holds an older one) is given it,
as Dynamo and Cassandra do.  Nothing waits for this: the reader has its
answer before the repair starts.
"""

from __future__ import annotations

from typing import Hashable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from .errors import StoreRefused
from .interfaces import IPeerCalls
from .messages import EntryId, Peer
from .records import Record, merge, newer


def newest(answers: Sequence[Sequence[Record]], now: float) -> dict[EntryId, Record]:
    """The winning version of each entry across the answers (tombstones too:
    a removal must reach the copies that missed it)."""
    best: dict[EntryId, Record] = {}
    for records in answers:
        for r in records:
            if not r.expired(now):
                best[r.entry_id] = merge(best.get(r.entry_id), r)
    return best


def stale(held: Sequence[Record], best: dict[EntryId, Record]) -> list[Record]:
    """What a holder that answered ``held`` should be given."""
    mine = {r.entry_id: r for r in held}
    return [r for e, r in best.items() if e not in mine or newer(r, mine[e])]


class ReadRepair:
    """One node's read repair; :meth:`after_read` is called by the replicator."""

    def __init__(self, me: Peer, calls: IPeerCalls, clock: IReactorTime, take) -> None:
        self.me = me
        self.calls = calls
        self.clock = clock
        #: ``take(records)``: our own store's merge.  A holder that does not
        #: answer a repair is only skipped: best-effort work does not judge
        #: liveness (the maintenance rounds do).
        self.take = take
        #: repairs sent (records given to stale holders), for tests and figures
        self.repaired = 0

    def after_read(
        self,
        key: int,
        kind: str | None,
        answered: Sequence[tuple[Peer, Sequence[Record]]],
        holders: Sequence[Peer],
        fetch_local,
    ) -> defer.Deferred:
        """Ask the holders that did not answer yet, then repair every stale one."""
        return self._repair(key, kind, list(answered), holders, fetch_local)

    @defer.inlineCallbacks
    def _repair(self, key, kind, answered, holders, fetch_local):
        seen: set[Hashable] = {p.address for p, _ in answered}
        for p in holders:
            if p.address in seen:
                continue
            seen.add(p.address)
            if p.address == self.me.address:
                answered.append((p, fetch_local(key, kind).records))
                continue
            try:
                answer = yield self.calls.call(p.address, "fetch", key, kind)
            except Exception:
                continue
            answered.append((p, answer.records))
        if len(answered) < 2:
            return 0
        best = newest([records for _, records in answered], self.clock.seconds())
        given = 0
        for peer, records in answered:
            give = stale(records, best)
            if not give:
                continue
            given += len(give)
            if peer.address == self.me.address:
                try:
                    self.take(give)
                except StoreRefused:
                    pass  # our disk is full: the store said so once; the other copies serve
                continue
            try:
                yield self.calls.call(peer.address, "store", tuple(give))
            except Exception:
                pass
        self.repaired += given
        return given
