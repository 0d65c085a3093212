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
    PushBindings,
    RingGet,
    bindings_from_json,
    bindings_to_json,
    records_to_json,
)
from sosimple_proxy.workers.shared_bindings import SharedBindings
from sosimple_proxy.workers.shared_limits import LimitsParentSide, LimitsWorkerSide
from sosimple_proxy.workers.shared_nonces import NoncesParentSide, NoncesWorkerSide

__all__ = ["Hub", "WorkerLink"]

log = Logger()


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
        pushed = 0
        for aor in self.hub.table:
            if bindings := self.hub.table.lookup(aor):
                # unanswered, and in order on the stream: they arrive before
                # this command's answer
                self.callRemote(PushBindings, aor=aor, bindings=bindings_to_json(bindings))
                pushed += 1
        log.info("worker {index} connected: {n} AoRs' bindings sent", index=index, n=pushed)
        bans = self.hub.limits.bans_for(self) if self.hub.limits is not None else []
        d = defer.gatherResults(bans, consumeErrors=True)
        return d.addCallback(lambda _: {"bindings": pushed})

    @PushBindings.responder
    def push(self, aor: str, bindings: str) -> dict:
        self.hub.changed_by(self, aor, bindings)
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

    def ring_get(self, ring: str, aor: str, kind: str) -> defer.Deferred:
        overlay = self.rings.get(ring)
        node = getattr(overlay, "node", None)
        if node is None or not getattr(node, "joined", True):
            return defer.fail(RuntimeError(f"not joined to {ring} yet"))
        return defer.maybeDeferred(node.get, overlay.keys.key(aor), kind)


class WorkerLink(LimitsWorkerSide, NoncesWorkerSide, amp.AMP):
    """A worker's end: pushes from the parent go into ``shared``;
    ``on_lost`` hears that the parent is gone."""

    def __init__(self, shared_table: BindingTable, on_lost: Callable[[], object]) -> None:
        super().__init__()
        self.on_lost = on_lost
        self.shared = SharedBindings(shared_table, self._send)

    def _send(self, aor: str, bindings: list[Binding]) -> None:
        self.callRemote(PushBindings, aor=aor, bindings=bindings_to_json(bindings))  # unanswered

    @PushBindings.responder
    def push(self, aor: str, bindings: str) -> dict:
        self.shared.apply(aor, bindings_from_json(bindings))
        return {}

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.on_lost()
