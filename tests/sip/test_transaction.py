"""Transaction state machines (RFC 3261 section 17, RFC 6026) under a Clock.

Every schedule is asserted exactly, from the Clock's own time: no sleeps.
"""

from __future__ import annotations

import pytest

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.client_transaction import ClientTransaction, make_ack, make_cancel
from sosimple_proxy.sip.message import Headers, Request
from sosimple_proxy.sip.server_transaction import ServerTransaction
from sosimple_proxy.sip.timers import TimerConfig
from sosimple_proxy.sip.transaction_state import (
    ACCEPTED,
    CALLING,
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    TERMINATED,
    TIMEOUT,
    TRANSPORT_ERROR,
    TRYING,
)
from sosimple_proxy.sip.via import new_branch
from sosimple_proxy.testing.transaction import NEXT, NEXT_TCP, UA, UA_TCP, copy, make_layer, request, response

INVITE_UDP_SENDS = [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
NON_INVITE_UDP_SENDS = [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]


def run(clock, until: float) -> None:
    """Run every timer due up to ``until`` (absolute time), each at its exact time.

    Jumping straight to each call's scheduled time keeps the recorded send
    times exact (no float drift from small steps).
    """
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= until]
        if not due:
            break
        clock.rightNow = max(clock.rightNow, min(due))
        clock.advance(0)
    clock.rightNow = max(clock.rightNow, until)
    clock.advance(0)


# ------------------------------------------------------------ client INVITE


def test_invite_client_udp_retransmission_schedule_and_timer_b():
    layer, clock, wire, tu = make_layer()
    txn = layer.send_request(request(), NEXT)
    assert txn.state == CALLING
    clock.pump([0.5] * 63)  # 31.5 s
    assert wire.times() == INVITE_UDP_SENDS
    assert tu.responses == []
    clock.advance(0.5)  # 32 s: Timer B = 64*T1
    assert tu.statuses == [408]
    resp, t = tu.responses[0]
    assert t is txn and txn.failure == TIMEOUT and txn.state == TERMINATED
    assert resp.call_id == txn.request.call_id and resp.cseq.method == "INVITE"
    assert layer.client_count == 0
    clock.advance(100)
    assert len(wire.sent) == len(INVITE_UDP_SENDS)
    assert clock.getDelayedCalls() == []


def test_invite_client_exact_schedule_with_fine_steps():
    layer, clock, wire, tu = make_layer()
    layer.send_request(request(), NEXT)
    run(clock, 31.99)
    assert wire.times() == INVITE_UDP_SENDS
    assert tu.responses == []
    run(clock, 32.0)
    assert tu.statuses == [408]


def test_invite_client_tcp_no_retransmission_timer_b_still_fires():
    layer, clock, wire, tu = make_layer()
    txn = layer.send_request(request(transport="TCP"), NEXT_TCP)
    clock.advance(31.9)
    assert wire.times() == [0.0]
    clock.advance(0.1)
    assert tu.statuses == [408] and txn.failure == TIMEOUT


def test_invite_client_provisional_stops_retransmissions_and_timer_b():
    layer, clock, wire, tu = make_layer()
    req = request()
    txn = layer.send_request(req, NEXT)
    clock.advance(0.5)
    layer.receive(response(req, 180), NEXT)
    assert txn.state == PROCEEDING and tu.statuses == [180]
    clock.advance(600)
    assert wire.times() == [0.0, 0.5]
    assert txn.state == PROCEEDING and tu.statuses == [180]  # Timer C is the proxy's
    layer.receive(response(req, 200), NEXT)
    assert txn.state == ACCEPTED and tu.statuses == [180, 200]


def test_invite_client_non_2xx_generates_ack():
    layer, clock, wire, tu = make_layer()
    req = request(extra=(("Route", "<sip:p1.example.com;lr>"), ("Route", "<sip:p2.example.com;lr>"), ("Subject", "hi")))
    txn = layer.send_request(req, NEXT)
    clock.advance(1)
    wire.clear()
    resp = response(req, 486, to_tag="xyz")
    layer.receive(resp, NEXT)
    assert txn.state == COMPLETED and tu.statuses == [486]
    assert len(wire.sent) == 1
    _, data, dest, _ = wire.sent[0]
    assert dest == NEXT
    ack = data.decode()
    assert ack.startswith("ACK sip:bob@example.com SIP/2.0\r\n")
    assert ack.count("Via:") == 1 and "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n" in ack
    assert "To: Bob <sip:bob@example.com>;tag=xyz\r\n" in ack
    assert "From: Alice <sip:alice@example.com>;tag=1928301774\r\n" in ack
    assert "Call-ID: a84b4c76e66710@pc33.example.com\r\n" in ack
    assert "CSeq: 314159 ACK\r\n" in ack
    assert "Route: <sip:p1.example.com;lr>\r\nRoute: <sip:p2.example.com;lr>\r\n" in ack
    assert "Max-Forwards: 70\r\n" in ack
    assert "Subject" not in ack and "Contact" not in ack

    # A retransmitted final re-sends the ACK and is not passed up.
    wire.clear()
    layer.receive(response(req, 486, to_tag="xyz"), NEXT)
    assert wire.first_lines() == ["ACK sip:bob@example.com SIP/2.0"]
    assert tu.statuses == [486]
    # Timer A no longer fires in Completed.
    clock.advance(10)
    assert len(wire.sent) == 1
    # Timer D: 32 s over UDP.
    clock.advance(21.9)
    assert txn.state == COMPLETED
    clock.advance(0.1)
    assert txn.state == TERMINATED and layer.client_count == 0
    layer.receive(response(req, 486, to_tag="xyz"), NEXT)
    assert len(tu.stray_responses) == 1


def test_make_ack_matches_rfc_17_1_1_3():
    req = request(more_vias=("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKold",), extra=(("Route", "<sip:p1;lr>"),))
    ack = make_ack(req, response(req, 404, to_tag="t9"))
    assert ack.method == "ACK" and ack.uri == req.uri
    assert ack.headers.get_all("via") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds"]
    assert ack.headers.get("to") == "Bob <sip:bob@example.com>;tag=t9"
    assert ack.headers.get("cseq") == "314159 ACK"
    assert ack.headers.get("route") == "<sip:p1;lr>"
    assert ack.body == b""


def test_make_ack_single_via_from_a_multi_value_line():
    req = request()
    req.headers.set("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKb")
    ack = make_ack(req, response(req, 500))
    assert ack.headers.get_all("via") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa"]


def test_invite_client_non_2xx_over_tcp_terminates_at_once():
    layer, clock, wire, tu = make_layer()
    req = request(transport="TCP")
    txn = layer.send_request(req, NEXT_TCP)
    layer.receive(response(req, 603), NEXT_TCP)
    assert wire.first_lines() == ["INVITE sip:bob@example.com SIP/2.0", "ACK sip:bob@example.com SIP/2.0"]
    assert txn.state == TERMINATED and tu.statuses == [603]
    assert layer.client_count == 0 and clock.getDelayedCalls() == []


def test_invite_client_accepted_passes_2xx_retransmissions_timer_m():
    layer, clock, wire, tu = make_layer()
    req = request()
    txn = layer.send_request(req, NEXT)
    layer.receive(response(req, 200, to_tag="one"), NEXT)
    assert txn.state == ACCEPTED and tu.statuses == [200]
    # RFC 6026: retransmissions and other branches' 2xx go to the TU; no ACK.
    layer.receive(response(req, 200, to_tag="one"), NEXT)
    layer.receive(response(req, 200, to_tag="two"), NEXT)
    layer.receive(response(req, 180, to_tag="two"), NEXT)  # not a 2xx: absorbed
    assert tu.statuses == [200, 200, 200]
    assert [r.to.tag for r, _ in tu.responses] == ["one", "one", "two"]
    assert wire.first_lines() == ["INVITE sip:bob@example.com SIP/2.0"]
    clock.advance(31.9)
    assert txn.state == ACCEPTED and len(wire.sent) == 1  # no retransmission either
    clock.advance(0.1)  # Timer M = 64*T1
    assert txn.state == TERMINATED and layer.client_count == 0
    layer.receive(response(req, 200, to_tag="one"), NEXT)
    assert len(tu.stray_responses) == 1 and tu.statuses == [200, 200, 200]


def test_invite_client_2xx_then_non_2xx_is_absorbed():
    layer, clock, wire, tu = make_layer()
    req = request()
    layer.send_request(req, NEXT)
    layer.receive(response(req, 200), NEXT)
    layer.receive(response(req, 486), NEXT)
    assert tu.statuses == [200]
    assert len(wire.sent) == 1


# -------------------------------------------------------- client non-INVITE


def test_non_invite_client_udp_schedule_capped_at_t2_and_timer_f():
    layer, clock, wire, tu = make_layer()
    txn = layer.send_request(request("OPTIONS"), NEXT)
    assert txn.state == TRYING
    run(clock, 31.99)
    assert wire.times() == NON_INVITE_UDP_SENDS
    assert tu.responses == []
    run(clock, 32.0)
    assert tu.statuses == [408] and txn.failure == TIMEOUT and txn.state == TERMINATED
    clock.advance(100)
    assert wire.times() == NON_INVITE_UDP_SENDS


def test_non_invite_client_proceeding_retransmits_every_t2():
    layer, clock, wire, tu = make_layer()
    req = request("BYE", to_tag="b0b")
    txn = layer.send_request(req, NEXT)
    clock.advance(0.2)
    layer.receive(response(req, 100), NEXT)
    assert txn.state == PROCEEDING and tu.statuses == [100]
    run(clock, 20)
    # Timer E was running at 0.5 s; once it fires in Proceeding it is reset to T2.
    assert wire.times() == [0.0, 0.5, 4.5, 8.5, 12.5, 16.5]
    layer.receive(response(req, 200), NEXT)
    assert tu.statuses == [100, 200] and txn.state == COMPLETED
    run(clock, 40)
    assert len(wire.sent) == 6


def test_non_invite_client_tcp_no_retransmission():
    layer, clock, wire, tu = make_layer()
    txn = layer.send_request(request("REGISTER", transport="TCP"), NEXT_TCP)
    clock.advance(31.9)
    assert wire.times() == [0.0]
    clock.advance(0.1)
    assert tu.statuses == [408] and txn.failure == TIMEOUT


def test_non_invite_client_completed_absorbs_and_timer_k():
    layer, clock, wire, tu = make_layer()
    req = request("OPTIONS")
    txn = layer.send_request(req, NEXT)
    clock.advance(0.5)
    layer.receive(response(req, 200), NEXT)
    assert txn.state == COMPLETED
    layer.receive(response(req, 200), NEXT)
    assert tu.statuses == [200] and tu.stray_responses == []
    clock.advance(4.9)
    assert txn.state == COMPLETED
    clock.advance(0.1)  # Timer K = T4
    assert txn.state == TERMINATED and layer.client_count == 0
    assert wire.times() == [0.0, 0.5]


def test_non_invite_client_tcp_timer_k_zero():
    layer, clock, wire, tu = make_layer()
    req = request("OPTIONS", transport="TCP")
    txn = layer.send_request(req, NEXT_TCP)
    layer.receive(response(req, 404), NEXT_TCP)
    assert txn.state == TERMINATED and tu.statuses == [404]
    assert clock.getDelayedCalls() == []


def test_configurable_timers():
    layer, clock, wire, tu = make_layer(timers=TimerConfig(t1=0.1, t2=0.4, t4=1.0))
    layer.send_request(request("OPTIONS"), NEXT)
    run(clock, 6.39)
    times = [round(t, 6) for t in wire.times()]
    assert times[:6] == [0.0, 0.1, 0.3, 0.7, 1.1, 1.5]
    assert all(round(b - a, 6) == 0.4 for a, b in zip(times[3:], times[4:]))
    assert tu.responses == []
    run(clock, 6.4)  # Timer F = 64 * 0.1
    assert tu.statuses == [408]

    layer, clock, wire, tu = make_layer(timers=TimerConfig(t1=1.0, t2=8.0))
    layer.send_request(request(), NEXT)
    run(clock, 64.0)
    assert wire.times() == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0]
    assert tu.statuses == [408]


def test_transport_error_is_a_503():
    layer, clock, wire, tu = make_layer()
    wire.fail_dests.add(NEXT)
    txn = layer.send_request(request(), NEXT)
    assert tu.responses == []  # never before send_request() returns
    clock.advance(0)
    assert tu.statuses == [503]
    assert txn.failure == TRANSPORT_ERROR and txn.state == TERMINATED
    assert layer.client_count == 0
    clock.advance(100)
    assert len(wire.sent) == 1 and tu.statuses == [503]


def test_transport_error_on_retransmission_is_a_503():
    layer, clock, wire, tu = make_layer()
    txn = layer.send_request(request("MESSAGE"), NEXT)
    clock.advance(0.5)
    wire.fail_all = True
    clock.advance(1.0)
    assert tu.statuses == [503] and txn.failure == TRANSPORT_ERROR
    clock.advance(100)
    assert tu.statuses == [503]


def test_stray_response_goes_to_tu():
    layer, clock, wire, tu = make_layer()
    req = request()
    layer.receive(response(req, 200), NEXT)
    assert tu.stray_responses[0][1] == NEXT and tu.responses == []


def test_response_matching_uses_branch_and_cseq_method():
    layer, clock, wire, tu = make_layer()
    req = request()
    layer.send_request(req, NEXT)
    other = copy(req)
    other.headers.set("CSeq", "314159 CANCEL")
    layer.receive(response(other, 200), NEXT)
    assert tu.responses == [] and len(tu.stray_responses) == 1


def test_send_request_validation():
    layer, clock, wire, tu = make_layer()
    with pytest.raises(ValueError):
        layer.send_request(request("ACK"), NEXT)
    with pytest.raises(ValueError):
        layer.send_request(request(branch="1234"), NEXT)
    with pytest.raises(ValueError):
        layer.send_request(request(branch=None), NEXT)
    layer.send_request(request(), NEXT)
    with pytest.raises(ValueError):
        layer.send_request(request(), NEXT)


def test_per_transaction_user():
    layer, clock, wire, tu = make_layer()

    class Owner:
        def __init__(self):
            self.got = []

        def responseReceived(self, response, transaction):
            self.got.append(response.status)

    owner = Owner()
    req = request("OPTIONS")
    layer.send_request(req, NEXT, owner)
    layer.receive(response(req, 200), NEXT)
    assert owner.got == [200] and tu.responses == []


def test_new_branch_is_rfc3261():
    b1, b2 = new_branch(), new_branch()
    assert b1.startswith("z9hG4bK") and b1 != b2


# ----------------------------------------------------------------- CANCEL


def test_make_cancel_matches_rfc_9_1():
    req = request(more_vias=("SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKold",), extra=(("Route", "<sip:p1;lr>"),))
    req.body = b"v=0\r\n"
    cancel = make_cancel(req)
    assert cancel.method == "CANCEL" and cancel.uri == req.uri
    assert cancel.headers.get_all("via") == [req.headers.get("via")]
    for name in ("to", "from", "call-id", "route", "max-forwards"):
        assert cancel.headers.get(name) == req.headers.get(name)
    assert cancel.headers.get("cseq") == "314159 CANCEL"
    assert cancel.body == b"" and "contact" not in cancel.headers


def test_client_cancel_waits_for_a_provisional():
    layer, clock, wire, tu = make_layer()
    req = request()
    txn = layer.send_request(req, NEXT)
    assert txn.cancel() is True
    clock.advance(0.5)
    assert wire.first_lines() == ["INVITE sip:bob@example.com SIP/2.0"] * 2
    layer.receive(response(req, 180), NEXT)
    assert wire.first_lines()[-1] == "CANCEL sip:bob@example.com SIP/2.0"
    ctxn = txn.cancel_transaction
    assert isinstance(ctxn, ClientTransaction) and ctxn.method == "CANCEL"
    assert ctxn.dest == NEXT and ctxn.key[0] == txn.key[0]
    assert txn.cancel() is False  # once
    layer.receive(response(ctxn.request, 200), NEXT)
    assert ctxn.state == COMPLETED
    layer.receive(response(req, 487), NEXT)
    assert [(r.status, t.method) for r, t in tu.responses] == [(180, "INVITE"), (200, "CANCEL"), (487, "INVITE")]


def test_client_cancel_after_final_does_nothing():
    layer, clock, wire, tu = make_layer()
    req = request()
    txn = layer.send_request(req, NEXT)
    txn.cancel()
    layer.receive(response(req, 486), NEXT)
    assert txn.cancel_transaction is None
    assert txn.cancel() is False
    assert "CANCEL" not in " ".join(wire.first_lines())


# --------------------------------------------------------- server INVITE


def test_server_invite_sends_100_after_200ms_and_absorbs_retransmissions():
    layer, clock, wire, tu = make_layer()
    req = request()
    layer.receive(req, UA)
    assert len(tu.requests) == 1
    got, txn = tu.requests[0]
    assert got is req and isinstance(txn, ServerTransaction) and txn.state == PROCEEDING
    assert wire.sent == []
    clock.advance(0.2)
    assert wire.first_lines() == ["SIP/2.0 100 Trying"]
    assert b";tag=" not in wire.sent[0][1].split(b"\r\nTo:")[1].split(b"\r\n")[0]
    clock.advance(0.3)
    layer.receive(copy(req), UA)  # retransmission: 100 again, not to the TU
    assert wire.first_lines() == ["SIP/2.0 100 Trying"] * 2
    assert len(tu.requests) == 1
    txn.respond(response(req, 180))
    layer.receive(copy(req), UA)
    assert wire.first_lines()[-2:] == ["SIP/2.0 180 Ringing"] * 2
    assert all(dest == UA for _, _, dest, _ in wire.sent)


def test_server_invite_no_100_when_tu_answers_quickly():
    layer, clock, wire, tu = make_layer()
    tu.on_request = lambda r, t: t.respond(response(r, 404))
    layer.receive(request(), UA)
    clock.advance(0.3)
    assert wire.first_lines() == ["SIP/2.0 404 Not Found"]


def test_server_invite_trying_delay_options():
    layer, clock, wire, tu = make_layer(trying_delay=0)
    tu.on_request = lambda r, t: wire.first_lines() == ["SIP/2.0 100 Trying"] or pytest.fail("100 not first")
    layer.receive(request(extra=(("Timestamp", "54"),)), UA)
    assert wire.first_lines() == ["SIP/2.0 100 Trying"]
    assert b"Timestamp: 54\r\n" in wire.sent[0][1]

    layer, clock, wire, tu = make_layer(trying_delay=None)
    layer.receive(request(), UA)
    clock.advance(10)
    assert wire.sent == []


def test_server_invite_non_2xx_retransmitted_with_timer_g_until_timer_h():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request()
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    clock.advance(1.0)
    wire.clear()
    assert txn.respond(response(req, 486)) is True
    assert txn.state == COMPLETED
    run(clock, 1.0 + 31.99)
    expected = [1.0 + t for t in TimerConfig().invite_response_schedule()]
    assert expected == [1.0, 1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert wire.times() == expected
    assert set(wire.first_lines()) == {"SIP/2.0 486 Busy Here"}
    assert tu.failures == []
    run(clock, 33.0)  # Timer H = 64*T1 after the final
    assert txn.state == TERMINATED and tu.failures == [(txn, TIMEOUT)]
    assert layer.server_count == 0
    clock.advance(100)
    assert len(wire.sent) == len(expected)


def test_server_invite_retransmission_in_completed_resends_final():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request()
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    txn.respond(response(req, 404))
    clock.advance(0.2)
    layer.receive(copy(req), UA)
    assert wire.times() == [0.0, 0.2]
    assert len(tu.requests) == 1


def test_server_invite_ack_confirms_then_timer_i():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request()
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    final = response(req, 486, to_tag="srv")
    txn.respond(final)
    clock.advance(0.5)  # one retransmission
    ack = make_ack(req, final)
    layer.receive(ack, UA)
    assert txn.state == CONFIRMED
    clock.advance(1)
    assert wire.times() == [0.0, 0.5]  # Timer G stopped
    layer.receive(make_ack(req, final), UA)  # ACK retransmission absorbed
    assert tu.stray_acks == [] and tu.failures == []
    clock.advance(3.9)
    assert txn.state == CONFIRMED
    clock.advance(0.1)  # Timer I = T4 after the ACK
    assert txn.state == TERMINATED and layer.server_count == 0
    assert tu.failures == []


def test_server_invite_tcp_no_timer_g_and_ack_terminates():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request(transport="TCP", port=5060)
    layer.receive(req, UA_TCP)
    txn = tu.requests[0][1]
    final = response(req, 480)
    txn.respond(final)
    clock.advance(31.9)
    assert wire.times() == [0.0]
    assert wire.sent[0][2] == UA_TCP  # the connection it came in on
    layer.receive(make_ack(req, final), UA_TCP)
    assert txn.state == TERMINATED and clock.getDelayedCalls() == []


def test_server_invite_tcp_timer_h_without_ack():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request(transport="TCP")
    layer.receive(req, UA_TCP)
    txn = tu.requests[0][1]
    txn.respond(response(req, 480))
    clock.advance(32)
    assert tu.failures == [(txn, TIMEOUT)]


def test_server_invite_accepted_state_rfc6026():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request()
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    ok = response(req, 200, to_tag="callee")
    txn.respond(ok)
    assert txn.state == ACCEPTED
    clock.advance(10)
    assert wire.times() == [0.0]  # the transaction never retransmits a 2xx itself
    # The TU (a proxy forwarding them) passes 2xx retransmissions: sent.
    assert txn.respond(response(req, 200, to_tag="callee")) is True
    assert txn.respond(response(req, 200, to_tag="other-branch")) is True
    assert txn.respond(response(req, 486)) is False
    assert wire.times() == [0.0, 10.0, 10.0]
    # INVITE retransmissions are absorbed without a response.
    layer.receive(copy(req), UA)
    assert len(wire.sent) == 3 and len(tu.requests) == 1
    # An ACK that matches goes to the TU (RFC 6026 7.1).
    ack = make_ack(req, ok)
    layer.receive(ack, UA)
    assert tu.stray_acks == [(ack, UA)]
    assert txn.state == ACCEPTED
    clock.advance(21.9)
    assert txn.state == ACCEPTED
    clock.advance(0.1)  # Timer L = 64*T1
    assert txn.state == TERMINATED and layer.server_count == 0 and tu.failures == []


def test_ack_for_2xx_is_stray_and_stamped():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    ack = request("ACK", branch="z9hG4bKnew", to_tag="callee", via_params=";rport", uri="sip:bob@192.0.2.5")
    layer.receive(ack, Peer("udp", "198.51.100.7", 1024))
    assert tu.stray_acks == [(ack, Peer("udp", "198.51.100.7", 1024))]
    assert ack.top_via.params["rport"] == "1024"
    assert ack.top_via.params["received"] == "198.51.100.7"
    assert layer.server_count == 0 and wire.sent == []


def test_server_transaction_second_final_is_dropped():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    req = request()
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    assert txn.respond(response(req, 486)) is True
    assert txn.respond(response(req, 200)) is False
    assert txn.respond(response(req, 180)) is False
    assert wire.first_lines() == ["SIP/2.0 486 Busy Here"]


# ----------------------------------------------------- server non-INVITE


def test_server_non_invite_trying_absorbs_then_resends_final_then_timer_j():
    layer, clock, wire, tu = make_layer()
    req = request("REGISTER")
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    assert txn.state == TRYING
    clock.advance(0.5)
    layer.receive(copy(req), UA)  # Trying: discarded, no response to resend
    assert wire.sent == [] and len(tu.requests) == 1
    txn.respond(response(req, 100))
    assert txn.state == PROCEEDING
    layer.receive(copy(req), UA)
    assert wire.first_lines() == ["SIP/2.0 100 Trying"] * 2
    txn.respond(response(req, 200))
    assert txn.state == COMPLETED
    clock.advance(1)
    layer.receive(copy(req), UA)
    assert wire.first_lines()[-2:] == ["SIP/2.0 200 OK"] * 2
    assert len(tu.requests) == 1
    # No retransmission of non-INVITE responses by the server (only on request).
    clock.advance(30)
    assert len(wire.sent) == 4
    clock.advance(0.9)
    assert txn.state == COMPLETED
    clock.advance(0.1)  # Timer J = 64*T1 after the final (sent at 0.5)
    assert txn.state == TERMINATED and layer.server_count == 0
    layer.receive(copy(req), UA)  # now a new transaction
    assert len(tu.requests) == 2


def test_unanswered_non_invite_is_forgotten_after_64_t1_plus_t4():
    layer, clock, wire, tu = make_layer()
    req = request("MESSAGE")
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    clock.advance(36.9)
    assert txn.state == TRYING
    clock.advance(0.1)
    assert txn.state == TERMINATED and layer.server_count == 0 and wire.sent == []
    assert txn.respond(response(req, 200)) is False
    # An INVITE waits for the TU however long it takes.
    layer, clock, wire, tu = make_layer(trying_delay=None)
    layer.receive(request(), UA)
    clock.advance(1000)
    assert tu.requests[0][1].state == PROCEEDING


def test_answered_non_invite_is_not_cut_short():
    layer, clock, wire, tu = make_layer()
    req = request("MESSAGE")
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    clock.advance(30)
    txn.respond(response(req, 200))
    clock.advance(31.9)
    assert txn.state == COMPLETED
    clock.advance(0.1)
    assert txn.state == TERMINATED


def test_server_terminate_lets_retransmissions_through_again():
    layer, clock, wire, tu = make_layer()
    cancel = make_cancel(request())
    layer.receive(cancel, UA)
    tu.requests[0][1].terminate()
    assert layer.server_count == 0
    layer.receive(copy(cancel), UA)
    assert len(tu.requests) == 2


def test_server_non_invite_tcp_timer_j_zero():
    layer, clock, wire, tu = make_layer()
    req = request("OPTIONS", transport="TCP")
    layer.receive(req, UA_TCP)
    txn = tu.requests[0][1]
    txn.respond(response(req, 200))
    assert txn.state == TERMINATED and layer.server_count == 0
    assert wire.sent[0][2] == UA_TCP


def test_server_transport_error_informs_tu():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    wire.fail_all = True
    req = request("OPTIONS")
    layer.receive(req, UA)
    txn = tu.requests[0][1]
    txn.respond(response(req, 200))
    assert tu.failures == []
    clock.advance(0)
    assert tu.failures == [(txn, TRANSPORT_ERROR)]
    assert txn.state == TERMINATED


def test_server_tcp_falls_back_to_sent_by_port():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    wire.fail_dests.add(UA_TCP)
    req = request("OPTIONS", transport="TCP", port=5070)
    layer.receive(req, UA_TCP)
    txn = tu.requests[0][1]
    txn.respond(response(req, 200))
    clock.advance(0)
    assert [d for _, _, d, _ in wire.sent] == [UA_TCP, Peer("tcp", "192.0.2.1", 5070)]
    assert tu.failures == []
    wire.fail_dests.add(Peer("tcp", "192.0.2.1", 5070))
    req2 = request("OPTIONS", transport="TCP", port=5070, branch="z9hG4bKother")
    layer.receive(req2, UA_TCP)
    txn2 = tu.requests[1][1]
    txn2.respond(response(req2, 200))
    clock.advance(0)
    clock.advance(0)
    assert tu.failures == [(txn2, TRANSPORT_ERROR)]


def test_local_address_is_passed_to_the_transport():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    local = object()
    req = request("OPTIONS")
    layer.receive(req, UA, local)
    tu.requests[0][1].respond(response(req, 200))
    assert wire.sent[0][3] is local


# ---------------------------------------------------------------- matching


def test_server_matching_needs_branch_sent_by_and_method():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    layer.receive(request(), UA)
    layer.receive(request(port=5062), UA)  # other sent-by: new transaction
    layer.receive(request(branch="z9hG4bKzzz"), UA)  # other branch
    layer.receive(request("OPTIONS"), UA)  # other method
    layer.receive(request(), UA)  # retransmission of the first
    assert len(tu.requests) == 4 and layer.server_count == 4


def test_server_cancel_is_its_own_transaction_and_finds_the_invite():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    inv = request()
    layer.receive(inv, UA)
    itxn = tu.requests[0][1]
    cancel = make_cancel(copy(inv))
    layer.receive(cancel, UA)
    assert len(tu.requests) == 2
    got, ctxn = tu.requests[1]
    assert got.method == "CANCEL" and ctxn is not itxn and not ctxn.is_invite
    assert layer.find_cancelled(cancel) is itxn
    assert layer.find_server_transaction(cancel) is ctxn
    # The INVITE transaction is still there, and a retransmitted CANCEL is absorbed.
    ctxn.respond(response(cancel, 200))
    layer.receive(copy(cancel), UA)
    assert len(tu.requests) == 2 and wire.first_lines() == ["SIP/2.0 200 OK"] * 2
    itxn.respond(response(inv, 487))
    assert itxn.state == COMPLETED
    # A CANCEL for an unknown INVITE finds nothing.
    stray = make_cancel(request(branch="z9hG4bKunknown"))
    assert layer.find_cancelled(stray) is None


def test_rfc2543_matching():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    inv = request(branch=None)
    layer.receive(inv, UA)
    txn = tu.requests[0][1]
    layer.receive(request(branch=None), UA)  # retransmission
    assert len(tu.requests) == 1
    # A different From tag / Call-ID / CSeq / Request-URI / Via is a new request.
    layer.receive(request(branch=None, from_tag="other"), UA)
    layer.receive(request(branch=None, call_id="other@x"), UA)
    layer.receive(request(branch=None, cseq=2), UA)
    layer.receive(request(branch=None, uri="sip:carol@example.com"), UA)
    layer.receive(request(branch=None, host="192.0.2.2"), UA)
    assert len(tu.requests) == 6
    final = response(inv, 486, to_tag="srv")
    txn.respond(final)
    # An ACK with a different To tag does not match the transaction.
    bad = make_ack(inv, response(inv, 486, to_tag="nope"))
    layer.receive(bad, UA)
    assert txn.state == COMPLETED and len(tu.stray_acks) == 1
    ack = make_ack(inv, final)
    assert ack.top_via.branch is None
    layer.receive(ack, UA)
    assert txn.state == CONFIRMED
    # CANCEL: same Request-URI, tags, Call-ID, CSeq number and Via.
    inv2 = request(branch=None, cseq=7)
    layer.receive(inv2, UA)
    txn2 = tu.requests[-1][1]
    assert layer.find_cancelled(make_cancel(inv2)) is txn2
    # Non-INVITE 2543 retransmission.
    bye = request("BYE", branch=None, to_tag="srv", cseq=9)
    layer.receive(bye, UA)
    n = len(tu.requests)
    layer.receive(request("BYE", branch=None, to_tag="srv", cseq=9), UA)
    assert len(tu.requests) == n


def test_rfc2543_branch_without_magic_cookie():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    layer.receive(request(branch="oldstyle1"), UA)
    layer.receive(request(branch="oldstyle1"), UA)
    layer.receive(request(branch="oldstyle2"), UA)  # top Via differs
    assert len(tu.requests) == 2


def test_requests_without_via_are_dropped():
    layer, clock, wire, tu = make_layer()
    req = request()
    req.headers.remove("via")
    layer.receive(req, UA)
    assert tu.requests == [] and wire.sent == []


def test_clear_cancels_everything():
    layer, clock, wire, tu = make_layer()
    layer.send_request(request(), NEXT)
    layer.receive(request("OPTIONS"), UA)
    layer.receive(request(branch="z9hG4bKx"), UA)
    layer.clear()
    assert layer.client_count == 0 and layer.server_count == 0
    assert clock.getDelayedCalls() == []


def test_tu_exception_does_not_break_the_layer():
    layer, clock, wire, tu = make_layer(trying_delay=None)

    def boom(r, t):
        raise RuntimeError("TU bug")

    tu.on_request = boom
    req = request("OPTIONS")
    layer.receive(req, UA)
    layer.receive(copy(req), UA)
    assert len(tu.requests) == 1 and layer.server_count == 1


def test_headers_round_trip_objects():
    # The helpers build messages the way the parser will; a sanity check.
    req = request()
    assert isinstance(req, Request) and isinstance(req.headers, Headers)
    assert req.top_via.branch == "z9hG4bK776asdhds"


def test_client_cancel_in_proceeding_is_sent_at_once_to_its_own_user():
    layer, clock, wire, tu = make_layer()
    req = request()
    txn = layer.send_request(req, NEXT)
    layer.receive(response(req, 183), NEXT)
    got = []

    class Owner:
        def responseReceived(self, response, transaction):
            got.append((response.status, transaction.method))

    assert txn.cancel(Owner()) is True
    assert wire.first_lines()[-1] == "CANCEL sip:bob@example.com SIP/2.0"
    layer.receive(response(txn.cancel_transaction.request, 200), NEXT)
    assert got == [(200, "CANCEL")] and tu.statuses == [183]


def test_client_terminate_stops_everything_silently():
    layer, clock, wire, tu = make_layer()
    txn = layer.send_request(request(), NEXT)
    txn.terminate()
    clock.advance(100)
    assert len(wire.sent) == 1 and tu.responses == [] and layer.client_count == 0


def test_failed_ack_is_not_reported():
    layer, clock, wire, tu = make_layer()
    req = request()
    txn = layer.send_request(req, NEXT)
    wire.fail_all = True
    layer.receive(response(req, 500), NEXT)
    clock.advance(0)
    assert tu.statuses == [500] and txn.failure is None


def test_send_stateless():
    layer, clock, wire, tu = make_layer()
    ack = request("ACK", to_tag="x")
    d = layer.send_stateless(ack, NEXT)
    assert wire.first_lines() == ["ACK sip:bob@example.com SIP/2.0"] and d.called
    wire.fail_all = True
    failed = layer.send_stateless(ack, NEXT)
    results = []
    failed.addBoth(results.append)
    assert results == [None]  # logged and swallowed
    assert layer.client_count == 0 and layer.server_count == 0


def test_find_server_transaction_for_acks():
    layer, clock, wire, tu = make_layer(trying_delay=None)
    inv = request(branch=None)
    layer.receive(inv, UA)
    txn = tu.requests[0][1]
    final = response(inv, 404, to_tag="srv")
    txn.respond(final)
    assert layer.find_server_transaction(make_ack(inv, final)) is txn
    inv3261 = request()
    layer.receive(inv3261, UA)
    txn2 = tu.requests[1][1]
    assert layer.find_server_transaction(make_ack(inv3261, response(inv3261, 404))) is txn2
    assert layer.find_server_transaction(request("ACK", branch="z9hG4bKother")) is None


def test_stamp_via_keeps_quoted_parameters_intact():
    from sosimple_proxy.sip.via import stamp_via

    req = request(host="192.0.2.1", via_params=';x="a;b";rport')
    stamp_via(req, Peer("udp", "198.51.100.7", 999))
    assert req.headers.get_all("via")[0].endswith(';x="a;b";rport=999;received=198.51.100.7')
