"""Locating SIP servers (RFC 3263) on ``twisted.names``.

:class:`Lookups` asks DNS (any ``twisted.names`` ``IResolver``) and keeps
each answer for its TTL on an injected clock; :class:`RFC3263Resolver`
turns a SIP URI into the ordered list of :class:`Destination` to try:
NAPTR (order, preference), then SRV (priority, and weight as RFC 2782
says), then A/AAAA, with the transport chosen as RFC 3263 section 4.1
says.  Destinations that failed lately are avoided for a while: they go
to the end of the list (per destination, never the whole domain).
"""

from __future__ import annotations

import random
import socket
from typing import Any, Callable, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.names import dns, error

from sosimple_proxy.sip.uri import is_ip

log = Logger()

# NAPTR services (RFC 3263 section 4.1) and SRV prefixes, by our transport.
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
# Without NAPTR, the SRV queries a client makes, in our order of preference.
SRV_ORDER = {False: ("udp", "tcp", "tls"), True: ("tls",)}
DEFAULT_PORT = {"udp": 5060, "tcp": 5060, "tls": 5061}
# Answers that say "no such data": cached as empty lists.
_NO_DATA = (error.DNSNameError, error.AuthoritativeDomainError)


class ResolutionFailed(Exception):
    """No destination: the domain has no SIP server (``temporary`` False)
    or DNS could not be asked (a timeout, a server failure)."""

    def __init__(self, name: str, temporary: bool) -> None:
        super().__init__(f"{'cannot resolve' if temporary else 'no SIP server for'} {name}")
        self.name = name
        self.temporary = temporary


@attrs.frozen
class Destination:
    transport: str  # udp, tcp or tls
    host: str  # an IP address literal
    port: int

    def __str__(self) -> str:
        """The ``Target.dest`` form: ``udp:192.0.2.5:5060``, ``udp:[::1]:5060``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def order_srv(records: Sequence[Any], rng: random.Random) -> list[Any]:
    """RFC 2782: lowest priority first; within a priority, a weighted
    random order ("arrange all SRV RRs (that have not been ordered yet) in
    any order, except that all those with weight 0 are placed at the
    beginning of the list [...] choose a uniform random number between 0
    and the sum computed (inclusive), and select the RR whose running sum
    value is the first in the selected order which is greater than or
    equal to the random number selected")."""
    out: list[Any] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            for i, r in enumerate(group):
                running += r.weight
                if running >= pick:
                    out.append(group.pop(i))
                    break
    return out


class Lookups:
    """DNS queries whose answers are kept for their TTL (``clock.seconds()``).

    A name that does not exist, or has no record of the type, is kept as an
    empty answer for ``negative_ttl`` seconds (or the SOA's minimum when the
    server sent one).  Failures (timeouts, SERVFAIL) are not kept.  Equal
    queries in flight share one DNS query.
    """

    def __init__(
        self, resolver: Any, clock: Any, *, negative_ttl: float = 30.0, max_ttl: float = 86400.0, max_entries: int = 10000
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.negative_ttl = negative_ttl
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self.cache: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._pending: dict[tuple[str, int], list[Deferred]] = {}
        self.queries = 0  # sent to the resolver (not answered from the cache)
        self.failures = 0  # of those: timeouts, SERVFAIL (not "no such name")

    def get(self, name: str, qtype: int) -> Deferred:
        """The payloads of type ``qtype`` at ``name`` (following CNAMEs)."""
        key = (name.lower().rstrip("."), qtype)
        hit = self.cache.get(key)
        if hit is not None:
            if hit[0] > self.clock.seconds():
                return succeed(hit[1])
            del self.cache[key]
        waiting = self._pending.get(key)
        if waiting is not None:
            d: Deferred = Deferred()
            waiting.append(d)
            return d
        self._pending[key] = waiting = []
        self.queries += 1
        query = self.resolver.query(dns.Query(key[0], qtype, dns.IN))
        query.addCallbacks(self._answered, self._failed, (key,), None, (key,))

        def share(result: Any) -> Any:
            del self._pending[key]
            for w in waiting:
                w.callback(result)
            return result

        query.addBoth(share)
        return query

    def _answered(self, result: Any, key: tuple[str, int]) -> list[Any]:
        answers, authority, additional = result
        found = [rr for rr in answers if rr.type == key[1]]
        if found:
            self._put(key, [rr.payload for rr in found], min(rr.ttl for rr in found))
        else:
            self._put(key, [], self._negative(authority))
        # RFC 2782: "Implementors are urged, but not required, to return
        # the address record(s) in the Additional Data section": keep them.
        extra: dict[tuple[str, int], list[Any]] = {}
        for rr in additional:
            if rr.type in (dns.A, dns.AAAA):
                extra.setdefault((rr.name.name.decode("ascii", "replace").lower().rstrip("."), rr.type), []).append(rr)
        for k, rrs in extra.items():
            if k not in self.cache:
                self._put(k, [rr.payload for rr in rrs], min(rr.ttl for rr in rrs))
        return [rr.payload for rr in found]

    def _failed(self, failure: Any, key: tuple[str, int]) -> Any:
        if failure.check(*_NO_DATA) or type(failure.value) is error.DomainError:
            self._put(key, [], self.negative_ttl)
            return []
        self.failures += 1
        return failure

    def _negative(self, authority: Iterable[Any]) -> float:
        for rr in authority:
            if rr.type == dns.SOA:
                return float(min(rr.ttl, rr.payload.minimum))
        return self.negative_ttl

    def _put(self, key: tuple[str, int], payloads: list[Any], ttl: float) -> None:
        ttl = min(float(ttl), self.max_ttl)
        if ttl <= 0:
            return
        now = self.clock.seconds()
        if len(self.cache) >= self.max_entries:
            for k in [k for k, (until, _) in self.cache.items() if until <= now] or list(self.cache)[: self.max_entries // 10 + 1]:
                del self.cache[k]
        self.cache[key] = (now + ttl, payloads)


class RFC3263Resolver:
    """SIP URI -> the destinations to try, in order (RFC 3263 section 4).

    ``transports()`` says which transports we can send over (NAPTR and SRV
    records of others are skipped) and ``families()`` which address
    families (4, 6); both may change once listeners are bound.
    """

    def __init__(
        self,
        lookups: Lookups,
        clock: Any,
        *,
        rng: random.Random | None = None,
        avoid_for: float = 60.0,
        max_destinations: int = 10,
    ) -> None:
        self.lookups = lookups
        self.clock = clock
        self.rng = rng or random.Random()
        self.avoid_for = avoid_for
        self.max_destinations = max_destinations
        self.transports: Callable[[], Iterable[str]] = lambda: ("udp", "tcp", "tls")
        self.families: Callable[[], Iterable[int]] = lambda: (4, 6)
        self.avoided: dict[str, float] = {}

    # -- failed destinations

    def avoid(self, dest: Destination | str, seconds: float | None = None) -> None:
        """Try ``dest`` after the others for ``seconds`` (default ``avoid_for``)."""
        until = self.clock.seconds() + (self.avoid_for if seconds is None else seconds)
        self.avoided[str(dest)] = until
        log.info("DNS destination {dest} avoided for {s:.0f}s", dest=str(dest), s=until - self.clock.seconds())

    def is_avoided(self, dest: Destination | str) -> bool:
        until = self.avoided.get(str(dest))
        if until is None:
            return False
        if until <= self.clock.seconds():
            del self.avoided[str(dest)]
            return False
        return True

    # -- resolution

    def resolve(self, uri: Any) -> Deferred:
        """A Deferred list of :class:`Destination` (avoided ones last), or a
        :class:`ResolutionFailed` failure when there is none."""
        target = (uri.maddr or uri.host or "").strip("[]")
        d = self._destinations(target, uri.transport, uri.port, uri.secure)
        d.addCallback(self._finish, target)
        return d

    def _finish(self, found: tuple[list[Destination], bool], name: str) -> list[Destination]:
        dests, failed = found
        unique = list(dict.fromkeys(dests))
        if not unique:
            raise ResolutionFailed(name, failed)
        good = [d for d in unique if not self.is_avoided(d)]
        bad = [d for d in unique if d not in good]
        return (good + bad)[: self.max_destinations]

    def _destinations(self, target: str, transport: str | None, port: int | None, secure: bool) -> Deferred:
        supported = set(self.transports())
        if transport is not None and secure and transport == "tcp":
            transport = "tls"  # sips over TCP is TLS (RFC 3261 26.2)
        if transport is not None and transport not in DEFAULT_PORT:
            return succeed(([], False))  # sctp, ws...: nothing we can send over
        if is_ip(target):
            # 4.1: "If the TARGET was a numeric IP address, it uses UDP for a
            # SIP URI, and TCP for a SIPS URI" (TLS over it).
            t = transport or ("tls" if secure else "udp")
            return succeed(([Destination(t, target, port or DEFAULT_PORT[t])], False))
        if transport is not None:
            # 4.1: an explicit transport parameter is used; 4.2: without a
            # port, SRV for that transport, else A/AAAA.
            if port is not None:
                return self._addresses(target, transport, port)
            return self._srv_or_address(target, [transport], secure)
        if port is not None:
            # 4.1: "if the URI [...] contains a port, it SHOULD use UDP for a
            # SIP URI, and TCP for a SIPS URI"; 4.2: A/AAAA, no SRV.
            t = "tls" if secure else "udp"
            return self._addresses(target, t, port)
        d = self.lookups.get(target, dns.NAPTR)
        d.addCallbacks(self._naptr, self._naptr_failed, (target, secure, supported), None, (target, secure, supported))
        return d

    def _naptr(self, records: list[Any], target: str, secure: bool, supported: set[str]) -> Deferred:
        usable = []
        for r in records:
            service = r.service.decode("ascii", "replace").upper() if isinstance(r.service, bytes) else str(r.service).upper()
            flags = r.flags.decode("ascii", "replace").lower() if isinstance(r.flags, bytes) else str(r.flags).lower()
            t = NAPTR_SERVICES.get(service)
            if t is None or flags != "s" or t not in supported or (secure and t != "tls"):
                continue
            usable.append((r.order, r.preference, t, r.replacement.name.decode("ascii", "replace")))
        usable.sort(key=lambda u: (u[0], u[1]))
        if not usable:
            # 4.1: "If no NAPTR records are found, the client constructs SRV
            # queries for those transport protocols it supports".
            return self._srv_or_address(target, [t for t in SRV_ORDER[secure] if t in supported], secure)
        return self._next_naptr(usable, target, secure, supported, False)

    def _naptr_failed(self, failure: Any, target: str, secure: bool, supported: set[str]) -> Deferred:
        log.info("NAPTR lookup for {target} failed: {f}", target=target, f=failure.getErrorMessage())
        d = self._srv_or_address(target, [t for t in SRV_ORDER[secure] if t in supported], secure)
        return d.addCallback(lambda found: (found[0], True))

    def _next_naptr(self, usable: list[tuple], target: str, secure: bool, supported: set[str], failed: bool) -> Deferred:
        """4.1: "If a SRV query for the replacement fails, the client
        proceeds to the next NAPTR" -- and, when none gives a server, to
        the SRV queries it would make without NAPTR."""
        if not usable:
            d = self._srv_or_address(target, [t for t in SRV_ORDER[secure] if t in supported], secure)
            return d.addCallback(lambda found: (found[0], found[1] or failed))
        _, _, transport, replacement = usable[0]
        d = self.lookups.get(replacement, dns.SRV)

        def got(records: list[Any]) -> Any:
            if not records:
                return self._next_naptr(usable[1:], target, secure, supported, failed)
            return self._expand_srv(records, transport)

        def bad(f: Any) -> Any:
            log.info("SRV lookup for {name} failed: {f}", name=replacement, f=f.getErrorMessage())
            return self._next_naptr(usable[1:], target, secure, supported, True)

        return d.addCallbacks(got, bad)

    def _srv_or_address(self, target: str, transports: list[str], secure: bool, failed: bool = False) -> Deferred:
        """SRV for each transport in turn; the first that has records wins.
        None has: 4.2, "the client SHOULD use UDP for a SIP URI, and TCP for
        a SIPS URI" at the target's A/AAAA records and the default port."""
        if not transports:
            t = "tls" if secure else "udp"
            d = self._addresses(target, t, DEFAULT_PORT[t])
            return d.addCallback(lambda found: (found[0], found[1] or failed))
        transport = transports[0]
        name = SRV_PREFIX[transport] + target
        d = self.lookups.get(name, dns.SRV)

        def got(records: list[Any]) -> Any:
            if not records:
                return self._srv_or_address(target, transports[1:], secure, failed)
            return self._expand_srv(records, transport)

        def bad(f: Any) -> Any:
            log.info("SRV lookup for {name} failed: {f}", name=name, f=f.getErrorMessage())
            return self._srv_or_address(target, transports[1:], secure, True)

        return d.addCallbacks(got, bad)

    def _expand_srv(self, records: list[Any], transport: str) -> Deferred:
        """SRV records in RFC 2782 order, each target's addresses in turn.
        A single record whose target is "." says the service is not there."""
        ordered = [r for r in order_srv(records, self.rng) if r.target.name not in (b"", b".")]
        if not ordered:
            return succeed(([], False))
        ds = [self._addresses(r.target.name.decode("ascii", "replace"), transport, r.port) for r in ordered]
        d = gatherResults(ds)
        return d.addCallback(lambda results: ([x for dests, _ in results for x in dests], any(f for _, f in results)))

    def _addresses(self, name: str, transport: str, port: int) -> Deferred:
        """(destinations, failed): A records first, then AAAA."""
        families = set(self.families())
        types = [t for f, t in ((4, dns.A), (6, dns.AAAA)) if f in families]
        ds = []
        for qtype in types:
            d = self.lookups.get(name, qtype)
            d.addCallbacks(lambda records, qtype=qtype: (records, False), lambda f: ([], True))
            ds.append(d)

        def merge(results: list[tuple[list[Any], bool]]) -> tuple[list[Destination], bool]:
            out = []
            for (records, _), qtype in zip(results, types):
                for r in records:
                    host = r.dottedQuad() if qtype == dns.A else socket.inet_ntop(socket.AF_INET6, r.address)
                    out.append(Destination(transport, host, port))
            return out, any(f for _, f in results)

        return gatherResults(ds).addCallback(merge)


def make_resolver(servers: Sequence[tuple[str, int]], reactor: Any, timeout: Sequence[int] = (1, 3, 5)) -> Any:
    """A ``twisted.names`` resolver: ``servers`` (host, port) pairs, or the
    system's (``/etc/hosts`` then ``/etc/resolv.conf``) when empty."""
    from twisted.names import client, hosts, resolve

    if servers:
        return client.Resolver(servers=list(servers), timeout=tuple(timeout), reactor=reactor)
    return resolve.ResolverChain(
        [hosts.Resolver(file=b"/etc/hosts"), client.Resolver(resolv="/etc/resolv.conf", timeout=tuple(timeout), reactor=reactor)]
    )
