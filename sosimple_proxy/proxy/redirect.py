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
    contacts = []
    for t in sorted(targets, key=lambda t: -t.q):
        q = "" if t.q == 1.0 else f";q={t.q:.3g}"
        contacts.append(("Contact", f"<{escaped_route_contact(t.uri, t.route)}>{q}"))
    return make_response(request, 302, "Moved Temporarily", extra=contacts)
