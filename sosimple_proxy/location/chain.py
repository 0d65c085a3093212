"""The location chain: ask each provider in ``[location] order`` in turn.

"A provider that does not serve the Request-URI says "not mine" and the
next one is asked.  [...] If it misses, the next provider that serves the
same domain is asked; when the last one that serves the domain has missed,
the answer is 404 at once." (site-ini.md, ``[location]``)
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, IRetargeting, LocateResult, Miss, Target

log = Logger()


@implementer(ILocator, IRetargeting)
class LocationChain:
    """Providers in order; the first :class:`Found` wins.

    The answer is a :class:`Found`, a :class:`Miss` (some provider served the
    URI and every one that did missed) or :data:`NOT_MINE` (nobody serves
    it).  It is returned directly while every provider answers directly.

    A failed branch is reported back to the provider that gave its target
    (``target.source``), when that provider is :class:`IRetargeting`.
    """

    name = "chain"

    def __init__(self, providers: Sequence[ILocator]) -> None:
        self.providers = list(providers)

    def locate(self, uri: Any) -> LocateResult:
        return self._ask(uri, 0, None)

    def target_failed(self, target: Target, response: Any) -> Any:
        provider = next((p for p in self.providers if p.name == target.source), None)
        if provider is not None and IRetargeting.providedBy(provider):
            return provider.target_failed(target, response)
        return None

    def _ask(self, uri: Any, start: int, miss: Miss | None) -> LocateResult:
        providers = self.providers
        for i in range(start, len(providers)):
            provider = providers[i]
            try:
                answer = provider.locate(uri)
            except Exception:
                log.failure("location provider {name} failed on {uri}", name=provider.name, uri=str(uri))
                continue
            if isinstance(answer, Deferred):

                def failed(f: Any, name: str = provider.name) -> Any:
                    log.failure("location provider {name} failed on {uri}", f, name=name, uri=str(uri))
                    return NOT_MINE

                answer.addErrback(failed)
                answer.addCallback(self._after, uri, i, miss)
                return answer
            result = self._step(answer, miss)
            if isinstance(result, Found):
                return result
            miss = result if isinstance(result, Miss) else miss
        return miss if miss is not None else NOT_MINE

    def _after(self, answer: Any, uri: Any, i: int, miss: Miss | None) -> LocateResult:
        result = self._step(answer, miss)
        if isinstance(result, Found):
            return result
        return self._ask(uri, i + 1, result if isinstance(result, Miss) else miss)

    @staticmethod
    def _step(answer: Any, miss: Miss | None) -> Any:
        if isinstance(answer, Found):
            if answer.targets:
                return answer
            return Miss("Not Found", answer.provider)
        if isinstance(answer, Miss):
            return answer
        return miss
