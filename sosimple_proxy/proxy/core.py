"""The transaction user: a request runs through a short chain of processors.

As in reSIProcate's repro, each processor looks at the request and either
answers it (returns a :class:`Response`), takes it over (returns
:data:`HANDLED`, e.g. after starting a response context or an overlay
lookup) or lets the next one look (returns ``None``).  The order is
:attr:`ProxyCore.processors`, in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.config import Config
from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.dialplan import DialPlan, DidTable
from sosimple_proxy.location.interfaces import Found, ILocator, Miss, Target
from sosimple_proxy.location.local import LocalLocator
from sosimple_proxy.location.pstn import PassNumbers, PstnLocator
from sosimple_proxy.location.ring import RingLocator, RingPublisher
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.context import ResponseContext, forwarded
from sosimple_proxy.proxy.forward import RequestForwarder, request_loop_hash
from sosimple_proxy.proxy.redirect import redirect_response
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.sanity import check_request
from sosimple_proxy.proxy.targets import Addressing
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.interfaces import IStackUser
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.server_transaction import ServerTransaction
from sosimple_proxy.sip.uri import is_ip

log = Logger()

# What we answer to an OPTIONS addressed to us (RFC 3261 11.2).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER"
ACCEPT = "application/sdp"
SUPPORTED = "path"
# Option tags we understand as a proxy (Proxy-Require) and as a UAS (Require).
PROXY_SUPPORTED: frozenset[str] = frozenset()
UAS_SUPPORTED: frozenset[str] = frozenset({"path"})

HANDLED: Any = object()
_CANCELLED: Any = object()  # txn.data of an INVITE cancelled while we looked it up

Processor = Callable[["ProxyCore", Request, ServerTransaction], Any]


def build_locators(cfg: Config, core: "ProxyCore") -> dict[str, ILocator]:
    """The providers this build has, by the name used in [location] order."""
    available: dict[str, ILocator] = {
        "local": LocalLocator(core.bindings, core.addressing.is_ours, core.addressing.aor),
        "routes": StaticRoutes(cfg.section("routes")),
    }
    for name, (overlay, addressing) in core.rings.items():
        available[name] = RingLocator(
            name, overlay, addressing.is_ours, addressing.aor, core.is_our_route, clock=core.reactor
        )
    # Phone numbers are not users: providers of users pass the numbers they miss on.
    for name in ["local", *core.rings]:
        available[name] = PassNumbers(available[name], core.dialplan)
    pstn = PstnLocator.from_config(cfg, core.dialplan, core.reactor, from_domain=core.addressing.primary or "localhost")
    if pstn is not None:
        available["pstn"] = pstn
    # RFC 3263 for other domains, when service.py gave us its resolver
    # (only with "dns" in [location] order: nothing else queries DNS).
    rfc3263 = getattr(core.resolve, "rfc3263", None)
    if rfc3263 is not None:
        from sosimple_proxy.location.dns import DNSLocator

        routes = available["routes"]
        available["dns"] = DNSLocator(
            rfc3263,
            lambda uri: core.addressing.is_ours(uri)
            or routes.serves(uri)  # type: ignore[attr-defined]
            or any(a.is_ours(uri) for _, a in core.rings.values()),
            lambda: core.stack.transport.listening() if core.stack is not None else (),
        )
    return available


def _holds(addressing: Addressing) -> Callable[[str], bool]:
    def holds(aor: str) -> bool:
        return aor.rpartition("@")[2] in addressing.domains

    return holds


def ring_domains(cfg: Config, name: str) -> list[str]:
    """The domains whose users a ring holds (site-ini.md, [overlay] domains)."""
    section = cfg.section(name) if name in cfg.sections else cfg.section("overlay")
    return list(section["domains"]) or (list(cfg.proxy["domains"]) if name == "overlay" else [])


@implementer(IStackUser)
class ProxyCore:
    """The proxy's transaction user."""

    def __init__(
        self,
        reactor: Any,
        cfg: Config,
        resolve: Callable[[str], Any] | None = None,
        overlays: dict[str, Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.cfg = cfg
        self.stack: Any = None
        self.addressing = Addressing(cfg.proxy["domains"], cfg.proxy["listen"])
        self.redirect = cfg.proxy["mode"] == "redirect"
        self.recurse_on_3xx = cfg.proxy["recurse_on_3xx"]
        self.timer_c = cfg.sip["timer_c"]
        self.resolve = resolve
        reg = cfg.section("registrar")
        self.bindings = BindingTable(reactor)
        self.registrar = Registrar(
            reactor,
            self.bindings,
            min_expires=reg["min_expires"],
            max_expires=reg["max_expires"],
            default_expires=reg["default_expires"],
            max_contacts=reg["max_contacts"],
            is_ours=self.addressing.is_ours,
            aor=self.addressing.aor,
        )
        # Rings by provider name ("overlay", "overlay:NAME"), each with the
        # addressing of the domains it holds.
        self.rings: dict[str, tuple[Any, Addressing]] = {
            name: (overlay, Addressing(ring_domains(cfg, name), cfg.proxy["listen"]))
            for name, overlay in (overlays or {}).items()
        }
        self.publishers: list[RingPublisher] = []
        self.dialplan = DialPlan.from_config(cfg.section("pstn"))
        self.dids = DidTable(self.dialplan, cfg.section("did"))
        available = build_locators(cfg, self)
        self.routes: StaticRoutes = available["routes"]  # type: ignore[assignment]
        order = [n for n in cfg.section("location")["order"] if n in available]
        self.location = LocationChain([available[n] for n in order])
        self.providers = available
        self.forwarder: RequestForwarder | None = None
        self.processors: Sequence[Processor] = (
            sanity,
            loop_detection,
            cancel,
            route_information,
            to_self,
            register,
            did,
            forward,
        )

    def attach(self, stack: Any) -> None:
        """Called by the stack that feeds us, so we can learn bound ports."""
        self.stack = stack
        self.addressing.listening = stack.transport.listening
        self.forwarder = RequestForwarder(stack, self.cfg.proxy["record_route"], self.resolve)
        for name, (overlay, addressing) in self.rings.items():
            addressing.listening = stack.transport.listening
            # Our registrar's users go to every ring that holds their domain.
            if any(d in addressing.domains for d in self.addressing.domains):
                holds = _holds(addressing)
                self.publishers.append(RingPublisher(overlay, self.bindings, self.self_route, self.reactor, accepts=holds))
        self.bindings.start()
        pstn = self.providers.get("pstn")
        if pstn is not None:
            pstn.attach(stack)  # type: ignore[attr-defined]  # gateway OPTIONS probes start

    def detach(self) -> None:
        """The stack is stopping: timers of ours end (binding sweeps, probes)."""
        self.bindings.stop()
        pstn = self.providers.get("pstn")
        if pstn is not None:
            pstn.detach()  # type: ignore[attr-defined]

    def self_route(self, binding: Any = None) -> str | None:
        """How other proxies of the ring reach this one: a Route value; for
        a binding registered over a connection, one that names the flow."""
        listening = self.stack.transport.listening() if self.stack else []
        if not listening:
            return None
        first = next((a for a in listening if a.transport == "udp"), listening[0])
        received = getattr(binding, "received", None)
        flow = routing.parse_flow(received)
        user = routing.flow_token(received) if flow is not None and flow.reliable else None
        return routing.record_route_value(first, user=user)

    def is_our_route(self, uri: Any) -> bool:
        return self.addressing.is_our_host(uri.host, uri.port)

    # -- ITransactionUser

    def requestReceived(self, request: Request, transaction: ServerTransaction) -> None:
        for processor in self.processors:
            response = processor(self, request, transaction)
            if response is None:
                continue
            if response is not HANDLED:
                transaction.respond(response)
            return
        transaction.respond(make_response(request, 500, "Server Internal Error: no processor answered"))

    def responseReceived(self, response: Response, transaction: Any) -> None:
        log.debug("response {r} for {t}", r=response, t=transaction)

    def strayAck(self, ack: Request, source: Peer) -> None:
        """The ACK of a 2xx is its own transaction: route it on (16.11)."""
        try:
            self._route_ack(ack)
        except Exception:
            log.failure("ACK from {source} not forwarded", source=source)

    def _route_ack(self, ack: Request) -> None:
        if check_request(ack, self.addressing, PROXY_SUPPORTED) is not None:
            log.info("ACK dropped: it fails the request checks")
            return
        if routing.is_looped(ack, request_loop_hash(ack), self.addressing.is_our_host):
            log.info("ACK dropped: loop")
            return
        routing.preprocess_routes(ack, self.is_our_route)
        if "route" not in ack.headers and self.addressing.is_ours(ack.ruri):
            uri = ack.ruri
            if not uri.user:
                return  # an ACK for us: nothing to do
            bindings = self.bindings.lookup(self.addressing.aor(uri))
            if not bindings:
                log.info("ACK for {uri} dropped: no binding", uri=str(uri))
                return
            ack.uri = bindings[0].contact
        assert self.forwarder is not None
        self.forwarder.forward_stateless(ack, None)

    def strayResponse(self, response: Response, source: Peer) -> None:
        """A response no transaction of ours matches: forward it by Via if
        the top Via is ours (18.2.1, 16.7 step 9 for late 2xx), else drop."""
        try:
            via = response.top_via
            if via is None or not self.addressing.is_our_host(via.host, via.port):
                log.info("response {r} from {source} not for us; dropped", r=response, source=source)
                return
            assert self.forwarder is not None
            self.forwarder.send_response_by_via(forwarded(response))
        except Exception:
            log.failure("stray response from {source} not forwarded", source=source)

    def serverTransactionFailed(self, transaction: ServerTransaction, reason: str) -> None:
        log.info("server transaction {t} failed: {reason}", t=transaction, reason=reason)

    # -- forwarding

    def proxy_to(self, request: Request, txn: ServerTransaction, targets: Sequence[Target]) -> Any:
        if self.redirect:
            return redirect_response(request, targets)
        assert self.forwarder is not None
        context = ResponseContext(
            self.reactor,
            self.forwarder,
            request,
            txn,
            targets,
            timer_c=self.timer_c,
            recurse_on_3xx=self.recurse_on_3xx,
            retarget=self.retarget,
        )
        context.start()
        return HANDLED

    def retarget(self, target: Target, response: Response) -> Any:
        """A branch failed: the provider that gave the target may know better
        (a cached contact looked up again, a gateway or DNS target avoided)."""
        provider = self.providers.get(target.source)
        hook = getattr(provider, "target_failed", None)
        return hook(target, response) if hook is not None else None

    def located(self, result: Any, request: Request, txn: ServerTransaction) -> Any:
        """Turn a location answer into a response or a response context."""
        if txn.data is _CANCELLED:
            return make_response(request, 487, "Request Terminated")
        if isinstance(result, Found):
            return self.proxy_to(request, txn, result.targets)
        uri = request.ruri
        if isinstance(result, Miss):
            return make_response(request, result.status, result.reason or "Not Found")
        if not self.addressing.is_ours(uri) and getattr(uri, "is_sip", False) and is_ip(uri.host or ""):
            # 16.5: a URI of a domain we are not responsible for "MUST be
            # placed into the target set as the only target".  An IP
            # address needs no provider to be reached.
            return self.proxy_to(request, txn, [Target(uri, 1.0, (), None, "direct")])
        host = getattr(uri, "host", None) or str(uri)
        return make_response(request, 404, f"Not Found: no route to {host}")


# --- the processors, in chain order


def sanity(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """RFC 3261 16.3 request validation (scheme, Max-Forwards, Proxy-Require)."""
    return check_request(request, core.addressing, PROXY_SUPPORTED)


def loop_detection(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """16.3 step 4: "If the request contains a Via header field with a
    sent-by value that equals a value placed into previous requests by the
    proxy, [...] the proxy MUST compute the branch parameter [...] and
    compare it [...].  If [it matches], the request has looped and the
    proxy MUST return a 482 (Loop Detected)"."""
    if len(request.headers.get_all("via")) < 2 and "," not in (request.headers.get("via") or ""):
        return None  # only the sender's Via: cannot have passed us
    if routing.is_looped(request, request_loop_hash(request), core.addressing.is_our_host):
        return make_response(request, 482, "Loop Detected")
    return None


def cancel(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """CANCEL (16.10): answered 200 here, and every branch of the INVITE is
    cancelled.  A CANCEL that matches no INVITE we hold gets 481: we keep
    state for every INVITE we forward, so there is nothing to forward it to.
    """
    if request.method != "CANCEL":
        return None
    invite = core.stack.transactions.find_cancelled(request) if core.stack else None
    if invite is None:
        return make_response(request, 481, "Call/Transaction Does Not Exist")
    context = invite.data
    if isinstance(context, ResponseContext):
        context.cancel()
    elif context is None and invite.last_response is not None and invite.last_response.status >= 200:
        pass  # already answered: nothing left to cancel
    else:
        invite.data = _CANCELLED  # still being located: answered 487 when the lookup ends
    return make_response(request, 200, "OK")


def route_information(core: ProxyCore, request: Request, txn: ServerTransaction) -> None:
    """16.4: strict-router fix-up, and our own Route entries removed."""
    routing.preprocess_routes(request, core.is_our_route)
    return None


def _unsupported_require(request: Request) -> Response | None:
    tags = [t.strip() for t in request.headers.values("require") if t.strip()]
    missing = [t for t in tags if t.lower() not in UAS_SUPPORTED]
    if missing:
        # RFC 3261 8.2.2.3: a UAS that does not understand an option tag in
        # Require MUST answer 420 listing it in Unsupported.
        return make_response(request, 420, "Bad Extension", extra=[("Unsupported", ", ".join(missing))])
    return None


def to_self(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """Requests addressed to the proxy itself: OPTIONS is answered, the rest 501."""
    if request.method == "REGISTER" or "route" in request.headers or not core.addressing.is_self(request.ruri):
        return None
    refused = _unsupported_require(request)
    if refused is not None:
        return refused
    if request.method == "OPTIONS":
        return make_response(
            request,
            200,
            "OK",
            extra=[("Allow", ALLOW), ("Accept", ACCEPT), ("Supported", SUPPORTED)],
        )
    return make_response(request, 501, f"Not Implemented: {request.method} to this proxy", extra=[("Allow", ALLOW)])


def register(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """REGISTER for our domains goes to the registrar; for a domain in
    [routes] it is forwarded; any other is refused 403."""
    if request.method != "REGISTER" or "route" in request.headers:
        return None
    if not core.addressing.is_ours(request.ruri):
        if core.routes.serves(request.ruri):
            return None
        return make_response(request, 403, "Forbidden: not a domain of this registrar")
    refused = _unsupported_require(request)
    if refused is not None:
        return refused
    return core.registrar.handle(request, received=str(txn.source))


def did(core: ProxyCore, request: Request, txn: ServerTransaction) -> None:
    """[did]: a request dialling one of our numbers (from a gateway, or a
    local user calling it) is retargeted to the AoR the number maps to,
    which location then finds as usual."""
    if not core.dids.table or "route" in request.headers or request.method in ("REGISTER", "ACK", "CANCEL"):
        return None
    uri = request.ruri
    aor = core.dids.lookup(uri, ours=core.addressing.is_ours(uri))
    if aor is not None:
        log.info("DID {uri} -> {aor}", uri=request.uri, aor=aor)
        request.uri = aor
    return None


def forward(core: ProxyCore, request: Request, txn: ServerTransaction) -> Any:
    """Everything else is proxied: along its Route set, or to what the
    location chain finds for the Request-URI (16.5)."""
    if "route" in request.headers:
        # A loose-routed request (in-dialog, or pre-loaded): the Request-URI
        # is the only target and the Route set leads the way.
        return core.proxy_to(request, txn, [Target(request.ruri, 1.0, (), None, "route")])
    if request.flow is not None:
        # Sent through us by another proxy of the ring, for a UA whose
        # connection we hold: the Request-URI is its contact, the flow its way.
        return core.proxy_to(request, txn, [Target(request.ruri, 1.0, (), request.flow, "flow")])
    result = core.location.locate(request.ruri)
    if isinstance(result, Deferred):
        result.addCallback(core.located, request, txn)
        result.addCallback(_respond_unless_handled, txn)
        result.addErrback(_lookup_failed, request, txn)
        return HANDLED
    return core.located(result, request, txn)


def _respond_unless_handled(result: Any, txn: ServerTransaction) -> None:
    if result is not HANDLED and result is not None:
        txn.respond(result)


def _lookup_failed(failure: Any, request: Request, txn: ServerTransaction) -> None:
    log.failure("location lookup for {uri} failed", failure, uri=request.uri)
    txn.respond(make_response(request, 500, "Server Internal Error: location lookup failed"))


__all__ = ["ProxyCore", "HANDLED"]
