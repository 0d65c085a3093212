"""Registrations in the ring (paper IV.A-B): the ``overlay`` location provider.

Two halves, both on an overlay node (``sosimple_proxy.overlay``, which knows
nothing of SIP):

- :class:`RingPublisher` listens to the local binding table and writes
  each AoR's bindings as a ``registration`` dictionary record at key(AoR):
  one entry per binding, named by this node and the binding's instance or
  contact, so two proxies registering the same AoR merge rather than
  overwrite each other (DESIGN.md, the overlay).  A binding that goes away
  becomes a tombstone; one that expires simply expires in the ring too.
- :class:`RingLocator` reads key(AoR) and turns the live entries into
  targets, each routed through the proxy that holds the registration (its
  ``path``), so a remote proxy reaches a UA behind its own edge proxy.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location import regrecord
from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.location.regrecord import KIND
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, IRetargeting, LocateResult, Miss, Target
from sosimple_proxy.sip.uri import parse_uri

log = Logger()

def encode_binding(binding: Binding, route: Sequence[str]) -> bytes:
    """A registration entry's value: how to reach this binding from anywhere."""
    return regrecord.encode(
        binding.aor,
        binding.contact,
        binding.q,
        binding.expires_at,
        list(route) + list(binding.path),
        regrecord.proxy_of(route[0]) if route else None,
        binding.instance,
        binding.reg_id,
    )



def entry_name(writer: str, binding: Binding) -> str:
    return f"{writer}/{binding.instance or binding.contact}"


class RingPublisher:
    """Mirrors the local binding table into the ring.

    ``self_route(binding)`` gives the Route value (``<sip:host:port;lr>``)
    by which other proxies reach this binding through this one (naming its
    connection, if it has one); it is put in front of the binding's path.
    """

    def __init__(
        self,
        overlay: Any,
        table: BindingTable,
        self_route: Callable[[Binding], str | None],
        clock: Any,
        retries: int = 3,
        retry_delay: float = 1.0,
        accepts: Callable[[str], bool] | None = None,
    ) -> None:
        self.overlay = overlay
        self.accepts = accepts
        self.table = table
        self.self_route = self_route
        self.clock = clock
        self.retries = retries
        self.retry_delay = retry_delay
        self._written: dict[str, dict[str, Any]] = {}  # aor -> entry -> last record
        self._pending: set[str] = set()
        # aor -> fires True once its newest write is done (a quorum took it),
        # False once every retry failed: what the REGISTER answer waits for
        self._settling: dict[str, Deferred] = {}
        table.listeners.append(self.changed)
        overlay.ready.addCallback(self._ready)

    def _ready(self, node: Any) -> Any:
        for aor in sorted(self._pending):
            self.changed(aor, self.table.lookup(aor))
        self._pending.clear()
        return node

    @property
    def node(self) -> Any:
        node = getattr(self.overlay, "node", None)
        return node if node is not None and getattr(node, "joined", True) else None

    def changed(self, aor: str, bindings: list[Binding]) -> None:
        if self.accepts is not None and not self.accepts(aor):
            return
        node = self.node
        if node is None:
            self._pending.add(aor)
            self._settling.setdefault(aor, Deferred())
            return
        key = self.overlay.keys.key(aor)
        now = self.clock.seconds()
        old = self._written.get(aor, {})
        new: dict[str, Any] = {}
        records = []
        for b in bindings:
            if b.expires_at <= now:
                continue
            entry = entry_name(node.writer, b)
            route = self.self_route(b)
            hops = [route] if route else []
            rec = Record(key, KIND, entry, node.writer, encode_binding(b, hops), b.expires_at, node.next_seq(), name=aor)
            new[entry] = rec
            records.append(rec)
        for entry, rec in old.items():
            if entry not in new and rec.expires > now:
                records.append(rec.tombstone(seq=node.next_seq(rec.seq), writer=node.writer))
        if new:
            self._written[aor] = new
        else:
            self._written.pop(aor, None)
        previous = self._settling.pop(aor, None)
        if records:
            done: Deferred = Deferred()
            if previous is not None:
                # an older write's waiters are served by this newer one
                done.addCallback(_relay, previous)
            self._settling[aor] = done
            self._put(node, aor, records, self.retries, done)
        elif previous is not None:
            previous.callback(True)

    def settled(self, aor: str) -> Deferred | None:
        """Deferred[bool]: whether the newest write of ``aor`` was done (a
        write quorum took it) once it is over; None when none is under way."""
        done = self._settling.get(aor)
        if done is None:
            return None
        waiter: Deferred = Deferred()
        done.addCallback(_relay, waiter)
        return waiter

    def _put(self, node: Any, aor: str, records: list[Any], tries: int, done: Deferred) -> None:
        d = maybeDeferred(node.put, records)

        def ok(_: Any) -> None:
            self._finish(aor, done, True)

        def failed(f: Any) -> None:
            if tries > 0:
                log.info("ring: writing {aor} failed ({why}); retrying", aor=aor, why=f.getErrorMessage())
                self.clock.callLater(self.retry_delay, self._put, node, aor, records, tries - 1, done)
            else:
                log.warn("ring: could not write the registration of {aor}: {why}", aor=aor, why=f.getErrorMessage())
                self._finish(aor, done, False)

        d.addCallbacks(ok, failed)

    def _finish(self, aor: str, done: Deferred, result: bool) -> None:
        if self._settling.get(aor) is done:
            del self._settling[aor]
        if not done.called:
            done.callback(result)


def _relay(result: bool, waiter: Deferred) -> bool:
    """Pass a write's outcome on to one who waits for it, and keep it."""
    if not waiter.called:
        waiter.callback(result)
    return result


@implementer(ILocator, IRetargeting)
class RingLocator:
    """Looks an AoR up in one ring (``overlay`` or ``overlay:NAME``)."""

    def __init__(
        self,
        name: str,
        overlay: Any,
        serves: Callable[[Any], bool],
        aor: Callable[[Any], str],
        is_our_route: Callable[[Any], bool],
        clock: Any = None,
        cache_ttl: float = 300.0,
        cache_size: int = 10000,
        watch_cache: bool = True,
        watch_limit: int = 1000,
    ) -> None:
        self.name = name
        self.overlay = overlay
        self.serves = serves
        self.aor = aor
        self.is_our_route = is_our_route
        self.clock = clock
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        # The paper's contact cache (IV.B): aor -> (valid until, targets).
        self.cache: dict[str, tuple[float, tuple[Target, ...]]] = {}
        # read by the metrics collector
        self.cache_hits = self.cache_misses = 0
        # Targets handed out from the cache, by the AoR they were for: one of
        # them failing earns the AoR one fresh lookup.
        self._served: dict[Target, str] = {}
        # While an AoR is cached its key is watched in the ring
        # (overlay/watch.py): a registration changed at any proxy updates or
        # drops the cached answer within a second or two, not at its TTL.
        self.watch_cache = watch_cache
        # each watch costs a lookup per stabilisation round: beyond this many
        # cached AoRs, the rest rely on their TTL and on failed targets
        self.watch_limit = watch_limit
        self._watches: dict[str, Any] = {}

    def locate(self, uri: Any) -> LocateResult:
        if not getattr(uri, "is_sip", False) or not uri.user or not self.serves(uri):
            return NOT_MINE
        aor = self.aor(uri)
        if self.clock is not None:
            hit = self.cache.get(aor)
            if hit is not None:
                if hit[0] > self.clock.seconds():
                    self.cache_hits += 1
                    for t in hit[1]:
                        self._served[t] = aor
                    return Found(hit[1], self.name)
                self._uncache(aor)
        self.cache_misses += 1
        return self._lookup(aor)

    def _lookup(self, aor: str) -> LocateResult:
        node = getattr(self.overlay, "node", None)
        if node is None or not getattr(node, "joined", True):
            return Miss("Temporarily Unavailable: not joined to the location ring yet", self.name, 480)
        key = self.overlay.keys.key(aor)
        d: Deferred = maybeDeferred(node.get, key, KIND)
        d.addCallbacks(self._found, self._failed, callbackArgs=(aor,))
        return d

    def target_failed(self, target: Target, response: Any) -> Any:
        """A target from the cache timed out, got 503 or a transport error
        (:class:`IRetargeting`): forget the cached answer and ask the ring
        once more (paper IV.B)."""
        aor = self._served.pop(target, None)
        if aor is None or not (response.status in (408, 503) or response.status >= 500):
            return None
        self._uncache(aor)
        d = maybeDeferred(self._lookup, aor)
        # new targets, or the ring's authoritative miss (the caller hears 404)
        return d.addCallback(lambda r: list(r.targets) if isinstance(r, Found) else r if isinstance(r, Miss) else [])

    def _failed(self, failure: Any) -> Miss:
        log.info("ring {name}: lookup failed: {why}", name=self.name, why=failure.getErrorMessage())
        return Miss("Temporarily Unavailable: the location ring did not answer", self.name, 480)

    def _targets(self, records: list[Any]) -> tuple[tuple[Target, ...], float]:
        """The targets the registration entries give, and when the first expires."""
        targets = []
        until = float("inf")
        for rec in records:
            if getattr(rec, "kind", KIND) != KIND:
                continue  # a watch delivers every kind under the key (a worker's records have none)
            try:
                data = regrecord.decode(rec.value)
                contact = parse_uri(data["contact"])
            except Exception:
                log.info("ring {name}: unreadable registration entry {entry!r}", name=self.name, entry=rec.entry)
                continue
            path = [p for p in data.get("path") or [] if isinstance(p, str)]
            while path and self._ours(path[0]):
                path.pop(0)  # the proxy holding it is us: no detour
            q = data.get("q")
            targets.append(Target(contact, float(q) if isinstance(q, (int, float)) else 1.0, tuple(path), None, self.name))
            until = min(until, rec.expires)
        return tuple(targets), until

    def _found(self, records: list[Any], aor: str) -> LocateResult:
        found, until = self._targets(records)
        if not found:
            # The responsible node's answer (after its replicas, if it did not
            # answer) is authoritative: the paper's completeness.  Misses are
            # not cached: a new registration must be found at once.
            self._uncache(aor)
            return Miss("Not Found", self.name)
        if self.clock is not None and self.cache_ttl > 0:
            if len(self.cache) >= self.cache_size:
                for cached in list(self.cache):
                    self._uncache(cached)
                self._served.clear()
            self.cache[aor] = (min(until, self.clock.seconds() + self.cache_ttl), found)
            self._watch(aor)
        return Found(found, self.name)

    # -- keeping the cache fresh

    def _watch(self, aor: str) -> None:
        if not self.watch_cache or aor in self._watches or len(self._watches) >= self.watch_limit:
            return
        node = getattr(self.overlay, "node", None)
        if node is None or not hasattr(node, "watch"):
            return
        self._watches[aor] = node.watch(self.overlay.keys.key(aor), lambda key, records: self._changed(aor, records))

    def _changed(self, aor: str, records: list[Any]) -> None:
        """The ring says the AoR's records changed: update or drop the cache."""
        hit = self.cache.get(aor)
        if hit is None:
            self._uncache(aor)
            return
        found, until = self._targets(records)
        if set(found) == set(hit[1]):
            return
        for t in [t for t, a in self._served.items() if a == aor]:
            del self._served[t]
        if not found:
            log.info("ring {name}: {aor} is gone from the ring; dropped from the contact cache", name=self.name, aor=aor)
            self._uncache(aor)
            return
        log.info("ring {name}: {aor} changed in the ring; contact cache updated", name=self.name, aor=aor)
        self.cache[aor] = (min(until, hit[0]), found)

    def _uncache(self, aor: str) -> None:
        self.cache.pop(aor, None)
        for t in [t for t, a in self._served.items() if a == aor]:
            del self._served[t]
        watch = self._watches.pop(aor, None)
        if watch is not None:
            watch.cancel()

    def _ours(self, route: str) -> bool:
        try:
            text = route.strip()
            if text.startswith("<"):
                text = text[1 : text.index(">")]
            u = parse_uri(text)
            return not u.user and self.is_our_route(u)
        except Exception:
            return False
