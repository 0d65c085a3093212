"""Presence across the ring (issue 13), with real twistd proxies on loopback.

Three proxies form one ring; watchers subscribe at one proxy, presentities
register or publish at another, and the watcher's NOTIFYs follow within
2 seconds (polled, with a margin: no timing is asserted beyond the window).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import time

import pytest

from sosimple_proxy.overlay.ids import DEFAULT_BITS, KeyScheme, format_id
from sosimple_proxy.testing import (
    BARESIP,
    SIPP,
    AnsweringUA,
    Baresip,
    ProxyProcess,
    free_port,
    register_contact,
    run_sipp,
    send_message,
    wait_until,
)
from sosimple_proxy.testing.presence_ua import PresenceUA, pidf_document

RING = 2**DEFAULT_BITS
#: a change reaches the watcher within 2 s; polled with this margin
WINDOW = 2.0 + 1.0


def start_ring(count: int, tmp_path, node_ids=None, presence=None, extra=None, ready=(200,)) -> list[ProxyProcess]:
    ports = [free_port("tcp") for _ in range(count)]
    procs: list[ProxyProcess] = []
    try:
        for i in range(count):
            overlay = {
                "listen": f"tcp:{ports[i]}:interface=127.0.0.1",
                "bootstrap": f"127.0.0.1:{ports[0]}" if i else "",
                "stabilize_interval": "0.5",
                "state_dir": "overlay",
                # three proxies of one organisation in an open test ring
                "domain_writers": "any",
            }
            if node_ids:
                overlay["node_id"] = format_id(node_ids[i])
                overlay["allow_chosen_ids"] = "yes"
            sections = {
                "proxy": {"domains": "example.com"},
                "location": {"order": "local overlay"},
                "overlay": overlay,
                "presence": {"min_expires": "1", "notify_interval": "0.2", **(presence or {})},
                **(extra or {}),
            }
            procs.append(ProxyProcess(sections, workdir=tmp_path / f"proxy{i}").start())
        # every proxy has joined the ring: a fetch (Expires: 0) is answered 200, not 480
        with PresenceUA() as ua:
            for p in procs:
                wait_until(lambda: ua.subscribe(p.port, "nobody@example.com", expires=0).status in ready, 20, 0.2,
                           what="the proxy joined the ring")
    except Exception:
        for p in procs:
            p.stop()
        raise
    return procs


@pytest.fixture
def ring3(tmp_path):
    procs = start_ring(3, tmp_path)
    yield procs
    for p in procs:
        p.stop()


def kill(p: ProxyProcess) -> None:
    os.kill(p.process.pid, signal.SIGKILL)
    p.process.wait(10)


def test_registration_at_another_proxy_turns_the_watcher_open_then_closed(ring3):
    p1, _, p3 = ring3
    with PresenceUA() as ua, PresenceUA() as bob_phone:
        sub = ua.subscribe(p1.port, "bob@example.com")
        assert sub.status == 200, sub
        assert sub.expires == 600
        wait_until(lambda: sub.basic == "closed", 10, 0.05, what="the first NOTIFY: bob is not registered")
        assert sub.last_state.startswith("active")
        assert register_contact(p3.port, "bob@example.com", f"sip:bob@127.0.0.1:{bob_phone.port}") == "SIP/2.0 200 OK"
        wait_until(lambda: sub.basic == "open", WINDOW, 0.05, what="open after bob registered at proxy 3")
        assert register_contact(p3.port, "bob@example.com", f"sip:bob@127.0.0.1:{bob_phone.port}", expires=0) == "SIP/2.0 200 OK"
        wait_until(lambda: sub.basic == "closed", WINDOW, 0.05, what="closed after bob de-registered")


def _sipp_publish_then_subscribe(note: str) -> str:
    """sipp as bob's phone publishes a PIDF, then as a watcher subscribes to bob:
    the NOTIFY that follows must carry the published note."""
    doc = pidf_document("bob@example.com", "open", note).strip()
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PUBLISH then SUBSCRIBE">
  <send retrans="500">
    <![CDATA[
PUBLISH sip:bob@example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: 70
From: <sip:bob@example.com>;tag=[pid]SIPpTag00[call_number]
To: <sip:bob@example.com>
Call-ID: [call_id]
CSeq: 1 PUBLISH
Event: presence
Expires: 600
Content-Type: application/pidf+xml
Content-Length: [len]

{doc}
    ]]>
  </send>
  <recv response="200">
    <action><ereg regexp="SIP-ETag: *[^ ]+" search_in="msg" check_it="true" assign_to="etag"/></action>
  </recv>
  <send retrans="500">
    <![CDATA[
SUBSCRIBE sip:bob@example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: 70
From: <sip:carol@example.com>;tag=[pid]SIPpTag01[call_number]
To: <sip:bob@example.com>
Call-ID: [call_id]
CSeq: 2 SUBSCRIBE
Contact: <sip:carol@[local_ip]:[local_port]>
Event: presence
Accept: application/pidf+xml
Expires: 600
Content-Length: 0

    ]]>
  </send>
  <recv response="200" rrs="true"/>
  <recv request="NOTIFY">
    <action><ereg regexp="{note}" search_in="body" check_it="true" assign_to="note"/></action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <Reference variables="etag,note"/>
</scenario>
"""


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")
def test_sipp_publish_then_subscribe_gets_the_published_pidf(ring3):
    p1, p2, _ = ring3
    note = f"sipp-note-{secrets.token_hex(4)}"
    result = run_sipp(_sipp_publish_then_subscribe(note), f"127.0.0.1:{p2.port}", calls=1, timeout=20, local_port=0)
    assert result.ok, result
    # the same document reaches a watcher at another proxy, and the
    # registration-derived state does not hide it (bob registered nowhere)
    with PresenceUA() as ua:
        sub = ua.subscribe(p1.port, "bob@example.com")
        assert sub.status == 200
        wait_until(lambda: any(note in body for _, body in sub.notifies), WINDOW, 0.05, what="the published note")
        assert sub.basic == "open"


def test_publish_refresh_modify_remove_and_an_unknown_etag(ring3):
    p1, p2, p3 = ring3
    with PresenceUA() as ua:
        sub = ua.subscribe(p1.port, "dave@example.com")
        wait_until(lambda: sub.basic == "closed", 10, 0.05)
        status, etag = ua.publish(p2.port, "dave@example.com", pidf_document("dave@example.com", "open", "at-desk"))
        assert status == 200 and etag
        wait_until(lambda: "at-desk" in (sub.notifies[-1][1] if sub.notifies else ""), WINDOW, 0.05)
        # a second device publishes too: both tuples in one document
        status2, etag2 = ua.publish(p3.port, "dave@example.com", pidf_document("dave@example.com", "open", "on-phone"))
        assert status2 == 200
        wait_until(lambda: "on-phone" in sub.notifies[-1][1] and "at-desk" in sub.notifies[-1][1], WINDOW, 0.05)
        # a refresh (no body) gets a new entity-tag; the old one is gone
        status, refreshed = ua.publish(p2.port, "dave@example.com", etag=etag)
        assert status == 200 and refreshed and refreshed != etag
        assert ua.publish(p2.port, "dave@example.com", etag=etag)[0] == 412
        # modify, then remove
        status, etag = ua.publish(
            p2.port, "dave@example.com", pidf_document("dave@example.com", "closed", "gone-home"), etag=refreshed
        )
        assert status == 200
        wait_until(lambda: "gone-home" in sub.notifies[-1][1], WINDOW, 0.05)
        assert ua.publish(p1.port, "dave@example.com", etag=etag, expires=0)[0] == 200
        assert ua.publish(p1.port, "dave@example.com", etag=etag2, expires=0)[0] == 200
        # nothing published, nothing registered: closed, from the registrations
        wait_until(lambda: "gone-home" not in sub.notifies[-1][1] and sub.basic == "closed", WINDOW, 0.05)
        # only the presentity publishes its presence
        assert ua.publish(p1.port, "dave@example.com", pidf_document("dave@example.com"), publisher="eve@example.com")[0] == 403


def test_subscribe_answers_expires_bounds_unknown_events_and_unknown_dialogs(ring3):
    p1, _, _ = ring3
    with PresenceUA() as ua:
        short = ua.subscribe(p1.port, "bob@example.com", expires=0)  # a fetch: one NOTIFY, terminated
        assert short.status == 200
        wait_until(lambda: short.notifies, 10, 0.05)
        assert short.notifies[0][0].startswith("terminated")
        # an event package we do not serve, addressed to the proxy itself: 489
        bad = ua.subscribe(p1.port, "bob@example.com", event="no-such-package", ruri=f"sip:127.0.0.1:{p1.port}")
        assert bad.status == 489
        # other event packages are proxied to the phones, as before
        with AnsweringUA() as henry:
            assert register_contact(p1.port, "henry@example.com", f"sip:henry@127.0.0.1:{henry.port}") == "SIP/2.0 200 OK"
            dialog = ua.subscribe(p1.port, "henry@example.com", event="dialog")
            assert dialog.status == 200
            assert henry.received("Event: dialog")
        # a refresh of a dialog the proxy does not hold: 481
        ghost = ua.subscribe(p1.port, "bob@example.com", expires=600)
        assert ghost.status == 200
        ghost.to_tag = "not-ours"
        assert ua.refresh(ghost) == 481
        # unsubscribing ends it with a last NOTIFY
        sub = ua.subscribe(p1.port, "bob@example.com")
        wait_until(lambda: sub.notifies, 10, 0.05)
        assert ua.refresh(sub, expires=0) == 200
        wait_until(lambda: sub.last_state.startswith("terminated"), 10, 0.05)
        # a notifier that stops tells its watchers so (RFC 6665 4.2.2: they may subscribe again at once)
        kept = ua.subscribe(p1.port, "bob@example.com")
        wait_until(lambda: kept.notifies, 10, 0.05)
        p1.stop()
        wait_until(lambda: kept.last_state == "terminated;reason=deactivated", 5, 0.05)


def test_200_watchers_through_three_proxies_all_get_the_change_and_a_refusing_watcher_is_dropped(ring3):
    with PresenceUA() as ua, PresenceUA(notify_status=481) as refuser, PresenceUA() as phone:
        subs = [ua.subscribe(ring3[i % 3].port, "frank@example.com", watcher=f"w{i}@example.com") for i in range(200)]
        assert all(s.status == 200 for s in subs), [s.status for s in subs if s.status != 200][:5]
        wait_until(lambda: all(s.basic == "closed" for s in subs), 30, 0.1, what="every first NOTIFY")
        refused = refuser.subscribe(ring3[1].port, "frank@example.com", watcher="nosy@example.com")
        assert refused.status == 200
        wait_until(lambda: refused.received >= 1, 10, 0.05, what="the NOTIFY the watcher refuses")
        assert register_contact(ring3[2].port, "frank@example.com", f"sip:frank@127.0.0.1:{phone.port}") == "SIP/2.0 200 OK"
        wait_until(
            lambda: all(s.basic == "open" for s in subs),
            30,
            0.1,
            what=lambda: f"{sum(s.basic == 'open' for s in subs)}/200 watchers saw frank open",
        )
        # the refusing watcher lost its subscription: no NOTIFY for the change, and its refresh is unknown
        assert refused.received == 1
        assert refuser.refresh(refused) == 481


def test_the_ring_node_holding_bobs_records_dies_and_presence_carries_on(tmp_path):
    key = KeyScheme("flat", DEFAULT_BITS).key("bob@example.com")
    # the second proxy is responsible for bob's key; the others come after it
    ids = [(key - 2**150) % RING, key, (key + 2**150) % RING, (key + 2**151) % RING]
    procs = start_ring(4, tmp_path, node_ids=ids)
    watcher_proxy, holder, publisher_proxy, other = procs
    try:
        with PresenceUA() as ua:
            status, etag = ua.publish(publisher_proxy.port, "bob@example.com", pidf_document("bob@example.com", "open", "before"))
            assert status == 200
            sub = ua.subscribe(watcher_proxy.port, "bob@example.com")
            wait_until(lambda: sub.notifies and "before" in sub.notifies[-1][1], WINDOW, 0.05)
            kill(holder)
            # a new SUBSCRIBE through another proxy still gets bob's state (the replicas)
            fresh = ua.subscribe(other.port, "bob@example.com")
            assert fresh.status == 200
            wait_until(lambda: fresh.notifies and "before" in fresh.notifies[-1][1], 15, 0.05)
            # the existing subscription keeps getting NOTIFYs
            status, etag = ua.publish(
                publisher_proxy.port, "bob@example.com", pidf_document("bob@example.com", "open", "after"), etag=etag
            )
            assert status == 200
            wait_until(lambda: "after" in sub.notifies[-1][1], 15, 0.05, what="the old subscription hears the change")
            wait_until(lambda: "after" in fresh.notifies[-1][1], 15, 0.05, what="the new subscription hears the change")
            # the notifier itself dies (README, "Presence": when a notifier dies):
            # the watcher's refresh to it gets no answer ...
            kill(watcher_proxy)
            assert ua.refresh(sub, timeout=3) is None
            # ... the refresh sent to another proxy of the ring (as when the
            # notifier's name now leads there) takes the dialog over from the ring ...
            heard = len(sub.notifies)
            assert ua.refresh(sub, target=f"sip:127.0.0.1:{other.port}") == 200
            assert sub.target == f"sip:127.0.0.1:{other.port}"  # its Contact: the new notifier
            wait_until(lambda: len(sub.notifies) > heard and "after" in sub.notifies[-1][1], 10, 0.05)
            status, etag = ua.publish(
                publisher_proxy.port, "bob@example.com", pidf_document("bob@example.com", "open", "later"), etag=etag
            )
            assert status == 200
            wait_until(lambda: "later" in sub.notifies[-1][1], WINDOW, 0.05, what="the taken-over dialog hears the change")
            # ... and a refresh of a dialog the ring does not hold is 481: the
            # watcher subscribes anew through a proxy that runs, and gets the state at once
            lost = ua.subscribe(publisher_proxy.port, "bob@example.com")
            lost.call_id += "-unknown"
            assert ua.refresh(lost, target=f"sip:127.0.0.1:{other.port}") == 481
            again = ua.subscribe(other.port, "bob@example.com")
            assert again.status == 200
            wait_until(lambda: again.notifies and "later" in again.notifies[-1][1], 15, 0.05)
    finally:
        for p in procs:
            p.stop()


def _baresip_status(phone, contact: str) -> str:
    """Online/Offline/Unknown, as baresip's presence module shows a contact."""
    data = re.sub(r"\x1b\[[0-9;]*m", "", phone.command("contacts")["data"])
    line = next((line for line in data.splitlines() if contact in line), "")
    words = line.replace(">", " ").split()
    return words[0] if words else ""


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (Debian package baresip)")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_watches_bob_who_registers_at_another_proxy(ring3, transport):
    # over TCP the NOTIFYs go back over alice's own connection
    p1, _, p3 = ring3
    with Baresip(
        "alice",
        p1.port,
        transport=transport,
        contacts=['"Bob" <sip:bob@example.com>;presence=p2p'],
        extra_config=["module_app presence.so"],
    ) as alice:
        # alice's presence module subscribes through proxy 1: bob is not registered
        wait_until(lambda: alice.received("NOTIFY"), 15, 0.1, what="the first NOTIFY to baresip")
        assert _baresip_status(alice, "sip:bob@example.com") == "Offline"
        bob = Baresip("bob", p3.port).start()
        try:
            wait_until(lambda: _baresip_status(alice, "sip:bob@example.com") == "Online", WINDOW, 0.1,
                       what="baresip shows bob online")
        finally:
            bob.stop()  # baresip unregisters on quit
        wait_until(lambda: _baresip_status(alice, "sip:bob@example.com") == "Offline", WINDOW, 0.1,
                   what="baresip shows bob offline")


def test_a_callers_contact_cache_follows_a_move_to_another_proxy_within_the_window(ring3):
    """Before watch(key) the caller's proxy kept its cached contact for 5
    minutes; now a re-registration elsewhere reaches its cache at once."""
    p1, p2, p3 = ring3
    with AnsweringUA() as old_phone, AnsweringUA() as new_phone:
        assert register_contact(p1.port, "gina@example.com", f"sip:gina@127.0.0.1:{old_phone.port}") == "SIP/2.0 200 OK"
        wait_until(lambda: send_message(p2.port, "gina@example.com", "carol@example.com", "first") == "SIP/2.0 200 OK", 10, 0.2)
        assert old_phone.received("first")  # proxy 2 has gina's contact cached now
        # gina's phone moves: off proxy 1, on at proxy 3 with a new contact
        assert register_contact(p1.port, "gina@example.com", f"sip:gina@127.0.0.1:{old_phone.port}", expires=0) == "SIP/2.0 200 OK"
        assert register_contact(p3.port, "gina@example.com", f"sip:gina@127.0.0.1:{new_phone.port}") == "SIP/2.0 200 OK"
        deadline = time.monotonic() + WINDOW
        n = 0
        while time.monotonic() < deadline and not new_phone.received("moved-"):
            n += 1
            send_message(p2.port, "gina@example.com", "carol@example.com", f"moved-{n}", timeout=1.0)
            time.sleep(0.1)
        assert new_phone.received("moved-"), "proxy 2 still sends gina's messages to her old contact"


def test_the_edges_digest_rules_apply_to_subscribe_and_publish(tmp_path):
    from sosimple_proxy.security.users import UserEntry

    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("bob", "example.com", "hunter2").line() + "\n")
    users.chmod(0o600)
    (proxy,) = start_ring(1, tmp_path, extra={"auth": {"users_file": str(users), "algorithms": "MD5"}}, ready=(407,))
    try:
        with PresenceUA() as ua:
            # our users are challenged like for any request
            assert ua.subscribe(proxy.port, "bob@example.com", watcher="alice@example.com").status == 407
            assert ua.publish(proxy.port, "bob@example.com", pidf_document("bob@example.com"))[0] == 407
            # a stranger is not challenged, and the domain policy refuses it
            assert ua.subscribe(proxy.port, "bob@example.com", watcher="carol@other.test").status == 403
    finally:
        proxy.stop()


def test_a_user_sees_who_watches_them_across_the_ring(ring3):
    p1, _, p3 = ring3
    with PresenceUA() as ua:
        mine = ua.subscribe(p1.port, "ivy@example.com", watcher="ivy@example.com", event="presence.winfo")
        assert mine.status == 200
        wait_until(lambda: mine.notifies, 10, 0.05)
        assert "<watcher " not in mine.notifies[-1][1]
        # jack watches ivy through another proxy: ivy's watcher information lists him
        assert ua.subscribe(p3.port, "ivy@example.com", watcher="jack@example.com").status == 200
        wait_until(lambda: "sip:jack@example.com</watcher>" in mine.notifies[-1][1], WINDOW, 0.05)
        # only ivy may ask
        assert ua.subscribe(p1.port, "ivy@example.com", watcher="jack@example.com", event="presence.winfo").status == 403
