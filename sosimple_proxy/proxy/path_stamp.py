"""Our Path entries in the ring carry an HMAC of the contact they lead to,
so that a request another proxy of the ring sends along one reaches our
user even when we no longer hold the binding in memory.

Why: the relay rule lets a stranger (another proxy of the ring is one,
unless ``[auth] trusted`` lists it) reach an IP contact only when it is a
contact of one of our live bindings.  Our bindings live in memory; the
ring's copy of a registration outlives a restart of ours (issue 15: after
the lab restarted the nodes it had killed, requests routed along their
users' Paths got ``403 Relaying Denied`` until the phones registered again).
The ring record says the user is reached through us; the stamp lets us
believe it without a ring read on the request path, and without letting
anybody else make us relay: only we can make a stamp, and a stamp names one
contact and the time its binding expires.

The stamp is ``;pst=<expires>.<hex>`` on the URI of the Route value we
publish for a binding (:func:`sosimple_proxy.proxy.routing.self_route`):
an HMAC-SHA-256 (128 bits) of the contact (scheme, user, host, port: what
makes two contacts the same place) and the binding's expiry, in whole
seconds.  RFC 3327 section 5.3 leaves the Path URI to the proxy that
inserts it, and RFC 3261 16.4 hands the Route entry back to us unchanged
in the top Route of the request.  The key is derived from the nonce secret
(``[auth] nonce_secret_file``), which survives a restart and which the
proxies of one realm share.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from sosimple_proxy.sip.message import Request

PARAM = "pst"
_LENGTH = 32  # hex characters: 128 bits


def contact_key(uri: Any) -> tuple[str, str, str, int]:
    """What makes two contact URIs the same place (parameters aside)."""
    return (
        getattr(uri, "scheme", "") or "",
        getattr(uri, "user", None) or "",
        (getattr(uri, "host", None) or "").strip("[]").lower(),
        getattr(uri, "port", None) or 5060,
    )


class PathStamp:
    """Makes and checks the ``pst`` parameter of our published Path entry."""

    def __init__(self, secret: bytes, clock: Any) -> None:
        # A key of its own: a path stamp is never a dialog stamp or a nonce.
        self._key = hmac.new(secret, b"sosimple-proxy path stamp", hashlib.sha256).digest()
        self._clock = clock

    def _mac(self, key: tuple[str, str, str, int], expires: int) -> str:
        text = "\x00".join((*key[:3], str(key[3]), str(expires)))
        return hmac.digest(self._key, text.encode("utf-8", "replace"), "sha256").hex()[:_LENGTH]

    def value(self, contact: Any, expires_at: float) -> str:
        """The stamp for a binding of ``contact`` (a parsed URI) until ``expires_at``."""
        expires = int(expires_at) + 1  # whole seconds, never before the binding
        return f"{expires}.{self._mac(contact_key(contact), expires)}"

    def verify(self, request: Request, is_ours: Callable[[Any], bool]) -> bool:
        """The top Route is ours, stamped for the Request-URI's contact, and
        the binding it was made for has not expired.  Asked before our Route
        entries are removed (RFC 3261 16.4)."""
        try:
            routes = request.routes
            if not routes:
                return False
            top = routes[0].uri
            got = top.params.get(PARAM) if top.is_sip else None
            if not got or not is_ours(top):
                return False
            expires_text, _, mac = str(got).partition(".")
            expires = int(expires_text)
            key = contact_key(request.ruri)
        except Exception:
            return False  # an unparsable Route or Request-URI is no stamp of ours
        if expires <= self._clock.seconds():
            return False
        return hmac.compare_digest(self._mac(key, expires).encode("ascii"), mac.lower().encode("ascii", "replace"))
