"""The proxy core over TLS, in-process (real transaction layer, recording
wire, Clock): where TLS requests go, what they carry, and the SIPS rule."""

from __future__ import annotations

from sosimple_proxy.proxy.routing import flow_token
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Request, Response
from tests.proxy.harness import PROXY_TCP, PROXY_UDP, Harness, invite, unstamped

PROXY_TLS = ListenAddress("tls", "127.0.0.1", 5061)
TLS_CALLER = Peer("tls", "127.0.0.1", 40001)
LISTENING = [PROXY_UDP, PROXY_TCP, PROXY_TLS]
CALLER_FLOW = flow_token("tls:127.0.0.1:40001")


def harness(ini: str = "") -> Harness:
    return Harness(ini, listening=LISTENING)


def tls_invite(uri: str, **kw) -> str:
    return invite(uri, **kw).replace("SIP/2.0/UDP 127.0.0.1:5070", "SIP/2.0/TLS 127.0.0.1:5070")


def final(h: Harness, sent) -> Response:
    finals = [r for r, _ in h.sent_responses(sent) if r.status >= 200]
    assert len(finals) == 1, finals
    return finals[0]


def test_sips_request_to_a_udp_contact_is_refused_480():
    h = harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(tls_invite("sips:bob@example.com"), TLS_CALLER, PROXY_TLS)
    sent = h.wire.take()
    assert h.sent_requests(sent, "INVITE") == []
    answer = final(h, sent)
    assert answer.status == 480
    assert "sips: request may leave only over TLS" in answer.reason


def test_sips_request_goes_over_tls_with_tls_via_and_sips_record_route():
    h = harness()
    h.register("bob", "sips:bob@127.0.0.1:6001")
    h.receive(tls_invite("sips:bob@example.com"), TLS_CALLER, PROXY_TLS)
    [(req, dest)] = h.sent_requests(h.wire.take(), "INVITE")
    assert dest == Peer("tls", "127.0.0.1", 6001)  # an address: its certificate must name it
    assert req.top_via.transport == "TLS"
    # the caller's connection is named in the entry (a flow token), for the way back
    assert [unstamped(v) for v in req.headers.get_all("record-route")] == [f"<sips:{CALLER_FLOW}@127.0.0.1:5061;lr>"]


def test_sip_request_over_tls_record_routes_transport_tls():
    h = harness()
    h.register("bob", "sip:bob@127.0.0.1:6001;transport=tls")
    h.receive(tls_invite("sip:bob@example.com"), TLS_CALLER, PROXY_TLS)
    [(req, dest)] = h.sent_requests(h.wire.take(), "INVITE")
    assert dest.transport == "tls"
    assert [unstamped(v) for v in req.headers.get_all("record-route")] == [f"<sip:{CALLER_FLOW}@127.0.0.1:5061;transport=tls;lr>"]


def test_udp_caller_to_tls_callee_gets_a_double_record_route():
    h = harness()
    h.register("bob", "sip:bob@127.0.0.1:6001;transport=tls")
    h.receive(invite("sip:bob@example.com"))
    [(req, _)] = h.sent_requests(h.wire.take(), "INVITE")
    assert [unstamped(v) for v in req.headers.get_all("record-route")] == [
        "<sip:127.0.0.1:5061;transport=tls;lr;r2=on>",
        "<sip:127.0.0.1:5060;lr;r2=on>",
    ]


def test_a_refused_tls_branch_fails_over_to_the_next_contact():
    h = harness()
    h.register("bob", "sips:bob@127.0.0.1:6001", q=1.0)
    h.register("bob", "sip:bob@127.0.0.1:6002", q=0.5)
    h.wire.fail.add(Peer("tls", "127.0.0.1", 6001))  # e.g. its certificate was refused
    h.receive(invite("sip:bob@example.com"))
    sent = h.wire.take()
    h.advance(0.1)
    sent += h.wire.take()
    tried = [d for _, d in h.sent_requests(sent, "INVITE")]
    assert tried == [Peer("tls", "127.0.0.1", 6001), Peer("udp", "127.0.0.1", 6002)]


def test_a_tls_route_by_name_carries_the_domain_to_verify():
    h = harness("[routes]\nother.test = sips:other.test:5071;maddr=127.0.0.1\n")
    h.receive(invite("sip:carol@other.test"))
    [(req, dest)] = h.sent_requests(h.wire.take(), "INVITE")
    assert dest == Peer("tls", "127.0.0.1", 5071, domain="other.test")
    assert req.top_via.transport == "TLS"


def test_a_binding_registered_over_tls_is_reached_by_its_connection():
    h = harness()
    flow = Peer("tls", "127.0.0.1", 40002)
    h.receive(
        "REGISTER sip:example.com SIP/2.0\n"
        "Via: SIP/2.0/TLS 127.0.0.1:7000;branch=z9hG4bK-reg-carol;rport\n"
        "Max-Forwards: 70\nTo: <sip:carol@example.com>\nFrom: <sip:carol@example.com>;tag=r\n"
        "Call-ID: reg-carol\nCSeq: 1 REGISTER\n"
        "Contact: <sip:carol@127.0.0.1:7000;transport=tls>\nExpires: 600\nContent-Length: 0\n\n",
        flow,
        PROXY_TLS,
    )
    [(ok, to)] = h.sent_responses(h.wire.take())
    assert ok.status == 200 and to == flow
    h.wire.open_flows.add(flow)
    h.receive(invite("sip:carol@example.com"))
    [(req, dest)] = h.sent_requests(h.wire.take(), "INVITE")
    assert dest == flow
    assert isinstance(req, Request) and req.top_via.transport == "TLS"


def test_a_tls_hop_resolved_by_dns_keeps_the_domain_of_its_uri():
    """RFC 5922 section 4: the certificate must name the domain of the URI,
    not the SRV target or the address DNS gave."""
    from twisted.internet import defer

    from sosimple_proxy.proxy.forward import RequestForwarder
    from sosimple_proxy.sip.uri import parse_uri

    class Hops:
        def resolve_uri(self, uri):
            return defer.succeed(Peer("tls", "192.0.2.5", 5061))

    forwarder = RequestForwarder(None, True, Hops())
    got = []
    forwarder._resolve(parse_uri("sips:Other.Test")).addCallback(got.append)
    assert got == [Peer("tls", "192.0.2.5", 5061, domain="other.test")]


def test_in_dialog_requests_reach_each_ua_over_its_own_connection():
    """alice (TLS, her connection) calls bob (TLS, registered over his
    connection): both connections are named in the Record-Route, so bob's
    BYE goes to alice over hers and alice's BYE to bob over his, although
    neither phone can be connected to (RFC 5626 5.3)."""
    h = harness()
    alice, bob = TLS_CALLER, Peer("tls", "127.0.0.1", 40002)
    h.receive(
        "REGISTER sip:example.com SIP/2.0\n"
        "Via: SIP/2.0/TLS 127.0.0.1:7002;branch=z9hG4bK-reg-bob;rport\n"
        "Max-Forwards: 70\nTo: <sip:bob@example.com>\nFrom: <sip:bob@example.com>;tag=r\n"
        "Call-ID: reg-bob\nCSeq: 1 REGISTER\n"
        "Contact: <sip:bob@127.0.0.1:7002;transport=tls>\nExpires: 600\nContent-Length: 0\n\n",
        bob,
        PROXY_TLS,
    )
    h.wire.take()
    h.wire.open_flows.update({alice, bob})
    h.receive(tls_invite("sip:bob@example.com"), alice, PROXY_TLS)
    [(req, dest)] = h.sent_requests(h.wire.take(), "INVITE")
    assert dest == bob
    rr = req.headers.get_all("record-route")
    assert [unstamped(v) for v in rr] == [
        f"<sip:{flow_token('tls:127.0.0.1:40002')}@127.0.0.1:5061;transport=tls;lr>",
        f"<sip:{CALLER_FLOW}@127.0.0.1:5061;transport=tls;lr>",
    ]

    def bye(route: list[str], branch: str) -> str:
        return (
            "BYE sip:someone@127.0.0.1:9999;transport=tls SIP/2.0\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:7000;branch={branch};rport\n"
            f"Max-Forwards: 70\nRoute: {', '.join(route)}\n"
            "To: <sip:x@example.com>;tag=t\nFrom: <sip:y@example.com>;tag=f\n"
            "Call-ID: dialog-1\nCSeq: 2 BYE\nContent-Length: 0\n\n"
        )

    # bob's route set is the Record-Route as it is; alice's, reversed
    h.receive(bye(rr, "z9hG4bK-bye-from-bob"), bob, PROXY_TLS)
    [(_, dest)] = h.sent_requests(h.wire.take(), "BYE")
    assert dest == alice
    h.receive(bye(rr[::-1], "z9hG4bK-bye-from-alice"), alice, PROXY_TLS)
    [(_, dest)] = h.sent_requests(h.wire.take(), "BYE")
    assert dest == bob
