"""``[limits] kernel_bans`` decided at startup (sosimple_proxy/ban_mirror.py):
auto stays off where it cannot be (or must not: emergency numbers), yes
stops startup there, no never tries.  Availability is passed in, so these
run as any user; the real kernel is tests/security/test_kernel_bans_netns.py's."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sosimple_proxy.ban_mirror import KernelBansService, build_kernel_bans
from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.security.limits import Limits, LimitsConfig

LISTEN = "[proxy]\nlisten = udp:10.0.0.1:5060, tcp:10.0.0.1:5060, tcp:10.0.0.1:5061\n"


def build(mode: str, unavailable: str | None = None, emergency: tuple[str, ...] = ()):
    cfg = parse_config(LISTEN + f"[limits]\nkernel_bans = {mode}\n")
    limits = Limits(Clock(), LimitsConfig())
    return build_kernel_bans(cfg, Clock(), limits, emergency, unavailable=lambda: unavailable), limits


def test_auto_where_it_can_mirrors_the_limiter_on_the_sip_ports() -> None:
    service, limits = build("auto")
    assert isinstance(service, KernelBansService)
    bans = service.bans
    assert limits.mirror is bans and bans.banned in limits.on_ban and bans.lifted in limits.on_lift
    assert bans.table == "sosimple_10_0_0_1_5060" and bans.ports == [5060, 5061]


def test_auto_where_it_cannot_stays_off() -> None:
    service, limits = build("auto", unavailable="the proxy is neither root nor holds CAP_NET_ADMIN")
    assert service is None and limits.mirror is None and not limits.on_ban


def test_auto_with_emergency_numbers_stays_off() -> None:
    service, limits = build("auto", emergency=("112",))
    assert service is None and limits.mirror is None


def test_yes_where_it_cannot_stops_startup_with_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        build("yes", unavailable="'nft' (nftables) is not installed")
    assert str(info.value) == "site.ini: [limits] kernel_bans: yes, but 'nft' (nftables) is not installed"
    with pytest.raises(ConfigError, match="emergency"):
        build("yes", emergency=("911",))


def test_no_never_mirrors() -> None:
    service, limits = build("no")
    assert service is None and limits.mirror is None


def test_listen_ports_chosen_at_bind_time_leave_it_off() -> None:
    cfg = parse_config("[proxy]\nlisten = udp:127.0.0.1:0\n[limits]\nkernel_bans = auto\n")
    limits = Limits(Clock(), LimitsConfig())
    assert build_kernel_bans(cfg, Clock(), limits, (), unavailable=lambda: None) is None
