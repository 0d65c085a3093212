"""Which Request-URIs are ours: our domains, and the proxy's own addresses."""

from __future__ import annotations

import functools
import ipaddress
from typing import Any, Sequence

from sosimple_proxy.proxy.registrar import aor_key
from sosimple_proxy.proxy.stack_link import StackLink
from sosimple_proxy.sip.address import ListenAddress


@functools.lru_cache(maxsize=4096)
def _normal_host(host: str) -> str:
    """One spelling per host (asked several times for every request)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class Addressing:
    """Answers "is this URI for us?" from [proxy] domains and the bound addresses.

    A Request-URI whose host is one of our own listen addresses counts as one
    of our domains (gateways and phones address the proxy by IP).
    """

    def __init__(
        self,
        domains: Sequence[str],
        listen: Sequence[ListenAddress],
        stack: StackLink | None = None,
    ) -> None:
        self.domains = frozenset(_normal_host(d) for d in domains)
        # Users addressed at one of our IP addresses are users of this
        # domain (as Kamailio does without use_domain): sip:bob@127.0.0.1
        # reaches the bob who registered as bob@example.com.
        self.primary = _normal_host(domains[0]) if domains else None
        self._configured = list(listen)
        # The transport layer's view (ports really bound) once the stack
        # exists; the configured addresses until then.
        self.stack = stack
        self._cache: tuple[tuple[ListenAddress, ...], tuple[set[str], set[int]]] | None = None

    def _addresses(self) -> tuple[set[str], set[int]]:
        addrs = (tuple(self.stack.listening()) if self.stack is not None else ()) or tuple(self._configured)
        cached = self._cache
        if cached is not None and cached[0] == addrs:
            return cached[1]
        hosts = {_normal_host(a.host) for a in addrs}
        if any(h in ("0.0.0.0", "::") for h in hosts):
            hosts |= {"127.0.0.1", "::1"}
        result = hosts, {a.port for a in addrs}
        self._cache = (addrs, result)
        return result

    def is_our_host(self, host: str | None, port: int | None) -> bool:
        if not host:
            return False
        h = _normal_host(host)
        if h in self.domains:
            return True
        hosts, ports = self._addresses()
        return h in hosts and (port is None or port in ports)

    def is_ours(self, uri: Any) -> bool:
        """A sip/sips URI whose host is one of our domains or addresses."""
        if getattr(uri, "scheme", None) not in ("sip", "sips"):
            return False
        return self.is_our_host(uri.host, uri.port)

    def is_self(self, uri: Any) -> bool:
        """Addressed to the proxy itself: no user part, and our host."""
        return self.is_ours(uri) and not uri.user

    def aor(self, uri: Any) -> str:
        """The canonical AoR; our own addresses stand for the first domain."""
        key = aor_key(uri)
        host = _normal_host(uri.host or "")
        if self.primary and host not in self.domains and "@" in key and host in self._addresses()[0]:
            return key.rsplit("@", 1)[0] + "@" + self.primary
        return key
