"""The ``local`` provider: this proxy's own registrar bindings."""

from __future__ import annotations

from typing import Any, Callable

from zope.interface import implementer

from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, LocateResult, Miss, Target
from sosimple_proxy.sip.uri import parse_uri


def binding_target(binding: Binding, source: str = "local") -> Target:
    """How to reach one binding: its contact, through its Path."""
    flow = binding.received if binding.received and not binding.received.startswith("udp:") else None
    return Target(parse_uri(binding.contact), binding.q, tuple(binding.path), flow, source)


@implementer(ILocator)
class LocalLocator:
    """Serves our domains (and our own addresses) from the binding table."""

    name = "local"

    def __init__(
        self,
        table: BindingTable,
        is_ours: Callable[[Any], bool],
        aor: Callable[[Any], str],
    ) -> None:
        self.table = table
        self.is_ours = is_ours
        self.aor = aor

    def locate(self, uri: Any) -> LocateResult:
        if not self.is_ours(uri) or not uri.user:
            return NOT_MINE
        bindings = self.table.lookup(self.aor(uri))
        if bindings:
            return Found(tuple(binding_target(b) for b in bindings), self.name)
        return Miss("Not Found", self.name)
