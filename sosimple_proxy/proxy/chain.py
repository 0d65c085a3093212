"""The proxy's policy: a short chain of small request processors, and the
runner that drives them (after reSIProcate's repro).

Each processor is called with the request's :class:`Job` and returns a step:

- :data:`CONTINUE` (or None): the next processor looks;
- a ``Response``: sent, the chain stops;
- :data:`TAKEN`: the processor took the transaction over (a response
  context answers it), the chain stops;
- a ``Deferred`` (a ring or DNS lookup): the chain waits; what it fires
  with is one of the above, a failure is answered 500.  While it waits the
  server transaction's ``data`` is a :class:`PendingLookup`, which a CANCEL
  marks: the INVITE then ends 487 instead of going on (RFC 3261 16.10).

Route processing (16.4) classifies the request once (:class:`Kind`); the
processors after it read ``job.kind``.  :func:`proxy_chain` is the order,
in one place.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.dialplan import DidTable
from sosimple_proxy.location.interfaces import Found, IRetargeting, Miss, Target
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.proxy.context import ResponseContext
from sosimple_proxy.proxy.forward import request_loop_hash
from sosimple_proxy.proxy.interfaces import IForwarder
from sosimple_proxy.proxy.redirect import redirect_response
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.sanity import check_request
from sosimple_proxy.proxy.stack_link import StackLink
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


# --- the runner


class Outcome(enum.Enum):
    """What a processor says when it does not answer the request itself."""

    CONTINUE = "continue"  # the next processor looks
    TAKEN = "taken"  # a response context (or another owner) answers it


CONTINUE = Outcome.CONTINUE
TAKEN = Outcome.TAKEN


class Trust(enum.Enum):
    """Who sent a request, as authentication found (DESIGN.md, "Where
    security lives")."""

    TRUSTED = "trusted"  # a source in [auth] trusted: a gateway, a proxy of ours
    USER = "user"  # one of our users, authenticated (Job.user says who)
    STRANGER = "stranger"  # anybody else: may only reach our own users


@attrs.define(eq=False)
class Job:
    """One request going through the chain, and what the chain learnt of it."""

    request: Request
    txn: ServerTransaction
    # Set once, by route processing (16.4).
    kind: Kind | None = None
    # The location chain's answer (Found, Miss or NOT_MINE), once asked.
    located: Any = None
    # Set by authentication (before anything acts on the request).
    trust: Trust = Trust.STRANGER
    user: str | None = None
    # The top Route was our own Record-Route, stamped for this very dialog.
    stamped: bool = False
    # The top Route was a Path entry we published, stamped for the
    # Request-URI's contact (proxy/path_stamp.py).
    path_stamped: bool = False


@attrs.define(eq=False)
class PendingLookup:
    """``txn.data`` while a processor waits on a Deferred."""

    cancelled: bool = False

    def cancel(self) -> None:
        """The caller CANCELled: answer 487 when the wait ends."""
        self.cancelled = True


Step = Any  # CONTINUE | TAKEN | Response | None | Deferred of one of them
Processor = Callable[[Job], Step]


class Chain:
    """Runs processors in order until one answers or takes the request."""

    def __init__(self, processors: Sequence[Processor]) -> None:
        self.processors = list(processors)

    def run(self, request: Request, txn: ServerTransaction) -> None:
        self._run(Job(request, txn), 0)

    def _run(self, job: Job, start: int) -> None:
        processors = self.processors
        for i in range(start, len(processors)):
            step = processors[i](job)
            if isinstance(step, Deferred):
                self._wait(step, job, i)
                return
            if step is None or step is CONTINUE:
                continue
            self._stop(job, step)
            return
        job.txn.respond(make_response(job.request, 500, "Server Internal Error: no processor answered"))

    def _wait(self, d: Deferred, job: Job, i: int) -> None:
        pending = PendingLookup()
        job.txn.data = pending
        d.addCallback(self._resume, job, i, pending)
        # also what the later processors raise, as when they run at once
        d.addErrback(self._failed, job, i, pending)

    def _resume(self, step: Step, job: Job, i: int, pending: PendingLookup) -> None:
        if job.txn.data is pending:
            job.txn.data = None
        if pending.cancelled:
            # 16.10: the INVITE we were still locating is answered 487.
            job.txn.respond(make_response(job.request, 487, "Request Terminated"))
        elif step is None or step is CONTINUE:
            self._run(job, i + 1)
        else:
            self._stop(job, step)

    def _failed(self, failure: Any, job: Job, i: int, pending: PendingLookup) -> None:
        log.failure("{step} for {uri} failed", failure, step=_name(self.processors[i]), uri=job.request.uri)
        if job.txn.data is pending:
            job.txn.data = None
        if pending.cancelled:
            job.txn.respond(make_response(job.request, 487, "Request Terminated"))
        else:
            job.txn.respond(make_response(job.request, 500, f"Server Internal Error: {_name(self.processors[i])} failed"))

    @staticmethod
    def _stop(job: Job, step: Step) -> None:
        if isinstance(step, Response):
            job.txn.respond(step)
        elif step is not TAKEN:
            raise TypeError(f"a processor returned {step!r}, not a step")


def _name(processor: Processor) -> str:
    return getattr(processor, "name", None) or getattr(processor, "__name__", None) or type(processor).__name__


# --- classification


class Kind(enum.Enum):
    """How the next hop of a request is decided."""

    # A To tag and a Route set: the dialog's route set leads (12.2, 16.4).
    IN_DIALOG = "in-dialog"
    # No To tag, a Route set (an outbound proxy's route, a Path): it leads.
    PRELOADED = "preloaded"
    # No Route left and the Request-URI names this proxy itself.
    TO_PROXY = "to-proxy"
    # No Route left: the Request-URI decides (location, or a flow of ours);
    # out of dialog, or a dialog whose route set ended at us.
    LOCATE = "locate"

    @property
    def routed(self) -> bool:
        """The Route set, not the Request-URI, says where the request goes."""
        return self in (Kind.IN_DIALOG, Kind.PRELOADED)


def classify(request: Request, addressing: Addressing) -> Kind:
    """The request's :class:`Kind`; call it after our own Route entries are
    removed (:func:`routing.preprocess_routes`)."""
    if "route" in request.headers:
        return Kind.IN_DIALOG if routing.has_to_tag(request) else Kind.PRELOADED
    if addressing.is_self(request.ruri):
        return Kind.TO_PROXY
    return Kind.LOCATE


# --- the processors, in chain order

# How a target set is acted on: a response context, or a 302 in redirect mode.
# (request, its transaction, the targets, whether a 3xx may add targets)
SendTo = Callable[[Request, ServerTransaction, Sequence[Target], bool], Step]


def proxy_chain(
    *,
    addressing: Addressing,
    stack: StackLink,
    registrar: Registrar,
    routes: StaticRoutes,
    dids: DidTable,
    location: LocationChain,
    send_to: SendTo,
    authenticate: Processor | None = None,
    relay: Processor | None = None,
    presence: Processor | None = None,
) -> list[Processor]:
    """The processors, in the order they see a request.

    ``authenticate`` (proxy/authenticate.py) marks the request's sender
    after sanity and before anything acts on it; ``relay``
    (proxy/relay.py) runs once location has said where the request would
    go, so no provider and no Route header can bypass it."""
    processors: list[Processor | None] = [
        Sanity(addressing),
        LoopDetection(addressing),
        authenticate,  # before anything acts: trusted, one of our users, or a stranger
        Cancel(stack),
        RouteInformation(addressing),  # 16.4; the request is classified here
        presence,  # SUBSCRIBE/PUBLISH for our users' presence (presence/agent.py)
        Register(addressing, routes, registrar),
        ToProxy(),
        Did(dids, addressing),
        Locate(location),
        relay,  # location has said where it would go: our user, or elsewhere
        Forward(addressing, send_to),
    ]
    return [p for p in processors if p is not None]


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
        source = job.txn.source if job.txn is not None else None
        routing.preprocess_routes(job.request, self.addressing.is_ours, source)
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


class Presence:
    """SUBSCRIBE and PUBLISH of the ``presence`` event for our users are the
    presence agent's (``sosimple_proxy.presence``), as are in-dialog
    SUBSCRIBEs of its subscriptions; anything it does not serve goes on."""

    name = "presence"

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def __call__(self, job: Job) -> Step:
        request = job.request
        if request.method not in ("SUBSCRIBE", "PUBLISH") or job.kind.routed:
            return CONTINUE
        step = self.agent.handle(
            request, job.txn.source if job.txn is not None else None, job.trust is Trust.TRUSTED, job.user,
            job.kind is Kind.TO_PROXY,
        )
        if isinstance(step, Deferred):
            return step.addCallback(lambda answer: CONTINUE if answer is None else answer)
        return CONTINUE if step is None else step


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
        # A 3xx's Contacts are targets location never chose: the relay rule
        # has not seen them, so a stranger's request never recurses on them.
        return self.send_to(request, job.txn, targets_or_answer, job.trust is not Trust.STRANGER)

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

    def __call__(self, request: Request, txn: ServerTransaction, targets: Sequence[Target],
                 may_recurse: bool = True) -> Step:
        context = ResponseContext(
            self.clock,
            self.forwarder,
            request,
            txn,
            targets,
            timer_c=self.timer_c,
            recurse_on_3xx=self.recurse_on_3xx and may_recurse,
            retarget=self.retarget,
        )
        context.start()
        return TAKEN


def redirecting(request: Request, txn: ServerTransaction, targets: Sequence[Target], may_recurse: bool = True) -> Step:
    """Redirect mode (the paper's adaptor): 302 with the target set."""
    return redirect_response(request, targets)
