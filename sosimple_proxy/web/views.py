"""``GET /calls``, ``GET /gateways`` and the parts behind ``GET /metrics``
and ``GET /.well-known/sosimple-config``.

The admin site is built before the proxy (the ring first, see
``wiring.py``), so what these views read is handed over afterwards, into
:class:`Views`; a view whose part this process lacks (a storage node has
no SIP stack, no gateways) answers 503 saying so, never an empty claim.

Shapes (``GET /calls``)::

    {"window": 60,
     "last_minute": {"transactions": N, "calls": N,
                     "by_method": {"INVITE": {"200": 3, "486": 1}, ...}},
     "current": {"server_transactions": N, "client_transactions": N,
                 "pending": {"INVITE": 2}, "calls_setting_up": N},
     "top_sources": [{"address", "requests", "per_second"}, ...],
     "banned": [{"address", "reason", "remaining"}, ...],
     "gateways": [... as GET /gateways ...]}

``GET /gateways``: ``{"gateways": [{"name", "uri", "state": "up"|"down"|
"probing", "why", "last_probe": seconds ago or null, "prefixes",
"priority", "weight"}]}``.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from sosimple_proxy.tally import WINDOW, SipTally

#: how many sources "top sources" lists
TOP = 10


@attrs.define
class Views:
    """What the composition root hands the admin API once it has it."""

    #: ``render() -> bytes`` and ``content_type`` (sosimple_proxy.metrics.Metrics); None: off
    metrics: Any = None
    #: the SIP counts, the SIP stack (live transaction counts), the limiter
    sip: SipTally | None = None
    stack: Any = None
    limits: Any = None
    #: the PSTN gateways (``GatewaySet``) and their prober
    gateways: Any = None
    prober: Any = None
    #: ``() -> bytes``: the ring's configuration document (overlay/configdoc.py)
    config_document: Callable[[], bytes] | None = None


def gateway_state(name: str, gateways: Any, prober: Any) -> str:
    """``up``, ``down`` or ``probing`` (a first probe in flight, nothing heard yet)."""
    state = gateways.states[name]
    if prober is not None and name in prober.pending and state.last_probe is None:
        return "probing"
    return "up" if state.active() else "down"


def gateways_report(gateways: Any, prober: Any, now: float) -> dict[str, Any]:
    out = []
    for g in gateways.gateways:
        state = gateways.states[g.name]
        out.append(
            {
                "name": g.name,
                "uri": str(g.uri),
                "state": gateway_state(g.name, gateways, prober),
                "why": state.why or None,
                "last_probe": round(now - state.last_probe, 1) if state.last_probe is not None else None,
                "prefixes": list(g.prefixes),
                "priority": g.priority,
                "weight": g.weight,
            }
        )
    return {"gateways": out}


def calls_report(views: Views, now: float) -> dict[str, Any] | None:
    """The ``GET /calls`` body; None without a SIP stack."""
    tally = views.sip
    if tally is None:
        return None
    finals, sources = tally.last_minute()
    by_method: dict[str, dict[str, int]] = {}
    for (method, code), n in sorted(finals.items()):
        by_method.setdefault(method, {})[str(code)] = n
    pending = tally.pending()
    layer = getattr(views.stack, "transactions", None)
    top = sorted(sources.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    return {
        "window": WINDOW,
        "last_minute": {
            "transactions": sum(finals.values()),
            "calls": sum(n for (m, _), n in finals.items() if m == "INVITE"),
            "by_method": by_method,
        },
        "current": {
            "server_transactions": layer.server_count if layer is not None else None,
            "client_transactions": layer.client_count if layer is not None else None,
            "pending": pending,
            "calls_setting_up": pending.get("INVITE", 0),
        },
        "top_sources": [{"address": a, "requests": n, "per_second": round(n / WINDOW, 2)} for a, n in top],
        "banned": views.limits.report()["banned"] if views.limits is not None else [],
        "gateways": gateways_report(views.gateways, views.prober, now)["gateways"] if views.gateways is not None else [],
    }
