"""Seeing the process run: metrics, the request lines of the log, the SIP
trace and the admin views that read them, joined to the parts the
composition root (``wiring.py``) built.  Kept here so that ``wiring.py``
only calls :func:`observe_sip` and :func:`observe_admin`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from sosimple_proxy.config import Config
from sosimple_proxy.location.gateways import GatewayProber
from sosimple_proxy.location.pstn import PstnLocator
from sosimple_proxy.location.ring import RingLocator
from sosimple_proxy.logs import Decisions, TracingTransport, traced_receive
from sosimple_proxy.metrics import Metrics, Sources
from sosimple_proxy.tally import SipTally


class AuthFailures:
    """Counts wrong passwords, then tells the limiter (when there is one)."""

    def __init__(self, limits: Any, count: list[int]) -> None:
        self.limits = limits
        self.count = count

    def __call__(self, source: str) -> Any:
        self.count[0] += 1
        if self.limits is not None:
            return self.limits.auth_failed(source)
        return None


def metrics_sources(cfg: Config, rings: Mapping[str, Any], limits: Any) -> Sources | None:
    """What ``GET /metrics`` reads, or None with ``[metrics] enabled = no``."""
    if not cfg.section("metrics")["enabled"]:
        return None
    return Sources(rings=dict(rings), limits=limits)


def observe_admin(admin: Any, sources: Sources | None, rings: Mapping[str, Any]) -> None:
    """The admin views of what exists before the proxy: metrics, the ring's
    configuration document (the main ring's)."""
    if admin is None:
        return
    views = admin.views
    if sources is not None:
        views.metrics = Metrics(sources)
    ring = rings.get("overlay")
    if ring is not None:
        views.config_document = ring.config_document


def observe_sip(
    cfg: Config, reactor: Any, stack: Any, proxy: Any, admin: Any, sources: Sources | None, tally: Any = None
) -> None:
    """Counts and logs on the SIP side: the transaction layer's observer
    (metrics tally, refusal lines), the JSON lines' request context, the
    trace; and what ``/metrics``, ``/calls`` and ``/gateways`` read.
    ``tally``: the SipTally to count in (a worker's reports to its parent)."""
    logging = cfg.section("log")
    if tally is None and (sources is not None or admin is not None):
        tally = SipTally(reactor)
    layer = stack.transactions
    layer.observer = Decisions(tally)
    trace = logging["sip_trace"]
    if logging["format"] == "json" or trace:
        layer.receive = traced_receive(layer.receive, trace)
    if trace:
        layer.transport = TracingTransport(layer.transport)
    pstn = next((p for p in proxy.providers.values() if isinstance(p, PstnLocator)), None)
    prober = proxy.timers.prober if isinstance(proxy.timers.prober, GatewayProber) else None
    if sources is not None:
        sources.sip = tally
        sources.stack = stack
        sources.bindings = proxy.registrar.table
        sources.ring_locators = {n: p for n, p in proxy.providers.items() if isinstance(p, RingLocator)}
        rfc3263 = getattr(getattr(proxy.forwarder, "hops", None), "rfc3263", None)
        sources.dns = getattr(rfc3263, "lookups", None)
        if pstn is not None:
            sources.gateways, sources.prober = pstn.gateways, prober
    if admin is not None:
        views = admin.views
        views.sip, views.stack = tally, stack
        if pstn is not None:
            views.gateways, views.prober = pstn.gateways, prober


def auth_failure_counter(limits: Any, sources: Sources | None) -> Callable[[str], Any]:
    return AuthFailures(limits, sources.auth_failures if sources is not None else [0])
