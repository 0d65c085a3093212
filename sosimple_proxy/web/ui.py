"""The admin pages (``GET /ui/...``) in front of the JSON API.

The pages are static HTML files shipped as package data (``web/pages/*.html``,
each with its CSS and script inline, so they work with no network beyond
this listener); their scripts fetch the JSON endpoints and redraw, so the
pages themselves hold no data and need no templating.  They live under
``/ui/`` so that no page ever shadows an API path, and ``/`` redirects to
``/ui/`` for an administrator who types only the host and port.

:class:`AdminRoot` is the site's root: it sends ``/`` and ``/ui/...`` here,
``/store/...`` to the users' store when this listener serves it, and every
other path to the JSON API.  It is a leaf resource like the API,
so the guard (``guard.py``) sees one resource and the same decoded segments.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from twisted.web import server
from twisted.web.resource import Resource

#: page name under /ui/ -> the package data file that holds it
PAGES = {"": "ring.html", "registrations": "registrations.html"}


@lru_cache(maxsize=None)
def page(filename: str) -> bytes:
    """A page's bytes, read once from the package data."""
    return resources.files(__package__).joinpath("pages", filename).read_bytes()


class AdminRoot(Resource):
    """``/`` -> redirect, ``/ui/...`` -> pages, anything else -> ``api``."""

    isLeaf = True

    def __init__(self, api: Resource, store: Resource | None = None) -> None:
        super().__init__()
        self.api = api
        self.store = store  # /store/... (store.py), when served on this listener

    def render(self, request: server.Request) -> int | bytes:
        segments = list(request.postpath or [])
        if segments in ([], [b""]):
            return self._redirect(request, b"/ui/")
        if segments[0] == b"store" and self.store is not None:
            return self.store.render(request)  # type: ignore[no-any-return]
        if segments[0] != b"ui":
            return self.api.render(request)  # type: ignore[no-any-return]
        if len(segments) == 1:
            return self._redirect(request, b"/ui/")
        name = b"/".join(segments[1:]).decode("utf-8", "replace")
        filename = PAGES.get(name)
        if filename is None:
            return _error(request, 404, f"no such page: /ui/{name}")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET")
            return _error(request, 405, "pages are read with GET")
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        # the page is a program that reads live data: never serve a stale copy
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # no external assets; the page only talks to this origin
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
            b"connect-src 'self'; img-src 'self' data:",
        )
        return page(filename)

    @staticmethod
    def _redirect(request: server.Request, location: bytes) -> bytes:
        request.setResponseCode(302)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"see " + location + b"\n"


def _error(request: server.Request, status: int, message: str) -> bytes:
    """An error answer in the API's shape (every error is a JSON body)."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": message}).encode("utf-8") + b"\n"
