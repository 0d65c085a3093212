"""SIGHUP: re-read what may change under a running proxy.

Administrators renew certificates (and edit users files, routes...) without
dropping calls: ``kill -HUP`` makes every part that registered a reload
re-read its files.  Each part keeps what it had when its new files are bad
and says so in the log; one part failing does not stop the others.

The composition root makes one :class:`Reloads` service, adds the reloads
of the parts it built, and puts it under the top service, which installs the
signal handler when it starts and restores the previous one when it stops.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = ["Reloads"]

log = Logger()


class Reloads(Service):
    """The reloads SIGHUP runs, in the order they were added."""

    name = "reloads"

    def __init__(self, reactor: Any, install_signal: bool = True) -> None:
        self.reactor = reactor
        self.install_signal = install_signal and hasattr(signal, "SIGHUP")
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self._previous: Any = None

    def add(self, what: str, action: Callable[[], object]) -> None:
        """Run ``action`` on SIGHUP; ``what`` names it in the log."""
        self._actions.append((what, action))

    def reload(self) -> None:
        """Run every reload now (in the reactor thread)."""
        log.info("SIGHUP: reloading {what}", what=", ".join(w for w, _ in self._actions) or "nothing")
        for what, action in self._actions:
            try:
                action()
            except Exception:
                log.failure("SIGHUP: reloading {what} failed", what=what)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler interrupts whatever the reactor was doing: the
        # reloads run on the reactor's next turn instead.
        self.reactor.callFromThread(self.reload)

    def startService(self) -> None:
        super().startService()
        if self.install_signal:
            self._previous = signal.signal(signal.SIGHUP, self._on_signal)

    def stopService(self) -> Any:
        if self.install_signal and self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()
