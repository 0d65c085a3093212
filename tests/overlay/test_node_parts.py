"""The node's parts on their own: timed calls, jobs, the iterative lookup, rounds.

Each part is built from plain objects (a ``task.Clock``, fake calls, routing
tables filled by hand) instead of a ring of nodes.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sosimple_proxy.overlay.calls import TimedCalls
from sosimple_proxy.overlay.errors import LookupFailed
from sosimple_proxy.overlay.interfaces import ILookup, IPeerCalls
from sosimple_proxy.overlay.jobs import Jobs
from sosimple_proxy.overlay.lookup import IterativeLookup
from sosimple_proxy.overlay.maintenance import Maintenance
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.routing import RoutingTable, Suspects
from sosimple_proxy.overlay.tuning import NodeConfig

M = 8


class SlowRPC:
    """An ``IOverlayRPC`` whose answers the test gives by hand."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def state(self, address):
        d = defer.Deferred()
        self.pending.append(d)
        return d


def failure_of(d: defer.Deferred):
    out = []
    d.addErrback(out.append)
    return out[0] if out else None


def test_timed_calls_time_out_and_learn_how_fast_hops_answer():
    clock, rpc = task.Clock(), SlowRPC()
    calls = TimedCalls(rpc, clock, timeout=2.0)
    verifyObject(IPeerCalls, calls)
    late = calls.call("a", "state")
    clock.advance(2.0)
    assert failure_of(late).check(defer.TimeoutError)
    assert calls.hop_timeout() == 2.0  # nothing learnt yet: the whole timeout
    for _ in range(8):
        d = calls.hop("a", "state")
        clock.advance(0.1)
        rpc.pending[-1].callback("ok")
        assert d.result == "ok"
    assert calls.hop_timeout() == pytest.approx(0.5)  # a quarter of the timeout at least
    assert not clock.getDelayedCalls()  # answered calls leave no timer behind


def test_a_job_of_a_name_runs_once_at_a_time_and_failures_free_it():
    jobs = Jobs("n1")
    runs: list[defer.Deferred] = []

    def job():
        runs.append(defer.Deferred())
        return runs[-1]

    jobs.guarded("sync", job)
    jobs.guarded("sync", job)
    assert len(runs) == 1 and jobs.busy("sync")
    runs[0].errback(RuntimeError("peer gone"))
    assert not jobs.busy("sync")
    jobs.guarded("sync", lambda: None)  # nothing to wait for: never busy
    assert not jobs.busy("sync")


# ------------------------------------------------------- the iterative lookup


def peer(i: int) -> Peer:
    return Peer(i, f"n{i}")


@implementer(IPeerCalls)
class RingCalls:
    """Answers ``find`` from each node's table at once; dead nodes never answer."""

    def __init__(self, clock: task.Clock, tables: dict, dead=()) -> None:
        self.clock, self.tables, self.dead = clock, tables, set(dead)
        self.asked: list = []

    def call(self, address, method, *args):
        return self.hop(address, method, *args)

    def hop(self, address, method, *args):
        self.asked.append(address)
        if address in self.dead:
            d = defer.Deferred()
            self.clock.callLater(0.5, d.errback, defer.TimeoutError())
            return d
        assert method == "find"
        return defer.succeed(self.tables[address].find(args[0], 3))


def ring_of(ids_, successors=2):
    """Tables of a correct ring with the given ids; fingers at the usual places."""
    ids_ = sorted(ids_)
    tables = {}
    for i, n in enumerate(ids_):
        t = RoutingTable(peer(n), M, successors, 1, Suspects(lambda: 0.0, 10.0))
        t.set_successors([peer(ids_[(i + j) % len(ids_)]) for j in range(1, successors + 1)])
        t.set_predecessor(peer(ids_[i - 1]))
        for f in range(M):
            start = (n + (1 << f)) % (1 << M)
            t.set_finger(f, peer(next((x for x in ids_ if x >= start), ids_[0])))
        tables[f"n{n}"] = t
    return tables


def test_the_lookup_walks_to_the_key_and_asks_its_successor():
    clock = task.Clock()
    tables = ring_of([10, 40, 70, 100, 130, 160, 190, 220])
    calls = RingCalls(clock, tables)
    lookup = IterativeLookup(tables["n10"], calls, clock, NodeConfig(m=M, stabilize_interval=1.0))
    verifyObject(ILookup, lookup)
    result = lookup.lookup(150).result
    assert result.responsible == peer(160) and result.successors[:2] == (peer(160), peer(190))
    assert calls.asked[-1] == "n160"  # verified by the successor itself


def test_the_lookup_routes_around_a_dead_hop_and_suspects_it():
    clock = task.Clock()
    tables = ring_of([10, 40, 70, 100, 130, 160, 190, 220])
    calls = RingCalls(clock, tables, dead={"n100"})
    me = tables["n10"]
    lookup = IterativeLookup(me, calls, clock, NodeConfig(m=M, stabilize_interval=1.0))
    d = lookup.lookup(150)
    clock.advance(0.5)
    assert d.result.responsible == peer(160)
    assert calls.asked[0] == "n100" and "n100" in me.suspects
    assert me.fingers.get(6) is None  # the dead finger is dropped, not retried


def test_a_lookup_through_a_silent_bootstrap_fails_at_once():
    clock = task.Clock()
    tables = ring_of([10, 40])
    calls = RingCalls(clock, tables, dead={"n99"})
    lookup = IterativeLookup(tables["n10"], calls, clock, NodeConfig(m=M, stabilize_interval=1.0))
    d = lookup.lookup(30, via="n99")
    clock.advance(0.5)
    assert failure_of(d).check(LookupFailed)


# -------------------------------------------------------------------- rounds


def test_rounds_come_with_jitter_and_run_the_periodic_work():
    clock = task.Clock()
    cfg = NodeConfig(m=M, stabilize_interval=10.0, jitter=0.25)
    table = RoutingTable(peer(10), M, 2, 1, Suspects(clock.seconds, cfg.suspect_time))  # alone: nothing to call
    jobs = Jobs("n10")
    seen: list[int] = []
    maintenance = Maintenance(table, RingCalls(clock, {}), None, jobs, clock, cfg, random.Random(1), seen.append)
    jobs.running = True
    maintenance.schedule_round()
    delays = []
    for _ in range(20):
        (call,) = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    assert seen == list(range(1, 21))
    assert all(7.5 <= d <= 12.5 for d in delays) and len(set(delays)) > 1
    jobs.running = False
    maintenance.stop()
    assert not clock.getDelayedCalls()
