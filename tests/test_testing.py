"""The test helpers in sosimple_proxy.testing: ports and the retries of a
lost bind race, the process helpers (against a stand-in process, and
real ones), pollers, request builders and the in-process fakes."""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time

import pytest
from twisted.internet.task import Clock

from sosimple_proxy import testing
from sosimple_proxy.testing import baresip as baresip_module
from sosimple_proxy.testing import ports as ports_module
from sosimple_proxy.testing import proxy as proxy_module
from sosimple_proxy.testing import sipp as sipp_module
from sosimple_proxy.testing import ua as ua_module
from sosimple_proxy.testing import (
    SIPP_OPTIONS_SCENARIO,
    ProxyProcess,
    ProxyStartError,
    bound_by,
    free_port,
    free_ports,
    run_sipp,
    start_sipp,
)

needs_sipp = pytest.mark.skipif(testing.SIPP is None, reason="sipp (sip-tester) is not installed")

# A stand-in for the proxy: answers every request with 200, copying the
# headers a UA needs to match the response.  argv: host port [ignore-term]
RESPONDER = r"""
import signal, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
if len(sys.argv) > 3:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, port))
print("responder up", flush=True)
while True:
    data, addr = s.recvfrom(65536)
    lines = data.decode("utf-8", "replace").split("\r\n")
    keep = [l for l in lines[1:] if l.split(":", 1)[0].strip().lower() in ("via", "from", "to", "call-id", "cseq", "v", "f", "t", "i")]
    s.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n").encode(), addr)
"""


def responder(*extra: str) -> list[str]:
    return [sys.executable, "-c", RESPONDER, "{host}", "{port}", *extra]


def test_free_port_udp_tcp_both():
    for transport in ("udp", "tcp", "both"):
        port = free_port(transport)
        kinds = {"udp": [socket.SOCK_DGRAM], "tcp": [socket.SOCK_STREAM], "both": [socket.SOCK_DGRAM, socket.SOCK_STREAM]}
        for kind in kinds[transport]:
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))
    ports = free_ports(20, "udp")
    assert len(set(ports)) == 20


def test_free_port_v6():
    try:
        port = free_port("udp", "::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", port))


def test_default_config_is_valid_and_on_free_ports():
    from sosimple_proxy.config import parse_config
    from sosimple_proxy.sip.address import ListenAddress

    p = ProxyProcess({"proxy": {"domains": "example.com"}})
    try:
        cfg = parse_config(p.config_text)
        assert cfg.proxy["listen"] == (ListenAddress("udp", "127.0.0.1", p.port), ListenAddress("tcp", "127.0.0.1", p.port))
        assert cfg.proxy["domains"] == ("example.com",)
        assert p.ini_path.read_text() == p.config_text
        assert p.udp_address == ("127.0.0.1", p.port)
        argv = p.argv()
        assert argv[0] == sys.executable and argv[-3:] == ["sosimple-proxy", "-c", str(p.ini_path)]
        assert str(testing.REPO_ROOT) in p.environ()["PYTHONPATH"].split(":")
    finally:
        p.cleanup()
    assert not p.dir.exists()


def test_start_waits_for_options_answer_and_stops():
    with ProxyProcess(command=responder()) as p:
        assert p.running
        assert p.ready_response.startswith(b"SIP/2.0 200 OK\r\n")
        assert b"CSeq: 1 OPTIONS" in p.ready_response
        assert testing.sip_options_ping(*p.udp_address) is not None
    assert not p.running
    assert p.returncode == -15  # SIGTERM


def test_stop_falls_back_to_sigkill():
    p = ProxyProcess(command=responder("ignore-term"), stop_timeout=0.5)
    try:
        p.start()
        t0 = time.monotonic()
        assert p.stop() == -9
        assert time.monotonic() - t0 < 5
        assert p.stop() == -9  # idempotent
    finally:
        p.cleanup()


def test_dies_early_gives_log_tail():
    p = ProxyProcess(command=[sys.executable, "-c", "import sys; print('site.ini: [sip] t1: boom'); sys.exit(1)"])
    with pytest.raises(ProxyStartError) as e:
        with p:
            pass
    assert "status 1" in str(e.value) and "[sip] t1: boom" in str(e.value)


def test_silent_process_times_out():
    p = ProxyProcess(command=[sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(60)"], startup_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(ProxyStartError) as e:
        p.start()
    assert time.monotonic() - t0 < 15
    assert "did not answer OPTIONS" in str(e.value) and "sleeping" in str(e.value)
    assert not p.running
    p.cleanup()


def test_real_twistd_bad_config_fails_with_one_line():
    # Runs the real plugin: a bad value must end startup with the config line.
    p = ProxyProcess({"sip": {"t1": "-1"}}, startup_timeout=60)
    with pytest.raises(ProxyStartError) as e:
        p.start()
    p.cleanup()
    assert "[sip] t1" in str(e.value), str(e.value)
    assert "status 1" in str(e.value)


@needs_sipp
def test_sipp_uac_against_sipp_uas():
    port = free_port("udp")
    uas = start_sipp("uas", "-p", str(port), calls=1, timeout=20)
    try:
        assert uas.port == port and bound_by(uas.process.pid, port, "udp")  # start_sipp waited for the bind
        uac = run_sipp("uac", f"127.0.0.1:{port}", "-p", str(free_port("udp")), calls=1, timeout=20)
    finally:
        server = uas.wait()
    assert uac.ok, str(uac)
    assert server.ok, str(server)
    assert "-i" in uac.args and "127.0.0.1" in uac.args and "4194304" in uac.args


@needs_sipp
def test_sipp_xml_text_scenario_and_timeout_exit():
    with ProxyProcess(command=responder()) as p:
        result = run_sipp(SIPP_OPTIONS_SCENARIO, f"127.0.0.1:{p.port}", calls=1, timeout=10)
        assert result.ok, str(result)
    # Nobody answers: the run ends on its own timeout with a failure status.
    silent = free_port("udp")
    result = run_sipp(SIPP_OPTIONS_SCENARIO, f"127.0.0.1:{silent}", calls=1, timeout=2)
    assert result.returncode == 255, str(result)


def test_scenario_must_exist():
    if testing.SIPP is None:
        pytest.skip("sipp is not installed")
    with pytest.raises(ValueError):
        testing.sipp_command("no-such-scenario.xml")


# --- ports


def test_free_ports_come_from_below_the_ephemeral_range():
    start = ports_module.ephemeral_start()
    got = free_ports(50, "both")
    assert len(set(got)) == 50
    assert all(1024 <= p < start for p in got), (got, start)


def test_each_process_starts_in_its_own_block_and_walks_the_whole_range():
    a = ports_module.PortRange(20000, 32768, "gw0")
    b = ports_module.PortRange(20000, 32768, "gw1")
    assert a.block != b.block
    first = list(itertools.islice(a.candidates(), 3))
    assert first == [20000 + a.block * 500 + i for i in range(3)]
    assert sorted(set(a.candidates()) | set(first)) == list(range(20000, 32768))
    with pytest.raises(ValueError):
        ports_module.PortRange(1024, 1100, "x")  # no room: free_port falls back to the kernel's ports


def test_bound_by_names_the_process_holding_a_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        t.bind(("127.0.0.1", 0))
        t.listen()
        assert bound_by(os.getpid(), u.getsockname()[1], "udp")
        assert bound_by(os.getpid(), t.getsockname()[1], "tcp")
        assert not bound_by(os.getpid(), u.getsockname()[1], "tcp") or u.getsockname()[1] == t.getsockname()[1]
    assert not bound_by(os.getpid(), free_port("udp"), "udp")


class HeldPort:
    """A port bound for UDP and listened on for TCP, as another program would."""

    def __init__(self, transport: str = "both") -> None:
        self.port = free_port(transport)
        self.socks = []
        if transport in ("udp", "both"):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", self.port))
            self.socks.append(u)
        if transport in ("tcp", "both"):
            t = socket.socket()
            t.bind(("127.0.0.1", self.port))
            t.listen()
            self.socks.append(t)

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def taken(monkeypatch):
    """``taken(module, transport)``: the next port ``module`` chooses is one
    another program holds (the lost race of a busy machine); later ones are
    free.  Returns the held port."""
    held: list[HeldPort] = []

    def take(module, transport="both", name="free_port"):
        h = HeldPort(transport)
        held.append(h)
        real = getattr(module, name)
        calls = []

        def first_taken(*a, **kw):
            calls.append(a)
            return h.port if len(calls) == 1 else real(*a, **kw)

        monkeypatch.setattr(module, name, first_taken)
        return h.port

    yield take
    for h in held:
        h.close()


def test_a_proxy_whose_chosen_port_was_taken_starts_on_another(taken):
    held = taken(proxy_module, "both")
    with ProxyProcess({"proxy": {"domains": "example.com"}}, startup_timeout=60) as p:
        assert p.attempts == 2 and p.port != held
        assert f"udp:127.0.0.1:{p.port}" in p.config_text
        assert testing.sip_options_ping("127.0.0.1", p.port, timeout=2.0).startswith(b"SIP/2.0 200 ")


def test_a_port_given_by_the_test_is_not_changed_behind_its_back():
    held = HeldPort("udp")
    try:
        p = ProxyProcess(command=responder(), port=held.port)
        with pytest.raises(ProxyStartError) as e:
            p.start()
        p.cleanup()
    finally:
        held.close()
    assert p.attempts == 1 and p.port == held.port
    assert "Address already in use" in str(e.value)


def test_a_stand_in_that_cannot_bind_is_retried_too(taken):
    held = taken(proxy_module, "both")
    with ProxyProcess(command=responder()) as p:
        assert p.attempts == 2 and p.port != held and p.running


def test_a_peer_whose_chosen_admin_port_was_taken_starts_on_another(taken):
    held = taken(proxy_module, "tcp")  # overlay first, then admin: the overlay port is the taken one
    with testing.PeerProcess(overlay={"stabilize_interval": 0.3}, startup_timeout=60) as peer:
        assert peer.attempts == 2 and held not in (peer.overlay_port, peer.admin_port)


@needs_sipp
def test_a_sipp_whose_chosen_port_was_taken_binds_another(taken):
    held = taken(sipp_module, "udp")
    uas = start_sipp("uas", calls=1, timeout=20, local_port=0)
    try:
        assert uas.port != held and bound_by(uas.process.pid, uas.port, "udp")
        uac = run_sipp("uac", f"127.0.0.1:{uas.port}", calls=1, timeout=20, local_port=0)
    finally:
        server = uas.wait()
    assert uac.ok, str(uac)
    assert server.ok, str(server)


@needs_sipp
def test_sipp_scenario_may_name_its_own_port(tmp_path):
    seen = []

    def scenario(port: int) -> str:
        seen.append(port)
        return SIPP_OPTIONS_SCENARIO

    with ProxyProcess(command=responder()) as p:
        result = run_sipp(scenario, f"127.0.0.1:{p.port}", timeout=10, local_port=0, workdir=tmp_path)
    assert result.ok, str(result)
    assert seen and result.args[result.args.index("-p") + 1] == str(seen[-1])


needs_baresip = pytest.mark.skipif(testing.BARESIP is None, reason="baresip is not installed")


@needs_baresip
@pytest.mark.parametrize("which", ["sip", "ctrl"])
def test_a_baresip_whose_chosen_port_was_taken_starts_on_another(taken, which):
    held = taken(baresip_module, "both", "baresip_port") if which == "sip" else taken(baresip_module, "tcp")
    with testing.Baresip("alice", 9, register=False, startup_timeout=15) as phone:
        assert phone.attempts == 2
        assert held not in (phone.sip_port, phone.ctrl_port)
        assert bound_by(phone.process.pid, phone.ctrl_port, "tcp")
        assert phone.command("callstat")["response"] is True


# --- polling


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_wait_until_returns_the_first_true_value_without_real_time():
    t = FakeTime()
    answers = iter([None, 0, [], "ready"])
    assert testing.wait_until(lambda: next(answers), timeout=1, interval=0.1, clock=t.clock, sleep=t.sleep) == "ready"
    assert t.slept == [0.1, 0.1, 0.1]


def test_wait_until_gives_up_after_its_timeout_naming_what_it_waited_for():
    t = FakeTime()
    with pytest.raises(testing.WaitTimeout, match="the ring to settle: not met within 1s"):
        testing.wait_until(lambda: False, timeout=1, interval=0.25, what=lambda: "the ring to settle", clock=t.clock, sleep=t.sleep)
    assert t.now == pytest.approx(101.0)
    assert isinstance(testing.WaitTimeout("x"), AssertionError)


def test_until_polls_on_the_reactor_clock():
    clock = Clock()
    state = {"n": 0}
    d = testing.until(lambda: state["n"] >= 3 and state["n"], timeout=5, interval=0.5, reactor=clock)
    got, failed = [], []
    d.addCallbacks(got.append, failed.append)
    for _ in range(3):
        assert got == []
        state["n"] += 1
        clock.advance(0.5)
    assert got == [3]
    late = testing.until(lambda: False, timeout=2, interval=0.5, reactor=clock)
    late.addErrback(failed.append)
    clock.pump([0.5] * 5)
    assert len(failed) == 1 and failed[0].check(testing.WaitTimeout)


# --- SIP requests and the answering UA


def test_request_builders_write_what_rfc_3261_requires():
    from sosimple_proxy.sip.parser import parse_message

    reg = parse_message(testing.register_request("alice@example.com", "sip:alice@127.0.0.1:5070", via_port=4000).encode())
    assert (reg.method, str(reg.uri)) == ("REGISTER", "sip:example.com")
    assert reg.headers.get("contact") == "<sip:alice@127.0.0.1:5070>" and reg.headers.get("expires") == "600"
    assert reg.top_via.branch.startswith("z9hG4bK") and reg.top_via.port == 4000
    query = testing.register_request("alice@example.com", None, via_port=4000, expires=None)
    assert "Contact" not in query and "Expires" not in query
    msg = parse_message(testing.message_request("bob@example.com", "alice@example.com", "héllo", via_port=4001).encode())
    assert (msg.method, str(msg.uri), msg.body) == ("MESSAGE", "sip:bob@example.com", "héllo".encode())
    assert msg.headers.get("content-length") == str(len("héllo".encode()))
    opts = parse_message(testing.options_request("::1", 5060, "::1", 4002))
    assert str(opts.uri) == "sip:[::1]:5060"


def test_exchange_with_an_answering_ua():
    with testing.AnsweringUA() as ua:
        assert testing.send_message(ua.port, "bob@example.com", "alice@example.com", "hi there") == "SIP/2.0 200 OK"
        assert ua.received("hi there")
        assert testing.register_contact(ua.port, "bob@example.com", "sip:bob@127.0.0.1:9") == "SIP/2.0 200 OK"
        answers = testing.udp_exchange(ua.port, lambda lport: testing.sip_request(
            "OPTIONS", "sip:bob@example.com", to="bob@example.com", from_="a@example.com", via_port=lport))
    assert len(answers) == 1 and ";tag=ua" in answers[0] and f"127.0.0.1:" in answers[0]
    assert testing.status_line(answers[0].encode()) == "SIP/2.0 200 OK"


def test_exchange_retransmits_a_lost_request():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lossy:
        lossy.bind(("127.0.0.1", 0))
        got: list[bytes] = []

        def serve() -> None:
            lossy.settimeout(5)
            got.append(lossy.recvfrom(65536)[0])  # the first is "lost"
            data, addr = lossy.recvfrom(65536)
            got.append(data)
            lossy.sendto(ua_module.answer_200(data.decode()).encode(), addr)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        line = testing.send_message(lossy.getsockname()[1], "b@example.com", "a@example.com", "again", timeout=5)
        thread.join(5)
    assert line == "SIP/2.0 200 OK" and len(got) == 2 and got[0] == got[1]


def test_exchange_with_nobody_is_empty():
    closed = free_port("udp")
    assert testing.udp_exchange(closed, b"OPTIONS sip:x SIP/2.0\r\n\r\n", timeout=0.5) == []
    assert testing.sip_options_ping("127.0.0.1", closed, timeout=0.2) is None


# --- in-process fakes


def test_recording_wire_and_tu_around_a_layer():
    from sosimple_proxy.testing.transaction import NEXT, request

    layer, clock, wire, tu = testing.make_layer()
    wire.fail_dests.add(NEXT)
    layer.send_request(request("OPTIONS"), NEXT)
    assert wire.first_lines() == ["OPTIONS sip:bob@example.com SIP/2.0"] and wire.times() == [0.0]
    clock.advance(0)
    assert tu.statuses == [503]  # a transport error is a 503 to the TU (RFC 3261 8.1.3.1)


def test_sim_ring_is_settled_and_answers():
    from sosimple_proxy.overlay.tuning import NodeConfig

    cluster = testing.sim_ring(6, seed=3, config=NodeConfig(m=32, stabilize_interval=1.0))
    assert len(cluster.joined()) == 6 and cluster.ring_correct()
    assert testing.ring_settled(cluster.joined())
    node = cluster.joined()[0]
    key = cluster.random_key()
    found = testing.run_until_answered(cluster, node.lookup(key))
    assert found.responsible.id == cluster.true_successor(key)
    assert testing.run_until_answered(cluster, 42) == 42


# --- SIPp scenarios from steps


@needs_sipp
def test_a_scenario_of_steps_runs_against_the_stand_in(tmp_path):
    from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario, send_message_step

    message = scenario("one MESSAGE", send_message_step("sip:bob@example.com", "hello & <bye>?"), expect_response(200))
    assert message.count("<send") == 1 and "Content-Length: [len]" in message
    with ProxyProcess(command=responder()) as p:
        result = run_sipp(message, f"127.0.0.1:{p.port}", timeout=10, workdir=tmp_path)
        testing.assert_sipp_ok(result)
        refused = run_sipp(
            scenario("expects 404", send_message_step("sip:bob@example.com", "x"), expect_response(404)),
            f"127.0.0.1:{p.port}", timeout=5, workdir=tmp_path,
        )
    with pytest.raises(AssertionError, match="sipp exit"):
        testing.assert_sipp_ok(result, refused)


def test_answer_step_copies_the_request_and_ere_escapes():
    from sosimple_proxy.testing.sipp_scenarios import answer_step, ere, receive_request, sent_messages

    plain = answer_step("200 OK", record_route=False, contact=False)
    assert "[last_Via:]" in plain and "[last_To:];tag=" in plain and "Record-Route" not in plain and "Contact" not in plain
    offer = answer_step("183 Session Progress", sdp=True, in_dialog=True)
    assert 'retrans="500"' in offer and "m=audio [media_port] RTP/AVP 0" in offer and "[last_To:]\n" in offer
    assert receive_request("ACK", crlf=True) == '  <recv request="ACK" crlf="true"/>\n'
    assert ere("sip:a.b@[::1]:5060;lr") == r"sip:a\.b@\[::1\]:5060;lr"
    trace = (
        "----------------------------------------------- 2026-12-02\nUDP message sent (400 bytes):\n\n"
        "MESSAGE sip:b@example.com SIP/2.0\nVia: x\n\n"
        "----------------------------------------------- 2026-12-02\nUDP message received [300] bytes :\n\n"
        "SIP/2.0 200 OK\nVia: x\n"
    )
    assert sent_messages(trace, "MESSAGE") == ["MESSAGE sip:b@example.com SIP/2.0\nVia: x"]
    assert sent_messages(trace, "INVITE") == []


def test_call_steps_write_a_dialog_from_the_invite_on():
    from sosimple_proxy.testing.sipp_scenarios import ack_bye_steps, ack_non_2xx_step, invite_step

    invite = invite_step("sip:bob@example.com", from_uri="sip:alice@example.com")
    assert "INVITE sip:bob@example.com SIP/2.0" in invite and "Contact: <sip:alice@[local_ip]" in invite
    assert "Content-Type: application/sdp" in invite and "m=audio" in invite
    ack = ack_non_2xx_step("sip:bob@example.com")
    assert "[last_Via:]" in ack and "[last_To:]" in ack and "CSeq: 1 ACK" in ack
    dialog = ack_bye_steps("sip:bob@example.com")
    assert dialog.index("CSeq: 1 ACK") < dialog.index("CSeq: 2 BYE") < dialog.index('<recv response="200" crlf="true"/>')
    assert dialog.count("[routes]") == 2 and dialog.count("[next_url]") == 2
