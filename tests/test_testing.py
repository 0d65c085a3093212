"""The test helpers in sosimple_proxy.testing, lightly: ports, the proxy
subprocess helper (against a stand-in process) and the SIPp wrappers."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from sosimple_proxy import testing
from sosimple_proxy.testing import (
    SIPP_OPTIONS_SCENARIO,
    ProxyProcess,
    ProxyStartError,
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
        time.sleep(0.3)  # let the UAS bind
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
