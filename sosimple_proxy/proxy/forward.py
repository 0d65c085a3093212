"""Building and sending the per-target copy of a request (RFC 3261 16.6).

:class:`RequestForwarder` is the context's bridge to the transaction layer:
copy, new Request-URI, Max-Forwards, Record-Route, pushed Route, next hop,
Via, client transaction.  It also forwards what needs no transaction: the
ACK of a 2xx and responses that match no transaction (16.11, 18.2.2).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location.interfaces import IHopResolver, Target
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.hop_failover import HopFailover
from sosimple_proxy.proxy.interfaces import IForwarder
from sosimple_proxy.proxy.stack_link import StackLink
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.errors import ParseError
from sosimple_proxy.sip.interfaces import IClientTransactionUser
from sosimple_proxy.sip.message import Request, Response, register_view
from sosimple_proxy.sip.uri import is_ip
from sosimple_proxy.sip.via import response_peer

log = Logger()

# Requests that may create a dialog: the ones we Record-Route (16.6 step 4).
DIALOG_CREATING = frozenset({"INVITE", "SUBSCRIBE", "REFER"})


def request_loop_hash(request: Request) -> str:
    """routing.loop_hash, computed once while the headers it reads and the
    Request-URI stay as they are (the loop check, then the forward: a Route
    popped in between changes nothing of it)."""
    uri, lhash = request.cached("loop-hash", lambda: (request.uri, routing.loop_hash(request)))
    if uri != request.uri:
        lhash = routing.loop_hash(request)
        request.put_view("loop-hash", (request.uri, lhash))
    return lhash  # type: ignore[no-any-return]


# What routing.loop_hash reads (16.6 step 8), besides the Request-URI.
register_view("loop-hash", ("to", "from", "call-id", "cseq", "proxy-require", "proxy-authorization"))


@implementer(IForwarder)
class RequestForwarder:
    """The proxy's way out through the stack: its transport (our addresses,
    the UAs' open connections) and transaction layer; ``hops`` resolves
    next hops named by host (RFC 3263; None: those are unreachable)."""

    def __init__(
        self,
        stack: StackLink,
        record_route: bool,
        hops: IHopResolver | None = None,
        stamp: Callable[[Request], str] | None = None,
        branch_policy: Callable[[Request, Target, Peer], None] | None = None,
    ) -> None:
        self.stack = stack
        self.record_route = record_route
        self.hops = hops
        self._failover = HopFailover(hops) if hops is not None and hasattr(hops, "resolve_all") else None
        # The dialog's HMAC for our Record-Route (proxy/dialog_stamp.py).
        self.stamp = stamp
        # Last look at each branch's copy once its destination is known
        # (P-Asserted-Identity only toward trusted peers and gateways).
        self.branch_policy = branch_policy

    @property
    def listening(self) -> Sequence[ListenAddress]:
        return self.stack.listening()

    # -- SRV failover for hops named by host (proxy/hop_failover.py)

    def pin(self, request: Request, target: Target) -> Any:
        """``target``, or a Deferred of it pinned to its next hop's DNS
        destinations (the others as fallbacks)."""
        if self._failover is None:
            return target
        return self._failover.pin(request, target, has_flow=self._flow(target) is not None)

    def hop_failed(self, target: Target, response: Any) -> None:
        if self._failover is not None:
            self._failover.failed(target, response)

    # -- requests in a transaction

    def send(
        self, request: Request, target: Target, inbound: Any, user: IClientTransactionUser, source: Peer | None = None
    ) -> Any:
        lhash = request_loop_hash(request)
        copy = routing.copy_request(request)
        # 16.6 step 2: "The Request-URI in the copy's start line MUST be
        # replaced with the URI for this target."
        copy.uri = str(target.uri)
        routing.decrement_max_forwards(copy)
        if target.route:
            routing.push_routes(copy, target.route)
        hop = routing.next_hop(copy)
        secure = routing.must_stay_secure(request) or routing.must_stay_secure(copy)
        dest = routing.parse_flow(target.dest) if target.dest else self._flow(target)
        # Record-Route names the flows on either side (see routing.add_record_route).
        flows = (source, dest if dest is not None and dest.reliable else None)
        if dest is None:
            found = self._resolve(hop)
            if isinstance(found, Deferred):
                return found.addCallback(
                    lambda peer: self._finish(copy, peer, inbound, lhash, user, secure, flows, target)
                )
            if isinstance(found, Response):
                return found
            dest = found
        return self._finish(copy, dest, inbound, lhash, user, secure, flows, target)

    def _flow(self, target: Target) -> Peer | None:
        """The UA's own connection, when it registered over one still open."""
        if target.route or not target.flow:
            return None
        peer = routing.parse_flow(target.flow)
        if peer is None or not peer.reliable:
            return None
        return peer if self.stack.transport.has_connection(peer) else None

    def _resolve(self, hop: Any) -> Any:
        """The peer for a next-hop URI (see :meth:`_address`); a TLS peer
        carries the domain its certificate must prove (RFC 5922)."""
        found = self._address(hop)
        if isinstance(found, Deferred):
            return found.addCallback(routing.with_tls_domain, hop)
        if isinstance(found, Peer):
            return routing.with_tls_domain(found, hop)
        return found

    def _address(self, hop: Any) -> Any:
        """The peer for a next-hop URI: IP literals at once, names by DNS."""
        transport, host, port = routing.uri_address(hop)
        if transport not in ("udp", "tcp", "tls"):
            return make_response_for_branch(503, f"Service Unavailable: transport {transport} not supported")
        if is_ip(host):
            return Peer(transport, host.strip("[]"), port)
        if self.hops is None:
            return make_response_for_branch(503, f"Service Unavailable: cannot resolve {host}")
        # RFC 3263: the hop's transport and port may come from NAPTR/SRV.
        return self.hops.resolve_uri(hop)

    def _finish(
        self,
        copy: Request,
        dest: Peer,
        inbound: Any,
        lhash: str,
        user: IClientTransactionUser,
        secure: bool = False,
        flows: tuple[Peer | None, Peer | None] = (None, None),
        target: Target | None = None,
    ) -> Any:
        refused = routing.insecure_hop(secure, dest)
        if refused is not None:
            log.info("{method} {uri}: not forwarded: {why}", method=copy.method, uri=copy.uri, why=refused)
            return make_response_for_branch(480, refused)
        if self.branch_policy is not None and target is not None:
            self.branch_policy(copy, target, dest)
        listening = self.listening
        outbound = routing.egress(listening, dest)
        if outbound is None:
            # No listener of that transport: our Via still needs a sent-by.
            outbound = next((a for a in listening if (":" in a.host) == (":" in dest.host)), None)
            if outbound is None:
                return make_response_for_branch(503, f"Service Unavailable: no local address to reach {dest}")
            sent_by = attrs.evolve(outbound, transport=dest.transport)
        else:
            sent_by = outbound
        if self.record_route and copy.method in DIALOG_CREATING and not routing.has_to_tag(copy):
            stamp = self.stamp(copy) if self.stamp is not None else None
            routing.add_record_route(
                copy,
                inbound,
                outbound if outbound.transport == dest.transport else None,
                flows[0],
                flows[1],
                stamp=stamp,
            )
        branch = routing.new_proxy_branch(lhash)
        copy.headers.prepend("Via", routing.via_value(sent_by, dest.transport, branch))
        copy.put_view("top_via", routing.own_via(sent_by, dest.transport, branch))
        return self.stack.transactions.send_request(copy, dest, user)

    # -- without a transaction

    def send_response_by_via(self, response: Response) -> None:
        """A response whose top Via (now the previous hop's) says where it goes."""
        try:
            via = response.top_via
        except ParseError as e:
            # Only the top Via (ours) was checked on arrival (parser.validate_response).
            log.info("{r}: not forwarded by Via: {e}", r=response, e=e)
            return
        if via is None:
            return
        self.stack.transactions.send_stateless(response, response_peer(via))

    def forward_stateless(self, request: Request) -> None:
        """Forward e.g. the ACK of a 2xx (16.11) along its route."""
        lhash = request_loop_hash(request)
        routing.decrement_max_forwards(request)
        hop = routing.next_hop(request)
        # A flow token in our Record-Route: the UA's own connection.
        flow = routing.parse_flow(request.flow) if request.flow else None
        dest = flow if flow is not None and flow.reliable else self._resolve(hop)
        if isinstance(dest, Deferred):
            dest.addCallback(lambda peer: self._send_stateless(request, peer, lhash))
            dest.addErrback(lambda f: log.info("stateless forward failed: {f}", f=f.getErrorMessage()))
            return
        if isinstance(dest, Response):
            log.info("cannot forward {method} statelessly: {reason}", method=request.method, reason=dest.reason)
            return
        self._send_stateless(request, dest, lhash)

    def _send_stateless(self, request: Request, dest: Peer, lhash: str) -> None:
        outbound = routing.egress(self.listening, dest)
        if outbound is None:
            outbound = next(iter(self.listening), None)
            if outbound is None:
                return
        request.headers.prepend("Via", routing.via_value(outbound, dest.transport, routing.stateless_branch(request, lhash)))
        self.stack.transactions.send_stateless(request, dest, outbound if outbound.transport == dest.transport else None)


def make_response_for_branch(status: int, reason: str) -> Response:
    """A final response for a branch that never got a transaction.

    The context replaces it with its own (addressed upstream) before use, so
    only status and reason matter here.
    """
    return Response(status, reason)

