"""received/rport stamping (RFC 3261 18.2.1, RFC 3581) and where responses go (18.2.2)."""

from __future__ import annotations

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.via import response_peer, stamp_via
from sosimple_proxy.testing.transaction import make_layer, request, response

SRC = Peer("udp", "198.51.100.7", 40123)


def top(req):
    return req.headers.get_all("via")[0]


def test_received_added_when_source_differs():
    req = request(host="192.0.2.1")
    assert stamp_via(req, SRC) is True
    assert top(req) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;received=198.51.100.7"
    assert req.top_via.params["received"] == "198.51.100.7"


def test_nothing_added_when_source_is_sent_by():
    req = request(host="198.51.100.7")
    before = top(req)
    assert stamp_via(req, SRC) is False
    assert top(req) == before


def test_domain_name_sent_by_always_gets_received():
    req = request(host="pc33.example.com", port=None)
    stamp_via(req, SRC)
    assert top(req).endswith(";received=198.51.100.7")


def test_rport_filled_and_received_added_even_if_equal():
    # RFC 3581 section 4 example.
    req = request(host="198.51.100.7", port=5060, via_params=";rport")
    assert stamp_via(req, SRC) is True
    assert top(req) == "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds;rport=40123;received=198.51.100.7"
    assert str(req.top_via.params["rport"]) == "40123"


def test_rport_with_a_value_is_left_alone():
    req = request(host="198.51.100.7", via_params=";rport=1234")
    assert stamp_via(req, SRC) is False


def test_existing_received_is_replaced():
    req = request(host="192.0.2.1", via_params=";received=10.0.0.1")
    stamp_via(req, SRC)
    assert top(req).count("received=") == 1 and top(req).endswith("received=198.51.100.7")


def test_ipv6_source_without_brackets_and_same_address_spellings():
    src6 = Peer("udp", "2001:db8::1", 5060)
    req = request(host="[2001:db8:0::1]")
    assert stamp_via(req, src6) is False
    req = request(host="[2001:db8::2]")
    stamp_via(req, src6)
    assert top(req).endswith(";received=2001:db8::1")


def test_only_the_top_via_changes():
    req = request(host="192.0.2.1", more_vias=("SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKdown",))
    req.headers.set("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKb")
    stamp_via(req, SRC)
    vias = req.headers.values("via")
    assert vias == [
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa;rport=40123;received=198.51.100.7",
        "SIP/2.0/UDP 192.0.2.50;branch=z9hG4bKb",
    ]


def test_layer_stamps_new_requests():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request("OPTIONS", via_params=";rport")
    layer.receive(req, SRC)
    got = tu.requests[0][0]
    assert top(got).endswith(";rport=40123;received=198.51.100.7")
    # The response carries the stamped Via and goes back to the source port.
    tu.requests[0][1].respond(response(got, 200))
    _, data, dest, _ = wire.sent[0]
    assert dest == SRC
    assert b"rport=40123;received=198.51.100.7" in data


# -- response_peer: 18.2.2 and RFC 3581


def test_response_peer_udp_without_rport_uses_sent_by_port():
    via = request(host="192.0.2.1", port=5070).top_via
    assert response_peer(via, SRC) == Peer("udp", "198.51.100.7", 5070)
    via = request(host="192.0.2.1", port=None).top_via
    assert response_peer(via, SRC) == Peer("udp", "198.51.100.7", 5060)


def test_response_peer_udp_with_rport_uses_source_port():
    via = request(via_params=";rport").top_via
    assert response_peer(via, SRC) == SRC


def test_response_peer_reliable_uses_the_connection():
    src = Peer("tcp", "198.51.100.7", 49152)
    via = request(transport="TCP", port=5060).top_via
    assert response_peer(via, src) == src


def test_response_peer_maddr():
    via = request(port=5080, via_params=";maddr=239.255.255.1;ttl=1").top_via
    assert response_peer(via, SRC) == Peer("udp", "239.255.255.1", 5080)


def test_response_peer_from_the_via_alone():
    via = request(host="192.0.2.1", port=5070, via_params=";received=198.51.100.7").top_via
    assert response_peer(via) == Peer("udp", "198.51.100.7", 5070)
    via = request(host="192.0.2.1", port=5070, via_params=";rport=1111;received=198.51.100.7").top_via
    assert response_peer(via) == Peer("udp", "198.51.100.7", 1111)
    via = request(host="192.0.2.1", port=None, transport="TLS").top_via
    assert response_peer(via) == Peer("tls", "192.0.2.1", 5061)
    via = request(host="[2001:db8::5]", port=None).top_via
    assert response_peer(via) == Peer("udp", "2001:db8::5", 5060)
