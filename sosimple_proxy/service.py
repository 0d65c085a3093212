"""The twistd entry point: read site.ini, pick the reactor, build the services.

This module and :mod:`sosimple_proxy.wiring` (the composition root, which
builds everything) are the only ones that read the configuration; this is
the one place that picks the global reactor.
"""

from __future__ import annotations

import sys
from typing import NoReturn

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
        return build_service(cfg, reactor)
    except ConfigError as e:
        # e.g. [auth] nonce_secret_file that cannot be made: still before any port is bound
        raise SystemExit(str(e)) from None


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
