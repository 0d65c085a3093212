"""URIs: ``sip:``/``sips:`` (RFC 3261 section 19.1), ``tel:`` (RFC 3966) and
any other absolute URI, kept opaque (RFC 3261 section 25.1 ``absoluteURI``).

Every component is stored as written (escapes included) so that
``str(parse_uri(text)) == text`` for any valid text whose scheme is written
in lower case; escapes are decoded only to compare (RFC 3261 19.1.4), once,
never recursively (RFC 4475 section 3.1.1.3).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Optional

from sosimple_proxy.sip import accel
from sosimple_proxy.sip.errors import ParseError, show
from sosimple_proxy.sip.grammar import Params, check_host, check_ipv6, parse_hostport, new_params, simple_params

__all__ = [
    "URI",
    "parse_uri",
    "unescape",
    "canonical",
    "format_host",
]


# -- character classes of RFC 3261 section 25.1 ---------------------------

_ESC = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESC})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESC})*")
_PARAMCHARS = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESC})+")
_HNAME = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})+")
_HVALUE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESC})*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_ESCAPE_ANY = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

# RFC 3261 section 25.1: reserved = ";" / "/" / "?" / ":" / "@" / "&" / "=" / "+" / "$" / ","
# '%' is kept escaped too, so that a canonical form is never decoded twice.
_KEEP_ESCAPED = frozenset(";/?:@&=+$,%")


def unescape(text: str) -> str:
    """Decode every ``%HH`` once (RFC 4475 3.1.1.3: never recursively)."""
    if "%" not in text:
        return text
    return _ESCAPE_ANY.sub(lambda m: chr(int(m.group(1), 16)), text)


def _canon_escape(m: "re.Match[str]") -> str:
    ch = chr(int(m.group(1), 16))
    if ch in _KEEP_ESCAPED or not (0x20 < ord(ch) < 0x7F):
        return "%" + m.group(1).upper()
    return ch


def canonical(text: str) -> str:
    """The comparison form of URI text: escapes of unreserved characters
    decoded, the others upper-cased (RFC 3261 19.1.4: "characters other
    than those in the reserved set are equivalent to their encoding")."""
    if "%" not in text:
        return text
    return _ESCAPE_ANY.sub(_canon_escape, text)


def format_host(host: str) -> str:
    """A host as written in a URI or Via: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@functools.lru_cache(maxsize=4096)
def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 address literal (brackets allowed), not a host name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class URI:
    """A parsed URI.

    For ``sip``/``sips``: ``user``, ``password``, ``host`` (IPv6 without
    brackets), ``port`` (None when absent), ``params`` (:class:`Params`,
    values as written), ``headers`` (list of (name, value) as written).
    For ``tel``: ``user`` holds the telephone-subscriber number as written,
    ``host`` and ``port`` are None, ``params`` the tel parameters.
    For any other scheme: ``opaque`` holds everything after ``scheme:``.
    """

    __slots__ = ("scheme", "user", "password", "host", "port", "params", "headers", "opaque")

    def __init__(
        self,
        scheme: str = "sip",
        user: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
        params: Optional[Params | dict] = None,  # type: ignore[type-arg]
        headers: Optional[list[tuple[str, str]]] = None,
        password: Optional[str] = None,
        opaque: Optional[str] = None,
    ) -> None:
        self.scheme = scheme.lower()
        self.user = user
        self.password = password
        self.host = host[1:-1] if host and host.startswith("[") else host
        self.port = port
        if params is None:
            params = Params()
        elif not isinstance(params, Params):
            params = Params(params.items())
        self.params: Params = params
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.opaque = opaque

    # -- views

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> Optional[str]:
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def maddr(self) -> Optional[str]:
        return self.params.get("maddr")

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def hostport(self) -> str:
        h = format_host(self.host or "")
        return h if self.port is None else f"{h}:{self.port}"

    def copy(self) -> "URI":
        return URI(
            self.scheme,
            self.user,
            self.host,
            self.port,
            self.params.copy(),
            list(self.headers),
            self.password,
            self.opaque,
        )

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{self.params.serialize()}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.hostport)
        if self.params:
            out.append(self.params.serialize())
        if self.headers:
            out.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(out)

    def __repr__(self) -> str:
        return f"<URI {self}>"

    # -- comparison, RFC 3261 section 19.1.4 and RFC 3966 section 4

    def _key(self) -> tuple:  # type: ignore[type-arg]
        if self.opaque is not None:
            return (self.scheme, canonical(self.opaque))
        if self.scheme == "tel":
            return ("tel", _tel_digits(self.user or ""))
        return (
            self.scheme,
            canonical(self.user) if self.user is not None else None,
            canonical(self.password) if self.password is not None else None,
            (self.host or "").lower(),
            self.port,
        )

    def equivalent(self, other: "URI") -> bool:
        """URI equality of RFC 3261 section 19.1.4 (sip, sips), RFC 3966
        section 4 (tel), or case-insensitive-scheme text equality."""
        if not isinstance(other, URI) or self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self._key() == other._key()
        if self.scheme == "tel":
            if _tel_digits(self.user or "") != _tel_digits(other.user or ""):
                return False
            # RFC 3966 4: every parameter must be in both and equal.
            return _canon_params(self.params) == _canon_params(other.params)
        # userinfo is case-sensitive, the rest is not.
        if self._key()[1:3] != other._key()[1:3]:
            return False
        if _host_key(self.host) != _host_key(other.host) or self.port != other.port:
            return False
        a = _canon_params(self.params)
        b = _canon_params(other.params)
        for name in a.keys() | b.keys():
            in_a, in_b = name in a, name in b
            if in_a and in_b:
                if a[name] != b[name]:
                    return False
            elif name in _MUST_MATCH:
                # "A user, ttl, or method uri-parameter appearing in only one
                # URI never matches ... A URI that includes an maddr parameter
                # will not match a URI that contains no maddr parameter."
                # transport too: the section's own examples call
                # sip:bob@biloxi.com and sip:bob@biloxi.com;transport=udp
                # different ("can resolve to different transports").
                return False
        # "URI header components are never ignored."
        ha = sorted((canonical(n).lower(), canonical(v).lower()) for n, v in self.headers)
        hb = sorted((canonical(n).lower(), canonical(v).lower()) for n, v in other.headers)
        return ha == hb

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = parse_uri(other)
            except ParseError:
                return False
        if not isinstance(other, URI):
            return NotImplemented
        return self.equivalent(other)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        key = self._key()
        if self.scheme in ("sip", "sips") and self.opaque is None:
            key = (key[0], key[1], key[2], _host_key(self.host), self.port)
        return hash(key)


accel.register_class("URI", URI)

_MUST_MATCH = frozenset(("user", "ttl", "method", "maddr", "transport"))


def _canon_params(params: Params) -> dict[str, Optional[str]]:
    """Parameters for comparison: names and values canonical, lower case."""
    return {canonical(k).lower(): _pcanon(v) for k, v in params.items()}


def _pcanon(value: Optional[str]) -> Optional[str]:
    return canonical(value).lower() if value is not None else None


def _host_key(host: Optional[str]) -> str:
    if not host:
        return ""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return host.lower()
    return host.lower().rstrip(".")


_TEL_VISUAL = re.compile(r"[\-.()]")


def _tel_digits(number: str) -> str:
    return _TEL_VISUAL.sub("", unescape(number)).upper()


# -- parsing ----------------------------------------------------------------


def _split_params(text: str, what: str) -> Params:
    """``;a=b;c`` (text after the first ';') -> Params; validated."""
    params = Params()
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name or not _PARAMCHARS.fullmatch(name):
            raise ParseError(f"{what}: invalid URI parameter {item!r}")
        if eq and not _PARAMCHARS.fullmatch(value):
            raise ParseError(f"{what}: invalid value of URI parameter {name!r}")
        if name.lower() in params:
            # RFC 3261 19.1.1: "any given parameter name MUST NOT appear
            # more than once."
            raise ParseError(f"{what}: URI parameter {name!r} appears more than once")
        params[name] = value if eq else None
    return params


_PCH = r"A-Za-z0-9\-_.!~*'()\[\]/:&+$"
# The common shape: [user@]host[:port][;params], no escapes, no password,
# no headers.  Anything else takes the general path below.
_SIP_FAST = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?"
    r"([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?|\[[0-9A-Fa-f:.]+\])"
    r"(?::([0-9]{1,5}))?"
    rf"((?:;[{_PCH}]+(?:=[{_PCH}]+)?)*)"
).fullmatch


USER_CHARS = r"A-Za-z0-9\-_.!~*'()&=+$,;?/"
HOST_FAST = r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?|\[[0-9A-Fa-f:.]+\]"
PARAM_CHARS = _PCH


def build_sip_uri(
    scheme: str, user: Optional[str], host: str, port: Optional[str], ptext: Optional[str], what: str
) -> URI:
    """A sip/sips URI from pieces a fast regex matched (no escapes, no
    password, no headers); checks what the regex could not."""
    if host[0] == "[":
        host = check_ipv6(host[1:-1], what)
    else:
        check_host(host, what)
    p = None
    if port is not None:
        p = int(port)
        if p > 65535:
            raise ParseError(f"{what}: port {p} is out of range")
    if ptext:
        params = simple_params(ptext)
        if params is None:
            # RFC 3261 19.1.1: "any given parameter name MUST NOT appear
            # more than once."
            raise ParseError(f"{what}: a URI parameter appears more than once")
    else:
        params = new_params()
    u = URI.__new__(URI)
    u.scheme = scheme
    u.user = user
    u.password = None
    u.host = host
    u.port = p
    u.params = params
    u.headers = []
    u.opaque = None
    return u


def _parse_sip(scheme: str, rest: str, what: str) -> URI:
    m = _SIP_FAST(rest)
    if m is not None:
        return build_sip_uri(scheme, *m.groups(), what)  # type: ignore[misc]
    return _parse_sip_general(scheme, rest, what)


def _parse_sip_general(scheme: str, rest: str, what: str) -> URI:
    user: Optional[str] = None
    password: Optional[str] = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        # user may hold ';', '?' and '/' (RFC 3261 25.1 user-unreserved,
        # RFC 4475 3.1.1.9); ':' starts the password.
        colon = userinfo.find(":")
        if colon >= 0:
            password = userinfo[colon + 1 :]
            userinfo = userinfo[:colon]
            if not _PASSWORD.fullmatch(password):
                raise ParseError(f"{what}: invalid password in {scheme} URI")
        if not _USER.fullmatch(userinfo):
            raise ParseError(f"{what}: invalid user part {show(userinfo)!r}")
        user = userinfo
    headers: list[tuple[str, str]] = []
    q = rest.find("?")
    if q >= 0:
        htext = rest[q + 1 :]
        rest = rest[:q]
        for item in htext.split("&"):
            name, eq, value = item.partition("=")
            if not eq or not _HNAME.fullmatch(name) or not _HVALUE.fullmatch(value):
                raise ParseError(f"{what}: invalid URI header {show(item)!r}")
            headers.append((name, value))
    params: Optional[Params] = None
    if rest.startswith("["):
        end = rest.find("]")
        semi = rest.find(";", end if end >= 0 else 0)
    else:
        semi = rest.find(";")
    if semi >= 0:
        params = _split_params(rest[semi + 1 :], what)
        rest = rest[:semi]
    if not rest:
        raise ParseError(f"{what}: {scheme} URI has no host")
    host, port = parse_hostport(rest, what)
    return URI(scheme, user, host, port, params, headers, password)


_TEL_GLOBAL = re.compile(r"\+[0-9\-.()]*[0-9][0-9\-.()]*")
_TEL_LOCAL = re.compile(r"[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*")


def _parse_tel(rest: str, what: str) -> URI:
    number, _, ptext = rest.partition(";")
    params = _split_params(ptext, what) if ptext else Params()
    if _TEL_GLOBAL.fullmatch(number):
        pass
    elif _TEL_LOCAL.fullmatch(number):
        # RFC 3966 section 5.1.5: a local number MUST have a phone-context.
        if "phone-context" not in params:
            raise ParseError(f"{what}: local tel number {number!r} has no phone-context")
    else:
        raise ParseError(f"{what}: invalid tel number {show(number)!r}")
    return URI("tel", number, None, None, params)


_OPAQUE_BAD = re.compile(r"[\x00-\x20\x7f<>\"]")


_C_SIP_URI = None


def _bind(c: object) -> None:
    global _C_SIP_URI
    _C_SIP_URI = getattr(c, "sip_uri", None)


accel.register(_bind)


def parse_uri(text: str, what: str = "URI") -> URI:
    """Parse an absolute URI; raise :class:`ParseError` naming ``what``.

    Unknown schemes (e.g. ``soap.beep://...``, RFC 4475 3.3.3) are kept
    opaque: a proxy may not understand them but must not choke on them.
    """
    if _C_SIP_URI is not None:
        # The compiled fast path (accel.py): the same URI, or None.
        u = _C_SIP_URI(text)
        if u is not None:
            return u  # type: ignore[no-any-return]
    if text[:4] == "sip:" and "%" not in text:
        return _parse_sip("sip", text[4:], what)
    colon = text.find(":")
    if colon <= 0 or not _SCHEME.fullmatch(text, 0, colon):
        raise ParseError(f"{what}: {show(text)!r} is not an absolute URI")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if "%" in rest and _BAD_PERCENT.search(rest) and scheme in ("sip", "sips", "tel"):
        raise ParseError(f"{what}: invalid %-escape in {show(text)!r}")
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest, what)
    if scheme == "tel":
        return _parse_tel(rest, what)
    if not rest or _OPAQUE_BAD.search(rest):
        raise ParseError(f"{what}: invalid {scheme} URI {show(text)!r}")
    return URI(scheme, opaque=rest)
