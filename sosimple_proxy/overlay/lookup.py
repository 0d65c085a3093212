"""The iterative lookup: finding ``successor(key)`` by walking the ring.

The node asking walks the ring itself, one ``find`` call per hop, each
with its own timeout.  That costs some latency against recursive routing,
but the asker sees every hop: when one times out it marks that peer
suspect, routes around it at once with the next best candidate, and no
intermediate node holds state for someone else's lookup.  A lookup ends by
asking the candidate successor itself (one more hop), so a dead successor
or a newcomer its predecessor has not yet heard of does not produce a
wrong answer.  A read makes that last step its fetch instead
(``replication.Replicator._read``): the candidate's authoritative answer
vouches for the same thing, one call fewer.
"""

from __future__ import annotations

import heapq
from typing import Any, Hashable

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sosimple_proxy.tally import LookupStats

from . import ids
from .errors import LookupFailed
from .interfaces import ILookup, IPeerCalls
from .jobs import sleep
from .messages import FindResult, Peer
from .routing import RoutingTable
from .tuning import NodeConfig


@attrs.frozen
class LookupResult:
    """The successor of a key and the nodes after it (the replica set first)."""

    key: int
    successors: tuple[Peer, ...]
    hops: int

    @property
    def responsible(self) -> Peer:
        return self.successors[0]


@implementer(ILookup)
class IterativeLookup:
    """Lookups that start from ``table`` and step through ``calls``."""

    #: how often a lookup follows a responder's predecessor to a newcomer
    REDIRECTS = 3

    def __init__(self, table: RoutingTable, calls: IPeerCalls, clock: IReactorTime, config: NodeConfig) -> None:
        self.table = table
        self.calls = calls
        self.clock = clock
        self.config = config
        #: hops, seconds and failures, read by the metrics collector at scrape time
        self.stats = LookupStats()

    def lookup(self, key: int, verify: bool = True, via: Hashable | None = None) -> defer.Deferred:
        """:meth:`walk`, counted in :attr:`stats`."""
        d = self.walk(key, verify, via)
        d.addCallbacks(self._counted, self._failed, (self.clock.seconds(),))
        return d

    def _counted(self, result: LookupResult, started: float) -> LookupResult:
        self.stats.hops.observe(result.hops)
        self.stats.seconds.observe(self.clock.seconds() - started)
        return result

    def _failed(self, failure: Any) -> Any:
        self.stats.failures += 1
        return failure

    @defer.inlineCallbacks
    def walk(self, key: int, verify: bool = True, via: Hashable | None = None):
        """Deferred[LookupResult]: the successor of ``key`` and those after it.

        ``verify``: end by asking the successor itself (costs a hop; off for
        fingers, which only need to be close).  ``via``: start at that
        address instead of our own tables (joining).  Retries within the
        lookup timeout; fails with :class:`.errors.LookupFailed`.
        """
        table, suspects, hop = self.table, self.table.suspects, self.calls.hop
        me = table.me.address
        deadline = self.clock.seconds() + self.config.lookup_timeout
        hops = 0
        m = self.config.m
        while True:
            tried: set[Hashable] = {me}
            verified: set[Hashable] = set()
            pool: list[tuple[int, int, Peer]] = []
            counter = 0
            redirects = 0
            res: FindResult | None
            if via is not None:
                try:
                    res = yield hop(via, "find", key)
                except Exception:
                    # the caller has other addresses to try: let it
                    raise LookupFailed(f"{via} did not answer") from None
                hops += 1
                tried.add(via)
            else:
                res = table.find(key, self.config.candidates)
            while self.clock.seconds() < deadline:
                if res is not None and res.done:
                    peers = [p for p in res.peers if p.address == me or p.address not in suspects]
                    if not peers:
                        res = None
                        continue
                    first = peers[0]
                    if (
                        not verify
                        or first.address == res.responder.address
                        or first.address == me
                        or first.address in verified
                    ):
                        return LookupResult(key, tuple(peers), hops)
                    try:
                        answer = yield hop(first.address, "find", key)
                    except Exception:
                        hops += 1
                        table.failed(first.address)
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
                        and redirects < self.REDIRECTS
                        and x.address not in (first.address, me)
                        and x.address not in suspects
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
                    if p.address not in tried and p.address not in suspects:
                        nxt = p
                        break
                if nxt is None:
                    break
                tried.add(nxt.address)
                try:
                    res = yield hop(nxt.address, "find", key)
                except Exception:
                    table.failed(nxt.address)
                    res = None
                hops += 1
            if self.clock.seconds() + self.config.rpc_timeout / 2 >= deadline:
                raise LookupFailed(f"no answer for key {key:x}")
            yield sleep(self.clock, self.config.rpc_timeout / 2)
