"""The proxy core with the dns provider: SRV failover and avoidance, Route
hops named by host.  The zone answers in-process (a twisted.names
authority used as the resolver), time is a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from sosimple_proxy.location.rfc3263 import Lookups, RFC3263Resolver
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request, Response
from tests.dnszone import Zone, record
from tests.proxy.harness import Harness, invite

KA = Peer("udp", "127.0.0.2", 5070)
KB = Peer("udp", "127.0.0.3", 5080)


class DNSHarness(Harness):
    def __init__(self, order: str = "local routes dns", ini: str = "") -> None:
        clock = Clock()
        self.zone = Zone(
            "test",
            [
                ("_sip._udp.other.test", record("SRV", priority=10, weight=0, port=5070, target="ka.other.test", ttl=300)),
                ("_sip._udp.other.test", record("SRV", priority=20, weight=0, port=5080, target="kb.other.test", ttl=300)),
                ("ka.other.test", record("A", address="127.0.0.2", ttl=300)),
                ("kb.other.test", record("A", address="127.0.0.3", ttl=300)),
            ],
        )
        self.rfc = RFC3263Resolver(Lookups(self.zone, clock), clock)
        ini = f"[location]\norder = {order}\n[routes]\nrouted.test = sip:127.0.0.1:5999\n" + ini
        super().__init__(ini, rfc3263=self.rfc, clock=clock)


def message(uri: str, n: int, extra: str = "") -> str:
    return invite(uri, branch=f"z9hG4bK-m{n}", method="MESSAGE", call_id=f"m{n}@caller", extra=extra)


def forwarded(h: Harness) -> list[tuple[Request, Peer]]:
    return h.sent_requests(h.wire.take(), "MESSAGE")


def test_srv_order_then_failover_on_503_and_the_failed_target_is_avoided():
    h = DNSHarness()
    h.receive(message("sip:carol@other.test", 1))
    [(req, dest)] = forwarded(h)
    assert dest == KA and req.uri == "sip:carol@other.test"
    h.answer(req, 503)
    sent = h.wire.take()
    [(req2, dest2)] = h.sent_requests(sent, "MESSAGE")
    assert dest2 == KB
    h.answer(req2, 200)
    assert [r.status for r, _ in h.sent_responses(h.wire.take())] == [200]
    # the next request starts at the second target: the first is avoided
    h.receive(message("sip:carol@other.test", 2))
    [(_, dest)] = forwarded(h)
    assert dest == KB
    # ... for a while only
    h.advance(61, step=5)
    h.wire.take()
    h.receive(message("sip:carol@other.test", 3))
    [(_, dest)] = forwarded(h)
    assert dest == KA


def test_transport_error_fails_over_at_once():
    h = DNSHarness()
    h.wire.fail.add(KA)
    h.receive(message("sip:carol@other.test", 1))
    h.advance(0.1)
    dests = [d for _, d in forwarded(h)]
    assert dests == [KA, KB]


def test_every_target_failing_gives_the_caller_one_final_answer():
    h = DNSHarness()
    h.receive(message("sip:carol@other.test", 1))
    [(req, _)] = forwarded(h)
    h.answer(req, 503)
    [(req2, _)] = forwarded(h)
    h.answer(req2, 503)
    [(final, _)] = h.sent_responses(h.wire.take())
    assert final.status == 500


def test_our_domains_and_routes_never_ask_dns():
    h = DNSHarness()
    h.receive(message("sip:nobody@example.com", 1))
    [(r, _)] = h.sent_responses(h.wire.take())
    assert r.status == 404
    h.receive(message("sip:x@routed.test", 2))
    [(_, dest)] = forwarded(h)
    assert dest == Peer("udp", "127.0.0.1", 5999)
    assert h.zone.asked == {}


def test_unknown_domain_is_404():
    h = DNSHarness()
    h.receive(message("sip:carol@nowhere.test", 1))
    [(r, _)] = h.sent_responses(h.wire.take())
    assert r.status == 404


def test_route_hop_named_by_host_is_resolved_by_srv():
    h = DNSHarness()
    h.receive(message("sip:carol@127.0.0.9:5090", 1, extra="Route: <sip:other.test;lr>\n"))
    [(req, dest)] = forwarded(h)
    assert dest == KA
    assert req.uri == "sip:carol@127.0.0.9:5090"


def test_without_dns_in_the_order_there_is_no_dns_provider():
    h = Harness()
    assert "dns" not in h.providers
    h.receive(message("sip:carol@other.test", 1))
    [(r, _)] = h.sent_responses(h.wire.take())
    assert r.status == 404
