"""Transaction timers without one reactor ``callLater`` each.

Every transaction timer (RFC 3261 17, Timers A-M) is one of a handful of
durations: T1, 2*T1 ... T2, T4, 64*T1, 64*T1 + T4, 32 s.  Timers of one
duration fire in the order they were set, so each duration is a FIFO
queue driven by a single reactor call for its head: setting a timer is an
append, cancelling one clears its slot (no search, no heap), and the
reactor's heap holds one entry per duration instead of one per timer --
a few entries instead of tens of thousands under load.  Each timer still
fires at its own time (not on a tick), with any ``IReactorTime``, so the
transaction tests drive it with ``twisted.internet.task.Clock``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

__all__ = ["TimerQueues", "QueuedTimer"]

log = Logger()

# More distinct durations than this (a strange T1/T2) go to the reactor.
MAX_QUEUES = 64
# Float slack when comparing a timer's time with the clock's.
_EPSILON = 1e-9


class QueuedTimer:
    """A pending timer: ``active()`` and ``cancel()`` as a DelayedCall's."""

    __slots__ = ("when", "fn", "queue")

    def __init__(self, when: float, fn: Callable[[], Any], queue: "_Queue") -> None:
        self.when = when
        self.fn: Callable[[], Any] | None = fn
        self.queue = queue

    def active(self) -> bool:
        return self.fn is not None

    def cancel(self) -> None:
        # Drops the callable at once: a cancelled timer keeps nothing alive
        # while it waits in its queue to be skipped.
        if self.fn is not None:
            self.fn = None
            self.queue.cancelled()

    def getTime(self) -> float:
        return self.when


class _Queue:
    __slots__ = ("owner", "delay", "items", "call", "running", "live")

    def __init__(self, owner: "TimerQueues", delay: float) -> None:
        self.owner = owner
        self.delay = delay
        self.items: deque[QueuedTimer] = deque()
        self.call: Any = None
        self.running = False
        self.live = 0  # timers neither fired nor cancelled

    def cancelled(self) -> None:
        self.live -= 1
        if self.live == 0 and not self.running:
            # Nothing left to fire: no reactor call left behind either.
            self.items.clear()
            if self.call is not None:
                if self.call.active():
                    self.call.cancel()
                self.call = None

    def run(self) -> None:
        self.call = None
        self.running = True  # timers set by the callbacks wait for the end
        reactor = self.owner.reactor
        now = reactor.seconds() + _EPSILON
        items = self.items
        while items:
            t = items[0]
            fn = t.fn
            if fn is None:
                items.popleft()
                continue
            if t.when > now:
                break
            items.popleft()
            t.fn = None
            self.live -= 1
            try:
                fn()
            except Exception:
                log.failure("transaction timer failed")
        self.running = False
        while items and items[0].fn is None:
            items.popleft()  # no wake-up for a cancelled head
        if items and self.call is None:
            self.call = reactor.callLater(max(0.0, items[0].when - reactor.seconds()), self.run)


class TimerQueues:
    """``call_later(delay, fn)`` for transaction timers (see module doc)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._queues: dict[float, _Queue] = {}

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Any:
        q = self._queues.get(delay)
        if q is None:
            if len(self._queues) >= MAX_QUEUES:
                return self.reactor.callLater(delay, fn)
            q = self._queues[delay] = _Queue(self, delay)
        t = QueuedTimer(self.reactor.seconds() + delay, fn, q)
        q.items.append(t)
        q.live += 1
        if q.call is None and not q.running:
            q.call = self.reactor.callLater(delay, q.run)
        return t

    def pending(self) -> int:
        """Timers set and neither fired nor cancelled (for tests)."""
        return sum(q.live for q in self._queues.values())

    def stop(self) -> None:
        """Cancel every reactor call (the layer is going away)."""
        for q in self._queues.values():
            if q.call is not None and q.call.active():
                q.call.cancel()
            q.call = None
            for t in q.items:
                t.fn = None
            q.items.clear()
            q.live = 0
