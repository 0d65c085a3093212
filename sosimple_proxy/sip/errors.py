"""The one exception the message layer raises: :class:`ParseError`.

The stack must be able to answer a malformed request with a 400 whose reason
phrase says what is wrong (RFC 3261 section 21.4.1), so the error carries
what was understood of the message, not just a text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.message import Request, Response

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def show(text: str, limit: int = 40) -> str:
    """A short printable rendering of wire text, for error messages.

    Error texts end up in reason phrases, which must not hold CR, LF or
    control characters (RFC 3261 section 25.1, Reason-Phrase).
    """
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNPRINTABLE.sub(lambda m: "\\x%02x" % (ord(m.group()) & 0xFF), text)


class ParseError(ValueError):
    """A message, header or URI that does not follow the grammar.

    ``str(error)`` says exactly what is wrong; it is printable ASCII and
    safe to use as a reason phrase.  When raised by
    :func:`sosimple_proxy.sip.parser.parse_message`:

    - ``is_request``: True / False when the start line told, else None;
    - ``partial``: the :class:`Request` (or :class:`Response`) with the
      headers that did parse, when the start line parsed, else None: enough
      to build a 400 with :func:`message.make_response`;
    - ``status``: the status to answer a request with: 400, or 505 for an
      unsupported SIP version (RFC 3261 section 21.5.6, RFC 4475 3.1.2.16);
    - ``reason``: the text cut to fit a Reason-Phrase.

    A response that fails to parse (``is_request`` False) is dropped, never
    answered (RFC 4475 3.1.2.5, 3.1.2.19).
    """

    def __init__(
        self,
        message: str,
        *,
        is_request: Optional[bool] = None,
        partial: "Request | Response | None" = None,
        status: int = 400,
    ) -> None:
        message = show(message, 200)
        super().__init__(message)
        self.message = message
        self.is_request = is_request
        self.partial = partial
        self.status = status

    @property
    def reason(self) -> str:
        """The text as a reason phrase: one line, at most 120 characters."""
        return self.message[:120]
