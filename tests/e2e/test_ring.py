"""Several proxies form one SOSIMPLE ring (paper IV.A-C), as real twistd processes.

alice registers at one proxy, bob calls and messages her from another; the
ring node responsible for alice's key dies and bob still reaches her,
without alice registering again.  Nothing here uses DNS: `[location] order`
is `local overlay`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from sosimple_proxy.overlay.ids import DEFAULT_BITS, KeyScheme, format_id
from sosimple_proxy.testing import (
    BARESIP,
    AnsweringUA,
    Baresip,
    BaresipError,
    ProxyProcess,
    free_port,
    message_request,
    register_contact,
    register_request,
    run_sipp,
    send_message,
    start_sipp,
    udp_final_response,
    wait_until,
)
from sosimple_proxy.testing.ua import answer_200

RING = 2**DEFAULT_BITS


def register(proxy_port: int, user: str, contact_port: int) -> str | None:
    return register_contact(proxy_port, f"{user}@example.com", f"sip:{user}@127.0.0.1:{contact_port}")


def message(proxy_port: int, to: str, text: str, timeout: float = 3.0) -> str | None:
    return send_message(proxy_port, f"{to}@example.com", "bob@example.com", text, timeout=timeout)


def ring_binding(admin_url: str, aor: str) -> list[dict]:
    """The bindings the ring holds for ``aor``, as the admin API shows them."""
    try:
        with urllib.request.urlopen(f"{admin_url}/registrations/{urllib.parse.quote(aor)}", timeout=2) as r:
            return json.loads(r.read())["bindings"]
    except (OSError, ValueError, KeyError):
        return []


def start_ring(
    node_ids: list[str | None],
    tmp_path,
    admin: dict[int, int] | None = None,
    redirect: set[int] = frozenset(),
    overlay_keys: dict[str, str] | None = None,
) -> list[ProxyProcess]:
    ports = [free_port("tcp") for _ in node_ids]
    procs: list[ProxyProcess] = []
    try:
        for i, nid in enumerate(node_ids):
            overlay = {
                "listen": f"tcp:{ports[i]}:interface=127.0.0.1",
                "bootstrap": f"127.0.0.1:{ports[0]}" if i else "",
                "stabilize_interval": "0.3",
                "state_dir": "overlay",
                # every proxy here writes example.com's registrations, none
                # authorized by another (test_signed_records_processes.py does that)
                "domain_writers": "any",
            }
            overlay.update(overlay_keys or {})
            if nid:
                overlay["node_id"] = nid
            overlay["allow_chosen_ids"] = "yes"  # a test ring: its members sit at the ids it chose
            sections = {"proxy": {"domains": "example.com"}, "location": {"order": "local overlay"}, "overlay": overlay}
            if i in redirect:
                sections["proxy"]["mode"] = "redirect"
            if admin and i in admin:
                sections["admin"] = {"listen": f"tcp:{admin[i]}:interface=127.0.0.1"}
            p = ProxyProcess(sections, workdir=tmp_path / f"proxy{i}")
            procs.append(p.start())
    except Exception:
        for p in procs:
            p.stop()
        raise
    return procs


def kill(p: ProxyProcess) -> None:
    assert p.process is not None
    os.kill(p.process.pid, signal.SIGKILL)
    p.process.wait(10)


@pytest.fixture
def ring_with_fixed_ids(tmp_path):
    key = KeyScheme("flat", DEFAULT_BITS).key("alice@example.com")
    # responsible = successor(key) = the node whose id is the key itself;
    # alice's and bob's proxies come after it (so they hold its replicas),
    # a fourth node precedes it and holds nothing of alice's.
    ids = {
        "responsible": key,
        "alice": (key + 2**150) % RING,
        "bob": (key + 2**151) % RING,
        "other": (key - 2**150) % RING,
        # asks the ring for alice only after the crash (no cached answer)
        "fresh": (key - 2**149) % RING,
    }
    order = ["alice", "responsible", "bob", "other", "fresh"]
    admin_port = free_port("tcp")
    # the fourth is the paper's "adaptor": redirect mode, answering from the ring
    procs = start_ring([format_id(ids[n]) for n in order], tmp_path, admin={3: admin_port}, redirect={3})
    ring = dict(zip(order, procs))
    ring["admin"] = f"http://127.0.0.1:{admin_port}"  # type: ignore[assignment]
    yield ring
    for p in procs:
        p.stop()


def test_bob_reaches_alice_through_the_ring_and_after_her_key_holder_dies(ring_with_fixed_ids):
    ring = ring_with_fixed_ids
    alice = AnsweringUA()
    try:
        assert register(ring["alice"].port, "alice", alice.port) == "SIP/2.0 200 OK"
        # MESSAGE from bob's proxy: the ring gives alice's binding, routed via her proxy
        text = f"hello-{uuid.uuid4().hex[:6]}"
        wait_until(lambda: message(ring["bob"].port, "alice", text) == "SIP/2.0 200 OK", 15, 0.3)
        assert alice.received(text)
        # any node shows what the ring holds for alice (admin API, `sosimple lookup`)
        looked = subprocess.run(
            [sys.executable, "-m", "sosimple_proxy.cli", "--admin", ring["admin"], "lookup", "alice@example.com"],
            capture_output=True, text=True, timeout=30,
        )
        assert looked.returncode == 0, looked.stderr
        (b,) = json.loads(looked.stdout)["bindings"]
        assert b["contact"] == f"sip:alice@127.0.0.1:{alice.port}"
        assert b["proxy"] == f"sip:127.0.0.1:{ring['alice'].port}" and 0 < b["expires"] <= 600
        # redirect mode answers 302 with what the ring returned: alice's
        # contact, reached through her own proxy (an escaped Route header)
        answer = udp_final_response(
            ring["other"].port, lambda lport: message_request("alice@example.com", "bob@example.com", "", via_port=lport)
        )
        assert answer is not None and answer.startswith("SIP/2.0 302 "), answer
        contact = next(line for line in answer.split("\r\n") if line.lower().startswith(("contact:", "m:")))
        assert f"sip:alice@127.0.0.1:{alice.port}?Route=" in contact
        assert f"127.0.0.1%3A{ring['alice'].port}" in contact
        # an unknown user of our domain: the ring's authoritative miss, at
        # once (once the ring has settled; until then it may say 480, never 404)
        wait_until(lambda: message(ring["bob"].port, "nobody-yet", "x") == "SIP/2.0 404 Not Found", 10, 0.3)
        started = time.monotonic()
        assert message(ring["bob"].port, "nobody", "x") == "SIP/2.0 404 Not Found"
        assert time.monotonic() - started < 2.0

        # an INVITE-ACK-BYE call from bob (sipp) to carol's sipp UAS at alice's proxy,
        # once the ring holds carol's binding
        uas = start_sipp("uas", calls=1, timeout=20, local_port=0)
        assert register(ring["alice"].port, "carol", uas.port) == "SIP/2.0 200 OK"
        wait_until(lambda: ring_binding(ring["admin"], "carol@example.com"), 10, 0.1, what="carol's binding in the ring")
        uac = run_sipp("uac", f"127.0.0.1:{ring['bob'].port}", "-s", "carol", calls=1, timeout=15)
        assert uac.ok, uac
        assert uas.wait().ok

        # the node responsible for alice's key dies; her replicas answer:
        # bob's proxy (which may use its contact cache) and a proxy that
        # never looked alice up, so that its answer must come from the ring
        kill(ring["responsible"])
        for sender in ("bob", "fresh"):
            text = f"again-{sender}-{uuid.uuid4().hex[:6]}"
            wait_until(lambda: message(ring[sender].port, "alice", text) == "SIP/2.0 200 OK", 20, 0.3)
            assert alice.received(text)
    finally:
        alice.close()


def test_two_dead_proxies_that_hold_neither_user_lose_nothing(tmp_path):
    procs = start_ring([None] * 5, tmp_path)
    alice = AnsweringUA()
    try:
        a, b, x, y = procs[0], procs[1], procs[2], procs[3]
        assert register(a.port, "alice", alice.port) == "SIP/2.0 200 OK"
        wait_until(lambda: message(b.port, "alice", "one") == "SIP/2.0 200 OK", 15, 0.3)
        kill(x)
        kill(y)
        # the fifth proxy has never looked alice up: its answer comes from the ring
        text = f"after-{uuid.uuid4().hex[:6]}"
        wait_until(lambda: message(procs[4].port, "alice", text) == "SIP/2.0 200 OK", 20, 0.3)
        assert alice.received(text)
    finally:
        alice.close()
        for p in procs:
            p.stop()


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (Debian package baresip)")
def test_baresip_phones_at_two_proxies_message_and_call_through_the_ring(tmp_path):
    procs = start_ring([None, None, None], tmp_path)
    try:
        first, _, third = procs
        with Baresip("alice", first.port, contacts=["sip:bob@example.com"], startup_timeout=15) as alice, \
             Baresip("bob", third.port, contacts=["sip:alice@example.com"], startup_timeout=15) as bob:
            text = f"via-the-ring-{uuid.uuid4().hex[:6]}"

            def delivered() -> bool:
                bob.message(text)
                try:
                    alice.wait_received("MESSAGE", text, timeout=2)
                    return True
                except BaresipError:
                    return False

            wait_until(delivered, 20, 0.5, what=alice.log_tail)
            bob.dial("sip:alice@example.com")
            bob.wait_event("CALL_ESTABLISHED", 15, direction="outgoing")
            alice.wait_event("CALL_ESTABLISHED", 15, direction="incoming")
            bob.hangup()
            alice.wait_event("CALL_CLOSED", 15)
    finally:
        for p in procs:
            p.stop()


class TcpUA:
    """A UA that registers over one TCP connection with a Contact nobody can
    reach (a phone behind NAT) and answers what arrives on that connection."""

    def __init__(self, proxy_port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
        self.user = user
        self.requests: list[str] = []
        self._buf = b""

    def _read_message(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self._buf:
            try:
                chunk = self.sock.recv(65535)
            except socket.timeout:
                return None
            if not chunk:
                return None
            self._buf += chunk
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() in (b"content-length", b"l"):
                length = int(value.strip())
        while len(rest) < length:
            rest += self.sock.recv(65535)
        self._buf = rest[length:]
        return (head + b"\r\n\r\n" + rest[:length]).decode(errors="replace")

    def register(self) -> str | None:
        tag = uuid.uuid4().hex[:8]
        local = self.sock.getsockname()[1]
        self.sock.sendall(
            (f"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bK-{tag}\r\n"
             f"Max-Forwards: 70\r\nTo: <sip:{self.user}@example.com>\r\nFrom: <sip:{self.user}@example.com>;tag={tag}\r\n"
             f"Call-ID: {tag}@tcp\r\nCSeq: 1 REGISTER\r\n"
             # port 9 (discard) is closed: only the connection reaches this UA
             f"Contact: <sip:{self.user}@127.0.0.1:9;transport=tcp>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode()
        )
        answer = self._read_message(5)
        return answer.split("\r\n", 1)[0] if answer else None

    def serve(self, seconds: float) -> None:
        """Answer 200 to every request arriving within ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = self._read_message(max(0.05, end - time.monotonic()))
            except OSError:
                return  # closed by the test
            if msg is None or msg.startswith("SIP/2.0"):
                continue
            self.requests.append(msg)
            self.sock.sendall(answer_200(msg).encode())

    def close(self) -> None:
        self.sock.close()


def test_a_ua_behind_its_tcp_connection_is_reached_from_another_proxy(tmp_path):
    procs = start_ring([None, None, None], tmp_path)
    ua = TcpUA(procs[0].port, "nat")
    try:
        assert ua.register() == "SIP/2.0 200 OK"
        server = threading.Thread(target=ua.serve, args=(12.0,), daemon=True)
        server.start()
        text = f"through-the-flow-{uuid.uuid4().hex[:6]}"
        wait_until(lambda: message(procs[2].port, "nat", text) == "SIP/2.0 200 OK", 10, 0.3)
        assert any(text in r for r in ua.requests)
        # it came over the UA's own connection, through its proxy: our Via on top
        assert any(f"127.0.0.1:{procs[0].port}" in r.split("\r\n")[1] for r in ua.requests if text in r)
    finally:
        ua.close()
        for p in procs:
            p.stop()


def test_a_user_is_reached_through_her_proxy_after_it_restarted(tmp_path):
    """Issue 15: alice's proxy restarts (SIGKILL, then started again with its
    state directory): it no longer holds her binding in memory, but the ring
    does, with the Path through it that it stamped (proxy/path_stamp.py).
    A MESSAGE from the other proxy goes along that Path and reaches her
    (before: 403 Relaying Denied from her own proxy, until she registered
    again).  Neither proxy trusts the other ([auth] trusted is empty)."""
    procs = start_ring([None, None], tmp_path)
    alice = AnsweringUA()
    try:
        a, b = procs
        assert register(a.port, "alice", alice.port) == "SIP/2.0 200 OK"
        wait_until(lambda: message(b.port, "alice", "before") == "SIP/2.0 200 OK", 15, 0.3)
        kill(a)
        a.process = None
        a.start()
        text = f"after-restart-{uuid.uuid4().hex[:6]}"
        answers: list[str | None] = []
        wait_until(lambda: answers.append(message(b.port, "alice", text)) or answers[-1] == "SIP/2.0 200 OK", 20, 0.3)
        assert alice.received(text)
        assert "SIP/2.0 403 Relaying Denied" not in answers, answers
    finally:
        alice.close()
        for p in procs:
            p.stop()


def test_publish_path_needed_reaches_a_direct_ua_without_its_registrar(tmp_path):
    """``[overlay] publish_path = needed``: carol registers over UDP from her
    Contact's own address, so the ring holds her binding without her
    proxy's Path, and another proxy sends to her directly (its Via alone
    above the sender's), even once her proxy is dead.  dave registers from
    another port (as through a NAT): his binding keeps the Path."""
    admin = free_port("tcp")
    url = f"http://127.0.0.1:{admin}"
    procs = start_ring([None, None], tmp_path, admin={0: admin}, overlay_keys={"publish_path": "needed"})
    home, other = procs
    try:
        with AnsweringUA() as carol, AnsweringUA() as dave:
            carol.sock.sendto(  # her own socket: the 200 is read (and skipped) by her thread
                register_request("carol@example.com", f"sip:carol@127.0.0.1:{carol.port}", via_port=carol.port).encode(),
                ("127.0.0.1", home.port),
            )
            assert register(home.port, "dave", dave.port) == "SIP/2.0 200 OK"
            wait_until(lambda: ring_binding(url, "carol@example.com") and ring_binding(url, "dave@example.com"), 20, 0.2)
            assert ring_binding(url, "carol@example.com")[0]["path"] == []
            dave_path = ring_binding(url, "dave@example.com")[0]["path"]  # ours, stamped (;pst=, path_stamp.py)
            assert len(dave_path) == 1 and dave_path[0].startswith(f"<sip:127.0.0.1:{home.port};lr")
            for ua, user in ((carol, "carol"), (dave, "dave")):
                text = f"to-{user}-{uuid.uuid4().hex[:6]}"
                wait_until(lambda: message(other.port, user, text) == "SIP/2.0 200 OK", 10, 0.3)
                got = next(r for r in ua.requests if text in r)
                vias = [line for line in got.split("\r\n") if line.lower().startswith(("via:", "v:"))]
                hops = [f"127.0.0.1:{p.port}" for p in (other, home) if any(f"127.0.0.1:{p.port}" in v for v in vias)]
                # carol: straight from the other proxy; dave: through his own
                assert hops == ([f"127.0.0.1:{other.port}"] if user == "carol" else [f"127.0.0.1:{other.port}", f"127.0.0.1:{home.port}"])
            kill(home)
            text = f"after-{uuid.uuid4().hex[:6]}"
            wait_until(lambda: message(other.port, "carol", text) == "SIP/2.0 200 OK", 10, 0.3)
            assert carol.received(text)
    finally:
        for p in procs:
            p.stop()
