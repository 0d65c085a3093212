"""The SIP tally: counts, the last minute's window, unanswered transactions forgotten."""

from __future__ import annotations

from twisted.internet import task

from sosimple_proxy.tally import WINDOW, Buckets, SipTally


class Txn:
    def __init__(self, method: str, host: str = "127.0.0.1") -> None:
        self.request = type("R", (), {"method": method})()
        self.source = type("S", (), {"host": host})()
        self.terminated = False


def test_buckets_are_prometheus_le():
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        b.observe(v)
    assert b.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)] and b.count == 4 and b.sum == 3.65


def test_counts_durations_and_setup():
    clock = task.Clock()
    tally = SipTally(clock)
    invite, message, odd = Txn("INVITE"), Txn("MESSAGE"), Txn("FOO")
    for t in (invite, message, odd):
        tally.request(t)
    clock.advance(0.3)
    tally.final(message, 404)
    clock.advance(1.7)
    tally.final(invite, 200)
    tally.final(odd, 501)
    assert tally.requests == {"INVITE": 1, "MESSAGE": 1, "OTHER": 1}
    assert tally.responses == {("MESSAGE", 404): 1, ("INVITE", 200): 1, ("OTHER", 501): 1}
    assert tally.durations["MESSAGE"].sum == 0.3 and tally.durations["INVITE"].sum == 2.0
    assert tally.setup.count == 1 and tally.setup.sum == 2.0
    assert tally.started == {}


def test_the_window_is_the_last_minute():
    clock = task.Clock()
    tally = SipTally(clock)
    for n in range(3):  # at 0, 20 and 40 s
        if n:
            clock.advance(20)
        t = Txn("OPTIONS", f"10.0.0.{n}")
        tally.request(t)
        tally.final(t, 200)
    finals, sources = tally.last_minute()
    assert finals == {("OPTIONS", 200): 3} and len(sources) == 3
    clock.advance(WINDOW - 19)  # at 81 s only the one of 40 s is within the minute
    finals, sources = tally.last_minute()
    assert finals == {("OPTIONS", 200): 1} and sources == {"10.0.0.2": 1}


def test_unanswered_transactions_that_ended_are_forgotten():
    tally = SipTally(task.Clock())
    live, dead = Txn("INVITE"), Txn("MESSAGE")
    tally.request(live)
    tally.request(dead)
    dead.terminated = True
    assert tally.pending() == {"INVITE": 1}
    assert list(tally.started) == [live]
    many = [Txn("MESSAGE") for _ in range(10_000)]
    for t in many:
        tally.request(t)
        t.terminated = True
    # the table never grew past the sweep: the ended ones went, the live one stayed
    assert len(tally.started) < 10 and live in tally.started
