"""Rejoin: a ring split by a partition becomes one ring again, without an operator.

During a partition each side routes around the other (its members fail
calls, become suspects and drop out of the tables) and stabilizes into a
ring of its own.  Plain Chord never looks back: once healed, the network
would carry two rings side by side for ever.  So, as Chord's ring merging
and RELOAD's rejoin do, a node remembers the members it *lost* (peers that
failed calls and vanished from its tables) and its bootstrap list, and keeps
probing them, a few a round, each with a backoff that doubles up to
:data:`MAX_BACKOFF` rounds.

A probe is a lookup of our own successor started *at the lost member*: in
its ring, if it is another one.  When that ring has a node closer to us
than our successor, the two rings are apart: we take it (and those after
it) into our successor list once it answers our notify (so it takes us as
predecessor).
Stabilization spreads the change to the neighbours on both sides (each
walks back to a closer predecessor it is told of), and the replica syncs
that follow a range change merge the records, the newest version of each
entry winning.  A lost member whose ring gives us our own successor is
back in ours and forgotten; the bootstrap list never is.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import attrs
from twisted.internet import defer

from . import ids
from .interfaces import ILookup, IPeerCalls
from .jobs import Jobs
from .messages import Peer
from .routing import RoutingTable
from .tuning import NodeConfig

#: the longest wait between two probes of one lost member, in rounds
MAX_BACKOFF = 12
#: lost members remembered (the oldest forgotten first)
MAX_LOST = 64
#: probes started per maintenance round
PROBES_PER_ROUND = 2


@attrs.define
class Lost:
    address: Hashable
    fails: int = 0
    due: int = 0
    bootstrap: bool = False


class Rejoin:
    """One node's memory of lost members, and the probes that merge rings."""

    def __init__(self, table: RoutingTable, calls: IPeerCalls, lookups: ILookup, jobs: Jobs, config: NodeConfig) -> None:
        self.me = table.me
        self.table = table
        self.calls = calls
        self.lookups = lookups
        self.jobs = jobs
        self.config = config
        self.rounds = 0
        self._seen: dict[Hashable, Peer] = {}
        self._lost: dict[Hashable, Lost] = {}
        #: times a probe found another ring and took a closer successor from it
        self.merges = 0

    def remember_bootstrap(self, addresses: Sequence[Hashable]) -> None:
        """The bootstrap list is probed for as long as the node runs."""
        for a in addresses:
            if a != self.me.address:
                self._lost[a] = Lost(a, due=MAX_BACKOFF, bootstrap=True)

    def lost(self) -> list[Hashable]:
        """The addresses being probed (lost members, then the bootstrap list)."""
        return [a for a, e in self._lost.items() if not e.bootstrap] + [a for a, e in self._lost.items() if e.bootstrap]

    def each_round(self, rounds: int) -> None:
        """Note who vanished from our tables since the last round; probe the due ones."""
        self.rounds = rounds
        known = {p.address: p for p in self.table.known_peers()}
        suspects = self.table.suspects
        for a in self._seen:
            if a not in known and a in suspects and a not in self._lost:
                self._lost[a] = Lost(a, due=rounds + 1)
        for a in known:
            e = self._lost.get(a)
            if e is not None and not e.bootstrap:
                del self._lost[a]  # back in our tables
        self._seen = known
        members = [a for a, e in self._lost.items() if not e.bootstrap]
        for a in members[: max(0, len(members) - MAX_LOST)]:
            del self._lost[a]
        due = [e for e in self._lost.values() if e.due <= rounds and not self.jobs.busy(f"rejoin {e.address}")]
        for e in due[:PROBES_PER_ROUND]:
            self.jobs.guarded(f"rejoin {e.address}", lambda e=e: self._probe(e))

    def _closer(self, peer: Peer) -> bool:
        """Whether ``peer`` sits between us and our successor (or we have none)."""
        succ = self.table.successors[0] if self.table.successors else None
        if succ is None:
            return True
        return peer.address != succ.address and ids.in_open(peer.id, self.me.id, succ.id)

    @defer.inlineCallbacks
    def _probe(self, entry: Lost):
        me, m = self.me, self.config.m
        try:
            result = yield self.lookups.lookup(ids.add(me.id, 1, m), via=entry.address)
        except Exception:
            entry.fails += 1
            entry.due = self.rounds + min(MAX_BACKOFF, 2**entry.fails)
            return None
        entry.fails = 0
        theirs = [p for p in result.successors if p.address != me.address and p.id != me.id]
        if theirs and self._closer(theirs[0]):
            # another ring, with a node closer to us than our successor: tell
            # it about us (it may take us as predecessor), and take it as
            # successor only if it answers (a stale answer may name the dead)
            cand = theirs[0]
            try:
                state = yield self.calls.call(cand.address, "notify", me)
            except Exception:
                entry.due = self.rounds + 1
                return None
            if self._closer(cand):
                self.merges += 1
                suspects = self.table.suspects
                union = {p.address: p for p in [cand, *state.successors, *self.table.successors] if p.address not in suspects}
                union.pop(me.address, None)
                self.table.set_successors(sorted(union.values(), key=lambda p: ids.distance(me.id, p.id, m)))
            entry.due = self.rounds + 1  # keep at it until one ring
            return None
        if entry.bootstrap:
            entry.due = self.rounds + MAX_BACKOFF
        else:
            self._lost.pop(entry.address, None)  # it gives us our own successor: one ring
        return None
