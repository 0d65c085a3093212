"""Requests the proxy sends as a user agent (the presence agent's NOTIFYs).

The request comes without a Via; this adds ours (one of our listen
addresses facing the destination, a fresh RFC 3261 branch) and starts its
client transaction.  The destination is ``flow`` when given (the
watcher's own source, for a dialog with no proxy between), else the next
hop of the request's Route set or Request-URI (RFC 3261 8.1.2: "the UAC
MUST ... send the request to the address in the first Route header field
value, or to the Request-URI"), an IP address at once, a name through
the RFC 3263 resolver.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred

from sosimple_proxy.location.interfaces import IHopResolver
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.stack_link import StackLink
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request
from sosimple_proxy.sip.uri import format_host, is_ip
from sosimple_proxy.sip.via import new_branch


class NoRoute(Exception):
    """The request has nowhere to go (no listener, an unresolvable host)."""


class RequestSender:
    """Sends a request with a client transaction through the stack."""

    def __init__(self, stack: StackLink, hops: IHopResolver | None = None) -> None:
        self.stack = stack
        self.hops = hops

    def contact(self, transport: str = "udp") -> str:
        """Our Contact for a dialog we are a UA of: the proxy itself, no user
        part, so in-dialog requests are addressed to us (and a dialog we do
        not know is answered 481 here, never located)."""
        listening = self.stack.listening()
        local = next((a for a in listening if a.transport == transport), None) or (listening[0] if listening else None)
        if local is None:
            return "<sip:localhost>"
        tail = f";transport={local.transport}" if local.transport != "udp" else ""
        return f"<sip:{format_host(local.host)}:{local.port}{tail}>"

    def send(self, request: Request, flow: Peer | None, user: Any) -> Deferred:
        """Deferred[ClientTransaction]; fails with :class:`NoRoute`."""
        if flow is not None:
            return maybeDeferred(self._start, request, flow, user)
        hop = routing.next_hop(request)
        transport, host, port = routing.uri_address(hop)
        if transport not in ("udp", "tcp", "tls"):
            return fail(NoRoute(f"transport {transport} not supported"))
        if is_ip(host):
            dest = routing.with_tls_domain(Peer(transport, host.strip("[]"), port), hop)
            return maybeDeferred(self._start, request, dest, user)
        if self.hops is None:
            return fail(NoRoute(f"cannot resolve {host}"))
        d = self.hops.resolve_uri(hop)
        return d.addCallback(lambda dest: self._start(request, routing.with_tls_domain(dest, hop), user))

    def _start(self, request: Request, dest: Peer, user: Any) -> Any:
        listening = self.stack.listening()
        local = routing.egress(listening, dest)
        if local is None:
            raise NoRoute(f"no {dest.transport} listener to reach {dest}")
        request.headers.prepend("Via", routing.via_value(local, dest.transport, new_branch()))
        return self.stack.transactions.send_request(request, dest, user)
