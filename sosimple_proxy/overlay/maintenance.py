"""Ring maintenance: stabilize, notify, fix-fingers, check-predecessor.

Every ``stabilize_interval`` (times ``1 +- jitter``, so that nodes do not
beat in step) a *round* runs each of them once, then whatever else must
happen periodically (replica syncs, given as ``each_round``).  Between
rounds the node reacts at once to what it hears: a notify from a new
predecessor, a hint that its successor list changed.
"""

from __future__ import annotations

import bisect
import random
from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from . import ids
from .calls import ignore
from .errors import LookupFailed
from .interfaces import ILookup, IPeerCalls
from .jobs import Jobs
from .messages import NodeState, Peer
from .routing import RoutingTable
from .tuning import NodeConfig


class Maintenance:
    """Keeps one node's :class:`.routing.RoutingTable` true to the ring."""

    #: how far stabilize may walk back from its successor in one round
    WALK_BACK = 64

    def __init__(
        self,
        table: RoutingTable,
        calls: IPeerCalls,
        lookups: ILookup,
        jobs: Jobs,
        clock: IReactorTime,
        config: NodeConfig,
        rng: random.Random,
        each_round: Callable[[int], None],
    ) -> None:
        self.me = table.me
        self.table = table
        self.calls = calls
        self.lookups = lookups
        self.jobs = jobs
        self.clock = clock
        self.config = config
        self.rng = rng
        self.each_round = each_round
        self.rounds = 0
        self._round_call: IDelayedCall | None = None
        self._next_finger = 0
        self._pred_heard = float("-inf")

    # ----------------------------------------------------------------- rounds

    def stop(self) -> None:
        if self._round_call is not None and self._round_call.active():
            self._round_call.cancel()
        self._round_call = None

    def schedule_round(self) -> None:
        """The next round, in ``interval * (1 +- jitter)`` (the first once the node has joined)."""
        if not self.jobs.running:
            return
        j = self.config.jitter
        delay = self.config.stabilize_interval * (1 + self.rng.uniform(-j, j))
        self._round_call = self.clock.callLater(delay, self._round)

    def _round(self) -> None:
        self._round_call = None
        if not self.jobs.running:
            return
        self.rounds += 1
        guarded = self.jobs.guarded
        guarded("stabilize", self._stabilize)
        guarded("check_predecessor", self._check_predecessor)
        guarded("fix_fingers", self._fix_fingers)
        self.each_round(self.rounds)
        self.schedule_round()

    # ------------------------------------------------------ what we are told

    def notified(self, peer: Peer) -> NodeState:
        """``peer`` takes itself for our predecessor: adopt it if it is closer.

        Answers our state after taking that in (stabilize's asking and
        telling in one call).
        """
        table = self.table
        if peer.address == self.me.address or peer.id == self.me.id:
            return table.state()
        table.suspects.discard(peer.address)
        pred = table.predecessor
        if pred is None or ids.in_open(peer.id, pred.id, self.me.id):
            table.set_predecessor(peer)
            if pred is not None and pred.address != peer.address and self.jobs.running:
                # tell the old predecessor at once, rather than at its next round
                self.calls.call(pred.address, "successor_hint", peer).addErrback(ignore)
        elif pred.address != peer.address and self.jobs.running:
            # Someone before our predecessor takes us for its successor: our
            # predecessor may be dead.  Find out now rather than rounds later.
            self.jobs.guarded("probe_predecessor", lambda: self._probe_predecessor(pred, peer))
        if table.predecessor is not None and table.predecessor.address == peer.address:
            self._pred_heard = self.clock.seconds()
        if not table.successors:
            table.set_successors([peer])
        return table.state()

    def successor_hint(self, peer: Peer) -> None:
        """``peer`` is our new successor, or our successor's list changed."""
        table = self.table
        if peer.address == self.me.address:
            return None
        table.suspects.discard(peer.address)
        if not table.successors or ids.in_open(peer.id, self.me.id, table.successors[0].id):
            table.set_successors([peer, *table.successors])
        elif peer.address == table.successors[0].address and self.jobs.running:
            self.clock.callLater(0, self.jobs.guarded, "stabilize", self._stabilize)
        return None

    def hint_predecessor(self) -> None:
        """Our replica set changed: our predecessor's replicas are among our
        successors, so tell it now rather than at its next round.  Each node
        back has the change one place further down its list, so this stops
        after ``replicas`` nodes."""
        pred = self.table.predecessor
        if pred is not None:
            self.calls.call(pred.address, "successor_hint", self.me).addErrback(ignore)

    # -------------------------------------------------------------- stabilize

    def _stabilize(self) -> defer.Deferred | None:
        """Ask the successor for its view (telling it about us), adopt a closer one.

        Plain callbacks rather than inlineCallbacks: this runs for every node
        every round, and in a simulation of thousands that overhead shows.
        """
        table = self.table
        if not table.successors:
            if table.predecessor is None:
                return None
            table.set_successors([table.predecessor])
        return self._stabilize_step(table.successors[0], 0)

    def _stabilize_step(self, succ: Peer, walked: int) -> defer.Deferred:
        # one call both tells the successor about us and asks its view
        d = self.calls.call(succ.address, "notify", self.me)
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
            and x.address != self.me.address
            and ids.in_open(x.id, self.me.id, succ.id)
            and x.address not in self.table.suspects
        ):
            d = self.calls.call(x.address, "notify", self.me)
            d.addCallbacks(self._stabilize_answer, self._walk_failed, (x, walked + 1), None, (x, succ, state))
            return d
        self.table.set_successors([succ, *state.successors])
        return None

    def _walk_failed(self, failure: Failure, x: Peer, succ: Peer, state: NodeState) -> None:
        self.table.failed(x.address)
        self.table.set_successors([succ, *state.successors])

    def _stabilize_failed(self, failure: Failure, succ: Peer, walked: int) -> defer.Deferred:
        self.table.failed(succ.address)
        if self.table.successors:
            return self._stabilize_step(self.table.successors[0], walked)
        return self._recover()

    @defer.inlineCallbacks
    def _recover(self):
        """Every successor is gone: find our place again through anyone we know."""
        for p in self.table.known_peers():
            try:
                result = yield self.lookups.lookup(ids.add(self.me.id, 1, self.config.m), via=p.address)
            except Exception:
                continue
            others = [s for s in result.successors if s.address != self.me.address]
            if others:
                self.table.set_successors(others)
                return None
        return None

    # ------------------------------------------------------------ predecessor

    def _check_predecessor(self) -> defer.Deferred | None:
        pred = self.table.predecessor
        if pred is None:
            return None
        if self._pred_heard > self.clock.seconds() - 1.5 * self.config.stabilize_interval:
            return None  # it notified us lately: alive
        return self.calls.call(pred.address, "state").addErrback(lambda _: self.table.failed(pred.address))

    @defer.inlineCallbacks
    def _probe_predecessor(self, pred: Peer, candidate: Peer):
        try:
            yield self.calls.hop(pred.address, "state")
        except Exception:
            self.table.failed(pred.address)
            if self.table.predecessor is None and candidate.address not in self.table.suspects:
                self.table.set_predecessor(candidate)
        return None

    # ---------------------------------------------------------------- fingers

    def _fix_fingers(self) -> defer.Deferred | None:
        first = self.table.first_finger()
        self.table.drop_fingers_below(first)
        if first >= self.config.m:
            return None
        if not first <= self._next_finger < self.config.m:
            self._next_finger = first
        i = self._next_finger
        self._next_finger += 1
        return self._fix_finger(i)

    def _fix_finger(self, i: int) -> defer.Deferred:
        start = ids.finger_start(self.me.id, i, self.config.m)
        current = self.table.fingers.get(i)
        if current is None or current.address in self.table.suspects:
            return self._finger_lookup(i, start)
        # one call instead of a lookup: the finger is still right if nothing
        # sits between the finger's start and the finger
        d = self.calls.call(current.address, "state")
        d.addCallbacks(self._finger_checked, self._finger_check_failed, (i, start, current), None, (i, start, current))
        return d

    def _finger_checked(self, state: NodeState, i: int, start: int, current: Peer):
        p = state.predecessor
        if p is None or p.address == self.me.address or not ids.in_closed_open(p.id, start, current.id):
            return current
        if p.address in self.table.suspects:
            return self._finger_lookup(i, start)
        # a node joined in between: step back to it, and check it next time
        # round (one call, where a lookup costs several)
        self.table.set_finger(i, p)
        return p

    def _finger_check_failed(self, failure: Failure, i: int, start: int, current: Peer):
        self.table.failed(current.address)
        return self._finger_lookup(i, start)

    @defer.inlineCallbacks
    def _finger_lookup(self, i: int, start: int):
        try:
            result = yield self.lookups.lookup(start, verify=False)
        except LookupFailed:
            return None
        found = next((p for p in result.successors if p.address != self.me.address), None)
        if found is None:
            self.table.drop_finger(i)
        else:
            self.table.set_finger(i, found)
        return found

    @defer.inlineCallbacks
    def seed_fingers(self, succ: Peer):
        """Start from the successor's fingers; fix_fingers refines them later.

        Our finger ``i`` is the first node at or after ``id + 2**i``; the
        successor's fingers (and its successors) hold nearly those nodes,
        so one call gives a table that routes in O(log N) from the start.
        """
        try:
            theirs = yield self.calls.call(succ.address, "fingers")
        except Exception:
            yield self._build_fingers()
            return None
        m, me = self.config.m, self.me
        known = {p.address: p for p in (*theirs, *self.table.successors) if p.address != me.address}
        ordered = sorted(known.values(), key=lambda p: ids.distance(me.id, p.id, m))
        dists = [ids.distance(me.id, p.id, m) for p in ordered]
        for i in range(self.table.first_finger(), m):
            j = bisect.bisect_left(dists, 1 << i)
            if j < len(ordered):
                self.table.set_finger(i, ordered[j])
        return None

    @defer.inlineCallbacks
    def _build_fingers(self):
        """Fill the finger table at join, skipping starts a found finger already covers."""
        i = self.table.first_finger()
        last: Peer | None = None
        while i < self.config.m and self.jobs.running:
            start = ids.finger_start(self.me.id, i, self.config.m)
            if last is not None and ids.in_half_open(start, self.me.id, last.id):
                self.table.set_finger(i, last)
            else:
                last = yield self._fix_finger(i)
            i += 1
        return None
