"""The transaction layer fed with parsed wire bytes, as the stack feeds it."""

from __future__ import annotations

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.client_transaction import make_ack
from sosimple_proxy.sip.message import make_response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.transaction_state import COMPLETED, CONFIRMED
from sosimple_proxy.testing.transaction import make_layer

SRC = Peer("udp", "198.51.100.7", 40123)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnashds8;rport,"
    b" SIP/2.0/UDP 192.0.2.200;branch=z9hG4bKupstream\r\n"
    b"Max-Forwards: 70\r\n"
    b"t: Bob <sip:bob@biloxi.example.com>\r\n"
    b"f: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"m: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Route: <sip:proxy.example.com;lr>\r\n"
    b"l: 0\r\n\r\n"
)


def test_parsed_invite_is_stamped_matched_and_answered():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    layer.receive(parse_message(INVITE), SRC)
    req, txn = tu.requests[0]
    assert req.top_via.received == "198.51.100.7" and req.top_via.rport == 40123
    assert [v.branch for v in req.vias] == ["z9hG4bKnashds8", "z9hG4bKupstream"]
    # The retransmission (unstamped, as on the wire) matches the transaction.
    layer.receive(parse_message(INVITE), SRC)
    assert len(tu.requests) == 1
    final = make_response(req, 486, to_tag="314")
    txn.respond(final)
    assert txn.state == COMPLETED
    _, data, dest, _ = wire.sent[0]
    assert dest == SRC
    sent = parse_message(data)
    assert sent.status == 486
    assert sent.top_via.received == "198.51.100.7" and sent.top_via.rport == 40123
    assert len(sent.vias) == 2
    # The UAC's ACK, built from the original (unstamped) INVITE, round-tripped.
    ack = parse_message(make_ack(parse_message(INVITE), sent).serialize())
    layer.receive(ack, SRC)
    assert txn.state == CONFIRMED and tu.stray_acks == []


def test_parsed_response_matches_client_transaction_and_ack_parses():
    layer, clock, wire, tu = make_layer()
    req = parse_message(INVITE)
    req.headers.pop_first_value("via")  # leave only our own Via, as a UAC would
    req.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKours")
    txn = layer.send_request(req, Peer("udp", "192.0.2.9", 5060))
    sent = parse_message(wire.sent[0][1])
    reply = make_response(sent, 404, to_tag="x")
    layer.receive(parse_message(reply.serialize()), Peer("udp", "192.0.2.9", 5060))
    assert tu.statuses == [404] and tu.responses[0][1] is txn
    ack = parse_message(wire.sent[-1][1])
    assert ack.method == "ACK" and ack.cseq.seq == 314159 and ack.cseq.method == "ACK"
    assert [v.branch for v in ack.vias] == ["z9hG4bKours"]
    assert ack.to.tag == "x" and ack.from_.tag == "1928301774"
    assert ack.headers.get("route") == "<sip:proxy.example.com;lr>"
