"""The admin listener: secure by default, TLS by wrapping.

``[admin] listen`` stays a Twisted server endpoint string (``tcp:8443:
interface=0.0.0.0``); with ``[admin] certificate`` and ``key`` the factory on
it is wrapped in TLS (``TLSMemoryBIOFactory`` with ``security.tls.
ServerTLS``), so any stream endpoint can carry HTTPS and the certificate can
be reloaded like the SIP one.

A listener that other machines can reach must not hand the ring to anyone
who asks: without all of ``certificate``, ``key`` and ``users_file`` only a
loopback interface (127.0.0.0/8, ::1) or a UNIX socket is accepted.
:func:`check_admin_settings` says so, or names a bad file, before any port
is bound.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.internet.endpoints import serverFromString
from twisted.protocols.tls import TLSMemoryBIOFactory

from sosimple_proxy.security.tls import ServerTLS, TLSFileError
from sosimple_proxy.security.users import UsersFile, UsersFileError, check_name

NEEDS_ALL_THREE = "a non-loopback admin listener needs [admin] certificate, key and users_file"


class AdminSetupError(ValueError):
    """A bad ``[admin]`` setting; ``key`` and ``problem`` make config.py's one line."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"[admin] {key}: {problem}")


def _loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback_endpoint(description: str) -> bool:
    """Whether only this machine can reach a listener on this endpoint string:
    an ``interface=`` on 127.0.0.0/8 or ::1, or a UNIX socket.  A missing
    interface means every address, so it is not."""
    endpoint = serverFromString(object(), description)  # parses; binds nothing
    if type(endpoint).__name__ == "UNIXServerEndpoint":
        return True
    interface = getattr(endpoint, "_interface", None)
    return isinstance(interface, str) and bool(interface) and _loopback_host(interface)


def check_admin_settings(settings: Mapping[str, Any]) -> None:
    """Refuse an unsafe or unusable ``[admin]`` section (:class:`AdminSetupError`).

    Reads the certificate, key and users file once, so that a missing or bad
    file stops startup with its key named instead of failing after other
    listeners are up."""
    listen = str(settings.get("listen") or "")
    if not listen:
        return
    certificate, key = str(settings.get("certificate") or ""), str(settings.get("key") or "")
    users_file, realm = str(settings.get("users_file") or ""), str(settings.get("realm") or "")
    if not (certificate and key and users_file) and not is_loopback_endpoint(listen):
        raise AdminSetupError("listen", NEEDS_ALL_THREE)
    if bool(certificate) != bool(key):
        missing = "key" if certificate else "certificate"
        raise AdminSetupError(missing, "certificate and key go together: set both or neither")
    if certificate and listen.split(":", 1)[0].lower() == "ssl":
        raise AdminSetupError("listen", "use a tcp: endpoint; [admin] certificate and key make it HTTPS")
    if certificate:
        try:
            ServerTLS(certificate, key)
        except TLSFileError as e:
            raise AdminSetupError(e.key, e.problem) from None
    if users_file:
        try:
            check_name("realm", realm)
        except ValueError as e:
            raise AdminSetupError("realm", str(e)) from None
        try:
            users = UsersFile(users_file)
        except UsersFileError as e:
            raise AdminSetupError("users_file", str(e)) from None
        if realm not in users.table.realms():
            raise AdminSetupError(
                "users_file",
                f"{users_file} has no user of realm {realm!r} (sosimple adduser USER --realm {realm} --file {users_file})",
            )


def admin_listener(
    reactor: Any, settings: Mapping[str, Any], factory: IProtocolFactory
) -> tuple[IStreamServerEndpoint, IProtocolFactory, ServerTLS | None]:
    """The endpoint of ``[admin] listen`` and the factory to put on it: the
    site itself, or the site inside TLS when a certificate is configured
    (the ``ServerTLS`` is returned too, for a reload on SIGHUP)."""
    endpoint = serverFromString(reactor, str(settings["listen"]))
    certificate = str(settings.get("certificate") or "")
    if not certificate:
        return endpoint, factory, None
    tls = ServerTLS(certificate, str(settings["key"]))
    return endpoint, TLSMemoryBIOFactory(tls, False, factory), tls
