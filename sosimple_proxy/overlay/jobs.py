"""A node's background work: whether it runs, and one job of a kind at a time.

Maintenance rounds and replica syncs start jobs that may outlast a round
(a slow peer, a long lookup); a job of a name that is still going is not
started again, so a slow ring does not pile up work.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: a job returns a Deferred, or None when it had nothing to wait for
Job = Callable[[], "defer.Deferred | None"]


def sleep(clock: IReactorTime, seconds: float) -> defer.Deferred:
    """A Deferred that fires (with None) ``seconds`` from now on ``clock``."""
    d = defer.Deferred()
    clock.callLater(seconds, d.callback, None)
    return d


class Jobs:
    """The background jobs of one node (``label`` names it in the log)."""

    def __init__(self, label: str) -> None:
        self.label = label
        #: False before start and after stop: no new work is begun
        self.running = False
        self._busy: set[str] = set()

    def guarded(self, name: str, job: Job) -> None:
        """Run ``job`` unless the last one of its name is still going."""
        if name in self._busy:
            return
        d = job()
        if d is None:
            return
        self._busy.add(name)
        d.addCallbacks(self._done, self._failed, (name,), None, (name,))

    def busy(self, name: str) -> bool:
        return name in self._busy

    def log_failure(self, failure: Failure, what: str) -> None:
        log.failure("overlay node {id}: {what} failed", failure, id=self.label, what=what)

    def _done(self, result: object, name: str) -> None:
        self._busy.discard(name)

    def _failed(self, failure: Failure, name: str) -> None:
        self._busy.discard(name)
        self.log_failure(failure, name)
