"""The twistd entry point: read site.ini, pick the reactor, build the services.

This module and :mod:`sosimple_proxy.wiring` (the composition root, which
builds everything) are the only ones that read the configuration; this is
the one place that picks the global reactor.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.application.service import MultiService

from sosimple_proxy.config import ConfigError, load_config
from sosimple_proxy.wiring import build_service


def makeService(path: str) -> MultiService:
    """The twistd entry point: a bad config ends the process with one line.

    ``SystemExit`` with a string prints that string on stderr and exits with
    status 1; twistd prints no usage text for it, and nothing is bound yet.
    """
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    from twisted.internet import reactor

    tune_garbage_collector()
    try:
        top = build_service(cfg, reactor)
    except ConfigError as e:
        # e.g. [auth] nonce_secret_file that cannot be made: still before any port is bound
        raise SystemExit(str(e)) from None
    if cfg.section("log")["format"] == "json":
        from sosimple_proxy.logs import json_observer

        return LoggedService(top, json_observer(sys.stdout))
    return top


class LoggedService(MultiService):
    """The proxy's services, bringing their own log observer to twistd.

    twistd starts logging after ``makeService``, with the application's
    ``ILogObserver`` component when it has one (``AppLogger.start``); the
    application is the parent this service is given, so that is where the
    observer goes.  Lines logged before then are kept by twistd and reach
    this observer too.
    """

    def __init__(self, inner: MultiService, observer: Any) -> None:
        super().__init__()
        self.observer = observer
        self.inner = inner
        inner.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> Any:
        from twisted.logger import ILogObserver

        if hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.observer)
        return super().setServiceParent(parent)

    def __getattr__(self, name: str) -> Any:
        # tests and tools read the parts off the top service (top.overlay, top.limits)
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


def check_and_exit(path: str) -> NoReturn:
    """``--check``: validate ``path`` as startup would, print ``ok`` or the
    warnings, and end the process (0, or 1 with the one line) before twistd
    has bound a port or written a pid file."""
    from sosimple_proxy.site_check import run_check

    raise SystemExit(run_check(path, sys.stdout, sys.stderr))


def tune_garbage_collector() -> None:
    """Fewer full collections: a proxy keeps every transaction alive for
    about 32 s (Timers J, K, M), so under load the heap holds hundreds of
    thousands of young containers, and CPython's default thresholds make a
    full collection walk them every few thousand messages (measured: half
    the CPU of a proxied MESSAGE).  Our transactions drop their reference
    cycles when they end, so reference counting frees them and the cyclic
    collector has little to find; it still runs, less often."""
    import gc

    gc.freeze()  # what startup built lives as long as the process
    gc.set_threshold(10_000, 10, 1_000)
