"""PSTN gateways in the whole proxy core (real transaction layer, fake wire,
Clock): numbers routed to the gateway group, failover, OPTIONS probes
driving each gateway's state, DIDs retargeted to their AoR."""

from __future__ import annotations

from sosimple_proxy.location.gateways import ACTIVE, INACTIVE
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request, Response

from tests.proxy.harness import CALLER, Harness, invite

GW1, GW2, GW3 = Peer("udp", "127.0.0.1", 5081), Peer("udp", "127.0.0.1", 5082), Peer("udp", "127.0.0.1", 5083)


def pstn_harness(probe_interval: float = 0, order: str = "local routes pstn") -> Harness:
    return Harness(
        "[pstn]\ncountry_code = 1\nlocal_patterns = ^([2-9][0-9]{6})$ => +1412\\1\n"
        f"probe_interval = {probe_interval}\nretry_interval = 60\n"
        "[gateway:a1]\nuri = sip:127.0.0.1:5081\nprefixes = +1555\npriority = 1\n"
        "[gateway:a2]\nuri = sip:127.0.0.1:5082\nprefixes = +1555\npriority = 2\n"
        "[gateway:b]\nuri = sip:127.0.0.1:5083\nprefixes = +1\nstrip = 1\nprepend = 9\n"
        "[did]\n+14125550100 = sip:alice@example.com\n"
        f"[location]\norder = {order}\n"
    )


def requests_to(sent, peer, method="INVITE"):
    return [m for m, d in sent if isinstance(m, Request) and m.method == method and d == peer]


def final_upstream(sent):
    return [m for m, d in sent if isinstance(m, Response) and m.status >= 200 and d == CALLER]


def test_a_tel_uri_goes_to_the_first_gateway_of_its_group_and_fails_over_on_503():
    h = pstn_harness()
    h.receive(invite("tel:+15551234567"))
    sent = h.wire.take()
    (first,) = requests_to(sent, GW1)
    assert first.uri == "sip:+15551234567@127.0.0.1:5081;user=phone"
    assert not requests_to(sent, GW2) and not requests_to(sent, GW3)
    h.answer(first, 503)
    sent = h.wire.take()
    (second,) = requests_to(sent, GW2)
    assert second.uri == "sip:+15551234567@127.0.0.1:5082;user=phone"
    assert not final_upstream(sent)
    h.answer(second, 200)
    (ok,) = final_upstream(h.wire.take())
    assert ok.status == 200
    # a1 rests: the next call goes straight to a2
    assert h.providers["pstn"].gateways.state("a1").state == INACTIVE
    h.receive(invite("tel:+15559999999", branch="z9hG4bK-caller-2", call_id="call-2"))
    sent = h.wire.take()
    assert requests_to(sent, GW2) and not requests_to(sent, GW1)


def test_a_transport_error_fails_over_too():
    h = pstn_harness()
    h.wire.fail.add(GW1)
    h.receive(invite("sip:+15551234567@example.com;user=phone"))
    h.clock.advance(0)  # the transport error is reported on the next turn
    sent = h.wire.take()
    (second,) = requests_to(sent, GW2)
    h.answer(second, 200)
    (final,) = final_upstream(h.wire.take())
    assert final.status == 200


def test_a_local_seven_digit_number_goes_to_the_group_of_its_e164_prefix_with_strip_and_prepend():
    h = pstn_harness()
    h.receive(invite("sip:5550123@example.com"))
    sent = h.wire.take()
    (out,) = requests_to(sent, GW3)
    assert out.uri == "sip:94125550123@127.0.0.1:5083;user=phone"  # +14125550123, strip 1, prepend 9


def test_a_number_registered_as_a_user_is_that_user():
    h = pstn_harness()
    assert h.register("+15551234567", "sip:desk@127.0.0.1:5999").status == 200
    h.receive(invite("sip:+15551234567@example.com;user=phone"))
    sent = h.wire.take()
    assert requests_to(sent, Peer("udp", "127.0.0.1", 5999))
    assert not requests_to(sent, GW1)


def test_numbers_without_pstn_in_the_order_are_not_found():
    h = pstn_harness(order="local routes")
    h.receive(invite("tel:+15551234567", method="MESSAGE"))
    (final,) = final_upstream(h.wire.take())
    assert final.status == 404


def test_an_inbound_call_to_a_did_reaches_the_mapped_aor():
    h = pstn_harness()
    h.register("alice", "sip:alice@127.0.0.1:5998")
    h.receive(invite("sip:+14125550100@127.0.0.1:5060;user=phone"), source=GW3)
    sent = h.wire.take()
    (out,) = requests_to(sent, Peer("udp", "127.0.0.1", 5998))
    assert out.uri == "sip:alice@127.0.0.1:5998"
    # the same DID dialled as a national number without user=phone
    h.receive(invite("sip:4125550100@127.0.0.1:5060", branch="z9hG4bK-2", call_id="c2"), source=GW3)
    assert requests_to(h.wire.take(), Peer("udp", "127.0.0.1", 5998))


def test_options_probes_drive_the_gateway_state():
    h = pstn_harness(probe_interval=20)
    states = h.providers["pstn"].gateways.states
    h.clock.advance(0)  # the first round goes out at once
    sent = h.wire.take()
    probes = {d: m for m, d in sent if isinstance(m, Request) and m.method == "OPTIONS"}
    assert set(probes) == {GW1, GW2, GW3}
    assert probes[GW1].uri == "sip:127.0.0.1:5081"
    assert probes[GW1].top_via.host == "127.0.0.1" and probes[GW1].top_via.port == 5060
    h.answer(probes[GW1], 200)
    h.answer(probes[GW2], 405)  # alive, even if it does not like OPTIONS
    # GW3 never answers: Timer F (64*T1 = 32 s) ends the probe
    h.advance(19.5)
    assert [m for m, d in h.wire.take() if d != GW3] == []  # nothing new for the answered ones yet
    h.advance(1)  # second round at 20 s: GW1 and GW2 again, GW3 still pending
    assert {d for m, d in h.wire.take() if isinstance(m, Request) and m.method == "OPTIONS"} >= {GW1, GW2}
    assert states["a1"].state == ACTIVE and states["b"].state == ACTIVE
    h.advance(12)
    assert states["b"].state == INACTIVE
    # a call to +1412 now has no usable gateway: 503 at once
    h.receive(invite("sip:5550123@example.com"))
    (final,) = final_upstream(h.wire.take())
    assert final.status == 503
    # the next round reaches b, which answers: it is back
    h.advance(20)
    probes = [m for m, d in h.wire.take() if isinstance(m, Request) and m.method == "OPTIONS" and d == GW3]
    assert len({p.top_via.branch for p in probes}) == 1  # one new probe (UDP retransmissions of it)
    h.answer(probes[-1], 200)
    assert states["b"].state == ACTIVE


def test_a_probe_that_cannot_be_sent_marks_the_gateway_inactive():
    h = pstn_harness(probe_interval=20)
    h.wire.fail.add(GW1)
    h.clock.advance(0)
    h.clock.advance(0)
    states = h.providers["pstn"].gateways.states
    assert states["a1"].state == INACTIVE and states["a2"].state == ACTIVE
    h.receive(invite("tel:+15551234567"))
    sent = h.wire.take()
    assert requests_to(sent, GW2) and not requests_to(sent, GW1)


def test_probes_stop_with_the_sip_service():
    h = pstn_harness(probe_interval=20)
    h.clock.advance(0)
    h.wire.take()
    h.proxy.timers.stopService()  # what stopping the SIP service does, then:
    h.layer.clear()
    h.advance(60)
    assert [m for m, _ in h.wire.take() if isinstance(m, Request) and m.method == "OPTIONS"] == []
