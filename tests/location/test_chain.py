"""The location chain's rules (site-ini.md, [location]) and its providers."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.location.chain import LocationChain
from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, Miss, Target
from sosimple_proxy.location.local import LocalLocator
from sosimple_proxy.location.routes import StaticRoutes
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.sip.address import ListenAddress
from sosimple_proxy.sip.uri import parse_uri


@implementer(ILocator)
class Fixed:
    def __init__(self, name, answer):
        self.name = name
        self.answer = answer
        self.asked = 0

    def locate(self, uri):
        self.asked += 1
        return self.answer


def found(name):
    return Found((Target(parse_uri(f"sip:x@{name}.test")),), name)


def test_first_found_wins_and_later_providers_are_not_asked():
    a, b = Fixed("a", NOT_MINE), Fixed("b", found("b"))
    c = Fixed("c", found("c"))
    result = LocationChain([a, b, c]).locate(parse_uri("sip:u@example.com"))
    assert result.provider == "b" and c.asked == 0


def test_a_miss_goes_on_to_the_next_provider_serving_the_domain():
    chain = LocationChain([Fixed("local", Miss("Not Found", "local")), Fixed("ring", found("ring"))])
    assert chain.locate(parse_uri("sip:u@example.com")).provider == "ring"


def test_last_serving_miss_is_the_answer_and_nobody_serving_is_not_mine():
    chain = LocationChain([Fixed("local", Miss("Not Found", "local")), Fixed("routes", NOT_MINE)])
    assert isinstance(chain.locate(parse_uri("sip:u@example.com")), Miss)
    assert LocationChain([Fixed("routes", NOT_MINE)]).locate(parse_uri("sip:u@x.test")) is NOT_MINE


def test_asynchronous_provider_continues_the_chain():
    d: Deferred = Deferred()
    later = Fixed("later", found("later"))
    result = LocationChain([Fixed("ring", d), later]).locate(parse_uri("sip:u@example.com"))
    assert isinstance(result, Deferred) and later.asked == 0
    got = []
    result.addCallback(got.append)
    d.callback(Miss("Not Found", "ring"))
    assert got[0].provider == "later"


def test_a_failing_provider_is_skipped_not_fatal():
    class Broken(Fixed):
        def locate(self, uri):
            raise RuntimeError("boom")

    chain = LocationChain([Broken("x", None), Fixed("b", found("b"))])
    assert chain.locate(parse_uri("sip:u@example.com")).provider == "b"
    failing = Deferred()
    chain = LocationChain([Fixed("ring", failing), Fixed("b", found("b"))])
    got = []
    chain.locate(parse_uri("sip:u@example.com")).addCallback(got.append)
    failing.errback(RuntimeError("ring down"))
    assert got[0].provider == "b"


def test_local_provider_serves_our_domains_only():
    clock = Clock()
    table = BindingTable(clock)
    table.replace("bob@example.com", [Binding("bob@example.com", "sip:bob@127.0.0.1:6001", 100.0, "c", 1, q=0.7)])
    addressing = Addressing(["example.com"], [ListenAddress("udp", "127.0.0.1", 5060)])
    local = LocalLocator(table, addressing.is_ours, addressing.aor)
    got = local.locate(parse_uri("sip:bob@example.com"))
    assert [(str(t.uri), t.q) for t in got.targets] == [("sip:bob@127.0.0.1:6001", 0.7)]
    # our own address stands for our domain
    assert isinstance(local.locate(parse_uri("sip:bob@127.0.0.1:5060")), Found)
    assert isinstance(local.locate(parse_uri("sip:alice@example.com")), Miss)
    assert local.locate(parse_uri("sip:bob@other.test")) is NOT_MINE
    clock.advance(101)
    assert isinstance(local.locate(parse_uri("sip:bob@example.com")), Miss)


def test_static_routes_push_the_next_hop_as_a_loose_route():
    routes = StaticRoutes({"other.test": "sip:127.0.0.1:5070;transport=tcp"})
    got = routes.locate(parse_uri("sip:carol@Other.Test"))
    (t,) = got.targets
    assert str(t.uri) == "sip:carol@Other.Test"
    assert t.route == ("<sip:127.0.0.1:5070;transport=tcp;lr>",)
    assert routes.locate(parse_uri("sip:carol@else.test")) is NOT_MINE


def test_bad_route_value_stops_startup_naming_it():
    with pytest.raises(ConfigError) as e:
        parse_config("[routes]\nother.test = not a uri\n", "x.ini")
    assert "[routes] other.test" in str(e.value)
