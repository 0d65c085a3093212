"""``[dns] timeout``, ``attempts`` and ``avoid_seconds`` (issue 15), through
the resolver the composition root builds from them, against DNS servers on
loopback: a silent one (a UDP socket that counts queries and never answers)
and a twisted.names authority."""

from __future__ import annotations

import time

import pytest
from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.location.rfc3263 import ResolutionFailed
from sosimple_proxy.sip.uri import parse_uri
from sosimple_proxy.wiring import rfc3263_resolver
from tests.dnszone import Zone, record, serve_zone


class Silent(protocol.DatagramProtocol):
    """A DNS server that hears every query and answers none."""

    def __init__(self) -> None:
        self.heard: list[float] = []

    def datagramReceived(self, data: bytes, addr) -> None:
        self.heard.append(time.monotonic())


def dns_section(text: str):
    return parse_config("[location]\norder = local dns\n[dns]\n" + text).section("dns")


class Settings(unittest.TestCase):
    def setUp(self) -> None:
        self.silent = Silent()
        self.silent_port = reactor.listenUDP(0, self.silent, interface="127.0.0.1")
        zone = Zone(
            "test",
            [
                ("_sip._udp.other.test", record("SRV", priority=10, weight=0, port=5070, target="a.other.test", ttl=60)),
                ("_sip._udp.other.test", record("SRV", priority=20, weight=0, port=5080, target="b.other.test", ttl=60)),
                ("a.other.test", record("A", address="127.0.0.2", ttl=60)),
                ("b.other.test", record("A", address="127.0.0.3", ttl=60)),
            ],
        )
        self.udp, self.tcp = serve_zone(zone, reactor)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.silent_port.stopListening()
        yield self.udp.stopListening()
        yield self.tcp.stopListening()

    @defer.inlineCallbacks
    def test_a_query_is_tried_attempts_times_timeout_apart_then_fails(self):
        port = self.silent_port.getHost().port
        rfc = rfc3263_resolver(dns_section(f"servers = 127.0.0.1:{port}\ntimeout = 0.3\nattempts = 2\n"), reactor)
        rfc.families = lambda: (4,)  # one query: the A record
        t0 = time.monotonic()
        try:
            yield rfc.resolve(parse_uri("sip:carol@nowhere.test:5060"))
        except ResolutionFailed as e:
            self.assertTrue(e.temporary)
        else:
            self.fail("resolved without an answer")
        took = time.monotonic() - t0
        # one query (the A record: an explicit port means no NAPTR/SRV), 2 attempts
        self.assertEqual(len(self.silent.heard), 2)
        self.assertGreaterEqual(took, 0.55)
        self.assertGreaterEqual(self.silent.heard[1] - self.silent.heard[0], 0.25)

    @defer.inlineCallbacks
    def test_avoid_seconds_is_how_long_a_failed_destination_goes_last(self):
        port = self.udp.getHost().port
        rfc = rfc3263_resolver(dns_section(f"servers = 127.0.0.1:{port}\navoid_seconds = 5\n"), reactor)
        first = yield rfc.resolve(parse_uri("sip:carol@other.test"))
        self.assertEqual([d.host for d in first], ["127.0.0.2", "127.0.0.3"])
        rfc.avoid(first[0])
        until = rfc.avoided[str(first[0])]
        self.assertTrue(4 <= until - reactor.seconds() <= 5)
        again = yield rfc.resolve(parse_uri("sip:carol@other.test"))
        self.assertEqual([d.host for d in again], ["127.0.0.3", "127.0.0.2"])


def test_dns_defaults():
    dns = dns_section("")
    assert (dns["timeout"], dns["attempts"], dns["avoid_seconds"]) == (2.0, 3, 60.0)


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("timeout = 0\n", "timeout", "greater than 0"),
        ("attempts = 0\n", "attempts", "below the minimum"),
        ("attempts = many\n", "attempts", "not an integer"),
        ("avoid_seconds = -1\n", "avoid_seconds", "greater than 0"),
    ],
)
def test_bad_dns_values_stop_startup_with_one_line(text, key, words):
    with pytest.raises(ConfigError) as info:
        dns_section(text)
    assert (info.value.section, info.value.key) == ("dns", key)
    assert words in str(info.value) and "\n" not in str(info.value)
