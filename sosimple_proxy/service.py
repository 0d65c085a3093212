"""Wiring: site.ini in, one ``MultiService`` out.

This module is the composition root, so it is the one place that picks the
global reactor (in :func:`makeService`); everything it builds takes the
reactor as an argument.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.logger import Logger

from sosimple_proxy.config import Config, ConfigError, load_config, tls_config
from sosimple_proxy.reloads import Reloads
from sosimple_proxy.security.tls import TLSFileError
from sosimple_proxy.tls_contexts import TLSContexts, build_tls

log = Logger()

# Location providers that exist in this build; the others named in
# [location] order are skipped with a log line at startup.
BUILT_PROVIDERS: frozenset[str] = frozenset({"local", "routes", "overlay", "pstn", "dns"})


def build_service(cfg: Config, reactor: Any) -> MultiService:
    """Build the proxy's services from a validated config."""
    from sosimple_proxy.proxy.core import ProxyCore
    from sosimple_proxy.sip.stack import SipStack
    from sosimple_proxy.sip.timers import TimerConfig

    top = MultiService()
    for warning in cfg.warnings:
        log.warn("{warning}", warning=warning)
    # The ring first: the proxy and the admin API use it (``top.overlay``,
    # an OverlayService whose ``ready`` fires with the node, or None).
    top.overlay = None  # type: ignore[attr-defined]
    if cfg.section("overlay")["listen"]:
        from sosimple_proxy.overlay.service import OverlayService

        top.overlay = OverlayService(reactor, cfg.section("overlay"))  # type: ignore[attr-defined]
        top.overlay.setServiceParent(top)  # type: ignore[attr-defined]
    else:
        log.info("[overlay] listen is empty: no overlay")
    # Every ring this proxy is a member of, by its [location] provider name
    # (paper III.C.3: one proxy in several rings bridges them).
    top.rings = {"overlay": top.overlay} if top.overlay is not None else {}  # type: ignore[attr-defined]
    for ring_name, section in cfg.named("overlay").items():
        if not section["listen"]:
            log.info("[overlay:{name}] listen is empty: not a member", name=ring_name)
            continue
        from sosimple_proxy.overlay.service import OverlayService as Ring

        ring = Ring(reactor, section, name=f"overlay:{ring_name}")
        ring.setServiceParent(top)
        top.rings[f"overlay:{ring_name}"] = ring  # type: ignore[attr-defined]
    for name in cfg.section("location")["order"]:
        base = name.split(":", 1)[0]
        if (
            base not in BUILT_PROVIDERS
            or (base == "overlay" and name not in top.rings)  # type: ignore[attr-defined]
            or (name == "pstn" and not cfg.named("gateway"))
        ):
            log.info("location provider {name!r} is not configured in this build; skipped", name=name)
    if cfg.section("admin")["listen"]:
        from sosimple_proxy.web.admin import admin_service

        admin_service(reactor, cfg.section("admin"), top.overlay).setServiceParent(top)  # type: ignore[attr-defined]
    if cfg.proxy["listen"]:
        # RFC 3263 (``[dns] servers``, or the system's) for other domains and
        # for next hops named by host, only when "dns" is in the location
        # order: without it nothing queries DNS (tests leave it out).
        resolve = None
        if "dns" in cfg.section("location")["order"]:
            from sosimple_proxy.location.dns import HopResolver, rfc3263_from_config

            resolve = HopResolver(rfc3263_from_config(cfg.section("dns"), reactor))
        core = ProxyCore(reactor, cfg, resolve=resolve, overlays=dict(top.rings))  # type: ignore[attr-defined]
        tls = _tls(cfg)
        stack = SipStack(
            reactor,
            cfg.proxy["listen"],
            core,
            timers=TimerConfig(cfg.sip["t1"], cfg.sip["t2"], cfg.sip["t4"]),
            max_message_size=cfg.proxy["max_message_size"],
            udp_rcvbuf=cfg.sip["udp_rcvbuf"],
            tcp_idle_timeout=cfg.sip["tcp_idle_timeout"],
            **tls.stack_arguments(),
        )
        stack.setServiceParent(top)
        # SIGHUP: new certificates for new connections; calls carry on.
        reloads = Reloads(reactor)
        reloads.add("TLS certificates", stack.transport.reload_tls)
        reloads.setServiceParent(top)
    else:
        log.info("[proxy] listen is empty: no SIP service")
    return top


def _tls(cfg: Config) -> TLSContexts:
    """The TLS contexts, with their files read now: a bad one stops startup
    with one line naming its [tls] key, before any port is bound."""
    try:
        return build_tls(tls_config(cfg), cfg.proxy["listen"])
    except TLSFileError as e:
        raise SystemExit(str(ConfigError("tls", e.key, e.problem))) from None


def makeService(path: str) -> MultiService:
    """The twistd entry point: a bad config ends the process with one line.

    ``SystemExit`` with a string prints that string on stderr and exits with
    status 1; twistd prints no usage text for it, and nothing is bound yet.
    """
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    from twisted.internet import reactor

    tune_garbage_collector()
    return build_service(cfg, reactor)


def tune_garbage_collector() -> None:
    """Fewer full collections: a proxy keeps every transaction alive for
    about 32 s (Timers J, K, M), so under load the heap holds hundreds of
    thousands of young containers, and CPython's default thresholds make a
    full collection walk them every few thousand messages (measured: half
    the CPU of a proxied MESSAGE).  Our transactions drop their reference
    cycles when they end, so reference counting frees them and the cyclic
    collector has little to find; it still runs, less often."""
    import gc

    gc.freeze()  # what startup built lives as long as the process
    gc.set_threshold(10_000, 10, 1_000)
