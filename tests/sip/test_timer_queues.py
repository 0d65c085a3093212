"""TimerQueues: transaction timers as one FIFO per duration (issue 12)."""

from __future__ import annotations

from twisted.internet.task import Clock

from sosimple_proxy.sip.timer_queues import MAX_QUEUES, TimerQueues


def test_each_timer_fires_at_its_own_time_in_order():
    clock = Clock()
    q = TimerQueues(clock)
    fired: list[tuple[str, float]] = []
    q.call_later(1.0, lambda: fired.append(("a", clock.seconds())))
    clock.advance(0.25)
    q.call_later(1.0, lambda: fired.append(("b", clock.seconds())))
    q.call_later(0.5, lambda: fired.append(("c", clock.seconds())))
    assert len(clock.getDelayedCalls()) == 2  # one reactor call per duration
    clock.advance(0.5)
    assert fired == [("c", 0.75)]
    clock.advance(0.25)
    assert fired == [("c", 0.75), ("a", 1.0)]
    clock.advance(0.24)
    assert len(fired) == 2
    clock.advance(0.01)
    assert fired[-1] == ("b", 1.25)
    assert clock.getDelayedCalls() == [] and q.pending() == 0


def test_cancel_without_search_and_nothing_left_behind():
    clock = Clock()
    q = TimerQueues(clock)
    fired = []
    t1 = q.call_later(2.0, lambda: fired.append(1))
    t2 = q.call_later(2.0, lambda: fired.append(2))
    assert t1.active() and t2.active()
    t1.cancel()
    assert not t1.active() and t1.fn is None  # keeps nothing alive
    clock.advance(2.0)
    assert fired == [2] and not t2.active()
    t3 = q.call_later(2.0, lambda: fired.append(3))
    t3.cancel()
    t3.cancel()  # twice is harmless
    assert clock.getDelayedCalls() == [] and q.pending() == 0
    clock.advance(5)
    assert fired == [2]


def test_a_cancelled_head_does_not_delay_the_next():
    clock = Clock()
    q = TimerQueues(clock)
    fired = []
    head = q.call_later(1.0, lambda: fired.append("head"))
    clock.advance(0.5)
    q.call_later(1.0, lambda: fired.append("next"))
    head.cancel()
    clock.advance(0.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == ["next"]


def test_a_timer_set_by_a_firing_timer_of_the_same_duration():
    clock = Clock()
    q = TimerQueues(clock)
    times = []

    def again() -> None:
        times.append(clock.seconds())
        if clock.seconds() < 12.0:
            q.call_later(4.0, again)

    q.call_later(4.0, again)
    q.call_later(4.0, lambda: times.append(-1.0))  # due at 4.0 as well
    clock.advance(4.0)
    assert times == [4.0, -1.0]
    clock.advance(4.0)
    clock.advance(4.0)
    assert times == [4.0, -1.0, 8.0, 12.0]
    assert clock.getDelayedCalls() == []


def test_a_failing_timer_does_not_stop_the_others():
    clock = Clock()
    q = TimerQueues(clock)
    fired = []
    q.call_later(1.0, lambda: 1 / 0)
    q.call_later(1.0, lambda: fired.append(1))
    clock.advance(1.0)
    assert fired == [1]


def test_many_durations_fall_back_to_the_reactor():
    clock = Clock()
    q = TimerQueues(clock)
    fired = []
    for i in range(MAX_QUEUES + 3):
        q.call_later(1.0 + i / 1000, lambda i=i: fired.append(i))
    clock.advance(2.0)
    assert sorted(fired) == list(range(MAX_QUEUES + 3))


def test_stop_cancels_everything():
    clock = Clock()
    q = TimerQueues(clock)
    fired = []
    t = q.call_later(1.0, lambda: fired.append(1))
    q.stop()
    assert clock.getDelayedCalls() == [] and not t.active()
    clock.advance(2)
    assert fired == []
