"""Waiting for a condition instead of sleeping a fixed time.

A fixed sleep is either too short on a busy machine (the test fails) or
too long everywhere else (the suite crawls).  These poll a predicate until
it holds, with a bound that only matters when something is broken.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from twisted.internet import defer, task

__all__ = ["WaitTimeout", "wait_until", "until", "until_quiet"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError, so a test fails
    rather than errors)."""


def _describe(what: str | Callable[[], str]) -> str:
    return what() if callable(what) else what


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
) -> T:
    """Call ``predicate`` until it returns something true, and return that.

    Blocking, for plain tests that drive processes.  Raises
    :class:`WaitTimeout` naming ``what`` (a text, or a function giving one,
    e.g. a log tail) after ``timeout`` seconds.  ``clock`` and ``sleep`` are
    for testing this helper.
    """
    deadline = clock() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if clock() >= deadline:
            raise WaitTimeout(f"{_describe(what)}: not met within {timeout:g}s")
        sleep(interval)


def until(
    predicate: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
    *,
    reactor: Any = None,
) -> defer.Deferred:
    """:func:`wait_until` for code running under a reactor (trial tests): a
    Deferred that fires with the predicate's true value, or fails with
    :class:`WaitTimeout`.  The reactor's clock bounds the wait, so a
    ``task.Clock`` drives it in unit tests."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    @defer.inlineCallbacks
    def poll():  # type: ignore[no-untyped-def]
        deadline = reactor.seconds() + timeout
        while True:
            got = predicate()
            if got:
                return got
            if reactor.seconds() >= deadline:
                raise WaitTimeout(f"{_describe(what)}: not met within {timeout:g}s")
            yield task.deferLater(reactor, interval, lambda: None)

    return poll()


def until_quiet(within: float, timeout: float = 10.0, *, reactor: Any = None) -> defer.Deferred:
    """A Deferred that fires once no timer of ``reactor`` is due within
    ``within`` seconds of the moment of the call: calls in flight have
    answered or timed out, so a test ends with the reactor clean.  Timers
    due later (trial's own timeout, say) do not count.  In place of a
    fixed sleep at the end of a test."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    horizon = reactor.seconds() + within

    def due() -> list:
        return [c for c in reactor.getDelayedCalls() if c.getTime() <= horizon]

    return until(lambda: not due(), timeout, what=lambda: f"timers still due: {due()}", reactor=reactor)
