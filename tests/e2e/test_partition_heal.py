"""A partition heals into one ring (issue 15), with real twistd members on
loopback and a real cut between two groups of them.

Six storage peers, three in each of two cgroups; nftables rules (the
``socket cgroupv2`` match) refuse the ring traffic from one group's sockets
to the other group's ring ports, both ways, with a TCP reset (a dropped
packet would leave the ring's pooled connections open, and their
retransmissions, delivered on the heal, would reconnect the rings by
chance): a partition of the processes, not of the addresses (they all
share 127.0.0.1).  Without the rejoin probes the two rings stay apart
(tried: still two rings 20 s after the heal).  Each half stabilizes into a
ring of its own and serves writes; the rules go, and the rejoin probes
(overlay/rejoin.py) merge the two rings.  Every record, written before, on
one side, or on both (the later write wins), is read back from every
member.  Needs root, nft and a cgroup2 mount (skipped otherwise); the rules
and cgroups are the test's own and removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from sosimple_proxy.testing import PeerProcess, wait_until

OVERLAY = {"stabilize_interval": "0.3", "replicas": "2"}
HEAL_WITHIN = 60.0  # seconds: a bound for the test, the figure is printed


def cgroup2_root() -> Path | None:
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if parts[2] == "cgroup2":
                    return Path(parts[1])
    except OSError:
        pass
    return None


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (nftables rules and cgroups)"
    if shutil.which("nft") is None:
        return "needs nft"
    root = cgroup2_root()
    if root is None or not str(root).startswith("/sys/fs/cgroup"):
        return "needs a cgroup2 mount under /sys/fs/cgroup (nft resolves socket cgroupv2 paths there)"
    return None


pytestmark = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")


class Cut:
    """Two cgroups and the nftables table that cuts them apart."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.table = f"sosimple_cut_{tag}"
        root = cgroup2_root()
        assert root is not None
        self.groups = {side: root / f"sosimple-cut-{tag}-{side}" for side in "ab"}
        for path in self.groups.values():
            path.mkdir()

    def nft_path(self, side: str) -> str:
        return str(self.groups[side].relative_to("/sys/fs/cgroup"))

    def command(self, side: str) -> list[str]:
        """twistd, started inside the side's cgroup (its sockets belong to it)."""
        procs = self.groups[side] / "cgroup.procs"
        return [
            "sh",
            "-c",
            f'echo $$ > {procs} && exec "$0" "$@"',
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "-l",
            "{log}",
            "sosimple-proxy",
            "-c",
            "{ini}",
        ]

    def partition(self, ports: dict[str, list[int]]) -> None:
        rules = [
            f"add table inet {self.table}",
            f"add chain inet {self.table} out {{ type filter hook output priority 0; policy accept; }}",
        ]
        for side, other in (("a", "b"), ("b", "a")):
            dports = ", ".join(str(p) for p in ports[other])
            rules.append(
                f'add rule inet {self.table} out socket cgroupv2 level 1 "{self.nft_path(side)}" '
                f"tcp dport {{ {dports} }} reject with tcp reset"
            )
        subprocess.run(["nft", "-f", "-"], input="\n".join(rules) + "\n", text=True, check=True)

    def heal(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)

    def remove(self) -> None:
        self.heal()
        for path in self.groups.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def put(peer: PeerProcess, name: str, value: bytes) -> None:
    req = urllib.request.Request(f"{peer.admin_url}/records/{name}?ttl=3600", data=value, method="PUT")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201


def read(peer: PeerProcess, name: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"{peer.admin_url}/records/{name}", timeout=5) as r:
            return r.read()
    except (OSError, urllib.error.HTTPError):
        return None


def one_ring(peers: list[PeerProcess]) -> bool:
    """Every member has its true successor and predecessor among ``peers``."""
    views = [get_json(f"{p.admin_url}/ring") for p in peers]
    if any(v is None for v in views):
        return False
    order = sorted(views, key=lambda v: int(v["id"], 16))
    for i, v in enumerate(order):
        succ, pred = order[(i + 1) % len(order)], order[i - 1]
        if not v["successors"] or v["successors"][0]["id"] != succ["id"]:
            return False
        if (v.get("predecessor") or {}).get("id") != pred["id"]:
            return False
    return True


def forgot(side: list[PeerProcess], others: set[str]) -> bool:
    """No member of ``side`` has any of ``others`` in its tables."""
    for p in side:
        v = get_json(f"{p.admin_url}/ring")
        if v is None:
            return False
        known = [v.get("predecessor") or {}, *v["successors"], *v["fingers"]]
        if any(k.get("id") in others for k in known):
            return False
    return True


def test_two_rings_cut_apart_merge_into_one_after_the_cut_heals(tmp_path):
    cut = Cut()
    peers: list[PeerProcess] = []
    try:
        first = PeerProcess(overlay=OVERLAY, workdir=tmp_path / "a0", command=cut.command("a")).start()
        peers.append(first)
        for i, side in enumerate("aabbb", start=1):
            peers.append(
                PeerProcess(
                    bootstrap=[first.overlay_address],
                    overlay=OVERLAY,
                    workdir=tmp_path / f"{side}{i}",
                    command=cut.command(side),
                ).start()
            )
        a, b = peers[:3], peers[3:]
        wait_until(lambda: one_ring(peers), 60, 0.3, "one ring of six")
        before = {f"before-{n}": b"before" for n in range(12)}
        for n, (name, value) in enumerate(before.items()):
            put(peers[n % 6], name, value)

        cut.partition({"a": [p.overlay_port for p in a], "b": [p.overlay_port for p in b]})
        wait_until(lambda: one_ring(a) and one_ring(b), 60, 0.3, "a ring on each side of the cut")
        # each side serves writes on its own
        only_a = {f"before-{n}": b"a" for n in range(0, 4)} | {f"new-a-{n}": b"new-a" for n in range(3)}
        only_b = {f"before-{n}": b"b" for n in range(4, 8)} | {f"new-b-{n}": b"new-b" for n in range(3)}
        for n, (name, value) in enumerate(only_a.items()):
            put(a[n % 3], name, value)
        for n, (name, value) in enumerate(only_b.items()):
            put(b[n % 3], name, value)
        # both sides write the same records; B's writes are the later ones
        for n in range(8, 12):
            put(a[n % 3], f"before-{n}", b"a-older")
        time.sleep(0.01)
        for n in range(8, 12):
            put(b[n % 3], f"before-{n}", b"b-newer")
        # a long partition: each side forgets the other altogether
        ids_a = {get_json(f"{p.admin_url}/ring")["id"] for p in a}
        ids_b = {get_json(f"{p.admin_url}/ring")["id"] for p in b}
        wait_until(lambda: forgot(a, ids_b) and forgot(b, ids_a), 60, 0.3, "each side forgets the other")

        cut.heal()
        t0 = time.monotonic()
        wait_until(lambda: one_ring(peers), HEAL_WITHIN, 0.2, "one ring again after the heal")
        healed = time.monotonic() - t0
        want = dict(before) | only_a | only_b | {f"before-{n}": b"b-newer" for n in range(8, 12)}

        def wrong() -> list[str]:
            return [f"{name}@{p.admin_port}" for name, value in want.items() for p in peers if read(p, name) != value]

        try:
            wait_until(lambda: not wrong(), 60, 0.5, "every record at its newest version from every member")
        except Exception:
            raise AssertionError(f"not at the newest version: {wrong()[:10]}") from None
        merged = time.monotonic() - t0
        print(f"partition heal: one ring {healed:.1f} s after the cut healed, every record right after {merged:.1f} s")
    except BaseException:
        for p in peers:
            print(p.log_tail(10))
        raise
    finally:
        cut.heal()
        for p in peers:
            p.cleanup()
        cut.remove()
