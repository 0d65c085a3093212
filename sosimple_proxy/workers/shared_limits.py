"""``[limits]`` shared by the worker processes of one proxy (issue 12).

Nothing may be weaker with N workers than with one, yet the check on each
request must stay a few dict operations, with no round trip:

- Each worker keeps its own limiter (:class:`WorkerLimits`), as a single
  process does.  A source whose requests all reach one worker (one UDP
  socket, one TCP connection: the usual phone) is judged there at once,
  503 and all.
- Each worker also tallies, per source, the requests it let through and the
  wrong credentials it saw, and sends the tallies to the parent every
  :data:`FLUSH_INTERVAL` seconds (one AMP message for every source; sooner
  past :data:`MAX_BATCH` sources).  The parent's limiter (the one its admin
  API shows) charges them to one bucket and one failure window per source
  (:meth:`~sosimple_proxy.security.limits.Limits.charge`): a source spread
  over many sockets, so over every worker, is counted once and banned when
  the sum is over its rate, at most a flush interval late.  A worker sees
  a part of a source's traffic, so its own check never bans what the sum
  would not.
- A ban made anywhere goes to the parent at once (not batched), which keeps
  it, logs it (once: the workers' limiters log nothing) and passes it to
  every other worker; a worker that connects (a restarted one) gets every
  live ban before it serves.  A ban that ends at the parent (``DELETE
  /limits/banned/{address}``, or its time) is lifted in every worker.

Cost: the tally adds about 0.7 us to a worker's check (1.5 us against
0.8 us for a plain limiter, measured on a loaded 2-core machine), and the
parent does one bucket update per source per worker per flush interval, so
a flood of spoofed sources costs the parent about what it costs the
workers.

The caps on what a process holds (``max_connections``,
``max_connections_per_source``, ``max_transactions``) are the proxy's:
each worker enforces its share, the cap divided by the worker count,
rounded up (:func:`worker_share`), so N workers together never hold more
than one process would.  Counting them in the parent instead would put a
round trip on every accepted connection and every new transaction, and
the kernel spreads connections and sources evenly over the workers (by
their addresses' hash), so the shares fill together under load.  The cost:
one source's connections are spread by chance, so it may meet its share
at one worker a little before the whole cap (with 32 per source and 2
workers, a source with 20 connections does in about 1 case in 400);
allowed sources are never capped.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from sosimple_proxy.security.limits import ALLOW, Ban, Limits, LimitsConfig, Verdict
from sosimple_proxy.workers.protocol import BanSource, LimitsReport, UnbanSource

__all__ = ["worker_share", "WorkerLimits", "SharedLimitsHub", "LimitsParentSide", "LimitsWorkerSide", "FLUSH_INTERVAL", "MAX_BATCH"]

log = Logger()

# Seconds between a worker's reports: how late a spread source's ban may come.
FLUSH_INTERVAL = 0.1
# Sources per report: keeps one AMP value (at most 64 KiB) well in bounds
# with IPv6 addresses (about 55 bytes an entry).
MAX_BATCH = 1000


def worker_share(config: LimitsConfig, count: int) -> LimitsConfig:
    """A worker's share of the proxy's caps: each divided by ``count``,
    rounded up (0, no cap, stays 0)."""

    def share(cap: int) -> int:
        return math.ceil(cap / count)

    return attrs.evolve(
        config,
        max_connections=share(config.max_connections),
        max_connections_per_source=share(config.max_connections_per_source),
        max_transactions=share(config.max_transactions),
    )


def _quiet(event: dict) -> None:
    """A worker's limiter logs nothing: the parent logs each ban once."""


def _ignore(failure: Any) -> None:
    log.debug("limits: message between processes lost: {why}", why=failure.getErrorMessage())


class WorkerLimits(Limits):
    """A worker's limiter: judges alone, tells the parent what it let
    through and whom it banned, and takes the bans the parent sends.
    ``link()`` is the AMP line to the parent (None while there is none)."""

    def __init__(
        self,
        clock: IReactorTime,
        config: LimitsConfig,
        link: Callable[[], Any],
        flush_interval: float = FLUSH_INTERVAL,
        **kw: Any,
    ) -> None:
        super().__init__(clock, config, log=Logger(observer=_quiet), **kw)
        self.link = link
        self.flush_interval = flush_interval
        self._tally_requests: dict[str, int] = {}
        self._tally_failures: dict[str, int] = {}
        self._flush_call: IDelayedCall | None = None
        self._counting = config.requests_per_second > 0
        self._applying = False
        self.on_ban.append(self._banned_here)

    # -- what passes here

    def check(self, source: str) -> Verdict:
        verdict = Limits.check(self, source)
        if verdict is ALLOW and self._counting:
            tally = self._tally_requests
            tally[source] = tally.get(source, 0) + 1
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(self.flush_interval, self.flush)
            elif len(tally) >= MAX_BATCH:
                self.flush()
        return verdict

    def auth_failed(self, source: str) -> Verdict:
        verdict = Limits.auth_failed(self, source)
        if verdict is ALLOW and self.config.auth_failures > 0:
            tally = self._tally_failures
            tally[source] = tally.get(source, 0) + 1
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(self.flush_interval, self.flush)
            elif len(tally) >= MAX_BATCH:
                self.flush()
        return verdict

    def flush(self) -> None:
        """Send the tallies to the parent now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        requests, failures = self._tally_requests, self._tally_failures
        if not requests and not failures:
            return
        self._tally_requests, self._tally_failures = {}, {}
        link = self.link()
        if link is None:
            return  # no parent: nobody to tell (the worker is about to stop)
        link.callRemote(
            LimitsReport, requests=json.dumps(requests, separators=(",", ":")),
            failures=json.dumps(failures, separators=(",", ":")),
        ).addErrback(_ignore)

    def _banned_here(self, ban: Ban) -> None:
        if self._applying:
            return
        link = self.link()
        if link is not None:
            seconds = ban.until - self._clock.seconds()
            link.callRemote(BanSource, address=ban.address, reason=ban.reason, seconds=seconds).addErrback(_ignore)

    # -- what the parent says

    def apply_ban(self, address: str, reason: str, seconds: float) -> None:
        """A ban made elsewhere: kept here, not sent back."""
        self._applying = True
        try:
            self.ban(address, reason, seconds)
        finally:
            self._applying = False

    def apply_unban(self, address: str, why: str) -> None:
        self.unban(address, why)

    def stop(self) -> None:
        self.flush()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        super().stop()


class SharedLimitsHub:
    """The parent's side: ``limits`` is its limiter (the admin API's),
    ``lines`` the hub's live lines by worker index."""

    def __init__(self, clock: IReactorTime, limits: Limits, lines: Mapping[int, Any]) -> None:
        self.clock = clock
        self.limits = limits
        self.lines = lines
        self._origin: Any = None
        limits.on_ban.append(self._banned)
        limits.on_lift.append(self._lifted)

    def report(self, requests: Mapping[str, int], failures: Mapping[str, int]) -> None:
        """A worker's tallies: into the one bucket and window per source."""
        for source, count in requests.items():
            self.limits.charge(source, int(count))
        most = self.limits.config.auth_failures
        for source, count in failures.items():
            for _ in range(min(int(count), most)):
                if self.limits.auth_failed(source) is not ALLOW:
                    break

    def ban_from(self, line: Any, address: str, reason: str, seconds: float) -> None:
        """A worker banned ``address``: the others must too."""
        self._origin = line
        try:
            self.limits.ban(address, reason, seconds)
        finally:
            self._origin = None

    def bans_for(self, line: Any) -> list[Any]:
        """Every live ban, sent to a worker that has just connected."""
        now = self.clock.seconds()
        return [
            line.callRemote(BanSource, address=ban.address, reason=ban.reason, seconds=ban.until - now)
            for ban in self.limits.live_bans()
        ]

    def _banned(self, ban: Ban) -> None:
        seconds = ban.until - self.clock.seconds()
        for line in list(self.lines.values()):
            if line is not self._origin:
                line.callRemote(BanSource, address=ban.address, reason=ban.reason, seconds=seconds).addErrback(_ignore)

    def _lifted(self, address: str, why: str) -> None:
        for line in list(self.lines.values()):
            line.callRemote(UnbanSource, address=address, why=why).addErrback(_ignore)


class LimitsParentSide(amp.CommandLocator):
    """The parent's responders (a base of the hub's protocol, whose ``hub``
    has ``limits``: a :class:`SharedLimitsHub` or None)."""

    hub: Any

    @LimitsReport.responder
    def limits_report(self, requests: str, failures: str) -> dict:
        shared = self.hub.limits
        if shared is not None:
            shared.report(json.loads(requests), json.loads(failures))
        return {}

    @BanSource.responder
    def ban_source(self, address: str, reason: str, seconds: float) -> dict:
        shared = self.hub.limits
        if shared is not None:
            shared.ban_from(self, address, reason, seconds)
        return {}


class LimitsWorkerSide(amp.CommandLocator):
    """A worker's responders (a base of its line to the parent)."""

    limits: WorkerLimits | None = None

    @BanSource.responder
    def ban_source(self, address: str, reason: str, seconds: float) -> dict:
        if self.limits is not None:
            self.limits.apply_ban(address, reason, seconds)
        return {}

    @UnbanSource.responder
    def unban_source(self, address: str, why: str) -> dict:
        if self.limits is not None:
            self.limits.apply_unban(address, why)
        return {}
