"""``sosimple check SITE.INI`` and ``twistd sosimple-proxy --check``.

Validates a configuration the way startup does, without binding a port or
writing a file, so that an administrator can try an edited ``site.ini``
next to a running proxy before restarting it: the same
:func:`~sosimple_proxy.config.load_config` and the same files read by the
composition root (:func:`~sosimple_proxy.wiring.read_startup_files`), plus
what startup cannot see yet: certificates that expire soon.

A certificate that has expired is an error (phones refuse it, so the proxy
would start only to fail every TLS handshake); one that expires within
:data:`EXPIRY_WARNING_DAYS` is a warning.
"""

from __future__ import annotations

import datetime
from typing import IO, Callable

import attrs
from twisted.logger import ILogObserver, LogEvent, LogLevel, Logger, formatEvent
from zope.interface import provider

from sosimple_proxy.config import Config, ConfigError, certificate_settings, load_config
from sosimple_proxy.security.certificate_dates import CertificateDateError, validity_window
from sosimple_proxy.wiring import read_startup_files

__all__ = ["EXPIRY_WARNING_DAYS", "CheckReport", "check_site", "certificate_findings", "run_check"]

EXPIRY_WARNING_DAYS = 30


@attrs.frozen
class CheckReport:
    """A configuration that would start, and what an administrator should
    still hear about (unknown keys, ``verify = no``, certificates expiring)."""

    path: str
    warnings: tuple[str, ...]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def certificate_findings(cfg: Config, now: datetime.datetime) -> list[str]:
    """Warnings about the configured certificates; raises :class:`ConfigError`
    for the first one that has expired."""
    warnings = []
    for section, path in certificate_settings(cfg):
        where = f"site.ini: [{section}] certificate: "
        try:
            window = validity_window(path)
        except CertificateDateError as e:
            # startup did not need it (e.g. [tls] without a tls: listener)
            warnings.append(f"{where}{e}")
            continue
        end = window.not_after.date().isoformat()
        days = window.days_left(now)
        if days <= 0:
            raise ConfigError(section, "certificate", f"certificate {path} expired on {end}")
        if days <= EXPIRY_WARNING_DAYS:
            left = f"in {int(days)} full days" if days >= 1 else "within a day"
            warnings.append(f"{where}certificate {path} expires on {end}, {left}")
        if window.not_before > now:
            start = window.not_before.date().isoformat()
            warnings.append(f"{where}certificate {path} is not valid before {start}")
    return warnings


def _warning_collector(into: list[str]) -> Logger:
    """A Logger whose warnings and errors land in ``into`` as text."""

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            into.append(formatEvent(event))

    return Logger(observer=observe)


def check_site(path: str, now: Callable[[], datetime.datetime] = _utcnow) -> CheckReport:
    """Everything startup checks before binding, and the certificates'
    dates; raises :class:`ConfigError` with the one line startup would print."""
    cfg = load_config(path)
    warnings = list(cfg.warnings)
    read_startup_files(cfg, log=_warning_collector(warnings))
    warnings += certificate_findings(cfg, now())
    return CheckReport(path, tuple(warnings))


def run_check(path: str, stdout: IO[str], stderr: IO[str], prefix: str = "") -> int:
    """Check ``path``, print ``ok`` or the warnings (status 0), or the one
    line that would stop startup (status 1, on ``stderr``)."""
    try:
        report = check_site(path)
    except ConfigError as e:
        stderr.write(f"{prefix}{e}\n")
        return 1
    for warning in report.warnings:
        stdout.write(f"warning: {warning}\n")
    if not report.warnings:
        stdout.write("ok\n")
    stdout.flush()
    return 0
