"""The parent starts its workers and starts again one that dies.

Each worker is ``python -m sosimple_proxy.worker`` with the same site.ini;
its log lines come to the parent on its stdout and are logged again with
the worker's number.  A worker that ends while the pool runs is started
again after a pause that grows while it keeps dying young (0.5 s doubling
to 10 s; back to 0.5 s after a minute of life).  Stopping the pool sends
SIGTERM to each worker, SIGKILL to any still there after ``grace`` seconds.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

__all__ = ["WorkerPool"]

log = Logger()

FIRST_DELAY = 0.5
MAX_DELAY = 10.0
STEADY = 60.0  # seconds of life after which a death is not "young"


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.started = pool.reactor.seconds()
        self.ended: defer.Deferred = defer.Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                log.info("worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace").rstrip())

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.pool._ended(self, reason)


class WorkerPool(Service):
    """``count`` workers, ``argv(index)`` the command line of each."""

    name = "workers"

    def __init__(self, reactor: Any, count: int, argv: Callable[[int], Sequence[str]], grace: float = 5.0) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = argv
        self.grace = grace
        self.workers: dict[int, _Worker] = {}
        self.transports: dict[int, Any] = {}
        self.delays: dict[int, float] = {}
        self._pending: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._spawn(index)

    def signal_all(self, signal: str) -> None:
        """Pass a signal on (SIGHUP: every worker re-reads its files)."""
        for transport in list(self.transports.values()):
            try:
                transport.signalProcess(signal)
            except Exception:
                pass

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if not self.running:
            return
        worker = _Worker(self, index)
        args = list(self.argv(index))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        transport = self.reactor.spawnProcess(worker, args[0], args, env=env, childFDs={0: "w", 1: "r", 2: "r"})
        self.workers[index] = worker
        self.transports[index] = transport
        log.info("worker {index} started (pid {pid})", index=index, pid=transport.pid)

    def _ended(self, worker: _Worker, reason: Any) -> None:
        index = worker.index
        if self.workers.get(index) is not worker:
            return
        del self.workers[index]
        self.transports.pop(index, None)
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        delay = FIRST_DELAY if lived >= STEADY else min(MAX_DELAY, self.delays.get(index, FIRST_DELAY / 2) * 2)
        self.delays[index] = delay
        log.warn("worker {index} ended after {lived:.1f} s ({why}); starting it again in {delay:g} s",
                 index=index, lived=lived, why=reason.value, delay=delay)
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        waits = []
        for index, transport in list(self.transports.items()):
            worker = self.workers.get(index)
            if worker is None:
                continue
            waits.append(worker.ended)
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass

        def kill() -> None:
            for index, transport in list(self.transports.items()):
                try:
                    transport.signalProcess("KILL")
                    log.warn("worker {index} did not stop in {grace:g} s: killed", index=index, grace=self.grace)
                except Exception:
                    pass

        timer = self.reactor.callLater(self.grace, kill)
        done = defer.DeferredList(waits, consumeErrors=True)
        return done.addBoth(lambda _: timer.cancel() if timer.active() else None)


def worker_argv(config_path: str, count: int, directory: str) -> Callable[[int], list[str]]:
    """The command line of worker ``index``."""

    def argv(index: int) -> list[str]:
        return [sys.executable, "-m", "sosimple_proxy.worker", "--config", os.path.abspath(config_path),
                "--index", str(index), "--count", str(count), "--dir", directory]

    return argv
