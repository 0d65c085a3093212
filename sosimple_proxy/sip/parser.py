"""Bytes -> :class:`Request` / :class:`Response`, sans I/O.

:func:`parse_message` takes one whole message: a UDP datagram, or one
message that the stream framing (``framing.py``) has cut out by its
Content-Length.  It parses eagerly only the start line and the header lines
(name, value) -- structured headers are parsed lazily by the message's
accessors -- and then, unless ``validate=False``, runs the cheap checks a
proxy needs before it processes a message (:func:`validate_request`,
:func:`validate_response`).

Choices (RFC 3261 leaves them to us):

- Folded header lines (CRLF followed by SP/HT) are unfolded: each fold
  becomes one SP in the stored value (RFC 3261 7.3.1: "A recipient MAY
  replace any linear white space with a single SP before interpreting the
  field value or forwarding the message downstream").  White space around
  the colon is dropped.  Everything else in a value is kept as written.
- Leading CRLFs before the start line are skipped (RFC 3261 7.5).
- Line endings must be CRLF; a bare CR or LF in the header section is an
  error (it could smuggle a header line), and so is a control character
  other than HT, except as a quoted-pair (backslash + NUL in RFC 4475 3.1.1.2).
- Liberal where RFC 4475 allows it: an empty reason phrase with or without
  the SP before it; Via branches without the magic cookie (RFC 2543); no
  Max-Forwards in a request (the proxy adds one).  Strict (400) where
  RFC 4475 says rejecting is acceptable: extra spaces in the Request-Line
  (lwsstart, trws) or inside the Request-URI (lwsruri), a Request-URI in
  ``<>`` (ltgtruri) or with ``?headers`` (escruri), an addr-spec with
  ``?`` (regbadct), an unquoted display name that is not a token sequence
  (baddn), white space inside ``<...>`` (badaspec), a header section
  without its final empty line (the archived baddn), a repeated
  single-value header (multi01), a parameter named twice.
- Content-Length: several equal values are accepted, different values are
  an error (mcl01); a datagram with more bytes than Content-Length is cut
  to it (RFC 3261 18.3), one with fewer is an error (clerr); a datagram
  without Content-Length has the rest of the datagram as body, a stream
  message without it is an error.

:class:`ParseError` is the only exception that leaves :func:`parse_message`,
for any input.  How the stack answers a bad request::

    try:
        msg = parse_message(datagram)
    except ParseError as e:
        if e.is_request and e.partial is not None and e.partial.method != "ACK":
            reply = make_response(e.partial, e.status, e.reason)
            # e.partial.top_via may itself be what is malformed (badinv01):
            # on ParseError, send to the packet's source address.
        # else: a response, or no start line: drop it.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from sosimple_proxy.sip import accel
from sosimple_proxy.sip import headers as _h
from sosimple_proxy.sip.errors import ParseError, show
from sosimple_proxy.sip.headers import _fast_name_addr, parse_content_length
from sosimple_proxy.sip.message import COMPACT, ENCODING, ERRORS, Headers, Request, Response
from sosimple_proxy.sip.uri import parse_uri as _parse_uri
from sosimple_proxy.sip.via import parse_via as _parse_via
from sosimple_proxy.sip.via import parse_vias as _parse_vias

__all__ = ["ParseError", "parse_message", "validate_request", "validate_response"]

_TOKEN_FULL = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+").fullmatch
_FOLD = re.compile(r"\r\n[ \t]+")
# Control characters other than HT, and CR / LF not part of a CRLF pair.
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
_UNQUOTED_CTL = re.compile(r"(?<!\\)[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_ABS_URI = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\x00-\x20\x7f]+")
# RFC 3261 25.1: callid = word [ "@" word ]
_CALL_ID = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?").fullmatch

# Every control character but HT (CR and LF included, counted apart).
_CTL_BYTES = bytes(range(0, 9)) + bytes(range(0x0A, 0x20)) + b"\x7f"
# Header name as written -> lookup key; bounded so that junk names cannot
# grow it without limit.
_KEYS: dict[str, str] = {}

Message = Union[Request, Response]
_KNOWN_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
     "INFO", "REFER", "MESSAGE", "UPDATE")
)


# The compiled fast paths (accel.py), None when the pure code runs alone.
# Each returns what the pure code below would produce, or None ("not my
# shape": the pure code then runs and, for bad input, says what is wrong).
_C_HEAD: Any = None
_C_CLASSIFY: Any = None
_C_CALLID: Any = None
_C_VIA: Any = None
_C_NAME_ADDR: Any = None
_C_CSEQ: Any = None


def _bind(c: Any) -> None:
    global _C_HEAD, _C_CLASSIFY, _C_CALLID, _C_VIA, _C_NAME_ADDR, _C_CSEQ
    _C_HEAD = getattr(c, "parse_head", None)
    _C_CLASSIFY = getattr(c, "classify", None)
    _C_CALLID = getattr(c, "callid", None)
    _C_VIA = getattr(c, "via", None)
    _C_NAME_ADDR = getattr(c, "name_addr", None)
    _C_CSEQ = getattr(c, "cseq", None)


accel.register(_bind)


def _key_for(name: str) -> str:
    key = name.lower()
    key = COMPACT.get(key, key)
    if len(_KEYS) < 2048:
        _KEYS[name] = key
    return key


def _slow_fields(text: str, terminated: bool) -> tuple[str, list[tuple[str, str, str]], list[str], Optional[str]]:
    """Header lines one by one, unfolded, saying what is wrong with the
    first bad one and keeping the good ones (for the partial message of the
    error)."""
    error: Optional[str] = None
    if "\r\n " in text or "\r\n\t" in text:
        # RFC 3261 7.3.1: a fold (CRLF + white space) is one SP.
        text = _FOLD.sub(" ", text)
    lines = text.split("\r\n")
    if not terminated and lines[-1] == "":
        lines.pop()
    if _BAD_CHAR.search(text) is not None:
        # A bare CR or LF could smuggle a header line: never accepted.  Other
        # control characters only as a quoted-pair (RFC 3261 25.1: quoted-pair
        # = "\" (%x00-09 / %x0B-0C / %x0E-7F); RFC 4475 3.1.1.2 has "\<NUL>").
        kept = []
        for i, ln in enumerate(lines):
            if "\r" in ln or "\n" in ln:
                problem = "bare CR or LF"
            elif _UNQUOTED_CTL.search(ln) is not None:
                problem = "control character"
            else:
                kept.append(ln)
                continue
            if error is None:
                error = f"{problem} in line {show(ln)!r}"
            if i == 0:
                kept = [""]
                break
        lines = kept
    fields: list[tuple[str, str, str]] = []
    lengths: list[str] = []
    for i in range(1, len(lines)):
        line = lines[i]
        colon = line.find(":")
        if colon <= 0:
            if error is None:
                error = f"invalid header line {show(line)!r}" if line else "empty header line"
            continue
        name = line[:colon]
        if name[-1] in " \t":
            name = name.rstrip(" \t")
        if not _TOKEN_FULL(name):
            if error is None:
                error = f"invalid header name {show(name)!r}"
            continue
        value = line[colon + 1 :].strip(" \t")
        key = name.lower()
        key = COMPACT.get(key, key)
        fields.append((key, name, value))
        if key == "content-length":
            lengths.append(value)
    return lines[0], fields, lengths, error


def parse_message(data: bytes, *, stream: bool = False, validate: bool = True) -> Message:
    """Parse one SIP message; raise :class:`ParseError` saying what is wrong.

    ``stream``: the message came over TCP/TLS, where Content-Length is
    mandatory (RFC 3261 18.3 and 20.14).  For a datagram a missing
    Content-Length means "the rest of the datagram".
    ``validate``: also run :func:`validate_request` / :func:`validate_response`.
    """
    try:
        return _parse(data if type(data) is bytes else bytes(data), stream, validate)
    except ParseError:
        raise
    except Exception as exc:  # pragma: no cover - a bug; never let it escape
        raise ParseError(f"internal parser error: {type(exc).__name__}: {exc}") from exc


def _parse(data: bytes, stream: bool, validate: bool) -> Message:
    if _C_HEAD is not None:
        got = _C_HEAD(data, stream, _KEYS, COMPACT)
        if got is not None:
            # The common shape, framed and checked in C: what the code
            # below would build, without a ParseError to raise.
            is_req, a, b, version, cfields, body = got
            headers = Headers.from_parsed(cfields)
            if is_req:
                req = Request(a, b, headers, body, version)
                if validate:
                    validate_request(req)
                return req
            resp = Response(a, b, headers, body, version)
            if validate:
                validate_response(resp)
            return resp
    start = 0
    # RFC 3261 7.5: ignore CRLFs before the start line.
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        terminated = False
        head = data[start:]
        body = b""
    else:
        terminated = True
        head = data[start:end]
        body = data[end + 4 :]
    if not head:
        raise ParseError("empty message")
    text = head.decode(ENCODING, ERRORS)
    error: Optional[str] = None
    status = 400
    fields: Optional[list[tuple[str, str, str]]] = None
    lengths: list[str] = []
    if terminated and len(head) - len(head.translate(None, _CTL_BYTES)) == 2 * head.count(b"\r\n"):
        # Fast path: no control character but HT, every CR and LF in a CRLF
        # pair; each line ``name: value`` with a name seen before.  A fold,
        # a new or odd name, a line without colon: the careful path below.
        lines = text.split("\r\n")
        first = lines[0]
        fields = []
        append = fields.append
        kget = _KEYS.get
        for i in range(1, len(lines)):
            name, sep, value = lines[i].partition(":")
            # A line without a colon is never a header, whatever names were
            # seen before (the result must not depend on _KEYS' history).
            key = kget(name) if sep else None
            if key is None:
                if not sep or not _TOKEN_FULL(name):
                    fields = None
                    break
                key = _key_for(name)
            append((key, name, value.strip(" \t")))
            if key == "content-length":
                lengths.append(value)
    if fields is None:
        lengths = []
        first, fields, lengths, error = _slow_fields(text, terminated)
    headers = Headers.from_parsed(fields)

    # -- start line (RFC 3261 7.1, 7.2)
    msg: Optional[Message] = None
    is_request: Optional[bool]
    if first[:4].upper() == "SIP/":
        is_request = False
        parts = first.split(" ", 2)
        version = parts[0]
        code = parts[1] if len(parts) > 1 else ""
        reason = parts[2] if len(parts) > 2 else ""  # liberal: "SIP/2.0 100" (RFC 4475 3.1.1.13)
        if not (len(code) == 3 and code.isdigit() and code.isascii()):
            error = f"invalid status code {show(code, 20)!r}"
        elif not 100 <= int(code) <= 699:
            error = f"status code {code} is out of range 100-699"
        else:
            if version.upper() != "SIP/2.0":
                error = f"unsupported SIP version {show(version, 20)!r}"
            msg = Response(int(code), reason, headers, version=version)
    else:
        is_request = True
        parts = first.split(" ")
        if len(parts) != 3 or not all(parts):
            n = len(first.split())
            error = (
                "Request-Line has extra white space"
                if n == 3
                else "white space inside the Request-URI"
                if n > 3
                else f"invalid Request-Line {show(first)!r}"
            )
            parts = first.split()
            if len(parts) > 3:
                # SP inside the Request-URI (RFC 4475 3.1.2.8): keep enough
                # for the partial request that carries the 400.
                parts = [parts[0], " ".join(parts[1:-1]), parts[-1]]
            if len(parts) != 3:
                # Not even the shape of a Request-Line: nothing to answer.
                raise ParseError(error, is_request=None)
        method, uri, version = parts
        bad_start = None
        bad_status = 400
        method_ok = method in _KNOWN_METHODS or _TOKEN_FULL(method) is not None
        if not method_ok:
            bad_start = f"invalid method {show(method, 20)!r}"
        elif uri[0] == "<":
            bad_start = "Request-URI must not be enclosed in <>"
        elif not _ABS_URI.fullmatch(uri):
            bad_start = f"Request-URI {show(uri)!r} is not an absolute URI"
        elif version.upper() != "SIP/2.0":
            if _VERSION.fullmatch(version):
                # RFC 3261 8.2.2 / 21.5.6: 505 Version Not Supported.
                bad_start = f"SIP version {show(version, 20)} is not supported"
                bad_status = 505
            else:
                bad_start = f"invalid SIP version {show(version, 20)!r}"
        if bad_start is not None and error is None:
            error = bad_start
            status = bad_status
        if method_ok:
            msg = Request(method, uri, headers, b"", version)

    # -- body (RFC 3261 18.3, 20.14)
    if error is None:
        if not terminated:
            error = "header section not terminated by an empty line"
        elif lengths:
            try:
                v = lengths[0].strip(" \t")
                if len(lengths) == 1 and v.isdigit() and v.isascii() and len(v) < 12:
                    values = [int(v)]
                else:
                    values = [parse_content_length(v) for v in lengths]
            except ParseError as exc:
                error = exc.message
            else:
                if len(set(values)) > 1:
                    error = "conflicting Content-Length values " + " and ".join(str(v) for v in values)
                else:
                    length = values[0]
                    if len(body) < length:
                        error = f"Content-Length {length} exceeds the {len(body)} bytes of body"
                    elif len(body) > length:
                        # Bytes beyond Content-Length are not part of this message.
                        body = body[:length]
        elif stream:
            error = "missing Content-Length (mandatory over stream transports)"
    if msg is not None and error is None:
        msg.body = body
    if error is not None:
        raise ParseError(error, is_request=is_request, partial=msg, status=status)
    assert msg is not None
    if validate:
        if is_request:
            validate_request(msg)  # type: ignore[arg-type]
        else:
            validate_response(msg)  # type: ignore[arg-type]
    return msg


_SPELL = {"to": "To", "from": "From", "call-id": "Call-ID", "cseq": "CSeq", "via": "Via",
          "max-forwards": "Max-Forwards", "content-type": "Content-Type"}
# Headers that may appear once (RFC 3261 7.3.1: only list headers repeat).
_SINGLE = frozenset(("to", "from", "call-id", "cseq", "max-forwards", "content-type"))
_LISTED = frozenset(("via", "contact", "route", "record-route"))
_REQUIRED = ("to", "from", "call-id", "cseq", "via")
# key -> True (single), False (list)
_KIND = {**{k: True for k in _SINGLE}, **{k: False for k in _LISTED}}


def _validate(msg: Message, is_request: bool) -> None:
    """One pass over the header fields, then each structured header parsed
    once, straight into the message's view cache (the accessors then find
    it there: validation costs the proxy nothing it would not do anyway)."""
    h = msg.headers
    classified = _C_CLASSIFY(h._fields) if _C_CLASSIFY is not None else None
    if classified is not None:
        single, lists = classified
    else:
        single, lists = _classify(h._fields)
    if not ("via" in lists and "cseq" in single and "from" in single and "to" in single and "call-id" in single):
        missing = [_SPELL[k] for k in _REQUIRED if k not in single and k not in lists]
        # RFC 3261 8.1.1: To, From, CSeq, Call-ID, Max-Forwards and Via are
        # mandatory; a proxy adds a missing Max-Forwards (16.6 step 3).
        raise ParseError("missing " + ", ".join(missing) + (" header" if len(missing) == 1 else " headers"))
    call_id = single["call-id"]
    if _C_CALLID is None or not _C_CALLID(call_id):
        call_id = call_id.strip()
        if not _CALL_ID(call_id):
            raise ParseError(f"invalid Call-ID {show(call_id)!r}")
    if msg._cache_version != h._version:
        msg._cache = {}
        msg._cache_version = h._version
    cache = msg._cache
    cache["call-id"] = call_id
    if is_request:
        uri = msg.uri  # type: ignore[union-attr]
        ruri = cache["ruri:" + uri] = _parse_uri(uri, "Request-URI")
        if ruri.headers:
            # RFC 3261 19.1.1 table 1: headers are not allowed in a Request-URI
            # (RFC 4475 3.1.2.11, escruri).
            raise ParseError("Request-URI must not contain headers ('?...')")
    # The common one-value shapes go straight to the fast parsers.
    vias = lists["via"]
    v = vias[0]
    if "," in v or "\n" in v:
        cache["vias"] = _parse_vias(vias)
    elif len(vias) == 1:
        cache["vias"] = [(_C_VIA is not None and _C_VIA(v)) or _parse_via(v)]
    elif is_request:
        cache["vias"] = _parse_vias(vias)
    else:
        # A response: the proxy matches and pops the top Via (RFC 3261
        # 16.7 step 3); the others go upstream as they came.
        cache["top_via"] = (_C_VIA is not None and _C_VIA(v)) or _parse_via(v)
    v = single["cseq"]
    cseq = cache["cseq"] = (_C_CSEQ is not None and _C_CSEQ(v)) or _h.parse_cseq(v)
    if not is_request:
        # A response: what a proxy reads of it (RFC 3261 16.7) is its Via,
        # to match and to pop, and its CSeq; From, To, Contact and
        # Record-Route go upstream untouched and are parsed when asked.
        return
    v = single["from"]
    cache["from"] = (_C_NAME_ADDR is not None and _C_NAME_ADDR(v)) or _fast_name_addr(v, "From", False) or _h.parse_from(v)
    v = single["to"]
    cache["to"] = (_C_NAME_ADDR is not None and _C_NAME_ADDR(v)) or _fast_name_addr(v, "To", False) or _h.parse_to(v)
    if is_request:
        # RFC 3261 8.1.1.5: "The method MUST match that of the request."
        if cseq.method != msg.method:  # type: ignore[union-attr]
            raise ParseError(f"CSeq method {cseq.method} does not match request method {msg.method}")  # type: ignore[union-attr]
        if "max-forwards" in single:
            cache["max-forwards"] = _h.parse_max_forwards(single["max-forwards"])
        else:
            cache["max-forwards"] = None
        cache["route"] = _name_addrs(lists, "route", "Route", True, _h.parse_routes)
        cache["contact"] = _name_addrs(lists, "contact", "Contact", False, _h.parse_contacts)
        cache["record-route"] = _h.parse_record_routes(lists["record-route"]) if "record-route" in lists else []


def _classify(fields: list[tuple[str, str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The single-value headers and the list headers _validate looks at."""
    single: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    kind = _KIND.get
    for key, _name, value in fields:
        k = kind(key)
        if k is None:
            continue
        if k:
            if key in single:
                raise ParseError(f"more than one {_SPELL[key]} header")
            single[key] = value
        else:
            got = lists.get(key)
            if got is None:
                lists[key] = [value]
            else:
                got.append(value)
    return single, lists


def _name_addrs(lists: dict[str, list[str]], key: str, what: str, brackets: bool, general: Any) -> list[Any]:
    values = lists.get(key)
    if values is None:
        return []
    if len(values) == 1:
        v = values[0]
        if "," not in v and "\n" not in v:
            na = _fast_name_addr(v, what, brackets)
            if na is not None:
                return [na]
    return general(values)  # type: ignore[no-any-return]


def validate_request(req: Request) -> None:
    """What a proxy checks before processing a request (RFC 3261 16.3).

    Mandatory headers (8.1.1; Max-Forwards may be absent, the proxy adds
    it), single headers not repeated, syntax of Request-URI (no headers),
    Via, From, To, CSeq (method equal to the request's, number < 2**31),
    Call-ID, Max-Forwards (0-255), Contact, Route and Record-Route.  On
    failure raises :class:`ParseError` with ``partial=req`` and
    ``is_request=True``.
    """
    if req._validated == req.headers._version and req._validated >= 0:
        return  # already validated, headers unchanged since
    try:
        _validate(req, True)
        req._validated = req.headers._version
    except ParseError as exc:
        exc.is_request = True
        exc.partial = req
        raise


def validate_response(resp: Response) -> None:
    """What a proxy checks before processing a response: Via, From, To,
    Call-ID, CSeq present, the top Via, Call-ID and CSeq well formed (a
    malformed response is dropped, RFC 4475 3.1.2.5, 3.1.2.19).  From, To,
    Contact, Record-Route and the Vias below the top one are what a proxy
    forwards untouched (RFC 3261 16.7): they are parsed when read, and
    their accessors raise ParseError then."""
    if resp._validated == resp.headers._version and resp._validated >= 0:
        return
    try:
        _validate(resp, False)
        resp._validated = resp.headers._version
    except ParseError as exc:
        exc.is_request = False
        exc.partial = resp
        raise
