"""The SIP side's counts, summed over the workers in the parent (issue 12).

With ``[proxy] workers`` the SIP stacks run in the workers, while
``GET /metrics`` and ``GET /calls`` are served by the parent.  Each worker
keeps its own :class:`~sosimple_proxy.tally.SipTally` (one dict addition a
message, as in one process) and, every :data:`REPORT_INTERVAL` seconds,
sends the parent what changed since its last report (:class:`MetricsReporter`,
one AMP message, :class:`~sosimple_proxy.workers.protocol.SipReport`):

- counters as increments (requests by method, final responses by method
  and code, transaction and call-setup histograms, contact-cache hits and
  misses, DNS queries, TLS handshake failures, wrong passwords), and the
  requests per source address since the last report;
- gauges as they are now (live server and client transactions, those
  still without a final response, by method).

The parent adds the increments into one :class:`MergedTally` (which the
metrics collector and ``GET /calls`` read as they read a process's tally)
and keeps each worker's latest gauges, summed when read.  Counters never
go backwards: a worker that dies takes at most its last interval's counts
with it, and its gauges go with its line.  ``GET /calls``' last minute is
kept by the parent's clock, to the report interval.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp

from sosimple_proxy.tally import SECONDS, Buckets, SipTally
from sosimple_proxy.workers.protocol import SipReport

__all__ = ["REPORT_INTERVAL", "ReportingTally", "MetricsReporter", "MergedTally", "WorkersStack", "MetricsParentSide"]

log = Logger()

#: seconds between a worker's reports: how late the parent's counts may be
REPORT_INTERVAL = 1.0
#: source addresses per report (a crowd of strangers is not sent)
MAX_SOURCES = 4096


class ReportingTally(SipTally):
    """A worker's tally: also counts requests per source since the last
    report (the per-second slots are the parent's to keep)."""

    def __init__(self, clock: object) -> None:
        super().__init__(clock)
        self.unsent_sources: dict[str, int] = {}

    def request(self, txn: object) -> None:
        SipTally.request(self, txn)
        sources = self.unsent_sources
        host = txn.source.host  # type: ignore[attr-defined]
        if host in sources:
            sources[host] += 1
        elif len(sources) < MAX_SOURCES:
            sources[host] = 1


def _delta(now: Mapping[Any, int], before: Mapping[Any, int]) -> dict[Any, int]:
    return {k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)}


class MetricsReporter(Service):
    """Worker side: every ``interval`` seconds, what changed goes to the
    parent through ``link()`` (None while there is no line).  ``sources``
    is the worker's :class:`~sosimple_proxy.metrics.Sources` (its tally, a
    :class:`ReportingTally`, its stack, ring locators, DNS lookups)."""

    def __init__(self, clock: Any, sources: Any, link: Callable[[], Any], interval: float = REPORT_INTERVAL) -> None:
        self.clock = clock
        self.sources = sources
        self.link = link
        self.interval = interval
        self._sent: dict[str, Any] = {}
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.report)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.report()  # what the last interval counted

    def counters(self) -> dict[str, Any]:
        """Every counter as it is now (flat: name -> int or float)."""
        s = self.sources
        tally = s.sip
        out: dict[str, Any] = {}
        for method, n in tally.requests.items():
            out[f"req {method}"] = n
        for (method, code), n in tally.responses.items():
            out[f"resp {method} {code}"] = n
        for method, buckets in list(tally.durations.items()) + [("", tally.setup)]:
            name = f"dur {method}" if method else "setup"
            for i, n in enumerate(buckets.counts):
                out[f"{name} {i}"] = n
            out[f"{name} sum"] = buckets.sum
        for name, locator in s.ring_locators.items():
            out[f"hit {name}"] = locator.cache_hits
            out[f"miss {name}"] = locator.cache_misses
        if s.dns is not None:
            out["dns queries"], out["dns failures"] = s.dns.queries, s.dns.failures
        if s.stack is not None:
            out["tls failures"] = s.stack.transport.tls.handshake_failures
        out["auth failures"] = s.auth_failures[0]
        return out

    def report(self) -> None:
        line = self.link()
        if line is None:
            return
        now = self.counters()
        changed = _delta(now, self._sent)
        tally = self.sources.sip
        sources, tally.unsent_sources = tally.unsent_sources, {}
        layer = self.sources.stack.transactions if self.sources.stack is not None else None
        gauges = {
            "server": layer.server_count if layer is not None else 0,
            "client": layer.client_count if layer is not None else 0,
            "pending": tally.pending(),
        }
        body = json.dumps({"counters": changed, "sources": sources, "gauges": gauges}, separators=(",", ":"))
        self._sent = now
        line.callRemote(SipReport, report=body).addErrback(
            lambda f: log.debug("metrics report lost: {why}", why=f.getErrorMessage())
        )


class _Counts:
    """What a collector reads of a ring locator, a DNS resolver, TLS."""

    def __init__(self) -> None:
        self.cache_hits = self.cache_misses = 0
        self.queries = self.failures = 0
        self.handshake_failures = 0


class MergedTally(SipTally):
    """Parent side: the workers' counts added up, read as one process's
    tally is (the collector, ``GET /calls``), plus the counters a worker
    keeps elsewhere (contact cache, DNS, TLS, wrong passwords)."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.gauges: dict[int, dict[str, Any]] = {}
        self.ring_locators: dict[str, _Counts] = {}
        self.dns = _Counts()
        self.tls = _Counts()
        self.auth_failures = [0]

    def merge(self, index: int, report: Mapping[str, Any]) -> None:
        """Worker ``index``'s report: its increments added, its gauges kept."""
        now = int(self.seconds())
        if now != self._second:
            self._turn(now)
        for key, n in report.get("counters", {}).items():
            self._add(key, n)
        sources = self._sources
        for host, n in report.get("sources", {}).items():
            if host in sources or len(sources) < MAX_SOURCES:
                sources[host] = sources.get(host, 0) + int(n)
        gauges = report.get("gauges")
        if gauges is not None:
            self.gauges[index] = gauges

    def _add(self, key: str, n: Any) -> None:
        kind, _, rest = key.partition(" ")
        if kind == "req":
            self.requests[rest] = self.requests.get(rest, 0) + int(n)
        elif kind == "resp":
            method, _, code = rest.rpartition(" ")
            k = (method, int(code))
            self.responses[k] = self.responses.get(k, 0) + int(n)
            self._finals[k] = self._finals.get(k, 0) + int(n)
        elif kind in ("dur", "setup"):
            method, _, slot = rest.rpartition(" ")
            buckets = self.setup if kind == "setup" else self.durations.get(method)
            if buckets is None:
                buckets = self.durations[method] = Buckets(SECONDS)
            if slot == "sum":
                buckets.sum += float(n)
            else:
                buckets.counts[int(slot)] += int(n)
        elif kind in ("hit", "miss"):
            counts = self.ring_locators.setdefault(rest, _Counts())
            if kind == "hit":
                counts.cache_hits += int(n)
            else:
                counts.cache_misses += int(n)
        elif key == "dns queries":
            self.dns.queries += int(n)
        elif key == "dns failures":
            self.dns.failures += int(n)
        elif key == "tls failures":
            self.tls.handshake_failures += int(n)
        elif key == "auth failures":
            self.auth_failures[0] += int(n)

    def gone(self, index: int) -> None:
        """Worker ``index``'s line is lost: its gauges go (its counts stay)."""
        self.gauges.pop(index, None)

    def pending(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for gauges in self.gauges.values():
            for method, n in gauges.get("pending", {}).items():
                out[method] = out.get(method, 0) + int(n)
        return out


class _Layer:
    def __init__(self, merged: MergedTally) -> None:
        self.merged = merged

    @property
    def server_count(self) -> int:
        return sum(int(g.get("server", 0)) for g in self.merged.gauges.values())

    @property
    def client_count(self) -> int:
        return sum(int(g.get("client", 0)) for g in self.merged.gauges.values())


class _Transport:
    def __init__(self, merged: MergedTally) -> None:
        self.tls = merged.tls


class WorkersStack:
    """What the collector and ``GET /calls`` read of a SIP stack
    (``transactions.server_count``/``client_count``,
    ``transport.tls.handshake_failures``), summed over the workers."""

    def __init__(self, merged: MergedTally) -> None:
        self.transactions = _Layer(merged)
        self.transport = _Transport(merged)


class MetricsParentSide(amp.CommandLocator):
    """The parent's responder (a base of the hub's protocol, whose ``hub``
    has ``metrics``: a :class:`MergedTally` or None, and whose line knows
    its worker's ``index``)."""

    hub: Any
    index: int | None

    @SipReport.responder
    def sip_report(self, report: str) -> dict:
        merged = self.hub.metrics
        if merged is not None and self.index is not None:
            try:
                merged.merge(self.index, json.loads(report))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                log.failure("unreadable metrics report from worker {index}", index=self.index)
        return {}

