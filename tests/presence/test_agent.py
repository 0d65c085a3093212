"""The presence agent on a simulated ring (SimClock): dialogs, NOTIFY rules, PUBLISH.

The ring is real (Chord nodes on the simulated network); the agent's
NOTIFYs go to a recording sender instead of a SIP stack, and the test
answers them by hand (the e2e tests in tests/e2e/test_presence.py send
them for real).
"""

from __future__ import annotations

import pytest
from twisted.internet import defer

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.location import regrecord
from sosimple_proxy.overlay.ids import KeyScheme
from sosimple_proxy.overlay.records import Record, register_kind
from sosimple_proxy.presence import pidf
from sosimple_proxy.presence.agent import PresenceAgent, PresenceSettings, Sender
from sosimple_proxy.presence.ring import PresenceRing
from sosimple_proxy.sip.message import Response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.testing.ring import run_until_answered, sim_ring


class Member:
    """What the agent sees of an OverlayService: ``node`` and ``keys``."""

    def __init__(self, node, m: int) -> None:
        self.node = node
        self.keys = KeyScheme("flat", m)


class RecordingSender:
    """Keeps each NOTIFY with its transaction user, so the test answers it."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.sent: list[tuple[object, object, object]] = []
        self.answered: set[int] = set()

    def send(self, request, flow, user):
        self.sent.append((request, flow, user))
        self.times.append(self.clock.seconds())
        return defer.succeed(None)

    def contact(self, transport: str = "udp") -> str:
        return "<sip:192.0.2.1:5060>"

    def answer(self, index: int, status: int) -> None:
        request, _, user = self.sent[index]
        self.answered.add(index)
        user.responseReceived(Response(status, None), _Txn())

    def answer_all(self, status: int = 200) -> None:
        for i in range(len(self.sent)):
            if i not in self.answered:
                self.answer(i, status)

    def notifies(self):
        return [r for r, _, _ in self.sent]


class _Txn:
    failure = None


def subscribe(to="bob@example.com", frm="alice@example.com", expires=600, tag="a1", call_id="c1", cseq=1,
              event="presence", extra="", ruri=None):
    text = (
        f"SUBSCRIBE {ruri or 'sip:' + to} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.99:5070;branch=z9hG4bK-edge\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{frm}>;tag={tag}\r\n"
        f"To: <sip:{to}>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} SUBSCRIBE\r\n"
        "Contact: <sip:alice@192.0.2.7:5060>\r\n"
        "Record-Route: <sip:192.0.2.99:5070;lr>, <sip:192.0.2.98;lr>\r\n"
        f"Event: {event}\r\n"
        + (f"Expires: {expires}\r\n" if expires is not None else "")
        + extra
        + "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


def in_dialog(sub_response, expires=600, cseq=2, tag="a1", call_id="c1"):
    to_tag = sub_response.to.tag
    text = (
        "SUBSCRIBE sip:192.0.2.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-2\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag={tag}\r\n"
        f"To: <sip:bob@example.com>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} SUBSCRIBE\r\n"
        "Event: presence\r\n"
        f"Expires: {expires}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())


def publish(body: bytes = b"", etag: str | None = None, expires=600, ctype="application/pidf+xml", frm="bob@example.com"):
    headers = (
        "PUBLISH sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.8:5060;branch=z9hG4bK-p\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{frm}>;tag=p1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: p1\r\n"
        "CSeq: 1 PUBLISH\r\n"
        "Event: presence\r\n"
        f"Expires: {expires}\r\n"
        + (f"SIP-If-Match: {etag}\r\n" if etag else "")
        + (f"Content-Type: {ctype}\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return parse_message(headers.encode() + body)


DOC = pidf.derived("sip:bob@example.com", ["sip:bob@192.0.2.50"]).replace(b"<contact>", b"<note>desk</note><contact>")


@pytest.fixture
def setup():
    cluster = sim_ring(6, 11)
    node = cluster.joined()[0]
    sender = RecordingSender(cluster.clock)
    settings = PresenceSettings(min_expires=60, max_expires=3600, default_expires=1800, notify_interval=1.0)
    agent = PresenceAgent(
        PresenceRing(Member(node, cluster.config.m), cluster.clock),
        cluster.clock,
        Sender(sender.send, sender.contact),
        settings,
        is_ours=lambda uri: uri.host == "example.com",
        aor=lambda uri: f"{uri.user}@{uri.host}",
    )
    return cluster, agent, sender


def handle(cluster, agent, request, trusted=False, user=None, to_self=False):
    answer = agent.handle(request, None, trusted, user, to_self)
    return run_until_answered(cluster, answer)


def register_bob(cluster, contact="sip:bob@192.0.2.50", ttl=600.0):
    node = cluster.joined()[3]
    key = KeyScheme("flat", cluster.config.m).key("bob@example.com")
    value = regrecord.encode("bob@example.com", contact, 1.0, cluster.clock.seconds() + ttl, [], None)
    record = Record(key, regrecord.KIND, f"{node.writer}/{contact}", node.writer, value,
                    cluster.clock.seconds() + ttl, node.next_seq())
    cluster.wait(node.put(record))
    return record, node


def test_a_subscription_is_a_dialog_and_its_notify_follows_rfc_6665(setup):
    cluster, agent, sender = setup
    response = handle(cluster, agent, subscribe())
    assert response.status == 200
    assert response.headers.get("expires") == "600"
    assert response.headers.get("contact") == "<sip:192.0.2.1:5060>"
    our_tag = response.to.tag
    assert our_tag
    cluster.run(1)
    (notify,) = sender.notifies()
    # RFC 3261 12.1.1: the remote target is the Contact, the route set the Record-Route in order
    assert notify.method == "NOTIFY" and notify.uri == "sip:alice@192.0.2.7:5060"
    assert notify.headers.get_all("route") == ["<sip:192.0.2.99:5070;lr>", "<sip:192.0.2.98;lr>"]
    assert notify.from_.tag == our_tag and notify.to.tag == "a1"
    assert notify.call_id == "c1"
    assert notify.headers.get("event") == "presence"
    assert notify.headers.get("subscription-state").startswith("active;expires=")
    assert notify.headers.get("content-type") == "application/pidf+xml"
    assert pidf.basic(notify.body) == ["closed"]
    # bob registers somewhere in the ring: a NOTIFY within 2 s, its CSeq one higher
    sender.answer(0, 200)
    register_bob(cluster)
    cluster.clock.advance(2.0)
    assert len(sender.notifies()) == 2
    second = sender.notifies()[1]
    assert pidf.basic(second.body) == ["open"]
    assert second.cseq.seq == notify.cseq.seq + 1


def test_expires_bounds_and_refresh(setup):
    cluster, agent, sender = setup
    short = handle(cluster, agent, subscribe(expires=10))
    assert short.status == 423 and short.headers.get("min-expires") == "60"
    long = handle(cluster, agent, subscribe(expires=99999))
    assert long.status == 200 and long.headers.get("expires") == "3600"
    assert handle(cluster, agent, subscribe(expires=None, call_id="c2", tag="b")).headers.get("expires") == "1800"
    cluster.run(1)
    sender.answer_all()
    sent = len(sender.notifies())
    # a refresh: 200 and a NOTIFY (RFC 6665 4.2.1.2); a lower CSeq is 500
    refresh = handle(cluster, agent, in_dialog(long, expires=900), to_self=True)
    assert refresh.status == 200 and refresh.headers.get("expires") == "900"
    cluster.run(2)
    assert len(sender.notifies()) == sent + 1
    assert handle(cluster, agent, in_dialog(long, cseq=2), to_self=True).status == 500


def test_expiry_terminates_with_a_reason_and_the_dialog_is_gone(setup):
    cluster, agent, sender = setup
    response = handle(cluster, agent, subscribe(expires=60))
    cluster.run(61)
    last = sender.notifies()[-1]
    assert last.headers.get("subscription-state") == "terminated;reason=timeout"
    assert not agent.dialogs and not agent.presentities
    assert handle(cluster, agent, in_dialog(response), to_self=True).status == 481


def test_notify_interval_coalesces_changes_and_the_last_state_wins(setup):
    cluster, agent, sender = setup
    handle(cluster, agent, subscribe())
    cluster.run(1)
    sender.answer(0, 200)
    record, node = register_bob(cluster)
    cluster.wait(node.put(record.tombstone(seq=node.next_seq(record.seq), writer=node.writer)))
    for _ in range(40):
        cluster.clock.advance(0.1)
        sender.answer_all()
    times = sender.times
    bodies = [pidf.basic(n.body) for n in sender.notifies()]
    # closed, at most the open in between, and closed at the end
    assert bodies[0] == ["closed"] and bodies[-1] == ["closed"] and len(bodies) <= 3
    # never two NOTIFYs of one subscription closer than notify_interval (1 s)
    assert all(b - a >= 0.99 for a, b in zip(times, times[1:]))


def test_a_watcher_answering_481_loses_its_subscription(setup):
    cluster, agent, sender = setup
    handle(cluster, agent, subscribe())
    cluster.run(1)
    sender.answer(0, 481)  # RFC 6665 4.2.2: MUST remove
    assert not agent.dialogs
    register_bob(cluster)
    cluster.run(3)
    assert len(sender.notifies()) == 1


def test_shutdown_tells_every_watcher_deactivated(setup):
    cluster, agent, sender = setup
    handle(cluster, agent, subscribe())
    handle(cluster, agent, subscribe(call_id="c9", tag="z"))
    cluster.run(1)
    agent.stop()
    states = [n.headers.get("subscription-state") for n in sender.notifies()[-2:]]
    assert states == ["terminated;reason=deactivated"] * 2
    assert agent.handle(subscribe(call_id="c10"), None, False, None, False) is None


def test_unknown_events_to_the_proxy_are_489_and_to_users_proxied(setup):
    cluster, agent, sender = setup
    to_proxy = handle(cluster, agent, subscribe(event="dialog", ruri="sip:192.0.2.1:5060"), to_self=True)
    assert to_proxy.status == 489 and "presence" in to_proxy.headers.get("allow-events")
    assert agent.handle(subscribe(event="message-summary"), None, False, None, False) is None
    assert agent.handle(subscribe(to="bob@other.test"), None, False, None, False) is None


def test_policy_domain_and_list(setup):
    cluster, agent, sender = setup
    assert handle(cluster, agent, subscribe(frm="mallory@evil.test")).status == 403
    assert handle(cluster, agent, subscribe(frm="mallory@evil.test", call_id="t"), trusted=True).status == 200
    agent.settings = PresenceSettings(policy="list")
    assert handle(cluster, agent, subscribe(frm="carol@example.com", call_id="l1")).status == 403
    # bob's allow list in his /store (a userdata record named presence.allow)
    register_kind("userdata", dictionary=True)
    node = cluster.joined()[2]
    key = KeyScheme("flat", cluster.config.m).key("bob@example.com")
    cluster.wait(node.put(Record(key, "userdata", "presence.allow", node.writer, b"carol@example.com, dan@example.com",
                                 cluster.clock.seconds() + 1e6, node.next_seq())))
    assert handle(cluster, agent, subscribe(frm="carol@example.com", call_id="l2")).status == 200
    assert handle(cluster, agent, subscribe(frm="erin@example.com", call_id="l3")).status == 403


def test_publish_rules(setup):
    cluster, agent, sender = setup
    assert handle(cluster, agent, publish()).status == 400  # an initial PUBLISH needs a body
    assert handle(cluster, agent, publish(b"hello", ctype="text/plain")).status == 415
    assert handle(cluster, agent, publish(b"<not-pidf/>")).status == 400
    assert handle(cluster, agent, publish(DOC, expires=5)).status == 423
    assert handle(cluster, agent, publish(DOC, frm="eve@example.com")).status == 403
    ok = handle(cluster, agent, publish(DOC))
    assert ok.status == 200
    etag = ok.headers.get("sip-etag")
    assert etag and ok.headers.get("expires") == "600"
    assert handle(cluster, agent, publish(etag="nope")).status == 412
    # a watcher sees the published tuple rather than the registrations
    handle(cluster, agent, subscribe())
    cluster.run(1)
    assert b"<note>desk</note>" in sender.notifies()[-1].body
    # the publication expires: back to what registrations say (closed)
    cluster.run(600)
    assert b"desk" not in sender.notifies()[-1].body


def test_presence_config_values():
    cfg = parse_config("[presence]\npolicy = list\nnotify_interval = 2\n")
    assert cfg.section("presence")["policy"] == "list" and cfg.section("presence")["enabled"] is True
    with pytest.raises(ConfigError) as info:
        parse_config("[presence]\npolicy = friends\n")
    assert str(info.value).startswith("site.ini: [presence] policy: ")
    with pytest.raises(ConfigError) as info:
        parse_config("[presence]\nmin_expires = 600\nmax_expires = 60\n")
    assert str(info.value).startswith("site.ini: [presence] min_expires: ")


def test_with_digest_in_force_only_the_authenticated_presentity_publishes(setup):
    cluster, agent, sender = setup
    agent.authenticating = True
    # the From alone proves nothing once passwords are in force
    assert handle(cluster, agent, publish(DOC)).status == 403
    assert handle(cluster, agent, publish(DOC), user="alice").status == 403
    assert handle(cluster, agent, publish(DOC), user="bob").status == 200
    assert handle(cluster, agent, publish(DOC, frm="gw@example.com"), trusted=True).status == 200


def test_a_fetch_gets_the_state_in_one_terminated_notify(setup):
    cluster, agent, sender = setup
    register_bob(cluster)
    response = handle(cluster, agent, subscribe(expires=0))
    assert response.status == 200 and response.headers.get("expires") == "0"
    cluster.run(2)
    (notify,) = sender.notifies()
    assert notify.headers.get("subscription-state") == "terminated;reason=timeout"
    assert pidf.basic(notify.body) == ["open"]
    assert not agent.dialogs


def test_another_notifier_takes_a_stored_dialog_over_on_refresh(setup):
    cluster, agent, sender = setup
    response = handle(cluster, agent, subscribe())
    cluster.run(1)
    first = sender.notifies()[0]
    # a second proxy of the ring, whose agent never saw the dialog
    other_sender = RecordingSender(cluster.clock)
    other = PresenceAgent(
        PresenceRing(Member(cluster.joined()[4], cluster.config.m), cluster.clock),
        cluster.clock,
        Sender(other_sender.send, lambda transport="udp": "<sip:192.0.2.2:5060>"),
        agent.settings,
        is_ours=agent.is_ours,
        aor=agent.aor,
    )
    answer = handle(cluster, other, in_dialog(response), to_self=True)
    assert answer.status == 200
    assert answer.headers.get("contact") == "<sip:192.0.2.2:5060>"  # the watcher's requests come here now
    cluster.run(1)
    (notify,) = other_sender.notifies()
    assert notify.call_id == "c1" and notify.from_.tag == response.to.tag and notify.to.tag == "a1"
    assert notify.cseq.seq > first.cseq.seq
    # a dialog the ring does not hold: 481
    ghost = in_dialog(response, call_id="nope")
    assert handle(cluster, other, ghost, to_self=True).status == 481


def test_presence_winfo_lists_the_watchers_to_the_presentity_alone(setup):
    cluster, agent, sender = setup
    # bob watches who watches him (RFC 3857)
    mine = handle(cluster, agent, subscribe(frm="bob@example.com", event="presence.winfo", call_id="w1", tag="b1"))
    assert mine.status == 200
    cluster.run(1)
    (first,) = sender.notifies()
    assert first.headers.get("event") == "presence.winfo"
    assert first.headers.get("content-type") == "application/watcherinfo+xml"
    assert b'version="0"' in first.body and b"<watcher " not in first.body
    sender.answer_all()
    # alice subscribes to bob's presence: bob's winfo lists her, version 1
    handle(cluster, agent, subscribe(frm="alice@example.com", call_id="p1", tag="a9"))
    cluster.run(2)
    winfo_notifies = [n for n in sender.notifies() if n.headers.get("event") == "presence.winfo"]
    assert b'version="1"' in winfo_notifies[-1].body
    assert b"sip:alice@example.com</watcher>" in winfo_notifies[-1].body
    # nobody else sees bob's watchers
    assert handle(cluster, agent, subscribe(frm="alice@example.com", event="presence.winfo", call_id="w2")).status == 403
    # the proxy itself names both packages it serves
    to_proxy = handle(cluster, agent, subscribe(event="dialog", ruri="sip:192.0.2.1:5060"), to_self=True)
    assert to_proxy.headers.get("allow-events") == "presence, presence.winfo"
