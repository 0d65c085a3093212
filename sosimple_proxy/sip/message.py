"""SIP messages as data: start line, ordered header fields, body bytes.

Header fields are kept as they came on the wire (name as written, value as
written) so that a proxy forwards what it does not understand unchanged
(RFC 3261 section 16.6: a proxy forwards unknown header fields).  Structured
views (Via, CSeq, name-addr...) are parsed on demand by
:mod:`sosimple_proxy.sip.headers` and cached until the headers change.

Values are ``str`` decoded from UTF-8 with ``surrogateescape``, so that any
byte sequence survives a parse/serialize round trip exactly.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from sosimple_proxy.sip.randomness import random_hex

# Header versions are unique across all Headers objects, so a view cached
# for one Headers object is never taken for another's (e.g. after
# ``msg.headers = other.copy()``).
_next_version = itertools.count(1).__next__

ENCODING = "utf-8"
_MISSING = object()
ERRORS = "surrogateescape"

# RFC 3261 section 7.3.3 and later RFCs: compact form -> long form (lower case).
COMPACT: dict[str, str] = {
    "i": "call-id",
    "m": "contact",
    "v": "via",
    "f": "from",
    "t": "to",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

# Headers whose value is a comma-separated list (RFC 3261 section 7.3.1).
# Contact, Via, Route, Record-Route: list of structured values.
LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "allow",
        "allow-events",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "alert-info",
        "call-info",
        "error-info",
        "warning",
        "reply-to",
    }
)


_KEY_CACHE: dict[str, str] = {}


def header_key(name: str) -> str:
    """The canonical lookup key of a header name: lower case, long form."""
    try:
        return _KEY_CACHE[name]
    except KeyError:
        key = name.lower()
        key = COMPACT.get(key, key)
        if len(_KEY_CACHE) < 4096:
            _KEY_CACHE[name] = key
        return key


class Headers:
    """Ordered header fields, each ``(key, name_as_written, value_as_written)``.

    Tuples of strings, not lists: the cyclic GC stops tracking such a tuple
    the first time it sees it, and a lingering transaction's messages are
    most of what a collection would otherwise walk again and again.

    Lookups take any spelling (``"v"``, ``"VIA"``, ``"Via"``) and find both
    compact and long forms.  A field line may hold several comma-separated
    values; :meth:`values` splits them where the grammar allows.
    """

    __slots__ = ("_fields", "_version", "_edits", "_edits_from")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        # Each entry: (key, name_as_written, value)
        self._fields: list[tuple[str, str, str]] = [(header_key(n), n, v) for n, v in fields]
        self._version = v = _next_version()
        # The keys edited since version ``_edits_from`` (None: too many to
        # say): a message's parsed views of the other headers stay valid.
        self._edits: list[str] | None = []
        self._edits_from = v

    @classmethod
    def from_parsed(cls, fields: list[tuple[str, str, str]]) -> "Headers":
        """Adopt ``(key, name, value)`` tuples built by the parser (no copy)."""
        h = cls.__new__(cls)
        h._fields = fields
        h._version = v = _next_version()
        h._edits = []
        h._edits_from = v
        return h

    # -- reading

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _key, name, value in self._fields:
            yield name, value

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: str) -> bool:
        key = _KEY_CACHE.get(name) or header_key(name)
        for f in self._fields:
            if f[0] == key:
                return True
        return False

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first field of this name, or ``default``."""
        key = _KEY_CACHE.get(name) or header_key(name)
        for f in self._fields:
            if f[0] == key:
                return f[2]
        return default

    def get_all(self, name: str) -> list[str]:
        """Every field value of this name, one per header line, in order."""
        key = _KEY_CACHE.get(name) or header_key(name)
        return [f[2] for f in self._fields if f[0] == key]

    def values(self, name: str) -> list[str]:
        """Every value of a list header, comma-separated values split apart."""
        split_commas = _grammar.split_commas
        out: list[str] = []
        for raw in self.get_all(name):
            out.extend(split_commas(raw))
        return out

    def count(self, name: str) -> int:
        key = header_key(name)
        return sum(1 for f in self._fields if f[0] == key)

    def items(self) -> list[tuple[str, str]]:
        return [(n, v) for _k, n, v in self._fields]

    @property
    def version(self) -> int:
        """Changed on every change (unique among all Headers objects), so
        cached parsed views can be invalidated."""
        return self._version

    # -- changing

    def _edited(self, key: str) -> None:
        self._version = _next_version()
        edits = self._edits
        if edits is not None:
            if len(edits) < 16:
                edits.append(key)
            else:
                self._edits = None

    def add(self, name: str, value: str) -> None:
        """Append a field at the end."""
        key = header_key(name)
        self._fields.append((key, name, value))
        self._edited(key)

    def prepend(self, name: str, value: str) -> None:
        """Put a field before the first one of the same name (or at the top).

        This is how Via and Record-Route are added (RFC 3261 16.6 step 8).
        """
        key = header_key(name)
        for i, f in enumerate(self._fields):
            if f[0] == key:
                self._fields.insert(i, (key, name, value))
                break
        else:
            self._fields.insert(0, (key, name, value))
        self._edited(key)

    def set(self, name: str, value: str) -> None:
        """Replace every field of this name by one, at the first one's place."""
        key = header_key(name)
        for i, f in enumerate(self._fields):
            if f[0] == key:
                self._fields[i] = (key, name, value)
                self._fields[i + 1 :] = [g for g in self._fields[i + 1 :] if g[0] != key]
                break
        else:
            self._fields.append((key, name, value))
        self._edited(key)

    def remove(self, name: str) -> int:
        """Remove every field of this name; returns how many there were."""
        key = header_key(name)
        before = len(self._fields)
        self._fields = [f for f in self._fields if f[0] != key]
        removed = before - len(self._fields)
        if removed:
            self._edited(key)
        return removed

    def replace_first(self, name: str, value: str) -> str | None:
        """Put ``value`` in place of the first field line of this name (its
        name as written kept) when that line holds one value; returns the
        old value, or None (nothing changed) when the line holds several
        or there is none."""
        key = _KEY_CACHE.get(name) or header_key(name)
        fields = self._fields
        for i, f in enumerate(fields):
            if f[0] == key:
                old = f[2]
                if "," in old:
                    return None
                fields[i] = (key, f[1], value)
                self._edited(key)
                return old
        return None

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header (e.g. top Via).

        If the first field line holds several comma-separated values, only
        the first value is removed and the rest stay on that line.
        """
        key = _KEY_CACHE.get(name) or header_key(name)
        fields = self._fields
        for i, f in enumerate(fields):
            if f[0] == key:
                value = f[2]
                if "," not in value:
                    # One value on the line (the usual top Via): no splitting.
                    value = value.strip()
                    if value:
                        del fields[i]
                        self._edited(key)
                        return value
                break
        split_commas = _grammar.split_commas
        i = 0
        while i < len(self._fields):
            f = self._fields[i]
            i += 1
            if f[0] == key:
                i -= 1
                parts = split_commas(f[2])
                if not parts:
                    # An empty line of this header: drop it, look further.
                    del self._fields[i]
                    self._edited(key)
                    continue
                first = parts[0]
                if len(parts) == 1:
                    del self._fields[i]
                else:
                    self._fields[i] = (key, f[1], ", ".join(parts[1:]))
                self._edited(key)
                return first
        return None

    def copy(self) -> "Headers":
        h = Headers.__new__(Headers)
        h._fields = list(self._fields)  # the tuples are immutable: shared
        h._version = v = _next_version()
        h._edits = []
        h._edits_from = v
        return h

    def serialize_into(self, out: list[str], skip: str | None = None) -> None:
        for key, name, value in self._fields:
            if key != skip:
                out.append(f"{name}: {value}\r\n")


class Message:
    """What requests and responses share: headers, body, parsed-view cache."""

    __slots__ = ("headers", "body", "version", "_cache", "_cache_version", "_validated", "_raw", "_wire")

    def __init__(self, headers: Headers | None = None, body: bytes = b"", version: str = "SIP/2.0") -> None:
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.version = version
        self._cache: dict[str, Any] = {}
        self._cache_version = -1
        # headers.version at the last successful validate_request/response.
        self._validated = -1
        # (headers.version, the bytes as received): see keep_raw.
        self._raw: tuple[int, bytes] | None = None
        # (headers.version, body, start line fields, wire bytes): see set_wire.
        self._wire: tuple[int, bytes, Any, Any, bytes] | None = None

    def _sync(self) -> dict[str, Any]:
        """The view cache once the headers changed: the views of headers
        that were not edited (and of the Request-URI) are kept, so that an
        added Via or a decremented Max-Forwards does not make the proxy
        parse From, To, CSeq and Route again; anything else is dropped."""
        h = self.headers
        cache = self._cache
        edits = h._edits
        if cache and edits is not None and h._edits_from == self._cache_version:
            # In place (the dict is this message's own): the views of the
            # edited headers go, and the views derived from several.
            pop = cache.pop
            for key in edits:
                for view in _VIEWS_OF.get(key, ()):
                    pop(view, None)
            for view in _DERIVED:
                pop(view, None)
        else:
            cache = self._cache = {}
        self._cache_version = h._version
        h._edits = []
        h._edits_from = h._version
        return cache

    def adopt_views(self, other: "Message") -> None:
        """Take ``other``'s parsed views, when our headers are a fresh copy
        of its own (a proxy's per-branch copy, RFC 3261 16.6 step 1)."""
        if other._cache and other._cache_version == other.headers._version:
            self._cache = {k: v for k, v in other._cache.items() if k in _HEADER_VIEW or k[:5] == "ruri:"}
            h = self.headers
            self._cache_version = h._version
            h._edits = []
            h._edits_from = h._version

    def put_view(self, key: str, value: Any) -> None:
        """Store a parsed view the caller built itself (our own Via, a
        stamped Via): it must be what parsing the header would give, so
        that nobody parses again what we have just written."""
        cache = self._cache
        if self._cache_version != self.headers._version:
            cache = self._sync()
        cache[key] = value

    def peek_view(self, key: str) -> Any:
        """A parsed view if it is cached and current, else None (no parse)."""
        if self._cache_version != self.headers._version:
            return None
        return self._cache.get(key)

    # -- the bytes as received (RFC 3261 16.7 step 9: a proxy forwards a
    # response as it came, minus its own top Via; so we send those bytes)

    def keep_raw(self, data: bytes) -> None:
        """Remember the bytes this message was parsed from, valid while the
        headers are not changed."""
        self._raw = (self.headers._version, data)

    def _wire_for(self) -> tuple[Any, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_wire(self, data: bytes) -> None:
        """The bytes :meth:`serialize` returns while headers, body and start
        line stay as they are now."""
        a, b = self._wire_for()
        self._wire = (self.headers._version, self.body, a, b, data)

    def raw_without_top_via(self) -> bytes | None:
        """The received bytes with the top Via's line left out, when that is
        exactly this message with its first Via value removed: headers
        unchanged since parsing, no folded line (so line i + 1 is field i),
        a top Via line holding one value, and a Content-Length (the parser
        made the body agree with it).  Else None: serialize instead."""
        raw = self._raw
        if raw is None or raw[0] != self.headers._version:
            return None
        data = raw[1]
        if data[:2] == b"\r\n":
            return None  # keep-alive CRLFs in front: rare, serialize
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = data[:end]
        if b"\r\n " in head or b"\r\n\t" in head:
            return None
        fields = self.headers._fields
        via = -1
        length = False
        for i, f in enumerate(fields):
            key = f[0]
            if key == "via":
                if via < 0:
                    if "," in f[2]:
                        return None
                    via = i
            elif key == "content-length":
                length = True
        if via < 0 or not length:
            return None
        lines = head.split(b"\r\n")
        if len(lines) != len(fields) + 1:
            return None
        del lines[via + 1]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body

    def cached(self, key: str, compute: Any) -> Any:
        """A parsed view of the headers, recomputed after a change of them."""
        if self._cache_version != self.headers._version:
            self._sync()
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            if key[:5] != "ruri:" and key not in _DERIVED and key not in _REGISTERED:
                _DERIVED.add(key)  # dropped on any edit (see _sync)
            value = self._cache[key] = compute()
        return value

    def _view(self, key: str, parse: Any, name: str, every: bool = False) -> Any:
        """``parse`` of header ``name`` (its first value, or ``every`` value),
        cached under ``key``; the header is looked up only on a miss."""
        cache = self._cache
        if self._cache_version != self.headers._version:
            cache = self._sync()
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            arg = self.headers.get_all(name) if every else self.headers.get(name)
            value = cache[key] = parse(arg)
        return value

    def start_line(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def serialize(self) -> bytes:
        """Wire bytes; Content-Length is always written and always right."""
        wire = self._wire
        if wire is not None and wire[0] == self.headers._version and wire[1] is self.body:
            a, b = self._wire_for()
            if wire[2] == a and wire[3] == b:
                return wire[4]
        out = [self.start_line(), "\r\n"]
        self.headers.serialize_into(out, skip="content-length")
        out.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "".join(out).encode(ENCODING, ERRORS) + self.body

    # Structured views; implemented in headers.py so that parsing rules live
    # in one place.  Each raises ParseError when the header is malformed.

    @property
    def vias(self) -> list["Via"]:
        return self._view("vias", _via.parse_vias, "via", True)

    @property
    def top_via(self) -> "Via | None":
        if self._cache_version == self.headers._version:
            vias = self._cache.get("vias")
            if vias:
                return vias[0]
        return self._view("top_via", _via.parse_top_via, "via")

    @property
    def cseq(self) -> "CSeq":
        return self._view("cseq", _headers.parse_cseq, "cseq")

    @property
    def call_id(self) -> str | None:
        if self._cache_version == self.headers._version:
            value = self._cache.get("call-id")
            if value is not None:
                return value  # type: ignore[no-any-return]
        value = self.headers.get("call-id")
        return value.strip() if value is not None else None

    @property
    def from_(self) -> "NameAddr":
        return self._view("from", _headers.parse_from, "from")

    @property
    def to(self) -> "NameAddr":
        return self._view("to", _headers.parse_to, "to")

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255), None when absent."""
        return self._view("max-forwards", _headers.parse_max_forwards, "max-forwards")

    @property
    def contacts(self) -> list["NameAddr"]:
        """Every Contact value (``*`` is one NameAddr with ``wildcard``)."""
        return self._view("contact", _headers.parse_contacts, "contact", True)

    @property
    def routes(self) -> list["NameAddr"]:
        return self._view("route", _headers.parse_routes, "route", True)

    @property
    def record_routes(self) -> list["NameAddr"]:
        return self._view("record-route", _headers.parse_record_routes, "record-route", True)


class Request(Message):
    __slots__ = ("method", "uri", "flow")

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body, version)
        self.method = method
        # The Request-URI as on the wire; ``ruri`` is the parsed view.
        self.uri = uri
        # A connection the request must leave by ("tcp:host:port"): named by
        # a flow token in one of our own Route entries (see proxy.routing).
        self.flow: str | None = None

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def _wire_for(self) -> tuple[Any, Any]:
        return self.method, self.uri

    @property
    def ruri(self) -> "URI":
        uri = self.uri
        key = "ruri:" + uri
        if self._cache_version == self.headers._version:
            value = self._cache.get(key)
            if value is not None:
                return value  # type: ignore[no-any-return]
        return self.cached(key, lambda: _uri.parse_uri(uri))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body, version)
        self.status = status
        self.reason = reason if reason is not None else REASONS.get(status, "")

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def _wire_for(self) -> tuple[Any, Any]:
        return self.status, self.reason

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# RFC 3261 section 21 and friends.
REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    430: "Flow Failed",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded",
    469: "Bad Info Package",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}


def new_tag() -> str:
    """40 random bits in hex (RFC 3261 19.3: "at least 32 bits of randomness")."""
    return random_hex(10)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` built per RFC 3261 section 8.2.6.2.

    "The From field of the response MUST equal the From header field of the
    request.  The Call-ID header field of the response MUST equal the
    Call-ID header field of the request.  The CSeq header field of the
    response MUST equal the CSeq field of the request.  The Via header field
    values in the response MUST equal the Via header field values in the
    request and MUST maintain the same ordering."  A To tag is added to
    every response but 100 when the request had none.
    """
    fields: list[tuple[str, str, str]] = []
    for f in request.headers._fields:
        key = f[0]
        if key in _COPIED:
            fields.append(f)
        elif key == "to":
            value = f[2]
            if status > 100 and ";tag=" not in value.replace(" ", "").lower():
                fields.append((key, f[1], f"{value};tag={to_tag or new_tag()}"))
            else:
                fields.append(f)
    for name, value in extra:
        fields.append((header_key(name), name, value))
    return Response(status, reason, Headers.from_parsed(fields), body)


_COPIED = frozenset(("via", "from", "call-id", "cseq"))

# Each view of one header: the cache key -> the header key it is parsed from.
_HEADER_VIEW = {
    "vias": "via",
    "top_via": "via",
    "cseq": "cseq",
    "call-id": "call-id",
    "from": "from",
    "to": "to",
    "max-forwards": "max-forwards",
    "contact": "contact",
    "route": "route",
    "record-route": "record-route",
}
# Keys of views computed from several headers (Message.cached): any edit drops them.
_DERIVED: set[str] = set()
# Keys of views computed from the headers named in register_view: an edit of those drops them.
_REGISTERED: set[str] = set()
_VIEWS_OF: dict[str, tuple[str, ...]] = {}
for _view_key, _header in _HEADER_VIEW.items():
    _VIEWS_OF[_header] = _VIEWS_OF.get(_header, ()) + (_view_key,)


def register_view(key: str, names: Iterable[str]) -> None:
    """Declare that the view ``Message.cached(key, ...)`` is computed from
    the headers ``names`` only: an edit of another header (a Route popped,
    a Via added) keeps it, where an undeclared view is dropped by any edit."""
    for name in names:
        h = header_key(name)
        if key not in _VIEWS_OF.get(h, ()):
            _VIEWS_OF[h] = _VIEWS_OF.get(h, ()) + (key,)
    _REGISTERED.add(key)
    _DERIVED.discard(key)


# At the end: the structured views import this module's types for hints only.
from sosimple_proxy.sip import grammar as _grammar  # noqa: E402
from sosimple_proxy.sip import headers as _headers  # noqa: E402
from sosimple_proxy.sip import uri as _uri  # noqa: E402
from sosimple_proxy.sip import via as _via  # noqa: E402

# Forward references for type checkers only.
if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.headers import CSeq, NameAddr
    from sosimple_proxy.sip.via import Via
    from sosimple_proxy.sip.uri import URI
