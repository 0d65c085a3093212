"""Structured header values: CSeq, name-addr (From, To, Contact, Route),
Max-Forwards, Content-Length.  Via has its own module
(:mod:`~sosimple_proxy.sip.via`); the rules all of them share are in
:mod:`~sosimple_proxy.sip.grammar`.

These parsers run lazily, from the accessors of
:class:`sosimple_proxy.sip.message.Message`, so that a proxy pays only for the
headers it reads.  They accept folded text (a CRLF followed by white space
is LWS, RFC 3261 section 7.3.1) and raise :class:`ParseError` saying what
is wrong.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

from sosimple_proxy.sip import accel
from sosimple_proxy.sip.errors import ParseError, show
from sosimple_proxy.sip.grammar import (
    QUOTED_RE,
    TOKEN,
    TOKEN_CHARS,
    Params,
    check_host,
    new_params,
    parse_params,
    quote,
    simple_params,
    split_commas,
    unfold,
    unquote,
)
from sosimple_proxy.sip.uri import HOST_FAST, PARAM_CHARS, URI, USER_CHARS, build_sip_uri, parse_uri, unescape

__all__ = [
    "CSeq",
    "NameAddr",
    "parse_cseq",
    "parse_name_addr",
    "parse_name_addr_header",
    "parse_name_addrs",
    "parse_contacts",
    "parse_from",
    "parse_to",
    "parse_routes",
    "parse_record_routes",
    "parse_max_forwards",
    "parse_content_length",
    "unescape",
    "uri_equivalent",
]

_DISPLAY_TOKENS = re.compile(rf"{TOKEN}(?:[ \t]+{TOKEN})*")


# -- CSeq (RFC 3261 20.16) ----------------------------------------------------

_CSEQ = re.compile(rf"[ \t]*([0-9]+)[ \t]+({TOKEN})[ \t]*")


class CSeq:
    """``CSeq: 4711 INVITE`` -> CSeq(4711, "INVITE")."""

    __slots__ = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq = seq
        self.method = method

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"<CSeq {self.seq} {self.method}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CSeq):
            return self.seq == other.seq and self.method == other.method
        if isinstance(other, tuple):
            return (self.seq, self.method) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.seq, self.method))

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.seq
        yield self.method


accel.register_class("CSeq", CSeq)

# The compiled fast paths (accel.py), None when the pure code runs alone:
# each returns what the code below returns for its input, or None.
_C_CSEQ = _C_MAX_FORWARDS = _C_NAME_ADDR = _C_NAME_ADDRS = _C_LAZY_URI = _C_PARAMS = None


def _bind(c: object) -> None:
    global _C_CSEQ, _C_MAX_FORWARDS, _C_NAME_ADDR, _C_NAME_ADDRS, _C_LAZY_URI, _C_PARAMS
    _C_LAZY_URI = getattr(c, "lazy_uri", None)
    _C_PARAMS = getattr(c, "params", None)
    _C_CSEQ = getattr(c, "cseq", None)
    _C_MAX_FORWARDS = getattr(c, "max_forwards", None)
    _C_NAME_ADDR = getattr(c, "name_addr", None)
    _C_NAME_ADDRS = getattr(c, "name_addrs", None)


accel.register(_bind)

_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
     "INFO", "REFER", "MESSAGE", "UPDATE")
)


def parse_cseq(value: Optional[str]) -> CSeq:
    if value is None:
        raise ParseError("missing CSeq header")
    if _C_CSEQ is not None:
        c = _C_CSEQ(value)
        if c is not None:
            return c  # type: ignore[no-any-return]
    seq, sp, method = value.partition(" ")
    if sp and method in _METHODS and seq.isdigit() and seq.isascii() and len(seq) < 10:
        cseq = CSeq.__new__(CSeq)
        cseq.seq = int(seq)
        cseq.method = method
        return cseq
    value = unfold(value)
    m = _CSEQ.fullmatch(value)
    if m is None:
        raise ParseError(f"CSeq: invalid value {show(value)!r}")
    digits = m.group(1)
    # RFC 3261 8.1.1.5: "The sequence number MUST be expressible as a
    # 32-bit unsigned integer and MUST be less than 2**31."
    if len(digits) > 10 or int(digits) >= 2**31:
        raise ParseError(f"CSeq number {show(digits, 30)} is too large (must be < 2**31)")
    return CSeq(int(digits), m.group(2))


# -- Max-Forwards, Content-Length ----------------------------------------------


def parse_max_forwards(value: Optional[str]) -> Optional[int]:
    """Max-Forwards as an int 0-255 (RFC 3261 20.22), None when absent."""
    if value is None:
        return None
    if _C_MAX_FORWARDS is not None:
        n = _C_MAX_FORWARDS(value)
        if n is not None:
            return n  # type: ignore[no-any-return]
    v = unfold(value).strip()
    if not v.isdigit() or not v.isascii():
        raise ParseError(f"Max-Forwards {show(v)!r} is not a number")
    digits = v.lstrip("0") or "0"
    if len(digits) > 3 or int(digits) > 255:
        raise ParseError(f"Max-Forwards {show(v, 20)} is out of range (0-255)")
    return int(digits)


def parse_content_length(value: str) -> int:
    """Content-Length as a non-negative int (RFC 3261 20.14)."""
    v = unfold(value).strip()
    if v.startswith("-") and v[1:].isdigit():
        raise ParseError(f"Content-Length {show(v, 20)} is negative")
    if not v.isdigit() or not v.isascii():
        raise ParseError(f"Content-Length {show(v, 20)!r} is not a number")
    if len(v.lstrip("0")) > 12:
        raise ParseError(f"Content-Length {show(v, 20)} is too large")
    return int(v)


# -- name-addr / addr-spec (RFC 3261 20.10, 20.20, 20.39, 20.34, 20.30) ------


class NameAddr:
    """``"Display" <uri>;tag=x`` or ``uri;tag=x``.

    ``display`` is the display name as text (quotes and escapes removed) or
    None; ``raw_display`` as written.  ``uri`` is a :class:`URI`; ``params``
    the header parameters (lower-case keys).  ``str()`` serializes, always
    with angle brackets unless the value was ``*``.
    """

    __slots__ = ("raw_display", "_uri", "_params", "wildcard", "_lazy")

    def __init__(
        self,
        display: Optional[str] = None,
        uri: Union[URI, str, None] = None,
        params: Optional[Params | dict] = None,  # type: ignore[type-arg]
        *,
        raw_display: Optional[str] = None,
        wildcard: bool = False,
    ) -> None:
        if raw_display is None and display is not None:
            raw_display = display if _DISPLAY_TOKENS.fullmatch(display) else quote(display)
        self.raw_display = raw_display
        if isinstance(uri, str):
            uri = parse_uri(uri)
        self._uri: Optional[URI] = uri if uri is not None else URI("sip")
        if params is None:
            params = Params()
        elif not isinstance(params, Params):
            params = Params(params.items())
        self._params: Optional[Params] = params
        self.wildcard = wildcard
        self._lazy: Optional[tuple] = None  # type: ignore[type-arg]

    # The fast parser validates the text and defers building the URI and
    # the parameters until they are read (a proxy reads few of them).

    @property
    def uri(self) -> URI:
        uri = self._uri
        if uri is None:
            if _C_LAZY_URI is not None:
                uri = _C_LAZY_URI(self._lazy)
                if uri is not None:
                    self._uri = uri
                    return uri
            scheme, user, host, port, uparams, _ptext = self._lazy  # type: ignore[misc]
            uri = self._uri = build_sip_uri(scheme, user, host, port, uparams, "URI")
        return uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value

    @property
    def params(self) -> Params:
        params = self._params
        if params is None:
            ptext = self._lazy[5]  # type: ignore[index]
            if ptext and _C_PARAMS is not None:
                params = _C_PARAMS(ptext)
                if params is not None:
                    self._params = params
                    return params
            params = self._params = simple_params(ptext) if ptext else new_params()  # type: ignore[assignment]
        return params  # type: ignore[return-value]

    @params.setter
    def params(self, value: Params) -> None:
        self._params = value

    @property
    def display(self) -> Optional[str]:
        d = self.raw_display
        if d is None:
            return None
        return unquote(d) if d.startswith('"') else d

    @display.setter
    def display(self, value: Optional[str]) -> None:
        if value is None:
            self.raw_display = None
        else:
            self.raw_display = value if _DISPLAY_TOKENS.fullmatch(value) else quote(value)

    @property
    def tag(self) -> Optional[str]:
        return self.params.get("tag")

    @tag.setter
    def tag(self, value: Optional[str]) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    @property
    def q(self) -> Optional[float]:
        v = self.params.get("q")
        try:
            return float(v) if v is not None else None
        except ValueError:
            return None

    @property
    def expires(self) -> Optional[int]:
        v = self.params.get("expires")
        return int(v) if v is not None and v.isdigit() and len(v) < 11 else None

    def copy(self) -> "NameAddr":
        return NameAddr(
            None, self.uri.copy(), self.params.copy(), raw_display=self.raw_display, wildcard=self.wildcard
        )

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        d = f"{self.raw_display} " if self.raw_display else ""
        return f"{d}<{self.uri}>{self.params.serialize()}"

    def __repr__(self) -> str:
        return f"<NameAddr {self}>"


accel.register_class("NameAddr", NameAddr)

_PV = rf"[{TOKEN_CHARS}:\[\]]+"
# The common shapes, no optional white space around ';' and '=':
# [display] <sip:...>;a=b  and  sip:...;a=b
_NA_FAST = re.compile(
    rf'(?:("(?:[^"\\]|\\.)*")[ \t]*|({TOKEN}(?:[ \t]+{TOKEN})*)[ \t]*)?<([^<>"\s]+)>'
    rf"((?:;{TOKEN}(?:={_PV})?)*)"
).fullmatch
_SPEC_FAST = re.compile(rf'([A-Za-z][A-Za-z0-9+\-.]*:[^;<>"\s,?]+)((?:;{TOKEN}(?:={_PV})?)*)').fullmatch


# Name-addr with a plain sip/sips URI, all in one match.
_NA_SIP_FAST = re.compile(
    rf'(?:("(?:[^"\\]|\\.)*")[ \t]*|({TOKEN}(?:[ \t]+{TOKEN})*)[ \t]*)?'
    rf"<(sips?):(?:([{USER_CHARS}]+)@)?({HOST_FAST})(?::([0-9]{{1,5}}))?((?:;[{PARAM_CHARS}]+(?:=[{PARAM_CHARS}]+)?)*)>"
    rf"((?:;{TOKEN}(?:={_PV})?)*)"
).fullmatch
# addr-spec with a plain sip/sips URI: ';' starts the header parameters.
_SPEC_SIP_FAST = re.compile(
    rf"(sips?):(?:([{USER_CHARS.replace(';', '').replace('?', '')}]+)@)?({HOST_FAST})(?::([0-9]{{1,5}}))?"
    rf"((?:;{TOKEN}(?:={_PV})?)*)"
).fullmatch


def _fast_name_addr(text: str, what: str, brackets_required: bool) -> Optional[NameAddr]:
    if _C_NAME_ADDR is not None:
        na = _C_NAME_ADDR(text)
        if na is not None:
            return na  # type: ignore[no-any-return]
    m = _NA_SIP_FAST(text)
    if m is not None:
        quoted, tokens, scheme, user, host, port, uparams, ptext = m.groups()
        display = quoted or tokens
    elif brackets_required:
        return None
    else:
        m = _SPEC_SIP_FAST(text)
        if m is None:
            return None
        scheme, user, host, port, ptext = m.groups()
        display = uparams = None
    na = NameAddr.__new__(NameAddr)
    na.raw_display = display
    na.wildcard = False
    # Check now what the regex could not; build later.
    if host[0] != "[":
        check_host(host, what)
    if uparams and uparams.count(";") > 1 or host[0] == "[" or (port is not None and len(port) == 5):
        na._uri = build_sip_uri(scheme, user, host, port, uparams, what)
    else:
        na._uri = None
    if ptext and ptext.count(";") > 1:
        params = simple_params(ptext)
        if params is None:
            raise ParseError(f"{what}: a parameter appears more than once")
        na._params = params
    else:
        na._params = None
    na._lazy = (scheme, user, host, port, uparams, ptext)
    return na


def parse_name_addr(
    text: str, header_name: str = "header", *, brackets_required: bool = False
) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )``.

    RFC 3261 20.10: in the addr-spec form (no angle brackets) every
    ``;param`` belongs to the header, and a URI holding a comma, question
    mark or semicolon MUST be written in angle brackets.
    """
    na = _fast_name_addr(text, header_name, brackets_required)
    if na is not None:
        return na
    m = _NA_FAST(text)
    if m is not None:
        quoted, tokens, uri_text, ptext = m.groups()
    elif not brackets_required:
        m = _SPEC_FAST(text)
        if m is None:
            return _parse_name_addr_general(text, header_name, brackets_required)
        quoted = tokens = None
        uri_text, ptext = m.groups()
    else:
        return _parse_name_addr_general(text, header_name, brackets_required)
    if ptext:
        params = simple_params(ptext)
        if params is None:
            raise ParseError(f"{header_name}: a parameter appears more than once")
    else:
        params = Params()
    na = NameAddr.__new__(NameAddr)
    na.raw_display = quoted or tokens
    na._uri = parse_uri(uri_text, header_name)
    na._params = params
    na.wildcard = False
    na._lazy = None
    return na


def _parse_name_addr_general(
    text: str, header_name: str = "header", brackets_required: bool = False
) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )``.

    RFC 3261 20.10: in the addr-spec form (no angle brackets) every
    ``;param`` belongs to the header, and a URI holding a comma, question
    mark or semicolon MUST be written in angle brackets.
    """
    text = unfold(text).strip()
    what = header_name
    if not text:
        raise ParseError(f"{what}: empty value")
    raw_display: Optional[str] = None
    if text[0] == '"':
        m = QUOTED_RE.match(text)
        if m is None:
            raise ParseError(f"{what}: unterminated quoted display name")
        raw_display = m.group()
        lt = m.end()
        while lt < len(text) and text[lt] in " \t":
            lt += 1
        if lt >= len(text) or text[lt] != "<":
            raise ParseError(f"{what}: quoted display name must be followed by <URI>")
    else:
        lt = text.find("<")
        if lt > 0:
            display = text[:lt].rstrip(" \t")
            if display:
                if not _DISPLAY_TOKENS.fullmatch(display):
                    # RFC 4475 3.1.2.15 (baddn): "Bell, Alexander" must be quoted.
                    raise ParseError(
                        f"{what}: display name {show(display)!r} must be a token sequence or a quoted string"
                    )
                raw_display = display
    if lt >= 0 and lt < len(text) and text[lt] == "<":
        gt = text.find(">", lt + 1)
        if gt < 0:
            raise ParseError(f"{what}: missing '>'")
        # No white space inside the brackets (RFC 3261 25.1 LAQUOT/RAQUOT;
        # RFC 4475 3.1.2.14, badaspec: we reject rather than guess).
        uri_text = text[lt + 1 : gt]
        uri = parse_uri(uri_text, what)
        pos = gt + 1
    else:
        if brackets_required:
            raise ParseError(f"{what}: URI must be enclosed in <>")
        semi = text.find(";")
        uri_text = text if semi < 0 else text[:semi]
        uri_text = uri_text.rstrip(" \t")
        if not uri_text:
            raise ParseError(f"{what}: missing URI")
        if " " in uri_text or "\t" in uri_text:
            raise ParseError(f"{what}: {show(uri_text)!r} is not a name-addr or addr-spec")
        if "?" in uri_text or "," in uri_text:
            # RFC 3261 20.10 (RFC 4475 3.1.2.13, regbadct).
            raise ParseError(f"{what}: URI with '?', ',' or ';' must be enclosed in <>")
        uri = parse_uri(uri_text, what)
        pos = len(uri_text) if semi < 0 else semi
    params = parse_params(text, pos, what) if pos < len(text) else Params()
    return NameAddr(None, uri, params, raw_display=raw_display)


def parse_name_addr_header(value: Optional[str], header_name: str) -> NameAddr:
    """From / To and other single name-addr headers; missing is an error."""
    if value is None:
        raise ParseError(f"missing {header_name} header")
    return parse_name_addr(value, header_name)


def parse_name_addrs(
    values: Iterable[str], header_name: str, *, brackets_required: bool = False, star: bool = False
) -> list[NameAddr]:
    """Every value of a list of name-addr fields (Route, Record-Route, Path...)."""
    if _C_NAME_ADDRS is not None:
        got = _C_NAME_ADDRS(values)
        if got is not None:
            return got  # type: ignore[no-any-return]
    out: list[NameAddr] = []
    for raw in values:
        if "," not in raw and "\n" not in raw:
            na = _fast_name_addr(raw, header_name, brackets_required)
            if na is not None:
                out.append(na)
                continue
            parts = [raw.strip()]
        else:
            parts = split_commas(unfold(raw))
        if not parts or not parts[0]:
            raise ParseError(f"{header_name}: empty value")
        for part in parts:
            if not part:
                raise ParseError(f"{header_name}: empty value in list")
            if star and part == "*":
                out.append(NameAddr(None, None, wildcard=True))
                continue
            out.append(parse_name_addr(part, header_name, brackets_required=brackets_required))
    return out


def parse_contacts(values: Iterable[str]) -> list[NameAddr]:
    """Contact values; ``*`` gives one NameAddr with ``wildcard=True``."""
    out = parse_name_addrs(values, "Contact", star=True)
    if len(out) > 1 and any(na.wildcard for na in out):
        # RFC 3261 10.2.2: "*" only alone (and with Expires: 0).
        raise ParseError("Contact: '*' must be the only Contact value")
    return out


def parse_from(value: Optional[str]) -> NameAddr:
    return parse_name_addr_header(value, "From")


def parse_to(value: Optional[str]) -> NameAddr:
    return parse_name_addr_header(value, "To")


def parse_routes(values: Iterable[str]) -> list[NameAddr]:
    """Route values: name-addr only (RFC 3261 25.1 route-param)."""
    return parse_name_addrs(values, "Route", brackets_required=True)


def parse_record_routes(values: Iterable[str]) -> list[NameAddr]:
    return parse_name_addrs(values, "Record-Route", brackets_required=True)


def uri_equivalent(a: Union[URI, str], b: Union[URI, str]) -> bool:
    """URI equality of RFC 3261 19.1.4 (text is parsed first; a text that
    does not parse is equal to nothing)."""
    try:
        ua = parse_uri(a) if isinstance(a, str) else a
        ub = parse_uri(b) if isinstance(b, str) else b
    except ParseError:
        return False
    return ua.equivalent(ub)
