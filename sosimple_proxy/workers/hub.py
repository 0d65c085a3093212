"""The line between a proxy's parent process and its workers.

The parent listens on a Unix socket in its private directory
(:class:`Hub`); each worker connects (:class:`WorkerLink`) and says hello,
and the parent pushes every binding it holds before answering, so a worker
that was restarted knows every registration before it serves a request.
After that each binding change goes worker -> parent -> the other workers,
and the workers' ring lookups go to the parent's ring node.  The same
line carries ``[limits]`` tallies and bans (:mod:`.shared_limits`) and
nonce-count checks for another worker's nonce (:mod:`.shared_nonces`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.workers.protocol import (
    Hello,
    PushBatch,
    PushBindings,
    RingGet,
    batch_from_json,
    batches,
    bindings_from_json,
    bindings_to_json,
    records_to_json,
)
from sosimple_proxy.workers.shared_bindings import SharedBindings
from sosimple_proxy.workers.shared_limits import LimitsParentSide, LimitsWorkerSide
from sosimple_proxy.workers.shared_nonces import NoncesParentSide, NoncesWorkerSide

__all__ = ["Hub", "WorkerLink"]

log = Logger()

# Seconds between a worker's binding batches while REGISTERs keep coming:
# how late another worker may learn of a binding under load.  The first
# change after a quiet interval goes at once (at the end of the reactor's
# turn).  Measured in process (bench.workers --hub): sharing a binding
# change cost 108 us of AMP machinery one push at a time, a few us batched.
BATCH_INTERVAL = 0.01


def _ignore_lost(failure: Any) -> None:
    failure.trap(Exception)
    log.debug("push to a worker failed: {why}", why=failure.getErrorMessage())


class _ParentSide(LimitsParentSide, NoncesParentSide, amp.AMP):
    """The parent's end of one worker's line."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self.index: int | None = None

    @Hello.responder
    def hello(self, index: int) -> defer.Deferred:
        self.index = index
        self.hub.lines[index] = self
        table = self.hub.table
        every = [(aor, bindings) for aor in table if (bindings := table.lookup(aor))]
        for text in batches(every):
            # unanswered, and in order on the stream: they arrive before
            # this command's answer
            self.callRemote(PushBatch, changes=text)
        pushed = len(every)
        log.info("worker {index} connected: {n} AoRs' bindings sent", index=index, n=pushed)
        bans = self.hub.limits.bans_for(self) if self.hub.limits is not None else []
        d = defer.gatherResults(bans, consumeErrors=True)
        return d.addCallback(lambda _: {"bindings": pushed})

    @PushBindings.responder
    def push(self, aor: str, bindings: str) -> dict:
        self.hub.changed_by(self, aor, bindings)
        return {}

    @PushBatch.responder
    def push_batch(self, changes: str) -> dict:
        self.hub.batch_by(self, changes)
        return {}

    @RingGet.responder
    def ring_get(self, ring: str, aor: str, kind: str) -> defer.Deferred:
        d = self.hub.ring_get(ring, aor, kind)
        return d.addCallback(lambda records: {"records": records_to_json(records)})

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if self.index is not None and self.hub.lines.get(self.index) is self:
            del self.hub.lines[self.index]


class Hub(Factory):
    """The parent's side: ``table`` is its copy of every worker's bindings
    (the ring publisher and the admin API read it), ``rings`` its overlay
    services by provider name."""

    def __init__(self, table: BindingTable, rings: Mapping[str, Any]) -> None:
        self.table = table
        self.rings = dict(rings)
        self.lines: dict[int, _ParentSide] = {}
        self.shared = SharedBindings(table, lambda aor, bindings: None)
        self.limits: Any = None  # a SharedLimitsHub: bans and rates across workers

    def buildProtocol(self, addr: Any) -> _ParentSide:
        return _ParentSide(self)

    def changed_by(self, origin: _ParentSide, aor: str, text: str) -> None:
        try:
            bindings = bindings_from_json(text)
        except Exception:
            log.failure("unreadable bindings from worker {index}", index=origin.index)
            return
        self.shared.apply(aor, bindings)
        for line in list(self.lines.values()):
            if line is not origin:
                line.callRemote(PushBindings, aor=aor, bindings=text)  # unanswered: nothing to wait for

    def batch_by(self, origin: _ParentSide, text: str) -> None:
        """A worker's batch: into the table, and the same text on to the others."""
        try:
            changes = batch_from_json(text)
        except Exception:
            log.failure("unreadable bindings from worker {index}", index=origin.index)
            return
        for aor, bindings in changes:
            self.shared.apply(aor, bindings)
        for line in list(self.lines.values()):
            if line is not origin:
                line.callRemote(PushBatch, changes=text)

    def ring_get(self, ring: str, aor: str, kind: str) -> defer.Deferred:
        overlay = self.rings.get(ring)
        node = getattr(overlay, "node", None)
        if node is None or not getattr(node, "joined", True):
            return defer.fail(RuntimeError(f"not joined to {ring} yet"))
        return defer.maybeDeferred(node.get, overlay.keys.key(aor), kind)


class WorkerLink(LimitsWorkerSide, NoncesWorkerSide, amp.AMP):
    """A worker's end: pushes from the parent go into ``shared``;
    ``on_lost`` hears that the parent is gone.  With a ``clock`` the
    worker's own changes go in batches (:data:`BATCH_INTERVAL`), without
    one each at once."""

    def __init__(self, shared_table: BindingTable, on_lost: Callable[[], object], clock: Any = None) -> None:
        super().__init__()
        self.on_lost = on_lost
        self.clock = clock
        self.shared = SharedBindings(shared_table, self._send)
        self._pending: dict[str, list[Binding]] = {}  # AoR -> its latest bindings, not sent yet
        self._call: Any = None
        self._last = float("-inf")  # when the last batch went

    def _send(self, aor: str, bindings: list[Binding]) -> None:
        if self.clock is None:
            self.callRemote(PushBindings, aor=aor, bindings=bindings_to_json(bindings))  # unanswered
            return
        self._pending[aor] = bindings  # the receiver replaces the whole set: the latest is enough
        if self._call is None:
            delay = max(0.0, self._last + BATCH_INTERVAL - self.clock.seconds())
            self._call = self.clock.callLater(delay, self.flush)

    def flush(self) -> None:
        """Send the changes not sent yet (a worker that stops calls it too)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, {}
        if not pending:
            return
        if self.clock is not None:
            self._last = self.clock.seconds()
        for text in batches(pending.items()):
            self.callRemote(PushBatch, changes=text)

    @PushBindings.responder
    def push(self, aor: str, bindings: str) -> dict:
        self.shared.apply(aor, bindings_from_json(bindings))
        return {}

    @PushBatch.responder
    def push_batch(self, changes: str) -> dict:
        for aor, bindings in batch_from_json(changes):
            self.shared.apply(aor, bindings)
        return {}

    def connectionLost(self, reason: Any) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        super().connectionLost(reason)
        self.on_lost()
