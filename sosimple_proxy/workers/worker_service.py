"""A worker's top service: the line to the parent comes first.

The SIP stack under it starts only once the parent has pushed every
binding (so a restarted worker never answers 404 for a registered user),
and the worker stops when the line to its parent breaks: a worker must not
outlive the parent that keeps its ring and its bindings' twins.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.workers.hub import WorkerLink
from sosimple_proxy.workers.parent import HUB_SOCKET
from sosimple_proxy.workers.protocol import Hello

__all__ = ["WorkerService"]

log = Logger()


class WorkerService(MultiService):
    def __init__(self, reactor: Any, index: int, directory: str) -> None:
        super().__init__()
        self.reactor = reactor
        self.index = index
        self.directory = directory
        self.table: BindingTable | None = None  # the proxy's, set by the composition root
        self.link: WorkerLink | None = None
        # shared with the other workers through the parent (set by the composition root)
        self.limits: Any = None
        self.nonces: Any = None
        self._children_started = False

    def get_link(self) -> WorkerLink | None:
        return self.link

    def privilegedStartService(self) -> None:
        pass  # nothing binds before the parent has spoken (see startService)

    def startService(self) -> None:
        self.running = 1  # the children start later, once the bindings are in
        assert self.table is not None
        table = self.table
        endpoint = UNIXClientEndpoint(self.reactor, os.path.join(self.directory, HUB_SOCKET))
        d = endpoint.connect(Factory.forProtocol(lambda: WorkerLink(table, self._lost, self.reactor)))
        d.addCallback(self._connected)
        d.addErrback(self._failed)

    def _connected(self, link: WorkerLink) -> Any:
        self.link = link
        link.limits, link.nonces = self.limits, self.nonces
        return link.callRemote(Hello, index=self.index).addCallback(self._ready)

    def _ready(self, answer: dict) -> None:
        log.info("worker {index}: {n} AoRs' bindings from the parent; serving SIP", index=self.index,
                 n=answer["bindings"])
        handoff = None
        for child in self:
            handoff = getattr(child, "handoff", None) or handoff
        if handoff is not None:
            handoff.start()
        for child in self:
            child.privilegedStartService()
        MultiService.startService(self)
        self._children_started = True

    def _failed(self, failure: Any) -> None:
        log.error("worker {index}: no line to the parent: {why}", index=self.index, why=failure.getErrorMessage())
        self._stop_reactor()

    def _lost(self) -> None:
        if self.running:
            log.warn("worker {index}: the parent is gone; stopping", index=self.index)
            self._stop_reactor()

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Any:
        if self.link is not None:
            self.link.flush()  # the last bindings, before the line goes
        if not self._children_started:
            self.running = 0
            return None
        for child in self:
            handoff = getattr(child, "handoff", None)
            if handoff is not None:
                handoff.stop()
        return super().stopService()
