"""Another SIP domain by RFC 3263: sip:carol@other.test through DNS.

A twisted.names DNS server (a subprocess on a loopback UDP port) serves
other.test: a NAPTR to _sip._udp.other.test, whose SRV records point at two
Kamailio instances (priority 10 and 20) on loopback ports.  carol, a sipp
UAS, is registered at both.  Our proxy runs under twistd with
`[location] order = local routes dns` and `[dns] servers` set to that DNS
server (nothing here asks the system's resolvers).  A call and a MESSAGE
from a sipp UAC through the proxy reach carol through the first Kamailio;
with the first one down, the second is used.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sosimple_proxy.testing import ProxyProcess, free_port, register_contact, run_sipp, sip_options_ping, start_sipp
from sosimple_proxy.testing.sipp_scenarios import (
    ack_bye_steps,
    answer_step,
    expect_response,
    invite_step,
    receive_request,
    scenario,
    send_message_step,
)
from tests.dnszone import DNSServerProcess

KAMAILIO = shutil.which("kamailio")
pytestmark = pytest.mark.skipif(KAMAILIO is None or shutil.which("sipp") is None, reason="kamailio and sipp needed")

KAMAILIO_CFG = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=1
auto_aliases=no
alias="other.test"
dns=no
rev_dns=no
use_dns_cache=no
dns_try_ipv6=no
disable_tcp=yes

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "sanity.so"

modparam("usrloc", "db_mode", 0)

request_route {
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (!sanity_check("17895", "7")) {
		exit;
	}
	if (has_totag()) {
		if (loose_route()) {
			route(RELAY);
			exit;
		}
		if (is_method("ACK")) {
			if (t_check_trans()) {
				route(RELAY);
			}
			exit;
		}
		sl_send_reply("404", "Not here");
		exit;
	}
	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			route(RELAY);
		}
		exit;
	}
	t_check_trans();
	if (is_method("INVITE")) {
		record_route();
	}
	if (uri != myself) {
		sl_send_reply("403", "Not our domain");
		exit;
	}
	if (is_method("REGISTER")) {
		if (!save("location")) {
			sl_reply_error();
		}
		exit;
	}
	if (!lookup("location")) {
		sl_send_reply("404", "Not Found");
		exit;
	}
	route(RELAY);
}

route[RELAY] {
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}
"""

UAC_CALL = scenario(
    "bob calls carol@other.test",
    invite_step("sip:carol@other.test", from_uri="sip:bob@example.com"),
    expect_response(100, optional=True),
    expect_response(180, optional=True),
    expect_response(200, rrs=True),
    ack_bye_steps("sip:carol@other.test", from_uri="sip:bob@example.com"),
)

UAC_MESSAGE = scenario(
    "bob messages carol@other.test",
    send_message_step("sip:carol@other.test", "TEXT", from_uri="sip:bob@example.com"),
    expect_response(100, optional=True),
    expect_response(200),
)

UAS_MESSAGE = scenario(
    "carol takes a MESSAGE",
    receive_request("MESSAGE", crlf=True),
    answer_step("200 OK", record_route=False, contact=False),
)


class Kamailio:
    """Kamailio in the foreground on udp:127.0.0.1:port, config checked first."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self.dir = workdir / f"kamailio-{port}"
        self.dir.mkdir()
        self.cfg = self.dir / "kamailio.cfg"
        self.cfg.write_text(KAMAILIO_CFG)
        self.log = self.dir / "kamailio.log"
        check = subprocess.run([KAMAILIO, "-c", "-f", str(self.cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr[-2000:]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [KAMAILIO, "-DD", "-E", "-f", str(self.cfg), "-m", "256", "-n", "1",
                 "-l", f"udp:127.0.0.1:{port}", "-Y", str(self.dir), "-w", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while sip_options_ping("127.0.0.1", port, timeout=0.2) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kamailio on {port} did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def other_test():
    """Two Kamailios for other.test, carol registered at both, the DNS
    server, and our proxy resolving through it."""
    workdir = Path(tempfile.mkdtemp(prefix="sosimple-dns-"))
    k1_port, k2_port, dns_port, carol_port = (free_port("udp") for _ in range(4))
    started: list = []
    try:
        k1 = Kamailio(workdir, k1_port)
        started.append(k1)
        k2 = Kamailio(workdir, k2_port)
        started.append(k2)
        for k in (k1, k2):
            assert register_contact(k.port, "carol@other.test", f"sip:carol@127.0.0.1:{carol_port}") == "SIP/2.0 200 OK"
        zone = {
            "origin": "other.test",
            "records": [
                ["other.test", "NAPTR", {"order": 10, "preference": 10, "flags": "s", "service": "SIP+D2U",
                                         "replacement": "_sip._udp.other.test", "ttl": 300}],
                ["_sip._udp.other.test", "SRV", {"priority": 10, "weight": 0, "port": k1_port, "target": "ka.other.test", "ttl": 300}],
                ["_sip._udp.other.test", "SRV", {"priority": 20, "weight": 0, "port": k2_port, "target": "kb.other.test", "ttl": 300}],
                ["ka.other.test", "A", {"address": "127.0.0.1", "ttl": 300}],
                ["kb.other.test", "A", {"address": "127.0.0.1", "ttl": 300}],
            ],
        }
        dns_server = DNSServerProcess(dns_port, zone)
        started.append(dns_server)
        proxy = ProxyProcess(
            {
                "proxy": {"domains": "example.com"},
                "location": {"order": "local routes dns"},
                # the test's peers on 127.0.0.1 are trusted: they may relay (the relay rule, issue 10)
                "auth": {"trusted": "127.0.0.1"},
                "dns": {"servers": f"127.0.0.1:{dns_port}"},
            },
            workdir=workdir / "proxy",
        )
        started.append(proxy.start())
        yield {"k1": k1, "k2": k2, "proxy": proxy, "carol": carol_port, "dir": workdir}
    finally:
        for p in reversed(started):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def carol_takes(env, scenario: str, run_uac, name: str):
    """carol's sipp UAS answers one call of ``scenario`` while ``run_uac``
    runs; the Via lines of what she received (from her message trace)."""
    trace = env["dir"] / f"carol-{name}.log"
    uas = start_sipp(scenario, "-trace_msg", "-message_file", str(trace), calls=1, timeout=15, workdir=env["dir"],
                     local_port=env["carol"])
    uac = run_uac()
    result = uas.wait()
    assert uac.ok, f"{uac}\n{env['proxy'].log_tail()}"
    assert result.ok, result
    text = trace.read_text(errors="replace")
    return [line for line in text.splitlines() if line.lower().startswith(("via:", "v:"))]


def through(vias: list[str], port: int) -> bool:
    return any(f"127.0.0.1:{port}" in v for v in vias)


def uac(env, scenario: str):
    return lambda: run_sipp(scenario, f"127.0.0.1:{env['proxy'].port}", calls=1, timeout=15, workdir=env["dir"])


def test_call_and_message_reach_carol_through_the_first_srv_target(other_test):
    env = other_test
    vias = carol_takes(env, "uas", uac(env, UAC_CALL), "call")
    assert through(vias, env["k1"].port) and not through(vias, env["k2"].port), vias
    vias = carol_takes(env, UAS_MESSAGE, uac(env, UAC_MESSAGE), "message")
    assert through(vias, env["k1"].port), vias
    assert through(vias, env["proxy"].port), vias


def test_with_the_first_srv_target_down_the_second_is_used(other_test):
    env = other_test
    env["k1"].stop()
    vias = carol_takes(env, UAS_MESSAGE, uac(env, UAC_MESSAGE), "failover-message")
    assert through(vias, env["k2"].port) and not through(vias, env["k1"].port), vias
    # the dead target is now avoided: the call goes to the second at once
    started = time.monotonic()
    vias = carol_takes(env, "uas", uac(env, UAC_CALL), "failover-call")
    assert through(vias, env["k2"].port), vias
    assert time.monotonic() - started < 10
    log = (env["proxy"].dir / "twistd.log").read_text(errors="replace")
    assert f"127.0.0.1:{env['k1'].port} avoided" in log
