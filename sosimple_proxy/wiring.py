"""The composition root: a validated site.ini in, the proxy's parts out.

This is the one module (with :mod:`sosimple_proxy.service`, the twistd
entry point) that reads :class:`~sosimple_proxy.config.Config`; the layers
below receive plain values and their collaborators from here.  It builds,
in order: the rings, the admin site, the proxy (:func:`build_proxy`:
registrar, location providers and their chain, ring publishers, forwarder,
the processor chain, the core) and the SIP stack that runs it (transports
and the transaction layer; the stack attaches itself to the core, which
hands it to the parts that send through it).

The location providers come from the one table in
:mod:`sosimple_proxy.providers`.

The ``[limits]`` limiter (:func:`build_limits`) is one object on the
reactor, shared by whoever judges a source: the SIP stack (rates, bans,
connection and transaction caps), authentication (wrong credentials) and
the admin API (``GET /limits``, lifting a ban).  With ``[proxy] workers``
each worker has its own, which reports to the parent's (the admin API's):
see :mod:`sosimple_proxy.workers.shared_limits`.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from sosimple_proxy.ban_mirror import build_kernel_bans
from sosimple_proxy.config import Config, ConfigError, load_config, tls_config
from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.dialplan import DialPlan, DidTable
from sosimple_proxy.location.dns import HopResolver
from sosimple_proxy.location.gateways import GatewayProber
from sosimple_proxy.location.interfaces import ILocator
from sosimple_proxy.location.pstn import PstnLocator
from sosimple_proxy.location.rfc3263 import Lookups, RFC3263Resolver, make_resolver
from sosimple_proxy.location.ring import RingPublisher
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.observe import auth_failure_counter, metrics_sources, observe_admin, observe_sip
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.presence.agent import PresenceAgent, PresenceSettings, Sender
from sosimple_proxy.presence.ring import PresenceRing
from sosimple_proxy.proxy.chain import Chain, Presence, StatefulForwarding, proxy_chain, redirecting
from sosimple_proxy.proxy.uac import RequestSender
from sosimple_proxy.proxy.core import ProxyCore
from sosimple_proxy.proxy.forward import RequestForwarder
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.stack_link import StackLink
from sosimple_proxy.proxy.authenticate import Authenticate, TrustedSources
from sosimple_proxy.proxy.dialog_stamp import DialogStamp
from sosimple_proxy.proxy.path_stamp import PathStamp
from sosimple_proxy.proxy.relay import AckGate, ContactIndex, EmergencyNumbers, PstnCallers, Relay
from sosimple_proxy.providers import ProviderParts, build_providers, gateways_of
from sosimple_proxy.reloads import Reloads
from sosimple_proxy.security.digest import DigestAuthenticator
from sosimple_proxy.security.limits import Limits, LimitsConfig
from sosimple_proxy.security.nonces import SecretFileError, load_or_create_secret
from sosimple_proxy.security.tls import TLSFileError
from sosimple_proxy.security.users import UsersFile
from sosimple_proxy.tls_contexts import TLSContexts, build_tls

log = Logger()


def rfc3263_resolver(dns: Mapping[str, Any], reactor: Any) -> RFC3263Resolver:
    """The resolver ``[dns]`` describes: ``servers``, or the system's; each
    query tried ``attempts`` times ``timeout`` seconds apart; a failed
    destination avoided ``avoid_seconds``."""
    tries = (float(dns.get("timeout", 2.0)),) * int(dns.get("attempts", 3))
    resolver = make_resolver(dns["servers"], reactor, timeout=tries)
    return RFC3263Resolver(Lookups(resolver, reactor), reactor, avoid_for=float(dns.get("avoid_seconds", 60.0)))


def ring_domains(cfg: Config, name: str) -> list[str]:
    """The domains whose users a ring holds (site-ini.md, [overlay] domains)."""
    section = cfg.section(name) if name in cfg.sections else cfg.section("overlay")
    return list(section["domains"]) or (list(cfg.proxy["domains"]) if name == "overlay" else [])


# --- abuse limits


class LimitsService(Service):
    """Runs the limiter's timers (its memory sweep, its ban expiries) while
    the SIP service runs."""

    name = "limits"

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def startService(self) -> None:
        super().startService()
        self.limits.start_sweeping()

    def stopService(self) -> Any:
        self.limits.stop()
        return super().stopService()


def build_limits(cfg: Config, reactor: Any) -> Limits:
    """The ``[limits]`` limiter on ``reactor``'s clock."""
    return Limits(reactor, LimitsConfig(**cfg.section("limits")))


def emergency_numbers(cfg: Config) -> tuple[str, ...]:
    """``[pstn] emergency``: numbers never limited (none while the key does
    not exist)."""
    value = cfg.section("pstn").get("emergency", ())
    return tuple(value.split()) if isinstance(value, str) else tuple(value)


# --- the transaction user


class ProxyTimers(Service):
    """The proxy's own timers, started and stopped with the SIP service:
    the binding table's sweeps and the gateways' OPTIONS probes."""

    name = "proxy-timers"

    def __init__(self, bindings: BindingTable, prober: GatewayProber | None, presence: Any = None) -> None:
        self.bindings = bindings
        self.prober = prober
        # the presence agent: its watchers hear "terminated;reason=deactivated"
        self.presence = presence

    def startService(self) -> None:
        super().startService()
        self.bindings.start()
        if self.prober is not None:
            self.prober.start()

    def stopService(self) -> Any:
        self.bindings.stop()
        if self.prober is not None:
            self.prober.stop()
        if self.presence is not None:
            self.presence.stop()
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
    # [auth]: the users file (re-read on SIGHUP) and the digest verifier, or None
    users: UsersFile | None = None
    digest: DigestAuthenticator | None = None
    # What SIGHUP re-reads: (what, action) pairs for the Reloads service
    # (a failure is logged and the old state stays).
    reloads: Sequence[tuple[str, Callable[[], Any]]] = ()
    # the presence agent ([presence]), or None
    presence: Any = None


def our_domains(cfg: Config) -> frozenset[str]:
    """The domains of our users: [proxy] domains and every ring's domains."""
    domains = set(cfg.proxy["domains"]) | set(cfg.section("overlay")["domains"])
    for section in cfg.named("overlay").values():
        domains |= set(section["domains"])
    return frozenset(d.lower().rstrip(".") for d in domains)


@attrs.frozen
class Security:
    """The authentication step, the relay rule and what the forwarder needs."""

    authenticate: Authenticate
    relay: Relay
    ack_gate: AckGate
    stamp: DialogStamp
    branch_policy: Callable[[Any, Any, Any], None]
    users: UsersFile | None
    digest: DigestAuthenticator | None
    # stamps the Path entries we publish in the rings (proxy/path_stamp.py)
    path_stamp: PathStamp | None = None


def gateway_matcher(gateways: Callable[[], Sequence[Any]]) -> Callable[[Any], bool]:
    """Does a URI name one of the gateways (host and port)?  ``gateways()``
    is asked each time (SIGHUP may replace the list); the addresses are
    worked out again only when the list is a new one."""
    seen: list[Any] = [None, frozenset()]

    def addresses() -> frozenset:
        current = gateways()
        if current is not seen[0]:
            seen[:] = [current, frozenset((routing.uri_address(g.uri)[1].lower(), routing.uri_address(g.uri)[2]) for g in current)]
        return seen[1]

    def is_gateway(uri: Any) -> bool:
        known = addresses()
        if not known or not getattr(uri, "is_sip", False):
            return False
        _, host, port = routing.uri_address(uri)
        return (host.lower(), port) in known

    return is_gateway


def build_security(
    cfg: Config,
    reactor: Any,
    addressing: Addressing,
    bindings: BindingTable,
    stack: StackLink,
    secret: bytes,
    on_auth_failure: Callable[[str], Any] | None = None,
    gateways: Callable[[], Sequence[Any]] = tuple,
    members: Callable[[Any], Any] | None = None,
) -> Security:
    """[auth] and [pstn] callers/emergency as the chain's two security steps."""
    auth, pstn = cfg.section("auth"), cfg.section("pstn")
    domains = our_domains(cfg)

    def our_domain(uri: Any) -> bool:
        host = (getattr(uri, "host", None) or "").lower().rstrip(".")
        return host in domains or addressing.is_ours(uri)

    users = UsersFile(auth["users_file"]) if auth["users_file"] else None
    digest = (
        DigestAuthenticator(reactor, users, secret, auth["realm"], auth["algorithms"], auth["nonce_ttl"])
        if users is not None
        else None
    )
    trusted = TrustedSources(auth["trusted"])
    stamp = DialogStamp(secret)
    path_stamp = PathStamp(secret, reactor)
    emergency = EmergencyNumbers(pstn["emergency"])
    authenticate = Authenticate(
        is_ours=addressing.is_ours,
        our_domain=our_domain,
        primary_domain=addressing.primary or auth["realm"],
        trusted=trusted,
        stamp=stamp,
        digest=digest,
        required=auth["required"],
        is_emergency=emergency,
        on_auth_failure=on_auth_failure,
        members=members,
        path_stamp=path_stamp,
    )

    contacts = ContactIndex(bindings.lookup)
    bindings.listeners.append(contacts.changed)

    relay = Relay(
        is_ours=addressing.is_ours,
        our_domain=our_domain,
        holds_contact=contacts,
        has_connection=lambda peer: stack.transport.has_connection(peer),
        digest=digest,
        callers=PstnCallers(pstn["callers"]),
        is_emergency=emergency,
        is_gateway=gateway_matcher(gateways),
    )

    def branch_policy(copy: Any, target: Any, dest: Any) -> None:
        # RFC 3325 section 5: the asserted identity stays in the trust
        # domain: our gateways and [auth] trusted peers.
        if target.source != "pstn" and dest.host not in trusted:
            copy.headers.remove("P-Asserted-Identity")

    return Security(authenticate, relay, AckGate(relay, trusted, stamp, digest.realm if digest is not None else None), stamp, branch_policy, users, digest,
                    path_stamp)


def build_proxy(
    cfg: Config,
    reactor: Any,
    rings: Mapping[str, Any] | None = None,
    rfc3263: RFC3263Resolver | None = None,
    secret: bytes | None = None,
    on_auth_failure: Callable[[str], Any] | None = None,
    publish: bool = True,
) -> Proxy:
    """The proxy, ready for a SIP stack to run it (``proxy.core`` is the
    stack's user; the stack attaches itself to it).

    ``rings`` are the overlay services by provider name; ``rfc3263``
    replaces the resolver ``[dns]`` describes (tests give a zone's).
    ``secret`` keys nonces and dialog stamps (``build_service`` reads
    ``[auth] nonce_secret_file``; None: a random one for this process).
    ``on_auth_failure(source)`` hears of each wrong password ([limits]).
    ``publish``: mirror our bindings into the rings (a worker leaves that
    to its parent).
    """
    proxy_cfg, reg = cfg.proxy, cfg.section("registrar")
    listen = proxy_cfg["listen"]
    stack = StackLink()
    addressing = Addressing(proxy_cfg["domains"], listen, stack)
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
    dialplan = DialPlan(cfg.section("pstn")["country_code"], cfg.section("pstn")["local_patterns"])
    routes = StaticRoutes(dict(cfg.section("routes")))
    ring_parts = {
        name: (overlay, Addressing(ring_domains(cfg, name), listen, stack))
        for name, overlay in (rings or {}).items()
    }
    order = cfg.section("location")["order"]
    if rfc3263 is None and "dns" in order:
        # RFC 3263 only with "dns" in [location] order: without it nothing
        # queries DNS (tests leave it out).
        rfc3263 = rfc3263_resolver(cfg.section("dns"), reactor)
    parts = ProviderParts(cfg, reactor, addressing, bindings, dialplan, routes, ring_parts, stack, rfc3263)
    providers = build_providers(order, parts)
    location = LocationChain(list(providers.values()))

    pstn = providers.get("pstn")
    # a CA ring's members vouch for their domains' users over SIP TLS
    ring_members = ring_members_of(cfg)
    members = None
    if ring_members is not None:
        members = lambda source: ring_members.domains(stack.transport.peer_certificate(source))  # noqa: E731
    security = build_security(
        cfg,
        reactor,
        addressing,
        bindings,
        stack,
        secret if secret is not None else os.urandom(32),
        on_auth_failure,
        gateways=(lambda: pstn.gateways.gateways) if isinstance(pstn, PstnLocator) else tuple,
        members=members,
    )
    forwarder = RequestForwarder(
        stack,
        proxy_cfg["record_route"],
        HopResolver(rfc3263) if rfc3263 is not None else None,
        stamp=security.stamp.for_request,
        branch_policy=security.branch_policy,
    )
    presence = build_presence(cfg, reactor, rings or {}, stack, rfc3263, addressing, security)
    send_to = (
        redirecting
        if proxy_cfg["mode"] == "redirect"
        else StatefulForwarding(reactor, forwarder, location, cfg.sip["timer_c"], proxy_cfg["recurse_on_3xx"])
    )
    chain = Chain(
        proxy_chain(
            addressing=addressing,
            stack=stack,
            registrar=registrar,
            routes=routes,
            dids=DidTable(dialplan, dict(cfg.section("did"))),
            location=location,
            send_to=send_to,
            authenticate=security.authenticate,
            relay=security.relay,
            presence=Presence(presence) if presence is not None else None,
        )
    )
    core = ProxyCore(chain, registrar, forwarder, addressing, stack, ack_gate=security.ack_gate)

    def self_route_for(overlay: Any) -> Callable[[Any], str | None]:
        publish_path = _publish_path(overlay)

        def self_route(binding: Any) -> str | None:
            stamp = security.path_stamp.value if security.path_stamp is not None else None
            return routing.self_route(stack.listening(), binding, stamp, publish_path)

        return self_route

    publishers = []
    for name, (overlay, ring_addressing) in (ring_parts.items() if publish else ()):
        # Our registrar's users go to every ring that holds their domain.
        if any(d in ring_addressing.domains for d in addressing.domains):
            holds = _holds(ring_addressing)
            publishers.append(RingPublisher(overlay, bindings, self_route_for(overlay), reactor, accepts=holds))
    if publishers:
        # issue 15: the 200 to a REGISTER waits for the rings' write quorum
        registrar.commit = ring_commit(publishers)
        registrar.commit_timeout = max(
            float(getattr(o, "settings", {}).get("write_timeout", 4.0)) for o, _ in ring_parts.values()
        )
    prober = None
    pstn = providers.get("pstn")
    if isinstance(pstn, PstnLocator):
        prober = GatewayProber(
            pstn.gateways,
            reactor,
            cfg.section("pstn")["probe_interval"],
            stack,
            from_domain=addressing.primary or "localhost",
            hops=HopResolver(rfc3263) if rfc3263 is not None else None,
        )
    reloads = [("users file", security.users.reload)] if security.users is not None else []
    reloads.append(("routes and gateways", lambda: reload_routes_and_gateways(cfg.path, routes, pstn)))
    if ring_members is not None:
        reloads.append(("ring CA (SIP members)", ring_members.reload))
    return Proxy(
        core,
        registrar,
        location,
        providers,
        forwarder,
        publishers,
        ProxyTimers(bindings, prober, presence),
        security.users,
        security.digest,
        reloads,
        presence,
    )


def build_presence(
    cfg: Config,
    reactor: Any,
    rings: Mapping[str, Any],
    stack: StackLink,
    rfc3263: RFC3263Resolver | None,
    addressing: Addressing,
    security: Security,
) -> PresenceAgent | None:
    """The presence agent ([presence]) on the first ring, or None (disabled,
    or no ring to keep the state in: presence is then proxied as before)."""
    pres = cfg.section("presence")
    ring = rings.get("overlay")
    if not pres["enabled"] or ring is None:
        if pres["enabled"]:
            log.info("[presence] needs an [overlay]: SUBSCRIBE/PUBLISH for presence are proxied")
        return None
    node = getattr(ring, "node", None)
    presence_ring = getattr(ring, "presence", None)  # a worker's: through the parent's node
    if presence_ring is None and node is not None and not hasattr(node, "watch"):
        # a ring that only reads (a worker's without its presence line)
        log.warn("[presence]: this ring cannot be watched; presence is proxied")
        return None
    sender = RequestSender(stack, HopResolver(rfc3263) if rfc3263 is not None else None)
    settings = PresenceSettings(
        max_subscriptions=pres["max_subscriptions"],
        min_expires=pres["min_expires"],
        max_expires=pres["max_expires"],
        default_expires=pres["default_expires"],
        notify_interval=pres["notify_interval"],
        policy=pres["policy"],
    )
    return PresenceAgent(
        presence_ring if presence_ring is not None else PresenceRing(ring, reactor),
        reactor,
        Sender(sender.send, sender.contact),
        settings,
        addressing.is_ours,
        addressing.aor,
        authenticating=security.digest is not None and bool(cfg.section("auth")["required"]),
    )


def ring_members_of(cfg: Config) -> Any:
    """The ring members' check at the SIP edge: only for a CA ring
    (``[overlay] trust = ca``); an open ring's members are nobody special."""
    ring = cfg.section("overlay")
    if not (ring["listen"] and ring["ca"] and ring.get("trust", "ca") == "ca"):
        return None
    from sosimple_proxy.security.ringmembers import RingMembers

    return RingMembers(ring["ca"])
def ring_commit(publishers: Sequence[RingPublisher]) -> Callable[[str], Any]:
    """``commit(aor)``: Deferred[bool], every ring's newest write of ``aor``
    done; None when no ring is writing it."""

    def commit(aor: str) -> Any:
        waits = [d for d in (p.settled(aor) for p in publishers) if d is not None]
        if not waits:
            return None
        return gatherResults(waits).addCallback(all)

    return commit


def reload_routes_and_gateways(path: str, routes: StaticRoutes, pstn: Any) -> None:
    """SIGHUP: ``[routes]`` and the ``[gateway:NAME]`` sections again from
    site.ini.  A bad file changes nothing (the one line says why); calls in
    progress keep the hops they have."""
    try:
        new = load_config(path)
        gateways = gateways_of(new)
        routes.replace(dict(new.section("routes")))
    except (ConfigError, ValueError) as e:
        log.error("SIGHUP: routes and gateways kept as they were: {problem}", problem=str(e))
        return
    if isinstance(pstn, PstnLocator):
        pstn.gateways.replace(gateways)
    elif gateways:
        log.warn("SIGHUP: [gateway:...] sections added; restart to start the pstn provider")
    log.info(
        "SIGHUP: {routes} routes, {gateways} gateways",
        routes=len(routes.routes),
        gateways=len(gateways) if isinstance(pstn, PstnLocator) else 0,
    )


def _holds(addressing: Addressing) -> Callable[[str], bool]:
    def holds(aor: str) -> bool:
        return aor.rpartition("@")[2] in addressing.domains

    return holds


# --- the whole process


def nonce_secret(cfg: Config) -> bytes:
    """[auth] nonce_secret_file, made when missing; a ConfigError if unusable."""
    path = cfg.section("auth")["nonce_secret_file"]
    try:
        return load_or_create_secret(path)
    except SecretFileError as e:
        raise ConfigError("auth", "nonce_secret_file", str(e)) from None


def build_service(cfg: Config, reactor: Any) -> MultiService:
    """Build the proxy's services from a validated config."""
    top = MultiService()
    for warning in cfg.warnings:
        log.warn("{warning}", warning=warning)
    # The ring first: the proxy and the admin API use it (``top.overlay``,
    # an OverlayService whose ``ready`` fires with the node, or None).
    top.overlay = None  # type: ignore[attr-defined]
    if cfg.section("overlay")["listen"]:
        from sosimple_proxy.overlay.service import OverlayService

        settings = dict(cfg.section("overlay"))
        top.overlay = OverlayService(reactor, settings, tls=_ring_tls("overlay", settings))  # type: ignore[attr-defined]
        top.overlay.setServiceParent(top)  # type: ignore[attr-defined]
    else:
        log.info("[overlay] listen is empty: no overlay")
    # Every ring this proxy is a member of, by its [location] provider name
    # (paper III.C.3: one proxy in several rings bridges them).
    top.rings = {"overlay": top.overlay} if top.overlay is not None else {}  # type: ignore[attr-defined]
    # One limiter for the stack, authentication and the admin API.
    top.limits = build_limits(cfg, reactor) if cfg.proxy["listen"] else None  # type: ignore[attr-defined]
    # [limits] kernel_bans: the bans copied into an nft set (ban_mirror.py)
    try:
        mirror = build_kernel_bans(cfg, reactor, top.limits, emergency_numbers(cfg))  # type: ignore[attr-defined]
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    if mirror is not None:
        mirror.setServiceParent(top)
    for ring_name, section in cfg.named("overlay").items():
        if not section["listen"]:
            log.info("[overlay:{name}] listen is empty: not a member", name=ring_name)
            continue
        from sosimple_proxy.overlay.service import OverlayService as Ring

        settings = dict(section)
        ring = Ring(reactor, settings, name=f"overlay:{ring_name}", tls=_ring_tls(f"overlay:{ring_name}", settings))
        ring.setServiceParent(top)
        top.rings[f"overlay:{ring_name}"] = ring  # type: ignore[attr-defined]
    # The users' store (/store): on its own [store] listen, else the admin listener's.
    store, store_svc = None, None
    if cfg.section("store")["listen"] or cfg.section("admin")["listen"]:
        store = build_store(cfg, reactor, top.overlay)  # type: ignore[attr-defined]
    if cfg.section("store")["listen"]:
        from sosimple_proxy.web.store import store_service

        store_svc = store_service(reactor, dict(cfg.section("store")), store)
        store_svc.setServiceParent(top)
    admin = None
    if cfg.section("admin")["listen"]:
        from sosimple_proxy.web.admin import admin_service

        # GET /limits and DELETE /limits/banned/{address} on the SIP side's
        # limiter (an ILimitsView; None without SIP: nobody is banned)
        on_admin = store if store_svc is None else None
        admin = admin_service(reactor, dict(cfg.section("admin")), top.overlay, top.limits, on_admin)  # type: ignore[attr-defined]
        admin.setServiceParent(top)
    # /metrics, /calls, /gateways, the ring's configuration document (observe.py)
    sources = metrics_sources(cfg, top.rings, top.limits)  # type: ignore[attr-defined]
    observe_admin(admin, sources, top.rings)  # type: ignore[attr-defined]
    if cfg.proxy["listen"] and cfg.proxy["workers"] > 1:
        build_worker_parent(cfg, reactor, top, admin, store_svc, sources)
    elif cfg.proxy["listen"]:
        limits = top.limits  # type: ignore[attr-defined]
        try:
            tls = read_startup_files(cfg)
        except ConfigError as e:  # one line, exit status 1, nothing bound yet
            raise SystemExit(str(e)) from None
        assert tls is not None
        # Wrong passwords count toward a ban ([limits] auth_failures) once a
        # limiter exists (``top.limits``, built before the proxy).
        limits = getattr(top, "limits", None)
        proxy = build_proxy(
            cfg,
            reactor,
            dict(top.rings),  # type: ignore[attr-defined]
            secret=nonce_secret(cfg),
            on_auth_failure=auth_failure_counter(limits, sources),
        )
        if admin is not None:  # GET /registrations: this proxy's own users
            admin.registrations.table = proxy.registrar.table  # type: ignore[attr-defined]
        stack = build_stack(cfg, reactor, proxy, limits, tls)
        observe_sip(cfg, reactor, stack, proxy, admin, sources)
        stack.setServiceParent(top)
        # SIGHUP: new certificates for new connections; calls carry on.
        reloads = stack_reloads(reactor, stack, proxy)
        if admin is not None and getattr(admin, "tls", None) is not None:
            reloads.add("admin certificate", admin.tls.reload)  # type: ignore[attr-defined]
        for name, ring in top.rings.items():  # type: ignore[attr-defined]
            if getattr(ring, "tls", None) is not None:
                reloads.add(f"[{name}] ring certificate", ring.tls.reload)
        if store_svc is not None and getattr(store_svc, "tls", None) is not None:
            reloads.add("store certificate", store_svc.tls.reload)  # type: ignore[attr-defined]
        reloads.setServiceParent(top)
    else:
        log.info("[proxy] listen is empty: no SIP service")
    return top


def build_stack(cfg: Config, reactor: Any, proxy: Proxy, limits: Limits | None, tls: Any, reuse_port: bool = False) -> Any:
    """The SIP stack that runs ``proxy``, with the proxy's timers and the
    limiter's under it (started after its listeners, stopped before them)."""
    from sosimple_proxy.sip.stack import SipStack
    from sosimple_proxy.sip.timers import TimerConfig

    stack = SipStack(
        reactor,
        cfg.proxy["listen"],
        proxy.core,
        timers=TimerConfig(cfg.sip["t1"], cfg.sip["t2"], cfg.sip["t4"]),
        max_message_size=cfg.proxy["max_message_size"],
        udp_rcvbuf=cfg.sip["udp_rcvbuf"],
        tcp_idle_timeout=cfg.sip["tcp_idle_timeout"],
        message_timeout=cfg.sip["message_timeout"],
        limits=limits,
        emergency=emergency_numbers(cfg),
        reuse_port=reuse_port,
        **tls.stack_arguments(),
    )
    proxy.timers.setServiceParent(stack)
    if limits is not None:
        LimitsService(limits).setServiceParent(stack)
    return stack


def stack_reloads(reactor: Any, stack: Any, proxy: Proxy) -> Reloads:
    """What SIGHUP re-reads for a SIP stack and its proxy."""
    reloads = Reloads(reactor)
    reloads.add("TLS certificates", stack.transport.reload_tls)
    for what, action in proxy.reloads:
        reloads.add(what, action)
    return reloads


# --- [proxy] workers: the parent and each worker


def build_worker_parent(
    cfg: Config, reactor: Any, top: MultiService, admin: Any, store_svc: Any = None, sources: Any = None
) -> None:
    """The parent of ``[proxy] workers`` processes: it keeps the ring nodes
    and the admin API (built already, under ``top``), a copy of every
    worker's bindings (which it publishes to the rings and shows on the
    admin API), the line to its workers, and the workers themselves."""
    import tempfile

    from sosimple_proxy.workers.hub import Hub
    from sosimple_proxy.workers.parent import HubListener, check_ports_free, write_secret
    from sosimple_proxy.workers.pool import WorkerPool, worker_argv

    try:
        read_startup_files(cfg)  # a bad certificate stops startup here, not in every worker
        check_ports_free(cfg.proxy["listen"])
        secret = nonce_secret(cfg)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    directory = tempfile.mkdtemp(prefix="sosimple-workers-")  # 0700: the secret and the sockets
    write_secret(directory, secret)
    table = BindingTable(reactor)
    listening = list(cfg.proxy["listen"])
    addressing = Addressing(cfg.proxy["domains"], listening, StackLink())
    path_stamp = PathStamp(secret, reactor)  # the workers check it with the same secret
    publishers = []
    for name, overlay in dict(top.rings).items():  # type: ignore[attr-defined]
        ring_addressing = Addressing(ring_domains(cfg, name), listening, StackLink())
        if any(d in ring_addressing.domains for d in addressing.domains):
            publish_path = _publish_path(overlay)
            publishers.append(RingPublisher(
                overlay, table, lambda b, p=publish_path: routing.self_route(listening, b, path_stamp.value, p),
                reactor, accepts=_holds(ring_addressing)))
    if admin is not None:  # GET /registrations: every worker's users
        admin.registrations.table = table  # type: ignore[attr-defined]
    hub = Hub(table, dict(top.rings))  # type: ignore[attr-defined]
    if top.overlay is not None and cfg.section("presence")["enabled"]:  # type: ignore[attr-defined]
        # the workers' presence agents write and watch the ring through this node
        from sosimple_proxy.presence.ring import PresenceRing

        hub.presence = PresenceRing(top.overlay, reactor)  # type: ignore[attr-defined]
    if publishers:  # a worker's 200 to a REGISTER waits for the rings' write quorum (issue 15)
        hub.commit = ring_commit(publishers)
    if top.limits is not None:  # type: ignore[attr-defined]
        # every worker's bans and counts meet in the admin API's limiter
        from sosimple_proxy.workers.shared_limits import SharedLimitsHub

        hub.limits = SharedLimitsHub(reactor, top.limits, hub.lines)  # type: ignore[attr-defined]
        LimitsService(top.limits).setServiceParent(top)  # type: ignore[attr-defined]
    if sources is not None or admin is not None:
        # /metrics' SIP families and /calls: the workers' counts, summed here
        from sosimple_proxy.workers.shared_metrics import MergedTally, WorkersStack

        merged = hub.metrics = MergedTally(reactor)
        stack = WorkersStack(merged)
        if sources is not None:
            sources.sip, sources.stack, sources.dns = merged, stack, merged.dns
            sources.ring_locators, sources.auth_failures = merged.ring_locators, merged.auth_failures
            sources.bindings = table
        if admin is not None:
            admin.views.sip, admin.views.stack = merged, stack
    HubListener(reactor, hub, directory, table).setServiceParent(top)
    pool = WorkerPool(reactor, cfg.proxy["workers"], worker_argv(cfg.path, cfg.proxy["workers"], directory))
    pool.setServiceParent(top)
    top.workers = pool  # type: ignore[attr-defined]
    # SIGHUP: the parent's admin certificate, and each worker's own reloads
    reloads = Reloads(reactor)
    reloads.add("workers", lambda: pool.signal_all("HUP"))
    if admin is not None and getattr(admin, "tls", None) is not None:
        reloads.add("admin certificate", admin.tls.reload)  # type: ignore[attr-defined]
    if store_svc is not None and getattr(store_svc, "tls", None) is not None:
        reloads.add("store certificate", store_svc.tls.reload)  # type: ignore[attr-defined]
    reloads.setServiceParent(top)
    log.info("[proxy] workers = {n}: SIP is served by {n} worker processes", n=cfg.proxy["workers"])


def build_worker(cfg: Config, reactor: Any, index: int, count: int, directory: str) -> MultiService:
    """Worker ``index`` of ``count``: the SIP stack and proxy on shared
    ports, its rings and its bindings' twins reached through the parent."""
    from sosimple_proxy.sip import worker_tag
    from sosimple_proxy.sip.handoff import Handoff
    from sosimple_proxy.workers.parent import read_secret
    from sosimple_proxy.workers.remote_ring import RemoteRing, remote_commit
    from sosimple_proxy.workers.worker_service import WorkerService

    worker_tag.set_worker(index)
    tls = read_startup_files(cfg)
    assert tls is not None
    top = WorkerService(reactor, index, directory)
    rings = {name: RemoteRing(name, top.get_link) for name in _ring_names(cfg)}
    if "overlay" in rings and cfg.section("presence")["enabled"]:
        # the presence agent runs here, on the parent's ring node (workers/shared_presence.py)
        from sosimple_proxy.workers.shared_presence import RemotePresenceRing

        rings["overlay"].presence = top.presence = RemotePresenceRing(top.get_link)  # type: ignore[attr-defined]
        top.presence.setServiceParent(top)
    # bans, rates and nonce-counts shared with the other workers through the parent
    from sosimple_proxy.workers.shared_limits import WorkerLimits, worker_share
    from sosimple_proxy.workers.shared_nonces import WorkerNonceCounts

    # the caps on connections and transactions are the proxy's: each worker enforces its share
    limits = top.limits = WorkerLimits(reactor, worker_share(LimitsConfig(**cfg.section("limits")), count), top.get_link)
    # the SIP counts go to the parent, which serves /metrics and /calls
    from sosimple_proxy.metrics import Sources
    from sosimple_proxy.workers.shared_metrics import MetricsReporter, ReportingTally

    reporting = cfg.section("metrics")["enabled"] or bool(cfg.section("admin")["listen"])
    sources = Sources() if reporting else None
    proxy = build_proxy(cfg, reactor, rings, secret=read_secret(directory),
                        on_auth_failure=auth_failure_counter(limits, sources), publish=False)
    if rings:  # the parent writes the rings; the 200 waits for its word (issue 15)
        proxy.registrar.commit = remote_commit(top.get_link)
        proxy.registrar.commit_timeout = max(float(cfg.section(s)["write_timeout"]) for s in _ring_names(cfg))
    if proxy.presence is not None:  # [presence] max_subscriptions is the proxy's: each worker takes its share
        import math

        settings = proxy.presence.settings
        proxy.presence.settings = attrs.evolve(settings, max_subscriptions=math.ceil(settings.max_subscriptions / count))
    if proxy.digest is not None:
        nonces = top.nonces = WorkerNonceCounts(reactor, cfg.section("auth")["nonce_ttl"], index, count, top.get_link)
        proxy.digest.share_nonce_state(nonces, nonces.random)
    top.table = proxy.registrar.table
    stack = build_stack(cfg, reactor, proxy, limits, tls, reuse_port=True)
    # refusal lines, trace; the counts are reported to the parent
    observe_sip(cfg, reactor, stack, proxy, None, sources, ReportingTally(reactor) if reporting else None)
    transport = stack.transport
    stack.handoff = transport.workers = Handoff(
        reactor, index, count, directory, stack, send_stream=transport.send_own_stream, streams=transport.own_streams
    )
    if proxy.core.ack_gate is not None:  # a 2xx's ACK (our stamp) is no transaction's: not passed round
        stack.handoff.in_dialog = proxy.core.ack_gate.stamped
    stack.setServiceParent(top)
    stack_reloads(reactor, stack, proxy).setServiceParent(top)
    if sources is not None:
        MetricsReporter(reactor, sources, top.get_link).setServiceParent(top)
    return top


def _ring_names(cfg: Config) -> list[str]:
    """The rings the parent is a member of, by provider name."""
    names = ["overlay"] if cfg.section("overlay")["listen"] else []
    return names + [f"overlay:{n}" for n, s in cfg.named("overlay").items() if s["listen"]]


def build_store(cfg: Config, reactor: Any, ring: Any) -> Any:
    """The users' store resource (web/store.py) on ``ring``: the users of
    ``[auth] users_file`` (with the realm's shared nonce secret) may use
    their own AoRs of our domains; ``[store]``'s limits."""
    from sosimple_proxy.web.store import store_api, store_credentials

    auth = cfg.section("auth")
    secret = nonce_secret(cfg) if auth["users_file"] else None
    credentials = store_credentials(
        reactor, auth["users_file"], auth["realm"], auth["algorithms"], auth["nonce_ttl"], secret
    )
    return store_api(reactor, dict(cfg.section("store")), ring, credentials, our_domains(cfg))


def _publish_path(overlay: Any) -> str:
    """A ring's ``publish_path``: which bindings go into it with our Path."""
    return str(getattr(overlay, "settings", {}).get("publish_path", routing.PATH_ALWAYS))


def _ring_tls(section: str, settings: Mapping[str, Any]) -> Any:
    """A CA ring's TLS (None for an open ring), its files read now: a bad
    one, or a node_id the certificate contradicts, stops startup with one
    line naming the [overlay] key, before any port is bound."""
    try:
        tls = ring_tls_or_error(section, settings)
        _ca_key_or_error(section, settings)
        return tls
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def ring_tls_or_error(section: str, settings: Mapping[str, Any]) -> Any:
    """:func:`~sosimple_proxy.overlay.ringtls.ring_tls`, its problems as a
    :class:`ConfigError` naming ``section`` and the key."""
    from sosimple_proxy.overlay.ringtls import RingSetupError, ring_tls

    try:
        return ring_tls(settings)
    except RingSetupError as e:
        raise ConfigError(section, e.key, e.problem) from None


def _ca_key_or_error(section: str, ring: Mapping[str, Any]) -> None:
    """``ca_key`` (signs the ring's configuration document) is readable and
    belongs to ``ca``."""
    if not ring.get("ca_key"):
        return
    from sosimple_proxy.security import nodecerts, signed_json

    if not ring["ca"]:
        raise ConfigError(section, "ca_key", "needs ca (the certificate of the CA whose key this is)")
    try:
        key = nodecerts.load_private_key(ring["ca_key"], "ca_key")
        envelope = signed_json.sign({"probe": 1}, key)
        signed_json.verify(envelope, signed_json.load_cas(ring["ca"]))
    except (nodecerts.NodeCertError, OSError, ValueError) as e:
        raise ConfigError(section, "ca_key", f"{ring['ca_key']}: {e}".replace("bad signature: the document was changed or not signed by the ring's CA", "not the key of the CA in ca")) from None


def read_startup_files(cfg: Config, log: Logger = log) -> TLSContexts | None:
    """Read the files startup needs before any port is bound, so that a bad
    one stops startup with one line; ``sosimple check`` runs this too.

    ``load_config`` already read ``[admin]``'s certificate, key and users
    file; this adds the SIP side's ``[tls]`` files (the contexts it
    returns, None without SIP listeners), and each CA ring's ``ca``,
    ``certificate`` and ``key``.  Raises :class:`ConfigError`.
    """
    rings = [("overlay", cfg.section("overlay"))] + [(f"overlay:{n}", r) for n, r in cfg.named("overlay").items()]
    ours = None  # the main ring's node certificate: our identity on SIP TLS too
    for section, ring in rings:
        if ring["listen"]:
            tls = ring_tls_or_error(section, ring)
            _ca_key_or_error(section, ring)
            if section == "overlay":
                ours = tls
    if not cfg.proxy["listen"]:
        return None
    try:
        return build_tls(tls_config(cfg), cfg.proxy["listen"], log=log, ring=ours)
    except TLSFileError as e:
        raise ConfigError("tls", e.key, e.problem) from None
