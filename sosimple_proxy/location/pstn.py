"""The ``pstn`` provider: phone numbers go out through the gateways.

It serves what the dial plan calls a number (``site-ini.md``, ``[pstn]``).
The answer is one :class:`Target` to the first gateway chosen, with the
group's other usable gateways as its ``fallbacks`` (tried in turn on 408,
5xx or a transport error) and ``dest`` set to the gateway's address; the
Request-URI becomes ``sip:<number>@<gateway>;user=phone`` after the
gateway's strip/prepend.  A failed branch comes back through
:meth:`PstnLocator.target_failed` (:class:`IRetargeting`) and moves that
gateway's state.  The OPTIONS probes (:class:`GatewayProber`) are started
and stopped by the composition root with the SIP service.

:class:`PassNumbers` wraps the providers that serve users (``local``, the
rings) so that "phone numbers are not users": a number they miss is passed
on ("not mine") instead of answered 404, while a user who registered that
number is still found.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location.dialplan import DialPlan
from sosimple_proxy.location.gateways import Gateway, GatewaySet
from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, IRetargeting, LocateResult, Miss, Target

log = Logger()


@implementer(ILocator, IRetargeting)
class PstnLocator:
    """Phone numbers -> a gateway target with the rest of its group as fallbacks."""

    name = "pstn"

    def __init__(self, plan: DialPlan, gateways: GatewaySet) -> None:
        self.plan = plan
        self.gateways = gateways
        self._by_dest: dict[str, str] = {}

    def locate(self, uri: Any) -> LocateResult:
        if not self.plan.is_number(uri):
            return NOT_MINE
        number = self.plan.number(uri)
        if number is None:
            return Miss(f"Not Found: {uri.user or uri} is not a number this proxy can route", self.name)
        chosen, skipped = self.gateways.choose(number)
        if not chosen:
            if skipped:
                names = ", ".join(g.name for g in skipped)
                return Miss(f"Service Unavailable: no gateway for {number} is up ({names})", self.name, 503)
            return Miss(f"Not Found: no gateway serves {number}", self.name)
        targets = [self._target(g, number) for g in chosen]
        first = targets[0]
        return Found((Target(first.uri, first.q, first.route, None, self.name, first.dest, tuple(targets[1:])),), self.name)

    def _target(self, gateway: Gateway, number: str) -> Target:
        dest = gateway.dest
        if dest is not None:
            self._by_dest[dest] = gateway.name
        return Target(gateway.request_uri(number), 1.0, (), None, self.name, dest)

    def gateway_of(self, target: Target) -> str | None:
        if target.dest is not None:
            return self._by_dest.get(target.dest)
        host, port = target.uri.host, target.uri.port
        for g in self.gateways.gateways:
            if g.uri.host == host and g.uri.port == port:
                return g.name
        return None

    def target_failed(self, target: Target, response: Any) -> None:
        """A branch to a gateway failed: 408 and 503 (ours for a transport
        error too) make the gateway inactive for a while.  The next gateway
        of the group is already in the target's fallbacks."""
        name = self.gateway_of(target)
        if name is None:
            return None
        retry_after = None
        raw = response.headers.get("retry-after") if response.headers is not None else None
        if raw:
            try:
                retry_after = float(raw.split(";")[0].split("(")[0].strip())
            except ValueError:
                retry_after = None
        log.info("gateway {name} failed a call: {status} {reason}", name=name, status=response.status,
                 reason=response.reason)
        self.gateways.state(name).call_failed(response.status, retry_after)
        return None


@implementer(ILocator, IRetargeting)
class PassNumbers:
    """A provider of users that passes the phone numbers it misses on.

    Its ``name`` and its retargeting are the wrapped provider's.
    """

    def __init__(self, provider: ILocator, plan: DialPlan) -> None:
        self.provider = provider
        self.plan = plan

    @property
    def name(self) -> str:
        return self.provider.name  # type: ignore[no-any-return]

    def target_failed(self, target: Target, response: Any) -> Any:
        if IRetargeting.providedBy(self.provider):
            return self.provider.target_failed(target, response)
        return None

    def locate(self, uri: Any) -> LocateResult:
        answer = self.provider.locate(uri)
        if isinstance(answer, Deferred):
            if self.plan.is_number(uri):
                answer.addCallback(_not_mine_if_missed)
            return answer
        if self.plan.is_number(uri):
            return _not_mine_if_missed(answer)
        return answer


def _not_mine_if_missed(answer: Any) -> Any:
    if isinstance(answer, Miss) or (isinstance(answer, Found) and not answer.targets):
        return NOT_MINE
    return answer
