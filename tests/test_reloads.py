"""SIGHUP runs the reloads the composition root registered."""

from __future__ import annotations

import os
import signal

from twisted.internet import defer, reactor as global_reactor, task
from twisted.trial import unittest

from sosimple_proxy.reloads import Reloads


class CallFromThreadClock(task.Clock):
    def callFromThread(self, f, *a, **kw):  # type: ignore[no-untyped-def]
        self.callLater(0, f, *a, **kw)


def test_reload_runs_every_action_in_order_and_survives_a_failure():
    done = []
    reloads = Reloads(task.Clock(), install_signal=False)
    reloads.add("tls", lambda: done.append("tls"))
    reloads.add("broken", lambda: 1 / 0)
    reloads.add("users", lambda: done.append("users"))
    reloads.reload()
    assert done == ["tls", "users"]


def test_the_signal_handler_defers_to_the_reactor():
    clock = CallFromThreadClock()
    done = []
    reloads = Reloads(clock, install_signal=False)
    reloads.add("tls", lambda: done.append("tls"))
    reloads._on_signal(signal.SIGHUP, None)
    assert done == []
    clock.advance(0)
    assert done == ["tls"]


class SignalTests(unittest.TestCase):
    def test_sighup_reloads_and_stop_restores_the_handler(self) -> defer.Deferred:
        before = signal.getsignal(signal.SIGHUP)
        done: list[str] = []
        reloads = Reloads(global_reactor)
        reloads.add("tls", lambda: done.append("tls"))
        reloads.startService()
        self.addCleanup(lambda: signal.signal(signal.SIGHUP, before))

        async def run() -> None:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if done:
                    break
                await task.deferLater(global_reactor, 0.01, lambda: None)
            self.assertEqual(done, ["tls"])
            await defer.maybeDeferred(reloads.stopService)
            self.assertEqual(signal.getsignal(signal.SIGHUP), before)

        return defer.ensureDeferred(run())
