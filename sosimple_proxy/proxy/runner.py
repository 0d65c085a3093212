"""The runner of the processor chain, after reSIProcate's repro.

Each processor is called with the request's :class:`Job` and returns a step:

- :data:`CONTINUE` (or None): the next processor looks;
- a ``Response``: sent, the chain stops;
- :data:`TAKEN`: the processor took the transaction over (a response
  context answers it), the chain stops;
- a ``Deferred`` (a ring or DNS lookup): the chain waits; what it fires
  with is one of the above, a failure is answered 500.  While it waits the
  server transaction's ``data`` is a :class:`PendingLookup`, which a CANCEL
  marks: the INVITE then ends 487 instead of going on (RFC 3261 16.10).
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.transaction import ServerTransaction

log = Logger()


class Outcome(enum.Enum):
    CONTINUE = "continue"
    TAKEN = "taken"


CONTINUE = Outcome.CONTINUE
TAKEN = Outcome.TAKEN


@attrs.define(eq=False)
class Job:
    """One request going through the chain, and what the chain learnt of it."""

    request: Request
    txn: ServerTransaction
    # Set once, by route processing (16.4): see classify.Kind.
    kind: Any = None
    # The location chain's answer (Found, Miss or NOT_MINE), once asked.
    located: Any = None


@attrs.define(eq=False)
class PendingLookup:
    """``txn.data`` while a processor waits on a Deferred."""

    cancelled: bool = False

    def cancel(self) -> None:
        """The caller CANCELled: answer 487 when the wait ends."""
        self.cancelled = True


Step = Any  # CONTINUE | TAKEN | Response | None | Deferred of one of them
Processor = Callable[[Job], Step]


class Chain:
    """Runs processors in order until one answers or takes the request."""

    def __init__(self, processors: Sequence[Processor]) -> None:
        self.processors = list(processors)

    def run(self, request: Request, txn: ServerTransaction) -> None:
        self._run(Job(request, txn), 0)

    def _run(self, job: Job, start: int) -> None:
        processors = self.processors
        for i in range(start, len(processors)):
            step = processors[i](job)
            if isinstance(step, Deferred):
                self._wait(step, job, i)
                return
            if step is None or step is CONTINUE:
                continue
            self._stop(job, step)
            return
        job.txn.respond(make_response(job.request, 500, "Server Internal Error: no processor answered"))

    def _wait(self, d: Deferred, job: Job, i: int) -> None:
        pending = PendingLookup()
        job.txn.data = pending
        d.addCallback(self._resume, job, i, pending)
        # also what the later processors raise, as when they run at once
        d.addErrback(self._failed, job, i, pending)

    def _resume(self, step: Step, job: Job, i: int, pending: PendingLookup) -> None:
        if job.txn.data is pending:
            job.txn.data = None
        if pending.cancelled:
            job.txn.respond(make_response(job.request, 487, "Request Terminated"))
        elif step is None or step is CONTINUE:
            self._run(job, i + 1)
        else:
            self._stop(job, step)

    def _failed(self, failure: Any, job: Job, i: int, pending: PendingLookup) -> None:
        log.failure("{step} for {uri} failed", failure, step=_name(self.processors[i]), uri=job.request.uri)
        if job.txn.data is pending:
            job.txn.data = None
        if pending.cancelled:
            job.txn.respond(make_response(job.request, 487, "Request Terminated"))
        else:
            job.txn.respond(make_response(job.request, 500, f"Server Internal Error: {_name(self.processors[i])} failed"))

    @staticmethod
    def _stop(job: Job, step: Step) -> None:
        if isinstance(step, Response):
            job.txn.respond(step)
        elif step is not TAKEN:
            raise TypeError(f"a processor returned {step!r}, not a step")


def _name(processor: Processor) -> str:
    return getattr(processor, "name", None) or getattr(processor, "__name__", None) or type(processor).__name__
