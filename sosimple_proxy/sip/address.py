"""The addresses SIP moves messages between: a remote :class:`Peer` and one
of our own :class:`ListenAddress` es.

Plain values with no Twisted in them, so that the parser, the transaction
state machines, the proxy and ``config.py`` can all name an address without
pulling in a reactor or a socket.
"""

from __future__ import annotations

import functools
import ipaddress

import attrs

__all__ = ["Peer", "ListenAddress", "STREAM_TRANSPORTS", "normal_host"]

#: The stream transports we speak: a connection carries many messages.
STREAM_TRANSPORTS = ("tcp", "tls")


@attrs.frozen
class Peer:
    """A remote SIP address: where a message came from or goes to.

    ``host`` is an IP address literal (no brackets); names are resolved
    above the transport layer (RFC 3263).

    ``domain`` is, for a TLS peer we connect to, the SIP domain its
    certificate must prove (RFC 5922 section 4: the host of the URI that
    was resolved to this address); None means the address itself.  It is
    part of the peer's identity, so a connection verified for one domain is
    never reused for a request to another that resolves to the same address.
    """

    transport: str
    host: str
    port: int
    domain: str | None = None

    @property
    def family6(self) -> bool:
        return ":" in self.host

    @property
    def reliable(self) -> bool:
        """A stream transport: no retransmissions (RFC 3261 section 17)."""
        return self.transport in STREAM_TRANSPORTS

    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family6 else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.hostport()}"


@attrs.frozen
class ListenAddress:
    """One of our SIP listen addresses, ``transport:host:port``."""

    transport: str
    host: str
    port: int

    @property
    def family6(self) -> bool:
        return ":" in self.host

    def hostport(self) -> str:
        host = f"[{self.host}]" if self.family6 else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.transport}:{self.hostport()}"


@functools.lru_cache(maxsize=4096)
def normal_host(host: str) -> str:
    """One spelling per IP address, so that table lookups match (``::0:1``
    is ``::1``); brackets are dropped.  Raises ValueError for a name."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return str(ipaddress.ip_address(h))
