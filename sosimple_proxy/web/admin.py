"""The admin HTTP API (``[admin] listen``): the operator's view of the ring.

The routes and their answers are an outside contract (``shared/site-ini.md``,
"Admin HTTP API"): scripts and the ``sosimple`` command depend on them.

- ``GET /health``: 200 once the node serves, 503 while it joins;
- ``GET /ring``: this node's place in the ring and what it stores;
- ``GET /ring/nodes``: each node it knows once, for the ring picture
  (``ringnodes.py``; the page under ``/ui/`` is ``ui.py``'s);
- ``GET /locate/{name}``: the nodes that hold a name;
- ``PUT``/``GET``/``DELETE /records/{name}``: raw ``blob`` records;
  ``GET /records/{name}?local=1`` reads only this node's own copy (an
  addition to the contract, for checking where copies are);
- ``GET /registrations``: this proxy's own users, from its binding table
  (``registrations.py``); ``GET /registrations/{aor}`` asks the ring;
- ``GET /domains/{domain}``: the domain record (the node keys that may
  write the domain's registrations); ``POST /authorize/{domain}`` (body: a
  key fingerprint) adds a key, ``POST /rebind/{domain or AoR}`` (body: key
  fingerprints, one a line) replaces the domain's keys or sets the user's
  public key, both signed by this node's key; ``PUT /rebind/{name}`` (body:
  a record already signed, by the CA say, wire-encoded) stores it as it is
  (``sosimple authorize``/``rebind``; the overlay's ``recordguard.py``);
- ``GET /limits``: the banned sources; ``DELETE /limits/banned/{address}``
  lifts a ban (the limiter comes from the composition root as an
  ``ILimitsView``; without one nobody is banned);
- ``/store/...``: the users' own data (``store.py``), when ``[store] listen``
  is empty; guarded by the users' credentials, not the admin's.

With ``[admin] users_file`` everything but ``/health`` (and the paths other
parties need) asks for credentials (``guard.py``); with ``certificate`` and
``key`` the listener speaks HTTPS (``listener.py``).

A name is the rest of the path after ``/records/`` or ``/locate/``,
percent-decoded, as UTF-8 (so ``a/b`` and ``a%2Fb`` are the same name).
Every error is ``{"error": "..."}`` with a fitting status; the ring being
unreachable is 503, not 500, because a retry may well succeed.

This module uses the overlay's public node API only, and nothing of SIP.
"""

from __future__ import annotations

import json
import math
from typing import Any, Awaitable, Callable, Mapping, Protocol

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from sosimple_proxy.location import regrecord
from sosimple_proxy.overlay import domainrecords, ids, wire
from sosimple_proxy.overlay.recordguard import Refused
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.node import ChordNode, LookupFailed, NotRunning, OverlayError, StoreFailed
from sosimple_proxy.security.limits import ILimitsView
from sosimple_proxy.security.users import UsersFile

from .credentials import DEFAULT_REALM, AdminCredentials
from .guard import AdminGuard
from .listener import admin_listener
from .registrations import LocalRegistrations
from .ringnodes import NodeStatus, ring_nodes
from .ui import AdminRoot
from .views import Views, calls_report, gateways_report

log = Logger()

#: the kind the API reads and writes; other kinds under a key are left alone
BLOB = "blob"
DEFAULT_TTL = 3600.0
#: a TTL beyond this (about 100 years) is surely a mistake
MAX_TTL = 100 * 365 * 86400.0


class Ring(Protocol):
    """What the API needs of a ring member (``OverlayService`` provides it)."""

    node: ChordNode | None
    keys: ids.KeyScheme
    ready: defer.Deferred


class ApiError(Exception):
    """An error answer: the status and the message of its JSON body."""

    def __init__(self, status: int, message: str, headers: Mapping[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class LimitedRequest(server.Request):
    """A request that stops buffering its body past the site's ``max_body``.

    twisted.web keeps a whole body before rendering; without this an
    oversized upload would fill memory or disk before we could say 413.
    """

    too_large = False
    _received = 0

    def _limit(self) -> int | None:
        return getattr(getattr(self.channel, "site", None), "max_body", None)

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self.too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class AdminSite(server.Site):
    """A ``Site`` whose requests refuse bodies over ``max_body`` bytes."""

    def __init__(self, resource: Resource, max_body: int, **kw: Any) -> None:
        super().__init__(resource, requestFactory=LimitedRequest, **kw)
        self.max_body = max_body


def _peer(p: Peer | None, m: int) -> dict | None:
    if p is None:
        return None
    return {"id": ids.format_id(p.id, m), "address": str(p.address)}


def _distinct(peers: Any) -> list[Peer]:
    seen: dict[Any, Peer] = {}
    for p in peers:
        seen.setdefault(p.address, p)
    return list(seen.values())


class AdminAPI(Resource):
    """The whole API as one leaf resource: a handful of routes, one dispatcher."""

    isLeaf = True

    def __init__(
        self,
        ring: Ring | None,
        max_name: int = 256,
        max_value: int = 1048576,
        limits: ILimitsView | None = None,
        status: NodeStatus | None = None,
        local: LocalRegistrations | None = None,
        views: Views | None = None,
        clock: Any = None,
    ) -> None:
        super().__init__()
        self.views = views if views is not None else Views()
        self.clock = clock
        self.ring = ring
        self.status = status
        self.local = local
        self.limits = limits
        self.max_name = max_name
        self.max_value = max_value

    # ------------------------------------------------------------ plumbing

    def render(self, request: server.Request) -> int:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        d = defer.Deferred.fromCoroutine(self._dispatch(method, request))
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
        d.addErrback(self._error_answer)
        d.addCallback(self._write, request, finished)
        d.addErrback(lambda f: log.failure("admin: writing the answer failed", f))
        return server.NOT_DONE_YET

    def _error_answer(self, failure: Failure) -> tuple[int, dict, bytes, str]:
        if failure.check(ApiError):
            e = failure.value
            return e.status, e.headers, _json({"error": e.message}), "application/json"
        if failure.check(LookupFailed, StoreFailed, NotRunning):
            return 503, {}, _json({"error": f"the ring did not answer: {failure.value}"}), "application/json"
        if failure.check(OverlayError):
            return 503, {}, _json({"error": str(failure.value)}), "application/json"
        log.failure("admin: request failed", failure)
        return 500, {}, _json({"error": f"internal error: {failure.type.__name__}"}), "application/json"

    def _write(self, answer: tuple[int, Mapping[bytes, bytes], bytes, str], request: server.Request, finished: list[bool]) -> None:
        if finished[0]:
            return  # the client went away
        status, headers, body, ctype = answer
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        if status != 204:
            request.setHeader(b"content-type", ctype.encode("ascii"))
            request.write(body)
        request.finish()

    async def _dispatch(self, method: str, request: server.Request) -> tuple[int, Mapping[bytes, bytes], bytes, str]:
        segments = list(request.postpath or [])
        head = segments[0].decode("utf-8", "replace") if segments else ""
        rest = segments[1:]
        routes: dict[str, dict[str, Callable[..., Awaitable[tuple]]]] = {
            "health": {"GET": self.health},
            "ring": {"GET": self.ring_view},
            "locate": {"GET": self.locate},
            "records": {"GET": self.get_record, "PUT": self.put_record, "DELETE": self.delete_record},
            "registrations": {"GET": self.registrations},
            "domains": {"GET": self.domain_view},
            "authorize": {"POST": self.authorize},
            "rebind": {"POST": self.rebind, "PUT": self.put_signed},
        }
        if head == "limits":
            return await self._limits_route(method, rest, request)
        if head in ("metrics", "calls", "gateways", ".well-known"):
            return await self._view_route(head, method, rest, request)
        handlers = routes.get(head)
        if handlers is None:
            raise ApiError(404, f"no such resource: {request.path.decode('utf-8', 'replace')}")
        if head == "ring" and rest == [b"nodes"] and method == "GET":
            return await self.ring_nodes_view()
        if head == "registrations" and rest in ([], [b""]) and method == "GET":
            return await self.local_registrations()
        if head in ("health", "ring"):
            if rest not in ([], [b""]):
                raise ApiError(404, f"no such resource: {request.path.decode('utf-8', 'replace')}")
        handler = handlers.get(method)
        if handler is None:
            allow = ", ".join(sorted(handlers))
            raise ApiError(405, f"{method} is not allowed here; use {allow}", {b"allow": allow.encode()})
        if head in ("health", "ring"):
            return await handler()
        if getattr(request, "too_large", False):
            raise ApiError(413, f"the body is over the limit of {self.max_value} bytes")
        name = self._name(rest)
        if head in ("records", "authorize", "rebind"):
            return await handler(name, request)
        return await handler(name)

    async def _limits_route(self, method: str, rest: list[bytes], request: server.Request) -> tuple:
        """``GET /limits`` and ``DELETE /limits/banned/{address}``."""
        if rest in ([], [b""]):
            allowed = "GET"
        elif len(rest) >= 2 and rest[0] == b"banned" and any(rest[1:]):
            allowed = "DELETE"
        else:
            raise ApiError(404, f"no such resource: {request.path.decode('utf-8', 'replace')}")
        if method != allowed:
            raise ApiError(405, f"{method} is not allowed here; use {allowed}", {b"allow": allowed.encode()})
        if allowed == "GET":
            return await self.limits_view()
        try:
            address = b"/".join(rest[1:]).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the address is not UTF-8") from None
        return await self.unban(address)

    async def _view_route(self, head: str, method: str, rest: list[bytes], request: server.Request) -> tuple:
        """``GET /metrics``, ``/calls``, ``/gateways`` and the ring's
        configuration document (views.py)."""
        if head == ".well-known":
            if rest != [b"sosimple-config"]:
                raise ApiError(404, f"no such resource: {request.path.decode('utf-8', 'replace')}")
        elif rest not in ([], [b""]):
            raise ApiError(404, f"no such resource: {request.path.decode('utf-8', 'replace')}")
        if method != "GET":
            raise ApiError(405, f"{method} is not allowed here; use GET", {b"allow": b"GET"})
        views = self.views
        if head == "metrics":
            if views.metrics is None:
                raise ApiError(404, "metrics are off ([metrics] enabled = no)")
            return 200, {}, views.metrics.render(), views.metrics.content_type
        if head == ".well-known":
            return self._config_document()
        now = self.clock.seconds() if self.clock is not None else 0.0
        if head == "calls":
            body = calls_report(views, now)
            if body is None:
                raise ApiError(503, "no SIP counts in this process ([proxy] listen is empty)")
            return 200, {}, _json(body), "application/json"
        if views.gateways is None:
            return 200, {}, _json({"gateways": []}), "application/json"
        return 200, {}, _json(gateways_report(views.gateways, views.prober, now)), "application/json"

    def _config_document(self) -> tuple:
        make = self.views.config_document
        if make is None:
            raise ApiError(404, "this node is in no ring ([overlay] listen is empty)")
        return 200, {}, make(), "application/json"

    def _name(self, rest: list[bytes]) -> str:
        raw = b"/".join(rest)
        if not raw:
            raise ApiError(400, "a name is needed after the slash")
        if len(raw) > self.max_name:
            raise ApiError(400, f"the name is {len(raw)} bytes, over the limit of {self.max_name}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the name is not UTF-8") from None

    def _node(self) -> ChordNode:
        ring = self.ring
        if ring is None:
            raise ApiError(503, "this node runs no overlay ([overlay] listen is empty)")
        node = ring.node
        if node is None or not node.joined:
            if ring.ready.called:
                raise ApiError(503, "the overlay failed to start; see the node's log")
            raise ApiError(503, "the node is joining the ring")
        if not node.running:
            raise ApiError(503, "the node has left the ring")
        return node

    def _key(self, name: str) -> int:
        assert self.ring is not None
        return self.ring.keys.key(name)

    # -------------------------------------------------------------- routes

    async def health(self) -> tuple:
        if self.ring is not None:
            self._node()
        return 200, {}, _json({"status": "ok"}), "application/json"

    async def ring_view(self) -> tuple:
        node = self._node()
        m = node.config.m
        primary, replica = node.counts()
        view = {
            "id": ids.format_id(node.id, m),
            "address": str(node.address),
            "predecessor": _peer(node.predecessor, m),
            # it has synced its whole range: a miss there is a real miss
            "synced": node.authoritative(node.id),
            "successors": [_peer(p, m) for p in node.successors],
            "fingers": [_peer(p, m) for p in node.finger_peers()],
            "records": primary + replica,
            "primary": primary,
            "replica": replica,
        }
        return 200, {}, _json(view), "application/json"

    async def ring_nodes_view(self) -> tuple:
        return 200, {}, _json(ring_nodes(self._node(), self.status)), "application/json"

    async def local_registrations(self) -> tuple:
        body = self.local.report() if self.local is not None else None
        if body is None:
            raise ApiError(503, "this node runs no SIP registrar ([proxy] listen is empty)")
        return 200, {}, _json(body), "application/json"

    async def locate(self, name: str) -> tuple:
        node = self._node()
        key = self._key(name)
        result = await node.lookup(key)
        m = node.config.m
        holders = _distinct(result.successors)[: node.config.replicas + 1]
        body = {
            "key": ids.format_id(key, m),
            "responsible": _peer(holders[0], m),
            "replicas": [_peer(p, m) for p in holders[1:]],
        }
        return 200, {}, _json(body), "application/json"

    async def put_record(self, name: str, request: server.Request) -> tuple:
        ttl = _ttl(request.args.get(b"ttl", [None])[0])
        node = self._node()
        request.content.seek(0)
        value = request.content.read(self.max_value + 1)
        if len(value) > self.max_value:
            raise ApiError(413, f"the body is over the limit of {self.max_value} bytes")
        key = self._key(name)
        record = await node.put_value(key, BLOB, value, ttl)
        m = node.config.m
        body = {"name": name, "key": ids.format_id(key, m), "ttl": ttl, "seq": record.seq, "bytes": len(value)}
        return 201, {}, _json(body), "application/json"

    async def get_record(self, name: str, request: server.Request) -> tuple:
        node = self._node()
        if _flag(request, b"local"):
            # the copy this node holds, without asking the ring: for checking replication
            records = node.store.get(self._key(name), BLOB)
            if not records:
                raise ApiError(404, f"this node holds no copy of {name!r}")
        else:
            records = await node.get(self._key(name), BLOB)
            if not records:
                raise ApiError(404, f"no record named {name!r}")
        return 200, {}, records[0].value, "application/octet-stream"

    async def delete_record(self, name: str, request: server.Request) -> tuple:
        node = self._node()
        if not await node.remove(self._key(name), BLOB):
            raise ApiError(404, f"no record named {name!r}")
        return 204, {}, b"", ""

    async def registrations(self, aor: str) -> tuple:
        """What the ring holds for an AoR: every live binding, merged from
        the registration entries of every proxy that wrote one."""
        node = self._node()
        aor = regrecord.canonical_aor(aor)
        records = await node.get(self._key(aor), regrecord.KIND)
        now = node.clock.seconds()
        bindings = []
        for rec in records:
            try:
                data = regrecord.decode(rec.value)
            except ValueError:
                continue
            remaining = int(min(float(data.get("expires") or rec.expires), rec.expires) - now + 0.5)
            if remaining <= 0:
                continue
            bindings.append(
                {
                    "contact": data["contact"],
                    "expires": remaining,
                    "path": [p for p in data.get("path") or [] if isinstance(p, str)],
                    "q": data.get("q", 1.0),
                    "proxy": data.get("proxy"),
                }
            )
        if not bindings:
            raise ApiError(404, f"no binding for {aor}")
        bindings.sort(key=lambda b: (-float(b["q"] or 0), b["contact"]))
        return 200, {}, _json({"aor": aor, "bindings": bindings}), "application/json"


    async def limits_view(self) -> tuple:
        body = self.limits.report() if self.limits is not None else {"banned": []}
        return 200, {}, _json(body), "application/json"

    async def unban(self, address: str) -> tuple:
        if self.limits is None or not self.limits.unban(address):
            raise ApiError(404, f"{address} is not banned")
        settled = getattr(self.limits, "settled", None)
        if settled is not None:  # the kernel's copy lifted too ([limits] kernel_bans)
            await settled()
        return 204, {}, b"", ""

    # ------------------------------------------- domain and user keys (issue 11)

    def _guard(self, node: ChordNode) -> Any:
        guard = getattr(node, "guard", None)
        if guard is None or guard.signer is None:
            raise ApiError(503, "this node does not sign records")
        return guard

    async def domain_view(self, name: str) -> tuple:
        node = self._node()
        guard = self._guard(node)
        record = await guard.domain_record(name)
        if record is None:
            raise ApiError(404, f"{name} has no domain record")
        listed = domainrecords.decode(record.value)
        body = {
            "domain": listed.domain,
            "keys": list(listed.keys),
            "expires": int(record.expires - node.clock.seconds()),
            "this_node": guard.signer.fingerprint,
        }
        return 200, {}, _json(body), "application/json"

    def _keys_in(self, request: server.Request) -> list[str]:
        request.content.seek(0)
        words = request.content.read(64 * 1024).decode("utf-8", "replace").split()
        if not words:
            raise ApiError(400, "the body names no key fingerprint")
        return words

    async def authorize(self, name: str, request: server.Request) -> tuple:
        """``sosimple authorize DOMAIN --key F``: F may write DOMAIN's registrations."""
        node = self._node()
        guard = self._guard(node)
        try:
            record = await guard.change_domain(name, add=self._keys_in(request))
        except Refused as e:
            raise ApiError(403, str(e)) from None
        return 200, {}, _json({"domain": name, "keys": list(domainrecords.decode(record.value).keys)}), "application/json"

    async def rebind(self, name: str, request: server.Request) -> tuple:
        """``sosimple rebind NAME --key F``: a domain's keys become F (and any
        other given), or the user NAME's public key becomes F."""
        node = self._node()
        guard = self._guard(node)
        keys = self._keys_in(request)
        if "@" not in name:
            try:
                record = await guard.change_domain(name, replace=keys)
            except Refused as e:
                raise ApiError(403, str(e)) from None
            return 200, {}, _json({"domain": name, "keys": list(domainrecords.decode(record.value).keys)}), "application/json"
        aor = regrecord.canonical_aor(name)
        if len(keys) != 1:
            raise ApiError(400, "a user has one public key")
        key = self._key(aor)
        value = keys[0].encode()
        await node.put_value(key, domainrecords.PUBLICKEY, value, domainrecords.USER_KEY_TTL, name=aor)
        got = await node.get(key, domainrecords.PUBLICKEY)
        if not got or got[0].value != value:
            raise ApiError(403, f"the ring refused the new key of {aor}: this node is not entitled to {aor.rpartition('@')[2]}")
        return 200, {}, _json({"aor": aor, "key": keys[0]}), "application/json"

    async def put_signed(self, name: str, request: server.Request) -> tuple:
        """A record signed elsewhere (the CA's ``sosimple rebind``), stored as it is."""
        node = self._node()
        guard = self._guard(node)
        request.content.seek(0)
        try:
            (record,) = wire.decode_records(request.content.read(self.max_value + 4096))
        except ValueError as e:
            raise ApiError(400, f"not one encoded record: {e}") from None
        if record.name != name or not record.signature:
            raise ApiError(400, f"not a signed record named {name!r}")
        if not await guard.accept([record], "fetch"):
            raise ApiError(403, "the record is refused (this node's log says why)")
        await node.put(record)
        return 201, {}, _json({"name": name, "seq": record.seq}), "application/json"


def _flag(request: server.Request, name: bytes) -> bool:
    values = request.args.get(name)
    return bool(values) and values[-1].lower() not in (b"0", b"no", b"false", b"off")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8") + b"\n"


def _ttl(raw: bytes | None) -> float:
    if raw is None:
        return DEFAULT_TTL
    try:
        ttl = float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, f"ttl {raw.decode('utf-8', 'replace')!r} is not a number of seconds") from None
    if not math.isfinite(ttl) or ttl <= 0:
        raise ApiError(400, f"ttl must be a positive number of seconds, not {raw.decode('ascii')}")
    if ttl > MAX_TTL:
        raise ApiError(400, f"ttl {ttl:g} is over the limit of {MAX_TTL:g} seconds")
    return ttl


def admin_site(
    ring: Ring | None,
    settings: Mapping[str, Any],
    limits: ILimitsView | None = None,
    credentials: AdminCredentials | None = None,
    status: NodeStatus | None = None,
    local: LocalRegistrations | None = None,
    views: Views | None = None,
    store: Resource | None = None,
) -> AdminSite:
    """The API and the pages as a ``Site``, with ``[admin]``'s limits; behind
    ``credentials`` when given (see ``guard.py`` for what stays open).
    ``status`` gives the pages the version and uptime (default: uptime from
    now, on the global reactor's clock); ``local`` this proxy's binding table;
    ``store`` the users' store (``store.py``) when it is served here."""
    if status is None:
        from twisted.internet import reactor

        status = NodeStatus(reactor)  # type: ignore[arg-type]
    max_name = int(settings.get("max_name", 256))
    max_value = int(settings.get("max_value", 1048576))
    root: Resource = AdminRoot(AdminAPI(ring, max_name, max_value, limits, status, local, views, status.clock), store)
    if credentials is not None:
        root = AdminGuard(root, credentials)
    site = AdminSite(root, max_body=max(max_value, int(getattr(store, "max_value", 0))))
    site.displayTracebacks = False
    return site


def admin_credentials(clock: Any, settings: Mapping[str, Any]) -> AdminCredentials | None:
    """``[admin] users_file`` and ``realm`` as a checker; None without a users file."""
    users_file = str(settings.get("users_file") or "")
    if not users_file:
        return None
    return AdminCredentials(clock, UsersFile(users_file), str(settings.get("realm") or DEFAULT_REALM))


class AdminService(StreamServerEndpointService):
    """The listener; its start is the node's start, for the pages' uptime.
    ``registrations`` takes the proxy's binding table once there is one."""

    def __init__(
        self, endpoint: Any, factory: Any, status: NodeStatus, registrations: LocalRegistrations, views: Views
    ) -> None:
        super().__init__(endpoint, factory)
        self.status = status
        self.registrations = registrations
        self.views = views

    def startService(self) -> None:
        self.status.start()
        super().startService()


def admin_service(
    reactor: Any,
    settings: Mapping[str, Any],
    ring: Ring | None,
    limits: ILimitsView | None = None,
    store: Resource | None = None,
) -> IService:
    """The API listening on ``[admin] listen`` (a Twisted endpoint string),
    in TLS with ``[admin] certificate`` and ``key``, behind ``[admin]
    users_file``.  ``settings`` were checked by ``listener.check_admin_settings``
    (config.py), so the files are known to be good.  The service's ``tls``
    is the ``ServerTLS`` to reload on SIGHUP, or None; its ``registrations``
    (a :class:`LocalRegistrations`) takes the proxy's binding table once the
    composition root has built the proxy.  ``store``: the users' store, when
    it has no listener of its own."""
    local, status, views = LocalRegistrations(reactor), NodeStatus(reactor), Views(limits=limits)
    site = admin_site(ring, settings, limits, admin_credentials(reactor, settings), status, local, views, store)
    endpoint, factory, tls = admin_listener(reactor, settings, site)
    svc = AdminService(endpoint, factory, status, local, views)
    svc.setName("admin")
    svc.tls = tls  # type: ignore[attr-defined]
    return svc
