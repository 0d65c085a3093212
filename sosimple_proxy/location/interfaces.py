"""What a location provider is, and what it answers.

A provider answers a Request-URI with a :class:`Found` target set, a
:class:`Miss` ("I serve this domain and the user is not here"), or
:data:`NOT_MINE` ("ask the next provider"), as ``twisted.names`` resolvers
do in a ``ResolverChain``.  The chain rules are in ``site-ini.md`` under
``[location]``.
"""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface import Attribute, Interface


@attrs.frozen
class Target:
    """One place to send a request: a URI, its q-value and a route to it.

    Equality ignores nothing, so keep ``fallbacks`` small.

    ``route`` is Route header values (top first) to push in front of the
    request (a registered Path, RFC 3327).  ``flow`` is a transport address
    (``"tcp:127.0.0.1:40000"``) of an open connection the UA registered
    over, tried before the URI's own address (RFC 5626's idea of a flow).
    """

    uri: Any
    q: float = 1.0
    route: tuple[str, ...] = ()
    flow: str | None = None
    source: str = ""
    # An address the provider resolved itself (``"udp:192.0.2.5:5060"``):
    # the request goes there, whatever its Route or Request-URI say.
    dest: str | None = None
    # Tried one after another, in order, when this target fails with 408,
    # a 5xx or a transport error (RFC 3263 SRV failover, gateway groups).
    fallbacks: tuple["Target", ...] = ()


@attrs.frozen
class Found:
    targets: tuple[Target, ...]
    provider: str = ""


@attrs.frozen
class Miss:
    """The provider serves this URI's namespace and has no target for it."""

    reason: str = "Not Found"
    provider: str = ""
    status: int = 404  # 480 when the provider could not be asked (a ring that did not answer)


class _NotMine:
    def __repr__(self) -> str:
        return "NOT_MINE"


NOT_MINE: Any = _NotMine()

# What ``ILocator.locate`` may return (or a Deferred firing with it).
LocateResult = Any


class ILocator(Interface):
    """A location provider (local bindings, the ring, static routes, DNS...)."""

    name = Attribute("The provider's name, as written in [location] order.")

    def locate(uri: Any) -> LocateResult:
        """A :class:`Found`, :class:`Miss` or :data:`NOT_MINE`, or a Deferred of one.

        Synchronous answers are returned directly so that the common case
        (a local binding) costs no Deferred.
        """


class IRetargeting(Interface):
    """A provider that wants to hear about a failed branch to one of its targets.

    The response context asks the location chain, which asks the provider
    named in ``target.source``: a cached contact is looked up again (paper
    IV.B), a gateway or DNS destination is avoided for a while.
    """

    def target_failed(target: Target, response: Any) -> Any:
        """``target`` failed with ``response`` (408, a 5xx, or our 503 for a
        transport error).  Returns None, new targets, a :class:`Miss` (the
        target is gone), or a Deferred of one of these."""


class IHopResolver(Interface):
    """Next hops named by host (a Route such as ``<sip:proxy.other.test;lr>``)."""

    def resolve(host: str) -> Any:
        """A Deferred firing with one address (a string) for ``host``."""

    def resolve_uri(uri: Any) -> Any:
        """A Deferred firing with the Peer a hop URI leads to (RFC 3263:
        transport and port may come from NAPTR and SRV)."""

