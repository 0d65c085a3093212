"""The ``dns`` provider: other SIP domains by RFC 3263 (``[dns] servers``).

It serves any domain that no earlier provider serves (not ours, not a
``[routes]`` domain, not a ring's): the Request-URI is kept, and the
target's ``dest`` is the first address RFC 3263 gives, with the others as
``fallbacks`` tried in turn on 408, 5xx or a transport error.  A target
that failed is avoided for a while (it goes last in later answers).

:class:`HopResolver` is the same resolution for the forwarder's next hops
named by host (a Route such as ``<sip:proxy.other.test;lr>``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location.interfaces import (
    NOT_MINE,
    Found,
    IHopResolver,
    ILocator,
    IRetargeting,
    LocateResult,
    Miss,
    Target,
)
from sosimple_proxy.location.rfc3263 import ResolutionFailed, RFC3263Resolver
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.uri import URI, is_ip

log = Logger()

# Failures that say the server, not the request, is the problem: the
# destination is avoided (408 includes our own timeouts; 503 includes a
# transport error).
AVOID_ON = frozenset({408, 503})
MAX_RETRY_AFTER = 3600.0


@implementer(ILocator, IRetargeting)
class DNSLocator:
    """Foreign domains by RFC 3263.

    ``elsewhere(uri)`` is true for the URIs another provider serves (our
    domains, ``[routes]``, the rings' domains): those are not ours.
    """

    name = "dns"

    def __init__(
        self,
        resolver: RFC3263Resolver,
        elsewhere: Callable[[Any], bool] = lambda uri: False,
        listening: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.resolver = resolver
        self.elsewhere = elsewhere
        if listening is not None:
            # Only what we can send over: the address families we listen
            # on, and TLS when we have a TLS listener.
            resolver.families = lambda: {6 if ":" in a.host else 4 for a in listening()} or (4, 6)
            resolver.transports = lambda: {"udp", "tcp"} | {a.transport for a in listening() if a.transport == "tls"}

    def serves(self, uri: Any) -> bool:
        if not getattr(uri, "is_sip", False):
            return False
        host = (uri.maddr or uri.host or "").strip("[]")
        return bool(host) and not is_ip(host) and not self.elsewhere(uri)

    def locate(self, uri: Any) -> LocateResult:
        if not self.serves(uri):
            return NOT_MINE
        d = self.resolver.resolve(uri)
        d.addCallbacks(self._found, self._failed, (uri,), None, (uri,))
        return d

    def _found(self, dests: list[Any], uri: Any) -> Found:
        rest = tuple(Target(uri, 1.0, (), None, self.name, dest=str(d)) for d in dests[1:])
        return Found((Target(uri, 1.0, (), None, self.name, dest=str(dests[0]), fallbacks=rest),), self.name)

    def _failed(self, failure: Any, uri: Any) -> Miss:
        if failure.check(ResolutionFailed):
            e = failure.value
            if e.temporary:
                return Miss(f"Temporarily Unavailable: cannot resolve {e.name}", self.name, 480)
            return Miss(f"Not Found: no SIP server for {e.name}", self.name, 404)
        log.failure("RFC 3263 resolution of {uri} failed", failure, uri=str(uri))
        return Miss("Temporarily Unavailable: DNS failure", self.name, 480)

    def target_failed(self, target: Target, response: Any) -> None:
        """A target of ours failed (:class:`IRetargeting`): a server that
        timed out or is unavailable goes last for a while."""
        if not target.dest or response.status not in AVOID_ON:
            return None
        self.resolver.avoid(target.dest, retry_after(response))
        return None


def retry_after(response: Any) -> float | None:
    """A 503's Retry-After in seconds (RFC 3261 20.33), or None."""
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(value.split(";", 1)[0].split("(", 1)[0].strip())
    except ValueError:
        return None
    return min(max(seconds, 1.0), MAX_RETRY_AFTER)


@implementer(IHopResolver)
class HopResolver:
    """The forwarder's resolver for next hops named by host, by RFC 3263.

    ``resolve_uri(hop)`` fires with the :class:`Peer` of the first
    destination RFC 3263 gives for the hop URI (transport and port may come
    from NAPTR and SRV); ``resolve(host)`` gives an address.
    """

    def __init__(self, rfc3263: RFC3263Resolver) -> None:
        self.rfc3263 = rfc3263

    def resolve_uri(self, uri: Any) -> Deferred:
        d = self.rfc3263.resolve(uri)
        return d.addCallback(lambda dests: Peer(dests[0].transport, dests[0].host, dests[0].port))

    def resolve_all(self, uri: Any) -> Deferred:
        """Every destination of a hop URI, in RFC 3263 order (avoided ones last)."""
        return self.rfc3263.resolve(uri)

    def avoid(self, dest: str, seconds: float | None = None) -> None:
        """A destination of a hop failed: try it after the others for a while."""
        self.rfc3263.avoid(dest, seconds)

    def resolve(self, host: str) -> Deferred:
        d = self.rfc3263.resolve(URI("sip", None, host, 5060))
        return d.addCallback(lambda dests: dests[0].host)
