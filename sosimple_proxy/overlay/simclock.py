"""A heap-based ``IReactorTime`` for simulations of millions of events.

``twisted.internet.task.Clock`` keeps its calls in a list it sorts on
every ``callLater``; with thousands pending that costs far more than the
simulated work.  Here calls sit in a heap; cancelling or moving a call only
marks its old heap entry stale (it is skipped when it comes up), so every
operation is O(log n).  Calls due at the same time run in the order they
were scheduled, which keeps a seeded simulation deterministic.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer


@implementer(IDelayedCall)
class SimDelayedCall:
    """One scheduled call; its heap entry is valid while ``_token`` matches."""

    __slots__ = ("_clock", "time", "func", "args", "kw", "cancelled", "called", "_token")

    def __init__(self, clock: SimClock, time: float, func: Callable[..., Any], args: tuple, kw: dict) -> None:
        self._clock = clock
        self.time = time
        self.func = func
        self.args = args
        self.kw = kw
        self.cancelled = False
        self.called = False
        self._token = 0

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return not (self.cancelled or self.called)

    def _check(self) -> None:
        if self.cancelled:
            raise AlreadyCancelled(self)
        if self.called:
            raise AlreadyCalled(self)

    def cancel(self) -> None:
        self._check()
        self.cancelled = True
        self._clock._active -= 1

    def reset(self, secondsFromNow: float) -> None:
        self._check()
        self.time = self._clock.now + secondsFromNow
        self._clock._push(self)

    def delay(self, secondsLater: float) -> None:
        self._check()
        self.time += secondsLater
        self._clock._push(self)

    def __repr__(self) -> str:
        return f"<SimDelayedCall {getattr(self.func, '__qualname__', self.func)} at {self.time:.6f}>"


@implementer(IReactorTime)
class SimClock:
    """Simulated time: nothing happens until :meth:`advance` or :meth:`run`."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, int, SimDelayedCall]] = []
        self._counter = 0
        self._active = 0
        self.calls_run = 0

    def seconds(self) -> float:
        return self.now

    def _push(self, call: SimDelayedCall) -> None:
        self._counter += 1
        call._token = self._counter
        heapq.heappush(self._heap, (call.time, self._counter, self._counter, call))

    def callLater(self, delay: float, callable: Callable[..., Any], *args: object, **kw: object) -> SimDelayedCall:
        if delay < 0:
            delay = 0.0
        call = SimDelayedCall(self, self.now + delay, callable, args, kw)
        self._active += 1
        self._push(call)
        return call

    def getDelayedCalls(self) -> list[SimDelayedCall]:
        seen = {}
        for _, _, token, call in self._heap:
            if call._token == token and call.active():
                seen[id(call)] = call
        return sorted(seen.values(), key=lambda c: (c.time, c._token))

    def pending(self) -> int:
        """How many calls are still scheduled."""
        return self._active

    def _pop_due(self, until: float) -> SimDelayedCall | None:
        heap = self._heap
        while heap:
            time, _, token, call = heap[0]
            if call._token != token or not call.active():
                heapq.heappop(heap)
                continue
            if time > until:
                return None
            heapq.heappop(heap)
            return call
        return None

    def advance(self, amount: float) -> None:
        """Move time on by ``amount``, running every call that falls due."""
        self.run_until(self.now + amount)

    def run_until(self, when: float) -> None:
        """Run calls in time order up to and including ``when``."""
        while True:
            call = self._pop_due(when)
            if call is None:
                break
            if call.time > self.now:
                self.now = call.time
            call.called = True
            self._active -= 1
            self.calls_run += 1
            call.func(*call.args, **call.kw)
        if when > self.now:
            self.now = when

    def run(self, limit: int | None = None) -> None:
        """Run until nothing is scheduled (or ``limit`` calls have run)."""
        ran = 0
        while limit is None or ran < limit:
            call = self._pop_due(float("inf"))
            if call is None:
                return
            self.now = max(self.now, call.time)
            call.called = True
            self._active -= 1
            self.calls_run += 1
            ran += 1
            call.func(*call.args, **call.kw)
