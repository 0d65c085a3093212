"""The ``routes`` provider: ``[routes]`` maps a foreign domain to a next hop.

The request keeps its Request-URI and goes to the next hop through a
pushed Route (loose routing), the way an outbound proxy is used.
"""

from __future__ import annotations

from typing import Any, Mapping

from zope.interface import implementer

from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, LocateResult, Target
from sosimple_proxy.sip.uri import URI, parse_uri


def route_uri(text: str) -> URI:
    """A ``[routes]`` value as a loose-routing URI (``;lr`` added)."""
    uri = parse_uri(text.strip(), "route")
    if not uri.is_sip:
        raise ValueError(f"{text.strip()!r} is not a sip: or sips: URI")
    if "lr" not in uri.params:
        uri.params["lr"] = None
    return uri


@implementer(ILocator)
class StaticRoutes:
    """Domain -> next hop, from ``[routes]``."""

    name = "routes"

    def __init__(self, routes: Mapping[str, str]) -> None:
        self.routes: dict[str, URI] = self._parse(routes)

    @staticmethod
    def _parse(routes: Mapping[str, str]) -> dict[str, URI]:
        return {d.strip().lower().rstrip("."): route_uri(v) for d, v in routes.items()}

    def replace(self, routes: Mapping[str, str]) -> None:
        """New routes (SIGHUP): parsed whole first, so a bad one changes nothing."""
        self.routes = self._parse(routes)

    def serves(self, uri: Any) -> bool:
        host = (getattr(uri, "host", None) or "").lower().rstrip(".")
        return host in self.routes

    def locate(self, uri: Any) -> LocateResult:
        host = (getattr(uri, "host", None) or "").lower().rstrip(".")
        hop = self.routes.get(host)
        if hop is None:
            return NOT_MINE
        return Found((Target(uri, 1.0, (f"<{hop}>",), None, self.name),), self.name)
