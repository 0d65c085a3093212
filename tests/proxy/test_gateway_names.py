"""Gateways given by host name are probed like the others (issue 15): the
OPTIONS goes where RFC 3263 resolves the name, and a name that does not
resolve marks the gateway inactive.  The zone answers in-process (a
twisted.names authority as the resolver); time is a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from sosimple_proxy.location.gateways import ACTIVE, INACTIVE
from sosimple_proxy.location.rfc3263 import Lookups, RFC3263Resolver
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request
from tests.dnszone import Zone, record
from tests.proxy.harness import Harness

BY_A = Peer("udp", "127.0.0.5", 5084)
BY_SRV = Peer("udp", "127.0.0.6", 5085)


def harness() -> Harness:
    clock = Clock()
    zone = Zone(
        "test",
        [
            ("gw-a.pstn.test", record("A", address="127.0.0.5", ttl=300)),
            ("_sip._udp.gw-srv.pstn.test", record("SRV", priority=10, weight=0, port=5085, target="h.pstn.test", ttl=300)),
            ("h.pstn.test", record("A", address="127.0.0.6", ttl=300)),
        ],
    )
    rfc = RFC3263Resolver(Lookups(zone, clock), clock)
    ini = (
        "[pstn]\ncountry_code = 1\nprobe_interval = 20\nretry_interval = 60\n"
        "[gateway:a]\nuri = sip:gw-a.pstn.test:5084\nprefixes = +1\npriority = 1\n"
        "[gateway:srv]\nuri = sip:gw-srv.pstn.test\nprefixes = +1\npriority = 2\n"
        "[gateway:gone]\nuri = sip:nowhere.pstn.test\nprefixes = +1\npriority = 3\n"
        "[location]\norder = local pstn dns\n"
    )
    return Harness(ini, rfc3263=rfc, clock=clock)


def options(sent):
    return {d: m for m, d in sent if isinstance(m, Request) and m.method == "OPTIONS"}


def test_gateways_named_by_host_are_probed_where_dns_resolves_them():
    h = harness()
    states = h.providers["pstn"].gateways.states
    h.clock.advance(0)
    h.clock.advance(0)
    probes = options(h.wire.take())
    assert set(probes) == {BY_A, BY_SRV}
    assert probes[BY_SRV].uri == "sip:gw-srv.pstn.test"
    h.answer(probes[BY_A], 200)
    assert states["a"].state == ACTIVE
    # the name that does not resolve: inactive, so calls skip it
    assert states["gone"].state == INACTIVE
    # the SRV one never answers: Timer F ends the probe, it goes inactive
    h.advance(33)
    assert states["srv"].state == INACTIVE
    # the next rounds probe it again, resolved again; an answer brings it back
    h.advance(8)
    again = options(h.wire.take())
    assert BY_SRV in again
    h.answer(again[BY_SRV], 200)
    assert states["srv"].state == ACTIVE
