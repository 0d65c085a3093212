"""``[proxy] workers = 2`` (issue 12): two processes share the SIP ports.

The kernel spreads phones over the workers by their addresses, so a
request from a fresh socket lands on either; the UA below answers every
request from one socket, so its responses all reach one worker, and every
transaction the other worker sent must be handed over (the branch names
its worker).  Bindings accepted by one worker are seen by the other, and
by the parent, which publishes them to the ring and shows them on the
admin API; the parent restarts a worker that dies, under sipp load,
without losing a registration.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from sosimple_proxy.testing import (
    SIPP,
    AnsweringUA,
    PeerProcess,
    free_port,
    register_request,
    run_sipp,
    sip_options_ping,
    sip_request,
    start_sipp,
    udp_final_response,
    wait_until,
)
from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario

DOMAIN = "example.com"


def worker_proxy(workdir: Path, workers: int = 2, bootstrap: tuple[str, ...] = ()) -> PeerProcess:
    port = free_port("both")
    proxy = PeerProcess(
        {
            "proxy": {"listen": f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}", "domains": DOMAIN,
                      "workers": str(workers)},
            "location": {"order": "local overlay"},
            "auth": {"trusted": "127.0.0.1"},
            # sipp's load from 127.0.0.1 is over the default 50/s in sum (the
            # workers share [limits]), and these tests are not about limits
            "limits": {"allow": "127.0.0.1"},
        },
        bootstrap=bootstrap,
        overlay={"stabilize_interval": "0.5"},
        workdir=workdir,
    )
    proxy.port = port
    return proxy


def serving(proxy: PeerProcess, workers: int = 2) -> None:
    """Every worker serves SIP (each says so once it has the parent's bindings)."""
    wait_until(lambda: proxy.log_path.read_text().count("bindings from the parent; serving SIP") >= workers, 30,
               what=lambda: proxy.log_tail(20))
    wait_until(lambda: sip_options_ping("127.0.0.1", proxy.port) is not None, 30, what="workers not serving SIP")


def worker_pids(parent_pid: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent_pid:
                pids.add(int(entry))
    return pids


def register(proxy_port: int, user: str, contact: str) -> str | None:
    return udp_final_response(proxy_port, lambda lport: register_request(f"{user}@{DOMAIN}", contact, via_port=lport))


def message(proxy_port: int, user: str) -> str | None:
    ruri = f"sip:{user}@{DOMAIN}"
    return udp_final_response(proxy_port, lambda lport: sip_request(
        "MESSAGE", ruri, to=ruri, from_="sip:caller@example.com", via_port=lport,
        headers=("Content-Type: text/plain",), body=f"to {user}"))


def registrations(proxy: PeerProcess) -> set[str]:
    with urllib.request.urlopen(proxy.admin_url + "/registrations", timeout=5) as r:
        return {entry["aor"] for entry in json.loads(r.read())["registrations"]}


def test_two_workers_share_bindings_and_hand_each_other_their_responses(tmp_path):
    with AnsweringUA() as ua, worker_proxy(tmp_path / "proxy") as proxy:
        serving(proxy)
        assert len(worker_pids(proxy.process.pid)) == 2
        users = [f"u{i}" for i in range(24)]
        for user in users:  # each from a fresh socket: spread over both workers
            answer = register(proxy.port, user, f"sip:{user}@127.0.0.1:{ua.port}")
            assert answer is not None and answer.startswith("SIP/2.0 200"), answer
        for user in users:  # again from fresh sockets: mostly another worker than the REGISTER's
            answer = message(proxy.port, user)
            assert answer is not None and answer.startswith("SIP/2.0 200"), (user, answer)
        branches = [m.group(0) for r in ua.requests for m in [re.search(r"branch=[^;\s]+\.w(\d+)", r)] if m]
        assert {b[-1] for b in branches} == {"0", "1"}, branches  # both workers forwarded
        # Each worker's transaction got its answer (one of them by handoff,
        # as the UA answers from one socket): none retransmitted its MESSAGE
        # (Timer E: after 0.5 s, then 1 s...).  A stray answer would still
        # reach the caller, forwarded statelessly, but never its transaction.
        time.sleep(1.6)
        branches = [m.group(0) for r in ua.requests for m in [re.search(r"branch=[^;\s]+\.w(\d+)", r)] if m]
        assert len(branches) == len(users) and len(set(branches)) == len(users), sorted(branches)
        wait_until(lambda: registrations(proxy) >= {f"{u}@{DOMAIN}" for u in users}, 10,
                   what="the parent's table lacks bindings")
        log = proxy.log_path.read_text()
        assert "Traceback" not in log


def test_a_worker_finds_users_of_another_proxy_through_the_parents_ring_node(tmp_path):
    with AnsweringUA() as ua, worker_proxy(tmp_path / "a") as a:
        b = worker_proxy(tmp_path / "b", workers=1, bootstrap=(a.overlay_address,))
        with b:
            serving(a)
            wait_until(lambda: sip_options_ping("127.0.0.1", b.port) is not None, 30, what="b not serving SIP")
            answer = register(b.port, "carol", f"sip:carol@127.0.0.1:{ua.port}")
            assert answer is not None and answer.startswith("SIP/2.0 200"), answer
            for _ in range(8):  # fresh sockets: both of a's workers look carol up in the ring
                wait_until(lambda: (message(a.port, "carol") or "").startswith("SIP/2.0 200"), 10,
                           what="a's workers do not find carol through the ring")
            assert sum("MESSAGE sip:carol@" in r for r in ua.requests) >= 8


REGISTER_XML = scenario("register", """  <send retrans="500">
    <![CDATA[
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:k[call_number]@example.com>;tag=[pid]SIPpTag00[call_number]
To: <sip:k[call_number]@example.com>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:k[call_number]@127.0.0.1:[local_port]>
Expires: 600
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
""", expect_response(200))


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")
def test_a_killed_worker_is_restarted_and_no_registration_is_lost(tmp_path):
    calls = 600
    with worker_proxy(tmp_path / "proxy") as proxy:
        serving(proxy)
        before = worker_pids(proxy.process.pid)
        assert len(before) == 2
        # one socket per call (-t un): the calls spread over both workers
        sipp = start_sipp(REGISTER_XML, f"127.0.0.1:{proxy.port}", "-t", "un", "-r", "60", "-max_socket", "1000",
                          calls=calls, timeout=60, workdir=tmp_path)
        wait_until(lambda: len(registrations(proxy)) >= 150, 20, what="sipp registered nobody")
        victim = sorted(before)[1]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(worker_pids(proxy.process.pid) - before) == 1, 20, what="the worker was not restarted")
        wait_until(lambda: proxy.log_path.read_text().count("bindings from the parent; serving SIP") >= 3, 30,
                   what=lambda: proxy.log_tail(20))
        result = sipp.wait()
        assert result.ok, str(result)  # the dead worker's calls were retransmitted to the living one
        expected = {f"k{i}@{DOMAIN}" for i in range(1, calls + 1)}
        assert registrations(proxy) >= expected
        # both workers, the new one included, know every binding
        serving(proxy)
        for i in range(1, calls + 1, 25):
            answer = udp_final_response(proxy.port, lambda lport: register_request(f"k{i}@{DOMAIN}", None, via_port=lport))
            assert answer is not None and f"<sip:k{i}@127.0.0.1:" in answer, answer


class TCPPhone:
    """A phone registered over one TCP connection, answering 200 to every
    request that comes down it (a thread reads it)."""

    def __init__(self, proxy_port: int, user: str) -> None:
        import socket
        import threading

        self.sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
        self.port = self.sock.getsockname()[1]
        self.user = user
        self.requests: list[str] = []
        self.buf = b""
        reg = register_request(f"{user}@{DOMAIN}", f"sip:{user}@127.0.0.1:{self.port};transport=tcp",
                               via_port=self.port).replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        self.sock.sendall(reg.encode())
        self.registered = self._read()
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read(self) -> str | None:
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                length = int(m.group(1)) if m else 0
                if len(rest) >= length:
                    self.buf = rest[length:]
                    return (head + sep + rest[:length]).decode()
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def _serve(self) -> None:
        from sosimple_proxy.testing.ua import answer_200

        self.sock.settimeout(0.5)
        while not self._stop:
            try:
                msg = self._read()
            except Exception:
                continue
            if msg is None or msg.startswith("SIP/2.0"):
                continue
            self.requests.append(msg)
            self.sock.sendall(answer_200(msg).encode())

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def test_a_phone_on_one_workers_tcp_connection_is_reached_from_every_worker(tmp_path):
    with worker_proxy(tmp_path / "proxy") as proxy:
        serving(proxy)
        phone = TCPPhone(proxy.port, "tcpbob")
        try:
            assert phone.registered is not None and phone.registered.startswith("SIP/2.0 200"), phone.registered
            for i in range(16):  # fresh UDP sockets: both workers forward, over the one connection
                answer = message(proxy.port, "tcpbob")
                assert answer is not None and answer.startswith("SIP/2.0 200"), (i, answer)
            tags = {m.group(1) for r in phone.requests for m in [re.search(r"branch=[^;\s]+\.w(\d+)", r)] if m}
            assert tags == {"0", "1"}, tags
            assert len(phone.requests) == 16  # over TCP nobody retransmits: each answer reached its transaction
        finally:
            phone.close()


class RingingUA:
    """A UDP UA that answers INVITE 180 and nothing more until it is
    cancelled (then 200 to the CANCEL and 487 to the INVITE)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.invites: dict[str, str] = {}
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from sosimple_proxy.testing.ua import answer_200

        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            text = data.decode()
            if text.startswith("SIP/2.0"):
                continue
            call_id = re.search(r"(?im)^call-id:\s*(\S+)", text).group(1)
            if text.startswith("INVITE"):
                self.invites[call_id] = text
                ringing = answer_200(text).replace("SIP/2.0 200 OK", "SIP/2.0 180 Ringing", 1)
                self.sock.sendto(ringing.encode(), addr)
            elif text.startswith("CANCEL"):
                self.sock.sendto(answer_200(text).encode(), addr)
                invite = self.invites.get(call_id)
                if invite:
                    final = answer_200(invite).replace("SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated", 1)
                    self.sock.sendto(final.encode(), addr)
            elif text.startswith("ACK"):
                pass

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def test_a_cancel_from_another_socket_finds_its_invite_in_the_other_worker(tmp_path):
    """A caller may send its CANCEL from another socket than its INVITE: the
    kernel may give it to the other worker, which passes it round."""
    import socket

    ua = RingingUA()
    try:
        with worker_proxy(tmp_path / "proxy") as proxy:
            serving(proxy)
            assert register(proxy.port, "ringer", f"sip:ringer@127.0.0.1:{ua.port}").startswith("SIP/2.0 200")
            for call in range(6):
                a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                a.bind(("127.0.0.1", 0))
                a.settimeout(5)
                lport = a.getsockname()[1]
                ruri = f"sip:ringer@{DOMAIN}"
                invite = sip_request("INVITE", ruri, to=ruri, from_="sip:caller@example.com", via_port=lport,
                                     call_id=f"cancel-{call}", headers=(f"Contact: <sip:caller@127.0.0.1:{lport}>",))
                a.sendto(invite.encode(), ("127.0.0.1", proxy.port))
                got = ""
                while " 180 " not in got.split("\r\n", 1)[0]:
                    got = a.recv(65535).decode()
                cancel = re.sub(r"^INVITE ", "CANCEL ", invite).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
                cancel = re.sub(r"(?m)^Contact:.*\r\n", "", cancel)
                answer = udp_final_response(proxy.port, lambda _lport, c=cancel: c)
                assert answer is not None and answer.startswith("SIP/2.0 200"), (call, answer)
                final = ""
                while not final.startswith("SIP/2.0 4"):
                    final = a.recv(65535).decode()
                assert final.startswith("SIP/2.0 487"), final
                a.close()
    finally:
        ua.close()


def test_sighup_to_the_parent_reloads_every_worker(tmp_path):
    with AnsweringUA() as old, AnsweringUA() as new:
        port = free_port("both")
        proxy = PeerProcess(
            {
                "proxy": {"listen": f"udp:127.0.0.1:{port}", "domains": DOMAIN, "workers": "2"},
                "location": {"order": "local routes"},
                "auth": {"trusted": "127.0.0.1"},
                "routes": {"other.test": f"sip:127.0.0.1:{old.port}"},
            },
            workdir=tmp_path / "proxy",
        )
        proxy.port = port
        with proxy:
            serving(proxy)
            proxy.ini_path.write_text(proxy.ini_path.read_text().replace(f"127.0.0.1:{old.port}", f"127.0.0.1:{new.port}"))
            os.kill(proxy.process.pid, signal.SIGHUP)
            wait_until(lambda: proxy.log_path.read_text().count("SIGHUP: 1 routes") >= 2, 15,
                       what=lambda: proxy.log_tail(30))
            for i in range(12):  # fresh sockets: both workers
                ruri = f"sip:x{i}@other.test"
                answer = udp_final_response(port, lambda lport, r=ruri: sip_request(
                    "MESSAGE", r, to=r, from_=f"a@{DOMAIN}", via_port=lport, headers=("Content-Type: text/plain",),
                    body="hi"))
                assert answer is not None and answer.startswith("SIP/2.0 200"), answer
            assert len(new.requests) == 12 and not old.requests
