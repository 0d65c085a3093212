"""The transaction user: a request runs through a short chain of processors.

As in reSIProcate's repro, each processor looks at the request and either
answers it (returns a :class:`Response`) or lets the next one look
(returns ``None``).  The order is :attr:`ProxyCore.processors`, in one place.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.config import Config
from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.sanity import check_request
from sosimple_proxy.proxy.targets import Addressing
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.transaction import ITransactionUser, ServerTransaction
from sosimple_proxy.sip.transport import Peer

log = Logger()

# What we answer to an OPTIONS addressed to us (RFC 3261 11.2).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER"
ACCEPT = "application/sdp"
SUPPORTED = "path"
# Option tags we understand as a proxy (Proxy-Require) and as a UAS (Require).
PROXY_SUPPORTED: frozenset[str] = frozenset()
UAS_SUPPORTED: frozenset[str] = frozenset({"path"})

Processor = Callable[["ProxyCore", Request, ServerTransaction], "Response | None"]


@implementer(ITransactionUser)
class ProxyCore:
    """The proxy's transaction user."""

    def __init__(self, reactor: Any, cfg: Config) -> None:
        self.reactor = reactor
        self.cfg = cfg
        self.stack: Any = None
        self.addressing = Addressing(cfg.proxy["domains"], cfg.proxy["listen"])
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
        )
        self.processors: Sequence[Processor] = (
            sanity,
            cancel,
            to_self,
            register,
            locate,
        )

    def attach(self, stack: Any) -> None:
        """Called by the stack that feeds us, so we can learn bound ports."""
        self.stack = stack
        self.addressing.listening = stack.transport.listening
        self.bindings.start()

    # -- ITransactionUser

    def requestReceived(self, request: Request, transaction: ServerTransaction) -> None:
        for processor in self.processors:
            response = processor(self, request, transaction)
            if response is not None:
                transaction.respond(response)
                return
        transaction.respond(make_response(request, 500, "No processor answered"))

    def responseReceived(self, response: Response, transaction: Any) -> None:
        log.debug("response {r} for {t}", r=response, t=transaction)

    def strayAck(self, ack: Request, source: Peer) -> None:
        log.debug("ACK from {source} matches nothing; dropped", source=source)

    def strayResponse(self, response: Response, source: Peer) -> None:
        log.debug("response {r} from {source} matches no transaction; dropped", r=response, source=source)

    def serverTransactionFailed(self, transaction: ServerTransaction, reason: str) -> None:
        log.info("server transaction {t} failed: {reason}", t=transaction, reason=reason)


# --- the processors, in chain order


def sanity(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """RFC 3261 16.3 request validation (scheme, Max-Forwards, Proxy-Require)."""
    return check_request(request, core.addressing, PROXY_SUPPORTED)


def cancel(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """A CANCEL that matches no INVITE we hold gets 481 (RFC 3261 16.10)."""
    if request.method != "CANCEL":
        return None
    invite = core.stack.transactions.find_cancelled(request) if core.stack else None
    if invite is None:
        return make_response(request, 481, "Call/Transaction Does Not Exist")
    # The INVITE was already answered finally (we do not proxy it yet), so
    # there is nothing left to cancel; the CANCEL itself still succeeds.
    return make_response(request, 200, "OK")


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
    if request.method == "REGISTER" or not core.addressing.is_self(request.ruri):
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
    if request.method != "REGISTER":
        return None
    refused = _unsupported_require(request)
    if refused is not None:
        return refused
    return core.registrar.handle(request, received=str(txn.source))


def locate(core: ProxyCore, request: Request, txn: ServerTransaction) -> Response | None:
    """Where does the request go?  Local bindings for our domains."""
    uri = request.ruri
    if core.addressing.is_ours(uri):
        bindings = core.bindings.lookup(core.addressing.aor(uri))
        if not bindings:
            return make_response(request, 404, "Not Found")
        return make_response(request, 480, "Temporarily Unavailable")
    host = getattr(uri, "host", None) or "this address"
    return make_response(request, 404, f"Not Found: no route to {host}")
