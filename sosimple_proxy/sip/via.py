"""The Via header field (RFC 3261 20.42, 18.2; RFC 3581 rport; RFC 5118 IPv6):
parsing it, recording in it where a request really came from, and reading
from it where a response goes.

Via is what ties a response to the path its request took, so the rules
that read and write it live together here, apart from the transaction
state machines that use them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any, Iterable, Optional, Union

import attrs

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.errors import ParseError, show
from sosimple_proxy.sip.grammar import (
    TOKEN,
    TOKEN_CHARS,
    TOKEN_RE,
    Params,
    check_host,
    check_ipv6,
    first_element,
    new_params,
    parse_params,
    simple_params,
    split_commas,
    unfold,
)
from sosimple_proxy.sip import accel, worker_tag
from sosimple_proxy.sip.randomness import random_hex
from sosimple_proxy.sip.timers import is_reliable

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.message import Request

__all__ = [
    "MAGIC_COOKIE",
    "Via",
    "new_branch",
    "parse_via",
    "parse_vias",
    "parse_top_via",
    "stamp_via",
    "response_peer",
    "default_port",
]

#: RFC 3261 8.1.1.7: "The branch ID inserted by an element compliant with
#: this specification MUST always begin with the characters "z9hG4bK"."
MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits (and,
    in a worker process, which worker made it: :mod:`.worker_tag`)."""
    return MAGIC_COOKIE + random_hex(16) + worker_tag.SUFFIX


# -- parsing --------------------------------------------------------------------

_VIA_FRONT = re.compile(
    rf"[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]*/[ \t]*({TOKEN})[ \t]+"
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
        via = Via.__new__(Via)  # the fields are valid already: no __init__ checks
        via.protocol = self.protocol
        via.version = self.version
        via.transport = self.transport
        via.host = self.host
        via.port = self.port
        via.params = self.params.copy()
        return via

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


accel.register_class("Via", Via)

# The compiled fast path (accel.py): the same Via for the shapes below, or None.
_C_VIA = _C_VIAS = None


def _bind(c: object) -> None:
    global _C_VIA, _C_VIAS
    _C_VIA = getattr(c, "via", None)
    _C_VIAS = getattr(c, "vias", None)


accel.register(_bind)

# The common shape, no optional white space: SIP/2.0/UDP host:port;a=b;c
_VIA_FAST = re.compile(
    r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9][A-Za-z0-9\-.]*|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?"
    rf"((?:;[{TOKEN_CHARS}]+(?:=[{TOKEN_CHARS}:\[\]]+)?)*)"
).fullmatch


# What user agents send: SIP/2.0/UDP host[:port];branch=token[;rport]
_VIA_HOT = re.compile(
    r"SIP/2\.0/([A-Z]+) ([A-Za-z0-9][A-Za-z0-9\-.]*)(?::([0-9]{1,5}))?"
    rf";branch=([{TOKEN_CHARS}]+)(;rport)?"
).fullmatch


def parse_via(text: str) -> Via:
    """Parse one via-parm (RFC 3261 25.1)."""
    if _C_VIA is not None:
        via = _C_VIA(text)
        if via is not None:
            return via  # type: ignore[no-any-return]
    m = _VIA_HOT(text)
    if m is not None:
        transport, host, port, branch, rport = m.groups()
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
        else:
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
    if _C_VIAS is not None:
        vias = _C_VIAS(values)
        if vias is not None:
            return vias  # type: ignore[no-any-return]
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
    return parse_via(first_element(unfold(value)))


# -- where a request came from, where its response goes (RFC 3261 18.2, RFC 3581)


def _bare(host: str) -> str:
    return host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host


def _same_address(a: str, b: str) -> bool:
    a, b = _bare(a), _bare(b)
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False  # a domain name never equals the packet's address


def _split_at_semicolons(text: str) -> list[str]:
    """Split a via-parm at ';' outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    out, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _stamped_via_text(raw: str, received: str | None, rport: int | None) -> str:
    low = raw.lower()
    if rport is not None and raw.endswith(";rport") and "received" not in low and low.count("rport") == 1:
        # What user agents send (RFC 3581): rport last and valueless, no
        # received yet -- the general case below gives the same text.
        tail = f";received={received}" if received is not None else ""
        return f"{raw[:-6]};rport={rport}{tail}"
    return _stamped_via_text_general(raw, received, rport)


def _stamped_via_text_general(raw: str, received: str | None, rport: int | None) -> str:
    parts = _split_at_semicolons(raw)
    out = [parts[0]]
    for p in parts[1:]:
        name = p.split("=", 1)[0].strip().lower()
        if name == "received" and received is not None:
            continue
        if name == "rport" and rport is not None:
            p = f"rport={rport}"
        out.append(p)
    if received is not None:
        out.append(f"received={received}")
    return ";".join(out)


def stamp_via(request: Request, source: Peer) -> bool:
    """Record in the top Via where ``request`` really came from.

    RFC 3261 18.2.1: "If the host portion of the "sent-by" parameter
    contains a domain name, or if it contains an IP address that differs
    from the packet source address, the server MUST add a "received"
    parameter to that Via header field value.  This parameter MUST contain
    the source address from which the packet was received."

    RFC 3581 section 4: "If this Via header field value contains an "rport"
    parameter with no value, it MUST set the value of the parameter to the
    source port of the request. [...] the server MUST also add a "received"
    parameter containing the source IP address that the request came from,
    even if it is identical to the value of the "sent-by" component."

    Returns True if the Via was changed.  The TransactionLayer calls this
    for every request it passes to the TU.
    """
    via = request.top_via
    if via is None:
        return False
    params = via.params
    rport = None
    if "rport" in params and not params["rport"]:
        rport = source.port
    received = None
    if rport is not None or not _same_address(via.host, source.host):
        received = source.host
    if received is None and rport is None:
        return False
    headers = request.headers
    vias = request.peek_view("vias")
    raw = headers.get("via")
    if raw is not None and "," not in raw:
        # The usual case: the top Via alone on its line, replaced in place.
        headers.replace_first("via", _stamped_via_text(raw.strip(), received, rport))
    else:
        name = next(n for n, _v in headers if n.lower() in ("via", "v"))  # as written, compact or not
        raw = headers.pop_first_value("via")
        assert raw is not None
        headers.prepend(name, _stamped_via_text(raw, received, rport))
    # The stamped Via as a view, so that nobody parses it again: the same
    # parameters, received and rport set as in the text above.
    stamped = via.copy()
    if received is not None:
        stamped.params.pop("received", None)
        stamped.params["received"] = received
    if rport is not None:
        stamped.params["rport"] = str(rport)
    request.put_view("top_via", stamped)
    if vias:
        request.put_view("vias", [stamped, *vias[1:]])
    return True


def default_port(transport: str) -> int:
    """The port a sent-by without one means (RFC 3261 18.2.2, 19.1.2)."""
    return 5061 if transport.lower() in ("tls", "tls-sctp", "wss") else 5060


def response_peer(via: Any, source: Peer | None = None) -> Peer:
    """Where a response to a request with top Via ``via`` goes (RFC 3261 18.2.2, RFC 3581).

    With ``source`` (the Peer the request came from, as for every server
    transaction):

    * reliable transport: "the response MUST be sent using the existing
      connection to the source of the original request" -- the transport
      layer keeps connections keyed by Peer, so that is ``source``;
    * maddr: "the response MUST be forwarded to the address listed there,
      using the port indicated in "sent-by", or port 5060 if none is present";
    * rport (RFC 3581): "send it to the IP address indicated in the
      "received" parameter, and the port indicated in the "rport" parameter"
      -- the source address and port;
    * otherwise the received address (the source address, which is also the
      sent-by host when no received was needed) and the sent-by port.

    Without ``source`` (a proxy forwarding a stray response statelessly), the
    same rules read received/rport from the Via itself; a sent-by that is a
    domain name is returned as is and must be resolved (RFC 3263 section 5)
    by the caller.
    """
    transport = (source.transport if source is not None else via.transport).lower()
    params = via.params
    sent_port = via.port or default_port(transport)
    if source is not None:
        if is_reliable(transport):
            return source
        maddr = params.get("maddr")
        if maddr:
            return Peer(transport, _bare(maddr), sent_port)
        if "rport" in params:
            return source
        if source.port == sent_port:
            return source
        return attrs.evolve(source, port=sent_port)
    maddr = params.get("maddr")
    if maddr:
        return Peer(transport, _bare(maddr), sent_port)
    host = params.get("received") or via.host
    rport = params.get("rport")
    port = int(rport) if rport else sent_port
    return Peer(transport, _bare(host), port)
