"""``[log]``: twistd's log as JSON lines, the request a line is about, and
the SIP trace.

- :class:`JsonLines` is the twistd log observer for ``format = json``: one
  object per line with ``time`` (ISO 8601, UTC), ``level``, ``event`` (the
  formatted message), ``namespace``, and ``call_id`` and ``branch`` when
  the line is about a SIP request.  The service hands it to twistd as the
  application's ``ILogObserver`` (``service.py``), so it replaces the text
  observer; it writes to standard output (the journal, under systemd).
- A line is about a request when it says so (``call_id=``/``branch=``
  keys in the event, as :class:`Decisions` lines do) or when it is logged
  while the stack is handling that message: :func:`traced_receive` notes
  the message being handled in :data:`CURRENT` (Twisted runs one thing at
  a time), and the observer reads it when a line is written.  Nothing is
  formatted for a message that logs nothing.
- :class:`Decisions` says, once per request the proxy refuses or cannot
  place (a final answer of 400 or more other than a challenge), what was
  answered; the transaction layer's observer hook calls it.  Successes and
  retransmissions log nothing at info level, so a busy proxy's log stays
  readable.
- ``sip_trace = yes``: every message received and sent, whole, with the
  credentials in Authorization and Proxy-Authorization redacted
  (:func:`redact`).
"""

from __future__ import annotations

import datetime
import json
import re
from typing import IO, Any, Callable

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEvent,
)
from zope.interface import implementer

log = Logger(namespace="sosimple.sip")
trace_log = Logger(namespace="sosimple.sip.trace")

#: the SIP message the stack is handling now (None between messages)
CURRENT: list[Any] = [None]


def message_ids(message: Any) -> tuple[str | None, str | None]:
    """The Call-ID and top Via branch of a parsed message (None for what it lacks)."""
    try:
        call_id = message.call_id
    except Exception:
        call_id = None
    try:
        via = message.top_via
        branch = via.branch if via is not None else None
    except Exception:
        branch = None
    return call_id, branch


@implementer(ILogObserver)
class JsonLines:
    """Writes each event as one JSON object on one line."""

    def __init__(self, out: IO[str], current: list[Any] = CURRENT) -> None:
        self.out = out
        self.current = current

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        stamp = event.get("log_time")
        record: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(timespec="milliseconds")
            if isinstance(stamp, (int, float))
            else None,
            "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
            "event": _text(event),
            "namespace": event.get("log_namespace") or event.get("system"),
        }
        call_id, branch = event.get("call_id"), event.get("branch")
        if call_id is None and self.current[0] is not None:
            call_id, branch = message_ids(self.current[0])
        if call_id is not None:
            record["call_id"] = call_id
            record["branch"] = branch
        failure = event.get("log_failure")
        if failure is not None:
            try:
                record["traceback"] = failure.getTraceback()
            except Exception:
                record["traceback"] = repr(failure)
        self.out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.out.flush()


def _text(event: dict[str, Any]) -> str:
    try:
        text = formatEvent(event)
    except Exception as e:  # a bad format string must not lose the line
        text = f"unformattable event: {e!r} {event.get('log_format')!r}"
    return text


def json_observer(out: IO[str], level: LogLevel = LogLevel.info) -> ILogObserver:
    """The ``format = json`` observer: events at ``level`` and above."""
    return FilteringLogObserver(JsonLines(out), [LogLevelFilterPredicate(defaultLogLevel=level)])


# --- redaction and the trace

_CREDENTIAL = re.compile(
    rb"^((?:proxy-)?authorization[ \t]*:[ \t]*)([^\r\n]*(?:\r?\n[ \t]+[^\r\n]*)*)", re.IGNORECASE | re.MULTILINE
)
_KEEP = re.compile(rb'\b(username|realm)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^,\s]*)', re.IGNORECASE)


def _redact_value(match: re.Match[bytes]) -> bytes:
    value = match.group(2)
    scheme = value.split(None, 1)[0] if value.strip() else b""
    kept = b", ".join(m.group(1) + b"=" + m.group(2) for m in _KEEP.finditer(value))
    return match.group(1) + scheme + (b" " + kept + b"," if kept else b"") + b" <redacted>"


def redact(data: bytes) -> bytes:
    """A message with the credentials of its Authorization and
    Proxy-Authorization headers replaced (scheme, username and realm kept)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    return _CREDENTIAL.sub(_redact_value, head) + sep + body


def _trace(direction: str, peer: Any, data: bytes) -> None:
    trace_log.info(
        "sip {direction} {peer} ({n} bytes):\n{message}",
        direction=direction,
        peer=str(peer),
        n=len(data),
        message=redact(data).decode("utf-8", "replace"),
    )


class TracingTransport:
    """The transaction layer's transport, every message sent traced."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def send(self, data: bytes, dest: Any, *local: Any) -> Any:
        _trace("sent to", dest, data)
        return self.inner.send(data, dest, *local)

    def send_nowait(self, data: bytes, dest: Any, *local: Any) -> Any:
        # The transactions prefer this path when the transport has it: without
        # it here, __getattr__ would hand them the inner one and skip the trace.
        _trace("sent to", dest, data)
        inner = getattr(self.inner, "send_nowait", None)
        return inner(data, dest, *local) if inner is not None else self.inner.send(data, dest, *local)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def traced_receive(receive: Callable[..., None], trace: bool, current: list[Any] = CURRENT) -> Callable[..., None]:
    """The transaction layer's ``receive``, noting the message being handled
    (for the JSON lines' call_id) and, with ``trace``, logging it."""

    def receiving(msg: Any, source: Any, local: Any = None) -> None:
        if trace:
            _trace("received from", source, msg.serialize())
        current[0] = msg
        try:
            receive(msg, source, local)
        finally:
            current[0] = None

    return receiving


class Decisions:
    """The transaction layer's observer that logs each refusal: a request
    answered 400 or more (not a 401/407 challenge), one line with its
    Call-ID and branch.  Passes every event on to ``inner`` (the metrics'
    tally) when there is one."""

    QUIET = frozenset({401, 407})

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner
        if inner is not None:
            self.request = inner.request  # type: ignore[method-assign]  # one call less per request

    def request(self, txn: Any) -> None:
        if self.inner is not None:
            self.inner.request(txn)

    def final(self, txn: Any, status: int) -> None:
        if self.inner is not None:
            self.inner.final(txn, status)
        if status >= 400 and status not in self.QUIET:
            request = txn.request
            call_id, branch = message_ids(request)
            log.info(
                "{method} {uri} from {source}: answered {status}",
                method=request.method,
                uri=str(request.uri),
                source=str(txn.source),
                status=status,
                call_id=call_id,
                branch=branch,
            )
