"""The users' store over HTTP: ``/store/{aor}/{name}`` (paper III.C.1).

A user keeps small opaque values of their own in the ring (configuration,
an encrypted friend list, a public key):

- ``PUT /store/{aor}/{name}``: store the body; 201 for a new name, 200 for
  a replaced value, with ``{"aor", "name", "bytes"}``;
- ``GET /store/{aor}/{name}``: the bytes (``application/octet-stream``), 404;
- ``DELETE /store/{aor}/{name}``: 204, or 404 when there was none;
- ``GET /store/{aor}``: ``{"aor", "names": [...]}``.

It is served on the admin listener (whose guard lets ``/store`` through:
the admin's credentials grant nothing here) or on its own ``[store]
listen``, which may face the Internet and is then HTTPS only.

Who may: the AoR's user, with their own credentials from ``[auth]
users_file`` in ``[auth] realm`` (HTTP Digest, RFC 7616; Basic only inside
TLS, as the admin API takes it): the digest user must be the AoR's user
part and the AoR's domain one of ours, the rule the registrar applies to
REGISTER.  Or the holder of the Ed25519 key bound to the AoR (its
``publickey`` record in the ring), with ``Authorization: Sosimple-Sig``
(``security/usersig.py`` says what is signed).  No or wrong credentials:
401 with the challenges; good credentials for someone else: 403.

Limits: a value is at most ``[store] max_value`` bytes (413), an AoR holds
at most ``max_names`` names (409 for one more), a name is at most 256
bytes of UTF-8 (400).  Every error is ``{"error": "..."}``; the ring not
answering is 503, as in the admin API.  The ring is reached only through
``overlay.userdata.IUserData``.

Known limits: ``max_names`` is counted before a write, so two clients
adding new names at once may pass it by one; a read fetches all of the
AoR's values (at most ``max_names * max_value`` bytes) from the ring.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from sosimple_proxy.location.regrecord import canonical_aor
from sosimple_proxy.overlay.errors import OverlayError
from sosimple_proxy.overlay.userdata import IUserData, RingUserData, TooManyNames
from sosimple_proxy.security import usersig
from sosimple_proxy.security.algorithms import DEFAULT_ALGORITHMS, Algorithm
from sosimple_proxy.security.digest import Outcome
from sosimple_proxy.security.nonces import DEFAULT_NONCE_TTL
from sosimple_proxy.security.tls import ServerTLS, TLSFileError
from sosimple_proxy.security.users import UsersFile

from .admin import AdminSite, ApiError, _json
from .credentials import AdminCredentials
from .listener import admin_listener, is_loopback_endpoint

log = Logger()

DEFAULT_MAX_VALUE = 65536
DEFAULT_MAX_NAMES = 100
MAX_NAME = 256
NEEDS_TLS = "a non-loopback store listener needs [store] certificate and key (HTTPS only)"

Answer = tuple[int, Mapping[bytes, bytes], bytes, str]


class StoreSetupError(ValueError):
    """A bad ``[store]`` setting; ``key`` and ``problem`` make config.py's one line."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"[store] {key}: {problem}")


def check_store_settings(settings: Mapping[str, Any]) -> None:
    """Refuse an unsafe or unusable ``[store]`` listener before any port is bound:
    off loopback it must be HTTPS, and the certificate and key must load."""
    listen = str(settings.get("listen") or "")
    certificate, key = str(settings.get("certificate") or ""), str(settings.get("key") or "")
    if not listen:
        if certificate or key:
            raise StoreSetupError("certificate" if certificate else "key", "only for [store] listen, which is empty")
        return
    if bool(certificate) != bool(key):
        raise StoreSetupError("key" if certificate else "certificate", "certificate and key go together: set both or neither")
    if not certificate and not is_loopback_endpoint(listen):
        raise StoreSetupError("listen", NEEDS_TLS)
    if certificate and listen.split(":", 1)[0].lower() == "ssl":
        raise StoreSetupError("listen", "use a tcp: endpoint; [store] certificate and key make it HTTPS")
    if certificate:
        try:
            ServerTLS(certificate, key)
        except TLSFileError as e:
            raise StoreSetupError(e.key, e.problem) from None


class StoreAPI(Resource):
    """``/store/...`` as one leaf resource (mounted by ``ui.AdminRoot`` on the
    admin listener, or the root of the store's own listener)."""

    isLeaf = True

    def __init__(
        self,
        data: IUserData,
        credentials: AdminCredentials | None,
        clock: Any,
        max_value: int = DEFAULT_MAX_VALUE,
        max_names: int = DEFAULT_MAX_NAMES,
        domains: Iterable[str] | None = None,
        max_name: int = MAX_NAME,
    ) -> None:
        super().__init__()
        self.data = data
        self.credentials = credentials
        self.clock = clock
        self.max_value = max_value
        self.max_names = max_names
        self.max_name = max_name
        self.domains = frozenset(d.lower() for d in domains) if domains is not None else None
        self.seen = usersig.SeenSignatures(clock.seconds)

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
        d.addErrback(lambda f: log.failure("store: writing the answer failed", f))
        return server.NOT_DONE_YET

    def _error_answer(self, failure: Failure) -> Answer:
        if failure.check(ApiError):
            e = failure.value
            return e.status, e.headers, _json({"error": e.message}), "application/json"
        if failure.check(TooManyNames):
            return 409, {}, _json({"error": f"{failure.value}; delete one first"}), "application/json"
        if failure.check(OverlayError):
            return 503, {}, _json({"error": f"the ring did not answer: {failure.value}"}), "application/json"
        log.failure("store: request failed", failure)
        return 500, {}, _json({"error": f"internal error: {failure.type.__name__}"}), "application/json"

    @staticmethod
    def _write(answer: Answer | tuple, request: server.Request, finished: list[bool]) -> None:
        if finished[0]:
            return  # the client went away
        status, headers, body, ctype = answer
        request.setResponseCode(status)
        for name, value in headers.items():
            if isinstance(value, list):
                for v in value:
                    request.responseHeaders.addRawHeader(name, v)
            else:
                request.setHeader(name, value)
        if status != 204:
            request.setHeader(b"content-type", ctype.encode("ascii"))
            request.write(body)
        request.finish()

    # ------------------------------------------------------------- routing

    async def _dispatch(self, method: str, request: server.Request) -> Answer:
        segments = list(request.postpath or [])
        shown = request.path.decode("utf-8", "replace")
        if not segments or segments[0] != b"store" or len(segments) < 2 or not segments[1]:
            raise ApiError(404, f"no such resource: {shown} (the store is /store/{{aor}} and /store/{{aor}}/{{name}})")
        aor = self._aor(segments[1])
        rest = segments[2:]
        listing = rest in ([], [b""])
        allowed = ("GET",) if listing else ("DELETE", "GET", "PUT")
        if method not in allowed:
            # RFC 9110 15.5.6: a 405 MUST carry an Allow header field
            allow = ", ".join(allowed)
            raise ApiError(405, f"{method} is not allowed here; use {allow}", {b"allow": allow.encode()})
        if getattr(request, "too_large", False):
            raise ApiError(413, f"the value is over the limit of {self.max_value} bytes")
        request.content.seek(0)
        body = request.content.read(self.max_value + 1)
        if method == "PUT" and len(body) > self.max_value:
            raise ApiError(413, f"the value is {len(body)} bytes or more, over the limit of {self.max_value} bytes")
        name = None if listing else self._name(rest)
        path = "/" + "/".join(s.decode("utf-8", "replace") for s in segments)
        # credentials cover the method as sent (HEAD is answered as GET)
        sent = request.method.decode("ascii", "replace")
        who = await self._authorize(request, sent, aor, path, body)
        log.debug("store: {method} {path} by {who}", method=method, path=path, who=who)
        if name is None:
            names = await self.data.names(aor)
            return 200, {}, _json({"aor": aor, "names": names}), "application/json"
        if method == "GET":
            value = await self.data.get(aor, name)
            if value is None:
                raise ApiError(404, f"{aor} has no value named {name!r}")
            return 200, {}, value, "application/octet-stream"
        if method == "DELETE":
            if not await self.data.delete(aor, name):
                raise ApiError(404, f"{aor} has no value named {name!r}")
            return 204, {}, b"", ""
        new = await self.data.put(aor, name, body, self.max_names)
        return (201 if new else 200), {}, _json({"aor": aor, "name": name, "bytes": len(body)}), "application/json"

    @staticmethod
    def _aor(raw: bytes) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the AoR is not UTF-8") from None
        aor = canonical_aor(text)
        user, at, domain = aor.rpartition("@")
        if not at or not user or not domain or "/" in aor:
            raise ApiError(400, f"{text!r} is not an address of record (user@domain)")
        return aor

    def _name(self, rest: list[bytes]) -> str:
        raw = b"/".join(rest)
        if len(raw) > self.max_name:
            raise ApiError(400, f"the name is {len(raw)} bytes, over the limit of {self.max_name}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the name is not UTF-8") from None

    # ---------------------------------------------------------------- auth

    def _challenges(self, request: server.Request, stale: bool = False) -> dict[bytes, Any]:
        # RFC 9110 11.6.1: a 401 MUST carry at least one challenge in WWW-Authenticate
        values = self.credentials.challenges(request.isSecure(), stale=stale) if self.credentials else []
        values.append(usersig.SCHEME)
        return {b"www-authenticate": [v.encode("utf-8") for v in values]}

    def _refuse(self, request: server.Request, status: int, message: str, why: str, stale: bool = False) -> ApiError:
        peer = request.getClientAddress()
        log.info(
            "store: refused {method} {path} from {peer}: {why}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("latin-1"),
            peer=getattr(peer, "host", str(peer)),
            why=why,
        )
        headers = self._challenges(request, stale) if status == 401 else {}
        return ApiError(status, message, headers)

    async def _authorize(self, request: server.Request, method: str, aor: str, path: str, body: bytes) -> str:
        """Who is asking (for the log), or an ApiError: 401 unauthenticated, 403 not theirs."""
        values = [v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(b"authorization", [])]
        signed = [v for v in values if usersig.is_sig(v)]
        if signed:
            return await self._by_key(request, method, aor, path, body, signed[0])
        if self.credentials is None:
            raise ApiError(401, "authentication required (this node has no users file: sign with the AoR's key)",
                           self._challenges(request))
        verdict = self.credentials.check(values, method, request.uri.decode("latin-1"), request.isSecure())
        if not verdict.ok:
            if verdict.outcome is Outcome.NO_CREDENTIALS:
                # none for the users' realm: an admin's (other realm) grant nothing here
                raise ApiError(401, "authentication required", self._challenges(request))
            stale = verdict.outcome is Outcome.STALE
            message = "the nonce has expired; answer the new challenge" if stale else "wrong credentials"
            raise self._refuse(request, 401, message, verdict.reason, stale)
        user = verdict.user or ""
        aor_user, _, domain = aor.rpartition("@")
        if user != aor_user or (self.domains is not None and domain not in self.domains):
            raise self._refuse(request, 403, f"{user} may not use the store of {aor}", f"{user} is not {aor}")
        return user

    async def _by_key(self, request: server.Request, method: str, aor: str, path: str, body: bytes, value: str) -> str:
        try:
            sig = usersig.parse(value)
            usersig.verify(sig, method, path, body, self.clock.seconds())
        except usersig.SignatureError as e:
            raise self._refuse(request, 401, f"{usersig.SCHEME}: {e}", str(e)) from None
        bound = {usersig.public_key(v) for v in await self.data.bound_keys(aor)} - {None}
        if sig.key not in bound:
            why = f"the key is not the one bound to {aor}" if bound else f"no key is bound to {aor}"
            raise self._refuse(request, 403, why, f"{why} (key {sig.key.hex()[:16]}...)")
        if not self.seen.add(sig.sig):
            raise self._refuse(request, 401, f"{usersig.SCHEME}: this signature was used before", "a replay")
        return f"key {sig.key.hex()[:16]}"


def store_credentials(
    clock: Any,
    users_file: str,
    realm: str,
    algorithms: Iterable[Algorithm] = DEFAULT_ALGORITHMS,
    nonce_ttl: float = DEFAULT_NONCE_TTL,
    secret: bytes | None = None,
) -> AdminCredentials | None:
    """The users' credentials (``[auth] users_file`` in ``[auth] realm``), or
    None without a users file (then only signatures are accepted)."""
    if not users_file:
        return None
    return AdminCredentials(clock, UsersFile(users_file), realm, tuple(algorithms), nonce_ttl, secret)


def store_api(
    clock: Any,
    settings: Mapping[str, Any],
    ring: Any,
    credentials: AdminCredentials | None,
    domains: Iterable[str] | None = None,
) -> StoreAPI:
    """The resource on a ring member, with ``[store]``'s limits."""
    return StoreAPI(
        RingUserData(ring),
        credentials,
        clock,
        int(settings.get("max_value", DEFAULT_MAX_VALUE)),
        int(settings.get("max_names", DEFAULT_MAX_NAMES)),
        domains,
    )


def store_site(api: StoreAPI) -> AdminSite:
    """The store alone as a site (its own listener): bodies past ``max_value`` are not buffered."""
    site = AdminSite(api, max_body=api.max_value)
    site.displayTracebacks = False
    return site


def store_service(reactor: Any, settings: Mapping[str, Any], api: StoreAPI) -> IService:
    """``[store] listen`` (checked by :func:`check_store_settings`), HTTPS with
    ``certificate`` and ``key``; the service's ``tls`` is the ``ServerTLS`` to
    reload on SIGHUP, or None."""
    endpoint, factory, tls = admin_listener(reactor, settings, store_site(api))
    svc = StreamServerEndpointService(endpoint, factory)
    svc.setName("store")
    svc.tls = tls  # type: ignore[attr-defined]
    return svc
