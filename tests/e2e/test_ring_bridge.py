"""Two rings bridged by one proxy that is a member of both (paper III.C.3).

Ring A holds a.test, ring B holds b.test.  Proxy X is in both rings; PA only
in A, PB only in B, each with a static route for the other domain to X.
alice@a.test (at PA) reaches bob@b.test (at PB), and back.
"""

from __future__ import annotations

import uuid

from sosimple_proxy.testing import AnsweringUA, ProxyProcess, free_port, register_contact, send_message, wait_until


def test_a_user_of_ring_a_reaches_a_user_of_ring_b_through_the_bridge(tmp_path):
    a_x, a_pa, b_x, b_pb = (free_port("tcp") for _ in range(4))
    x_sip, pa_sip, pb_sip = (free_port("both") for _ in range(3))
    ring = {"stabilize_interval": "0.3"}
    x = ProxyProcess(
        {
            "proxy": {"domains": "a.test b.test"},
            "location": {"order": "local overlay overlay:b"},
            "overlay": {"listen": f"tcp:{a_x}:interface=127.0.0.1", "domains": "a.test", "state_dir": "ra", **ring},
            "overlay:b": {"listen": f"tcp:{b_x}:interface=127.0.0.1", "domains": "b.test", "state_dir": "rb", **ring},
        },
        port=x_sip,
        workdir=tmp_path / "x",
    )
    pa = ProxyProcess(
        {
            "proxy": {"domains": "a.test"},
            "location": {"order": "local overlay routes"},
            "routes": {"b.test": f"sip:127.0.0.1:{x_sip}"},
            # the test's peers on 127.0.0.1 are trusted: they may relay (the relay rule, issue 10)
            "auth": {"trusted": "127.0.0.1"},
            "overlay": {"listen": f"tcp:{a_pa}:interface=127.0.0.1", "bootstrap": f"127.0.0.1:{a_x}", "state_dir": "ra", **ring},
        },
        port=pa_sip,
        workdir=tmp_path / "pa",
    )
    pb = ProxyProcess(
        {
            "proxy": {"domains": "b.test"},
            "location": {"order": "local overlay routes"},
            "routes": {"a.test": f"sip:127.0.0.1:{x_sip}"},
            # the test's peers on 127.0.0.1 are trusted: they may relay (the relay rule, issue 10)
            "auth": {"trusted": "127.0.0.1"},
            "overlay": {"listen": f"tcp:{b_pb}:interface=127.0.0.1", "bootstrap": f"127.0.0.1:{b_x}", "state_dir": "rb", **ring},
        },
        port=pb_sip,
        workdir=tmp_path / "pb",
    )
    alice, bob = AnsweringUA(), AnsweringUA()
    try:
        x.start()
        pa.start()
        pb.start()
        assert register_contact(pa.port, "alice@a.test", f"sip:alice@127.0.0.1:{alice.port}") == "SIP/2.0 200 OK"
        assert register_contact(pb.port, "bob@b.test", f"sip:bob@127.0.0.1:{bob.port}") == "SIP/2.0 200 OK"
        hello = f"hello-{uuid.uuid4().hex[:6]}"
        wait_until(lambda: send_message(pa.port, "bob@b.test", "alice@a.test", hello) == "SIP/2.0 200 OK", 20, 0.3)
        assert bob.received(hello)
        back = f"back-{uuid.uuid4().hex[:6]}"
        wait_until(lambda: send_message(pb.port, "alice@a.test", "bob@b.test", back) == "SIP/2.0 200 OK", 20, 0.3)
        assert alice.received(back)
        # a user neither ring knows: an authoritative 404 from ring B, via the
        # bridge (a ring that has just formed may say 480 until its nodes
        # can vouch for their ranges; never 404 before)
        wait_until(lambda: send_message(pa.port, "nobody@b.test", "alice@a.test", "x") == "SIP/2.0 404 Not Found", 10, 0.3)
    finally:
        alice.close()
        bob.close()
        for p in (pb, pa, x):
            p.stop()
