"""The response context (RFC 3261 16.6-16.10) with a Clock, in-process.

The proxy core, the real transaction layer and a recording wire: each test
plays the caller and the callees by hand.
"""

from __future__ import annotations

from urllib.parse import unquote

from zope.interface import implementer

from sosimple_proxy.location.interfaces import IRetargeting
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request, Response
from tests.proxy.harness import CALLER, PROXY_TCP, Harness, invite, unstamped


def statuses(h: Harness, sent) -> list[int]:
    return [r.status for r, _ in h.sent_responses(sent)]


def test_invite_forked_in_q_order_then_next_group():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001", q=1.0)
    h.register("bob", "sip:bob@127.0.0.1:6002", q=1.0)
    h.register("bob", "sip:bob@127.0.0.1:6003", q=0.5)
    h.receive(invite())
    sent = h.wire.take()
    assert statuses(h, sent) == [100]
    first = h.sent_requests(sent, "INVITE")
    assert sorted(d.port for _, d in first) == [6001, 6002]
    # both of the q=1.0 group refuse: only then is the q=0.5 contact tried
    for req, _ in first:
        h.answer(req, 486)
    sent = h.wire.take()
    assert [d.port for _, d in h.sent_requests(sent, "INVITE")] == [6003]
    assert statuses(h, sent) == []  # nothing upstream yet
    third = h.sent_requests(sent, "INVITE")[0][0]
    h.answer(third, 200)
    sent = h.wire.take()
    assert statuses(h, sent) == [200]


def test_2xx_cancels_the_other_branches_and_every_2xx_goes_upstream():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.register("bob", "sip:bob@127.0.0.1:6002")
    h.receive(invite())
    branches = [r for r, _ in h.sent_requests(h.wire.take(), "INVITE")]
    for r in branches:
        h.answer(r, 180, to_tag=f"t{r.ruri.port}")
    sent = h.wire.take()
    assert statuses(h, sent) == [180, 180]
    h.answer(branches[0], 200, to_tag="t6001")
    sent = h.wire.take()
    assert statuses(h, sent) == [200]
    cancels = h.sent_requests(sent, "CANCEL")
    assert [d.port for _, d in cancels] == [6002]
    # the other UA answered 200 at the same time: forwarded too (16.7 step 5)
    h.answer(branches[1], 200, to_tag="t6002")
    sent = h.wire.take()
    assert statuses(h, sent) == [200]


def test_best_response_prefers_challenges_and_merges_them():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.register("bob", "sip:bob@127.0.0.1:6002")
    h.register("bob", "sip:bob@127.0.0.1:6003")
    h.receive(invite())
    a, b, c = [r for r, _ in h.sent_requests(h.wire.take(), "INVITE")]
    h.answer(a, 486)
    h.answer(b, 401, extra='WWW-Authenticate: Digest realm="b", nonce="1"')
    h.answer(c, 401, extra='WWW-Authenticate: Digest realm="c", nonce="2"')
    (final, dest), = h.sent_responses(h.wire.take())
    assert final.status == 401 and dest == CALLER
    assert sorted(final.headers.get_all("www-authenticate")) == [
        'Digest realm="b", nonce="1"',
        'Digest realm="c", nonce="2"',
    ]
    # our own Via is gone, the caller's is on top
    assert len(final.vias) == 1 and final.top_via.port == 5070


def test_lowest_class_wins_and_6xx_beats_all():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.register("bob", "sip:bob@127.0.0.1:6002")
    h.receive(invite())
    a, b = [r for r, _ in h.sent_requests(h.wire.take(), "INVITE")]
    h.answer(a, 480)
    h.answer(b, 302, extra="Contact: <sip:bob@127.0.0.1:7000>")
    assert statuses(h, h.wire.take()) == [302]

    h2 = Harness()
    h2.register("bob", "sip:bob@127.0.0.1:6001")
    h2.register("bob", "sip:bob@127.0.0.1:6002")
    h2.receive(invite())
    a, b = [r for r, _ in h2.sent_requests(h2.wire.take(), "INVITE")]
    h2.answer(b, 180)
    h2.wire.take()
    h2.answer(a, 603)
    sent = h2.wire.take()
    # 16.7 step 5: a 6xx cancels the pending branches and is not forwarded yet
    assert [d.port for _, d in h2.sent_requests(sent, "CANCEL")] == [6002]
    assert statuses(h2, sent) == []
    h2.answer(b, 487)
    assert statuses(h2, h2.wire.take()) == [603]


def test_timer_c_cancels_a_ringing_branch_and_answers_408():
    h = Harness("[sip]\ntimer_c = 10\n")
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite())
    (req, _), = h.sent_requests(h.wire.take(), "INVITE")
    h.advance(5)
    h.answer(req, 180)
    h.wire.take()
    h.advance(9.5)  # a 180 resets Timer C (16.7 step 2): not yet
    assert h.sent_requests(h.wire.take(), "CANCEL") == []
    h.advance(1)
    sent = h.wire.take()
    # one CANCEL (UDP retransmissions of it share its branch), one 408 (retransmitted until ACKed)
    assert len({r.top_via.branch for r, _ in h.sent_requests(sent, "CANCEL")}) == 1
    assert set(statuses(h, sent)) == {408}
    h.answer(req, 487)  # the callee's answer to our CANCEL changes nothing
    assert statuses(h, h.wire.take()) == []


def test_timer_c_without_provisional_is_a_408():
    h = Harness("[sip]\ntimer_c = 10\n")
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite())
    h.wire.take()
    h.advance(10.5)
    sent = h.wire.take()
    assert set(statuses(h, sent)) == {408}
    assert h.sent_requests(sent, "CANCEL") == []  # 16.8: no CANCEL before a provisional


def test_cancel_from_the_caller_reaches_every_branch_and_ends_487():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.register("bob", "sip:bob@127.0.0.1:6002")
    h.receive(invite())
    a, b = [r for r, _ in h.sent_requests(h.wire.take(), "INVITE")]
    h.answer(a, 180)
    h.wire.take()
    h.receive(invite(method="CANCEL"))
    sent = h.wire.take()
    assert statuses(h, sent) == [200]  # the CANCEL itself
    assert [d.port for _, d in h.sent_requests(sent, "CANCEL")] == [6001]
    # b had no provisional yet: its CANCEL waits for one (RFC 3261 9.1)
    h.answer(b, 180)
    sent = h.wire.take()
    assert [d.port for _, d in h.sent_requests(sent, "CANCEL")] == [6002]
    h.answer(a, 487)
    h.answer(b, 487)
    sent = h.wire.take()
    assert statuses(h, sent) == [487]


def test_cancel_matching_nothing_is_481():
    h = Harness()
    h.receive(invite(method="CANCEL"))
    assert statuses(h, h.wire.take()) == [481]


def test_only_503_becomes_500():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite(method="MESSAGE"))
    (req, _), = h.sent_requests(h.wire.take(), "MESSAGE")
    h.answer(req, 503)
    (final, _), = h.sent_responses(h.wire.take())
    assert final.status == 500


def test_transport_error_is_our_own_503_naming_the_hop():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.wire.fail.add(Peer("udp", "127.0.0.1", 6001))
    h.receive(invite(method="MESSAGE"))
    h.advance(0.1)  # the layer reports transport errors from the next reactor turn
    (final, _), = h.sent_responses(h.wire.take())
    assert final.status == 503 and "127.0.0.1:6001" in final.reason


def test_icmp_unreachable_fails_the_branch_at_once():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite(method="MESSAGE"))
    h.wire.take()
    assert h.layer.peer_unreachable(Peer("udp", "127.0.0.1", 6001), "Connection refused") == 1
    (final, _), = h.sent_responses(h.wire.take())
    assert final.status == 503


def test_non_invite_timeout_sends_no_408_upstream():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite(method="MESSAGE"))
    h.wire.take()
    h.advance(40)  # Timer F (32 s) fires in the branch
    # RFC 4320: "MUST NOT send a response with Status-Code of 408 to a non-INVITE request"
    assert statuses(h, h.wire.take()) == []


def test_3xx_recursion_when_enabled():
    h = Harness("recurse_on_3xx = yes\n")
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite())
    (req, _), = h.sent_requests(h.wire.take(), "INVITE")
    h.answer(req, 302, extra="Contact: <sip:bob@127.0.0.1:7000>")
    sent = h.wire.take()
    (again, dest), = h.sent_requests(sent, "INVITE")
    assert dest.port == 7000 and again.uri == "sip:bob@127.0.0.1:7000"
    assert statuses(h, sent) == []
    h.answer(again, 200)
    assert statuses(h, h.wire.take()) == [200]


def test_a_strangers_request_never_recurses_on_a_3xx():
    """With recurse_on_3xx = yes, a 3xx's Contacts would be targets the relay
    rule never saw: a request from a stranger (another domain, untrusted
    source) gets the 3xx relayed instead, so it cannot be bounced anywhere."""
    h = Harness("recurse_on_3xx = yes\n[auth]\ntrusted =\n")
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite().replace("<sip:alice@example.com>", "<sip:mallory@other.test>"))
    (req, _), = h.sent_requests(h.wire.take(), "INVITE")
    h.answer(req, 302, extra="Contact: <sip:+15555550100@127.0.0.1:7000>")
    sent = h.wire.take()
    assert h.sent_requests(sent, "INVITE") == []
    (final, _), = h.sent_responses(sent)
    assert final.status == 302 and "7000" in final.headers.get("contact")


def test_3xx_relayed_when_recursion_is_off():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite())
    (req, _), = h.sent_requests(h.wire.take(), "INVITE")
    h.answer(req, 302, extra="Contact: <sip:bob@127.0.0.1:7000>")
    (final, _), = h.sent_responses(h.wire.take())
    assert final.status == 302 and "7000" in final.headers.get("contact")


def test_forwarded_copy_max_forwards_record_route_and_via():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.receive(invite())
    (req, dest), = h.sent_requests(h.wire.take(), "INVITE")
    assert req.uri == "sip:bob@127.0.0.1:6001"
    assert req.max_forwards == 69
    # our Record-Route carries the dialog's stamp (proxy/dialog_stamp.py)
    assert [unstamped(v) for v in req.headers.get_all("record-route")] == ["<sip:127.0.0.1:5060;lr>"]
    assert req.top_via.host == "127.0.0.1" and req.top_via.port == 5060
    assert req.top_via.branch.startswith("z9hG4bK")
    assert len(req.vias) == 2


def test_double_record_route_when_the_transport_changes():
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001;transport=tcp")
    h.receive(invite())
    (req, dest), = h.sent_requests(h.wire.take(), "INVITE")
    assert dest.transport == "tcp"
    # RFC 5658: the top entry faces the callee (TCP), the next the caller (UDP)
    assert [unstamped(v) for v in req.headers.values("record-route")] == [
        "<sip:127.0.0.1:5060;transport=tcp;lr;r2=on>",
        "<sip:127.0.0.1:5060;lr;r2=on>",
    ]
    assert req.top_via.transport == "TCP"


def test_registered_flow_is_used_while_open():
    h = Harness()
    flow = Peer("tcp", "127.0.0.1", 40123)
    h.receive(
        "REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/TCP 127.0.0.1:6001;branch=z9hG4bK-r1\nMax-Forwards: 70\n"
        "To: <sip:bob@example.com>\nFrom: <sip:bob@example.com>;tag=r\nCall-ID: r1\nCSeq: 1 REGISTER\n"
        "Contact: <sip:bob@127.0.0.1:6001;transport=tcp>\nContent-Length: 0\n\n",
        flow,
        PROXY_TCP,
    )
    h.wire.take()
    h.wire.open_flows.add(flow)
    h.receive(invite(method="MESSAGE"))
    (_, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest == flow
    h.wire.open_flows.clear()
    h.receive(invite(method="MESSAGE", branch="z9hG4bK-caller-2", cseq=2))
    (_, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest == Peer("tcp", "127.0.0.1", 6001)


def test_path_is_pushed_as_route():
    h = Harness()
    h.register("bob", "sip:bob@10.0.0.5:6001", extra="Path: <sip:127.0.0.1:5080;lr>\nSupported: path\n")
    h.receive(invite(method="MESSAGE"))
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest == Peer("udp", "127.0.0.1", 5080)
    assert req.uri == "sip:bob@10.0.0.5:6001"
    assert req.headers.values("route") == ["<sip:127.0.0.1:5080;lr>"]


def test_loop_is_482_and_spiral_is_not():
    h = Harness("[routes]\nother.test = sip:127.0.0.1:5060\n")
    h.receive(invite(uri="sip:carol@other.test", method="MESSAGE"))
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest == Peer("udp", "127.0.0.1", 5060)  # the route points back at us
    h.receive(req, Peer("udp", "127.0.0.1", 5060))
    sent = h.wire.take()
    (final, _), = [(r, d) for r, d in h.sent_responses(sent) if r.status >= 200]
    assert final.status == 482


def test_unknown_user_404_and_foreign_domain_without_route_404():
    h = Harness()
    h.receive(invite(uri="sip:nobody@example.com"))
    assert statuses(h, h.wire.take())[-1] == 404
    h.receive(invite(uri="sip:x@nowhere.test", branch="z9hG4bK-2", call_id="c2"))
    (final, _), = [(r, d) for r, d in h.sent_responses(h.wire.take()) if r.status >= 200]
    assert final.status == 404 and "nowhere.test" in final.reason


def test_strict_router_request_is_fixed_up():
    h = Harness()
    # A strict router upstream put our Record-Route URI in the Request-URI
    # and the remote target at the end of the Route set (16.4).
    h.receive(invite(uri="sip:127.0.0.1:5060;lr", method="BYE", to_tag="b",
                     extra="Route: <sip:bob@127.0.0.1:6001>\n"))
    (req, dest), = h.sent_requests(h.wire.take(), "BYE")
    assert req.uri == "sip:bob@127.0.0.1:6001"
    assert "route" not in req.headers
    assert dest == Peer("udp", "127.0.0.1", 6001)


def test_in_dialog_request_follows_loose_route_and_drops_ours():
    h = Harness()
    h.receive(invite(uri="sip:bob@127.0.0.1:6001", method="BYE", to_tag="b",
                     extra="Route: <sip:127.0.0.1:5060;lr>\n"))
    (req, dest), = h.sent_requests(h.wire.take(), "BYE")
    assert "route" not in req.headers and dest.port == 6001
    assert "record-route" not in req.headers


def test_ack_for_2xx_is_forwarded_statelessly_along_the_route():
    h = Harness()
    h.receive(invite(uri="sip:bob@127.0.0.1:6001", method="ACK", to_tag="b",
                     extra="Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5090;lr>\n"))
    (req, dest), = h.sent_requests(h.wire.take(), "ACK")
    assert dest == Peer("udp", "127.0.0.1", 5090)
    assert req.headers.values("route") == ["<sip:127.0.0.1:5090;lr>"]
    assert req.max_forwards == 69 and len(req.vias) == 2


def test_stray_response_with_our_via_goes_by_the_next_via():
    h = Harness()
    raw = (
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsp00.gone\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-c;received=127.0.0.1;rport=5071\n"
        "To: <sip:bob@example.com>;tag=b\nFrom: <sip:alice@example.com>;tag=a\nCall-ID: x\nCSeq: 1 INVITE\n"
        "Content-Length: 0\n\n"
    )
    h.receive(raw, Peer("udp", "127.0.0.1", 6001))
    (resp, dest), = h.sent_responses(h.wire.take())
    assert dest == Peer("udp", "127.0.0.1", 5071) and len(resp.vias) == 1
    # not ours: dropped
    h.receive(raw.replace("127.0.0.1:5060", "127.0.0.1:5999"), Peer("udp", "127.0.0.1", 6001))
    assert h.wire.take() == []


def test_redirect_mode_answers_302_with_targets_and_escaped_path():
    h = Harness("mode = redirect\n")
    h.register("bob", "sip:bob@127.0.0.1:6001")
    h.register("carol", "sip:carol@10.0.0.7:6002", extra="Path: <sip:127.0.0.1:5080;lr>\n")
    h.receive(invite())
    sent = h.wire.take()
    (final, _), = [(r, d) for r, d in h.sent_responses(sent) if r.status >= 200]
    assert final.status == 302 and final.headers.values("contact") == ["<sip:bob@127.0.0.1:6001>"]
    assert h.sent_requests(sent) == []
    h.receive(invite(uri="sip:carol@example.com", branch="z9hG4bK-2", call_id="c2"))
    (final, _), = [(r, d) for r, d in h.sent_responses(h.wire.take()) if r.status >= 200]
    contact = final.headers.get("contact")
    assert contact.startswith("<sip:carol@10.0.0.7:6002?Route=")
    assert unquote(contact.split("?Route=", 1)[1].rstrip(">")) == "<sip:127.0.0.1:5080;lr>"


def test_register_for_a_foreign_domain_403_unless_routed():
    h = Harness("[routes]\nother.test = sip:127.0.0.1:5080\n")
    for domain, expect in (("nowhere.test", 403), ("other.test", None)):
        h.receive(
            f"REGISTER sip:{domain} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-r-{domain}\n"
            f"Max-Forwards: 70\nTo: <sip:u@{domain}>\nFrom: <sip:u@{domain}>;tag=r\nCall-ID: r-{domain}\n"
            f"CSeq: 1 REGISTER\nContact: <sip:u@127.0.0.1:6001>\nContent-Length: 0\n\n",
            Peer("udp", "127.0.0.1", 5099),
        )
        sent = h.wire.take()
        if expect:
            assert statuses(h, sent) == [expect]
        else:
            (req, dest), = h.sent_requests(sent, "REGISTER")
            assert dest == Peer("udp", "127.0.0.1", 5080)
            assert "record-route" not in req.headers


def _core_targets(h, targets):
    """Run a MESSAGE through the core with a fixed target set."""
    from sosimple_proxy.location.interfaces import Found

    h.proxy.location.providers.insert(0, type("Fixed", (), {"name": "fixed", "locate": lambda self, uri: Found(tuple(targets), "fixed")})())


def test_fallbacks_are_tried_in_turn_on_503_and_timeout_but_not_on_486():
    from sosimple_proxy.location.interfaces import Target
    from sosimple_proxy.sip.uri import parse_uri

    h = Harness()
    uri = parse_uri("sip:carol@other.test")
    second = Target(uri, dest="udp:127.0.0.1:7002")
    third = Target(uri, dest="udp:127.0.0.1:7003")
    _core_targets(h, [Target(uri, dest="udp:127.0.0.1:7001", fallbacks=(second, third))])
    h.receive(invite(uri="sip:carol@other.test", method="MESSAGE"))
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest.port == 7001 and req.uri == "sip:carol@other.test"
    h.answer(req, 503)
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest.port == 7002
    h.advance(33)  # Timer F: a timeout fails over too
    sent = h.wire.take()
    assert [d.port for _, d in h.sent_requests(sent, "MESSAGE")][-1] == 7003
    req = h.sent_requests(sent, "MESSAGE")[-1][0]
    h.answer(req, 486)
    sent = h.wire.take()
    assert h.sent_requests(sent, "MESSAGE") == [] and statuses(h, sent) == [486]


@implementer(IRetargeting)
class Retargeting:
    """A provider's retargeting, from a function."""

    def __init__(self, fn):
        self.target_failed = fn


def test_retarget_hook_adds_targets_after_a_failure():
    from twisted.internet.defer import Deferred

    from sosimple_proxy.location.interfaces import Target
    from sosimple_proxy.proxy.context import ResponseContext
    from sosimple_proxy.sip.uri import parse_uri

    from sosimple_proxy.proxy.chain import TAKEN

    h = Harness()
    h.core.chain.processors = [lambda job: TAKEN]  # a server transaction left to us
    h.receive(invite(method="MESSAGE"))
    h.wire.take()
    txn = next(iter(h.layer._server.values()))
    asked = []
    later: Deferred = Deferred()

    def retarget(target, response):
        asked.append((str(target.uri), response.status))
        return later

    ctx = ResponseContext(h.clock, h.core.forwarder, txn.request, txn, [Target(parse_uri("sip:bob@127.0.0.1:6001"))],
                          retarget=Retargeting(retarget))
    txn.data = None
    ctx.start()
    (req, _), = h.sent_requests(h.wire.take(), "MESSAGE")
    h.answer(req, 503)
    assert asked == [("sip:bob@127.0.0.1:6001", 503)]
    assert h.wire.take() == []  # waiting for the new lookup, nothing upstream yet
    later.callback([Target(parse_uri("sip:bob@127.0.0.1:6009"))])
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest.port == 6009
    h.answer(req, 200)
    assert 200 in statuses(h, h.wire.take())


def test_a_flow_token_in_our_route_sends_the_request_over_the_uas_connection():
    from sosimple_proxy.proxy import routing

    h = Harness()
    flow = Peer("tcp", "127.0.0.1", 40999)
    h.wire.open_flows.add(flow)
    token = routing.flow_token(str(flow))
    assert routing.flow_of(token) == "tcp:127.0.0.1:40999"
    # another proxy of the ring routes to alice's contact through us
    h.receive(invite(uri="sip:alice@127.0.0.1:9;transport=tcp", method="MESSAGE",
                     extra=f"Route: <sip:{token}@127.0.0.1:5060;lr>\n"))
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest == flow and "route" not in req.headers
    # the connection is gone: the contact itself is tried
    h.wire.open_flows.clear()
    h.receive(invite(uri="sip:alice@127.0.0.1:9;transport=tcp", method="MESSAGE", branch="z9hG4bK-2", call_id="c2",
                     extra=f"Route: <sip:{token}@127.0.0.1:5060;lr>\n"))
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert dest == Peer("tcp", "127.0.0.1", 9)
    # a user part that is no flow token is not ours: the request goes on to it
    h.receive(invite(uri="sip:alice@127.0.0.1:9", method="MESSAGE", branch="z9hG4bK-3", call_id="c3",
                     extra="Route: <sip:someone@127.0.0.1:5060;lr>\n"))
    (req, dest), = h.sent_requests(h.wire.take(), "MESSAGE")
    assert req.headers.values("route") == ["<sip:someone@127.0.0.1:5060;lr>"]


def test_self_route_names_the_flow_of_a_binding_registered_over_a_connection():
    from sosimple_proxy.location.bindings import Binding
    from sosimple_proxy.proxy import routing

    h = Harness()
    tcp = Binding("a@example.com", "sip:a@127.0.0.1:9", 1e9, "c", 1, received="tcp:127.0.0.1:40999")
    udp = Binding("a@example.com", "sip:a@127.0.0.1:9", 1e9, "c", 1, received="udp:127.0.0.1:40999")
    route = routing.self_route(h.wire.listening(), tcp)
    user = route[len("<sip:"):].split("@", 1)[0]
    assert routing.flow_of(user) == "tcp:127.0.0.1:40999" and route.endswith("@127.0.0.1:5060;lr>")
    assert routing.self_route(h.wire.listening(), udp) == "<sip:127.0.0.1:5060;lr>"


def test_publish_path_needed_leaves_out_only_bindings_reached_directly():
    """[overlay] publish_path = needed: a UA that registered over UDP from
    its Contact's own address and port goes into the ring without our
    Path; anything a proxy elsewhere could not reach as well keeps it."""
    from sosimple_proxy.location.bindings import Binding
    from sosimple_proxy.proxy import routing

    listening = Harness().wire.listening()

    def b(contact: str, received: str | None, **kw) -> Binding:
        return Binding("a@example.com", contact, 1e9, "c", 1, received=received, **kw)

    direct = [
        b("sip:a@127.0.0.1:5070", "udp:127.0.0.1:5070"),
        b("sip:a@127.0.0.1:5060", "udp:127.0.0.1:5060"),
        b("sip:a@127.0.0.1", "udp:127.0.0.1:5060"),  # no port: 5060
        b("sip:a@127.0.0.1:5070;transport=udp", "udp:127.0.0.1:5070"),
        b("sip:a@[::1]:5070", "udp:[::1]:5070"),
    ]
    indirect = [
        b("sip:a@127.0.0.1:5070", "udp:127.0.0.1:40999"),  # NAT: rport differs
        b("sip:a@10.0.0.5:5070", "udp:127.0.0.1:5070"),  # NAT: received differs
        b("sip:a@127.0.0.1:5070", "tcp:127.0.0.1:5070"),  # a connection
        b("sip:a@127.0.0.1:5070;transport=tcp", "udp:127.0.0.1:5070"),
        b("sips:a@127.0.0.1:5070", "udp:127.0.0.1:5070"),
        b("sip:a@phone.example.com:5070", "udp:127.0.0.1:5070"),  # a name, resolved elsewhere differently
        b("sip:a@127.0.0.1:5070;maddr=10.0.0.1", "udp:127.0.0.1:5070"),
        b("sip:a@127.0.0.1:5070", "udp:127.0.0.1:5070", path=("<sip:edge.example.com;lr>",)),  # an edge proxy
        b("sip:a@127.0.0.1:5070", "udp:127.0.0.1:5070", reg_id=1),  # an outbound flow (RFC 5626)
        b("sip:a@127.0.0.1:5070", None),
    ]
    ours = "<sip:127.0.0.1:5060;lr>"
    for binding in direct:
        assert routing.reached_directly(binding), binding
        assert routing.self_route(listening, binding, publish_path=routing.PATH_NEEDED) is None, binding
        assert routing.self_route(listening, binding) == ours  # the default: always
    for binding in indirect:
        assert not routing.reached_directly(binding), binding
        assert routing.self_route(listening, binding, publish_path=routing.PATH_NEEDED) is not None, binding


def test_a_fresh_lookup_that_finds_nobody_answers_404_not_the_dead_hops_timeout():
    from twisted.internet.defer import Deferred

    from sosimple_proxy.location.interfaces import Miss, Target
    from sosimple_proxy.proxy.context import ResponseContext
    from sosimple_proxy.sip.uri import parse_uri

    from sosimple_proxy.proxy.chain import TAKEN

    h = Harness()
    h.core.chain.processors = [lambda job: TAKEN]  # a server transaction left to us
    h.receive(invite(method="MESSAGE"))
    h.wire.take()
    txn = next(iter(h.layer._server.values()))
    later: Deferred = Deferred()
    ctx = ResponseContext(h.clock, h.core.forwarder, txn.request, txn, [Target(parse_uri("sip:bob@127.0.0.1:6001"))],
                          retarget=Retargeting(lambda target, response: later))
    ctx.start()
    h.wire.take()
    h.advance(33)  # the cached contact never answers: Timer F
    assert statuses(h, h.wire.take()) == []  # waiting for the fresh lookup
    later.callback(Miss("Not Found", "overlay"))
    (final, _), = h.sent_responses(h.wire.take())
    assert final.status == 404


def test_redirect_lists_a_targets_fallbacks_after_it_with_lower_q():
    from sosimple_proxy.location.interfaces import Target
    from sosimple_proxy.proxy.redirect import redirect_response
    from sosimple_proxy.sip.parser import parse_message
    from sosimple_proxy.sip.uri import parse_uri

    request = parse_message(invite().replace("\n", "\r\n").encode())
    gw = lambda host: Target(parse_uri(f"sip:+15551234567@{host};user=phone"))  # noqa: E731
    same = Target(parse_uri("sip:+15551234567@gw1.test;user=phone"), dest="udp:127.0.0.1:5090")
    first = Target(gw("gw1.test").uri, fallbacks=(gw("gw2.test"), same, gw("gw3.test")))
    response = redirect_response(request, [first])
    assert response.headers.values("contact") == [
        "<sip:+15551234567@gw1.test;user=phone>",
        "<sip:+15551234567@gw2.test;user=phone>;q=0.8",
        "<sip:+15551234567@gw3.test;user=phone>;q=0.4",
    ]
