"""Per-source abuse limits: request rate, bans, auth failures, connection caps.

This is Kamailio's pike and ratelimit with fail2ban's habit, as one small
object on an injected clock (``IReactorTime``; tests use ``task.Clock``):

- Each source address has a token bucket (``requests_per_second`` refill,
  ``burst`` capacity).  The first request over it is answered "limited" (the
  proxy sends 503 with Retry-After) and the source is banned for
  ``ban_seconds``; while banned every request is "banned" (silence).
- ``auth_failures`` wrong credentials within 60 s ban a source too.  Only
  the caller knows what a *wrong* credential is (not a first request that
  carries none), so it reports them with :meth:`Limits.auth_failed`.
- Connection counters (total and per source) and a transaction cap.
- New TCP/TLS connections have a per-source rate of their own
  (``connections_per_second``, a bucket twice ``max_connections_per_source``
  deep), and ``auth_failures`` failed TLS handshakes in 60 s ban too: a
  handshake costs far more than a request, so a handshake flood is banned
  like a request flood, and a banned source's connections are closed
  before their handshake.
- The bans may be copied into the kernel (``kernel_bans``): the owner
  sets :attr:`Limits.mirror` (:mod:`~sosimple_proxy.security.kernel_bans`)
  and adds it to ``on_ban``/``on_lift``; :meth:`Limits.settled` waits
  for it after an unblock.
- Sources in ``allow`` are never limited or banned.  Loopback is not
  implicitly allowed: a lab that wants it lists ``127.0.0.0/8 ::1``.
- Emergency calls (``[pstn] emergency``) are never limited: that exemption
  is the caller's business, because only a parsed request knows its target.
  The proxy skips the checks for them (and for a banned source's emergency
  call too).

With ``[proxy] workers`` each worker has a limiter and the parent has one
that sums theirs: :meth:`Limits.charge` takes requests counted elsewhere,
and ``on_ban``/``on_lift`` hear of bans to pass on
(:mod:`sosimple_proxy.workers.shared_limits`).

Cheap enough to run before a datagram is parsed: a banned source costs one
dict lookup and a clock read; a known source a few more operations.
Memory is bounded: a bucket idle long enough to have refilled is the same as
no bucket, so it is dropped (a few per check, oldest first, and all at once
by :meth:`Limits.sweep`), and at most ``max_sources`` buckets are kept.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import math
import re
from collections import OrderedDict, deque
from typing import Callable, Mapping, Union

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface, implementer

from sosimple_proxy.security.kernel_bans import IBanMirror, parse_kernel_bans

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# fail2ban's findtime for wrong credentials; site-ini.md says "per minute".
AUTH_WINDOW = 60.0
# Hard cap on tracked sources (buckets, auth-failure windows).  Spoofed UDP
# sources cost memory; past the cap the least recently seen is forgotten,
# which only gives that source a fresh bucket.
MAX_SOURCES = 200_000
# Longest wait for the kernel's copy of the bans to catch up (settled()).
SETTLE_TIMEOUT = 5.0
# Seconds between full sweeps (start_sweeping).
SWEEP_INTERVAL = 60.0
# Stale entries dropped per check: amortised O(1), and memory follows the
# traffic down without a scan per message.
_LAZY_DROPS = 4


class Verdict(enum.Enum):
    """What to do with a request or connection from a source."""

    ALLOW = "allow"
    LIMITED = "limited"  # answer 503 with Retry-After (or refuse the connection)
    BANNED = "banned"  # say nothing


ALLOW, LIMITED, BANNED = Verdict.ALLOW, Verdict.LIMITED, Verdict.BANNED


# --- [limits] configuration ---------------------------------------------


class LimitsConfigError(ValueError):
    """A bad ``[limits]`` value; ``key`` and ``problem`` let config.py build
    its one-line ``site.ini: [limits] KEY: PROBLEM`` message."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"[limits] {key}: {problem}")


def _number(raw: str, kind: type) -> float:
    text = raw.strip()
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if value < 0:
        raise ValueError(f"{text} must not be negative")
    return value


def parse_rate(raw: str) -> float:
    """Requests per second, a float >= 0; 0 turns rate limiting off."""
    return float(_number(raw, float))


def parse_seconds(raw: str) -> float:
    """Seconds, a float >= 0."""
    return float(_number(raw, float))


def parse_count(raw: str) -> int:
    """A whole number >= 0; 0 means "no limit" (or "off") for this key."""
    return int(_number(raw, int))


def parse_burst(raw: str) -> int:
    """Bucket capacity: at least 1, or no request would ever pass."""
    value = parse_count(raw)
    if value < 1:
        raise ValueError(f"{value} is below the minimum of 1")
    return value


def parse_networks(raw: str) -> tuple[Network, ...]:
    """``10.0.0.0/8, 192.0.2.7 ::1 2001:db8::/32``: addresses or networks,
    IPv4 and IPv6, space- or comma-separated.  Host bits are ignored
    (``192.0.2.1/24`` is ``192.0.2.0/24``)."""
    networks = []
    for word in re.split(r"[\s,]+", raw.strip()):
        if not word:
            continue
        try:
            networks.append(ipaddress.ip_network(word.replace("[", "").replace("]", ""), strict=False))
        except ValueError:
            raise ValueError(f"{word!r} is not an IP address or network") from None
    return tuple(networks)


@attrs.frozen
class LimitsConfig:
    """The ``[limits]`` section.  Defaults suit one site's phones behind a
    few NAT addresses; an office behind one address, or a gateway, belongs
    in ``allow``.  0 turns a limit off (see each key)."""

    # Tokens per second per source; 0 = no rate limit.  50/s is far above a
    # phone's needs (a REGISTER a minute, a call's dozen messages).
    requests_per_second: float = 50.0
    # Bucket size: a just-booted phone's burst of SUBSCRIBEs, a PBX's resync.
    burst: int = 100
    # How long a source that went over its rate (or guessed passwords) is
    # ignored; 0 = never ban (every excess request is answered 503).
    ban_seconds: float = 300.0
    # Never limited or banned.
    allow: tuple[Network, ...] = ()
    # Wrong credentials per 60 s that ban a source; 0 = never.
    auth_failures: int = 10
    # Open TCP/TLS connections in total (allowed sources are always accepted).
    max_connections: int = 1024
    # Open TCP/TLS connections per source address.
    max_connections_per_source: int = 32
    # Live transactions beyond which new requests get 503.
    max_transactions: int = 100000
    # New TCP/TLS connections per second per source (a bucket twice as deep
    # as max_connections_per_source); the first one over it bans the source.
    # A TLS handshake costs the reactor tens of requests' worth of work, so
    # handshake floods need their own, lower rate; 0 = no connection rate.
    connections_per_second: float = 10.0
    # Mirror bans into an nftables set (security/kernel_bans.py): auto =
    # when root (or CAP_NET_ADMIN) and nft is installed; yes = startup stops
    # otherwise; no = never.
    kernel_bans: str = "auto"


# The config.py schema shape: key -> (parser, default as written in site.ini).
LIMITS_SCHEMA: dict[str, tuple[Callable[[str], object], str]] = {
    "requests_per_second": (parse_rate, "50"),
    "burst": (parse_burst, "100"),
    "ban_seconds": (parse_seconds, "300"),
    "allow": (parse_networks, ""),
    "auth_failures": (parse_count, "10"),
    "max_connections": (parse_count, "1024"),
    "max_connections_per_source": (parse_count, "32"),
    "max_transactions": (parse_count, "100000"),
    "connections_per_second": (parse_rate, "10"),
    "kernel_bans": (parse_kernel_bans, "auto"),
}


def parse_limits(raw: Mapping[str, str]) -> LimitsConfig:
    """Parse and validate the raw ``[limits]`` strings; missing keys take
    their defaults, unknown keys are the caller's to warn about.

    Raises :class:`LimitsConfigError` (a ``ValueError``) naming the key.
    """
    values: dict[str, object] = {}
    for key, (parse, default) in LIMITS_SCHEMA.items():
        try:
            values[key] = parse(raw.get(key, default))
        except ValueError as e:
            raise LimitsConfigError(key, str(e)) from None
    return LimitsConfig(**values)  # type: ignore[arg-type]


# --- the limiter ---------------------------------------------------------


@attrs.define
class Ban:
    """One banned source; ``until`` is on the limiter's clock."""

    address: str
    reason: str
    until: float


class _Bucket:
    __slots__ = ("tokens", "stamp", "allowed")

    def __init__(self, tokens: float, stamp: float, allowed: bool) -> None:
        self.tokens, self.stamp, self.allowed = tokens, stamp, allowed


def canonical_address(address: str) -> str:
    """The form transports report (``::1``, not ``0:0::1``); text that is
    no address is returned as is."""
    try:
        return str(ipaddress.ip_address(address.strip().strip("[]")))
    except ValueError:
        return address.strip()


class ILimitsView(Interface):
    """What the admin API needs of the limiter (``GET /limits``,
    ``DELETE /limits/banned/{address}``): the web layer gets this, not the
    whole limiter, so it cannot change rates or ban anyone."""

    def report() -> dict[str, object]:
        """``{"banned": [{"address", "reason", "remaining"}]}``."""

    def unban(address: str) -> bool:
        """Lift the ban of ``address`` (any IP spelling); whether there was one."""

    def settled() -> Deferred:
        """Fires once a lifted ban is lifted everywhere (the kernel too)."""


@implementer(ILimitsView)
class Limits:
    """Per-source verdicts on one clock.  ``source`` is the peer's address
    as the transport reports it (host only, no port)."""

    def __init__(
        self,
        clock: IReactorTime,
        config: LimitsConfig = LimitsConfig(),
        log: Logger | None = None,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.config = config
        self._clock = clock
        self._log = log or Logger()
        self._max_sources = max_sources
        self._rate = config.requests_per_second
        self._burst = float(config.burst)
        # A bucket idle this long is full again: dropping it changes nothing.
        self._idle = self._burst / self._rate if self._rate > 0 else 0.0
        self._allow = config.allow
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # No bucket can be idle before this time (the oldest one's stamp +
        # idle), so most checks skip the look at the oldest bucket.
        self._next_drop = 0.0
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._banned: dict[str, Ban] = {}
        self._expiries: list[tuple[float, str]] = []  # heap; stale entries skipped
        self._expiry_call: IDelayedCall | None = None
        self._connections: dict[str, int] = {}
        # New connections per source: a bucket refilled at
        # connections_per_second.
        self._conn_rate = config.connections_per_second
        # Twice the per-source cap: a source may fill its cap, lose every
        # connection and fill it again at once before the rate bites.
        self._conn_burst = float(2 * (config.max_connections_per_source or 32))
        self._conn_buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._tls_failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._sweeper: LoopingCall | None = None
        self.connections = 0
        #: bans ever made (read by metrics)
        self.bans_total = 0
        #: messages from banned sources dropped unparsed (the stack's gate
        #: counts them here) and connections refused because banned
        self.dropped = 0
        self.refused = 0
        #: the kernel's copy of the bans (security/kernel_bans.py), if any:
        #: wired to on_ban/on_lift by whoever made it; shown by report()
        self.mirror: IBanMirror | None = None
        # Hear of each ban made and lifted ([proxy] workers share them);
        # empty in a single process, so they cost nothing there.
        self.on_ban: list[Callable[[Ban], object]] = []
        self.on_lift: list[Callable[[str, str], object]] = []

    # -- requests

    def check(self, source: str) -> Verdict:
        """The verdict on one request from ``source``: ALLOW, LIMITED (the
        first one over the rate: answer 503, see :meth:`retry_after`) or
        BANNED (drop it silently)."""
        ban = self._banned.get(source)
        now = self._clock.seconds()
        if ban is not None:
            if now < ban.until:
                return BANNED
            self._lift(source, "expired")
        if self._rate <= 0:
            return ALLOW
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            bucket = _Bucket(self._burst, now, self.is_allowed(source))
            buckets[source] = bucket
            if len(buckets) > self._max_sources:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(source)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        if now >= self._next_drop:
            self._drop_idle(now, _LAZY_DROPS)
        if bucket.allowed:
            return ALLOW
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return ALLOW
        self.ban(source, f"over {self._rate:g} requests/s (burst {self.config.burst})")
        return LIMITED

    def charge(self, source: str, count: int) -> bool:
        """``count`` requests from ``source`` that passed elsewhere (another
        worker process's own check), taken from this limiter's bucket at
        once; the source is banned if they were more than it held.  Whether
        this banned it."""
        if self._rate <= 0 or count <= 0 or self.is_banned(source):
            return False
        now = self._clock.seconds()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = _Bucket(self._burst, now, self.is_allowed(source))
            self._buckets[source] = bucket
            if len(self._buckets) > self._max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
            bucket.stamp = now
        if bucket.allowed:
            return False
        bucket.tokens -= count
        if bucket.tokens >= 0.0:
            return False
        return self.ban(source, f"over {self._rate:g} requests/s (burst {self.config.burst})")

    def is_banned(self, source: str) -> bool:
        """The cheapest pre-parse test: one dict lookup while nobody is banned."""
        ban = self._banned.get(source)
        return ban is not None and self._clock.seconds() < ban.until

    def retry_after(self, source: str | None = None) -> int:
        """Seconds for the 503's Retry-After: what is left of the source's
        ban, else the time for one token to come back (at least 1)."""
        ban = self._banned.get(source) if source is not None else None
        if ban is not None:
            return max(1, math.ceil(ban.until - self._clock.seconds()))
        if self.config.ban_seconds > 0:
            return max(1, math.ceil(self.config.ban_seconds))
        return max(1, math.ceil(1.0 / self._rate)) if self._rate > 0 else 1

    def is_allowed(self, source: str) -> bool:
        """Whether ``source`` is in ``[limits] allow``."""
        if not self._allow:
            return False
        try:
            address = ipaddress.ip_address(source.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allow)

    # -- authentication failures

    def auth_failed(self, source: str) -> Verdict:
        """Report one *wrong* credential from ``source`` (not a request that
        carried none).  Returns BANNED when this one bans the source."""
        limit = self.config.auth_failures
        if limit <= 0 or self.is_allowed(source):
            return ALLOW
        if self.is_banned(source):
            return BANNED
        now = self._clock.seconds()
        window = self._failures.get(source)
        if window is None:
            window = self._failures[source] = deque()
            if len(self._failures) > self._max_sources:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(source)
        window.append(now)
        while window and now - window[0] >= AUTH_WINDOW:
            window.popleft()
        self._drop_stale_failures(now, _LAZY_DROPS)
        if len(window) >= limit:
            del self._failures[source]
            self.ban(source, f"{len(window)} wrong credentials in {AUTH_WINDOW:g} s")
            return BANNED
        return ALLOW

    # -- connections and transactions

    def connection_opened(self, source: str, banned_ok: bool = False) -> Verdict:
        """Count a new TCP/TLS connection; anything but ALLOW means close it
        (BANNED: at once, without a word).  Only an ALLOW is counted, so
        call :meth:`connection_closed` exactly for those.

        ``banned_ok``: a banned source's connection is allowed within the
        caps all the same, because only its first message can say whether it
        is an emergency call (the caller drops anything else and closes)."""
        if not banned_ok and self.is_banned(source):
            self.refused += 1
            return BANNED
        allowed = self.is_allowed(source)
        per_source = self._connections.get(source, 0)
        if not allowed and self._conn_rate > 0 and not self._take_connection(source) and not banned_ok:
            self.refused += 1
            return BANNED if self.is_banned(source) else LIMITED  # ban_seconds = 0: a cap, no ban
        if not allowed:
            cap = self.config.max_connections
            if cap and self.connections >= cap:
                return LIMITED
            cap = self.config.max_connections_per_source
            if cap and per_source >= cap:
                return LIMITED
        self._connections[source] = per_source + 1
        self.connections += 1
        return ALLOW

    def _take_connection(self, source: str) -> bool:
        """One token from ``source``'s connection bucket; False (and the
        source banned) when it had none.  A TLS handshake is the dearest
        thing a stranger can make us do, so opening connections faster
        than ``connections_per_second`` (beyond a burst of twice
        ``max_connections_per_source``) bans like a request flood.  Every
        attempt counts, those the caps refuse too."""
        now = self._clock.seconds()
        buckets = self._conn_buckets
        bucket = buckets.get(source)
        if bucket is None:
            bucket = buckets[source] = _Bucket(self._conn_burst, now, False)
            if len(buckets) > self._max_sources:
                buckets.popitem(last=False)
            self._drop_idle_connections(now, _LAZY_DROPS)
        else:
            buckets.move_to_end(source)
            bucket.tokens = min(self._conn_burst, bucket.tokens + (now - bucket.stamp) * self._conn_rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        del buckets[source]
        self.ban(source, f"over {self._conn_rate:g} new connections/s (burst {self._conn_burst:g})")
        return False

    def _drop_idle_connections(self, now: float, most: int | None) -> int:
        idle = self._conn_burst / self._conn_rate if self._conn_rate > 0 else 0.0
        buckets, dropped = self._conn_buckets, 0
        while buckets and (most is None or dropped < most):
            source, bucket = next(iter(buckets.items()))
            if now - bucket.stamp < idle:
                break
            del buckets[source]
            dropped += 1
        return dropped

    def handshake_failed(self, source: str) -> Verdict:
        """An inbound TLS connection from ``source`` closed before its
        handshake finished.  ``auth_failures`` of them within 60 s ban the
        source, as wrong passwords do: a peer that cannot finish a
        handshake again and again is probing or flooding, not calling."""
        limit = self.config.auth_failures
        if limit <= 0 or self.is_allowed(source) or self.is_banned(source):
            return ALLOW
        now = self._clock.seconds()
        window = self._tls_failures.get(source)
        if window is None:
            window = self._tls_failures[source] = deque()
            if len(self._tls_failures) > self._max_sources:
                self._tls_failures.popitem(last=False)
        else:
            self._tls_failures.move_to_end(source)
        window.append(now)
        while window and now - window[0] >= AUTH_WINDOW:
            window.popleft()
        if len(window) >= limit:
            del self._tls_failures[source]
            self.ban(source, f"{len(window)} failed TLS handshakes in {AUTH_WINDOW:g} s")
            return BANNED
        return ALLOW

    def connection_closed(self, source: str) -> None:
        """The end of a connection that :meth:`connection_opened` allowed."""
        count = self._connections.get(source, 0)
        if count <= 0:
            return
        if count == 1:
            del self._connections[source]
        else:
            self._connections[source] = count - 1
        self.connections -= 1

    def connections_from(self, source: str) -> int:
        return self._connections.get(source, 0)

    def check_transactions(self, live: int) -> Verdict:
        """LIMITED when ``live`` transactions already fill
        ``max_transactions``: the new request gets 503, established
        dialogs (in-dialog requests) are the caller's to let through."""
        cap = self.config.max_transactions
        return LIMITED if cap and live >= cap else ALLOW

    # -- bans

    def ban(self, source: str, reason: str, seconds: float | None = None) -> bool:
        """Ban ``source`` for ``seconds`` (default ``ban_seconds``), logged
        once with the reason.  False (and nothing done) for an allowed or
        already banned source, or when bans are off."""
        seconds = self.config.ban_seconds if seconds is None else seconds
        if seconds <= 0 or self.is_allowed(source) or self.is_banned(source):
            return False
        if source in self._banned:  # ended, its timer not yet run
            self._lift(source, "expired")
        until = self._clock.seconds() + seconds
        self._banned[source] = Ban(source, reason, until)
        self.bans_total += 1
        self._buckets.pop(source, None)
        heapq.heappush(self._expiries, (until, source))
        self._schedule_expiry()
        self._log.warn(
            "limits: banned {address} for {seconds:g} s: {reason}",
            address=source,
            seconds=seconds,
            reason=reason,
        )
        for listener in self.on_ban:
            listener(self._banned[source])
        return True

    def unban(self, address: str, why: str = "lifted by the administrator") -> bool:
        """Lift a ban early (``DELETE /limits/banned/{address}``); whether
        there was one.  The address may be written in any IP form."""
        for key in (address, canonical_address(address)):
            if key in self._banned and self.is_banned(key):
                self._lift(key, why)
                return True
        return False

    def settled(self) -> Deferred:
        """Fires once the kernel's copy of the bans (if any) has caught up:
        the admin API answers an unblock after it, so a source it lets back
        in is let in by the kernel too."""
        if self.mirror is None:
            return succeed(None)
        # Never more than a few seconds: a stuck nft must not hang the API.
        d = self.mirror.idle().addTimeout(SETTLE_TIMEOUT, self._clock)
        d.addErrback(lambda _: None)
        return d

    def bans(self) -> list[dict[str, object]]:
        """``GET /limits``'s ``banned`` list: address, reason, remaining
        whole seconds (rounded up), soonest to end first."""
        now = self._clock.seconds()
        return [{"address": b.address, "reason": b.reason, "remaining": math.ceil(b.until - now)} for b in self.live_bans()]

    def live_bans(self) -> list[Ban]:
        """The bans in force, soonest to end first."""
        now = self._clock.seconds()
        return sorted((b for b in self._banned.values() if b.until > now), key=lambda b: b.until)

    def report(self) -> dict[str, object]:
        """The body of ``GET /limits``: the bans, what was dropped and
        refused in the process, and the kernel's copy (when there is one)."""
        body: dict[str, object] = {"banned": self.bans(), "dropped": self.dropped, "refused_connections": self.refused}
        if self.mirror is not None:
            body["kernel"] = self.mirror.report()
        return body

    def _lift(self, source: str, why: str) -> None:
        ban = self._banned.pop(source)
        self._log.info("limits: unbanned {address} ({why}); it was banned for: {reason}", address=source, why=why, reason=ban.reason)
        for listener in self.on_lift:
            listener(source, why)

    def _schedule_expiry(self) -> None:
        """One timer, for the soonest ban to end, so expiry is logged on time
        even when the source stays quiet."""
        heap = self._expiries
        while heap and (heap[0][1] not in self._banned or self._banned[heap[0][1]].until != heap[0][0]):
            heapq.heappop(heap)
        if self._expiry_call is not None and self._expiry_call.active():
            if heap and self._expiry_call.getTime() <= heap[0][0]:
                return
            self._expiry_call.cancel()
        self._expiry_call = None
        if heap:
            delay = max(0.0, heap[0][0] - self._clock.seconds())
            self._expiry_call = self._clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        now = self._clock.seconds()
        heap = self._expiries
        while heap and heap[0][0] <= now:
            until, source = heapq.heappop(heap)
            ban = self._banned.get(source)
            if ban is not None and ban.until == until:
                self._lift(source, "expired")
        self._schedule_expiry()

    # -- memory

    def sweep(self) -> int:
        """Drop every idle bucket and stale failure window; how many.  Run
        it now and then (a minute's ``LoopingCall``) so memory follows a
        flood down even when traffic stops."""
        now = self._clock.seconds()
        stale_tls = [s for s, w in self._tls_failures.items() if not w or now - w[-1] >= AUTH_WINDOW]
        for source in stale_tls:
            del self._tls_failures[source]
        return (self._drop_idle(now, None) + self._drop_stale_failures(now, None)
                + self._drop_idle_connections(now, None) + len(stale_tls))

    def tracked(self) -> int:
        """Sources currently holding memory (buckets, failure windows, bans,
        connection counters)."""
        return (len(self._buckets) + len(self._failures) + len(self._banned) + len(self._connections)
                + len(self._conn_buckets) + len(self._tls_failures))

    def start_sweeping(self, interval: float = SWEEP_INTERVAL) -> None:
        """Run :meth:`sweep` every ``interval`` seconds on the clock."""
        if self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = self._clock
            self._sweeper.start(interval, now=False)

    def stop(self) -> None:
        """Cancel the expiry timer and the sweep (at service shutdown)."""
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def _drop_idle(self, now: float, most: int | None) -> int:
        buckets, dropped = self._buckets, 0
        self._next_drop = now + self._idle
        while buckets:
            source, bucket = next(iter(buckets.items()))
            if now - bucket.stamp < self._idle:
                self._next_drop = bucket.stamp + self._idle
                break
            if most is not None and dropped >= most:
                self._next_drop = now  # more to drop at the next check
                break
            del buckets[source]
            dropped += 1
        return dropped

    def _drop_stale_failures(self, now: float, most: int | None) -> int:
        failures, dropped = self._failures, 0
        while failures and (most is None or dropped < most):
            source, window = next(iter(failures.items()))
            if window and now - window[-1] < AUTH_WINDOW:
                break
            del failures[source]
            dropped += 1
        return dropped

