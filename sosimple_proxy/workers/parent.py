"""The parent's own pieces: its private directory (the shared nonce secret,
the Unix sockets), the hub's listener, and the check that the SIP ports are
free before any worker binds them."""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.logger import Logger

from sosimple_proxy.config import ConfigError
from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.sip.address import ListenAddress

__all__ = ["HubListener", "check_ports_free", "write_secret", "read_secret", "HUB_SOCKET"]

log = Logger()

HUB_SOCKET = "hub.sock"
SECRET = "secret"


def write_secret(directory: str, secret: bytes) -> None:
    """Every worker keys nonces and dialog stamps with the same secret, so a
    phone's answer to one worker's challenge is good at any other."""
    fd = os.open(os.path.join(directory, SECRET), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)


def read_secret(directory: str) -> bytes:
    with open(os.path.join(directory, SECRET), "rb") as f:
        return f.read()


def check_ports_free(listen: Sequence[ListenAddress]) -> None:
    """Bind each address once without SO_REUSEPORT and let it go: if
    anything holds it (another proxy, even one that shares ports), startup
    stops here with one line instead of silently sharing its traffic."""
    for addr in listen:
        family = socket.AF_INET6 if addr.family6 else socket.AF_INET
        kind = socket.SOCK_DGRAM if addr.transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        try:
            sock.bind((addr.host, addr.port))
        except OSError as e:
            raise ConfigError("proxy", "listen", f"cannot listen on {addr.host}:{addr.port}: {e.strerror}") from None
        finally:
            sock.close()


class HubListener(Service):
    """The hub's Unix socket, and the binding table's sweeps, while the
    parent runs; the private directory goes when it stops."""

    def __init__(self, reactor: Any, hub: Any, directory: str, table: BindingTable) -> None:
        self.reactor = reactor
        self.hub = hub
        self.directory = directory
        self.table = table
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        self.port = self.reactor.listenUNIX(os.path.join(self.directory, HUB_SOCKET), self.hub, mode=0o600)
        self.table.start()

    def stopService(self) -> Any:
        super().stopService()
        self.table.stop()
        d = self.port.stopListening() if self.port is not None else None

        def remove(_: Any) -> None:
            shutil.rmtree(self.directory, ignore_errors=True)

        if d is not None:
            return d.addBoth(remove)
        remove(None)
        return None
