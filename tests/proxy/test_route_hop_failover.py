"""A Route hop named by host gets the dns provider's SRV failover and
avoidance (issue 15).  The zone answers in-process (a twisted.names
authority as the resolver); time is a Clock."""

from __future__ import annotations

from sosimple_proxy.sip.address import Peer
from tests.proxy.harness import Harness
from tests.proxy.test_dns_routing import KA, KB, DNSHarness, forwarded, message

ROUTE = "Route: <sip:other.test;lr>\n"
UA = "sip:carol@127.0.0.9:5090"


def test_a_route_hop_fails_over_to_the_next_srv_target_on_503_and_avoids_the_first():
    h = DNSHarness()
    h.receive(message(UA, 1, extra=ROUTE))
    [(req, dest)] = forwarded(h)
    assert dest == KA and req.uri == UA
    h.answer(req, 503)
    [(req2, dest2)] = forwarded(h)
    assert dest2 == KB and req2.uri == UA
    assert req2.headers.values("route") == ["<sip:other.test;lr>"]  # the Route is kept
    h.answer(req2, 200)
    assert [r.status for r, _ in h.sent_responses(h.wire.take())] == [200]
    # the next request through that hop starts at the second target...
    h.receive(message(UA, 2, extra=ROUTE))
    [(_, dest)] = forwarded(h)
    assert dest == KB
    # ...for a while only ([dns] avoid_seconds, 60 by default)
    h.advance(61, step=5)
    h.wire.take()
    h.receive(message(UA, 3, extra=ROUTE))
    [(_, dest)] = forwarded(h)
    assert dest == KA


def test_a_transport_error_on_a_route_hop_fails_over_at_once():
    h = DNSHarness()
    h.wire.fail.add(KA)
    h.receive(message(UA, 1, extra=ROUTE))
    h.advance(0.1)
    assert [d for _, d in forwarded(h)] == [KA, KB]


def test_a_route_hop_every_target_of_which_fails_gives_one_final_answer():
    h = DNSHarness()
    h.receive(message(UA, 1, extra=ROUTE))
    [(req, _)] = forwarded(h)
    h.answer(req, 503)
    [(req2, _)] = forwarded(h)
    h.answer(req2, 503)
    [(final, _)] = h.sent_responses(h.wire.take())
    assert final.status == 500


def test_a_404_from_a_route_hop_is_not_failed_over():
    h = DNSHarness()
    h.receive(message(UA, 1, extra=ROUTE))
    [(req, _)] = forwarded(h)
    h.answer(req, 404)
    assert forwarded(h) == []


def test_a_route_hop_by_ip_is_not_resolved():
    h = DNSHarness()
    h.receive(message(UA, 1, extra="Route: <sip:127.0.0.4:5070;lr>\n"))
    [(_, dest)] = forwarded(h)
    assert dest == Peer("udp", "127.0.0.4", 5070)
    assert h.zone.asked == {}
