"""PSTN gateways: which serve a number, in which order, and which are up.

- :class:`Gateway` is one ``[gateway:NAME]`` section.
- :class:`GatewayState` is each gateway's small explicit state machine,
  ``active`` or ``inactive``, fed by OPTIONS probes and by call failures.
- :class:`GatewaySet` chooses the gateways for an E.164 number: the longest
  matching prefix across all gateways picks the group; in the group, lower
  priority first; among equal priority a random order weighted by
  ``weight`` (the random function is injected, so tests fix it); inactive
  gateways are skipped.
- :class:`GatewayProber` sends the OPTIONS probes through the transaction
  layer every ``[pstn] probe_interval`` seconds.

No I/O here but through the transaction layer and the clock given in.
"""

from __future__ import annotations

import random as _random
import re
import uuid
from typing import Any, Callable, Iterable, Sequence

import attrs
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.sip.interfaces import IClientTransactionUser
from sosimple_proxy.sip.message import Headers, Request, Response, new_tag
from sosimple_proxy.sip.uri import URI, format_host, parse_uri
from sosimple_proxy.sip.via import new_branch

log = Logger()

ACTIVE = "active"
INACTIVE = "inactive"

# A call answered with one of these says the gateway itself is unusable
# (no answer, overloaded, unreachable -- our own 503 for a transport error):
# it is skipped until a probe or ``retry_interval`` brings it back.  Other
# 5xx (500, 502, 504...) fail the call over but speak for that call only.
UNAVAILABLE = (408, 503)


def parse_prefix(word: str) -> str:
    """``+1``, ``1`` or ``+`` (every number) -> the digits after the ``+``."""
    digits = word.strip().lstrip("+")
    if digits and not re.fullmatch(r"[0-9]{1,15}", digits):
        raise ValueError(f"{word!r} is not a number prefix (+ and digits)")
    return digits


def parse_prefixes(raw: str) -> tuple[str, ...]:
    words = [w for w in re.split(r"[\s,]+", raw.strip()) if w]
    if not words:
        raise ValueError("needs at least one prefix ('+' for every number)")
    return tuple(dict.fromkeys(parse_prefix(w) for w in words))


def parse_gateway_uri(raw: str) -> URI:
    text = raw.strip()
    if not text:
        raise ValueError("is required (e.g. sip:192.0.2.10:5060;transport=udp)")
    try:
        uri = parse_uri(text)
    except Exception as e:
        raise ValueError(f"{text!r} is not a SIP URI ({e})") from None
    if not uri.is_sip or not uri.host:
        raise ValueError(f"{text!r} is not a sip: or sips: URI")
    if uri.user:
        raise ValueError(f"{text!r}: a gateway URI has no user part (the number goes there)")
    if (uri.transport or "udp") not in ("udp", "tcp", "tls"):
        raise ValueError(f"{text!r}: transport {uri.transport!r} is not udp, tcp or tls")
    return uri


def parse_prepend(raw: str) -> str:
    text = raw.strip()
    if not re.fullmatch(r"[0-9*#+]*", text):
        raise ValueError(f"{text!r} is not dialling digits (0-9 * # +)")
    return text


def uri_dest(uri: URI) -> str | None:
    """``transport:ip:port`` for a gateway URI with an IP host, else None
    (a name: the forwarder resolves it)."""
    import ipaddress

    transport = uri.transport or ("tls" if uri.secure else "udp")
    if uri.secure and transport == "tcp":
        transport = "tls"  # RFC 3261 26.2.2: a SIPS URI over TCP is TLS
    host = uri.maddr or uri.host or ""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    port = uri.port or (5061 if transport == "tls" else 5060)
    return f"{transport}:{ip}:{port}"


@attrs.frozen
class Gateway:
    """One ``[gateway:NAME]``."""

    name: str
    uri: URI = attrs.field(eq=False)
    prefixes: tuple[str, ...] = ("",)
    priority: int = 1
    weight: int = 1
    strip: int = 0
    prepend: str = ""

    @property
    def dest(self) -> str | None:
        return uri_dest(self.uri)

    def match(self, digits: str) -> int:
        """Length of the longest prefix of ours that ``digits`` starts with; -1 if none."""
        return max((len(p) for p in self.prefixes if digits.startswith(p)), default=-1)

    def dialled_user(self, e164: str) -> str:
        """The user part sent to this gateway: ``+digits`` as is, or with the
        ``+`` dropped, ``strip`` digits removed and ``prepend`` in front."""
        digits = e164.lstrip("+")
        if self.strip == 0 and not self.prepend:
            return "+" + digits
        return self.prepend + digits[self.strip :]

    def request_uri(self, e164: str) -> URI:
        """``sip:<user>@<gateway host:port>;user=phone`` (with the gateway's
        transport when it is not UDP)."""
        params: list[tuple[str, str | None]] = []
        transport = self.uri.transport
        if transport and transport != "udp":
            params.append(("transport", transport))
        params.append(("user", "phone"))
        return URI(self.uri.scheme, self.dialled_user(e164), self.uri.host, self.uri.port, dict(params))


class GatewayState:
    """``active`` or ``inactive``, with the events that move between them.

    ::

        active   --probe_failed / call_failed(408, 503)-->  inactive
        inactive --probe_answered------------------------>  active
        inactive --retry time reached (checked on use)--->  active

    A probe failure keeps the gateway inactive until a probe is answered;
    a call failure keeps it inactive until a probe is answered or for
    ``retry_interval`` seconds (a 503's Retry-After instead, when given),
    so that without probes it is tried again later.
    """

    def __init__(self, clock: Any, retry_interval: float = 30.0) -> None:
        self.clock = clock
        self.retry_interval = retry_interval
        self.state = ACTIVE
        self.until: float | None = None  # inactive until then (None: until a probe answers)
        self.why = ""

    def __repr__(self) -> str:
        return f"<GatewayState {self.state} {self.why}>"

    def active(self) -> bool:
        if self.state == INACTIVE and self.until is not None and self.clock.seconds() >= self.until:
            self._to(ACTIVE, "retry time reached")
        return self.state == ACTIVE

    # -- events

    def probe_answered(self, status: int) -> None:
        """A probe got a final response: alive unless it says otherwise."""
        if status in UNAVAILABLE or status >= 500:
            self.probe_failed(f"OPTIONS answered {status}")
        else:
            self._to(ACTIVE, f"OPTIONS answered {status}")

    def probe_failed(self, why: str = "no answer to OPTIONS") -> None:
        self._to(INACTIVE, why, None)

    def call_failed(self, status: int, retry_after: float | None = None) -> None:
        if status not in UNAVAILABLE:
            return
        wait = retry_after if retry_after is not None and retry_after > 0 else self.retry_interval
        self._to(INACTIVE, f"a call got {status}", self.clock.seconds() + wait)

    def _to(self, state: str, why: str, until: float | None = None) -> None:
        if state != self.state:
            log.info("gateway {state}: {why}", state=state, why=why)
        self.state = state
        self.why = why
        self.until = until if state == INACTIVE else None


def weighted_order(gateways: Sequence[Gateway], rand: Callable[[], float]) -> list[Gateway]:
    """A random order where each next gateway is drawn with probability
    proportional to its weight; weight 0 ones come last, in config order."""
    pool = [g for g in gateways if g.weight > 0]
    zero = [g for g in gateways if g.weight <= 0]
    out = []
    while pool:
        total = sum(g.weight for g in pool)
        point = rand() * total
        for i, g in enumerate(pool):
            point -= g.weight
            if point < 0 or i == len(pool) - 1:
                out.append(pool.pop(i))
                break
    return out + zero


class GatewaySet:
    """All gateways, their states, and the choice for a number."""

    def __init__(
        self,
        gateways: Iterable[Gateway],
        clock: Any,
        *,
        retry_interval: float = 30.0,
        rand: Callable[[], float] = _random.random,
    ) -> None:
        self.gateways = list(gateways)
        self.clock = clock
        self.rand = rand
        self.retry_interval = retry_interval
        self.states = {g.name: GatewayState(clock, retry_interval) for g in self.gateways}

    def replace(self, gateways: Iterable[Gateway]) -> None:
        """New gateways (SIGHUP).  A gateway that kept its name and URI keeps
        its state (a dead one is not tried again before its probe says so);
        a new or changed one starts afresh."""
        new = list(gateways)
        old = {g.name: g for g in self.gateways}
        states = {}
        for g in new:
            before = old.get(g.name)
            if before is not None and str(before.uri) == str(g.uri):
                states[g.name] = self.states[g.name]
            else:
                states[g.name] = GatewayState(self.clock, self.retry_interval)
        self.gateways, self.states = new, states

    def group(self, e164: str) -> list[Gateway]:
        """The gateways whose prefix matches ``e164`` best (active or not)."""
        digits = e164.lstrip("+")
        scored = [(g.match(digits), g) for g in self.gateways]
        best = max((s for s, _ in scored), default=-1)
        if best < 0:
            return []
        return [g for s, g in scored if s == best]

    def choose(self, e164: str) -> tuple[list[Gateway], list[Gateway]]:
        """(gateways to try in order, the group's inactive ones skipped)."""
        group = self.group(e164)
        usable = [g for g in group if self.states[g.name].active()]
        skipped = [g for g in group if g not in usable]
        ordered: list[Gateway] = []
        for priority in sorted({g.priority for g in usable}):
            ordered += weighted_order([g for g in usable if g.priority == priority], self.rand)
        return ordered, skipped

    def state(self, name: str) -> GatewayState:
        return self.states[name]


@implementer(IClientTransactionUser)
class GatewayProber:
    """OPTIONS to every gateway every ``interval`` seconds, through the
    transaction layer; each answer or failure drives that gateway's state.

    ``stack`` has ``transactions`` (``send_request``) and
    ``transport.listening()`` (one of our addresses sends each probe);
    ``from_domain`` goes in the From header.  A gateway with a probe still
    in flight is not probed again.
    """

    def __init__(
        self, gateways: GatewaySet, clock: Any, interval: float, stack: Any, from_domain: str = "localhost"
    ) -> None:
        self.gateways = gateways
        self.clock = clock
        self.interval = interval
        self.stack = stack
        self.from_domain = from_domain
        self.pending: dict[str, Any] = {}
        self._call: Any = None

    def start(self, first: float = 0.0) -> None:
        if self.interval > 0 and self._call is None:
            self._call = self.clock.callLater(first, self._round)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _round(self) -> None:
        self._call = self.clock.callLater(self.interval, self._round)
        for gateway in self.gateways.gateways:
            if gateway.name not in self.pending:
                try:
                    self.probe(gateway)
                except Exception:
                    log.failure("OPTIONS probe to gateway {name} not sent", name=gateway.name)

    def probe(self, gateway: Gateway) -> None:
        from sosimple_proxy.sip.address import Peer

        dest = gateway.dest
        if dest is None:
            return  # named by host name: only the forwarder resolves names
        transport, rest = dest.split(":", 1)
        host, _, port = rest.rpartition(":")
        peer = Peer(transport, host, int(port))
        local = self._local(peer)
        if local is None:
            self.gateways.state(gateway.name).probe_failed(f"no {transport} listener to probe from")
            return
        request = options_request(gateway, local, transport, self.from_domain)
        txn = self.stack.transactions.send_request(request, peer, self)
        txn.data = gateway.name
        self.pending[gateway.name] = txn

    def _local(self, peer: Any) -> Any:
        """Our listen address facing ``peer``: same transport and family,
        the same host or else a loopback one for a loopback peer."""
        listening = list(self.stack.transport.listening())
        same = [a for a in listening if a.transport == peer.transport and (":" in a.host) == (":" in peer.host)]
        for a in same:
            if a.host == peer.host:
                return a
        loop = peer.host.startswith("127.") or peer.host == "::1"
        for a in same:
            if (a.host.startswith("127.") or a.host == "::1") == loop:
                return a
        return same[0] if same else None

    # -- IClientTransactionUser

    def responseReceived(self, response: Response, transaction: Any) -> None:
        if response.status < 200:
            return
        name = transaction.data
        self.pending.pop(name, None)
        state = self.gateways.states.get(name)
        if state is None:
            return
        if transaction.failure is not None:
            state.probe_failed(f"OPTIONS {transaction.failure}")
        else:
            state.probe_answered(response.status)


def options_request(gateway: Gateway, local: Any, transport: str, from_domain: str) -> Request:
    """An out-of-dialog OPTIONS to the gateway (RFC 3261 11.1)."""
    hostport = f"{format_host(local.host)}:{local.port}"
    target = str(gateway.uri)
    headers = Headers(
        [
            ("Via", f"SIP/2.0/{transport.upper()} {hostport};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:gateway-probe@{from_domain}>;tag={new_tag()}"),
            ("To", f"<{target}>"),
            ("Call-ID", f"{uuid.uuid4().hex}@{format_host(local.host)}"),
            ("CSeq", "1 OPTIONS"),
            ("Accept", "application/sdp"),
            ("Content-Length", "0"),
        ]
    )
    return Request("OPTIONS", target, headers)
