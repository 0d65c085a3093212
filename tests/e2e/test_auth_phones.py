"""Real phones authenticate (issue 10): baresip with a password (MD5: its
library gives up when the first challenge names SHA-256, so that proxy sets
``algorithms = MD5``) registers, messages and calls another baresip;
linphonec (``linphone-cli``) registers with SHA-256 under the default
``SHA-256 MD5`` and messages a sipp UAS registered as bob.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.users import add_user
from sosimple_proxy.testing import (
    BARESIP,
    LINPHONEC,
    SIPP,
    Baresip,
    Linphonec,
    ProxyProcess,
    free_port,
    sip_request,
    start_sipp,
    udp_final_response,
    wait_until,
)
from sosimple_proxy.testing.sipp import assert_sipp_ok
from sosimple_proxy.testing.sipp_scenarios import answer_step, receive_request, scenario

DOMAIN = "example.com"
WAIT = 15.0
PASSWORDS = {"alice": "secret-a", "bob": "secret-b"}


def users_file(tmp_path: Path) -> str:
    path = str(tmp_path / "users")
    for user, password in PASSWORDS.items():
        add_user(path, user, DOMAIN, password)
    return path


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (Debian package baresip)")
def test_baresips_register_with_passwords_message_and_call(tmp_path):
    config = {"proxy": {"domains": DOMAIN}, "auth": {"users_file": users_file(tmp_path), "algorithms": "MD5"}}
    with ProxyProcess(config) as proxy, \
            Baresip("bob", proxy.port, password=PASSWORDS["bob"], contacts=[f"sip:alice@{DOMAIN}"],
                    startup_timeout=WAIT) as bob, \
            Baresip("alice", proxy.port, password=PASSWORDS["alice"], contacts=[f"sip:bob@{DOMAIN}"],
                    startup_timeout=WAIT) as alice:
        try:
            for phone in (alice, bob):
                assert (200, "OK", 1) in phone.registrations(), phone.log_tail()
            text = f"hello-bob-{secrets.token_hex(6)}"
            alice.message(text)
            assert bob.wait_received("MESSAGE", text, timeout=WAIT).body.strip() == text
            got = bob.wait_received("MESSAGE", text, timeout=WAIT)
            assert not re.search(r"^Proxy-Authorization:", got.text, re.M | re.I), got.text  # consumed (22.3)

            alice.dial(f"sip:bob@{DOMAIN}")
            alice.wait_event("CALL_ESTABLISHED", WAIT, direction="outgoing", peeruri=f"sip:bob@{DOMAIN}")
            bob.wait_event("CALL_ESTABLISHED", WAIT, direction="incoming", peeruri=f"sip:alice@{DOMAIN}")
            bob.hangup()  # the callee's BYE: in-dialog, never challenged
            alice.wait_event("CALL_CLOSED", WAIT)
            bob.wait_event("CALL_CLOSED", WAIT)
        except BaseException:
            print(proxy.log_tail(80))
            raise


def register_sipp_uas(proxy_port: int, user: str, password: str, contact_port: int) -> None:
    """Register a sipp UAS's address as ``user`` with digest (SHA-256, the first challenge)."""

    def register(lport: int, cseq: int = 1, auth: str | None = None) -> str:
        headers = [f"Contact: <sip:{user}@127.0.0.1:{contact_port}>", "Expires: 120"]
        headers += [f"Authorization: {auth}"] if auth else []
        return sip_request("REGISTER", f"sip:{DOMAIN}", to=f"{user}@{DOMAIN}", from_=f"{user}@{DOMAIN}",
                           via_port=lport, cseq=cseq, headers=headers, call_id=f"reg-{user}-{contact_port}")

    first = udp_final_response(proxy_port, register)
    assert first is not None and first.startswith("SIP/2.0 401 "), first
    challenge = re.search(r"^WWW-Authenticate: *(.*)$", first, re.M).group(1).strip()
    assert "algorithm=SHA-256" in challenge
    value = answer_challenge(challenge, user, password, "REGISTER", f"sip:{DOMAIN}")
    ok = udp_final_response(proxy_port, lambda lport: register(lport, 2, value))
    assert ok is not None and ok.startswith("SIP/2.0 200 "), ok


@pytest.mark.skipif(LINPHONEC is None or SIPP is None, reason="needs linphonec (linphone-cli) and sipp")
def test_linphonec_registers_with_sha256_and_messages_a_sipp_uas(tmp_path):
    with ProxyProcess({"proxy": {"domains": DOMAIN}, "auth": {"users_file": users_file(tmp_path)}}) as proxy:
        bob_port = free_port("udp")
        register_sipp_uas(proxy.port, "bob", PASSWORDS["bob"], bob_port)
        text = f"hello-{secrets.token_hex(6)}"
        log_file = tmp_path / "bob.log"
        uas = start_sipp(scenario("bob", receive_request("MESSAGE"), answer_step("200 OK", record_route=False)),
                         "-trace_msg", "-message_file", str(log_file), calls=1, timeout=WAIT + 10,
                         workdir=tmp_path, local_port=bob_port)
        try:
            # start() returns once the REGISTER was answered 200 (after a 401)
            with Linphonec("alice", proxy.port, password=PASSWORDS["alice"], realm=DOMAIN,
                           workdir=tmp_path / "alice") as alice:
                assert re.search(r"^Authorization: .*algorithm=SHA-256", alice.log_text(), re.M), alice.log_text()[-3000:]
                alice.chat(f"sip:bob@{DOMAIN}", text)
                assert_sipp_ok(uas.wait())
                got = log_file.read_text()
                assert text in got and "MESSAGE sip:bob@127.0.0.1" in got, got
                # the MESSAGE was challenged 407 and sent again with SHA-256 credentials
                wait_until(lambda: re.search(r"^Proxy-Authorization: .*algorithm=SHA-256", alice.log_text(), re.M),
                           WAIT, what=lambda: alice.log_text()[-3000:])
        finally:
            uas.kill()


@pytest.mark.skipif(LINPHONEC is None or BARESIP is None, reason="needs linphonec (linphone-cli) and baresip")
def test_baresip_and_linphonec_register_with_passwords_message_and_call_over_tls(tmp_path):
    """Issue 10, "Over TLS": both phones authenticate over TLS (MD5, for
    baresip's sake; linphonec answers it too), message and call each other."""
    from tests.e2e.test_tls import Certs, tls_proxy

    certs = Certs(tmp_path)
    path = str(tmp_path / "users")
    for user in ("alice", "carol"):
        add_user(path, user, DOMAIN, f"pw-{user}")
    with tls_proxy(certs, {"auth": {"users_file": path, "algorithms": "MD5"}}) as proxy:
        tls = proxy.tls_port
        with Baresip("alice", tls, transport="tls", ca=certs.ca_pem, password="pw-alice",
                     contacts=[f"sip:carol@{DOMAIN}"], startup_timeout=WAIT) as alice, \
             Linphonec("carol", tls, proxy_host="localhost", transport="tls", ca=certs.ca_pem, password="pw-carol",
                       realm=DOMAIN, workdir=tmp_path / "carol") as carol:
            try:
                assert (200, "OK", 1) in alice.registrations(), alice.log_tail()
                assert re.search(r"^Authorization: .*algorithm=MD5", carol.log_text(), re.M | re.I)
                text = f"hello-alice-{secrets.token_hex(6)}"
                carol.chat(f"sip:alice@{DOMAIN}", text)
                assert alice.wait_received("MESSAGE", text, timeout=WAIT).transport == "TLS"
                carol.wait_delivered(1, WAIT)
                text = f"hello-carol-{secrets.token_hex(6)}"
                alice.message(text)
                carol.wait_output(re.escape(text), WAIT)
                # and a call: the INVITE is challenged (407) and answered with credentials
                carol.call(f"sip:alice@{DOMAIN}")
                carol.wait_output(rf"Call \d+ with sip:alice@{DOMAIN} connected", WAIT)
                alice.wait_event("CALL_ESTABLISHED", WAIT, direction="incoming", peeruri=f"sip:carol@{DOMAIN}")
                assert re.search(r"^Proxy-Authorization: .*", carol.log_text(), re.M | re.I), "the INVITE was not challenged"
                carol.terminate()
                alice.wait_event("CALL_CLOSED", WAIT)
            except BaseException:
                print(proxy.log_tail(80))
                raise
