"""The TLS contexts the proxy runs with, built from ``[tls]`` at startup.

Part of the composition root: it reads the certificate, key and CA files
before any port is bound, so that a bad file stops startup with one line
naming its ``[tls]`` key, and it says once, at startup, that ``verify = no``
makes outbound TLS worthless against an attacker.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
from twisted.logger import Logger

from sosimple_proxy.security.tls import ClientTLS, ServerTLS, TLSConfig, TLSFileError, insecure_warning
from sosimple_proxy.sip.address import ListenAddress

__all__ = ["TLSContexts", "build_tls", "missing_for_listeners"]

log = Logger()


def missing_for_listeners(config: TLSConfig) -> list[str]:
    """The ``[tls]`` keys a ``tls:`` listener needs that are not set."""
    return [key for key in ("certificate", "key") if not getattr(config, key)]


@attrs.frozen
class TLSContexts:
    """Our server side (None without ``tls:`` listeners), our client side,
    and the handshake deadline: what the SIP stack takes."""

    server: ServerTLS | None
    client: ClientTLS
    handshake_timeout: float

    def stack_arguments(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~sosimple_proxy.sip.stack.SipStack`."""
        return {"tls_server": self.server, "tls_client": self.client, "tls_handshake_timeout": self.handshake_timeout}


def build_tls(config: TLSConfig, listen: Sequence[ListenAddress], log: Logger = log, ring: Any = None) -> TLSContexts:
    """Contexts for ``config``; raises :class:`TLSFileError` (its ``key``
    names the ``[tls]`` key) for a file that cannot be used.

    The client side always exists: a ``sips:`` target or a
    ``transport=tls`` route needs it even when we listen for no TLS.
    Without ``[tls] ca`` it trusts the system's store (other domains with
    public certificates).

    ``ring`` (a CA ring's ``RingTLS``): our listeners ask clients for a
    certificate (a member's node certificate says which domains it vouches
    for), and we present our node certificate when we connect out, so the
    ring's other proxies recognise us.
    """
    server = None
    if any(a.transport == "tls" for a in listen):
        missing = missing_for_listeners(config)
        if missing:
            raise TLSFileError(missing[0], "a tls: listen address needs [tls] " + " and ".join(missing))
        server = ServerTLS(config.certificate, config.key, config.min_version, None, log, ask_certificate=ring is not None)
    if ring is not None:
        client = ClientTLS(config.ca or None, config.min_version, config.verify, ring.certificate, ring.key, log)
    else:
        client = ClientTLS.from_config(config, log=log)
    if not config.verify:
        log.warn("{warning}", warning=insecure_warning())
    return TLSContexts(server, client, config.handshake_timeout)
