"""When the certificates in a PEM file stop (or start) being valid.

Administrators renew certificates by hand or by a timer that can fail
silently; ``sosimple check`` reads these dates so that a certificate about
to expire is seen before phones start refusing the proxy.
"""

from __future__ import annotations

import datetime

import attrs
from cryptography import x509

__all__ = ["ValidityWindow", "CertificateDateError", "validity_window"]


class CertificateDateError(ValueError):
    """The file cannot be read or holds no PEM certificate; ``str()`` says why."""


@attrs.frozen
class ValidityWindow:
    """The dates a whole chain is valid between: the latest start and the
    earliest end of the certificates in one file (leaf and intermediates)."""

    not_before: datetime.datetime
    not_after: datetime.datetime

    def days_left(self, now: datetime.datetime) -> float:
        """Days until the earliest expiry (negative once expired)."""
        return (self.not_after - now).total_seconds() / 86400


def validity_window(path: str) -> ValidityWindow:
    """The validity of every certificate in the PEM file at ``path``, combined."""
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise CertificateDateError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateDateError(f"{path}: no PEM certificate") from None
    return ValidityWindow(
        not_before=max(c.not_valid_before_utc for c in certs),
        not_after=min(c.not_valid_after_utc for c in certs),
    )
