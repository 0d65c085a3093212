"""Signed records between real ``twistd`` proxies (issue 11, "Records").

- A CA ring: three proxies of example.com and a rogue member whose valid
  certificate names only other.test.  The rogue registers "alice" at its
  own proxy and tries to store a key record under her AoR: every replica
  refuses both, and the real alice still receives calls through the ring.
- An open ring: alice registers at proxy 1 (which publishes example.com's
  domain record, listing itself) and, once ``sosimple authorize`` lists
  proxy 2, at proxy 2 too: both bindings are kept; proxy 3, not listed,
  writing her AoR is refused by every replica; ``sosimple rebind`` moves
  the domain to proxy 3's key, after which proxy 1 is the one refused.
- Storage peers: a record edited in one node's SQLite file while it was
  stopped is dropped at restart, never served, and repaired from the
  other replicas.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sosimple_proxy.overlay.signing import fingerprint, load_public_key
from sosimple_proxy.testing import AnsweringUA, ProxyProcess, free_port, register_contact, send_message, wait_until
from sosimple_proxy.testing.ring import peer_ring
from sosimple_proxy.testing.sip_requests import sip_request, status_line, udp_final_response
from tests.certs import CA, key_pem
from tests.e2e.test_overlay_processes import Api
from tests.overlay.test_ringtls import node_files

INTERVAL = "0.3"
ALICE = "alice@example.com"


def sosimple(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sosimple_proxy.cli", *argv], capture_output=True, text=True, timeout=60
    )


def start_proxies(tmp_path: Path, names: list[str], overlay: dict[str, object]) -> dict[str, ProxyProcess]:
    """Proxies of example.com that form one ring (the first starts it), each
    with an admin API; node ``name`` keeps its state in ``tmp_path/name``."""
    first_port = free_port("tcp")
    procs: dict[str, ProxyProcess] = {}
    try:
        for i, name in enumerate(names):
            port = first_port if i == 0 else free_port("tcp")
            sections = {
                "proxy": {"domains": "example.com"},
                "location": {"order": "local overlay"},
                "overlay": {
                    "listen": f"tcp:{port}:interface=127.0.0.1",
                    "bootstrap": f"127.0.0.1:{first_port}" if i else "",
                    "stabilize_interval": INTERVAL,
                    "state_dir": "overlay",
                    **overlay,
                },
                "admin": {"listen": f"tcp:{free_port('tcp')}:interface=127.0.0.1"},
            }
            p = ProxyProcess(sections, workdir=tmp_path / name)
            p.admin = Api(f"http://127.0.0.1:{sections['admin']['listen'].split(':')[1]}")  # type: ignore[attr-defined]
            p.overlay_address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
            procs[name] = p.start()
    except BaseException:
        for p in procs.values():
            print(p.log_tail(20))
            p.stop()
        raise
    return procs


def settled(procs: dict[str, ProxyProcess]) -> bool:
    answers = [p.admin.call("GET", "/ring") for p in procs.values()]  # type: ignore[attr-defined]
    if any(status != 200 for status, _ in answers):
        return False  # still joining
    views = [json.loads(body) for _, body in answers]
    return all(v["predecessor"] and len(v["successors"]) >= min(len(procs) - 1, 2) for v in views)


def register(p: ProxyProcess, user: str, ua: AnsweringUA) -> str | None:
    return register_contact(p.port, f"{user}@example.com", f"sip:{user}@127.0.0.1:{ua.port}")


def bindings(p: ProxyProcess, aor: str = ALICE) -> list[str]:
    status, body = p.admin.call("GET", f"/registrations/{aor}")  # type: ignore[attr-defined]
    return sorted(b["contact"] for b in json.loads(body)["bindings"]) if status == 200 else []


def holders(p: ProxyProcess, name: str) -> set[str]:
    """Overlay addresses of the nodes that hold ``name`` (responsible and replicas)."""
    where = p.admin.json(f"/locate/{name}")  # type: ignore[attr-defined]
    return {where["responsible"]["address"], *(r["address"] for r in where["replicas"])}


def refused_by(procs: list[ProxyProcess], reason: str, key: str = "") -> int:
    """How many of ``procs`` logged a refusal for ``reason`` (of writer key ``key``)."""
    return sum(1 for p in procs if any(key in line for line in refusals(p, reason)))


def refusals(p: ProxyProcess, reason: str) -> list[str]:
    return [
        line for line in p.log_path.read_text(errors="replace").splitlines()
        if "refused records from writer" in line and reason in line
    ]


def invite(p: ProxyProcess, to: str, tag: str) -> str | None:
    """An INVITE to ``to`` through proxy ``p``; the final status line."""

    def request(lport: int) -> str:
        return sip_request(
            "INVITE", f"sip:{to}", to=to, from_="bob@example.com", via_port=lport,
            headers=[f"Contact: <sip:bob@127.0.0.1:{lport}>", "Content-Type: application/sdp", f"Subject: {tag}"],
            body="v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n",
        )

    return status_line(udp_final_response(p.port, request, timeout=3.0))


# --- a CA ring with a rogue member --------------------------------------------------


@pytest.fixture
def ca_ring(tmp_path):
    ca = CA("Ring CA")
    ca_path = str(ca.write(tmp_path))
    (tmp_path / "ca.key").write_bytes(key_pem(ca.key))
    names = ["p1", "p2", "p3", "rogue"]
    for i, name in enumerate(names):
        domains = ("other.test",) if name == "rogue" else ("example.com",)
        node_files(ca, str(tmp_path / name / "overlay"), (i * (1 << 160)) // len(names) + 0x77, domains)
    procs = start_proxies(tmp_path, names, {"ca": ca_path, "replicas": 2, "successors": 4})
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def test_a_rogue_member_of_a_ca_ring_cannot_take_alices_records(ca_ring):
    p1, p2, rogue = ca_ring["p1"], ca_ring["p2"], ca_ring["rogue"]
    wait_until(lambda: settled(ca_ring), 30, 0.3, "the CA ring settles")
    with AnsweringUA() as alice, AnsweringUA() as attacker:
        assert register(p1, "alice", alice) == "SIP/2.0 200 OK"
        real = f"sip:alice@127.0.0.1:{alice.port}"
        wait_until(lambda: bindings(p2) == [real], 15, 0.3, "alice's binding in the ring")
        # the rogue member's proxy takes a REGISTER for alice (its own users'
        # domain is none of its business) and writes it into the ring
        assert register(rogue, "alice", attacker) == "SIP/2.0 200 OK"
        # and it tries to bind a key of its choosing to her AoR
        own_key = key_file(rogue)
        tries: list[subprocess.CompletedProcess] = []

        def refused() -> bool:  # (a 503 while the ring settles is worth another try)
            tries.append(sosimple("--admin", rogue.admin.url, "rebind", ALICE, "--key", own_key))  # type: ignore[attr-defined]
            return tries[-1].returncode == 4 and "403: the ring refused the new key" in tries[-1].stderr

        wait_until(refused, 20, 0.5, lambda: f"the rogue's key record refused: {tries[-1].stderr}")
        # every replica of her key refused both, once each
        replicas = [p for p in ca_ring.values() if p.overlay_address in holders(rogue, ALICE)]
        assert len(replicas) == 3
        reason = "its certificate does not name example.com"
        wait_until(lambda: refused_by(replicas, reason) == 3, 15, 0.3, "every replica refuses the rogue")
        for p in replicas:
            assert len(refusals(p, reason)) <= 2, refusals(p, reason)  # once per writer and reason, not per record
        # the ring still holds her real binding only
        for p in ca_ring.values():
            assert bindings(p) == [real], p.dir
        # calls from another proxy reach the real alice, not the attacker
        tag = uuid.uuid4().hex[:8]
        wait_until(lambda: invite(p2, ALICE, tag) == "SIP/2.0 200 OK", 15, 0.3, "bob's INVITE reaches alice")
        assert alice.received(tag) and not attacker.received(tag)
        text = f"hi-{uuid.uuid4().hex[:6]}"
        assert send_message(ca_ring["p3"].port, ALICE, "bob@example.com", text) == "SIP/2.0 200 OK"
        assert alice.received(text) and not attacker.received(text)
    # the CA itself may bind her a key, through any member (the rogue's too)
    ca_dir = Path(str(p1.dir)).parent
    user_key = "cd" * 32
    bound = sosimple(
        "--admin", rogue.admin.url, "rebind", ALICE, "--key", user_key,  # type: ignore[attr-defined]
        "--ca-cert", str(ca_dir / "ca.pem"), "--ca-key", str(ca_dir / "ca.key"),
    )
    assert bound.returncode == 0, bound.stderr
    assert json.loads(bound.stdout)["name"] == ALICE


# --- an open ring: the domain record, authorize, rebind ----------------------------


@pytest.fixture
def open_ring(tmp_path):
    procs = start_proxies(tmp_path, ["p1", "p2", "p3"], {"replicas": 2, "successors": 4})
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def key_file(p: ProxyProcess) -> str:
    return str(p.dir / "overlay" / "node.key")


def fingerprint_of(p: ProxyProcess) -> str:
    return fingerprint(load_public_key(Path(key_file(p)).read_bytes()))


def test_open_ring_domain_keys_authorize_and_rebind(open_ring):
    p1, p2, p3 = open_ring["p1"], open_ring["p2"], open_ring["p3"]
    wait_until(lambda: settled(open_ring), 30, 0.3, "the open ring settles")
    not_listed = "its key is not listed in the domain record of example.com"
    with AnsweringUA() as desk, AnsweringUA() as mobile, AnsweringUA() as evil:
        # the first registration publishes example.com's domain record, listing p1
        assert register(p1, "alice", desk) == "SIP/2.0 200 OK"
        wait_until(lambda: bindings(p3) == [f"sip:alice@127.0.0.1:{desk.port}"], 15, 0.3, "alice at p1")
        shown = sosimple("--admin", p1.admin.url, "authorize", "example.com", "--key", key_file(p2))  # type: ignore[attr-defined]
        assert shown.returncode == 0, shown.stderr
        assert len(json.loads(shown.stdout)["keys"]) == 2
        # p2 may write now: alice registers there too, and both bindings are kept
        assert register(p2, "alice", mobile) == "SIP/2.0 200 OK"
        both = sorted([f"sip:alice@127.0.0.1:{desk.port}", f"sip:alice@127.0.0.1:{mobile.port}"])
        wait_until(lambda: all(bindings(p) == both for p in open_ring.values()), 15, 0.3, "both of alice's bindings")
        # p3 is not listed: its write of her AoR is refused on every replica it reached
        assert register(p3, "alice", evil) == "SIP/2.0 200 OK"
        procs = list(open_ring.values())  # replicas = 2: all three hold every key
        wait_until(lambda: refused_by(procs, not_listed) == 3, 15, 0.3, "p3 refused by every replica")
        assert all(bindings(p) == both for p in open_ring.values())
        # (p3's own binding table still has the impostor: every proxy here
        # serves example.com, and local bindings come first; the ring does not)
        # p3 cannot list itself
        tried = sosimple("--admin", p3.admin.url, "authorize", "example.com", "--key", key_file(p3))  # type: ignore[attr-defined]
        assert tried.returncode == 4 and "not listed" in tried.stderr, tried.stderr
        # rebind example.com to p3's key (signed by p2, a listed key)
        moved = sosimple("--admin", p2.admin.url, "rebind", "example.com", "--key", key_file(p3))  # type: ignore[attr-defined]
        assert moved.returncode == 0, moved.stderr
        with AnsweringUA() as carol, AnsweringUA() as dave:
            assert register(p3, "carol", carol) == "SIP/2.0 200 OK"
            assert register(p1, "dave", dave) == "SIP/2.0 200 OK"
            wait_until(
                lambda: bindings(p1, "carol@example.com") == [f"sip:carol@127.0.0.1:{carol.port}"], 15, 0.3, "carol via p3"
            )
            p1_key = fingerprint_of(p1)
            wait_until(lambda: refused_by(procs, not_listed, p1_key) == 3, 15, 0.3, "p1 refused by every replica")
            assert all(bindings(p, "dave@example.com") == [] for p in open_ring.values())
        view = p2.admin.json("/domains/example.com")  # type: ignore[attr-defined]
        assert len(view["keys"]) == 1 and view["keys"] != [view["this_node"]]


# --- a record edited on disk ---------------------------------------------------------


def test_a_record_edited_on_disk_is_not_served_after_restart_and_is_repaired(tmp_path):
    with peer_ring({"stabilize_interval": 0.3, "replicas": 2, "successors": 4}, tmp_path, 3) as peers:
        apis = [Api(p.admin_url) for p in peers]
        wait_until(
            lambda: all(v["predecessor"] and len(v["successors"]) >= 2 for v in (a.json("/ring") for a in apis)),
            30, 0.3, "the ring settles",
        )
        for i in range(20):
            # a member only vouches for a miss once it has synced its range: retry while the ring settles
            wait_until(lambda: apis[0].call("PUT", f"/records/t-{i}?ttl=600", b"v%d" % i)[0] == 201, 15, 0.3, f"t-{i} stored")
        victim, api = peers[2], apis[2]
        wait_until(
            lambda: all(api.call("GET", f"/records/t-{i}?local=1") == (200, b"v%d" % i) for i in range(20)),
            20, 0.3, "the third node holds every record",
        )
        victim.stop()
        db = sqlite3.connect(str(victim.dir / "overlay" / "records.sqlite"))
        with db:
            edited = db.execute("UPDATE records SET value = ? WHERE value = ?", (b"evil", b"v7")).rowcount
        db.close()
        assert edited == 1
        victim.restart()
        log = victim.log_path.read_text(errors="replace")
        assert "dropping the stored record blob" in log and "a bad signature" in log, victim.log_tail()
        # never served: the copy is gone until the ring repairs it, then it is the true one
        seen = []

        def repaired() -> bool:
            got = api.call("GET", "/records/t-7?local=1")
            seen.append(got[1])
            return got == (200, b"v7")

        wait_until(repaired, 20, 0.2, "the edited record is repaired from the replicas")
        assert b"evil" not in seen
        for a in apis:
            assert a.call("GET", "/records/t-7") == (200, b"v7")
