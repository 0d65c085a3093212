"""A guarded admin API on loopback for tests: HTTPS with a test CA's leaf
(or plain HTTP), and a users file with one admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor

from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.web.admin import admin_credentials, admin_site
from sosimple_proxy.web.listener import admin_listener
from tests.certs import CA

USER, PASSWORD, REALM = "root", "correct horse", "sosimple-admin"


def write_files(directory: Path) -> dict[str, str]:
    """CA, a leaf for 127.0.0.1 and localhost, and a users file; their paths."""
    ca = CA("admin test CA")
    leaf = ca.issue(cn="localhost", dns=["localhost"], ips=["127.0.0.1"])
    cert, key = leaf.write(directory, "admin")
    users = Path(directory) / "admin-users"
    users.write_text(UserEntry.from_password(USER, REALM, PASSWORD).line() + "\n")
    return {"ca": str(ca.write(directory)), "certificate": str(cert), "key": str(key), "users_file": str(users)}


@defer.inlineCallbacks
def serve(test: Any, files: dict[str, str], tls: bool = True, limits: Any = None, ring: Any = None):
    """Listen on a free loopback port as ``admin_service`` would; the base URL."""
    settings = {"listen": "tcp:0:interface=127.0.0.1", "users_file": files["users_file"], "realm": REALM}
    if tls:
        settings.update(certificate=files["certificate"], key=files["key"])
    site = admin_site(ring, settings, limits, admin_credentials(reactor, settings))
    endpoint, factory, _ = admin_listener(reactor, settings, site)
    port = yield endpoint.listen(factory)
    test.addCleanup(port.stopListening)
    return f"{'https' if tls else 'http'}://127.0.0.1:{port.getHost().port}"
