"""``python -m sosimple_proxy.worker``: one worker of ``[proxy] workers``.

The parent (the twistd process, :mod:`sosimple_proxy.workers.pool`) starts
it with the same site.ini, its index, the count and the parent's private
directory.  Its log lines go to stdout, which the parent logs again under
the worker's number.  SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys

from twisted.logger import FileLogObserver, formatEvent, globalLogBeginner


def _line(event: dict) -> str | None:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    return text.replace("\n", "\n    ") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sosimple_proxy.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    # The parent passes SIGHUP on; until our reloads take it over (once we
    # serve), it must not end us (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    from sosimple_proxy.config import ConfigError, load_config
    from sosimple_proxy.service import tune_garbage_collector

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    globalLogBeginner.beginLoggingTo([FileLogObserver(sys.stdout, _line)], redirectStandardIO=False)
    from twisted.internet import reactor

    from sosimple_proxy.wiring import build_worker

    service = build_worker(cfg, reactor, args.index, args.count, args.dir)
    tune_garbage_collector()
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
