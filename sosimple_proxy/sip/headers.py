"""Structured header values: Via, CSeq, name-addr (From, To, Contact, Route),
Max-Forwards, Content-Length, and the comma/parameter rules they share
(RFC 3261 sections 7.3 and 25.1).

These parsers run lazily, from the accessors of
:class:`sosimple_proxy.sip.message.Message`, so that a proxy pays only for the
headers it reads.  They accept folded text (a CRLF followed by white space
is LWS, RFC 3261 section 7.3.1) and raise :class:`ParseError` saying what
is wrong.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Union

from sosimple_proxy.sip.errors import ParseError, show
from sosimple_proxy.sip.uri import (
    HOST_FAST,
    PARAM_CHARS,
    URI,
    USER_CHARS,
    Params,
    build_sip_uri,
    check_host,
    check_ipv6,
    is_ipv4,
    new_params,
    parse_uri,
    simple_params,
    unescape,
)

__all__ = [
    "Via",
    "CSeq",
    "NameAddr",
    "split_commas",
    "parse_params",
    "parse_via",
    "parse_vias",
    "parse_top_via",
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
    "quote",
    "unquote",
    "unescape",
    "uri_equivalent",
]

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_QUOTED = r'"(?:[^"\\]|\\[\s\S])*"'
TOKEN_RE = re.compile(_TOKEN)
QUOTED_RE = re.compile(_QUOTED)
_FOLD = re.compile(r"\r?\n[ \t]+")
# gen-value = token / host / quoted-string (RFC 3261 25.1); ':' is allowed so
# that an unbracketed IPv6 address (received=2001:db8::9:255, RFC 5118 4.5)
# parses; known parameters are then checked by their own rule.
_GVALUE = rf"(?:{_QUOTED}|\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9\-.!%*_+`'~:]+)"
_PARAM = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_GVALUE}))?[ \t]*")
_DISPLAY_TOKENS = re.compile(rf"{_TOKEN}(?:[ \t]+{_TOKEN})*")
_QUOTED_PAIR = re.compile(r"\\([\s\S])")


def unfold(text: str) -> str:
    """Replace each CRLF+WSP fold by one SP (RFC 3261 7.3.1 allows it)."""
    if "\n" in text:
        return _FOLD.sub(" ", text)
    return text


def unquote(quoted: str) -> str:
    """The text of a quoted-string: quotes removed, quoted-pairs resolved."""
    inner = quoted[1:-1]
    return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner


def quote(text: str) -> str:
    """A quoted-string for ``text`` (RFC 3261 25.1 quoted-pair)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_commas(value: str) -> list[str]:
    """Split a header value on the commas that separate list elements.

    Commas inside quoted strings (with their backslash escapes) and inside
    ``<...>`` do not count (RFC 3261 7.3.1).  Elements are stripped; an
    empty element is kept (as ``""``) so callers can reject it; an empty or
    blank value gives ``[]``.
    """
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    if '"' not in value and "<" not in value:
        return [p.strip() for p in value.split(",")]
    out: list[str] = []
    start = 0
    i = 0
    n = len(value)
    in_quote = False
    in_angle = False
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif in_angle:
            if c == ">":
                in_angle = False
        elif c == "<":
            in_angle = True
        elif c == ",":
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    last = value[start:].strip()
    if last or out:
        out.append(last)
    return out


def _first_element(value: str) -> str:
    """The first list element, without splitting the whole value."""
    if "," not in value:
        return value
    if '"' not in value and "<" not in value:
        return value[: value.index(",")]
    parts = split_commas(value)
    return parts[0] if parts else ""


def parse_params(text: str, pos: int, what: str) -> Params:
    """Parse ``*( SEMI generic-param )`` from ``text[pos:]`` to its end."""
    params = Params()
    n = len(text)
    match = _PARAM.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            rest = text[pos:].strip()
            if rest.startswith(";"):
                after = rest[1:].lstrip()
                if not after or after[0] in ";,":
                    raise ParseError(f"{what}: empty parameter")
                raise ParseError(f"{what}: invalid parameter {show(after)!r}")
            if params:
                last = next(reversed(params))
                raise ParseError(
                    f"{what}: invalid character {show(rest[:1])!r} in or after parameter {show(last)!r}"
                    " (a value is a token, a host or a quoted string)"
                )
            raise ParseError(f"{what}: unexpected {show(rest)!r}")
        name = m.group(1)
        key = name.lower()
        if key in params:
            raise ParseError(f"{what}: parameter {name!r} appears more than once")
        params[name] = m.group(2)
        pos = m.end()
    return params


# -- Via (RFC 3261 20.42, 18.2.1; RFC 3581 rport; RFC 5118 IPv6) ------------

_VIA_FRONT = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[^\]]*\]|[A-Za-z0-9\-._]+)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*"
)
_setitem = dict.__setitem__


class Via:
    """One Via value: ``SIP/2.0/UDP host:port;branch=...;received=...``.

    ``params`` keys are lower case, values as written (None when valueless);
    ``branch``, ``received``, ``rport``, ``maddr`` and ``ttl`` read (and
    set) them.  ``host`` is an IPv6 address without brackets, or a name.
    ``str(via)`` serializes.
    """

    __slots__ = ("protocol", "version", "transport", "host", "port", "params")

    def __init__(
        self,
        transport: str,
        host: str,
        port: Optional[int] = None,
        params: Optional[Params | dict] = None,  # type: ignore[type-arg]
        protocol: str = "SIP",
        version: str = "2.0",
    ) -> None:
        self.protocol = protocol
        self.version = version
        self.transport = transport.upper()
        self.host = host[1:-1] if host.startswith("[") else host
        self.port = port
        if params is None:
            params = new_params()
        elif not isinstance(params, Params):
            params = Params(params)
        self.params: Params = params

    @property
    def branch(self) -> Optional[str]:
        return self.params.get("branch")

    @branch.setter
    def branch(self, value: Optional[str]) -> None:
        self._set("branch", value)

    @property
    def received(self) -> Optional[str]:
        """The received address, IPv6 without brackets (RFC 5118 4.5)."""
        value = self.params.get("received")
        if value and value.startswith("["):
            return value[1:-1]
        return value

    @received.setter
    def received(self, value: Optional[str]) -> None:
        self._set("received", value)

    @property
    def rport(self) -> Union[None, bool, int]:
        """None when absent, True when present without value, else the port."""
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        if value is None:
            return True
        return int(value) if value.isdigit() and len(value) <= 5 else True

    @rport.setter
    def rport(self, value: Union[None, bool, int]) -> None:
        if value is None or value is False:
            self.params.pop("rport", None)
        elif value is True:
            self.params["rport"] = None
        else:
            self.params["rport"] = str(int(value))

    @property
    def maddr(self) -> Optional[str]:
        value = self.params.get("maddr")
        if value and value.startswith("["):
            return value[1:-1]
        return value

    @property
    def ttl(self) -> Optional[int]:
        value = self.params.get("ttl")
        return int(value) if value and value.isdigit() and len(value) <= 3 else None

    @property
    def sent_by(self) -> tuple[str, Optional[int]]:
        return self.host, self.port

    def _set(self, name: str, value: Optional[str]) -> None:
        if value is None:
            self.params.pop(name, None)
        else:
            self.params[name] = value

    def copy(self) -> "Via":
        return Via(self.transport, self.host, self.port, self.params.copy(), self.protocol, self.version)

    def __str__(self) -> str:
        h = self.host
        if ":" in h:
            h = f"[{h}]"
        if self.port is not None:
            h = f"{h}:{self.port}"
        return f"{self.protocol}/{self.version}/{self.transport} {h}{self.params.serialize()}"

    def __repr__(self) -> str:
        return f"<Via {self}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return str(self) == str(other)

    __hash__ = None  # type: ignore[assignment]


_VCH = r"A-Za-z0-9\-.!%*_+`'~"
# The common shape, no optional white space: SIP/2.0/UDP host:port;a=b;c
_VIA_FAST = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9][A-Za-z0-9\-.]*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    rf"((?:;[{_VCH}]+(?:=[{_VCH}:\[\]]+)?)*)"
).fullmatch


# What user agents send: SIP/2.0/UDP host[:port];branch=token[;rport]
_VIA_HOT = re.compile(
    r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9][A-Za-z0-9\-.]*)(?::([0-9]{1,5}))?"
    rf";branch=([{_VCH}]+)(;rport)?"
).fullmatch


def parse_via(text: str) -> Via:
    """Parse one via-parm (RFC 3261 25.1)."""
    m = _VIA_HOT(text)
    if m is not None:
        transport, host, port, branch, rport = m.groups()
        if ".." in host or "-." in host or host[-1] == "-" or (
            host[0].isdigit() and host.replace(".", "").isdigit() and not is_ipv4(host)
        ):
            check_host(host, "Via")
        via = Via.__new__(Via)
        if port is not None:
            p = int(port)
            if p > 65535:
                raise ParseError(f"Via: port {p} is out of range")
            via.port = p
        else:
            via.port = None
        params = new_params()
        _setitem(params, "branch", branch)
        if rport:
            _setitem(params, "rport", None)
        via.protocol = "SIP"
        via.version = "2.0"
        via.transport = transport
        via.host = host
        via.params = params
        return via
    m = _VIA_FAST(text)
    if m is not None:
        transport, host, port, ptext = m.groups()
        if host[0] == "[":
            host = check_ipv6(host[1:-1], "Via")
        elif ".." in host or "-." in host or host[-1] == "-" or (
            host[0].isdigit() and host.replace(".", "").isdigit() and not is_ipv4(host)
        ):
            check_host(host, "Via")
        p = None
        if port is not None:
            p = int(port)
            if p > 65535:
                raise ParseError(f"Via: port {p} is out of range")
        if ptext:
            params = simple_params(ptext)
            if params is None:
                raise ParseError("Via: a parameter appears more than once")
            branch = params.get("branch")
            if (
                ("branch" in params and (not branch or ":" in branch or "[" in branch or "]" in branch))
                or params.get("rport") is not None
                or "received" in params
                or "ttl" in params
                or "maddr" in params
            ):
                _check_via_params(params)
        else:
            params = new_params()
        via = Via.__new__(Via)
        via.protocol = "SIP"
        via.version = "2.0"
        via.transport = transport.upper()
        via.host = host
        via.port = p
        via.params = params
        return via
    return _parse_via_general(text)


def _parse_via_general(text: str) -> Via:
    text = unfold(text)
    m = _VIA_FRONT.match(text)
    if m is None:
        if not text.strip():
            raise ParseError("Via: empty value")
        raise ParseError(f"Via: invalid sent-protocol/sent-by in {show(text)!r}")
    protocol, version, transport, host, port = m.groups()
    if host.startswith("["):
        host = check_ipv6(host[1:-1], "Via")
    else:
        if text[m.end() : m.end() + 1] == ":":
            sent_by = text[m.start(4) :].split(";", 1)[0].strip()
            if sent_by.count(":") > 1:
                # RFC 5118 4.5 / RFC 3261 25.1: IPv6reference in sent-by.
                raise ParseError(f"Via: IPv6 address {show(sent_by)!r} must be enclosed in [ ]")
            raise ParseError(f"Via: invalid port in {show(sent_by)!r}")
        check_host(host, "Via")
    p = int(port) if port is not None else None
    if p is not None and p > 65535:
        raise ParseError(f"Via: port {p} is out of range")
    params = parse_params(text, m.end(), "Via") if m.end() < len(text) else Params()
    if params:
        _check_via_params(params)
    return Via(transport, host, p, params, protocol, version)


def _check_via_params(params: Params) -> None:
    # RFC 3261 25.1 via-params; RFC 3581 response-port.
    if "branch" in params:
        b = params["branch"]
        if not b or not TOKEN_RE.fullmatch(b):
            raise ParseError("Via: branch must be a token")
    if "received" in params:
        r = params["received"]
        if not r:
            raise ParseError("Via: received without a value")
        # RFC 3261: IPv4address / IPv6address; RFC 5118 4.5: accept an
        # IPv6reference (with brackets) too.
        if ":" in r:
            check_ipv6(r[1:-1] if r.startswith("[") and r.endswith("]") else r, "Via received")
        else:
            check_host(r, "Via received")
            if not r.replace(".", "").isdigit():
                raise ParseError(f"Via: received={show(r)} is not an IP address")
    if "rport" in params:
        v = params["rport"]
        if v is not None and (not v.isdigit() or len(v) > 5 or int(v) > 65535):
            raise ParseError(f"Via: invalid rport={show(v)}")
    if "ttl" in params:
        v = params["ttl"]
        if v is None or not v.isdigit() or len(v) > 3 or int(v) > 255:
            raise ParseError(f"Via: invalid ttl={show(str(v))}")
    if "maddr" in params:
        v = params["maddr"]
        if not v:
            raise ParseError("Via: maddr without a value")
        if v.startswith("["):
            check_ipv6(v[1:-1], "Via maddr")
        else:
            check_host(v, "Via maddr")


def parse_vias(values: Iterable[str] | str | None) -> list[Via]:
    """Every Via value of the given header field values, in order."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    if len(values) == 1 and "," not in values[0] and "\n" not in values[0]:  # type: ignore[arg-type]
        return [parse_via(values[0])]  # type: ignore[index]
    out: list[Via] = []
    for raw in values:
        parts = split_commas(unfold(raw))
        if not parts:
            raise ParseError("Via: empty value")
        for part in parts:
            if not part:
                raise ParseError("Via: empty value in list")
            out.append(parse_via(part))
    return out


def parse_top_via(value: Optional[str]) -> Optional[Via]:
    """The first Via value of the first Via field line (or None)."""
    if value is None:
        return None
    return parse_via(_first_element(unfold(value)))


# -- CSeq (RFC 3261 20.16) ----------------------------------------------------

_CSEQ = re.compile(rf"[ \t]*([0-9]+)[ \t]+({_TOKEN})[ \t]*")


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


_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH",
     "INFO", "REFER", "MESSAGE", "UPDATE")
)


def parse_cseq(value: Optional[str]) -> CSeq:
    if value is None:
        raise ParseError("missing CSeq header")
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


_PV = rf"[{_VCH}:\[\]]+"
# The common shapes, no optional white space around ';' and '=':
# [display] <sip:...>;a=b  and  sip:...;a=b
_NA_FAST = re.compile(
    rf'(?:("(?:[^"\\]|\\.)*")[ \t]*|({_TOKEN}(?:[ \t]+{_TOKEN})*)[ \t]*)?<([^<>"\s]+)>'
    rf"((?:;{_TOKEN}(?:={_PV})?)*)"
).fullmatch
_SPEC_FAST = re.compile(rf'([A-Za-z][A-Za-z0-9+\-.]*:[^;<>"\s,?]+)((?:;{_TOKEN}(?:={_PV})?)*)').fullmatch


# Name-addr with a plain sip/sips URI, all in one match.
_NA_SIP_FAST = re.compile(
    rf'(?:("(?:[^"\\]|\\.)*")[ \t]*|({_TOKEN}(?:[ \t]+{_TOKEN})*)[ \t]*)?'
    rf"<(sips?):(?:([{USER_CHARS}]+)@)?({HOST_FAST})(?::([0-9]{{1,5}}))?((?:;[{PARAM_CHARS}]+(?:=[{PARAM_CHARS}]+)?)*)>"
    rf"((?:;{_TOKEN}(?:={_PV})?)*)"
).fullmatch
# addr-spec with a plain sip/sips URI: ';' starts the header parameters.
_SPEC_SIP_FAST = re.compile(
    rf"(sips?):(?:([{USER_CHARS.replace(';', '').replace('?', '')}]+)@)?({HOST_FAST})(?::([0-9]{{1,5}}))?"
    rf"((?:;{_TOKEN}(?:={_PV})?)*)"
).fullmatch


def _fast_name_addr(text: str, what: str, brackets_required: bool) -> Optional[NameAddr]:
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
    if uparams and uparams.count(";") > 1 or (
        host[0] == "[" or ".." in host or "-." in host or ".-" in host or (port is not None and len(port) == 5)
        or (host[0].isdigit() and host.replace(".", "").isdigit() and not is_ipv4(host))
    ):
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
