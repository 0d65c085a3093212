"""What the stack lets in, decided before a message is parsed.

The ``[limits]`` rules (:class:`~sosimple_proxy.security.limits.Limits`)
run on raw bytes, because parsing is the expensive part of a message and a
flood must not buy it: a banned source costs one dict lookup and is dropped
without a word.  One exemption is read from the bytes too: an emergency call
(``[pstn] emergency``) is never counted, limited or dropped, even from a
banned source, so the INVITE's request line is peeked at (``INVITE
sip:911@...``), and the Call-IDs of the emergency calls a source has placed
are remembered, so that the ACK, BYE and re-INVITEs of those calls pass too.

Only requests are counted: a response answers something we sent.  A banned
source's responses are dropped with everything else it sends.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from typing import Iterable
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime

from sosimple_proxy.security.limits import Limits, Verdict

__all__ = ["Admission", "Gate", "emergency_number", "is_emergency_invite", "peek_call_id"]

# How long an emergency call's Call-ID is remembered after its last message
# (a long call sends re-INVITEs or UPDATEs now and then; a quiet one still
# gets its BYE through unless it lasts longer than this without a word).
EMERGENCY_CALL_TTL = 4 * 3600.0
# After a BYE: long enough for its retransmissions (64*T1).
EMERGENCY_BYE_TTL = 32.0
# Emergency calls remembered at once; past it the oldest are forgotten.
MAX_EMERGENCY_CALLS = 10_000
# The request line and the Call-ID must be within this many bytes.
_PEEK = 2048
# Visual separators a dialled number may carry (RFC 3966 visual-separator).
_SEPARATORS = re.compile(rb"[-.() ]")
_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class Admission(enum.Enum):
    """The gate's answer for one message."""

    PASS = "pass"  # parse it; counted against the source's rate
    EXEMPT = "exempt"  # an emergency call: parse it, never limited
    LIMITED = "limited"  # parse it and answer 503 with Retry-After
    DROP = "drop"  # banned: say nothing


PASS, EXEMPT, LIMITED, DROP = Admission.PASS, Admission.EXEMPT, Admission.LIMITED, Admission.DROP


def emergency_number(text: str | bytes) -> bytes:
    """The comparable form of a dialled number or user part: percent-decoded,
    without user parameters (``;phone-context=...``) and visual separators."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    raw = raw.split(b";", 1)[0]
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    return _SEPARATORS.sub(b"", raw.strip())


def request_uri_number(data: bytes) -> bytes | None:
    """The user part of an INVITE's Request-URI, read from the request line
    alone (``sip:``/``sips:`` user, or a ``tel:`` number); None otherwise."""
    if not data.startswith(b"INVITE "):
        return None
    end = data.find(b"\n", 7, _PEEK)
    line = data[7:end] if end >= 0 else data[7:_PEEK]
    uri = line.split(None, 1)[0] if line.strip() else b""
    scheme, colon, rest = uri.partition(b":")
    if not colon:
        return None
    scheme = scheme.lower()
    if scheme in (b"sip", b"sips"):
        user, at, _ = rest.rpartition(b"@")
        return emergency_number(user) if at else None
    if scheme == b"tel":
        return emergency_number(rest)
    return None


def is_emergency_invite(data: bytes, numbers: frozenset[bytes]) -> bool:
    """Whether ``data`` is an INVITE to one of ``numbers`` (in
    :func:`emergency_number` form)."""
    if not numbers:
        return False
    number = request_uri_number(data)
    return number is not None and number in numbers


def peek_call_id(data: bytes) -> bytes | None:
    """The Call-ID of a raw message (long or compact name), or None."""
    head_end = data.find(b"\r\n\r\n", 0, _PEEK * 4)
    m = _CALL_ID.search(data, 0, head_end if head_end >= 0 else _PEEK * 4)
    return m.group(1).strip() if m else None


class Gate:
    """``[limits]`` at the door of the stack, with the emergency exemption.

    ``numbers`` are the ``[pstn] emergency`` numbers (any spelling
    :func:`emergency_number` accepts); ``clock`` times the remembered
    emergency calls.  Counters (``dropped``, ``limited``, ``exempt``) are
    for metrics: a drop is never logged, a flood would flood the log.
    """

    def __init__(self, limits: Limits, numbers: Iterable[str] = (), clock: IReactorTime | None = None) -> None:
        self.limits = limits
        self.numbers = frozenset(n for n in (emergency_number(x) for x in numbers) if n)
        self._clock = clock if clock is not None else limits._clock
        # source host -> (Call-ID -> until); oldest first
        self._calls: OrderedDict[str, dict[bytes, float]] = OrderedDict()
        self._call_count = 0
        self.dropped = 0
        self.limited = 0
        self.exempt = 0

    def admit(self, data: bytes, host: str) -> Admission:
        """The verdict on one raw message from ``host`` (no port)."""
        if self._calls and host in self._calls and self._in_emergency_call(data, host):
            self.exempt += 1
            return EXEMPT
        if self.numbers and is_emergency_invite(data, self.numbers):
            self._remember(data, host)
            self.exempt += 1
            return EXEMPT
        limits = self.limits
        if limits.is_banned(host):
            self.dropped += 1
            limits.dropped += 1
            return DROP
        if data.startswith(b"SIP/"):
            return PASS  # a response answers what we sent: not counted
        verdict = limits.check(host)
        if verdict is Verdict.ALLOW:
            return PASS
        if verdict is Verdict.LIMITED:
            self.limited += 1
            return LIMITED
        self.dropped += 1
        limits.dropped += 1
        return DROP

    # -- emergency calls

    def _remember(self, data: bytes, host: str) -> None:
        call_id = peek_call_id(data)
        if not call_id:
            return
        calls = self._calls.get(host)
        if calls is None:
            calls = self._calls[host] = {}
        else:
            self._calls.move_to_end(host)
        if call_id not in calls:
            self._call_count += 1
        calls[call_id] = self._clock.seconds() + EMERGENCY_CALL_TTL
        while self._call_count > MAX_EMERGENCY_CALLS and self._calls:
            _, oldest = self._calls.popitem(last=False)
            self._call_count -= len(oldest)

    def _in_emergency_call(self, data: bytes, host: str) -> bool:
        """A message of an emergency call ``host`` placed (refreshes it)."""
        call_id = peek_call_id(data)
        calls = self._calls[host]
        until = calls.get(call_id) if call_id else None
        now = self._clock.seconds()
        if until is None or until <= now:
            self._forget_ended(host, now)
            return False
        # Each message keeps the call remembered; a BYE shortens it to its
        # retransmissions.
        ttl = EMERGENCY_BYE_TTL if data.startswith(b"BYE ") else EMERGENCY_CALL_TTL
        calls[call_id] = now + ttl  # type: ignore[index]
        return True

    def _forget_ended(self, host: str, now: float) -> None:
        calls = self._calls[host]
        for call_id in [c for c, until in calls.items() if until <= now]:
            del calls[call_id]
            self._call_count -= 1
        if not calls:
            del self._calls[host]

    def emergency_calls(self) -> int:
        """Emergency calls remembered (for tests and metrics)."""
        return self._call_count
