"""The location providers of this build: ONE table, by the name that
``[location] order`` uses.

Each entry says how to build the provider (the composition root,
:mod:`sosimple_proxy.wiring`, calls it) and which site.ini sections it
reads, with their value parsers (:mod:`sosimple_proxy.config` validates
them with the rest of the file).  A new provider is one builder and one
entry here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import attrs
from twisted.logger import Logger

from sosimple_proxy.location.dialplan import parse_country_code, parse_local_patterns
from sosimple_proxy.location.dns import DNSLocator
from sosimple_proxy.location.gateways import Gateway, GatewaySet, parse_gateway_uri, parse_prefixes, parse_prepend
from sosimple_proxy.location.interfaces import ILocator
from sosimple_proxy.location.local import LocalLocator
from sosimple_proxy.location.pstn import PassNumbers, PstnLocator
from sosimple_proxy.location.ring import RingLocator
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.values import Schema, hostports, integer, number, words

if TYPE_CHECKING:
    from sosimple_proxy.config import Config
    from sosimple_proxy.location.bindings import BindingTable
    from sosimple_proxy.location.dialplan import DialPlan
    from sosimple_proxy.location.rfc3263 import RFC3263Resolver
    from sosimple_proxy.proxy.addressing import Addressing

log = Logger()


@attrs.frozen
class ProviderParts:
    """What the provider builders may use."""

    cfg: Config
    clock: Any
    addressing: Addressing
    bindings: BindingTable
    dialplan: DialPlan
    routes: StaticRoutes
    # Every ring we are a member of, by provider name, with the addressing
    # of the domains it holds.
    rings: Mapping[str, tuple[Any, Addressing]]
    # The SIP stack, once it exists (StackLink): our listen addresses.
    stack: Any
    rfc3263: RFC3263Resolver | None


def _local(name: str, p: ProviderParts) -> ILocator:
    # Phone numbers are not users: providers of users pass the numbers they miss on.
    return PassNumbers(LocalLocator(p.bindings, p.addressing.is_ours, p.addressing.aor), p.dialplan)


def _ring(name: str, p: ProviderParts) -> ILocator | None:
    if name not in p.rings:
        return None
    overlay, addressing = p.rings[name]
    ring = RingLocator(name, overlay, addressing.is_ours, addressing.aor, p.addressing.is_ours, clock=p.clock)
    return PassNumbers(ring, p.dialplan)


def _routes(name: str, p: ProviderParts) -> ILocator:
    return p.routes


def _dns(name: str, p: ProviderParts) -> ILocator | None:
    if p.rfc3263 is None:
        return None

    def elsewhere(uri: Any) -> bool:
        """Served by another provider: our domains, [routes], the rings'."""
        return (
            p.addressing.is_ours(uri)
            or p.routes.serves(uri)
            or any(a.is_ours(uri) for _, a in p.rings.values())
        )

    return DNSLocator(p.rfc3263, elsewhere, lambda: p.stack.listening())


def _pstn(name: str, p: ProviderParts) -> ILocator | None:
    gateways = gateways_of(p.cfg)
    if not gateways:
        return None
    return PstnLocator(p.dialplan, GatewaySet(gateways, p.clock, retry_interval=p.cfg.section("pstn")["retry_interval"]))


def gateways_of(cfg: Config) -> list[Gateway]:
    """The ``[gateway:NAME]`` sections, in file order."""
    return [
        Gateway(
            gw,
            parse_gateway_uri(s["uri"]),
            tuple(s["prefixes"]),
            s["priority"],
            s["weight"],
            s["strip"],
            s["prepend"],
        )
        for gw, s in cfg.named("gateway").items()
    ]


def _emergency(raw: str) -> tuple[str, ...]:
    """``911 112``: numbers as dialled (digits, an optional leading ``+``)."""
    numbers = words(raw)
    for n in numbers:
        if not re.fullmatch(r"\+?[0-9]{1,15}", n):
            raise ValueError(f"{n!r} is not a number (digits, an optional leading '+')")
    return numbers


def _callers(raw: str) -> tuple[str, ...]:
    """``authenticated``, ``trusted``, or a list of user names."""
    names = words(raw)
    if not names:
        raise ValueError("empty: say authenticated, trusted, or list users")
    special = [n for n in names if n.lower() in ("authenticated", "trusted")]
    if special and len(names) > 1:
        raise ValueError(f"{special[0]!r} stands alone; a list names users only")
    return (names[0].lower(),) if special else names


def _gateway_uri(raw: str) -> str:
    """A gateway's SIP URI; empty is refused once the section is read."""
    if raw.strip():
        parse_gateway_uri(raw)
    return raw.strip()


Builder = Callable[[str, ProviderParts], ILocator | None]


@attrs.frozen
class Provider:
    """One entry of :data:`LOCATION_PROVIDERS`."""

    # Returns None when the provider is not configured (no ring, no gateway, no DNS).
    build: Builder
    # The site.ini sections only this provider reads: ``"name"``, or
    # ``"prefix:"`` for ``[prefix:NAME]`` sections; key -> (parser, default).
    sections: Mapping[str, Schema] = attrs.field(factory=dict)
    # Sections whose keys are free-form (a domain, a number).
    free_form: tuple[str, ...] = ()


LOCATION_PROVIDERS: dict[str, Provider] = {
    "local": Provider(_local),
    # ``overlay`` and each ``overlay:NAME``; [overlay] itself is the ring's
    # (the overlay service reads it too), so config.py keeps it.
    "overlay": Provider(_ring),
    "routes": Provider(_routes, free_form=("routes",)),
    "dns": Provider(_dns, {"dns": {"servers": (hostports, "")}}),
    "pstn": Provider(
        _pstn,
        {
            "pstn": {
                "country_code": (parse_country_code, ""),
                "local_patterns": (parse_local_patterns, ""),
                "probe_interval": (number(0.0, strict=False), "30"),
                "retry_interval": (number(), "30"),
                # read by the relay rule (proxy/relay.py), not by the provider
                "emergency": (_emergency, ""),
                "callers": (_callers, "authenticated"),
            },
            "gateway:": {
                "uri": (_gateway_uri, ""),
                "prefixes": (parse_prefixes, "+"),
                "priority": (integer(0), "1"),
                "weight": (integer(0), "1"),
                "strip": (integer(0, 15), "0"),
                "prepend": (parse_prepend, ""),
            },
        },
        free_form=("did",),
    ),
}


def build_providers(order: Sequence[str], parts: ProviderParts) -> dict[str, ILocator]:
    """The providers named in ``order`` that are configured, in that order."""
    built: dict[str, ILocator] = {}
    for name in order:
        entry = LOCATION_PROVIDERS.get(name.split(":", 1)[0])
        provider = entry.build(name, parts) if entry is not None else None
        if provider is None:
            log.info("location provider {name!r} is not configured in this build; skipped", name=name)
            continue
        built[name] = provider
    return built
