"""Splitting a SIP byte stream (TCP, TLS) into whole messages, sans I/O.

A stream has no datagram boundaries, so RFC 3261 section 18.3 makes
Content-Length mandatory on it: the header section ends at the first empty
line and the body is exactly Content-Length bytes.  Between messages a peer
may send RFC 5626 keep-alives: a double CRLF "ping", answered with a single
CRLF "pong"; a lone CRLF is skipped (RFC 3261 section 7.5).

:class:`StreamFramer` only looks at bytes and returns events; the Twisted
protocol in :mod:`sosimple_proxy.sip.transport` acts on them.  It remembers
where it stopped scanning, so a message fed byte by byte costs linear time.
"""

from __future__ import annotations

import re
from typing import Union

import attrs

__all__ = ["Frame", "KeepAlive", "FramingError", "FrameEvent", "StreamFramer", "PONG", "content_length", "head_end"]

PONG = b"\r\n"
_PING = b"\r\n\r\n"

# A Content-Length field, long or compact name, any case, whitespace before
# the colon allowed (RFC 3261 section 7.3.1), with its continuation lines.
# Starts with a literal LF so that the regex engine skips ahead quickly.
_CL_FIELD = re.compile(rb"\n(?:content-length|l)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE)
_FOLD = re.compile(rb"[ \t]*\r?\n[ \t]*")
_DIGITS = re.compile(rb"[0-9]+")
# More digits than this cannot be a size we would accept; also keeps int()
# away from its quadratic / "too many digits" behaviour on hostile input.
_MAX_DIGITS = 12


@attrs.frozen
class Frame:
    """One complete message: header section and exactly Content-Length body bytes."""

    data: bytes


@attrs.frozen
class KeepAlive:
    """The peer sent an RFC 5626 ping; write ``pong`` back on the same connection."""

    pong: bytes = PONG


@attrs.frozen
class FramingError:
    """The stream cannot be split any further: answer ``status`` if possible, then close.

    ``head`` is the header section that caused it (ending with its empty line
    when one was seen; cut at ``max_size`` otherwise), so that the caller can
    still read Via, Call-ID... and build a response.
    """

    head: bytes
    status: int
    reason: str


FrameEvent = Union[Frame, KeepAlive, FramingError]


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the header section that began before ``start`` ends (just after
    its empty line), or -1.

    The empty line is CRLF CRLF; a bare LF is tolerated on either line
    (RFC 3261 section 7 asks for CRLF, lenient elements accept LF, and so
    does the parser).  Every such ending contains LF CRLF or LF LF, which
    plain ``find`` locates much faster than a regex.
    """
    k = buf.find(b"\n\r\n", start)
    j = buf.find(b"\n\n", start, k + 3 if k >= 0 else len(buf))
    if j >= 0:
        return j + 2
    return k + 3 if k >= 0 else -1


def content_length(head: bytes | bytearray, end: int | None = None) -> int | str:
    """The Content-Length of a header section (``head[:end]``), or the
    reason it has none usable.

    Looks at both the long name and the compact ``l``, case-insensitively,
    with folded (continuation) lines joined.  Several Content-Length fields
    with the same value are accepted; different values are a conflict.
    """
    if end is None:
        end = len(head)
    start = head.find(b"\n", 0, end)  # the end of the start line
    if start < 0:
        return "Missing Content-Length"
    found = [_FOLD.sub(b" ", v) for v in _CL_FIELD.findall(head, start, end)]
    if not found:
        return "Missing Content-Length"
    values: set[int] = set()
    for raw in found:
        raw = raw.strip()
        if raw.startswith(b"-") and _DIGITS.fullmatch(raw[1:].strip()):
            return "Negative Content-Length"
        if not _DIGITS.fullmatch(raw):
            return "Bad Content-Length: not a number"
        digits = raw.lstrip(b"0") or b"0"
        values.add(int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS)
    if len(values) > 1:
        return "Conflicting Content-Length values"
    return values.pop()


class StreamFramer:
    """Incremental splitter for one stream connection.

    Feed it whatever arrived; it returns the events that became complete.
    After a :class:`FramingError` the stream is out of step for good, so the
    framer returns nothing more and the connection must be closed.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the end of the head
        self._need = -1  # total size of the current message once its head is known
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return len(self._buf)

    @property
    def in_message(self) -> bool:
        """A message has begun and is not complete yet.  Line ends held
        between messages (a lone CRLF keep-alive, half a ping) are not a
        message: a phone that sends them must not meet a message deadline."""
        return self._need >= 0 or self._scan > 0

    def feed(self, data: bytes) -> list[FrameEvent]:
        if self.failed:
            return []
        buf = self._buf
        buf += data
        events: list[FrameEvent] = []
        while buf:
            if self._need >= 0:
                # Head known: wait for the whole body.
                if len(buf) < self._need:
                    break
                events.append(Frame(bytes(buf[: self._need])))
                del buf[: self._need]
                self._need = -1
                self._scan = 0
                continue
            if self._scan == 0:
                # Between messages: keep-alives and stray line ends.
                first = buf[0]
                if first == 0x0D or first == 0x0A:
                    if buf.startswith(_PING):
                        events.append(KeepAlive())
                        del buf[:4]
                        continue
                    if _PING.startswith(bytes(buf[:4])):
                        break  # "\r", "\r\n" or "\r\n\r": could still become a ping
                    # A lone CRLF (or a stray CR or LF) before a start line.
                    del buf[: 2 if buf.startswith(b"\r\n") else 1]
                    continue
            head_len = head_end(buf, max(0, self._scan - 2))
            if head_len < 0:
                if len(buf) > self.max_size:
                    return self._fail(events, self._cut(bytes(buf[: self.max_size])), 513, "Message Too Large")
                # Resume after what was scanned; the end patterns are at most
                # 3 bytes, so one cut by the chunk boundary is found next time.
                self._scan = max(1, len(buf))
                break
            if head_len > self.max_size:
                return self._fail(events, self._cut(bytes(buf[: self.max_size])), 513, "Message Too Large")
            length = content_length(buf, head_len)  # in place: no copy of the head
            if isinstance(length, str):
                return self._fail(events, bytes(buf[:head_len]), 400, length)
            if head_len + length > self.max_size:
                return self._fail(events, bytes(buf[:head_len]), 513, "Message Too Large")
            self._need = head_len + length
        return events

    def _fail(self, events: list[FrameEvent], head: bytes, status: int, reason: str) -> list[FrameEvent]:
        self.failed = True
        self._buf = bytearray()
        events.append(FramingError(head, status, reason))
        return events

    @staticmethod
    def _cut(head: bytes) -> bytes:
        """Cut a truncated head after its last whole line, so no header is half there."""
        end = head.rfind(b"\n")
        return head[: end + 1] if end >= 0 else head
