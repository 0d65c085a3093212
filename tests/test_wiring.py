"""The composition root: the provider table, what build_proxy builds, and
every part provides the interfaces it declares (verifyObject)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sosimple_proxy.config import parse_config
from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.dns import DNSLocator, HopResolver
from sosimple_proxy.location.gateways import GatewayProber
from sosimple_proxy.location.interfaces import IHopResolver, ILocator, IRetargeting
from sosimple_proxy.location.local import LocalLocator
from sosimple_proxy.location.pstn import PassNumbers, PstnLocator
from sosimple_proxy.location.rfc3263 import Lookups, RFC3263Resolver
from sosimple_proxy.location.ring import RingLocator
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.proxy.context import ResponseContext
from sosimple_proxy.proxy.core import ProxyCore
from sosimple_proxy.proxy.forward import RequestForwarder
from sosimple_proxy.proxy.interfaces import IForwarder
from sosimple_proxy.providers import LOCATION_PROVIDERS
from sosimple_proxy.sip.interfaces import IClientTransactionUser, IStackUser, ITransactionUser, ITransportLayer
from sosimple_proxy.wiring import build_proxy
from tests.dnszone import Zone
from tests.proxy.harness import Harness, Wire, invite

FULL = (
    "[proxy]\ndomains = example.com\nlisten = udp:127.0.0.1:5060\n"
    "[location]\norder = local overlay routes dns pstn\n"
    "[routes]\nother.test = sip:127.0.0.1:5999\n"
    "[gateway:a]\nuri = sip:127.0.0.1:5081\n"
)


class FakeRing:
    """What the ring providers use of an OverlayService."""

    def __init__(self) -> None:
        self.ready: Deferred = Deferred()
        self.node = None
        self.keys = None


def full_proxy():
    clock = Clock()
    rfc = RFC3263Resolver(Lookups(Zone("test", []), clock), clock)
    return build_proxy(parse_config(FULL), clock, {"overlay": FakeRing()}, rfc3263=rfc)


def test_every_default_provider_name_is_in_the_table():
    order = parse_config("").section("location")["order"]
    assert all(name.split(":")[0] in LOCATION_PROVIDERS for name in order)


def test_the_providers_sections_are_part_of_site_ini():
    cfg = parse_config("[dns]\nservers = 127.0.0.1:5353\n[gateway:a]\nuri = sip:127.0.0.1:5081\nprefixes = +1 +44\n"
                       "[pstn]\ncountry_code = 1\n[did]\n+14125550100 = sip:alice@example.com\n")
    assert cfg.warnings == []
    assert cfg.section("dns")["servers"] == (("127.0.0.1", 5353),)
    assert cfg.named("gateway")["a"]["prefixes"] == ("1", "44")
    assert cfg.section("did") == {"+14125550100": "sip:alice@example.com"}


def test_build_proxy_builds_the_providers_in_order_and_only_those_configured():
    proxy = full_proxy()
    assert list(proxy.providers) == ["local", "overlay", "routes", "dns", "pstn"]
    assert proxy.location.providers == list(proxy.providers.values())
    assert len(proxy.publishers) == 1  # our domain is the ring's
    # no such ring, no gateway, no such provider: skipped
    h = Harness("[location]\norder = local overlay:other routes pstn nosuch\n")
    assert list(h.providers) == ["local", "routes"]


def test_without_dns_in_the_order_nothing_resolves_names():
    h = Harness("[location]\norder = local routes\n")
    assert h.proxy.forwarder.hops is None


def test_locators_provide_ilocator_and_the_retargeting_ones_iretargeting():
    proxy = full_proxy()
    p = proxy.providers
    assert isinstance(p["local"], PassNumbers) and isinstance(p["local"].provider, LocalLocator)
    assert isinstance(p["overlay"], PassNumbers) and isinstance(p["overlay"].provider, RingLocator)
    assert isinstance(p["routes"], StaticRoutes)
    assert isinstance(p["dns"], DNSLocator)
    assert isinstance(p["pstn"], PstnLocator)
    for locator in [*p.values(), p["local"].provider, p["overlay"].provider, proxy.location]:
        assert verifyObject(ILocator, locator)
    for retargeting in [p["local"], p["overlay"], p["overlay"].provider, p["dns"], p["pstn"], proxy.location]:
        assert verifyObject(IRetargeting, retargeting)
    assert isinstance(proxy.location, LocationChain)


def test_the_proxy_parts_provide_their_interfaces():
    proxy = full_proxy()
    assert isinstance(proxy.core, ProxyCore) and verifyObject(ITransactionUser, proxy.core)
    assert verifyObject(IStackUser, proxy.core)
    assert isinstance(proxy.forwarder, RequestForwarder) and verifyObject(IForwarder, proxy.forwarder)
    assert isinstance(proxy.forwarder.hops, HopResolver) and verifyObject(IHopResolver, proxy.forwarder.hops)
    assert isinstance(proxy.timers.prober, GatewayProber)
    assert verifyObject(IClientTransactionUser, proxy.timers.prober)


def test_the_harness_wire_is_a_transport_layer_and_a_context_a_transaction_user():
    h = Harness()
    assert verifyObject(ITransportLayer, Wire(h.clock, []))
    h.receive(invite(uri="sip:bob@127.0.0.1:6001", method="MESSAGE"))
    txn = next(iter(h.layer._server.values()))
    assert isinstance(txn.data, ResponseContext)
    assert verifyObject(IClientTransactionUser, txn.data)


def test_one_limiter_for_the_stack_and_the_proxy_with_its_timers_run_by_the_service():
    from twisted.internet.testing import MemoryReactorClock

    from sosimple_proxy.security.limits import Limits
    from sosimple_proxy.sip.stack import SipStack
    from sosimple_proxy.wiring import build_service

    cfg = parse_config(
        "[proxy]\nlisten = udp:127.0.0.1:0\n[overlay]\nlisten =\n[admin]\nlisten =\n[location]\norder = local\n"
        "[sip]\nmessage_timeout = 12\n[limits]\nrequests_per_second = 7\nmax_connections = 3\n"
    )
    reactor = MemoryReactorClock()
    top = build_service(cfg, reactor)
    limits = top.limits
    assert isinstance(limits, Limits)
    assert (limits.config.requests_per_second, limits.config.max_connections) == (7.0, 3)
    [stack] = [s for s in top if isinstance(s, SipStack)]
    assert stack.limits is limits and stack.gate is not None and stack.gate.numbers == frozenset()
    assert stack.transport.limits is limits and stack.transport.message_timeout == 12.0
    assert stack.tu.__class__.__name__ == "ProxyCore"
    service = stack.getServiceNamed("limits")
    service.startService()
    assert limits._sweeper is not None and limits._sweeper.running
    service.stopService()
    assert limits._sweeper is None


def test_emergency_numbers_reach_the_stack_when_pstn_has_them():
    from sosimple_proxy.wiring import emergency_numbers

    cfg = parse_config("")
    assert emergency_numbers(cfg) == ()
    cfg.section("pstn")["emergency"] = ("911", "112")
    assert emergency_numbers(cfg) == ("911", "112")
    cfg.section("pstn")["emergency"] = "911 112"
    assert emergency_numbers(cfg) == ("911", "112")


def test_no_limiter_without_sip():
    from twisted.internet.testing import MemoryReactorClock

    from sosimple_proxy.wiring import build_service

    top = build_service(parse_config("[proxy]\nlisten =\n[overlay]\nlisten =\n[admin]\nlisten =\n"), MemoryReactorClock())
    assert top.limits is None


def test_build_service_reads_the_nonce_secret_and_reloads_the_users_file(tmp_path):
    import pytest

    from sosimple_proxy.config import ConfigError
    from sosimple_proxy.reloads import Reloads
    from sosimple_proxy.security.users import UserEntry
    from sosimple_proxy.wiring import build_service

    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("alice", "example.com", "pw").line() + "\n")
    secret = tmp_path / "state" / "nonce-secret"
    cfg = parse_config(
        "[proxy]\ndomains = example.com\nlisten = udp:127.0.0.1:0\n[overlay]\nlisten =\n[admin]\nlisten =\n"
        f"[location]\norder = local\n[auth]\nusers_file = {users}\nnonce_secret_file = {secret}\n"
    )
    top = build_service(cfg, Clock())
    assert secret.exists() and oct(secret.stat().st_mode & 0o777) == "0o600"
    (reloads,) = [s for s in top if isinstance(s, Reloads)]
    assert "users file" in [what for what, _ in reloads._actions]
    users.write_text("broken\n")
    reloads.reload()  # a bad file keeps the old table, with a log line

    blocked = tmp_path / "file"
    blocked.write_text("")
    bad = parse_config(
        "[proxy]\nlisten = udp:127.0.0.1:0\n[overlay]\nlisten =\n[admin]\nlisten =\n"
        f"[auth]\nnonce_secret_file = {blocked}/sub/secret\n"
    )
    with pytest.raises(ConfigError, match=r"\[auth\] nonce_secret_file"):
        build_service(bad, Clock())
