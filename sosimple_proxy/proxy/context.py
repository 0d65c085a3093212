"""The response context of a stateful proxy (RFC 3261 16.6 - 16.10).

One :class:`ResponseContext` per forwarded request: it forks to the target
set (highest q-value group first, all of a group in parallel), collects the
final responses of its branches, forwards every 2xx and provisional at once,
picks the best other final response when all branches are done (16.7
step 6), CANCELs pending branches on a 2xx or 6xx or when the caller
cancels (16.10), runs Timer C per INVITE branch (16.8) and, if asked,
recurses on 3xx Contacts.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location.interfaces import IRetargeting, Miss, Target
from sosimple_proxy.proxy.interfaces import IForwarder
from sosimple_proxy.sip.client_transaction import ClientTransaction
from sosimple_proxy.sip.interfaces import IClientTransactionUser
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.server_transaction import ServerTransaction
from sosimple_proxy.sip.transaction_state import TRANSPORT_ERROR

log = Logger()

# 16.7 step 6: "The proxy SHOULD give preference to responses that provide
# information affecting resubmission of this request, such as 401, 407,
# 415, 420, and 484 if the 4xx class is chosen."
_PREFERRED_4XX = (401, 407, 415, 420, 484)


def group_by_q(targets: Sequence[Target]) -> list[list[Target]]:
    """Targets in groups of equal q, highest first (16.6: "in order of q")."""
    groups: dict[float, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.q, []).append(t)
    return [groups[q] for q in sorted(groups, reverse=True)]


def choose_best(finals: Sequence[Response]) -> Response | None:
    """16.7 step 6: a 6xx if any, else the lowest class, 4xx with preferences."""
    if not finals:
        return None
    six = [r for r in finals if r.status >= 600]
    if six:
        return six[0]
    lowest = min(r.status // 100 for r in finals)
    pool = [r for r in finals if r.status // 100 == lowest]
    if lowest == 4:
        for code in _PREFERRED_4XX:
            for r in pool:
                if r.status == code:
                    return r
        # A 408 only says a branch never answered: any real answer is better.
        answered = [r for r in pool if r.status != 408]
        if answered:
            return answered[0]
    return pool[0]


def target_key(target: Target) -> tuple:
    """What makes two targets the same attempt (16.5: a target is tried once)."""
    return (str(target.uri), target.dest, target.route)


def forwarded(response: Response) -> Response:
    """16.7 step 3: a copy with our (top) Via removed.

    Its wire form is the bytes we received minus that Via's line, when the
    message allows it (:meth:`Message.raw_without_top_via`): nothing else
    of a response a proxy forwards changes (16.7 step 9), so nothing is
    serialised again; an edit of the copy's headers (a 401's challenges)
    makes it serialise as usual."""
    headers = response.headers.copy()
    wire = response.raw_without_top_via()
    headers.pop_first_value("via")
    out = Response(response.status, response.reason, headers, response.body, response.version)
    if wire is not None:
        out.set_wire(wire)
    return out


class Branch:
    """One client transaction of a context, with its target and timer C."""

    __slots__ = ("target", "request", "txn", "final", "provisional", "timer_c", "done", "cancelled")

    def __init__(self, target: Target) -> None:
        self.target = target
        self.request: Request | None = None
        self.txn: ClientTransaction | None = None
        self.final: Response | None = None
        self.provisional = False
        self.timer_c: Any = None
        self.done = False
        self.cancelled = False


@implementer(IClientTransactionUser)
class ResponseContext:
    def __init__(
        self,
        clock: Any,
        forwarder: IForwarder,
        request: Request,
        txn: ServerTransaction,
        targets: Sequence[Target],
        *,
        timer_c: float = 180.0,
        recurse_on_3xx: bool = False,
        retarget: IRetargeting | None = None,
    ) -> None:
        self.clock = clock
        self.forwarder = forwarder
        self.request = request
        self.txn = txn
        self.is_invite = request.method == "INVITE"
        self.timer_c = timer_c
        self.recurse_on_3xx = recurse_on_3xx
        # Told of every failed branch (408, 5xx, transport error); may give
        # new targets (or a Deferred of them) to try: the contact cache's
        # second lookup (paper IV.B), a provider marking a target bad.
        self.retarget = retarget
        self._waiting = 0
        self.groups = group_by_q(targets)
        self.tried: set[Any] = set()
        self.branches: list[Branch] = []
        self.finals: list[Response] = []
        self.auth_challenges: list[tuple[str, str]] = []
        self.final_sent = False
        self.got_2xx = False
        self.got_6xx = False
        self.cancelled = False
        self._own: set[int] = set()
        txn.data = self

    # -- driving

    def start(self) -> None:
        if self.is_invite:
            # 16.2: "If the request is an INVITE, a stateful proxy MUST
            # generate a 100 (Trying) response" (unless it knows a
            # provisional will come within 200 ms).
            self.txn.respond(make_response(self.request, 100, "Trying"))
        self._next_group()

    def _next_group(self) -> None:
        while self.groups and not (self.cancelled or self.got_2xx or self.got_6xx):
            group = self.groups.pop(0)
            started = False
            for target in group:
                key = target_key(target)
                if key in self.tried:
                    continue
                self.tried.add(key)
                self._start_branch(target)
                started = True
            if started:
                break
        self._check_done()

    def _start_branch(self, target: Target) -> None:
        pin = getattr(self.forwarder, "pin", None)
        if pin is not None and not target.dest:
            # a next hop named by host: its SRV destinations become fallbacks
            pinned = pin(self.request, target)
            if isinstance(pinned, Deferred):
                self._waiting += 1
                pinned.addCallback(self._pinned)
                return
            target = pinned
        self._branch_for(target)

    def _pinned(self, target: Target) -> None:
        self._waiting -= 1
        if not (self.cancelled or self.got_2xx or self.got_6xx):
            self._branch_for(target)
        self._check_done()

    def _branch_for(self, target: Target) -> None:
        branch = Branch(target)
        self.branches.append(branch)
        try:
            result = self.forwarder.send(self.request, target, self.txn.local, self, source=self.txn.source)
        except Exception as e:
            log.failure("forwarding to {uri} failed", uri=str(target.uri))
            result = self._make(500, f"Server Internal Error: {e}")
        self._branch_started(result, branch)

    def _branch_started(self, result: Any, branch: Branch) -> None:
        if isinstance(result, Deferred):
            result.addCallback(self._branch_started, branch)
            result.addErrback(self._branch_error, branch)
            return
        if isinstance(result, Response):
            # The forwarder's refusal (no route, no transport): our own
            # response, addressed upstream.
            self._branch_final(branch, self._make(result.status, result.reason))
            self._check_done()
            return
        txn: ClientTransaction = result
        branch.txn = txn
        branch.request = txn.request
        txn.data = branch
        if self.cancelled:
            self._cancel_branch(branch)
        elif self.is_invite:
            # 16.6 step 11: "If the request is an INVITE, a timer C MUST be
            # started for this client transaction".
            branch.timer_c = self.clock.callLater(self.timer_c, self._timer_c, branch)

    def _branch_error(self, failure: Any, branch: Branch) -> None:
        log.info("branch to {uri} not started: {f}", uri=str(branch.target.uri), f=failure.getErrorMessage())
        self._branch_final(branch, self._make(503, "Service Unavailable: next hop unreachable"))
        self._check_done()

    # -- IClientTransactionUser

    def responseReceived(self, response: Response, transaction: ClientTransaction) -> None:
        branch = transaction.data
        if not isinstance(branch, Branch) or transaction is not branch.txn:
            return  # a CANCEL's own response
        if transaction.failure == TRANSPORT_ERROR:
            # 16.9: "as if the forwarded request received a 503"; ours, so
            # that the caller learns which hop failed (see _send_best).
            response = self._make(503, f"Service Unavailable: cannot reach {transaction.dest}")
        status = response.status
        if status < 200:
            if status == 100:
                return  # 16.7 step 5: not forwarded
            branch.provisional = True
            if self.is_invite and branch.timer_c is not None and not branch.done:
                # 16.7 step 2: a 101-199 for an INVITE "MUST reset timer C".
                branch.timer_c.reset(self.timer_c)
            if not self.final_sent and not branch.done:
                self._upstream(forwarded(response))
            elif branch.cancelled and branch.txn is not None:
                branch.txn.cancel(self)
            return
        if status < 300:
            # 16.7 step 5: "Any response [...] 2xx [...] MUST be forwarded
            # immediately" -- every 2xx, including later ones of other branches.
            first = not self.got_2xx
            self.got_2xx = True
            self._upstream(forwarded(response), final=True)
            if not branch.done:
                branch.done = True
                branch.final = response
                self._stop_timer(branch)
            if first and self.is_invite:
                # 16.7 step 10: "If a final response is sent upstream [...]
                # the proxy MUST generate a CANCEL request for all pending
                # client transactions".
                self._cancel_pending()
            self._check_done()
            return
        if branch.done:
            return  # e.g. the 487 after we gave up on it at Timer C
        if 300 <= status < 400 and self.recurse_on_3xx:
            response = self._recurse(response)
        if response is not None and response.status >= 600:
            self.got_6xx = True
            if self.is_invite:
                # 16.7 step 5: "If a 6xx response is received, it is not
                # immediately forwarded, but the stateful proxy SHOULD cancel
                # all client pending transactions".
                self._cancel_pending()
            self.groups = []
        if response is not None:
            self._branch_final(branch, response)
        else:
            branch.done = True
            self._stop_timer(branch)
        self._check_done()

    def _recurse(self, response: Response) -> Response | None:
        """16.5: Contacts of a 3xx join the target set unless tried already.

        "If the proxy chooses to recurse on any contacts in a 3xx response
        [...], it MUST remove them from the response before adding the
        response to the response context."
        """
        new: list[Target] = []
        left: list[str] = []
        try:
            contacts = response.contacts
        except Exception:
            contacts = []
        for c in contacts:
            uri = c.uri
            if getattr(uri, "is_sip", False) and (str(uri), None, ()) not in self.tried:
                q = 1.0
                try:
                    q = float(c.params.get("q") or 1.0)
                except (TypeError, ValueError):
                    pass
                new.append(Target(uri, q, (), None, "3xx"))
            else:
                left.append(str(c))
        if new:
            self.groups = group_by_q(new) + self.groups
        if not left:
            return None
        headers = response.headers.copy()
        headers.remove("contact")
        for value in left:
            headers.add("Contact", value)
        return Response(response.status, response.reason, headers, response.body, response.version)

    # -- branches

    def _branch_final(self, branch: Branch, response: Response) -> None:
        branch.done = True
        branch.final = response
        self._stop_timer(branch)
        if (response.status == 408 or 500 <= response.status < 600) and not (
            self.cancelled or self.got_2xx or self.got_6xx
        ):
            self._failover(branch.target, response)
        if response.status in (401, 407):
            # 16.7 step 7: collect every challenge into the chosen response.
            for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                for v in response.headers.get_all(name):
                    self.auth_challenges.append((name, v))
        self.finals.append(response)

    def _failover(self, target: Target, response: Response) -> None:
        hop_failed = getattr(self.forwarder, "hop_failed", None)
        if hop_failed is not None:
            hop_failed(target, response)
        if target.fallbacks:
            nxt = target.fallbacks[0]
            self._start_branch(attrs.evolve(nxt, fallbacks=tuple(target.fallbacks[1:]) + tuple(nxt.fallbacks)))
        if self.retarget is None:
            return
        try:
            more = self.retarget.target_failed(target, response)
        except Exception:
            log.failure("retargeting after {status} from {uri} failed", status=response.status, uri=str(target.uri))
            return
        if isinstance(more, Deferred):
            self._waiting += 1
            more.addErrback(lambda f: log.failure("retargeting failed", f) and None)
            more.addBoth(self._retargeted)
        elif isinstance(more, Miss):
            self._gone(more)
        elif more:
            self._add_targets(more)

    def _retargeted(self, targets: Any) -> None:
        self._waiting -= 1
        if isinstance(targets, Miss):
            self._gone(targets)
        elif targets and not (self.cancelled or self.got_2xx or self.got_6xx):
            self._add_targets(targets)
        self._check_done()

    def _gone(self, miss: Miss) -> None:
        """A fresh lookup says the target is gone (e.g. de-registered since
        it was cached): that answer, not the dead hop's, is what the caller
        should hear."""
        self.finals.append(self._make(miss.status, miss.reason or "Not Found"))

    def _add_targets(self, targets: Sequence[Target]) -> None:
        fresh = [t for t in targets if target_key(t) not in self.tried]
        if fresh:
            self.groups = group_by_q(fresh) + self.groups

    def _stop_timer(self, branch: Branch) -> None:
        if branch.timer_c is not None and branch.timer_c.active():
            branch.timer_c.cancel()
        branch.timer_c = None

    def _timer_c(self, branch: Branch) -> None:
        """16.8: "If the client transaction has received a provisional
        response, the proxy MUST generate a CANCEL request matching that
        transaction.  If the client transaction has not received a
        provisional response, the proxy MUST behave as if the transaction
        received a 408 (Request Timeout) response." """
        branch.timer_c = None
        if branch.done:
            return
        txn = branch.txn
        if txn is not None:
            if branch.provisional:
                self._cancel_branch(branch)
            else:
                txn.terminate()
        self._branch_final(branch, self._make(408, "Request Timeout"))
        self._check_done()

    def _cancel_branch(self, branch: Branch) -> None:
        branch.cancelled = True
        if branch.txn is not None:
            branch.txn.cancel(self)

    def _cancel_pending(self) -> None:
        for b in self.branches:
            if not b.done and not b.cancelled:
                self._cancel_branch(b)

    def cancel(self) -> None:
        """The caller CANCELled the INVITE (16.10): cancel every branch."""
        if self.cancelled or self.final_sent:
            return
        self.cancelled = True
        self.groups = []
        self._cancel_pending()
        self._check_done()

    # -- upstream

    def _check_done(self) -> None:
        if self.final_sent:
            if all(b.done for b in self.branches):
                for b in self.branches:
                    self._stop_timer(b)
            return
        if self._waiting or any(not b.done for b in self.branches):
            return
        if self.groups and not (self.cancelled or self.got_6xx):
            self._next_group()
            return
        self._send_best()

    def _send_best(self) -> None:
        best = choose_best(self.finals)
        if self.cancelled:
            # 16.10: the INVITE ends 487 (the branches' 487, or ours when a
            # branch never got far enough to be cancelled).
            mine = [r for r in self.finals if r.status == 487]
            response = forwarded(mine[0]) if mine else make_response(self.request, 487, "Request Terminated")
        elif best is None:
            # 16.7 step 6: "If no final response has been received, the
            # proxy MUST [...] send a 408".
            response = make_response(self.request, 408, "Request Timeout")
        elif best.status == 503 and id(best) not in self._own:
            # 16.7 step 6: "If the only response that was received is a 503,
            # the proxy SHOULD generate a 500 response and forward that
            # upstream" -- a downstream 503 speaks for that server, not us.
            # When we could not reach the next hop at all (no address, no
            # route, a transport error) there was no downstream answer: we
            # send our own 503 whose reason names the hop, since a 500 would
            # say this proxy failed.
            response = make_response(self.request, 500, "Server Internal Error: next hop unavailable")
        elif id(best) in self._own:
            response = best
        else:
            response = forwarded(best)
        if self.auth_challenges and response.status in (401, 407):
            response.headers.remove("www-authenticate")
            response.headers.remove("proxy-authenticate")
            for name, value in self.auth_challenges:
                response.headers.add(name, value)
        if response.status == 408 and not self.is_invite:
            # RFC 4320 4.1: "A transaction-stateful SIP element MUST NOT
            # send a response with Status-Code of 408 to a non-INVITE
            # request."  The client's own Timer F tells it.
            self.final_sent = True
            return
        self._upstream(response, final=True)

    def _make(self, status: int, reason: str) -> Response:
        """A response of ours for a branch (it carries no Via of ours)."""
        response = make_response(self.request, status, reason)
        self._own.add(id(response))
        return response

    def _upstream(self, response: Response, final: bool = False) -> None:
        if final:
            self.final_sent = True
        if not self.txn.respond(response):
            if 200 <= response.status < 300:
                # A late 2xx (the server transaction has ended): forward it
                # statelessly by Via, as 16.7 step 9 and RFC 6026 expect.
                self.forwarder.send_response_by_via(response)

