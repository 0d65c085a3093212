"""Counting without cost: plain integers and bucket lists that the metrics
collector (``sosimple_proxy/metrics.py``) reads when Prometheus scrapes.

The hot path only adds to an int or a list slot (no lock, no label lookup,
no string formatting); turning them into metric families happens at scrape
time.  Twisted runs everything on one thread, so no lock is needed.  This
module imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

#: seconds: a SIP transaction, a ring lookup (1 ms .. 32 s, the RFC 3261 64*T1)
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 32.0)
#: ring hops of a lookup
HOPS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)


class Buckets:
    """A histogram: per-bucket counts (not cumulative), their sum and count.
    A value lands in the first bucket whose bound is >= it (Prometheus's ``le``)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = SECONDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, cumulative count), ...]`` ending with ``+Inf``, as
        ``HistogramMetricFamily`` takes them."""
        out, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class LookupStats:
    """A ring member's lookups: hops and seconds of those that succeeded,
    and how many failed."""

    __slots__ = ("hops", "seconds", "failures")

    def __init__(self) -> None:
        self.hops = Buckets(HOPS)
        self.seconds = Buckets(SECONDS)
        self.failures = 0


#: methods counted by name; anything else is counted as OTHER (a label per
#: invented method would let a stranger grow the metrics without bound)
METHODS = frozenset(
    "INVITE ACK CANCEL BYE OPTIONS REGISTER MESSAGE SUBSCRIBE NOTIFY INFO UPDATE PRACK REFER PUBLISH".split()
)
#: the window of the last-minute view (seconds, one slot each)
WINDOW = 60


class SipTally:
    """The SIP side's counts, fed by the transaction layer (its ``observer``):
    :meth:`request` for each new server transaction, :meth:`final` for its
    first final response.  Per message: a few dict additions, no formatting.

    Kept for the metrics: requests by method, final responses by method and
    code, transaction seconds by method, call setup seconds (INVITE to 2xx).
    Kept for ``GET /calls``: the same by the second for the last minute,
    and requests per source address.
    """

    def __init__(self, clock: object) -> None:
        self.seconds = clock.seconds  # type: ignore[attr-defined]
        self.requests: dict[str, int] = {}
        self.responses: dict[tuple[str, int], int] = {}
        self.durations: dict[str, Buckets] = {}
        self.setup = Buckets(SECONDS)
        #: live server transactions without a final response -> when they began
        self.started: dict[object, float] = {}
        # the last minute: slot = second % WINDOW, each (second, finals, sources);
        # the current second's dicts are also kept at hand
        self._slots: list[tuple[int, dict[tuple[str, int], int], dict[str, int]]] = [
            (-1, {}, {}) for _ in range(WINDOW)
        ]
        #: when ``started`` is this long, drop the transactions that ended unanswered
        self._sweep_at = 10_000
        self._second = -1
        self._finals: dict[tuple[str, int], int] = {}
        self._sources: dict[str, int] = {}

    def _sweep(self) -> None:
        """Forget transactions that ended without a final response (a TU
        that never answered), so they are not kept alive by this table."""
        started = self.started
        for txn in [t for t in started if getattr(t, "terminated", False)]:
            del started[txn]
        self._sweep_at = max(10_000, 2 * len(started))

    def _turn(self, second: int) -> None:
        """A new second: its slot starts empty."""
        self._second = second
        self._finals, self._sources = {}, {}
        self._slots[second % WINDOW] = (second, self._finals, self._sources)

    def request(self, txn: object) -> None:
        """A new request began a server transaction."""
        method = txn.request.method  # type: ignore[attr-defined]
        if method not in METHODS:
            method = "OTHER"
        requests = self.requests
        requests[method] = requests.get(method, 0) + 1
        now = self.seconds()
        started = self.started
        if len(started) >= self._sweep_at:
            self._sweep()
        started[txn] = now
        if int(now) != self._second:
            self._turn(int(now))
        sources = self._sources
        host = txn.source.host  # type: ignore[attr-defined]
        if host in sources:
            sources[host] += 1
        elif len(sources) < 4096:  # a crowd of strangers is not kept
            sources[host] = 1

    def final(self, txn: object, status: int) -> None:
        """A server transaction sent its first final response."""
        method = txn.request.method  # type: ignore[attr-defined]
        if method not in METHODS:
            method = "OTHER"
        key = (method, status)
        responses = self.responses
        responses[key] = responses.get(key, 0) + 1
        now = self.seconds()
        if int(now) != self._second:
            self._turn(int(now))
        finals = self._finals
        finals[key] = finals.get(key, 0) + 1
        began = self.started.pop(txn, None)
        if began is None:
            return
        elapsed = now - began
        buckets = self.durations.get(method)
        if buckets is None:
            buckets = self.durations[method] = Buckets(SECONDS)
        buckets.observe(elapsed)
        if method == "INVITE" and status < 300:
            self.setup.observe(elapsed)

    # -- read at scrape time or by GET /calls

    def pending(self) -> dict[str, int]:
        """Live server transactions still without a final response, by method
        (those that ended without one are dropped here)."""
        out: dict[str, int] = {}
        self._sweep()
        for txn in self.started:
            method = txn.request.method  # type: ignore[attr-defined]
            out[method] = out.get(method, 0) + 1
        return out

    def last_minute(self) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
        """Final responses by (method, code) and requests by source address
        over the last :data:`WINDOW` seconds."""
        now = int(self.seconds())
        finals: dict[tuple[str, int], int] = {}
        sources: dict[str, int] = {}
        for second, f, s in self._slots:
            if now - WINDOW < second <= now:
                for k, n in f.items():
                    finals[k] = finals.get(k, 0) + n
                for k, n in s.items():
                    sources[k] = sources.get(k, 0) + n
        return finals, sources
