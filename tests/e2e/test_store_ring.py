"""The users' store on a ring of three twistd processes, driven by the ``sosimple`` command.

A value put through node 1 is read back through node 3; nobody without
the user's credentials gets it, another user's credentials included; and
it outlives a SIGKILL of the node responsible for the AoR's key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.testing.ring import peer_ring

AOR = "alice@example.com"
USERS = {"alice": "alice's secret", "bob": "bob's secret"}
SOSIMPLE = [sys.executable, "-c", "from sosimple_proxy.cli import main; main()"]


def sosimple(url: str, *argv: str, password: str | None = None, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOSIMPLE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    if password is not None:
        env["SOSIMPLE_PASSWORD"] = password
    # a new session has no terminal: a missing password cannot be asked for
    return subprocess.run(
        SOSIMPLE + ["store", *argv, "--store", url, "--timeout", "20"],
        input=stdin, capture_output=True, env=env, timeout=60, start_new_session=True,
    )


def http(method: str, url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_put_through_one_node_get_through_another_and_after_a_crash(tmp_path):
    users = tmp_path / "users"
    users.write_text("".join(UserEntry.from_password(u, "example.com", p).line() + "\n" for u, p in USERS.items()))
    sections = {"proxy": {"domains": "example.com"}, "auth": {"users_file": str(users), "realm": "example.com"}}
    value = os.urandom(3000) + b"\x00\n end"
    source = tmp_path / "friends.bin"
    source.write_bytes(value)
    with peer_ring({"stabilize_interval": 0.3, "replicas": 2, "successors": 4}, tmp_path, 3, sections, settle=30) as nodes:
        first, third = nodes[0].admin_url, nodes[2].admin_url
        put = sosimple(first, "put", AOR, "friends", str(source), password=USERS["alice"])
        assert put.returncode == 0, put.stderr
        got = sosimple(third, "get", AOR, "friends", password=USERS["alice"])
        assert (got.returncode, got.stdout) == (0, value), got.stderr
        listed = sosimple(third, "list", AOR, password=USERS["alice"])
        assert json.loads(listed.stdout) == {"aor": AOR, "names": ["friends"]}, listed.stderr

        # refused: no credentials at all, a wrong password, bob's own credentials
        code, body = http("GET", f"{third}/store/{AOR}/friends")
        assert (code, json.loads(body)) == (401, {"error": "authentication required"})
        wrong = sosimple(third, "get", AOR, "friends", password="guess")
        assert (wrong.returncode, wrong.stdout) == (4, b""), wrong.stderr
        assert b"401" in wrong.stderr
        as_bob = sosimple(third, "get", "--login", "bob", AOR, "friends", password=USERS["bob"])
        assert (as_bob.returncode, as_bob.stdout) == (4, b""), as_bob.stderr
        assert b"403: bob may not use the store of alice@example.com" in as_bob.stderr
        overwrite = sosimple(third, "put", "--login", "bob", AOR, "friends", password=USERS["bob"], stdin=b"bob was here")
        assert overwrite.returncode == 4, overwrite.stderr
        no_password = sosimple(third, "get", AOR, "friends")
        assert no_password.returncode == 2 and b"SOSIMPLE_PASSWORD" in no_password.stderr

        # SIGKILL the node responsible for alice's key; a survivor still reads the value
        code, body = http("GET", f"{first}/locate/{AOR}")
        assert code == 200, body
        responsible = json.loads(body)["responsible"]["address"]
        victim = next(p for p in nodes if p.overlay_address == responsible)
        victim.kill()
        survivor = next(p for p in nodes if p is not victim)
        deadline = time.monotonic() + 30
        while True:  # the first reads may meet the dead node's timeouts
            after = sosimple(survivor.admin_url, "get", AOR, "friends", password=USERS["alice"])
            if after.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert (after.returncode, after.stdout) == (0, value), after.stderr
