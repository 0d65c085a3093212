"""The ring's configuration document (after RELOAD's, RFC 6940 section 11).

A member serves it at ``GET /.well-known/sosimple-config`` on its admin
listener: the ring's parameters, so that a new node needs only the
document's URL (``[overlay] bootstrap = https://host:port/.well-known/
sosimple-config``) and its own ``[overlay] ca``::

    {"config": {"format": 1, "ring": "overlay", "domains": [...],
                "replicas": 2, "successors": 8, "stabilize_interval": 5.0,
                "key_scheme": "flat", "domain_bits": 32,
                "ca": "<PEM>" | null, "bootstrap": ["host:port", ...]},
     "signature": {...} | null}

The signature (``security/signed_json.py``) is the ring CA's when the
serving node has ``[overlay] ca_key``, else the node's own key with its
CA-issued certificate; an open ring's document is unsigned.  A node of a CA
ring accepts only a document whose signature checks against its own CA.

The HTTPS fetch trusts the ring's CA for the server certificate when there
is one (the serving node's ``[admin] certificate`` is then to be issued by
it), otherwise the system's roots.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from twisted.internet import defer

from sosimple_proxy.security import nodecerts, signed_json

#: the parameters a document sets on the node that reads it
PARAMETERS = ("replicas", "successors", "stabilize_interval", "key_scheme", "domain_bits")
#: members listed as bootstrap nodes
BOOTSTRAP_NODES = 8
#: larger documents are refused unread
MAX_BYTES = 1 << 20


class DocumentError(Exception):
    """The document could not be had or is not to be trusted; one line."""


def is_document_url(text: str) -> bool:
    return text.strip().lower().startswith(("https://", "http://"))


def build(name: str, settings: Mapping[str, Any], node: Any, tls: Any = None) -> dict[str, Any]:
    """The ``config`` object for the ring this node is in (``settings``:
    its ``[overlay]`` section; ``tls``: its RingTLS, None in an open ring)."""
    members: list[str] = []
    if node is not None:
        for peer in [node.peer, *node.successors, *(node.table.known_peers() if hasattr(node, "table") else ())]:
            address = str(peer.address)
            if address not in members:
                members.append(address)
    ca = None
    if tls is not None:
        with open(tls.ca, encoding="ascii") as f:
            ca = f.read()
    return {
        "format": 1,
        "ring": name,
        "domains": list(settings.get("domains", ()) or ()),
        "replicas": int(settings.get("replicas", 2)),
        "successors": int(settings.get("successors", 8)),
        "stabilize_interval": float(settings.get("stabilize_interval", 5.0)),
        "key_scheme": str(settings.get("key_scheme", "flat")),
        "domain_bits": int(settings.get("domain_bits", 32)),
        "ca": ca,
        "bootstrap": members[:BOOTSTRAP_NODES],
    }


def serve(name: str, settings: Mapping[str, Any], node: Any, tls: Any = None) -> bytes:
    """The document's bytes, signed as this node can."""
    config = build(name, settings, node, tls)
    envelope: dict[str, Any] = {"config": config, "signature": None}
    if tls is not None:
        ca_key = str(settings.get("ca_key", "") or "")
        if ca_key:
            envelope = signed_json.sign(config, nodecerts.load_private_key(ca_key, "ca_key"))
        else:
            envelope = signed_json.sign(
                config, nodecerts.load_private_key(tls.key), nodecerts.load_certificate(tls.certificate)
            )
    return json.dumps(envelope, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def apply(config: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with the document's parameters and bootstrap nodes."""
    out = dict(settings)
    try:
        for key in PARAMETERS:
            if key in config:
                out[key] = type(_default(key))(config[key])
        if out["key_scheme"] not in ("flat", "domain"):
            raise ValueError(f"key_scheme {out['key_scheme']!r}")
        bootstrap = []
        for item in config.get("bootstrap") or ():
            host, _, port = str(item).rpartition(":")
            bootstrap.append((host.strip("[]"), int(port)))
    except (TypeError, ValueError, KeyError) as e:
        raise DocumentError(f"the document holds a bad value: {e}") from None
    if not bootstrap:
        raise DocumentError("the document names no bootstrap node")
    out["bootstrap"] = tuple(bootstrap)
    return out


def _default(key: str) -> Any:
    return {"replicas": 0, "successors": 0, "stabilize_interval": 0.0, "key_scheme": "", "domain_bits": 0}[key]


def check(body: bytes, ca_path: str | None) -> dict[str, Any]:
    """The ``config`` of a fetched document, verified against ``ca_path``
    (None: an open ring, nothing to check against)."""
    try:
        envelope = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DocumentError("not JSON") from None
    try:
        cas = signed_json.load_cas(ca_path) if ca_path else None
    except (OSError, ValueError) as e:
        raise DocumentError(f"cannot read [overlay] ca {ca_path}: {e}") from None
    try:
        return signed_json.verify(envelope, cas)
    except signed_json.SignatureError as e:
        raise DocumentError(str(e)) from None


def _agent(reactor: Any, url: str, ca_path: str | None) -> Any:
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    if ca_path and urlsplit(url).scheme == "https":
        from twisted.internet.ssl import Certificate, trustRootFromCertificates

        with open(ca_path, "rb") as f:
            data = f.read()
        pems = [b"-----BEGIN CERTIFICATE-----" + part for part in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]
        root = trustRootFromCertificates([Certificate.loadPEM(p) for p in pems])
        return Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=root), connectTimeout=10)
    return Agent(reactor, connectTimeout=10)


@defer.inlineCallbacks
def fetch(reactor: Any, url: str, ca_path: str | None, timeout: float = 15.0):
    """Deferred[dict]: the verified ``config`` at ``url``; fails with
    :class:`DocumentError` (one line) for any reason."""
    import treq
    from treq.client import HTTPClient

    client = HTTPClient(_agent(reactor, url, ca_path))
    try:
        response = yield client.get(url, timeout=timeout)
        if response.code != 200:
            raise DocumentError(f"HTTP {response.code}")
        body = yield treq.content(response)
    except DocumentError:
        raise
    except Exception as e:
        raise DocumentError(f"cannot fetch it: {type(e).__name__}: {_why(e)}") from None
    if len(body) > MAX_BYTES:
        raise DocumentError(f"{len(body)} bytes, over {MAX_BYTES}")
    return check(body, ca_path)


def _why(e: Exception) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(e).splitlines()[0] if str(e) else ""


def describe(bootstrap: Sequence[Any]) -> str:
    return ", ".join(f"{h}:{p}" for h, p in bootstrap)

