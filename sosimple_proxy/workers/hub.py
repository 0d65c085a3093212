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
    Commit,
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
from sosimple_proxy.workers.shared_bindings import SharedBindings, binding_key
from sosimple_proxy.workers.shared_limits import LimitsParentSide, LimitsWorkerSide
from sosimple_proxy.workers.shared_metrics import MetricsParentSide
from sosimple_proxy.workers.shared_nonces import NoncesParentSide, NoncesWorkerSide
from sosimple_proxy.workers.shared_presence import PresenceParentSide, PresenceWorkerSide

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


class _ParentSide(LimitsParentSide, NoncesParentSide, MetricsParentSide, PresenceParentSide, amp.AMP):
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
        every = [(aor, bindings, []) for aor in table if (bindings := table.lookup(aor))]
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
    def push(self, aor: str, bindings: str, removed: str) -> dict:
        self.hub.changed_by(self, aor, bindings, removed)
        return {}

    @Commit.responder
    def commit(self, aor: str) -> Any:
        """Answered once the rings' writes of ``aor`` are over: the worker
        flushed the AoR's delta before asking, on this line, so they are
        under way."""
        commit = self.hub.commit
        waiting = commit(aor) if commit is not None else None
        if waiting is None:
            return {"ok": True}
        return waiting.addCallback(lambda ok: {"ok": bool(ok)})

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
        self.drop_presence_watches()
        if self.index is not None and self.hub.lines.get(self.index) is self:
            del self.hub.lines[self.index]
            if self.hub.metrics is not None:
                self.hub.metrics.gone(self.index)


class Hub(Factory):
    """The parent's side: ``table`` is its copy of every worker's bindings
    (the ring publisher and the admin API read it), ``rings`` its overlay
    services by provider name."""

    def __init__(self, table: BindingTable, rings: Mapping[str, Any]) -> None:
        self.table = table
        self.rings = dict(rings)
        self.lines: dict[int, _ParentSide] = {}
        self.shared = SharedBindings(table, lambda aor, bindings, removed: None)
        self.limits: Any = None  # a SharedLimitsHub: bans and rates across workers
        # commit(aor): Deferred[bool] of the rings' newest write of aor, or
        # None (nothing written): what a worker's REGISTER answer waits for
        self.commit: Callable[[str], Any] | None = None
        self.metrics: Any = None  # a MergedTally: the workers' SIP counts, summed
        self.presence: Any = None  # a PresenceRing on the parent's node: the workers' presence agents use it

    def buildProtocol(self, addr: Any) -> _ParentSide:
        return _ParentSide(self)

    def changed_by(self, origin: _ParentSide, aor: str, text: str, removed: str = "[]") -> None:
        """A worker's delta: merged here, passed as it is to the others,
        which merge it the same way (so concurrent REGISTERs for one AoR at
        two workers both stay, issue 12)."""
        try:
            bindings, gone = bindings_from_json(text), bindings_from_json(removed)
        except Exception:
            log.failure("unreadable bindings from worker {index}", index=origin.index)
            return
        self.shared.apply(aor, bindings, gone)
        for line in list(self.lines.values()):
            if line is not origin:
                line.callRemote(PushBindings, aor=aor, bindings=text, removed=removed)  # unanswered

    def batch_by(self, origin: _ParentSide, text: str) -> None:
        """A worker's batch: into the table, and the same text on to the others."""
        try:
            changes = batch_from_json(text)
        except Exception:
            log.failure("unreadable bindings from worker {index}", index=origin.index)
            return
        for aor, bindings, removed in changes:
            self.shared.apply(aor, bindings, removed)
        for line in list(self.lines.values()):
            if line is not origin:
                line.callRemote(PushBatch, changes=text)

    def ring_get(self, ring: str, aor: str, kind: str) -> defer.Deferred:
        overlay = self.rings.get(ring)
        node = getattr(overlay, "node", None)
        if node is None or not getattr(node, "joined", True):
            return defer.fail(RuntimeError(f"not joined to {ring} yet"))
        return defer.maybeDeferred(node.get, overlay.keys.key(aor), kind)


class WorkerLink(LimitsWorkerSide, NoncesWorkerSide, PresenceWorkerSide, amp.AMP):
    """A worker's end: pushes from the parent go into ``shared``;
    ``on_lost`` hears that the parent is gone.  With a ``clock`` the
    worker's own changes go in batches (:data:`BATCH_INTERVAL`), without
    one each at once."""

    def __init__(self, shared_table: BindingTable, on_lost: Callable[[], object], clock: Any = None) -> None:
        super().__init__()
        self.on_lost = on_lost
        self.clock = clock
        self.shared = SharedBindings(shared_table, self._send)
        # AoR -> its delta not sent yet: (changed, removed), by binding key
        self._pending: dict[str, tuple[dict[str, Binding], dict[str, Binding]]] = {}
        self._call: Any = None
        self._last = float("-inf")  # when the last batch went
        self._commits: list[tuple[str, defer.Deferred]] = []  # Commit asks waiting for the next batch

    def _send(self, aor: str, bindings: list[Binding], removed: list[Binding]) -> None:
        if self.clock is None:
            self.callRemote(PushBindings, aor=aor, bindings=bindings_to_json(bindings),
                            removed=bindings_to_json(removed))  # unanswered
            return
        # deltas of one AoR add up: the latest change of each binding wins
        changed, gone = self._pending.setdefault(aor, ({}, {}))
        for b in bindings:
            key = binding_key(b)
            changed[key] = b
            gone.pop(key, None)
        for b in removed:
            key = binding_key(b)
            gone[key] = b
            changed.pop(key, None)
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
        rows = [(aor, list(changed.values()), list(gone.values())) for aor, (changed, gone) in pending.items()]
        for text in batches(rows):
            self.callRemote(PushBatch, changes=text)
        commits, self._commits = self._commits, []
        for aor, d in commits:  # after the batch on the stream: the parent has the deltas first
            self.callRemote(Commit, aor=aor).chainDeferred(d)

    def commit(self, aor: str) -> defer.Deferred:
        """Ask the parent whether the ring holds ``aor``'s bindings, once
        the delta that changed them has gone (with the next batch)."""
        if not self._pending:
            return self.callRemote(Commit, aor=aor)
        d: defer.Deferred = defer.Deferred()
        self._commits.append((aor, d))
        return d

    @PushBindings.responder
    def push(self, aor: str, bindings: str, removed: str) -> dict:
        self.shared.apply(aor, bindings_from_json(bindings), bindings_from_json(removed))
        return {}

    @PushBatch.responder
    def push_batch(self, changes: str) -> dict:
        for aor, bindings, removed in batch_from_json(changes):
            self.shared.apply(aor, bindings, removed)
        return {}

    def connectionLost(self, reason: Any) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        super().connectionLost(reason)
        self.on_lost()
