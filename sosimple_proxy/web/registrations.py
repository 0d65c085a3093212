"""``GET /registrations``: the users this proxy's own registrar holds.

``GET /registrations/{aor}`` answers from the ring (any proxy's users);
this one answers from the local binding table, the proxy's own users, with
what only the registrar knows: where each REGISTER came from (transport and
source) and its RFC 5626 flow (instance and reg-id).

The admin site is built before the proxy (the ring first, see
``wiring.py``), so the table is handed over afterwards:
:class:`LocalRegistrations` holds it, and without one (a storage peer with
no SIP) the endpoint says so instead of claiming there are no users.
"""

from __future__ import annotations

from typing import Any

from sosimple_proxy.location.bindings import Binding, BindingTable


class LocalRegistrations:
    """The proxy's binding table, once the composition root has one."""

    def __init__(self, clock: Any, table: BindingTable | None = None) -> None:
        #: the registrar's clock (an ``IReactorTime``): expiry is measured on it
        self.clock = clock
        self.table = table

    def report(self) -> dict[str, Any] | None:
        """The ``GET /registrations`` body; None when this node has no registrar."""
        table = self.table
        if table is None:
            return None
        now = self.clock.seconds()
        out = []
        for aor in sorted(table):
            bindings = [binding_view(b, now) for b in table.lookup(aor)]
            bindings = [b for b in bindings if b["expires"] > 0]
            if bindings:
                out.append({"aor": aor, "bindings": bindings})
        return {"registrations": out}


def binding_view(b: Binding, now: float) -> dict[str, Any]:
    """One binding as the API shows it: the ring view's keys (``contact``,
    ``expires`` in whole seconds left, ``path``, ``q``) and the local ones."""
    transport, _, source = (b.received or "").partition(":")
    return {
        "contact": b.contact,
        "expires": b.remaining(now),
        "path": list(b.path),
        "q": b.q,
        "transport": transport.lower() or None,
        "received": source or None,
        "instance": b.instance,
        "reg_id": b.reg_id,
        "registered": int(max(0.0, now - b.registered_at)) if b.registered_at else None,
    }
