"""The composition root: a validated site.ini in, the proxy's parts out.

This is the one module (with :mod:`sosimple_proxy.service`, the twistd
entry point) that reads :class:`~sosimple_proxy.config.Config`; the layers
below receive plain values and their collaborators from here.  It builds,
in order: the rings, the admin site, the SIP stack (transports and the
transaction layer), then the transaction user on top of it
(:func:`build_proxy`): registrar, location providers and their chain, ring
publishers, forwarder, the processor chain and the core.

:data:`LOCATION_PROVIDERS` is the one table of location providers this
build has, by the name ``[location] order`` uses.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from sosimple_proxy.config import Config
from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.dialplan import DialPlan, DidTable
from sosimple_proxy.location.dns import DNSLocator, HopResolver
from sosimple_proxy.location.gateways import Gateway, GatewayProber, GatewaySet
from sosimple_proxy.location.interfaces import ILocator
from sosimple_proxy.location.local import LocalLocator
from sosimple_proxy.location.pstn import PassNumbers, PstnLocator
from sosimple_proxy.location.rfc3263 import Lookups, RFC3263Resolver, make_resolver
from sosimple_proxy.location.ring import RingLocator, RingPublisher
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.proxy.chain import StatefulForwarding, proxy_chain, redirecting
from sosimple_proxy.proxy.core import ProxyCore
from sosimple_proxy.proxy.forward import RequestForwarder
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.runner import Chain

log = Logger()


# --- location providers


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
    listening: Callable[[], Sequence[Any]]
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

    return DNSLocator(p.rfc3263, elsewhere, p.listening)


def _pstn(name: str, p: ProviderParts) -> ILocator | None:
    sections = p.cfg.named("gateway")
    if not sections:
        return None
    gateways = [Gateway.from_config(gw, section) for gw, section in sections.items()]
    return PstnLocator(p.dialplan, GatewaySet(gateways, p.clock, retry_interval=p.cfg.section("pstn")["retry_interval"]))


# The location providers of this build, by the name in [location] order
# (``overlay:NAME`` uses the ``overlay`` entry).  A builder returns None
# when its provider is not configured (no ring, no gateway, no DNS).
LOCATION_PROVIDERS: dict[str, Callable[[str, ProviderParts], ILocator | None]] = {
    "local": _local,
    "overlay": _ring,
    "routes": _routes,
    "dns": _dns,
    "pstn": _pstn,
}


def build_providers(order: Sequence[str], parts: ProviderParts) -> dict[str, ILocator]:
    """The providers named in ``order`` that are configured, in that order."""
    built: dict[str, ILocator] = {}
    for name in order:
        builder = LOCATION_PROVIDERS.get(name.split(":", 1)[0])
        provider = builder(name, parts) if builder is not None else None
        if provider is None:
            log.info("location provider {name!r} is not configured in this build; skipped", name=name)
            continue
        built[name] = provider
    return built


def rfc3263_resolver(dns: Mapping[str, Any], reactor: Any) -> RFC3263Resolver:
    """The resolver ``[dns]`` describes: ``servers``, or the system's."""
    return RFC3263Resolver(Lookups(make_resolver(dns["servers"], reactor), reactor), reactor)


def ring_domains(cfg: Config, name: str) -> list[str]:
    """The domains whose users a ring holds (site-ini.md, [overlay] domains)."""
    section = cfg.section(name) if name in cfg.sections else cfg.section("overlay")
    return list(section["domains"]) or (list(cfg.proxy["domains"]) if name == "overlay" else [])


# --- the transaction user


class ProxyTimers(Service):
    """The proxy's own timers, started and stopped with the SIP service:
    the binding table's sweeps and the gateways' OPTIONS probes."""

    name = "proxy-timers"

    def __init__(self, bindings: BindingTable, prober: GatewayProber | None) -> None:
        self.bindings = bindings
        self.prober = prober

    def startService(self) -> None:
        super().startService()
        self.bindings.start()
        if self.prober is not None:
            self.prober.start()

    def stopService(self) -> Any:
        self.bindings.stop()
        if self.prober is not None:
            self.prober.stop()
        return super().stopService()


@attrs.frozen
class Proxy:
    """The transaction user and the parts it was built from."""

    core: ProxyCore
    registrar: Registrar
    location: LocationChain
    providers: Mapping[str, ILocator]
    forwarder: RequestForwarder
    publishers: Sequence[RingPublisher]
    timers: ProxyTimers


def build_proxy(
    cfg: Config,
    reactor: Any,
    transport: Any,
    transactions: Any,
    rings: Mapping[str, Any] | None = None,
    rfc3263: RFC3263Resolver | None = None,
) -> Proxy:
    """The proxy on top of a transport and a transaction layer.

    ``rings`` are the overlay services by provider name; ``rfc3263``
    replaces the resolver ``[dns]`` describes (tests give a zone's).  The
    caller makes the core the transaction layer's user.
    """
    proxy_cfg, reg = cfg.proxy, cfg.section("registrar")
    listen = proxy_cfg["listen"]
    addressing = Addressing(proxy_cfg["domains"], listen, transport.listening)
    bindings = BindingTable(reactor)
    registrar = Registrar(
        reactor,
        bindings,
        min_expires=reg["min_expires"],
        max_expires=reg["max_expires"],
        default_expires=reg["default_expires"],
        max_contacts=reg["max_contacts"],
        is_ours=addressing.is_ours,
        aor=addressing.aor,
    )
    dialplan = DialPlan.from_config(cfg.section("pstn"))
    routes = StaticRoutes(cfg.section("routes"))
    ring_parts = {
        name: (overlay, Addressing(ring_domains(cfg, name), listen, transport.listening))
        for name, overlay in (rings or {}).items()
    }
    order = cfg.section("location")["order"]
    if rfc3263 is None and "dns" in order:
        # RFC 3263 only with "dns" in [location] order: without it nothing
        # queries DNS (tests leave it out).
        rfc3263 = rfc3263_resolver(cfg.section("dns"), reactor)
    parts = ProviderParts(cfg, reactor, addressing, bindings, dialplan, routes, ring_parts, transport.listening, rfc3263)
    providers = build_providers(order, parts)
    location = LocationChain(list(providers.values()))

    forwarder = RequestForwarder(
        transport, transactions, proxy_cfg["record_route"], HopResolver(rfc3263) if rfc3263 is not None else None
    )
    send_to = (
        redirecting
        if proxy_cfg["mode"] == "redirect"
        else StatefulForwarding(reactor, forwarder, location, cfg.sip["timer_c"], proxy_cfg["recurse_on_3xx"])
    )
    chain = Chain(
        proxy_chain(
            addressing=addressing,
            transactions=transactions,
            registrar=registrar,
            routes=routes,
            dids=DidTable(dialplan, cfg.section("did")),
            location=location,
            send_to=send_to,
        )
    )
    core = ProxyCore(chain, registrar, forwarder, addressing)

    def self_route(binding: Any) -> str | None:
        return routing.self_route(transport.listening(), binding)

    publishers = []
    for name, (overlay, ring_addressing) in ring_parts.items():
        # Our registrar's users go to every ring that holds their domain.
        if any(d in ring_addressing.domains for d in addressing.domains):
            holds = _holds(ring_addressing)
            publishers.append(RingPublisher(overlay, bindings, self_route, reactor, accepts=holds))
    prober = None
    pstn = providers.get("pstn")
    if isinstance(pstn, PstnLocator):
        prober = GatewayProber(
            pstn.gateways,
            reactor,
            cfg.section("pstn")["probe_interval"],
            transactions,
            transport.listening,
            from_domain=addressing.primary or "localhost",
        )
    return Proxy(core, registrar, location, providers, forwarder, publishers, ProxyTimers(bindings, prober))


def _holds(addressing: Addressing) -> Callable[[str], bool]:
    def holds(aor: str) -> bool:
        return aor.rpartition("@")[2] in addressing.domains

    return holds


# --- the whole process


def build_service(cfg: Config, reactor: Any) -> MultiService:
    """Build the proxy's services from a validated config."""
    from sosimple_proxy.sip.stack import SipStack

    top = MultiService()
    for warning in cfg.warnings:
        log.warn("{warning}", warning=warning)
    # The ring first: the proxy and the admin API use it (``top.overlay``,
    # an OverlayService whose ``ready`` fires with the node, or None).
    top.overlay = None  # type: ignore[attr-defined]
    if cfg.section("overlay")["listen"]:
        from sosimple_proxy.overlay.service import OverlayService

        top.overlay = OverlayService(reactor, cfg.section("overlay"))  # type: ignore[attr-defined]
        top.overlay.setServiceParent(top)  # type: ignore[attr-defined]
    else:
        log.info("[overlay] listen is empty: no overlay")
    # Every ring this proxy is a member of, by its [location] provider name
    # (paper III.C.3: one proxy in several rings bridges them).
    top.rings = {"overlay": top.overlay} if top.overlay is not None else {}  # type: ignore[attr-defined]
    for ring_name, section in cfg.named("overlay").items():
        if not section["listen"]:
            log.info("[overlay:{name}] listen is empty: not a member", name=ring_name)
            continue
        from sosimple_proxy.overlay.service import OverlayService as Ring

        ring = Ring(reactor, section, name=f"overlay:{ring_name}")
        ring.setServiceParent(top)
        top.rings[f"overlay:{ring_name}"] = ring  # type: ignore[attr-defined]
    if cfg.section("admin")["listen"]:
        from sosimple_proxy.web.admin import admin_service

        admin_service(reactor, cfg.section("admin"), top.overlay).setServiceParent(top)  # type: ignore[attr-defined]
    if cfg.proxy["listen"]:
        # The stack first (its transaction layer gets its user below), then
        # the proxy on top of its transport and transaction layer.
        stack = SipStack(reactor, cfg, None)  # type: ignore[arg-type]
        proxy = build_proxy(cfg, reactor, stack.transport, stack.transactions, dict(top.rings))  # type: ignore[attr-defined]
        stack.transactions.tu = proxy.core
        proxy.timers.setServiceParent(stack)
        stack.setServiceParent(top)
    else:
        log.info("[proxy] listen is empty: no SIP service")
    return top
