"""A CA ring of real ``twistd`` storage peers (issue 11, "Nodes").

Certificates are made as an administrator would: ``sosimple keygen`` on each
node, ``sosimple sign`` by the CA (a CA from ``tests/certs.py``).  Members
store and read records through the admin API over a ring whose every
connection is mutual TLS: a plain-TCP AMP client gets no answer and the
member logs why.  A node with a certificate from another CA, and a node of
an open ring, never get in: they are in no member's ``/ring``, their own
reads and writes fail, and each member that refused them says so once.

The overlay's big end-to-end story (1,000 records, two SIGKILLs,
re-replication, a restart on the same state) runs again over a 6-node CA
ring at the end.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from sosimple_proxy.overlay import wire
from sosimple_proxy.testing import PeerProcess
from sosimple_proxy.testing.ring import peer_ring
from tests.certs import CA, key_pem
from tests.e2e import test_overlay_processes as story
from tests.e2e.test_overlay_processes import Api, sosimple_command, wait_for
from tests.overlay.test_ringtls import node_files

MEMBERS = 3
INTERVAL = 0.3
SETTINGS = {"stabilize_interval": INTERVAL, "replicas": 2, "successors": 4}


def evenly(i: int, n: int) -> int:
    """The id the CA gives node ``i`` of ``n``: evenly spread on the ring."""
    return (i * (1 << 160)) // n + 0x1234


class Stranger(PeerProcess):
    """A node that never joins: started once its admin API answers at all
    (``/health`` says 503 while it keeps trying to join)."""

    def probe(self) -> bytes | None:
        import http.client

        conn = http.client.HTTPConnection(self.host, self.admin_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().read() or b"answered"
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()


def sosimple(*argv: str) -> None:
    result = subprocess.run(sosimple_command() + list(argv), capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), (argv, result.stderr)


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    ca = CA("Ring CA")
    ca.write(tmp_path)
    (tmp_path / "ca.key").write_bytes(key_pem(ca.key))
    rogue = CA("Rogue CA")
    # the stranger trusts the ring's CA (so the members, not it, refuse the
    # handshake) and its own (its certificate is issued by that one)
    (tmp_path / "rogue-trusts.pem").write_bytes(ca.pem + rogue.pem)
    node_files(rogue, str(tmp_path / "rogue" / "overlay"), evenly(1, 2))
    return {"dir": tmp_path, "ca": tmp_path / "ca.pem", "ca_key": tmp_path / "ca.key"}


def issue_with_the_cli(pki: dict[str, Path], workdir: Path, node_id: int) -> None:
    """``sosimple keygen`` in the node's state_dir, then the CA's ``sosimple sign``."""
    state = workdir / "overlay"
    sosimple("keygen", "--out", str(state))
    sosimple(
        "sign", "--ca-cert", str(pki["ca"]), "--ca-key", str(pki["ca_key"]), "--csr", str(state / "node.csr"),
        "--node-id", format(node_id, "x"), "--domains", "example.com", "--out", str(state / "node.pem"),
    )


@pytest.fixture
def members(pki):
    d = pki["dir"]
    for i in range(MEMBERS):
        issue_with_the_cli(pki, d / f"n{i}", evenly(i, MEMBERS))
    with peer_ring(dict(SETTINGS, ca=str(pki["ca"])), d, MEMBERS) as started:
        yield started


def ring_addresses(view: dict) -> set[str]:
    peers = view["successors"] + view["fingers"] + ([view["predecessor"]] if view["predecessor"] else [])
    return {p["address"] for p in peers}


def plain_amp_hello(host: str, port: int) -> bytes:
    """What a member answers a Hello over plain TCP: everything it sends
    until it closes the connection (or 3 s pass)."""

    def pair(key: bytes, value: bytes) -> bytes:
        return struct.pack("!H", len(key)) + key + struct.pack("!H", len(value)) + value

    box = pair(b"_ask", b"1") + pair(b"_command", b"Hello") + pair(b"body", wire.encode_hello(1, 0, None)) + b"\x00\x00"
    got = b""
    with socket.create_connection((host, port), timeout=3) as s:
        s.sendall(box)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
    return got


def refusals(p: PeerProcess) -> list[str]:
    return [line for line in p.log_path.read_text(errors="replace").splitlines() if "refused a ring connection" in line]


def test_a_ca_ring_stores_over_mutual_tls_and_keeps_strangers_out(members, pki, tmp_path):
    apis = [Api(p.admin_url) for p in members]
    addresses = {p.overlay_address for p in members}
    views = lambda: [a.json("/ring") for a in apis]  # noqa: E731
    # the CA placed each node
    assert sorted(int(v["id"], 16) for v in views()) == [evenly(i, MEMBERS) for i in range(MEMBERS)]
    for p in members:
        assert "(mutual TLS, CA " in p.log_path.read_text()
    wait_for(
        "the CA ring settles",
        lambda: all(len(v["successors"]) >= MEMBERS - 1 and v["predecessor"] for v in views()),
        30,
        detail=lambda: views(),
    )

    # records in through one member, out through every other
    for i in range(50):
        assert apis[0].call("PUT", f"/records/ca-{i}?ttl=600", b"v%d" % i)[0] == 201
    for api in apis[1:]:
        for i in range(50):
            assert api.call("GET", f"/records/ca-{i}") == (200, b"v%d" % i)

    # a plain-TCP AMP client gets no AMP answer, and the member says why
    host, port = members[1].overlay_address.rsplit(":", 1)
    answer = plain_amp_hello(host, int(port))
    assert b"_answer" not in answer and b"Hello" not in answer, answer
    wait_for("the member logs the plain-TCP refusal", lambda: any("no TLS handshake" in r for r in refusals(members[1])), 10)

    # two strangers try to join through the first member
    rogue = Stranger(
        bootstrap=[members[0].overlay_address],
        overlay=dict(SETTINGS, ca=str(pki["dir"] / "rogue-trusts.pem")),
        workdir=pki["dir"] / "rogue",
    )
    plain = Stranger(bootstrap=[members[0].overlay_address], overlay=SETTINGS, workdir=tmp_path / "plain")
    try:
        rogue.start()
        plain.start()
        wait_for(
            "the first member refuses both strangers",
            lambda: len(refusals(members[0])) >= 2,
            15,
            detail=lambda: refusals(members[0]),
        )
        time.sleep(10 * INTERVAL)  # each stranger retries every interval
        lines = refusals(members[0])
        assert len(lines) == 2, lines  # once per stranger and reason, not once per attempt
        assert any("unknown CA" in line and "Rogue CA" in line for line in lines), lines
        assert any("no TLS handshake" in line for line in lines), lines
        strangers = {rogue.overlay_address, plain.overlay_address}
        for view in views():
            seen = ring_addresses(view)
            assert seen <= addresses and not seen & strangers, view
        for s in (rogue, plain):
            api = Api(s.admin_url)
            assert api.call("GET", "/health")[0] == 503
            assert api.call("PUT", "/records/mine", b"x")[0] == 503
            assert api.call("GET", "/records/ca-1")[0] == 503
            assert api.call("GET", "/locate/ca-1")[0] == 503
        # the stranger itself hears why, once
        assert any("unknown ca" in line.lower() for line in refusals(rogue)), rogue.log_tail()
        assert apis[0].call("GET", "/records/mine")[0] == 404
    finally:
        rogue.cleanup()
        plain.cleanup()


@pytest.fixture
def ca_peers(tmp_path):
    """The six peers of the overlay's big story, as a CA ring."""
    ca = CA("Ring CA")
    ca_path = str(ca.write(tmp_path))
    # Every ring message costs more CPU over TLS; on a loaded 2-core machine
    # calls that time out after 0.15 s (half of the open story's 0.3 s
    # interval) make nodes suspect live neighbours mid-burst.  0.5 s keeps
    # the story's deadlines (max(10 intervals, 10 s)) unchanged.
    settings = {"stabilize_interval": 0.5, "replicas": story.REPLICAS, "successors": story.SUCCESSORS, "ca": ca_path}
    for i in range(story.NODES):
        node_files(ca, str(tmp_path / f"n{i}" / "overlay"), evenly(i, story.NODES))
    with peer_ring(settings, tmp_path, story.NODES) as started:
        yield started


def test_six_peer_ca_ring_survives_crashes_and_restarts(ca_peers, capsys):
    """The overlay's end-to-end story, every connection over mutual TLS."""
    story.test_six_storage_peers_survive_crashes_and_restarts(ca_peers, capsys)
    for p in ca_peers:
        # twistd rotates its log at 1 MB and the story's access lines can pass
        # that: the start-up line may be in twistd.log.1
        logs = sorted(p.log_path.parent.glob(p.log_path.name + "*"))
        assert any("(mutual TLS, CA " in f.read_text(errors="replace") for f in logs), logs
