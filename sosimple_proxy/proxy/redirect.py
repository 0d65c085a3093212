"""Redirect mode: the paper's "adaptor" answers 302 with the target set.

RFC 3261 8.3 and 21.3.3: the targets go in Contact headers with their
q-values; a target reached through a Path carries it as an escaped Route
header in the Contact URI (19.1.5), so the caller's next request takes it.
"""

from __future__ import annotations

from typing import Sequence

from sosimple_proxy.location.interfaces import Target
from sosimple_proxy.proxy.routing import escaped_route_contact
from sosimple_proxy.sip.message import Request, Response, make_response


def redirect_response(request: Request, targets: Sequence[Target]) -> Response:
    """302 listing every target; a target's fallbacks (other gateways of its
    group) follow it with lower q-values, so the caller can fail over too."""
    contacts: list[tuple[str, str]] = []
    seen: set[str] = set()
    for t in sorted(targets, key=lambda t: -t.q):
        chain = [t, *t.fallbacks]
        for i, alt in enumerate(chain):
            value = escaped_route_contact(alt.uri, alt.route)
            if value in seen:
                continue  # the same URI by another address (DNS): one Contact
            seen.add(value)
            q = t.q * (1.0 - i / (len(chain) + 1))
            contacts.append(("Contact", f"<{value}>" + ("" if q == 1.0 else f";q={q:.3g}")))
    return make_response(request, 302, "Moved Temporarily", extra=contacts)
