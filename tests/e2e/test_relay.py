"""No open relay, no toll fraud, end to end (issue 10): one proxy with users
(so ``[auth] required`` is yes), nothing trusted, a static route, a DNS
domain served by a loopback DNS server, a toll gateway and an emergency
gateway.  Sipp UASs stand at the route and at the toll gateway and must
receive nothing; a foreign domain's call to a registered user is delivered,
and the BYEs of its dialog pass both ways.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.testing import (
    SIPP,
    AnsweringUA,
    ProxyProcess,
    SippProcess,
    free_port,
    run_sipp,
    sip_request,
    start_sipp,
    udp_final_response,
)
from sosimple_proxy.testing.sipp import assert_sipp_ok
from sosimple_proxy.testing.sipp_scenarios import (
    ack_bye_steps,
    answer_step,
    expect_response,
    invite_step,
    receive_request,
    scenario,
)
from tests.dnszone import DNSServerProcess

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The proxy and its next hops: {"proxy", "route", "dns", "gateway", "emergency", "dir"}."""
    workdir = tmp_path_factory.mktemp("relay")
    users = workdir / "users"
    users.write_text("".join(UserEntry.from_password(u, DOMAIN, p).line() + "\n"
                             for u, p in (("alice", "secret"), ("bob", "hunter2"))))
    route_port, dns_target, gw_port, dns_port = free_port("udp"), free_port("udp"), free_port("udp"), free_port("udp")
    emergency = AnsweringUA()
    zone = {
        "origin": "dns.test",
        "records": [
            ["_sip._udp.dns.test", "SRV", {"priority": 10, "weight": 0, "port": dns_target, "target": "h.dns.test",
                                           "ttl": 300}],
            ["h.dns.test", "A", {"address": "127.0.0.1", "ttl": 300}],
        ],
    }
    dns = DNSServerProcess(dns_port, zone)
    proxy = ProxyProcess(
        {
            "proxy": {"domains": DOMAIN},
            "location": {"order": "local routes dns pstn"},
            "routes": {"other.test": f"sip:127.0.0.1:{route_port}"},
            "dns": {"servers": f"127.0.0.1:{dns_port}"},
            "auth": {"users_file": str(users)},
            "pstn": {"country_code": "1", "local_patterns": r"^(911)$ => +\1", "emergency": "911 112",
                     "probe_interval": "0"},
            "gateway:toll": {"uri": f"sip:127.0.0.1:{gw_port}", "prefixes": "+1"},
            "gateway:emergency": {"uri": f"sip:127.0.0.1:{emergency.port}", "prefixes": "+911"},
        },
        workdir=workdir / "proxy",
    )
    try:
        proxy.start()
        yield {"proxy": proxy, "route": route_port, "dns": dns_target, "gateway": gw_port,
               "emergency": emergency, "dir": workdir}
    finally:
        proxy.stop()
        dns.stop()
        emergency.close()


def silent_uas(port: int, workdir: Path) -> tuple[SippProcess, Path]:
    """A sipp UAS that would answer an INVITE; its message log shows what reached it."""
    log = workdir / f"uas-{port}-{uuid.uuid4().hex[:6]}.log"
    xml = scenario("next hop", receive_request("INVITE"), answer_step("200 OK"))
    uas = start_sipp(xml, "-trace_msg", "-message_file", str(log), calls=1, timeout=30, workdir=workdir,
                     local_port=port)
    return uas, log


def invite(ruri: str, from_uri: str, *, to_tag: str | None = None, headers: tuple[str, ...] = ()) -> object:
    def build(lport: int) -> str:
        text = sip_request("INVITE", ruri, to=ruri, from_=from_uri, via_port=lport,
                           headers=(f"Contact: <sip:x@127.0.0.1:{lport}>", *headers))
        return text.replace(f"To: <{ruri}>", f"To: <{ruri}>;tag={to_tag}") if to_tag else text
    return build


def status(answer: str | None) -> int:
    assert answer is not None, "no final answer"
    return int(answer.split(" ", 2)[1])


def test_strangers_reach_no_route_dns_gateway_or_preloaded_next_hop(site):
    port, gw = site["proxy"].port, site["gateway"]
    route_uas, route_log = silent_uas(site["route"], site["dir"])
    gw_uas, gw_log = silent_uas(gw, site["dir"])
    dns_uas, dns_log = silent_uas(site["dns"], site["dir"])  # where the zone's SRV record leads
    try:
        attempts = {
            "pstn, foreign From": (invite("tel:+15551234567", "sip:x@evil.test"), {403}),
            "pstn, our From without credentials": (invite(f"sip:+15551234567@{DOMAIN};user=phone",
                                                          f"sip:alice@{DOMAIN}"), {407}),
            "route": (invite("sip:x@other.test", "sip:x@evil.test"), {403}),
            "route, our From": (invite("sip:x@other.test", f"sip:bob@{DOMAIN}"), {407}),
            "dns": (invite("sip:x@dns.test", "sip:x@evil.test"), {403}),
            "preloaded Route to the gateway, made-up To tag": (
                invite(f"sip:+15551234567@127.0.0.1:{gw}", "sip:x@evil.test", to_tag="madeup",
                       headers=(f"Route: <sip:127.0.0.1:{gw};lr>",)), {403}),
            "preloaded Route through us to the gateway": (
                invite(f"sip:+15551234567@127.0.0.1:{gw}", "sip:x@evil.test",
                       headers=(f"Route: <sip:127.0.0.1:{port};lr>, <sip:127.0.0.1:{gw};lr>",)), {403}),
        }
        for what, (request, expected) in attempts.items():
            answer = udp_final_response(port, request)
            assert status(answer) in expected, (what, answer)
    finally:
        results = [uas.kill() for uas in (route_uas, gw_uas, dns_uas)]
    for log in (route_log, gw_log, dns_log):
        text = log.read_text() if log.exists() else ""
        assert "INVITE" not in text, text
    assert all(r.returncode != 0 for r in results)  # none completed a call


def test_an_emergency_number_from_our_domain_reaches_the_gateway_without_credentials(site):
    answer = udp_final_response(site["proxy"].port, invite(f"sip:911@{DOMAIN}", f"sip:alice@{DOMAIN}"))
    assert status(answer) == 200, answer
    assert any(r.startswith("INVITE sip:+911@") for r in site["emergency"].requests)


def register_with_password(proxy_port: int, user: str, password: str, contact_port: int) -> None:
    call_id = f"reg-{uuid.uuid4().hex[:8]}"

    def register(lport: int, cseq: int = 1, auth: str | None = None) -> str:
        headers = [f"Contact: <sip:{user}@127.0.0.1:{contact_port}>", "Expires: 120"]
        headers += [f"Authorization: {auth}"] if auth else []
        return sip_request("REGISTER", f"sip:{DOMAIN}", to=f"{user}@{DOMAIN}", from_=f"{user}@{DOMAIN}",
                           via_port=lport, cseq=cseq, headers=headers, call_id=call_id)

    first = udp_final_response(proxy_port, register)
    assert status(first) == 401
    challenge = re.search(r"^WWW-Authenticate: *(.*)$", first, re.M).group(1).strip()
    value = answer_challenge(challenge, user, password, "REGISTER", f"sip:{DOMAIN}")
    ok = udp_final_response(proxy_port, lambda lport: register(lport, 2, value))
    assert status(ok) == 200, ok


CALLEE_HANGS_UP = """  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>
    </action>
  </recv>
""" + answer_step("200 OK", sdp=True) + receive_request("ACK") + """  <pause milliseconds="200"/>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
[routes]
From: <sip:bob@example.com>;tag=[pid]SIPpTag01[call_number]
To:[$caller]
Call-ID: [call_id]
CSeq: 1 BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
""" + expect_response(200, crlf=True)

CALLER_HANGS_UP_CALLEE = (
    receive_request("INVITE") + answer_step("200 OK", sdp=True) + receive_request("ACK")
    + receive_request("BYE") + answer_step("200 OK", in_dialog=True)
)


@pytest.mark.parametrize("who_hangs_up", ["caller", "callee"])
def test_a_foreign_domain_calls_our_user_and_both_byes_pass(site, who_hangs_up, tmp_path):
    proxy = site["proxy"]
    bob_port = free_port("udp")
    register_with_password(proxy.port, "bob", "hunter2", bob_port)
    ruri, caller = f"sip:bob@{DOMAIN}", "sip:carol@other.test"
    callee_xml = CALLEE_HANGS_UP if who_hangs_up == "callee" else CALLER_HANGS_UP_CALLEE
    uas = start_sipp(scenario("bob", callee_xml), "-recv_timeout", "8000", calls=1, timeout=15,
                     workdir=tmp_path, local_port=bob_port)
    if who_hangs_up == "caller":
        caller_steps = ack_bye_steps(ruri, from_uri=caller)
    else:
        # the ACK only (the first step of ack_bye_steps), then the callee's BYE
        ack = ack_bye_steps(ruri, from_uri=caller).split('  <pause milliseconds="100"/>')[0]
        caller_steps = ack + receive_request("BYE") + answer_step("200 OK", in_dialog=True)
    uac_xml = scenario(
        "carol", invite_step(ruri, from_uri=caller), expect_response(100, optional=True),
        expect_response(180, optional=True), expect_response(200, rrs=True), caller_steps,
    )
    result = run_sipp(uac_xml, f"127.0.0.1:{proxy.port}", "-recv_timeout", "8000", "-default_behaviors",
                      "all,-bye", timeout=15, workdir=tmp_path)
    assert_sipp_ok(result, uas.wait())


def test_an_emergency_call_from_a_banned_source_still_reaches_the_gateway(tmp_path):
    """[pstn] emergency numbers are never rate-limited or banned: a source
    banned for guessing passwords gets no answer to anything else, yet its
    call to 911 with a From of our domain reaches the emergency gateway."""
    banned = "127.0.0.9"
    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("alice", DOMAIN, "secret").line() + "\n")
    with AnsweringUA() as emergency, ProxyProcess(
        {
            "proxy": {"domains": DOMAIN},
            "location": {"order": "local pstn"},
            "auth": {"users_file": str(users), "algorithms": "MD5"},
            "limits": {"auth_failures": "2", "ban_seconds": "120"},
            "pstn": {"country_code": "1", "local_patterns": r"^(911)$ => +\1", "emergency": "911 112",
                     "probe_interval": "0"},
            "gateway:emergency": {"uri": f"sip:127.0.0.1:{emergency.port}", "prefixes": "+911"},
        },
        workdir=tmp_path / "proxy",
    ) as proxy:
        def register(lport: int, cseq: int = 1, auth: str | None = None, call_id: str = "guess") -> str:
            headers = [f"Contact: <sip:alice@{banned}:{lport}>"] + ([f"Authorization: {auth}"] if auth else [])
            return sip_request("REGISTER", f"sip:{DOMAIN}", to=f"alice@{DOMAIN}", from_=f"alice@{DOMAIN}",
                               via_port=lport, via_host=banned, cseq=cseq, headers=headers, call_id=call_id)

        for attempt in range(2):  # two wrong passwords: banned
            call_id = f"guess-{attempt}"
            first = udp_final_response(proxy.port, lambda p: register(p, call_id=call_id), source=banned)
            assert status(first) == 401, first
            challenge = re.search(r"^WWW-Authenticate: *(.*)$", first, re.M).group(1).strip()
            wrong = answer_challenge(challenge, "alice", "guess", "REGISTER", f"sip:{DOMAIN}")
            udp_final_response(proxy.port, lambda p: register(p, 2, wrong, call_id), source=banned, timeout=1.0)
        assert udp_final_response(proxy.port, lambda p: register(p, call_id="after"), source=banned,
                                  timeout=1.0) is None, "the source is not banned"

        def call_911(lport: int) -> str:
            return sip_request("INVITE", f"sip:911@{DOMAIN}", to=f"sip:911@{DOMAIN}", from_=f"alice@{DOMAIN}",
                               via_port=lport, via_host=banned, headers=(f"Contact: <sip:alice@{banned}:{lport}>",))

        answer = udp_final_response(proxy.port, call_911, source=banned)
        assert status(answer) == 200, answer
        assert any(r.startswith("INVITE sip:+911@") for r in emergency.requests)
