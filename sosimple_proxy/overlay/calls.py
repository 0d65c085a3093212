"""Calls to other nodes with the node's own timeouts.

A transport may leave a call unanswered forever (as a lost packet would);
the timeouts are added here, with the node's clock.  Maintenance calls get
the whole ``rpc_timeout``; lookup and read steps (*hops*) a shorter one
learnt from recent answers, since a dead hop costs a lookup its deadline.
"""

from __future__ import annotations

import collections
from typing import Hashable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from .interfaces import IOverlayRPC, IPeerCalls


def ignore(failure: Failure) -> None:
    """An errback for calls whose failure needs no handling (hints, notices)."""
    return None


@implementer(IPeerCalls)
class TimedCalls:
    """:class:`.interfaces.IOverlayRPC` calls, each cancelled when overdue."""

    def __init__(self, rpc: IOverlayRPC, clock: IReactorTime, timeout: float) -> None:
        self.rpc = rpc
        self.clock = clock
        self.timeout = timeout
        self._rtts: collections.deque[float] = collections.deque(maxlen=32)
        #: calls that failed or timed out (read by the metrics collector)
        self.errors = 0

    def call(self, address: Hashable, method: str, *args: object) -> defer.Deferred:
        return self._timed(getattr(self.rpc, method)(address, *args), self.timeout)

    def hop(self, address: Hashable, method: str, *args: object) -> defer.Deferred:
        """A lookup or read step: timed out as soon as the answer is overdue.

        A dead hop costs the whole lookup its timeout, so lookups do not
        wait ``rpc_timeout`` but twice the slowest of the last answers (the
        peers asked vary, so TCP's per-peer SRTT would be too eager), between
        a quarter of ``rpc_timeout`` and all of it; under churn that is what
        keeps lookups inside their deadline.
        """
        return self._timed(getattr(self.rpc, method)(address, *args), self.hop_timeout())

    def hop_timeout(self) -> float:
        cap = self.timeout
        if len(self._rtts) < 8:
            return cap
        return min(cap, max(cap / 4, 2 * max(self._rtts)))

    def _timed(self, d: defer.Deferred, timeout: float) -> defer.Deferred:
        """Cancel ``d`` after ``timeout`` (failing it with TimeoutError).

        ``Deferred.addTimeout`` does the same with more wrapping; this runs
        millions of times in a simulation, so it is kept to one timer and
        one callback.
        """
        timer = self.clock.callLater(timeout, d.cancel)
        d.addBoth(self._settled, timer, self.clock.seconds(), timeout)
        return d

    def _settled(self, result: object, timer: IDelayedCall, started: float, timeout: float) -> object:
        if timer.active():
            timer.cancel()
            if not isinstance(result, Failure):
                self._rtts.append(self.clock.seconds() - started)
            else:
                self.errors += 1
            return result
        self.errors += 1
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            raise defer.TimeoutError(f"no answer within {timeout:g} s")
        return result
