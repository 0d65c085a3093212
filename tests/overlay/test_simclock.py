"""The heap-based simulation clock behaves as an IReactorTime."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sosimple_proxy.overlay.simclock import SimClock


def test_interfaces():
    clock = SimClock()
    assert IReactorTime.providedBy(clock)
    assert IDelayedCall.providedBy(clock.callLater(1, lambda: None))


def test_runs_in_time_then_schedule_order():
    clock = SimClock()
    ran = []
    clock.callLater(2, ran.append, "c")
    clock.callLater(1, ran.append, "a")
    clock.callLater(1, ran.append, "b")
    clock.callLater(5, ran.append, "late")
    clock.advance(2)
    assert ran == ["a", "b", "c"]
    assert clock.seconds() == 2
    assert [c.getTime() for c in clock.getDelayedCalls()] == [5]
    clock.run()
    assert ran[-1] == "late" and clock.seconds() == 5


def test_cancel_reset_delay():
    clock = SimClock()
    ran = []
    a = clock.callLater(1, ran.append, "a")
    b = clock.callLater(1, ran.append, "b")
    c = clock.callLater(1, ran.append, "c")
    a.cancel()
    b.reset(3)
    c.delay(1)
    assert not a.active() and b.active()
    assert clock.pending() == 2
    clock.advance(1)
    assert ran == []
    clock.advance(1)
    assert ran == ["c"]
    clock.advance(1)
    assert ran == ["c", "b"]
    with pytest.raises(AlreadyCancelled):
        a.cancel()
    with pytest.raises(AlreadyCalled):
        b.reset(1)
    assert clock.getDelayedCalls() == [] and clock.pending() == 0


def test_calls_scheduled_while_running():
    clock = SimClock()
    ran = []

    def first():
        ran.append(clock.seconds())
        clock.callLater(0, lambda: ran.append(clock.seconds()))

    clock.callLater(1, first)
    clock.advance(1)
    assert ran == [1, 1]


def test_deferred_timeouts_work_with_it():
    clock = SimClock()
    d = defer.Deferred().addTimeout(2, clock)
    failures = []
    d.addErrback(failures.append)
    clock.advance(2)
    assert failures and failures[0].check(defer.TimeoutError)
    ok = defer.Deferred().addTimeout(2, clock)
    ok.callback(1)
    assert clock.pending() == 0


@given(st.lists(st.tuples(st.floats(0, 10), st.booleans()), max_size=30))
def test_agrees_with_task_clock(plan):
    ours, theirs = SimClock(), task.Clock()
    out_ours, out_theirs = [], []
    for i, (delay, cancel) in enumerate(plan):
        a = ours.callLater(delay, out_ours.append, i)
        b = theirs.callLater(delay, out_theirs.append, i)
        if cancel:
            a.cancel()
            b.cancel()
    ours.advance(5)
    theirs.advance(5)
    assert out_ours == out_theirs
    ours.advance(6)
    theirs.advance(6)
    assert out_ours == out_theirs
