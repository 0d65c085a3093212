"""Route, Record-Route, Via and next hops: RFC 3261 16.4, 16.6 and RFC 5658.

Pure functions on messages, plus the small choice of which of our
addresses faces a given peer; the response context and the core call them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
from urllib.parse import quote
from typing import Any, Callable, Sequence

import attrs

from sosimple_proxy.sip import worker_tag
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Request
from sosimple_proxy.sip.randomness import random_hex
from sosimple_proxy.sip.grammar import new_params
from sosimple_proxy.sip.uri import URI, format_host, is_ip, parse_uri
from sosimple_proxy.sip.via import Via

# Our branches: the RFC 3261 magic cookie, then a tag of ours, then the loop
# hash of 16.6 step 8, then a per-branch random part.
BRANCH_PREFIX = "z9hG4bKsp"
_LOOP_LEN = 16


def loop_hash(request: Request) -> str:
    """The part of our branch that detects loops (16.3 step 4, 16.6 step 8).

    16.6 step 8 lists "the To tag, From tag, Call-ID header field, the
    Request-URI of the request received (before translation), the topmost
    Via header, and the sequence number from the CSeq header field, in
    addition to any Proxy-Require and Proxy-Authorization header fields".
    We leave out the topmost Via: a looped request comes back with another
    hop's Via on top, so with it no loop would ever match.  A request that
    comes back changed (a new Request-URI: a spiral) hashes differently and
    is allowed.
    """
    h = request.headers
    parts = [
        request.uri,
        _tag(h.get("to")),
        _tag(h.get("from")),
        h.get("call-id") or "",
        (h.get("cseq") or "").split(None, 1)[0] if h.get("cseq") else "",
        ",".join(h.get_all("proxy-require")),
        ",".join(h.get_all("proxy-authorization")),
    ]
    return hashlib.blake2b("\x00".join(parts).encode("utf-8", "replace"), digest_size=8).hexdigest()


def _tag(value: str | None) -> str:
    if not value:
        return ""
    low = value.lower()
    i = low.rfind(";tag=")
    if i < 0:
        return ""
    rest = value[i + 5 :]
    return rest.split(";", 1)[0].strip()


def new_proxy_branch(lhash: str) -> str:
    # worker_tag.SUFFIX: which worker's transaction this is ([proxy] workers)
    return f"{BRANCH_PREFIX}{lhash}.{random_hex(8)}{worker_tag.SUFFIX}"


def stateless_branch(request: Request, lhash: str) -> str:
    """A branch that is the same for retransmissions (16.11), e.g. a 2xx ACK."""
    via = request.top_via
    seed = (via.branch or "") if via is not None else ""
    return f"{BRANCH_PREFIX}{lhash}.{hashlib.blake2b(seed.encode(), digest_size=4).hexdigest()}"


def is_looped(request: Request, lhash: str, is_our_hostport: Callable[[str, int | None], bool]) -> bool:
    """16.3 step 4: one of our Vias below the top carries this very hash."""
    marker = BRANCH_PREFIX + lhash
    for via in request.vias:
        branch = via.branch
        if branch and branch.startswith(marker) and is_our_hostport(via.host, via.port):
            return True
    return False


# --- 16.4 Route information preprocessing


FLOW_PREFIX = "f-"


def flow_token(flow: str) -> str:
    """A Route user part naming a connection (``"tcp:192.0.2.4:40123"``).

    Our Path entries in the ring carry it, so that a request another proxy
    sends through us leaves by the connection the UA registered over (NAT:
    its Contact may not be reachable, RFC 5626's idea of a flow).
    """
    return FLOW_PREFIX + base64.urlsafe_b64encode(flow.encode()).decode().rstrip("=")


def flow_of(user: str | None) -> str | None:
    if not user or not user.startswith(FLOW_PREFIX):
        return None
    raw = user[len(FLOW_PREFIX):]
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def _our_entry(uri: URI, is_ours: Callable[[URI], bool]) -> bool:
    return uri.is_sip and (not uri.user or flow_of(uri.user) is not None) and is_ours(uri)


def preprocess_routes(request: Request, is_ours: Callable[[URI], bool], source: Peer | None = None) -> None:
    """Strict-router fix-up and removal of our own Route entries (16.4).

    "If the Request-URI contains a value this proxy previously placed into
    a Record-Route header field [...], the proxy MUST replace the
    Request-URI in the request with the last value from the Route header
    field, and remove that value from the Route header field."  Then "If the
    first value in the Route header field indicates this proxy [...], the
    proxy MUST remove that value from the request."  With RFC 5658 double
    Record-Route, two of our entries may lead the Route set: both go.

    An entry of ours may name a flow (a connection a UA reached us over,
    see :func:`flow_token`): the request then leaves over that flow, unless
    it came in over it (``source``), which means it is going the other way
    (RFC 5626 section 5.3).
    """
    headers = request.headers
    if "route" not in headers:
        return
    ruri = request.ruri
    if ruri.is_sip and not ruri.user and is_ours(ruri):
        routes = request.routes
        if routes:
            last = routes[-1]
            request.uri = str(last.uri)
            _drop_last_route(request)
    while True:
        routes = request.routes
        if not routes:
            return
        top = routes[0].uri
        if not _our_entry(top, is_ours):
            return
        headers.pop_first_value("route")
        flow = flow_of(top.user)
        if flow is not None and not (source is not None and parse_flow(flow) == source):
            request.flow = flow


def _drop_last_route(request: Request) -> None:
    headers = request.headers
    values = headers.values("route")
    headers.remove("route")
    for v in values[:-1]:
        headers.add("Route", v)


def push_routes(request: Request, route: Sequence[str]) -> None:
    """Put ``route`` (top first) in front of the existing Route values."""
    for value in reversed(route):
        request.headers.prepend("Route", value)


def next_hop(request: Request) -> URI:
    """Where the request goes next (16.6 steps 6 and 7).

    "If the copy contains a Route header field, the proxy MUST inspect the
    URI in its first value.  If that URI does not contain an lr parameter,
    the proxy MUST modify the copy as follows: The proxy MUST place the
    Request-URI into the Route header field as the last value.  The proxy
    MUST then place the first Route header field value into the
    Request-URI and remove that value from the Route header field."
    """
    routes = request.routes
    if not routes:
        return request.ruri
    top = routes[0].uri
    if top.lr:
        return top
    request.headers.pop_first_value("route")
    request.headers.add("Route", f"<{request.uri}>")
    request.uri = str(top)
    return request.ruri


def decrement_max_forwards(request: Request) -> None:
    """16.6 step 3: decrement, or add 70 when absent."""
    mf = request.max_forwards
    request.headers.set("Max-Forwards", str(70 if mf is None else max(mf - 1, 0)))


# --- addresses


def uri_transport(uri: URI) -> str:
    """The transport a URI asks for.  A ``sips:`` URI over TCP is TLS
    (RFC 3261 26.2.2, RFC 5630 section 3.1.1: ``transport=tcp`` in a SIPS
    URI means TLS over TCP)."""
    t = uri.transport
    if uri.secure and t in (None, "tcp", "tls"):
        return "tls"
    return t or "udp"


def tls_domain(uri: URI) -> str | None:
    """The SIP domain a TLS next hop chosen by ``uri`` must prove with its
    certificate (RFC 5922 section 4: the host part of the URI that was
    resolved, not what DNS turned it into), or None when the host is an
    address literal: the certificate must then name that address (an
    IP-address subjectAltName).  A ``maddr`` only says where to connect."""
    host = (uri.host or "").strip("[]")
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower().rstrip(".")
    return None


def with_tls_domain(dest: Peer, hop: URI) -> Peer:
    """``dest``, resolved from the next-hop URI ``hop``, with the domain its
    certificate must prove when it is a TLS hop (see :func:`tls_domain`)."""
    if dest.transport != "tls" or dest.domain is not None:
        return dest
    domain = tls_domain(hop)
    return attrs.evolve(dest, domain=domain) if domain else dest


#: The reason phrase of the 480 for a SIPS request with no TLS way onward.
NOT_OVER_TLS = "Temporarily Unavailable: a sips: request may leave only over TLS, and {dest} is {transport}"


def insecure_hop(secure: bool, dest: Peer) -> str | None:
    """Why a request may not go to ``dest``: a SIPS request (``secure``, see
    :func:`must_stay_secure`) over anything but TLS.  RFC 3261 26.2.2
    (a SIPS URI means TLS on each hop) as RFC 5630 section 3.1.3 tightens
    it, with no exception for the last hop; the caller answers 480."""
    if secure and dest.transport != "tls":
        return NOT_OVER_TLS.format(dest=dest.hostport(), transport=dest.transport.upper())
    return None


def must_stay_secure(request: Request) -> bool:
    """A ``sips:`` Request-URI, or a ``sips:`` next hop: every hop must be
    TLS (RFC 5630 section 3.1.3 removes RFC 3261's last-hop exception)."""
    if request.ruri.secure:
        return True
    routes = request.routes
    return bool(routes) and routes[0].uri.secure


def uri_address(uri: URI) -> tuple[str, str, int]:
    """(transport, host, port) of a SIP URI, before any name resolution."""
    transport = uri_transport(uri)
    host = (uri.maddr or uri.host or "").strip("[]")
    port = uri.port or (5061 if transport == "tls" else 5060)
    return transport, host, port


def parse_flow(text: str | None) -> Peer | None:
    """``"tcp:127.0.0.1:5000"`` (a registration's source) as a Peer."""
    if not text:
        return None
    try:
        transport, rest = text.split(":", 1)
        host, _, port = rest.rpartition(":")
        return Peer(transport, host.strip("[]"), int(port))
    except ValueError:
        return None


def egress(listening: Sequence[ListenAddress], dest: Peer) -> ListenAddress | None:
    """The listen address that faces ``dest``: same transport and family,
    loopback for a loopback peer; None when we have no such listener."""
    family6 = ":" in dest.host
    same = [a for a in listening if a.transport == dest.transport and (":" in a.host) == family6]
    if not same:
        return None
    loop = _is_loopback(dest.host)
    for a in same:
        if a.host == dest.host:
            return a
    for a in same:
        if _is_loopback(a.host) == loop:
            return a
    return same[0]


@functools.lru_cache(maxsize=4096)
def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def via_value(local: ListenAddress, transport: str, branch: str) -> str:
    return f"SIP/2.0/{transport.upper()} {format_host(local.host)}:{local.port};branch={branch};rport"


def own_via(local: ListenAddress, transport: str, branch: str) -> Via:
    """:func:`via_value` as the parsed view, for the message's cache (the
    transaction layer reads the branch of what we have just written)."""
    params = new_params()
    dict.__setitem__(params, "branch", branch)
    dict.__setitem__(params, "rport", None)
    return Via(transport, local.host, local.port, params)


def record_route_value(
    local: ListenAddress, r2: bool = False, user: str | None = None, secure: bool = False, stamp: str | None = None
) -> str:
    """``<sip:host:port;transport=X;lr>`` for one of our listen addresses;
    ``stamp`` is the dialog's HMAC (:mod:`sosimple_proxy.proxy.dialog_stamp`).

    A TLS address is ``<sips:host:port;lr>`` when ``secure`` (a SIPS
    request: RFC 3261 16.6 step 4, "the URI placed into the Record-Route
    header field MUST be a SIPS URI"), else ``sip:`` with ``transport=tls``,
    which keeps a ``sip:`` dialog ``sip:`` (RFC 5630 section 3.1.3: a SIPS
    Record-Route would oblige the whole dialog to TLS) while in-dialog
    requests still reach us by TLS.
    """
    u = f"{user}@" if user else ""
    tail = f";lr{';r2=on' if r2 else ''}{f';sst={stamp}' if stamp else ''}"
    if local.transport == "tls" and secure:
        return f"<sips:{u}{format_host(local.host)}:{local.port}{tail}>"
    t = "" if local.transport == "udp" else f";transport={local.transport}"
    return f"<sip:{u}{format_host(local.host)}:{local.port}{t}{tail}>"


def add_record_route(
    request: Request,
    inbound: ListenAddress | None,
    outbound: ListenAddress | None,
    inbound_flow: Peer | None = None,
    outbound_flow: Peer | None = None,
    stamp: str | None = None,
) -> None:
    """16.6 step 4, with RFC 5658 double Record-Route.

    When the request leaves by another transport or address than it came
    in on, we add two entries, each naming the interface that faces its
    side: the UAS's route set starts with the top (outbound) one, the
    UAC's, reversed, with the lower (inbound) one.  ``request`` is the copy
    after its next hop was chosen (16.6 step 6), so a ``sips:`` top Route
    counts as well as a ``sips:`` Request-URI.

    ``inbound_flow`` (the connection the request came over) and
    ``outbound_flow`` (a UA's connection it leaves over), when they are TLS
    connections (see :func:`flow_user`), put a flow token in the entry facing
    that side, so that in-dialog requests reach the UA over
    its connection: a phone behind NAT, or one with no TLS server
    certificate, cannot be connected to (RFC 5626 section 5.3, as for Path).
    Two flows on one interface need two entries, one token each.
    """
    inbound = inbound or outbound
    if inbound is None:
        return
    secure = must_stay_secure(request)
    value = functools.partial(record_route_value, secure=secure, stamp=stamp)
    in_user = flow_user(inbound_flow)
    out_user = flow_user(outbound_flow)
    if outbound is None or outbound == inbound:
        if in_user and out_user:
            request.headers.prepend("Record-Route", value(inbound, user=in_user))
            request.headers.prepend("Record-Route", value(inbound, user=out_user))
            return
        user = in_user or out_user
        request.headers.prepend("Record-Route", value(inbound, user=user))
        return
    request.headers.prepend("Record-Route", value(inbound, r2=True, user=in_user))
    request.headers.prepend("Record-Route", value(outbound, r2=True, user=out_user))


def flow_user(flow: Peer | None) -> str | None:
    """The Record-Route user part naming ``flow``, a TLS connection; None
    otherwise.  Only TLS: a phone hardly ever has a TLS server certificate,
    so the way to it is the connection it opened, while over TCP it listens
    on its Contact's port as it always did (and UDP keeps no connection)."""
    if flow is None or flow.transport != "tls":
        return None
    return flow_token(f"{flow.transport}:{flow.hostport()}")


#: ``[overlay] publish_path``: every binding goes into the ring with our Path
PATH_ALWAYS = "always"
#: ... or only those the other proxies cannot reach without us (:func:`reached_directly`)
PATH_NEEDED = "needed"


def self_route(
    listening: Sequence[ListenAddress],
    binding: Any = None,
    stamp: Callable[[Any, float], str] | None = None,
    publish_path: str = PATH_ALWAYS,
) -> str | None:
    """How other proxies of the ring reach this one: a Route value (UDP
    first); for a binding registered over a connection, one that names the
    flow, so the request leaves by the UA's own connection.  ``stamp(contact,
    expires_at)`` (:class:`sosimple_proxy.proxy.path_stamp.PathStamp.value`)
    adds ``;pst=``, by which we know the entry again after a restart.

    With ``publish_path = needed`` a binding :func:`reached_directly` gets
    none: RFC 3327 (section 5) leaves adding Path to the registrar's edge
    proxy, and a UA that registered over UDP from the very address its
    Contact names is reached as well from any proxy of the ring, one proxy
    and two datagrams fewer per message.  Only for rings whose proxies can
    all reach the UAs' addresses (one network, public addresses): a proxy
    elsewhere cannot route to a private Contact, and a UA's firewall may
    let in only its own registrar.
    """
    if not listening:
        return None
    if publish_path == PATH_NEEDED and binding is not None and reached_directly(binding):
        return None
    first = next((a for a in listening if a.transport == "udp"), listening[0])
    received = getattr(binding, "received", None)
    flow = parse_flow(received)
    user = flow_token(received) if flow is not None and flow.reliable else None  # type: ignore[arg-type]
    value = record_route_value(first, user=user)
    if stamp is not None and binding is not None:
        try:
            contact = parse_uri(binding.contact)
        except Exception:
            return value
        value = f"{value[:-1]};pst={stamp(contact, binding.expires_at)}>"
    return value


def reached_directly(binding: Any) -> bool:
    """Whether a binding needs no proxy of ours on the way to it: registered
    over UDP (no connection to keep using) from the address and port its
    Contact names (no NAT rewrote them: the RFC 3581 received/rport are the
    Contact's), a plain ``sip:`` Contact over UDP with an IP literal (no
    ``maddr``, no name to resolve differently elsewhere), no Path of its own
    (an edge proxy in front of it) and no RFC 5626 reg-id (an outbound flow,
    which the edge proxy keeps alive)."""
    if getattr(binding, "path", ()) or getattr(binding, "reg_id", None) is not None:
        return False
    flow = parse_flow(getattr(binding, "received", None))
    if flow is None or flow.transport != "udp":
        return False
    try:
        uri = parse_uri(binding.contact)
    except Exception:
        return False
    if uri.scheme != "sip" or not uri.host or not is_ip(uri.host) or "maddr" in uri.params:
        return False
    if (uri.params.get("transport") or "udp").lower() != "udp":
        return False
    try:
        same_host = ipaddress.ip_address(uri.host.strip("[]")) == ipaddress.ip_address(flow.host)
    except ValueError:
        return False
    return same_host and (uri.port or 5060) == flow.port


def has_to_tag(request: Request) -> bool:
    """A To tag: the request belongs to a dialog (RFC 3261 12.2)."""
    to = request.headers.get("to") or ""
    return ";tag=" in to.replace(" ", "").lower()


def copy_request(request: Request) -> Request:
    copy = Request(request.method, request.uri, request.headers.copy(), request.body, request.version)
    copy.adopt_views(request)  # same header values: the parsed views hold (they are never mutated)
    return copy


def escaped_route_contact(uri: URI, route: Sequence[str]) -> str:
    """A Contact URI that carries a Route as a URI header (RFC 3261 19.1.5).

    Used by redirect mode for targets reached through a Path.
    """
    if not route:
        return str(uri)
    u = uri.copy()
    u.headers = list(u.headers) + [("Route", quote(",".join(route), safe=""))]
    return str(u)

