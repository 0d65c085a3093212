"""Nothing lost (issue 15): the node that holds a fresh registration dies
right after the 200 OK, and the registration is still in the ring.

Real twistd processes on loopback: one proxy and three storage peers, with
fixed node ids so the proxy itself is the key holder of every user it
registers (the case that lost registrations when a write counted as done
after one acknowledgement: the registering proxy's own copy).  For each of
20 users: REGISTER at the proxy, SIGKILL it the moment the 200 arrives,
throw its store away (the disk went with it), start it again.  Afterwards
every user is found from the storage peers.  (With the 200 sent before
the ring write, as it was, 8 of the 20 were lost in this test.)
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request

from sosimple_proxy.overlay.ids import DEFAULT_BITS, KeyScheme, format_id, in_half_open
from sosimple_proxy.testing import PeerProcess, ProxyProcess, free_port, register_contact, wait_until

RING = 2**DEFAULT_BITS
USERS = 20
# fixed ids (a test ring: allow_chosen_ids), any member writes example.com
OVERLAY = {"stabilize_interval": "0.3", "replicas": "2", "write_quorum": "2", "allow_chosen_ids": "yes",
           "domain_writers": "any"}


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def found(admin_url: str, aor: str) -> bool:
    body = get_json(f"{admin_url}/registrations/{urllib.parse.quote(aor)}")
    return bool(body and body.get("bindings"))


def users_in(lo: int, hi: int, count: int) -> list[str]:
    """``count`` user names whose keys fall in ``(lo, hi]``."""
    keys = KeyScheme("flat", DEFAULT_BITS)
    out, n = [], 0
    while len(out) < count:
        aor = f"u{n}@example.com"
        if in_half_open(keys.key(aor), lo, hi):
            out.append(aor)
        n += 1
    return out


def test_the_key_holder_killed_right_after_each_200_loses_no_registration(tmp_path):
    ids = [k * RING // 4 + 12345 for k in range(4)]  # proxy at ids[0], peers after it
    peers: list[PeerProcess] = []
    proxy: ProxyProcess | None = None
    try:
        first = PeerProcess(overlay={**OVERLAY, "node_id": format_id(ids[1])}, workdir=tmp_path / "s1").start()
        peers.append(first)
        for i in (2, 3):
            peers.append(
                PeerProcess(
                    bootstrap=[first.overlay_address],
                    overlay={**OVERLAY, "node_id": format_id(ids[i])},
                    workdir=tmp_path / f"s{i}",
                ).start()
            )
        ring_port, admin_port = free_port("tcp"), free_port("tcp")
        proxy = ProxyProcess(
            {
                "proxy": {"domains": "example.com"},
                "location": {"order": "local overlay"},
                "overlay": {
                    **OVERLAY,
                    "listen": f"tcp:{ring_port}:interface=127.0.0.1",
                    "bootstrap": " ".join(p.overlay_address for p in peers),
                    "state_dir": "overlay",
                    "node_id": format_id(ids[0]),
                },
                "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
            },
            workdir=tmp_path / "proxy",
        )
        proxy_admin = f"http://127.0.0.1:{admin_port}"
        want_pred, want_succ = format_id(ids[3]), format_id(ids[1])

        def proxy_holds_its_range() -> bool:
            view = get_json(f"{proxy_admin}/ring")
            return bool(
                view
                and (view.get("predecessor") or {}).get("id") == want_pred
                and (view.get("successors") or [{}])[0].get("id") == want_succ
            )

        users = users_in(ids[3], ids[0], USERS)
        answers = []
        for n, aor in enumerate(users):
            proxy.start()
            wait_until(proxy_holds_its_range, 30, 0.1, "the proxy back in its place on the ring")
            contact = f"sip:{aor.split('@')[0]}@127.0.0.1:{20000 + n}"
            # a phone tries again after a 500 (Retry-After); a few tries at most
            status = None
            for _ in range(5):
                status = register_contact(proxy.port, aor, contact)
                if status == "SIP/2.0 200 OK":
                    break
            answers.append(status)
            assert proxy.process is not None
            proxy.process.kill()  # SIGKILL, the moment the 200 is in
            proxy.process.wait(10)
            proxy.process = None
            shutil.rmtree(proxy.dir / "overlay", ignore_errors=True)
        assert answers == ["SIP/2.0 200 OK"] * USERS
        missing = lambda: [u for u in users if not found(peers[0].admin_url, u)]  # noqa: E731
        try:
            wait_until(lambda: not missing(), 30, 0.5, "every registration found")
        except Exception:
            raise AssertionError(f"lost: {missing()}") from None
    except BaseException:
        for p in [*peers, *([proxy] if proxy else [])]:
            print(p.log_tail(15))
        raise
    finally:
        if proxy is not None:
            proxy.stop()
        for p in peers:
            p.cleanup()
