"""An open ring of real ``twistd`` storage peers (issue 11, "Nodes", tofu).

Without a CA a node's id is derived from its public key, and members put a
node in their tables only after it signed a fresh challenge with that key.
A node that chose its place (``node_id``, with ``allow_chosen_ids`` on its
own side only) signs with its key, but its key does not give that id: its
connections are refused at their signed claim, so it cannot join, store or
look up; it is in no member's ``/ring``, each member that refused it says
why once, and the ring's records stay where they were.
"""

from __future__ import annotations

import time

from sosimple_proxy.overlay import ids
from tests.e2e.test_ca_ring_processes import Stranger, ring_addresses
from tests.e2e.test_overlay_processes import Api, wait_for
from sosimple_proxy.testing.ring import peer_ring

MEMBERS = 3
INTERVAL = 0.3
SETTINGS = {"stabilize_interval": INTERVAL, "replicas": 2, "successors": 4}


def refusals(p) -> list[str]:
    lines = p.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if "overlay: refused node" in line or "refused a ring connection" in line]


def test_an_open_ring_admits_proved_keys_and_keeps_a_chosen_id_out(tmp_path):
    with peer_ring(SETTINGS, tmp_path, MEMBERS) as members:
        apis = [Api(p.admin_url) for p in members]
        addresses = {p.overlay_address for p in members}
        views = lambda: [a.json("/ring") for a in apis]  # noqa: E731
        for p in members:
            assert "open ring: peers prove their keys" in p.log_path.read_text()
        wait_for(
            "the open ring settles",
            lambda: all(len(v["successors"]) >= MEMBERS - 1 and v["predecessor"] for v in views()),
            30,
            detail=lambda: views(),
        )
        for i in range(20):
            assert apis[0].call("PUT", f"/records/open-{i}?ttl=600", b"v%d" % i)[0] == 201

        # a node that places itself right after a member, to take its range
        target = min(int(v["id"], 16) for v in views())
        chosen = ids.format_id(target + 1)
        rogue = Stranger(
            bootstrap=[members[0].overlay_address],
            overlay=dict(SETTINGS, node_id=chosen, allow_chosen_ids="yes"),
            workdir=tmp_path / "rogue",
        )
        try:
            rogue.start()
            assert "allow_chosen_ids = yes" in rogue.log_path.read_text()  # warned loudly at its startup
            wait_for(
                "a member refuses the chosen id",
                lambda: any(refusals(p) for p in members),
                20,
                detail=lambda: [p.log_tail(5) for p in members],
            )
            time.sleep(10 * INTERVAL)  # it retries every round
            for view in views():
                seen = ring_addresses(view)
                assert seen <= addresses and rogue.overlay_address not in seen, view
            for p in members:
                lines = refusals(p)
                assert len(lines) <= 1, lines  # once per reason, not once per round
                assert all("not the one its public key gives" in line for line in lines), lines
            for api in apis[1:]:  # the ring's records are still served where they were
                assert api.call("GET", "/records/open-3") == (200, b"v3")
            mine = Api(rogue.admin_url)  # and the rogue cannot use the ring at all
            assert mine.call("GET", "/health")[0] == 503
            assert mine.call("PUT", "/records/mine", b"x")[0] == 503
            assert mine.call("GET", "/records/open-3")[0] == 503
        finally:
            rogue.cleanup()
