"""Which SIP peers are members of our CA ring, and for which domains.

Proxies of a CA ring recognise each other's SIP traffic by the identity
they have in the ring (issue 11): a member connects over TLS with its node
certificate as client certificate, and the SIP domains the CA wrote into it
are the domains whose users it may vouch for.  The SIP server asks for a
client certificate but does not demand one (phones have none) nor check it
during the handshake (phones may have one from anywhere); this module
checks the certificate the client proved it holds: signed by a certificate
of the ring's CA bundle, within its dates, naming a node id.  Anything else
makes the peer an ordinary one.

The CA file is re-read by :meth:`RingMembers.reload` (SIGHUP).
"""

from __future__ import annotations

import datetime
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.logger import Logger

from sosimple_proxy.security import nodecerts

__all__ = ["RingMembers"]

log = Logger()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class RingMembers:
    """The ring's CA, and what a client certificate makes its holder."""

    LIMIT = 1024

    def __init__(self, ca: str, bits: int = nodecerts.DEFAULT_BITS, now: Callable[[], datetime.datetime] = _now) -> None:
        self.ca, self.bits, self.now = ca, bits, now
        self._cas = self._load()
        self._seen: dict[bytes, tuple[str, ...] | None] = {}

    def _load(self) -> list[x509.Certificate]:
        with open(self.ca, "rb") as f:
            cas = x509.load_pem_x509_certificates(f.read())
        if not cas:
            raise ValueError(f"{self.ca}: no certificates")
        return cas

    def reload(self) -> bool:
        """Re-read the CA bundle (SIGHUP); a bad one keeps the old."""
        try:
            cas = self._load()
        except (OSError, ValueError) as e:
            log.error("ring members: reload of {ca} failed, keeping the old CA: {why}", ca=self.ca, why=str(e))
            return False
        self._cas, self._seen = cas, {}
        return True

    def domains(self, cert: x509.Certificate | None) -> tuple[str, ...] | None:
        """The SIP domains a member's certificate names; None: not a member
        (no certificate, another CA's, out of its dates, no node id)."""
        if cert is None:
            return None
        moment = self.now()
        if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
            return None
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint in self._seen:
            return self._seen[fingerprint]
        answer: tuple[str, ...] | None = None
        if any(nodecerts.issued_by(cert, ca) for ca in self._cas):
            try:
                nodecerts.node_id_of(cert, self.bits)
                answer = nodecerts.domains_of(cert)
            except nodecerts.NodeCertError:
                answer = None
        if len(self._seen) >= self.LIMIT:
            self._seen.clear()
        self._seen[fingerprint] = answer
        return answer
