"""The pieces of RFC 3261's grammar (section 25.1) that URIs and header
values share: tokens, quoted strings, folding, comma-separated lists,
``;name=value`` parameters, and the one check of what a host may be.

URIs (:mod:`~sosimple_proxy.sip.uri`) and header values
(:mod:`~sosimple_proxy.sip.headers`, :mod:`~sosimple_proxy.sip.via`) both
build on this module, so that both accept exactly the same hosts and
parameters.  Pure functions on text; they raise :class:`ParseError`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Iterable, Optional

from sosimple_proxy.sip import accel
from sosimple_proxy.sip.errors import ParseError, show

__all__ = [
    "TOKEN_CHARS",
    "TOKEN",
    "TOKEN_RE",
    "QUOTED_RE",
    "Params",
    "new_params",
    "simple_params",
    "parse_params",
    "unfold",
    "quote",
    "unquote",
    "split_commas",
    "first_element",
    "check_host",
    "check_ipv6",
    "parse_hostport",
]

# -- tokens, quoted strings, folding, lists ----------------------------------

#: The characters of a token (RFC 3261 25.1), for building character classes.
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN = rf"[{TOKEN_CHARS}]+"
_QUOTED = r'"(?:[^"\\]|\\[\s\S])*"'
TOKEN_RE = re.compile(TOKEN)
QUOTED_RE = re.compile(_QUOTED)
_FOLD = re.compile(r"\r?\n[ \t]+")
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


def first_element(value: str) -> str:
    """The first list element, without splitting the whole value."""
    if "," not in value:
        return value
    if '"' not in value and "<" not in value:
        return value[: value.index(",")]
    parts = split_commas(value)
    return parts[0] if parts else ""


# -- parameters ---------------------------------------------------------------

_setitem = dict.__setitem__
_dict_new = dict.__new__


class Params(dict):  # type: ignore[type-arg]
    """Parameters: lower-case name -> value as written (None when valueless).

    Keys are lower case (parameter names are case-insensitive, RFC 3261
    section 7.3.1 and 19.1.4), so look them up in lower case; the spelling
    of each name as written is remembered so that serializing gives back
    the same text.  Insertion order is kept.
    """

    __slots__ = ("_names",)

    def __init__(self, items: Iterable[tuple[str, Optional[str]]] | dict = ()) -> None:  # type: ignore[type-arg]
        super().__init__()
        # Only the names whose spelling differs from their lower-case key.
        names: dict[str, str] = {}
        self._names = names
        if isinstance(items, dict):
            items = items.items()
        for name, value in items:
            key = name.lower()
            if key != name and key not in self:
                names[key] = name
            _setitem(self, key, value)

    def __setitem__(self, name: str, value: Optional[str]) -> None:
        key = name.lower()
        if key != name and key not in self:
            self._names[key] = name
        dict.__setitem__(self, key, value)

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        dict.__delitem__(self, key)
        self._names.pop(key, None)

    def pop(self, name: str, *default: Optional[str]) -> Optional[str]:  # type: ignore[override]
        key = name.lower()
        self._names.pop(key, None)
        return dict.pop(self, key, *default)

    def update(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        for name, value in dict(*args, **kwargs).items():  # type: ignore[arg-type]
            self[name] = value  # type: ignore[assignment]

    def setdefault(self, name: str, value: Optional[str] = None) -> Optional[str]:  # type: ignore[override]
        if name.lower() not in self:
            self[name] = value
        return dict.__getitem__(self, name.lower())

    def copy(self) -> "Params":
        p = _dict_new(Params)  # no Python-level __init__ (hot path: a stamped Via's view)
        dict.update(p, self)
        p._names = dict(self._names)
        return p

    def serialize(self, sep: str = ";") -> str:
        """``;name=value;flag`` as written, each preceded by ``sep``."""
        names = self._names
        out = ""
        for k, v in self.items():
            if names:
                k = names.get(k, k)
            out += f"{sep}{k}" if v is None else f"{sep}{k}={v}"
        return out



accel.register_class("Params", Params)


def new_params() -> Params:
    """An empty Params without running Python-level ``__init__`` (hot path)."""
    p = _dict_new(Params)
    p._names = {}
    return p


def simple_params(ptext: str) -> Optional[Params]:
    """``;a=b;c`` already checked by a regex -> Params; None on a repeat."""
    p = _dict_new(Params)
    names = p._names = {}
    for item in ptext[1:].split(";"):
        eq = item.find("=")
        if eq < 0:
            name = item
            value = None
        else:
            name = item[:eq]
            value = item[eq + 1 :]
        key = name.lower()
        if key in p:
            return None
        if key != name:
            names[key] = name
        _setitem(p, key, value)
    return p


# gen-value = token / host / quoted-string (RFC 3261 25.1); ':' is allowed so
# that an unbracketed IPv6 address (received=2001:db8::9:255, RFC 5118 4.5)
# parses; known parameters are then checked by their own rule.
_GVALUE = rf"(?:{_QUOTED}|\[[0-9A-Fa-f:.]*\]|[{TOKEN_CHARS}:]+)"
_PARAM = re.compile(rf"[ \t]*;[ \t]*({TOKEN})(?:[ \t]*=[ \t]*({_GVALUE}))?[ \t]*")


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


# -- hosts (RFC 3261 25.1 host, RFC 5118) ---------------------------------

# hostname / IPv4address.  '_' is accepted although the grammar forbids it
# (seen in the wild, harmless).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_IPV4 = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}")
_DOTTED_DIGITS = re.compile(r"[0-9.]+")
_DIGITS = re.compile(r"[0-9]{1,5}")


@functools.lru_cache(maxsize=8192)
def _host_problem(host: str) -> Optional[str]:
    """What is wrong with ``host`` as a hostname or IPv4address, or None.

    Remembered: the same few hosts come in every message, and every parser
    (URI, Via, name-addr, fast path or not) asks this one function.
    """
    if not _HOSTNAME.fullmatch(host):
        return "invalid host"
    if _DOTTED_DIGITS.fullmatch(host) and not _IPV4.fullmatch(host.rstrip(".")):
        # 1*3DIGIT each at most 255, no leading zeros (they read as octal
        # to some stacks, and ipaddress refuses them).
        return "invalid IPv4 address"
    return None


def check_host(host: str, what: str) -> str:
    """Validate a hostname or IPv4 address (RFC 3261 25.1 ``host``, without
    the IPv6reference); return it as given."""
    problem = _host_problem(host)
    if problem is not None:
        raise ParseError(f"{what}: {problem} {host!r}")
    return host


def check_ipv6(text: str, what: str) -> str:
    """Validate an IPv6 address (no brackets, no zone); return it as given."""
    if "%" in text or not text:
        raise ParseError(f"{what}: invalid IPv6 address {text!r}")
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        # RFC 5118 section 4.10: [2001:db8:::192.0.2.1] is invalid.
        raise ParseError(f"{what}: invalid IPv6 address {text!r}") from None
    return text


def parse_hostport(text: str, what: str = "URI") -> tuple[str, Optional[int]]:
    """``host [":" port]`` -> (host without brackets, port or None)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError(f"{what}: unterminated IPv6 reference {text!r}")
        host = check_ipv6(text[1:end], what)
        rest = text[end + 1 :]
    else:
        colon = text.find(":")
        if colon < 0:
            return check_host(text, what), None
        if text.count(":") > 1:
            # RFC 5118 section 4.2: an IPv6 address must be bracketed.
            raise ParseError(f"{what}: IPv6 address {text!r} must be enclosed in [ ]")
        host = check_host(text[:colon], what)
        rest = text[colon:]
    if not rest:
        return host, None
    if rest[0] != ":" or not _DIGITS.fullmatch(rest[1:]):
        raise ParseError(f"{what}: invalid port in {text!r}")
    port = int(rest[1:])
    if port > 65535:
        raise ParseError(f"{what}: port {port} is out of range")
    return host, port
