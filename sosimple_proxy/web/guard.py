"""The admin API behind credentials (``[admin] users_file``).

Everything is guarded except what other parties must reach without the
operator's password (``shared/site-ini.md``, ``[admin]``):

- ``/health``: load balancers and supervisors probe it;
- ``/.well-known/sosimple-config``: the ring's configuration document;
- ``/store/...``: a user's own data, guarded by that user's credentials.

Which route a request reaches is decided from the decoded path segments,
the same ones the API dispatches on, so no spelling of a path
(``/%68ealth``, ``/health/../ring``) is open here and guarded there.
A refused request gets 401 with the challenges and a JSON error body; the
body is the same for a wrong password and an unknown user.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from sosimple_proxy.security.digest import Outcome

from .credentials import AdminCredentials

log = Logger()


def is_open(postpath: list[bytes]) -> bool:
    """Whether a request for these (decoded) path segments needs no admin credentials."""
    if not postpath:
        return False
    head, rest = postpath[0], postpath[1:]
    if head == b"health":
        return rest in ([], [b""])
    if head == b".well-known":
        return rest == [b"sosimple-config"]
    return head == b"store"


class AdminGuard(Resource):
    """Lets a request through to ``inner`` (a leaf resource) when it is open
    or carries good credentials; answers 401 otherwise."""

    isLeaf = True

    def __init__(self, inner: Resource, credentials: AdminCredentials) -> None:
        super().__init__()
        self.inner = inner
        self.credentials = credentials

    def render(self, request: server.Request) -> int | bytes:
        if is_open(list(request.postpath or [])):
            return self.inner.render(request)  # type: ignore[no-any-return]
        values = [v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(b"authorization", [])]
        method = request.method.decode("ascii", "replace")
        verdict = self.credentials.check(values, method, request.uri.decode("latin-1"), request.isSecure())
        if verdict.ok:
            request.admin_user = verdict.user  # type: ignore[attr-defined]
            return self.inner.render(request)  # type: ignore[no-any-return]
        if verdict.outcome is not Outcome.NO_CREDENTIALS:
            peer = request.getClientAddress()
            log.info(
                "admin: refused {method} {path} from {peer}: {why}",
                method=method,
                path=request.path.decode("latin-1"),
                peer=getattr(peer, "host", str(peer)),
                why=verdict.reason,
            )
        stale = verdict.outcome is Outcome.STALE
        request.setResponseCode(401)
        for value in self.credentials.challenges(request.isSecure(), stale=stale):
            request.responseHeaders.addRawHeader(b"www-authenticate", value.encode("utf-8"))
        request.setHeader(b"content-type", b"application/json")
        message = "authentication required" if verdict.outcome is Outcome.NO_CREDENTIALS else "wrong credentials"
        if stale:
            message = "the nonce has expired; answer the new challenge"
        return json.dumps({"error": message}).encode("utf-8") + b"\n"
