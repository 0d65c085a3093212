"""SIP over TLS: what a ``tls:`` stream adds to a TCP one.

A TLS connection is a TCP connection whose bytes go through Twisted's
``TLSMemoryBIOProtocol``; framing, idle closing and the connection table
are the stream machinery's (:mod:`~sosimple_proxy.sip.stream`).  This module
holds the three things that differ: the server side (our certificate, from
``[tls] certificate``/``key``, reloadable), the client side (the peer's
certificate checked against ``[tls] ca`` and the SIP domain the hop was
chosen for, RFC 5922), and a deadline on the handshake so a peer that never
finishes one does not hold a connection.

The contexts themselves live in :mod:`sosimple_proxy.security.tls`; this
layer only plugs them into connections.
"""

from __future__ import annotations

from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from sosimple_proxy.security.tls import DEFAULT_HANDSHAKE_TIMEOUT, ClientTLS, TLSVerificationError
from sosimple_proxy.sip.address import Peer

__all__ = ["TLSTransport", "handshake_failure_reason", "expected_domain"]


def expected_domain(dest: Peer) -> str:
    """The name ``dest``'s certificate must carry: the SIP domain the hop
    was resolved from, or, for a hop given as an IP address (a static route,
    a registered contact, a Via), that address, which then has to be an
    IP-address subjectAltName of the certificate.  We check the address
    rather than only the chain: a chain check alone would let any holder of
    a certificate from the same CA stand in for the peer."""
    return dest.domain or dest.host


def handshake_failure_reason(failure: Failure | BaseException) -> str:
    """One readable line for a TLS connection that failed before or during
    its handshake."""
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, TLSVerificationError):
        return exc.reason
    if isinstance(exc, SSL.Error):
        try:
            details = [str(e[2]) for e in exc.args[0] if len(e) > 2 and e[2]]
        except (IndexError, TypeError):
            details = []
        return "TLS handshake failed" + (f": {'; '.join(details)}" if details else "")
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@attrs.define
class TLSTransport:
    """The TLS side of a transport layer.

    ``server`` is an ``IOpenSSLServerConnectionCreator`` (a
    :class:`~sosimple_proxy.security.tls.ServerTLS`, or anything
    ``TLSMemoryBIOFactory`` takes); without it ``tls:`` addresses cannot
    listen.  ``client`` is a :class:`~sosimple_proxy.security.tls.ClientTLS`;
    without it nothing connects out over TLS.
    """

    server: Any = None
    client: ClientTLS | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: connections closed before their handshake finished (read by metrics)
    handshake_failures: int = 0

    def server_factory(self, factory: Any, clock: IReactorTime, where: object) -> TLSMemoryBIOFactory:
        """``factory``'s connections, served over TLS with our certificate."""
        if self.server is None:
            raise ValueError(f"{where}: no TLS certificate configured")
        return _quiet(TLSMemoryBIOFactory(self.server, False, factory, clock))

    def client_factory(self, factory: Any, clock: IReactorTime, dest: Peer) -> TLSMemoryBIOFactory:
        """``factory``'s connection to ``dest`` over TLS that verifies it
        (ValueError: no outbound TLS, or a domain that is no host name).
        Like ``wrapClientTLS``, but on our clock rather than the global
        reactor's."""
        if self.client is None:
            raise ValueError("TLS is not configured")
        return _quiet(TLSMemoryBIOFactory(self.client.for_domain(expected_domain(dest)), True, factory, clock))

    def reload(self) -> bool:
        """Re-read certificate, key and CA files (SIGHUP): new connections
        use them, established ones keep theirs.  Whether all reloaded."""
        ok = True
        for side in (self.server, self.client):
            reload = getattr(side, "reload", None)
            if reload is not None:
                ok = bool(reload()) and ok
        return ok


def _quiet(factory: TLSMemoryBIOFactory) -> TLSMemoryBIOFactory:
    """No "starting on"/"stopping" lines per connection: the transport logs
    what matters."""
    factory.noisy = False
    return factory
