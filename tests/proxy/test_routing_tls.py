"""Routing over TLS: which transport a URI asks for, which name a TLS hop
must prove, Record-Route entries for a TLS interface, Via for TLS."""

from __future__ import annotations

import pytest

from sosimple_proxy.proxy import routing
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Headers, Request
from sosimple_proxy.sip.uri import parse_uri

TLS = ListenAddress("tls", "127.0.0.1", 5061)
UDP = ListenAddress("udp", "127.0.0.1", 5060)
TLS6 = ListenAddress("tls", "::1", 5061)


def request(uri: str, routes: tuple[str, ...] = ()) -> Request:
    headers = Headers()
    for r in routes:
        headers.add("Route", r)
    headers.add("Via", "SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKx")
    headers.add("To", "<sip:bob@example.com>")
    headers.add("From", "<sip:alice@example.com>;tag=a")
    headers.add("Call-ID", "c")
    headers.add("CSeq", "1 INVITE")
    return Request("INVITE", uri, headers)


@pytest.mark.parametrize(
    "uri, transport",
    [
        ("sip:example.com", "udp"),
        ("sip:example.com;transport=tcp", "tcp"),
        ("sip:example.com;transport=tls", "tls"),
        ("sips:example.com", "tls"),
        ("sips:example.com;transport=tcp", "tls"),  # RFC 3261 26.2.2: TLS over TCP
        ("sips:example.com;transport=TLS", "tls"),
    ],
)
def test_uri_transport(uri, transport):
    assert routing.uri_transport(parse_uri(uri)) == transport


def test_tls_hop_port_defaults_to_5061():
    assert routing.uri_address(parse_uri("sips:example.com")) == ("tls", "example.com", 5061)
    assert routing.uri_address(parse_uri("sip:192.0.2.1;transport=tls")) == ("tls", "192.0.2.1", 5061)


@pytest.mark.parametrize(
    "uri, domain",
    [
        ("sips:Example.COM:5061", "example.com"),
        ("sips:proxy.other.test;lr", "proxy.other.test"),
        ("sips:other.test:5061;maddr=127.0.0.1;lr", "other.test"),  # maddr: where, not who
        ("sips:127.0.0.1:5061", None),
        ("sips:[::1]:5061", None),
    ],
)
def test_tls_domain_is_the_uri_host_unless_an_address(uri, domain):
    assert routing.tls_domain(parse_uri(uri)) == domain


def test_maddr_gives_the_address_and_the_host_the_name():
    uri = parse_uri("sips:other.test:5071;maddr=127.0.0.1;lr")
    assert routing.uri_address(uri) == ("tls", "127.0.0.1", 5071)
    assert routing.tls_domain(uri) == "other.test"


def test_record_route_for_a_tls_interface():
    assert routing.record_route_value(TLS) == "<sip:127.0.0.1:5061;transport=tls;lr>"
    assert routing.record_route_value(TLS, secure=True) == "<sips:127.0.0.1:5061;lr>"
    assert routing.record_route_value(TLS6, r2=True, secure=True) == "<sips:[::1]:5061;lr;r2=on>"
    # secure only changes TLS entries: a UDP interface is never sips
    assert routing.record_route_value(UDP, secure=True) == "<sip:127.0.0.1:5060;lr>"


def test_sips_request_record_routes_sips():
    req = request("sips:bob@example.com")
    routing.add_record_route(req, TLS, None)
    assert req.headers.get_all("record-route") == ["<sips:127.0.0.1:5061;lr>"]


def test_sips_top_route_record_routes_sips():
    req = request("sip:bob@example.com", ("<sips:proxy.other.test;lr>",))
    routing.add_record_route(req, TLS, None)
    assert req.headers.get_all("record-route") == ["<sips:127.0.0.1:5061;lr>"]


def test_sip_request_over_tls_record_routes_transport_tls():
    req = request("sip:bob@example.com")
    routing.add_record_route(req, TLS, None)
    assert req.headers.get_all("record-route") == ["<sip:127.0.0.1:5061;transport=tls;lr>"]


def test_double_record_route_from_tls_to_udp():
    req = request("sip:bob@example.com")
    routing.add_record_route(req, TLS, UDP)
    assert req.headers.get_all("record-route") == [
        "<sip:127.0.0.1:5060;lr;r2=on>",
        "<sip:127.0.0.1:5061;transport=tls;lr;r2=on>",
    ]


def test_must_stay_secure():
    assert routing.must_stay_secure(request("sips:bob@example.com"))
    assert routing.must_stay_secure(request("sip:bob@example.com", ("<sips:p.example.com;lr>",)))
    assert not routing.must_stay_secure(request("sip:bob@example.com", ("<sip:p.example.com;transport=tls;lr>",)))


def test_via_over_tls():
    assert routing.via_value(TLS, "tls", "z9hG4bKsp1").startswith("SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKsp1")


def test_record_route_names_the_flows_on_each_side():
    alice, bob = Peer("tls", "192.0.2.1", 40001), Peer("tls", "192.0.2.2", 40002)
    a_user, b_user = routing.flow_token("tls:192.0.2.1:40001"), routing.flow_token("tls:192.0.2.2:40002")
    req = request("sip:bob@example.com")
    routing.add_record_route(req, TLS, None, alice, bob)
    assert req.headers.get_all("record-route") == [
        f"<sip:{b_user}@127.0.0.1:5061;transport=tls;lr>",
        f"<sip:{a_user}@127.0.0.1:5061;transport=tls;lr>",
    ]
    req = request("sip:bob@example.com")
    routing.add_record_route(req, TLS, UDP, alice, Peer("udp", "192.0.2.2", 5060))
    assert req.headers.get_all("record-route") == [
        "<sip:127.0.0.1:5060;lr;r2=on>",
        f"<sip:{a_user}@127.0.0.1:5061;transport=tls;lr;r2=on>",
    ]


def test_a_flow_token_is_ignored_by_a_request_from_that_flow():
    """RFC 5626 5.3: over the flow the token names, the request goes the other way."""
    alice = Peer("tls", "192.0.2.1", 40001)
    route = f"<sip:{routing.flow_token('tls:192.0.2.1:40001')}@127.0.0.1:5061;transport=tls;lr>"

    def ours(uri):
        return uri.host == "127.0.0.1" and uri.port == 5061

    from_alice = request("sip:bob@192.0.2.2", (route,))
    routing.preprocess_routes(from_alice, ours, alice)
    assert from_alice.flow is None and from_alice.routes == []
    to_alice = request("sip:alice@192.0.2.1", (route,))
    routing.preprocess_routes(to_alice, ours, Peer("tls", "192.0.2.2", 40002))
    assert to_alice.flow == "tls:192.0.2.1:40001"
