"""SRV failover and avoidance for next hops named by host (issue 15).

The ``dns`` provider's targets carry every destination RFC 3263 gives: the
first as ``dest``, the rest as ``fallbacks`` tried in turn on 408, a 5xx or
a transport error, and a destination that failed is avoided for a while.
A hop named by host in a Route (``<sip:proxy.other.test;lr>``), or the
Request-URI of a target no provider resolved, got only the first
destination.  :class:`HopFailover` gives them the same: before a branch
starts, the target is *pinned* to the hop's destinations (RFC 3263 section
4.3: "the client SHOULD try the next element" when one fails), and a
failed pinned destination is avoided.  TLS hops are left to the
forwarder, which carries the domain their certificate must prove.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred

from sosimple_proxy.location.dns import AVOID_ON, retry_after
from sosimple_proxy.location.interfaces import Target
from sosimple_proxy.proxy import routing
from sosimple_proxy.sip.headers import parse_name_addr
from sosimple_proxy.sip.message import Request
from sosimple_proxy.sip.uri import is_ip

#: destinations we pinned, remembered so that their failures are avoided
MAX_PINNED = 4096


class HopFailover:
    """Pins targets to their next hop's destinations; avoids those that fail.

    ``hops`` is the :class:`~sosimple_proxy.location.dns.HopResolver`
    (``resolve_all(uri)``: Deferred list of destinations, ``avoid(dest,
    seconds)``)."""

    def __init__(self, hops: Any) -> None:
        self.hops = hops
        self._pinned: set[str] = set()

    def pin(self, request: Request, target: Target, has_flow: bool = False) -> Target | Deferred:
        """``target``, or a Deferred of it pinned to the first destination
        of its next hop with the others as fallbacks."""
        if target.dest or has_flow:
            return target
        try:
            # 16.6 steps 6-7: the top Route's URI (pushed ones first), else
            # the Request-URI, which becomes the target's
            if target.route:
                hop = parse_name_addr(target.route[0]).uri
            else:
                routes = request.routes
                hop = routes[0].uri if routes else target.uri
            transport, host, _ = routing.uri_address(hop)
        except Exception:
            return target
        if transport not in ("udp", "tcp") or not host or is_ip(host):
            return target
        d = self.hops.resolve_all(hop)
        d.addCallback(self._pinned_to, target)
        # a failed resolution: the forwarder resolves again and answers for it
        d.addErrback(lambda _: target)
        return d

    def _pinned_to(self, dests: list[Any], target: Target) -> Target:
        if len(dests) < 2 or any(d.transport == "tls" for d in dests):
            return target
        names = [str(d) for d in dests]
        if len(self._pinned) > MAX_PINNED:
            self._pinned.clear()
        self._pinned.update(names)
        rest = tuple(attrs.evolve(target, dest=n, fallbacks=()) for n in names[1:])
        return attrs.evolve(target, dest=names[0], fallbacks=rest + tuple(target.fallbacks))

    def failed(self, target: Target, response: Any) -> None:
        """A branch failed: a pinned destination that timed out or is
        unavailable goes last for a while (as the ``dns`` provider's do)."""
        if target.dest in self._pinned and response.status in AVOID_ON:
            self.hops.avoid(target.dest, retry_after(response))
