"""``[limits] kernel_bans``: deciding whether the limiter's bans are copied
into the kernel, and the service that keeps the copy
(:mod:`sosimple_proxy.security.kernel_bans` does the work).

One mirror per proxy, on the limiter the admin API shows: in a single
process the stack's, with ``[proxy] workers`` the parent's (every worker's
bans meet there, so one table serves them all).

``auto`` turns it on when the proxy runs as root (or holds CAP_NET_ADMIN)
and ``nft`` is installed, and not when ``[pstn] emergency`` numbers are
set: the kernel cannot tell an emergency INVITE from the rest of a banned
source's traffic, and an emergency call must get through even from a
banned address (the stack's gate lets it pass; the kernel would not).
``yes`` stops startup, with one line, where ``auto`` would stay off.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.logger import Logger

from sosimple_proxy.config import Config, ConfigError
from sosimple_proxy.security.kernel_bans import KernelBans, ProcessRunner, kernel_bans_unavailable, table_name
from sosimple_proxy.security.limits import Limits

__all__ = ["KernelBansService", "build_kernel_bans"]

log = Logger()


class KernelBansService(Service):
    """Makes the nft table at start, deletes it at stop (twistd waits)."""

    name = "kernel-bans"

    def __init__(self, bans: KernelBans) -> None:
        self.bans = bans

    def startService(self) -> None:
        super().startService()
        self.bans.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.bans.stop()


def build_kernel_bans(
    cfg: Config,
    reactor: Any,
    limits: Limits | None,
    emergency: Sequence[str] = (),
    unavailable: Callable[[], str | None] = kernel_bans_unavailable,
) -> KernelBansService | None:
    """The mirror ``[limits] kernel_bans`` asks for, wired to ``limits``'s
    bans and lifts; None when it is off (logged once, with why).  Raises
    :class:`~sosimple_proxy.config.ConfigError` for ``yes`` that cannot be."""
    mode = cfg.section("limits")["kernel_bans"]
    if limits is None or mode == "no":
        return None
    addresses = [(a.host, a.port) for a in cfg.proxy["listen"] if a.port]
    why = unavailable()
    if why is None and not addresses:
        why = "no SIP listen address has a port of its own (port 0 is chosen at bind time)"
    if why is None and emergency:
        why = "[pstn] emergency is set, and a banned source's emergency calls must still reach the proxy"
    if why is not None:
        if mode == "yes":
            raise ConfigError("limits", "kernel_bans", f"yes, but {why}")
        log.info("[limits] kernel_bans = auto: off, {why}; banned sources are dropped by the proxy itself", why=why)
        return None
    bans = KernelBans(reactor, ProcessRunner(reactor), table_name(addresses), [port for _, port in addresses])
    limits.mirror = bans
    limits.on_ban.append(bans.banned)
    limits.on_lift.append(bans.lifted)
    return KernelBansService(bans)
