"""Presence across the ring (issue 13), with real twistd proxies on loopback.

Three proxies form one ring; watchers subscribe at one proxy, presentities
register or publish at another, and the watcher's NOTIFYs follow within
2 seconds (polled, with a margin: no timing is asserted beyond the window).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from sosimple_proxy.overlay.ids import DEFAULT_BITS, KeyScheme, format_id
from sosimple_proxy.testing import ProxyProcess, free_port, register_contact, wait_until
from sosimple_proxy.testing.presence_ua import PresenceUA, pidf_document

RING = 2**DEFAULT_BITS
#: a change reaches the watcher within 2 s; polled with this margin
WINDOW = 2.0 + 1.0


def start_ring(count: int, tmp_path, node_ids=None, presence=None) -> list[ProxyProcess]:
    ports = [free_port("tcp") for _ in range(count)]
    procs: list[ProxyProcess] = []
    try:
        for i in range(count):
            overlay = {
                "listen": f"tcp:{ports[i]}:interface=127.0.0.1",
                "bootstrap": f"127.0.0.1:{ports[0]}" if i else "",
                "stabilize_interval": "0.5",
                "state_dir": "overlay",
            }
            if node_ids:
                overlay["node_id"] = format_id(node_ids[i])
            sections = {
                "proxy": {"domains": "example.com"},
                "location": {"order": "local overlay"},
                "overlay": overlay,
                "presence": {"min_expires": "1", "notify_interval": "0.2", **(presence or {})},
            }
            procs.append(ProxyProcess(sections, workdir=tmp_path / f"proxy{i}").start())
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
