"""The proxy as an administrator meets it: twistd, site.ini, real sockets, sipp."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from sosimple_proxy.testing import (
    SIPP_OPTIONS_SCENARIO,
    SIPP_OPTIONS_SCENARIO_TEMPLATE,
    ProxyProcess,
    free_port,
    message_request,
    register_request,
    run_sipp,
    sip_options_ping,
    sip_request,
    status_line,
    udp_exchange,
)
from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario, send_message_step

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_twistd_lists_the_plugin():
    # Run from / so that only the installed project can provide the plugin.
    out = subprocess.run(TWISTD + ["--help"], cwd="/", capture_output=True, text=True, timeout=60)
    assert "sosimple-proxy" in out.stdout


def _run_with(tmp_path, text: str) -> subprocess.CompletedProcess:
    ini = tmp_path / "site.ini"
    ini.write_text(text)
    return subprocess.run(
        TWISTD + ["-n", "--pidfile=", "sosimple-proxy", "-c", str(ini)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "text, words",
    [
        ("[proxy]\nlisten = udp:127.0.0.1:notaport\n", "[proxy] listen"),
        ("[sip]\nt1 = soon\n", "[sip] t1"),
        ("[proxy]\nmax_message_size = tiny\n", "[proxy] max_message_size"),
        ("[auth]\nrequired = yes\n", "[auth] required: yes needs [auth] users_file (the users to authenticate)"),
        ("[proxy]\nlisten = tls:127.0.0.1:5061\n", "[proxy] listen: tls:127.0.0.1:5061 needs [tls] certificate and key, which are not set"),
        (
            "[proxy]\nlisten = tls:127.0.0.1:5061\n[tls]\ncertificate = missing.pem\nkey = missing.key\n",
            "site.ini: [tls] certificate: certificate missing.pem: no such file",
        ),
    ],
)
def test_bad_config_stops_with_one_line_and_status_1(tmp_path, text, words):
    port = free_port("both")
    result = _run_with(tmp_path, text.replace("[proxy]\n", f"[proxy]\ndomains = example.com\n") + f"\n[overlay]\nlisten =\n[admin]\nlisten =\n")
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert words in lines[0]
    assert "Traceback" not in result.stderr and "Usage" not in result.stderr
    # nothing was bound: the port we could have asked for is still free
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.close()


def test_missing_config_file_is_one_line(tmp_path):
    result = subprocess.run(
        TWISTD + ["-n", "--pidfile=", "sosimple-proxy", "-c", str(tmp_path / "absent.ini")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def proxy():
    with ProxyProcess({"proxy": {"domains": "example.com"}}) as p:
        yield p


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_to_the_proxy_gets_200(proxy, transport, tmp_path):
    result = run_sipp(SIPP_OPTIONS_SCENARIO, f"127.0.0.1:{proxy.port}", "-t", transport, calls=1, timeout=20,
                      workdir=tmp_path)
    assert result.ok, str(result)


def test_options_200_lists_allow_accept_supported(proxy):
    answer = sip_options_ping("127.0.0.1", proxy.port, timeout=2.0)
    assert answer is not None and answer.startswith(b"SIP/2.0 200 ")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    for name in (b"\r\nallow:", b"\r\naccept:", b"\r\nsupported:"):
        assert name in head


UNKNOWN_USER_SCENARIO = scenario(
    "MESSAGE to an unknown user", send_message_step("sip:nobody@example.com", "hello"), expect_response(404)
)


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_request_to_unknown_user_gets_404(proxy, transport, tmp_path):
    result = run_sipp(UNKNOWN_USER_SCENARIO, f"127.0.0.1:{proxy.port}", "-t", transport, calls=1, timeout=20,
                      workdir=tmp_path)
    assert result.ok, str(result)


def test_unimplemented_method_to_the_proxy_is_501(proxy, tmp_path):
    scenario = SIPP_OPTIONS_SCENARIO_TEMPLATE.format(expected=501).replace("OPTIONS", "FROBNICATE")
    result = run_sipp(scenario, f"127.0.0.1:{proxy.port}", "-t", "u1", calls=1, timeout=20, workdir=tmp_path)
    assert result.ok, str(result)


def test_malformed_request_over_udp_gets_400_naming_the_problem_and_proxy_survives(proxy):
    def bad(lport: int) -> str:  # the CSeq names another method than the request line
        good = sip_request("OPTIONS", "sip:user@example.com", to="user@example.com", from_="a@example.com", via_port=lport)
        return good.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE")

    answers = udp_exchange(proxy.port, bad, retransmit=False)
    line = status_line(answers[0]) if answers else None
    assert line is not None and line.startswith("SIP/2.0 400 "), answers
    reason = line[len("SIP/2.0 400 "):]
    assert "CSeq" in reason and "INVITE" in reason and "OPTIONS" in reason
    # still serving
    assert sip_options_ping("127.0.0.1", proxy.port, timeout=2.0).startswith(b"SIP/2.0 200 ")


def test_garbage_datagrams_are_dropped_and_proxy_survives(proxy):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for junk in (b"\xff" * 100, b"INVITE\r\n\r\n", b"SIP/2.0 200 OK\r\n\r\n", os.urandom(1500)):
        s.sendto(junk, ("127.0.0.1", proxy.port))
    s.close()
    assert sip_options_ping("127.0.0.1", proxy.port, timeout=2.0).startswith(b"SIP/2.0 200 ")
    assert proxy.running


def test_oversized_message_over_tcp_gets_513_and_close(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    lport = s.getsockname()[1]
    body = b"x" * 70000
    msg = (
        f"MESSAGE sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:{lport};branch=z9hG4bKbig\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:user@example.com>\r\n"
        f"Call-ID: big@test\r\nCSeq: 1 MESSAGE\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        s.sendall(msg)
    except OSError:
        pass  # the proxy may close while we still send
    data = b""
    try:
        while True:
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    assert data.startswith(b"SIP/2.0 513 ")


def test_port_in_use_stops_startup_with_one_line(tmp_path):
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    try:
        result = _run_with(
            tmp_path,
            f"[proxy]\nlisten = udp:127.0.0.1:{port}\ndomains = example.com\n[overlay]\nlisten =\n[admin]\nlisten =\n",
        )
    finally:
        busy.close()
    assert result.returncode == 1
    # Binding happens after twistd starts logging, so the line arrives through
    # its log (stdout without -l); it is still one line and no traceback.
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "site.ini:" in line]
    assert len(errors) == 1, result.stdout + result.stderr
    assert "[proxy] listen" in errors[0] and str(port) in errors[0] and "in use" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_icmp_port_unreachable_is_a_prompt_503_naming_the_hop(proxy):
    # bob's contact is a closed UDP port: the kernel's ICMP error must fail
    # the branch at once (RFC 3261 18.4), not after Timer F's 32 s.
    closed = free_port("udp")
    bob = f"icmp-{uuid.uuid4().hex[:8]}@example.com"
    register = udp_exchange(
        proxy.port, lambda lport: register_request(bob, f"sip:x@127.0.0.1:{closed}", via_port=lport, expires=None)
    )
    assert [status_line(a) for a in register] == ["SIP/2.0 200 OK"]
    answers = [status_line(a) for a in udp_exchange(proxy.port, lambda lport: message_request(bob, "a@example.com", "hi", via_port=lport))]
    assert answers and answers[-1].startswith("SIP/2.0 503 "), answers
    assert f"127.0.0.1:{closed}" in answers[-1]


def test_check_binds_nothing_and_writes_no_pid_file(tmp_path):
    # Every port the config names is held by the test: startup would stop
    # with "in use", --check says ok because it binds nothing.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    held = [udp, *tcp]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        for s in tcp:
            s.listen()
        sip_udp, sip_tcp, overlay, admin = (s.getsockname()[1] for s in held)
        ini = tmp_path / "site.ini"
        ini.write_text(
            f"[proxy]\nlisten = udp:127.0.0.1:{sip_udp}, tcp:127.0.0.1:{sip_tcp}\ndomains = example.com\n"
            f"[overlay]\nlisten = tcp:{overlay}:interface=127.0.0.1\n"
            f"[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n[location]\norder = local overlay\n"
        )
        # no --pidfile: the default twistd.pid must not be written either
        result = subprocess.run(
            TWISTD + ["sosimple-proxy", "-c", str(ini), "--check"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
    finally:
        for s in held:
            s.close()
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")
    assert not (tmp_path / "twistd.pid").exists() and not (tmp_path / "var").exists()


def test_check_prints_the_one_line_and_exits_1(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text("[proxy]\nlisten = udp:127.0.0.1:notaport\n[overlay]\nlisten =\n[admin]\nlisten =\n")
    result = subprocess.run(
        TWISTD + ["sosimple-proxy", "-c", str(ini), "--check"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("site.ini: [proxy] listen: ") and result.stderr.count("\n") == 1
