"""Our Record-Route carries an HMAC of its dialog, so that in-dialog requests
which come back through us can be told from forged ones.

Why: in-dialog requests are never challenged (a phone that called in from
another domain has no credentials of ours, and the callee's BYE back to it
has none either), and the relay rule follows in-dialog route sets.  A route
set anybody could write would make both an open door: a stranger would put
a To tag and a Route to our address in front of an INVITE to a gateway.  So
we follow only the route sets we stamped ourselves.

The stamp is ``;sst=<hex>`` on the URI of our Record-Route, an HMAC-SHA-256
(truncated to 128 bits) of the Call-ID and the From tag of the request that
created the dialog.  RFC 3261 12.1.1 and 12.2.1.1: the route set of both
sides is built from the Record-Route values, URI parameters included, so
the stamp comes back in the top Route of every in-dialog request.  A
request from the caller carries the creating From tag as its From tag; a
request from the callee carries it as its To tag (the roles swap), so either
tag may match.  The key is derived from the realm's nonce secret, which the
proxies of one realm share (``[auth] nonce_secret_file``): any of them
accepts the others' stamps.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from sosimple_proxy.sip.message import Request

PARAM = "sst"
_LENGTH = 32  # hex characters: 128 bits


def _tag_of(value: Any) -> str:
    try:
        return value.tag or ""
    except Exception:
        return ""


class DialogStamp:
    """Makes and checks the ``sst`` parameter of our Record-Route."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own, so that a stamp is never a usable nonce tag and back.
        self._key = hmac.new(secret, b"sosimple-proxy dialog stamp", hashlib.sha256).digest()

    def value(self, call_id: str, from_tag: str) -> str:
        # hmac.digest: OpenSSL's one-shot HMAC, no Python HMAC object.
        mac = hmac.digest(self._key, f"{call_id}\x00{from_tag}".encode("utf-8", "replace"), "sha256")
        return mac.hex()[:_LENGTH]

    def for_request(self, request: Request) -> str:
        """The stamp of the dialog ``request`` creates (for its Record-Route)."""
        return self.value(request.call_id or "", _tag_of(request.from_))

    def verify(self, request: Request, is_ours: Callable[[Any], bool]) -> bool:
        """The top Route is one of our addresses and carries the stamp of this
        request's dialog (Call-ID and the From or the To tag)."""
        try:
            routes = request.routes
            # RFC 3261 16.4: a strict router upstream puts our Record-Route
            # URI in the Request-URI instead.
            ours = routes[0].uri if routes else None
            if ours is None or PARAM not in ours.params:
                ruri = request.ruri
                ours = ruri if getattr(ruri, "is_sip", False) and PARAM in ruri.params else ours
            got = ours.params.get(PARAM) if ours is not None and ours.is_sip else None
            if not got or not is_ours(ours):
                return False
            call_id = request.call_id or ""
            from_tag = _tag_of(request.from_)
            to_tag = _tag_of(request.to)
        except Exception:
            return False  # an unparsable Route or tag is no stamp of ours
        got_b = got.lower().encode("ascii", "replace")
        # The caller's requests carry the stamped tag in From: try it first
        # (one HMAC, not two, for the usual ACK and BYE of the caller).
        for tag in (from_tag, to_tag):
            if tag and hmac.compare_digest(self.value(call_id, tag).encode("ascii"), got_b):
                return True
        return False
