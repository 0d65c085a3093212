"""Flood, end to end (issue 10): the proxy under twistd on loopback, a
source sending at 5x ``[limits] requests_per_second`` from 127.0.0.2, and
well-behaved sipp traffic (REGISTER and MESSAGE) from 127.0.0.3 at the same
time.  The flooder is answered until its bucket is empty, then gets one 503
with Retry-After, then silence until its ban ends; the others never notice.
The admin API lists the ban with its reason and lifts it early; TCP
connections over the caps are closed at once, and a sender that trickles a
message is closed at ``[sip] message_timeout``.

Linux routes all of 127.0.0.0/8 to the loopback interface, so each address
is a distinct source.  Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from sosimple_proxy.testing import AnsweringUA, ProxyProcess, options_request
from sosimple_proxy.testing.sipp import SIPP, assert_sipp_ok, start_sipp
from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario, send_message_step

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")

RATE = 20  # [limits] requests_per_second, and burst
BAN = 10  # [limits] ban_seconds: outlasts the sipp runs (5 s) with room to spare
FLOOD_RATE = 5 * RATE
FLOOD_SECONDS = 3.0
NORMAL_RATE = 5  # each of REGISTER and MESSAGE from 127.0.0.3: 10/s together, half the limit
NORMAL_CALLS = 25  # 5 s of each

FLOODER = "127.0.0.2"
GOOD = "127.0.0.3"
UA_HOST = "127.0.0.4"

REGISTER_STEP = """  <send retrans="500">
    <![CDATA[
REGISTER sip:localhost SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: 70
From: <sip:user[call_number]@localhost>;tag=[pid]SIPpTag00[call_number]
To: <sip:user[call_number]@localhost>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:user[call_number]@[local_ip]:[local_port]>
Expires: 600
Content-Length: 0

    ]]>
  </send>
"""


class Flooder:
    """OPTIONS to the proxy from one UDP socket on ``host``, each a new
    transaction; keeps every status line that comes back, with when."""

    def __init__(self, host: str, proxy: tuple[str, int]) -> None:
        self.proxy = proxy
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.host, self.port = self.sock.getsockname()
        self.answers: list[tuple[float, str, str]] = []  # (when, status line, whole text)
        self.sent: list[float] = []

    def send(self) -> None:
        self.sock.sendto(options_request(*self.proxy, self.host, self.port), self.proxy)
        self.sent.append(time.monotonic())

    def drain(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.01)
                continue
            text = data.decode("utf-8", "replace")
            self.answers.append((time.monotonic(), text.split("\r\n", 1)[0], text))

    def flood(self, rate: int, seconds: float) -> None:
        """``rate`` requests a second for ``seconds``, paced; at most
        rate x seconds requests, whatever happens."""
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send()
            self.drain()
        self.drain(wait=1.0)

    def answered(self, timeout: float) -> str | None:
        """One OPTIONS; its status line if answered within ``timeout``."""
        before = len(self.answers)
        self.send()
        self.drain(wait=timeout)
        got = self.answers[before:]
        return got[0][1] if got else None

    def close(self) -> None:
        self.sock.close()


def register(proxy: tuple[str, int], aor: str, contact: str, host: str) -> str | None:
    """One REGISTER from ``host``; its final status line, or None."""
    from sosimple_proxy.testing import register_request

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.settimeout(3)
        s.sendto(register_request(aor, contact, via_port=s.getsockname()[1], via_host=host).encode(), proxy)
        try:
            return s.recv(65536).decode().split("\r\n", 1)[0]
        except socket.timeout:
            return None


@pytest.fixture
def proxy(tmp_path):
    p = ProxyProcess(
        {"limits": {"requests_per_second": RATE, "burst": RATE, "ban_seconds": BAN}},
        workdir=tmp_path / "proxy",
    )
    with p:
        yield p


def test_flood_is_answered_503_then_ignored_while_others_carry_on(proxy, tmp_path):
    target = ("127.0.0.1", proxy.port)
    with AnsweringUA(UA_HOST) as ua:
        assert register(target, "bob@localhost", f"sip:bob@{UA_HOST}:{ua.port}", GOOD) == "SIP/2.0 200 OK"
        common = ("-default_behaviors", "all,-bye", "-r", str(NORMAL_RATE), "-recv_timeout", "5000",
                  f"127.0.0.1:{proxy.port}")
        registers = start_sipp(
            scenario("REGISTER from a well-behaved source", REGISTER_STEP, expect_response(200)),
            *common, calls=NORMAL_CALLS, timeout=30, local_ip=GOOD, local_port=0, workdir=tmp_path,
        )
        messages = start_sipp(
            scenario("MESSAGE from a well-behaved source",
                     send_message_step("sip:bob@localhost", "still here", from_uri="sip:carol@localhost"),
                     expect_response(200)),
            *common, calls=NORMAL_CALLS, timeout=30, local_ip=GOOD, local_port=0, workdir=tmp_path,
        )
        flooder = Flooder(FLOODER, target)
        try:
            flooder.flood(FLOOD_RATE, FLOOD_SECONDS)
            ignored = flooder.answered(timeout=0.5)
            assert_sipp_ok(registers.wait(), messages.wait())
            assert sum("still here" in r for r in ua.requests) == NORMAL_CALLS

            statuses = [line for _, line, _ in flooder.answers]
            refusals = [i for i, line in enumerate(statuses) if line.startswith("SIP/2.0 503")]
            assert len(refusals) == 1, statuses
            assert all(line == "SIP/2.0 200 OK" for line in statuses[: refusals[0]])
            assert refusals[0] == len(statuses) - 1, "nothing after the 503: the source is banned"
            # The bucket's burst and what it refilled while they were sent.
            assert RATE <= refusals[0] <= 2 * RATE, statuses
            assert len(flooder.sent) == FLOOD_RATE * FLOOD_SECONDS + 1  # the flood and one more
            banned_at, line, text = flooder.answers[-1]
            assert re.search(r"\r\nRetry-After: *(\d+)", text).group(1) == str(BAN)
            assert "requests/s" in line

            # Silence until the ban ends, then answers again, on time.
            assert ignored is None
            assert time.monotonic() < banned_at + BAN - 2, "too slow to see the ban from inside"
            time.sleep(max(0.0, banned_at + BAN - 1.5 - time.monotonic()))
            assert flooder.answered(timeout=0.5) is None
            deadline = banned_at + BAN + 3
            answer = None
            while answer is None and time.monotonic() < deadline:
                answer = flooder.answered(timeout=0.3)
            assert answer == "SIP/2.0 200 OK", f"still banned {time.monotonic() - banned_at:.1f} s after the ban"
        finally:
            flooder.close()
    log = proxy.log_path.read_text()
    assert len(re.findall(rf"banned {re.escape(FLOODER)} for", log)) == 1, "one log line per ban"
    assert re.search(rf"unbanned {re.escape(FLOODER)} \(expired\)", log)
    assert GOOD not in "".join(line for line in log.splitlines() if "banned" in line)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the proxy closes ``sock`` within ``seconds`` (reads until EOF)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
    return False


def test_tcp_connections_over_the_caps_are_closed_at_once_and_slow_senders_at_their_deadline(tmp_path):
    p = ProxyProcess(
        {"limits": {"max_connections_per_source": 3}, "sip": {"message_timeout": 2}},
        workdir=tmp_path / "proxy",
    )
    with p:
        kept, refused = [], []
        try:
            for _ in range(3):
                s = socket.create_connection(("127.0.0.1", p.port), timeout=3, source_address=("127.0.0.5", 0))
                kept.append(s)
            for _ in range(4):
                try:
                    s = socket.create_connection(("127.0.0.1", p.port), timeout=3, source_address=("127.0.0.5", 0))
                except ConnectionResetError:
                    continue  # the proxy's reset beat connect() back: closed at once indeed
                refused.append(s)
                assert closed_within(s, 2.0), "a connection over max_connections_per_source stays open"
            assert not any(closed_within(s, 0.2) for s in kept)
            # Another source is not affected.
            other = socket.create_connection(("127.0.0.1", p.port), timeout=3, source_address=("127.0.0.6", 0))
            kept.append(other)
            assert not closed_within(other, 0.2)
            # A sender that trickles one header line, a byte every 0.4 s, is
            # closed at the message deadline although it is never idle.
            trickler = kept[0]
            trickler.sendall(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.5")
            start = time.monotonic()
            closed = False
            for _ in range(20):  # at most 8 s
                try:
                    trickler.sendall(b"5")
                except OSError:
                    closed = True
                    break
                if closed_within(trickler, 0.4):
                    closed = True
                    break
            took = time.monotonic() - start
            assert closed and 1.5 <= took <= 4.0, f"closed={closed} after {took:.1f} s"
        finally:
            for s in kept + refused:
                s.close()
        log = p.log_path.read_text()
        assert len(re.findall(r"connection refused", log)) == 1, "one line per source, not per connection"
        assert "no complete message within 2s" in log


def http(method: str, url: str) -> tuple[int, bytes]:
    """One admin API call; (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_admin_api_lists_a_ban_with_its_reason_and_lifts_it_early(tmp_path):
    import json

    from sosimple_proxy.testing import free_port

    admin = free_port("tcp")
    p = ProxyProcess(
        {
            "limits": {"requests_per_second": RATE, "burst": RATE, "ban_seconds": 300},
            "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"},
        },
        workdir=tmp_path / "proxy",
    )
    api = f"http://127.0.0.1:{admin}"
    with p:
        flooder = Flooder(FLOODER, ("127.0.0.1", p.port))
        try:
            flooder.flood(FLOOD_RATE, 1.0)
            assert flooder.answers[-1][1].startswith("SIP/2.0 503")
            assert flooder.answered(timeout=0.5) is None
            status, body = http("GET", f"{api}/limits")
            assert status == 200
            [ban] = json.loads(body)["banned"]
            assert ban["address"] == FLOODER
            assert "requests/s" in ban["reason"]
            assert 290 <= ban["remaining"] <= 300
            assert http("DELETE", f"{api}/limits/banned/{FLOODER}")[0] == 204
            assert flooder.answered(timeout=2.0) == "SIP/2.0 200 OK", "the ban was lifted"
            assert json.loads(http("GET", f"{api}/limits")[1])["banned"] == []
            assert http("DELETE", f"{api}/limits/banned/{FLOODER}")[0] == 404
        finally:
            flooder.close()
        log = p.log_path.read_text()
        assert re.search(rf"unbanned {re.escape(FLOODER)} \(lifted by the administrator\)", log)
