"""Watcher information documents (RFC 3857 package ``presence.winfo``, RFC 3858 format).

Who is watching a presentity, for the presentity alone: one ``<watcher>``
per subscription the ring holds for it (``presence-watchers:AOR``).  Each
NOTIFY's document has a ``version`` one higher than the last one that
subscription got (RFC 3858 4.2.1), so the document is kept with a
placeholder and numbered when it is sent.
"""

from __future__ import annotations

import hashlib
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

PACKAGE = "presence.winfo"
CONTENT_TYPE = "application/watcherinfo+xml"
NS = "urn:ietf:params:xml:ns:watcherinfo"
_VERSION = b'version="@VERSION@"'


def document(resource: str, watchers: Sequence[str]) -> bytes:
    """A full-state document; :func:`numbered` gives it its version."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<watcherinfo xmlns="{NS}" version="@VERSION@" state="full">',
        f"<watcher-list resource={quoteattr(resource)} package=\"presence\">",
    ]
    for watcher in sorted(set(watchers)):
        wid = hashlib.sha256(watcher.encode()).hexdigest()[:12]
        lines.append(f'<watcher id="{wid}" event="subscribe" status="active">{escape("sip:" + watcher)}</watcher>')
    lines += ["</watcher-list>", "</watcherinfo>", ""]
    return "\n".join(lines).encode("utf-8")


def numbered(doc: bytes, version: int) -> bytes:
    return doc.replace(_VERSION, f'version="{version}"'.encode(), 1)
