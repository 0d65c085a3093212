"""PIDF documents (RFC 3863): checking what phones publish, composing what watchers get.

A presentity may publish from several devices; the watcher gets one
document with every device's ``<tuple>``s (RFC 3863 section 4.1.4: a
presence document holds any number of tuples).  With nothing published,
the document is derived from the presentity's registrations: one tuple per
registered contact, ``open``; a single ``closed`` tuple when there is none.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from typing import Iterable, Sequence
from xml.sax.saxutils import escape, quoteattr

NS = "urn:ietf:params:xml:ns:pidf"
CONTENT_TYPE = "application/pidf+xml"
#: the largest document a PUBLISH may carry
MAX_DOCUMENT = 16 * 1024

ET.register_namespace("", NS)


class PidfError(ValueError):
    """A body that is not a PIDF presence document."""


def check(body: bytes) -> ET.Element:
    """Parse a published document: its root must be PIDF's ``<presence>``."""
    if len(body) > MAX_DOCUMENT:
        raise PidfError(f"larger than {MAX_DOCUMENT} bytes")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise PidfError("document type declarations are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise PidfError(f"not well-formed XML: {e}") from None
    if root.tag != f"{{{NS}}}presence":
        raise PidfError("the root is not a PIDF <presence> element")
    return root


def tuples(body: bytes) -> list[ET.Element]:
    """The ``<tuple>`` elements of a document (none if it is unreadable)."""
    try:
        root = check(body)
    except PidfError:
        return []
    return [child for child in root if child.tag == f"{{{NS}}}tuple"]


def basic(body: bytes) -> list[str]:
    """The ``<basic>`` values of a document's tuples (``open``/``closed``)."""
    out = []
    for t in tuples(body):
        node = t.find(f"{{{NS}}}status/{{{NS}}}basic")
        if node is not None and node.text:
            out.append(node.text.strip())
    return out


def compose(entity: str, published: Sequence[tuple[str, bytes]]) -> bytes:
    """One document of every device's tuples; ``published`` is (etag, body).

    Tuple ids must be unique in a document (RFC 3863 4.1.4), so a device's
    ids are kept only where no other device used the same one.
    """
    seen: set[str] = set()
    parts: list[str] = []
    for etag, body in published:
        for t in tuples(body):
            tid = t.get("id") or "t"
            if tid in seen:
                tid = f"{tid}-{etag}"
            seen.add(tid)
            t.set("id", tid)
            parts.append(ET.tostring(t, encoding="unicode"))
    return _document(entity, parts)


def derived(entity: str, contacts: Iterable[str]) -> bytes:
    """Presence from registrations: open per contact, or one closed tuple."""
    parts = []
    for contact in sorted(set(contacts)):
        tid = "reg-" + hashlib.sha256(contact.encode()).hexdigest()[:10]
        parts.append(
            f'<tuple id="{tid}"><status><basic>open</basic></status>'
            f"<contact>{escape(contact)}</contact></tuple>"
        )
    if not parts:
        parts.append('<tuple id="reg"><status><basic>closed</basic></status></tuple>')
    return _document(entity, parts)


def _document(entity: str, tuple_texts: Sequence[str]) -> bytes:
    head = f'<?xml version="1.0" encoding="UTF-8"?>\n<presence xmlns="{NS}" entity={quoteattr(entity)}>\n'
    return (head + "".join(f"{t}\n" for t in tuple_texts) + "</presence>\n").encode("utf-8")
