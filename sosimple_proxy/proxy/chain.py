"""The proxy's policy: a short chain of small request processors.

:func:`proxy_chain` is the order, in one place.  Each processor is built
with the collaborators it needs and is called with the request's
:class:`~sosimple_proxy.proxy.runner.Job`; what it may return is described
in :mod:`sosimple_proxy.proxy.runner`.  Route processing (16.4) classifies
the request once (:class:`~sosimple_proxy.proxy.classify.Kind`); the
processors after it read ``job.kind``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.dialplan import DidTable
from sosimple_proxy.location.interfaces import Found, IRetargeting, Miss, Target
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.proxy.classify import Kind, classify
from sosimple_proxy.proxy.context import ResponseContext
from sosimple_proxy.proxy.forward import request_loop_hash
from sosimple_proxy.proxy.interfaces import IForwarder
from sosimple_proxy.proxy.redirect import redirect_response
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.runner import CONTINUE, TAKEN, Job, PendingLookup, Processor, Step
from sosimple_proxy.proxy.sanity import check_request
from sosimple_proxy.proxy.stack_link import StackLink
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.transaction import ServerTransaction
from sosimple_proxy.sip.uri import is_ip

log = Logger()

# What we answer to an OPTIONS addressed to us (RFC 3261 11.2).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER"
ACCEPT = "application/sdp"
SUPPORTED = "path"
# Option tags we understand as a proxy (Proxy-Require) and as a UAS (Require).
PROXY_SUPPORTED: frozenset[str] = frozenset()
UAS_SUPPORTED: frozenset[str] = frozenset({"path"})

# How a target set is acted on: a response context, or a 302 in redirect mode.
SendTo = Callable[[Request, ServerTransaction, Sequence[Target]], Step]


def proxy_chain(
    *,
    addressing: Addressing,
    stack: StackLink,
    registrar: Registrar,
    routes: StaticRoutes,
    dids: DidTable,
    location: LocationChain,
    send_to: SendTo,
) -> list[Processor]:
    """The processors, in the order they see a request."""
    return [
        Sanity(addressing),
        LoopDetection(addressing),
        # (authentication goes here: after sanity, before anything acts)
        Cancel(stack),
        RouteInformation(addressing),  # 16.4; the request is classified here
        Register(addressing, routes, registrar),
        ToProxy(),
        Did(dids, addressing),
        Locate(location),
        # (the relay rule goes here: location has said where it would go)
        Forward(addressing, send_to),
    ]


class Sanity:
    """RFC 3261 16.3 request validation (scheme, Max-Forwards, Proxy-Require)."""

    name = "sanity"

    def __init__(self, addressing: Addressing) -> None:
        self.addressing = addressing

    def __call__(self, job: Job) -> Step:
        refused = check_request(job.request, self.addressing, PROXY_SUPPORTED)
        return CONTINUE if refused is None else refused


class LoopDetection:
    """16.3 step 4: "If the request contains a Via header field with a
    sent-by value that equals a value placed into previous requests by the
    proxy, [...] the proxy MUST compute the branch parameter [...] and
    compare it [...].  If [it matches], the request has looped and the
    proxy MUST return a 482 (Loop Detected)"."""

    name = "loop detection"

    def __init__(self, addressing: Addressing) -> None:
        self.addressing = addressing

    def __call__(self, job: Job) -> Step:
        request = job.request
        if len(request.headers.get_all("via")) < 2 and "," not in (request.headers.get("via") or ""):
            return CONTINUE  # only the sender's Via: cannot have passed us
        if routing.is_looped(request, request_loop_hash(request), self.addressing.is_our_host):
            return make_response(request, 482, "Loop Detected")
        return CONTINUE


class Cancel:
    """CANCEL (16.10): answered 200 here, and every branch of the INVITE is
    cancelled.  A CANCEL that matches no INVITE we hold gets 481: we keep
    state for every INVITE we forward, so there is nothing to forward it to.
    """

    name = "cancel"

    def __init__(self, stack: StackLink) -> None:
        self.stack = stack

    def __call__(self, job: Job) -> Step:
        request = job.request
        if request.method != "CANCEL":
            return CONTINUE
        invite = self.stack.transactions.find_cancelled(request)
        if invite is None:
            return make_response(request, 481, "Call/Transaction Does Not Exist")
        state = invite.data
        if isinstance(state, (ResponseContext, PendingLookup)):
            state.cancel()
        # else already answered: nothing left to cancel
        return make_response(request, 200, "OK")


class RouteInformation:
    """16.4: strict-router fix-up and our own Route entries removed; then
    the request is classified, once."""

    name = "route information"

    def __init__(self, addressing: Addressing) -> None:
        self.addressing = addressing

    def __call__(self, job: Job) -> Step:
        routing.preprocess_routes(job.request, self.addressing.is_ours)
        job.kind = classify(job.request, self.addressing)
        return CONTINUE


def _unsupported_require(request: Request) -> Response | None:
    tags = [t.strip() for t in request.headers.values("require") if t.strip()]
    missing = [t for t in tags if t.lower() not in UAS_SUPPORTED]
    if missing:
        # RFC 3261 8.2.2.3: a UAS that does not understand an option tag in
        # Require MUST answer 420 listing it in Unsupported.
        return make_response(request, 420, "Bad Extension", extra=[("Unsupported", ", ".join(missing))])
    return None


class Register:
    """REGISTER for our domains goes to the registrar; for a domain in
    [routes] it is forwarded; any other is refused 403."""

    name = "registrar"

    def __init__(self, addressing: Addressing, routes: StaticRoutes, registrar: Registrar) -> None:
        self.addressing = addressing
        self.routes = routes
        self.registrar = registrar

    def __call__(self, job: Job) -> Step:
        request = job.request
        if request.method != "REGISTER" or job.kind.routed:
            return CONTINUE
        if not self.addressing.is_ours(request.ruri):
            if self.routes.serves(request.ruri):
                return CONTINUE
            return make_response(request, 403, "Forbidden: not a domain of this registrar")
        refused = _unsupported_require(request)
        if refused is not None:
            return refused
        return self.registrar.handle(request, received=str(job.txn.source))


class ToProxy:
    """Requests addressed to the proxy itself: OPTIONS is answered, the rest 501."""

    name = "to proxy"

    def __call__(self, job: Job) -> Step:
        request = job.request
        if job.kind is not Kind.TO_PROXY:
            return CONTINUE
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


class Did:
    """[did]: a request dialling one of our numbers (from a gateway, or a
    local user calling it) is retargeted to the AoR the number maps to,
    which location then finds as usual."""

    name = "did"

    def __init__(self, dids: DidTable, addressing: Addressing) -> None:
        self.dids = dids
        self.addressing = addressing

    def __call__(self, job: Job) -> Step:
        request = job.request
        if not self.dids.table or job.kind.routed or request.method in ("REGISTER", "ACK", "CANCEL"):
            return CONTINUE
        uri = request.ruri
        aor = self.dids.lookup(uri, ours=self.addressing.is_ours(uri))
        if aor is not None:
            log.info("DID {uri} -> {aor}", uri=request.uri, aor=aor)
            request.uri = aor
        return CONTINUE


class Locate:
    """16.5: the location chain's answer for the Request-URI (``job.located``),
    unless the Route set or a flow of ours already says where it goes."""

    name = "location lookup"

    def __init__(self, location: LocationChain) -> None:
        self.location = location

    def __call__(self, job: Job) -> Step:
        if job.kind.routed or job.request.flow is not None:
            return CONTINUE
        answer = self.location.locate(job.request.ruri)
        if isinstance(answer, Deferred):
            return answer.addCallback(self._store, job)
        return self._store(answer, job)

    @staticmethod
    def _store(answer: Any, job: Job) -> Step:
        job.located = answer
        return CONTINUE


class Forward:
    """Everything else is proxied: along its Route set, over a flow of ours,
    or to what location found (16.5)."""

    name = "forward"

    def __init__(self, addressing: Addressing, send_to: SendTo) -> None:
        self.addressing = addressing
        self.send_to = send_to

    def __call__(self, job: Job) -> Step:
        request = job.request
        targets_or_answer = self._targets(job)
        if isinstance(targets_or_answer, Response):
            return targets_or_answer
        return self.send_to(request, job.txn, targets_or_answer)

    def _targets(self, job: Job) -> list[Target] | Response:
        request = job.request
        uri = request.ruri
        if job.kind.routed:
            # A loose-routed request (in-dialog, or pre-loaded): the
            # Request-URI is the only target and the Route set leads the way.
            return [Target(uri, 1.0, (), None, "route")]
        if request.flow is not None:
            # Sent through us by another proxy of the ring, for a UA whose
            # connection we hold: the Request-URI is its contact, the flow its way.
            return [Target(uri, 1.0, (), request.flow, "flow")]
        answer = job.located
        if isinstance(answer, Found):
            return list(answer.targets)
        if isinstance(answer, Miss):
            return make_response(request, answer.status, answer.reason or "Not Found")
        if not self.addressing.is_ours(uri) and getattr(uri, "is_sip", False) and is_ip(uri.host or ""):
            # 16.5: a URI of a domain we are not responsible for "MUST be
            # placed into the target set as the only target".  An IP
            # address needs no provider to be reached.
            return [Target(uri, 1.0, (), None, "direct")]
        host = getattr(uri, "host", None) or str(uri)
        return make_response(request, 404, f"Not Found: no route to {host}")


class StatefulForwarding:
    """A target set becomes a response context (16.6-16.10): forking, Timer
    C, failover, and retargeting through the location chain."""

    def __init__(
        self,
        clock: Any,
        forwarder: IForwarder,
        retarget: IRetargeting | None,
        timer_c: float,
        recurse_on_3xx: bool,
    ) -> None:
        self.clock = clock
        self.forwarder = forwarder
        self.retarget = retarget
        self.timer_c = timer_c
        self.recurse_on_3xx = recurse_on_3xx

    def __call__(self, request: Request, txn: ServerTransaction, targets: Sequence[Target]) -> Step:
        context = ResponseContext(
            self.clock,
            self.forwarder,
            request,
            txn,
            targets,
            timer_c=self.timer_c,
            recurse_on_3xx=self.recurse_on_3xx,
            retarget=self.retarget,
        )
        context.start()
        return TAKEN


def redirecting(request: Request, txn: ServerTransaction, targets: Sequence[Target]) -> Step:
    """Redirect mode (the paper's adaptor): 302 with the target set."""
    return redirect_response(request, targets)
