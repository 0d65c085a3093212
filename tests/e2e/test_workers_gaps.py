"""``[proxy] workers = 2`` (issue 12): what crosses workers besides the
basics of ``test_workers.py`` (real twistd processes on loopback).

- The ACK of a non-2xx final answer, sent from another socket than its
  INVITE (so, for half the calls, reaching the other worker), ends the
  INVITE transaction's retransmissions of that answer.
- ``[limits] max_connections`` is the proxy's cap, not each worker's.
- The parent's ``/metrics`` and ``GET /calls`` count every worker's
  transactions.
- REGISTERs for one AoR taken at once by both workers all stay bound.
- A worker's 200 to a REGISTER waits for the ring's write quorum: with
  the one other ring member stopped, the answer is 500 with Retry-After.
- Presence is served with workers: watchers subscribed through either
  worker hear of a registration and a publication taken by either; a
  killed worker's watchers are taken over at their next refresh.
"""

from __future__ import annotations

import re
import socket
import time

from sosimple_proxy.testing import sip_request

from tests.e2e.test_workers import DOMAIN, serving, worker_proxy

CALLS = 8


def _final(sock: socket.socket, deadline: float) -> str | None:
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got = sock.recv(65535).decode("utf-8", "replace")
        except socket.timeout:
            return None
        if got.startswith("SIP/2.0 ") and not got.startswith("SIP/2.0 1"):
            return got
    return None


def test_the_ack_of_a_non_2xx_answer_reaches_the_invites_worker(tmp_path):
    """RFC 3261 17.2.1: the ACK ends Timer G's retransmissions of the 404.
    Each caller sends its ACK from a fresh socket, which the kernel gives to
    either worker; the ACK goes round to the INVITE's.  Without that, a
    caller whose ACK reached the other worker would get the 404 again at
    0.5, 1.5 and 3.5 s (T1 = 0.5)."""
    with worker_proxy(tmp_path / "proxy") as proxy:
        serving(proxy)
        callers, acks = [], []
        try:
            for call in range(CALLS):
                a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                a.bind(("127.0.0.1", 0))
                lport = a.getsockname()[1]
                ruri = f"sip:nobody{call}@{DOMAIN}"
                invite = sip_request("INVITE", ruri, to=ruri, from_="sip:caller@example.com", via_port=lport,
                                     headers=(f"Contact: <sip:caller@127.0.0.1:{lport}>",))
                a.sendto(invite.encode(), ("127.0.0.1", proxy.port))
                callers.append((a, invite))
            for a, invite in callers:
                final = _final(a, time.monotonic() + 10)
                assert final is not None and final.startswith("SIP/2.0 404"), final
                to_line = re.search(r"(?m)^To: [^\r\n]*", final).group(0)  # type: ignore[union-attr]
                ack = re.sub(r"^INVITE ", "ACK ", invite).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
                ack = re.sub(r"(?m)^To: [^\r\n]*", lambda _m: to_line, ack)
                ack = re.sub(r"(?m)^Contact:.*\r\n", "", ack)
                b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                b.bind(("127.0.0.1", 0))
                b.sendto(ack.encode(), ("127.0.0.1", proxy.port))
                acks.append(b)
            # Timer G would resend at 0.5, 1.5 and 3.5 s after the first 404:
            # count what comes in 4 s (one may have been on its way)
            time.sleep(4.0)
            again = {}
            for i, (a, _) in enumerate(callers):  # what the sockets hold now
                n = 0
                while _final(a, time.monotonic() + 0.05) is not None:
                    n += 1
                again[i] = n
            assert all(n <= 1 for n in again.values()), again
        finally:
            for s in [a for a, _ in callers] + acks:
                s.close()


def test_max_connections_caps_the_whole_proxy_not_each_worker(tmp_path):
    """max_connections = 2 with two workers: each takes one (its share),
    so of 6 connections (spread by the kernel over both) at most 2 are
    served; each worker taking 2 would serve 3 or 4 unless all 6 landed on
    one worker (1 case in 32)."""
    from sosimple_proxy.testing import PeerProcess, free_port, options_request, sip_options_ping, wait_until

    port = free_port("both")
    proxy = PeerProcess(
        {
            "proxy": {"listen": f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}", "domains": DOMAIN, "workers": "2"},
            "location": {"order": "local"},
            "limits": {"allow": "127.0.0.1", "max_connections": "2"},
        },
        workdir=tmp_path / "proxy",
    )
    with proxy:
        wait_until(lambda: proxy.log_path.read_text().count("bindings from the parent; serving SIP") >= 2, 30,
                   what=lambda: proxy.log_tail(20))
        wait_until(lambda: sip_options_ping("127.0.0.1", port) is not None, 30, what="workers not serving SIP")
        conns = []
        try:
            for _ in range(6):
                c = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0))
                lport = c.getsockname()[1]
                c.sendall(options_request("127.0.0.1", port, "127.0.0.9", lport, "TCP"))
                conns.append(c)
            served = 0
            deadline = time.monotonic() + 3.0
            for c in conns:
                c.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    if c.recv(65535).startswith(b"SIP/2.0 200"):
                        served += 1
                except OSError:
                    pass
            assert 1 <= served <= 2, served
        finally:
            for c in conns:
                c.close()


def test_the_parents_metrics_and_calls_count_every_workers_transactions(tmp_path):
    import json
    import urllib.request

    from sosimple_proxy.testing import sip_options_ping, wait_until

    with worker_proxy(tmp_path / "proxy") as proxy:
        serving(proxy)
        answered = sum(1 for _ in range(12) if sip_options_ping("127.0.0.1", proxy.port) is not None)
        assert answered == 12

        def get(path: str) -> bytes:
            with urllib.request.urlopen(proxy.admin_url + path, timeout=5) as r:
                return r.read()

        def options_counted() -> float:
            m = re.search(r'(?m)^sosimple_sip_requests_total\{method="OPTIONS"\} (\S+)$', get("/metrics").decode())
            return float(m.group(1)) if m else 0.0

        # serving() pinged too: at least the 12 here, from both workers
        wait_until(lambda: options_counted() >= 12, 10, what="the parent's /metrics lacks the workers' OPTIONS")
        calls = json.loads(get("/calls"))
        assert calls["last_minute"]["by_method"]["OPTIONS"]["200"] >= 12, calls
        assert calls["top_sources"][0]["address"] == "127.0.0.1", calls
        assert calls["current"]["server_transactions"] is not None


def presence_proxy(tmp_path):
    from sosimple_proxy.testing import PeerProcess, free_port

    port = free_port("both")
    proxy = PeerProcess(
        {
            "proxy": {"listen": f"udp:127.0.0.1:{port}", "domains": DOMAIN, "workers": "2"},
            "location": {"order": "local overlay"},
            "auth": {"trusted": "127.0.0.1"},
            "limits": {"allow": "127.0.0.1"},
            "presence": {"min_expires": "1", "notify_interval": "0.2"},
        },
        overlay={"stabilize_interval": "0.5"},
        workdir=tmp_path / "proxy",
    )
    proxy.port = port
    return proxy


def watchers_at_both_workers(proxy, uas):
    """Each UA's subscription to bob, once both workers serve presence
    (the parent's node joined: 480 before); asserted spread over both."""
    from sosimple_proxy.testing import wait_until

    serving(proxy)
    wait_until(lambda: all(ua.subscribe(proxy.port, "nobody@example.com", expires=0).status == 200 for ua in uas),
               30, 0.3, what=lambda: proxy.log_tail(20))
    subs = [ua.subscribe(proxy.port, "bob@example.com") for ua in uas]
    assert [s.status for s in subs] == [200] * len(subs), [s.status for s in subs]
    log = proxy.log_path.read_text()
    by = {w for w in ("0", "1") if re.search(rf"worker {w}: .*subscribes to bob@example.com", log)}
    assert by == {"0", "1"}, "ten watchers all reached one worker"
    wait_until(lambda: all(s.basic == "closed" for s in subs), 10, 0.05, what="the first NOTIFYs")
    return subs


def test_watchers_at_both_workers_follow_a_presentity_registered_and_published_at_either(tmp_path):
    from sosimple_proxy.testing import register_contact, wait_until
    from sosimple_proxy.testing.presence_ua import PresenceUA, pidf_document

    proxy = presence_proxy(tmp_path)
    port = proxy.port
    uas = [PresenceUA() for _ in range(10)]  # ten sockets: spread over both workers
    try:
        with proxy:
            subs = watchers_at_both_workers(proxy, uas)
            with PresenceUA() as bob:
                answer = register_contact(port, "bob@example.com", f"sip:bob@127.0.0.1:{bob.port}")
                assert answer == "SIP/2.0 200 OK", answer
                wait_until(lambda: all(s.basic == "open" for s in subs), 10, 0.05,
                           what=lambda: [s.basic for s in subs])
                note = "at both workers"
                status, _etag = bob.publish(port, "bob@example.com", pidf_document("bob@example.com", "open", note))
                assert status == 200, status
                wait_until(lambda: all(note in (s.notifies[-1][1] if s.notifies else "") for s in subs), 10, 0.05,
                           what=lambda: [s.notifies[-1:] for s in subs])
    finally:
        for ua in uas:
            ua.close()


def test_a_workers_register_waits_for_the_rings_write_quorum(tmp_path):
    """Issue 12 + 15: the parent writes the ring; the worker's answer waits
    for its word.  The ring: the proxy's node and one storage peer, two
    copies wanted.  With the peer stopped (SIGSTOP: it holds its connection
    and answers nothing) the write cannot reach its quorum within
    write_timeout, and the phone is told 500 with Retry-After, never a 200
    for a binding one crash could lose."""
    import json
    import os
    import signal
    import urllib.request

    from sosimple_proxy.overlay.ids import DEFAULT_BITS, KeyScheme, in_half_open
    from sosimple_proxy.testing import PeerProcess, free_port, register_request, udp_final_response, wait_until

    ring = {"stabilize_interval": "0.5", "replicas": "1", "write_quorum": "2", "write_timeout": "1",
            "domain_writers": "any"}
    peer = PeerProcess(overlay=ring, workdir=tmp_path / "peer").start()
    try:
        port = free_port("both")
        proxy = PeerProcess(
            {
                "proxy": {"listen": f"udp:127.0.0.1:{port}", "domains": DOMAIN, "workers": "2"},
                "location": {"order": "local overlay"},
                "auth": {"trusted": "127.0.0.1"},
                "limits": {"allow": "127.0.0.1"},
            },
            bootstrap=[peer.overlay_address],
            overlay=ring,
            workdir=tmp_path / "proxy",
        )
        proxy.port = port
        with proxy:
            serving(proxy)

            def ring_view() -> dict:
                with urllib.request.urlopen(proxy.admin_url + "/ring", timeout=5) as r:
                    return json.loads(r.read())

            def two_members() -> bool:
                view = ring_view()
                return (bool(view.get("successors")) and view["successors"][0].get("address") != view.get("address")
                        and bool(view.get("predecessor")))

            wait_until(two_members, 30, 0.2, what=lambda: proxy.log_tail(20))
            # a user whose key the proxy's own node holds (the peer keeps the
            # copy): the lookup is local, so the write waits on the peer's copy
            # (a lookup through the stopped peer would route round it instead)
            view = ring_view()
            mine, pred = int(view["id"], 16), int(view["predecessor"]["id"], 16)
            keys = KeyScheme("flat", DEFAULT_BITS)
            during = next(f"during{n}" for n in range(100000)
                          if in_half_open(keys.key(f"during{n}@{DOMAIN}"), pred, mine))

            def register(user: str) -> str | None:
                return udp_final_response(port, lambda lport: register_request(
                    f"{user}@{DOMAIN}", f"sip:{user}@127.0.0.1:{lport}", via_port=lport), timeout=5)

            answer = register("before")
            assert answer is not None and answer.startswith("SIP/2.0 200"), answer
            os.kill(peer.process.pid, signal.SIGSTOP)
            try:
                answer = register(during)
            finally:
                os.kill(peer.process.pid, signal.SIGCONT)
            assert answer is not None and answer.startswith("SIP/2.0 500"), answer
            assert re.search(r"(?m)^Retry-After: 1\r?$", answer), answer
    finally:
        peer.stop()


def test_registers_for_one_aor_at_both_workers_at_once_all_stay(tmp_path):
    """Ten phones of one user register at the same moment, each from its own
    socket (so over both workers): every table ends with all ten (each
    worker's change crosses as a delta, merged binding by binding)."""
    from sosimple_proxy.testing import register_request, udp_final_response

    with worker_proxy(tmp_path / "proxy") as proxy:
        serving(proxy)
        phones = []
        try:
            for n in range(10):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind(("127.0.0.1", 0))
                phones.append(s)
            for n, s in enumerate(phones):  # all sent before any answer is read
                lport = s.getsockname()[1]
                s.sendto(register_request(f"many@{DOMAIN}", f"sip:phone{n}@127.0.0.1:{lport}",
                                          via_port=lport).encode(), ("127.0.0.1", proxy.port))
            for s in phones:
                final = _final(s, time.monotonic() + 10)
                assert final is not None and final.startswith("SIP/2.0 200"), final
        finally:
            for s in phones:
                s.close()
        wanted = {f"sip:phone{n}@" for n in range(10)}

        def bound() -> set[str]:
            answer = udp_final_response(proxy.port, lambda lport: register_request(f"many@{DOMAIN}", None,
                                                                                    via_port=lport))
            assert answer is not None and answer.startswith("SIP/2.0 200"), answer
            return set(re.findall(r"<(sip:phone\d+@)", answer))

        # A worker applies another's delta when it reads its line to the
        # parent: a query right after the last 200 may come a moment before
        # (the two sockets are read in either order), so each query may be
        # repeated; a lost binding would never come back.
        for _ in range(6):  # queries from fresh sockets: both workers answer some
            deadline = time.monotonic() + 5
            got = bound()
            while got != wanted and time.monotonic() < deadline:
                time.sleep(0.1)
                got = bound()
            assert got == wanted, sorted(wanted - got)


def test_a_killed_workers_watchers_are_taken_over_at_their_refresh(tmp_path):
    """A worker dies with its subscriptions; the parent restarts it; each
    watcher's next refresh (from its socket, so to the same worker index)
    takes its subscription over from the ring, and the watchers hear of bob
    again: nothing is lost but the NOTIFYs between the death and the refresh."""
    import os
    import signal

    from sosimple_proxy.testing import register_contact, wait_until
    from sosimple_proxy.testing.presence_ua import PresenceUA

    from tests.e2e.test_workers import worker_pids

    proxy = presence_proxy(tmp_path)
    uas = [PresenceUA() for _ in range(10)]
    try:
        with proxy:
            subs = watchers_at_both_workers(proxy, uas)
            before = worker_pids(proxy.process.pid)
            os.kill(sorted(before)[0], signal.SIGKILL)
            wait_until(lambda: len(worker_pids(proxy.process.pid) - before) == 1, 20, what="no worker restarted")
            wait_until(lambda: proxy.log_path.read_text().count("bindings from the parent; serving SIP") >= 3, 30,
                       what=lambda: proxy.log_tail(20))
            # the restarted worker serves presence once it knows the parent's writer
            wait_until(lambda: all(ua.subscribe(proxy.port, "nobody@example.com", expires=0).status == 200
                                   for ua in uas), 30, 0.3, what=lambda: proxy.log_tail(20))
            statuses = [ua.refresh(sub) for ua, sub in zip(uas, subs)]
            assert statuses == [200] * len(subs), statuses
            assert "taking over" in proxy.log_path.read_text()
            with PresenceUA() as bob:
                answer = register_contact(proxy.port, "bob@example.com", f"sip:bob@127.0.0.1:{bob.port}")
                assert answer == "SIP/2.0 200 OK", answer
                wait_until(lambda: all(s.basic == "open" for s in subs), 10, 0.05,
                           what=lambda: [s.basic for s in subs])
    finally:
        for ua in uas:
            ua.close()
