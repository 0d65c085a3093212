"""RFC 3263 against a real twisted.names authoritative server on loopback.

DNS goes over real UDP on 127.0.0.1 (the running reactor); what depends on
time (TTLs, avoidance) runs on a ``Clock``.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.names import client, dns
from twisted.trial import unittest

from sosimple_proxy.location.dns import DNSLocator, HopResolver, retry_after
from sosimple_proxy.location.interfaces import NOT_MINE, Found, Miss, Target
from sosimple_proxy.location.rfc3263 import Destination, Lookups, ResolutionFailed, RFC3263Resolver, order_srv
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Response
from sosimple_proxy.sip.uri import parse_uri
from tests.dnszone import Zone, record, serve_zone


def srv(priority: int, weight: int, port: int, target: str, ttl: int = 60):
    return record("SRV", priority=priority, weight=weight, port=port, target=target, ttl=ttl)


def naptr(order: int, pref: int, service: str, replacement: str, ttl: int = 60):
    return record("NAPTR", order=order, preference=pref, flags=b"s", service=service.encode(), replacement=replacement, ttl=ttl)


def a(address: str, ttl: int = 60):
    return record("A", address=address, ttl=ttl)


def zone() -> Zone:
    """other.test: NAPTR to TCP (preferred) and UDP; two SRV priorities with
    two addresses on the first target; nonaptr.test: SRV only; plain.test:
    an A record only; tls.test: SIPS SRV."""
    return Zone(
        "test",
        [
            ("other.test", naptr(20, 10, "SIP+D2U", "_sip._udp.other.test")),
            ("other.test", naptr(10, 20, "SIP+D2U", "_sip._udp.other.test")),
            ("other.test", naptr(10, 10, "SIP+D2T", "_sip._tcp.other.test")),
            ("other.test", naptr(5, 10, "SIPS+D2T", "_sips._tcp.other.test")),
            ("other.test", naptr(1, 10, "SIP+D2X", "_sip._x.other.test")),
            ("_sip._tcp.other.test", srv(20, 0, 5072, "kb.other.test")),
            ("_sip._tcp.other.test", srv(10, 0, 5071, "ka.other.test")),
            ("_sip._udp.other.test", srv(10, 0, 5070, "ka.other.test")),
            ("_sips._tcp.other.test", srv(10, 0, 5061, "ka.other.test")),
            ("ka.other.test", a("127.0.0.2")),
            ("ka.other.test", a("127.0.0.3")),
            ("kb.other.test", a("127.0.0.4")),
            ("nonaptr.test", a("127.0.0.9")),
            ("_sip._tcp.nonaptr.test", srv(10, 0, 5090, "kb.other.test")),
            ("plain.test", a("127.0.0.5", ttl=60)),
            ("emptynaptr.test", naptr(10, 10, "SIP+D2U", "_sip._udp.emptynaptr.test")),
            ("emptynaptr.test", naptr(20, 10, "SIP+D2T", "_sip._tcp.emptynaptr.test")),
            ("_sip._tcp.emptynaptr.test", srv(10, 0, 5080, "kb.other.test")),
            ("gone.test", a("127.0.0.8")),
            ("_sip._udp.gone.test", srv(0, 0, 0, b"")),
            ("_sips._tcp.tls.test", srv(10, 0, 5061, "kb.other.test")),
        ],
    )


class DNSCase(unittest.TestCase):
    def setUp(self) -> None:
        self.zone = zone()
        self.udp, self.tcp = serve_zone(self.zone, reactor)
        self.clock = Clock()
        self.dns = client.Resolver(servers=[("127.0.0.1", self.udp.getHost().port)], timeout=(2,), reactor=reactor)
        self.lookups = Lookups(self.dns, self.clock)
        self.rfc = RFC3263Resolver(self.lookups, self.clock, rng=random.Random(1))
        self.rfc.transports = lambda: ("udp", "tcp")
        self.rfc.families = lambda: (4,)

    def tearDown(self) -> defer.Deferred:
        return defer.gatherResults([defer.maybeDeferred(self.udp.stopListening), defer.maybeDeferred(self.tcp.stopListening)])

    def dead_server(self) -> None:
        """Ask a loopback port where nothing answers from now on."""
        port = self.udp.getHost().port
        self.tcp.stopListening()
        self.udp.stopListening()
        self.rfc.lookups = Lookups(client.Resolver(servers=[("127.0.0.1", port)], timeout=(0.2,), reactor=reactor), self.clock)

    def resolve(self, uri: str) -> defer.Deferred:
        return self.rfc.resolve(parse_uri(uri))

    def asked(self, type: int) -> set[str]:
        return {name for (name, t) in self.zone.asked if t == type}


class Resolution(DNSCase):
    @defer.inlineCallbacks
    def test_naptr_order_then_preference_among_supported_services(self):
        # SIPS+D2T (order 5) and SIP+D2X are not ours; order 10 beats 20 and
        # within order 10, preference 10 (TCP) beats 20 (UDP).
        dests = yield self.resolve("sip:carol@other.test")
        self.assertEqual(
            dests,
            [Destination("tcp", "127.0.0.2", 5071), Destination("tcp", "127.0.0.3", 5071), Destination("tcp", "127.0.0.4", 5072)],
        )

    @defer.inlineCallbacks
    def test_tls_naptr_chosen_when_we_can_send_tls(self):
        self.rfc.transports = lambda: ("udp", "tcp", "tls")
        dests = yield self.resolve("sip:carol@other.test")
        self.assertEqual(dests[0], Destination("tls", "127.0.0.2", 5061))

    @defer.inlineCallbacks
    def test_sips_uses_only_sips_services(self):
        self.rfc.transports = lambda: ("udp", "tcp", "tls")
        dests = yield self.resolve("sips:carol@other.test")
        self.assertEqual({d.transport for d in dests}, {"tls"})
        dests = yield self.resolve("sips:carol@tls.test")  # no NAPTR: _sips._tcp
        self.assertEqual(dests, [Destination("tls", "127.0.0.4", 5061)])

    @defer.inlineCallbacks
    def test_naptr_whose_srv_is_empty_goes_to_the_next(self):
        dests = yield self.resolve("sip:carol@emptynaptr.test")
        self.assertEqual(dests, [Destination("tcp", "127.0.0.4", 5080)])

    @defer.inlineCallbacks
    def test_without_naptr_srv_per_transport_udp_first(self):
        dests = yield self.resolve("sip:carol@nonaptr.test")
        self.assertEqual(dests, [Destination("tcp", "127.0.0.4", 5090)])
        self.assertIn("_sip._udp.nonaptr.test", self.asked(dns.SRV))

    @defer.inlineCallbacks
    def test_without_srv_the_a_record_on_5060_udp(self):
        dests = yield self.resolve("sip:carol@plain.test")
        self.assertEqual(dests, [Destination("udp", "127.0.0.5", 5060)])

    @defer.inlineCallbacks
    def test_explicit_transport_without_port_asks_srv_of_that_transport(self):
        dests = yield self.resolve("sip:carol@other.test;transport=udp")
        self.assertEqual(dests, [Destination("udp", "127.0.0.2", 5070), Destination("udp", "127.0.0.3", 5070)])
        self.assertNotIn("other.test", self.asked(dns.NAPTR))

    @defer.inlineCallbacks
    def test_explicit_port_means_no_naptr_and_no_srv(self):
        dests = yield self.resolve("sip:carol@ka.other.test:5999")
        self.assertEqual(dests, [Destination("udp", "127.0.0.2", 5999), Destination("udp", "127.0.0.3", 5999)])
        dests = yield self.resolve("sip:carol@ka.other.test:5999;transport=tcp")
        self.assertEqual(dests[0], Destination("tcp", "127.0.0.2", 5999))
        self.assertEqual(self.asked(dns.NAPTR) | self.asked(dns.SRV), set())

    @defer.inlineCallbacks
    def test_numeric_ip_asks_nothing(self):
        dests = yield self.resolve("sip:carol@127.0.0.7:5070;transport=tcp")
        self.assertEqual(dests, [Destination("tcp", "127.0.0.7", 5070)])
        dests = yield self.resolve("sip:carol@127.0.0.7")
        self.assertEqual(dests, [Destination("udp", "127.0.0.7", 5060)])
        self.assertEqual(self.zone.asked, {})

    @defer.inlineCallbacks
    def test_maddr_is_the_target(self):
        dests = yield self.resolve("sip:carol@other.test;maddr=127.0.0.6")
        self.assertEqual(dests, [Destination("udp", "127.0.0.6", 5060)])

    @defer.inlineCallbacks
    def test_unknown_domain_and_dot_target_are_no_sip_server(self):
        for uri in ("sip:carol@nowhere.test", "sip:carol@gone.test;transport=udp"):
            try:
                yield self.resolve(uri)
            except ResolutionFailed as e:
                self.assertFalse(e.temporary)
            else:
                self.fail(f"{uri} resolved")

    @defer.inlineCallbacks
    def test_unanswering_server_is_a_temporary_failure(self):
        self.dead_server()
        try:
            yield self.resolve("sip:carol@other.test")
        except ResolutionFailed as e:
            self.assertTrue(e.temporary)
        else:
            self.fail("resolved without a server")


class Caching(DNSCase):
    @defer.inlineCallbacks
    def test_answers_kept_for_their_ttl(self):
        first = yield self.resolve("sip:carol@plain.test")
        self.zone.remove("plain.test")
        self.zone.add("plain.test", a("127.0.0.50", ttl=60))
        queries = self.lookups.queries
        self.clock.advance(29)
        again = yield self.resolve("sip:carol@plain.test")
        self.assertEqual(again, first)
        self.assertEqual(self.lookups.queries, queries)  # nothing asked at all
        # the negative answers (no NAPTR, no SRV) lived 30 s, the A 60 s
        self.clock.advance(30)
        again = yield self.resolve("sip:carol@plain.test")
        self.assertEqual(again, first)
        self.assertEqual(self.zone.asked[("plain.test", dns.A)], 1)
        self.assertEqual(self.zone.asked[("plain.test", dns.NAPTR)], 2)
        self.clock.advance(2)
        fresh = yield self.resolve("sip:carol@plain.test")
        self.assertEqual(fresh, [Destination("udp", "127.0.0.50", 5060)])
        self.assertEqual(self.zone.asked[("plain.test", dns.A)], 2)

    @defer.inlineCallbacks
    def test_shortest_ttl_of_a_record_set_wins(self):
        self.zone.add("plain.test", a("127.0.0.51", ttl=5))
        yield self.resolve("sip:carol@plain.test")
        self.zone.remove("plain.test")
        self.zone.add("plain.test", a("127.0.0.52"))
        self.clock.advance(6)
        dests = yield self.resolve("sip:carol@plain.test")
        self.assertEqual(dests, [Destination("udp", "127.0.0.52", 5060)])

    @defer.inlineCallbacks
    def test_missing_names_cached_negatively(self):
        with self.assertRaises(ResolutionFailed):
            yield self.resolve("sip:carol@later.test")
        self.zone.add("later.test", a("127.0.0.60"))
        with self.assertRaises(ResolutionFailed):
            yield self.resolve("sip:carol@later.test")
        self.clock.advance(31)
        dests = yield self.resolve("sip:carol@later.test")
        self.assertEqual(dests, [Destination("udp", "127.0.0.60", 5060)])

    @defer.inlineCallbacks
    def test_equal_queries_in_flight_share_one(self):
        results = yield defer.gatherResults([self.resolve("sip:x@plain.test"), self.resolve("sip:y@plain.test")])
        self.assertEqual(results[0], results[1])
        self.assertEqual(self.zone.asked[("plain.test", dns.A)], 1)


class Ordering(unittest.TestCase):
    class R:
        def __init__(self, name: str, priority: int, weight: int) -> None:
            self.name, self.priority, self.weight = name, priority, weight

        def __repr__(self) -> str:
            return self.name

    def test_priority_first(self):
        rs = [self.R("c", 30, 5), self.R("a", 10, 0), self.R("b", 20, 100)]
        self.assertEqual([r.name for r in order_srv(rs, random.Random(3))], ["a", "b", "c"])

    def test_weights_share_the_first_place(self):
        rs = [self.R("light", 10, 10), self.R("heavy", 10, 90), self.R("zero", 10, 0), self.R("later", 20, 50)]
        rng = random.Random(7)
        firsts = Counter(order_srv(rs, rng)[0].name for _ in range(4000))
        self.assertTrue(0.86 < firsts["heavy"] / 4000 < 0.94, firsts)
        self.assertTrue(0.06 < firsts["light"] / 4000 < 0.14, firsts)
        self.assertLess(firsts["zero"], 80)  # only when the draw is exactly 0: ~1 in 101
        self.assertNotIn("later", firsts)
        self.assertEqual(order_srv(rs, rng)[-1].name, "later")

    def test_the_draw_picks_by_running_sum(self):
        class Fixed:
            def __init__(self, values):
                self.values = list(values)

            def randint(self, lo, hi):
                return self.values.pop(0)

        rs = [self.R("a", 1, 10), self.R("b", 1, 20), self.R("z", 1, 0)]
        # zero weight first: running sums z=0, a=10, b=30
        self.assertEqual([r.name for r in order_srv(rs, Fixed([11, 0, 0]))], ["b", "z", "a"])
        self.assertEqual([r.name for r in order_srv(rs, Fixed([0, 5, 0]))], ["z", "a", "b"])

    @defer.inlineCallbacks
    def test_weighted_srv_through_dns(self):
        z = Zone("w.test", [("_sip._udp.w.test", srv(10, 1, 5001, "x.w.test")), ("_sip._udp.w.test", srv(10, 99, 5002, "y.w.test")),
                            ("x.w.test", a("127.0.1.1")), ("y.w.test", a("127.0.1.2"))])
        udp, tcp = serve_zone(z, reactor)
        self.addCleanup(tcp.stopListening)
        self.addCleanup(udp.stopListening)
        clock = Clock()
        rfc = RFC3263Resolver(Lookups(client.Resolver(servers=[("127.0.0.1", udp.getHost().port)], reactor=reactor), clock), clock, rng=random.Random(5))
        rfc.families = lambda: (4,)
        firsts = Counter()
        for _ in range(200):
            dests = yield rfc.resolve(parse_uri("sip:u@w.test;transport=udp"))
            firsts[dests[0].port] += 1
            self.assertEqual(len(dests), 2)
        self.assertGreater(firsts[5002], 180)
        self.assertEqual(z.asked[("_sip._udp.w.test", dns.SRV)], 1)  # the rest from the cache


class Avoidance(DNSCase):
    @defer.inlineCallbacks
    def test_failed_destination_goes_last_until_it_expires(self):
        dests = yield self.resolve("sip:carol@other.test")
        self.rfc.avoid(dests[0])
        later = yield self.resolve("sip:carol@other.test")
        self.assertEqual(later, dests[1:] + dests[:1])
        self.clock.advance(59)
        later = yield self.resolve("sip:carol@other.test")
        self.assertEqual(later[-1], dests[0])
        self.clock.advance(2)
        self.assertEqual((yield self.resolve("sip:carol@other.test")), dests)

    @defer.inlineCallbacks
    def test_avoidance_is_per_destination_not_per_domain(self):
        dests = yield self.resolve("sip:carol@other.test")
        for d in dests:
            self.rfc.avoid(d, 10 + dests.index(d))
        # all avoided: still all there, in their order
        self.assertEqual((yield self.resolve("sip:carol@other.test")), dests)
        self.clock.advance(10.5)  # the first one's time is up
        self.assertEqual((yield self.resolve("sip:carol@other.test")), dests)
        self.clock.advance(1)  # and the second's
        self.assertEqual((yield self.resolve("sip:carol@other.test")), dests)


def listening(*addrs: str):
    out = []
    for a_ in addrs:
        t, rest = a_.split(":", 1)
        h, _, p = rest.rpartition(":")
        out.append(ListenAddress(t, h.strip("[]"), int(p)))
    return lambda: out


class Locator(DNSCase):
    def locator(self) -> DNSLocator:
        ours = lambda uri: uri.host in ("example.com", "routed.test")  # noqa: E731
        return DNSLocator(self.rfc, ours, listening("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"))

    def test_serves_only_other_domains(self):
        loc = self.locator()
        for uri in ("sip:bob@example.com", "sip:x@routed.test", "sip:x@127.0.0.1", "tel:+15551234567"):
            self.assertIs(loc.locate(parse_uri(uri)), NOT_MINE, uri)
        self.assertEqual(self.zone.asked, {})

    @defer.inlineCallbacks
    def test_found_target_with_fallbacks_in_order(self):
        found = yield self.locator().locate(parse_uri("sip:carol@other.test"))
        self.assertIsInstance(found, Found)
        (target,) = found.targets
        self.assertEqual(str(target.uri), "sip:carol@other.test")
        self.assertEqual(target.source, "dns")
        self.assertEqual(target.dest, "tcp:127.0.0.2:5071")
        self.assertEqual([f.dest for f in target.fallbacks], ["tcp:127.0.0.3:5071", "tcp:127.0.0.4:5072"])

    @defer.inlineCallbacks
    def test_failed_target_is_avoided_by_the_next_lookup(self):
        loc = self.locator()
        found = yield loc.locate(parse_uri("sip:carol@other.test"))
        target = found.targets[0]
        loc.target_failed(target, Response(500, "Server Internal Error"))  # not a server failure
        self.assertEqual((yield loc.locate(parse_uri("sip:carol@other.test"))).targets[0].dest, target.dest)
        loc.target_failed(target, Response(503, "Service Unavailable"))
        again = (yield loc.locate(parse_uri("sip:carol@other.test"))).targets[0]
        self.assertEqual(again.dest, "tcp:127.0.0.3:5071")
        self.assertEqual(again.fallbacks[-1].dest, target.dest)
        self.clock.advance(61)
        self.assertEqual((yield loc.locate(parse_uri("sip:carol@other.test"))).targets[0].dest, target.dest)

    @defer.inlineCallbacks
    def test_retry_after_sets_how_long(self):
        loc = self.locator()
        target = (yield loc.locate(parse_uri("sip:carol@other.test"))).targets[0]
        r = Response(503, "Service Unavailable")
        r.headers.add("Retry-After", "5 (maintenance)")
        self.assertEqual(retry_after(r), 5.0)
        loc.target_failed(target, r)
        self.assertNotEqual((yield loc.locate(parse_uri("sip:carol@other.test"))).targets[0].dest, target.dest)
        self.clock.advance(5.5)
        self.assertEqual((yield loc.locate(parse_uri("sip:carol@other.test"))).targets[0].dest, target.dest)

    @defer.inlineCallbacks
    def test_no_sip_server_is_404_and_dns_trouble_480(self):
        miss = yield self.locator().locate(parse_uri("sip:carol@nowhere.test"))
        self.assertIsInstance(miss, Miss)
        self.assertEqual(miss.status, 404)
        self.dead_server()
        miss = yield self.locator().locate(parse_uri("sip:carol@other.test"))
        self.assertEqual(miss.status, 480)

    @defer.inlineCallbacks
    def test_families_and_tls_follow_the_listeners(self):
        self.zone.add("ka.other.test", record("AAAA", address="::1"))
        loc = DNSLocator(self.rfc, lambda uri: False, listening("udp:[::1]:5060"))
        found = yield loc.locate(parse_uri("sip:carol@other.test;transport=udp"))
        self.assertEqual(found.targets[0].dest, "udp:[::1]:5070")
        self.assertEqual(found.targets[0].fallbacks, ())
        loc = DNSLocator(self.rfc, lambda uri: False, listening("udp:127.0.0.1:5060", "tls:127.0.0.1:5061"))
        found = yield loc.locate(parse_uri("sip:carol@other.test"))
        self.assertEqual(found.targets[0].dest, "tls:127.0.0.2:5061")


class Hops(DNSCase):
    @defer.inlineCallbacks
    def test_hop_uri_gives_a_peer(self):
        hops = HopResolver(self.rfc)
        peer = yield hops.resolve_uri(parse_uri("sip:other.test;lr"))
        self.assertEqual(peer, Peer("tcp", "127.0.0.2", 5071))
        self.assertEqual((yield hops.resolve("plain.test")), "127.0.0.5")
