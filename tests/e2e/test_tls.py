"""SIP over TLS end to end (issue 10, "SIP over TLS"): the proxy under
twistd with a ``tls:`` listener and certificates made here, and real peers
over TLS: baresip, linphonec, sipp through stunnel; outbound TLS to a peer
whose certificate is refused fails over, with the reason in the log."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import ssl
from pathlib import Path

import pytest

from sosimple_proxy.testing import (
    BARESIP,
    LINPHONEC,
    SIPP,
    STUNNEL,
    AnsweringUA,
    Baresip,
    Linphonec,
    ProxyProcess,
    Stunnel,
    TLSAnsweringUA,
    free_port,
    message_request,
    run_sipp,
    sip_request,
    udp_final_response,
    wait_until,
)
from tests.certs import CA

DOMAIN = "example.com"
WAIT = 15.0  # every wait in these tests is bounded by this


class Certs:
    """The test's PKI: our CA and the proxy's certificate (names the proxy
    is reached by on loopback: localhost, 127.0.0.1, ::1, and the domain),
    peers' certificates for outbound TLS, and a stranger's CA."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CA("sosimple e2e CA")
        self.stranger = CA("someone else's CA")
        self.ca_pem = self.ca.write(directory)
        self.proxy_cert, self.proxy_key = self.ca.issue(
            cn=DOMAIN, dns=[DOMAIN, "localhost"], ips=["127.0.0.1", "::1"]
        ).write(directory, "proxy")

    def peer(self, name: str, *, ca: CA | None = None, **names: object) -> tuple[Path, Path]:
        """A certificate (and key) for a peer the proxy connects to."""
        return (ca or self.ca).issue(**names).write(self.dir, name)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("tls"))


def tls_proxy(certs: Certs, extra: dict | None = None) -> ProxyProcess:
    """The proxy on UDP and TCP (port), TLS (``proxy.tls_port``); ``localhost``
    is one of its domains because belle-sip (linphonec) reaches it by that name."""
    port, tls_port = free_port("both"), free_port("tcp")
    config: dict[str, dict[str, object]] = {
        "proxy": {
            "listen": f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}, tls:127.0.0.1:{tls_port}",
            "domains": f"{DOMAIN} localhost",
        },
        "tls": {"certificate": certs.proxy_cert, "key": certs.proxy_key, "ca": certs.ca_pem},
    }
    for section, keys in (extra or {}).items():
        config.setdefault(section, {}).update(keys)
    proxy = ProxyProcess(config, port=port)
    proxy.tls_port = tls_port  # type: ignore[attr-defined]
    return proxy


@pytest.fixture
def proxy(certs):
    with tls_proxy(certs) as p:
        yield p


def log_text(proxy: ProxyProcess) -> str:
    return proxy.log_path.read_text(encoding="utf-8", errors="replace")


# --- softphones over TLS


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (Debian package baresip)")
def test_baresips_register_message_and_call_over_tls(proxy, certs):
    tls = proxy.tls_port
    with Baresip("bob", tls, transport="tls", ca=certs.ca_pem, contacts=[f"sip:alice@{DOMAIN}"],
                 startup_timeout=WAIT) as bob, \
         Baresip("alice", tls, transport="tls", ca=certs.ca_pem, contacts=[f"sip:bob@{DOMAIN}"],
                 startup_timeout=WAIT) as alice:
        try:
            for phone in (alice, bob):
                assert phone.registrations()[0] == (200, "OK", 1), phone.log_tail()
                assert re.search(rf"{phone.user}@{DOMAIN}: \{{0/TLS/v4\}} 200 OK", phone.log_text()), phone.log_tail()

            text = f"hello-bob-{secrets.token_hex(6)}"
            alice.message(text)
            got = bob.wait_received("MESSAGE", text, timeout=WAIT)
            assert got.transport == "TLS" and got.src == f"127.0.0.1:{tls}", got
            text = f"hello-alice-{secrets.token_hex(6)}"
            bob.message(text)
            assert alice.wait_received("MESSAGE", text, timeout=WAIT).transport == "TLS"

            alice.dial(f"sip:bob@{DOMAIN}")
            alice.wait_event("CALL_ESTABLISHED", WAIT, direction="outgoing", peeruri=f"sip:bob@{DOMAIN}")
            bob.wait_event("CALL_ESTABLISHED", WAIT, direction="incoming", peeruri=f"sip:alice@{DOMAIN}")
            invite = bob.wait_received("INVITE", timeout=WAIT)
            assert re.search(r"^Via: SIP/2.0/TLS 127\.0\.0\.1:%d;" % tls, invite.text, re.M), invite.text
            # our Record-Route over TLS, naming each phone's connection (flow
            # tokens), with the dialog's stamp (proxy/dialog_stamp.py)
            rr = re.findall(r"^Record-Route: (.*)$", invite.text, re.M)
            assert len(rr) == 2 and all(
                re.fullmatch(rf"<sip:f-[\w-]+@127\.0\.0\.1:{tls};transport=tls;lr;sst=[0-9a-f]{{32}}>", r) for r in rr
            ), rr
            bob.wait_received("ACK", timeout=WAIT)
            alice.hangup()
            alice.wait_event("CALL_CLOSED", WAIT)
            bob.wait_event("CALL_CLOSED", WAIT)
            assert bob.wait_received("BYE", timeout=WAIT).transport == "TLS"

            # bob calls alice, alice hangs up: her BYE reaches bob, the caller,
            # over his own connection (the flow named in our Record-Route):
            # baresip has no TLS server certificate, so it cannot be connected to.
            bob.dial(f"sip:alice@{DOMAIN}")
            bob.wait_event("CALL_ESTABLISHED", WAIT, direction="outgoing", peeruri=f"sip:alice@{DOMAIN}")
            alice.wait_event("CALL_ESTABLISHED", WAIT, direction="incoming", peeruri=f"sip:bob@{DOMAIN}")
            alice.hangup()
            alice.wait_event("CALL_CLOSED", WAIT)
            bob.wait_event("CALL_CLOSED", WAIT)
        except BaseException:
            print(proxy.log_tail(80))
            raise


@pytest.mark.skipif(LINPHONEC is None or BARESIP is None, reason="needs linphonec (linphone-cli) and baresip")
def test_linphonec_registers_messages_and_calls_over_tls(proxy, certs):
    """linphonec checks the proxy's certificate fully (chain and name: it
    reaches the proxy as localhost) and talks to a baresip over TLS."""
    tls = proxy.tls_port
    with Baresip("alice", tls, transport="tls", ca=certs.ca_pem, contacts=[f"sip:carol@{DOMAIN}"],
                 startup_timeout=WAIT) as alice, \
         Linphonec("carol", tls, proxy_host="localhost", transport="tls", ca=certs.ca_pem) as carol:
        try:
            text = f"hello-alice-{secrets.token_hex(6)}"
            carol.chat(f"sip:alice@{DOMAIN}", text)
            assert alice.wait_received("MESSAGE", text, timeout=WAIT).transport == "TLS"
            carol.wait_delivered(1, WAIT)

            text = f"hello-carol-{secrets.token_hex(6)}"
            alice.message(text)
            carol.wait_output(rf"Message received from sip:alice@{DOMAIN}: {text}", WAIT)

            carol.call(f"sip:alice@{DOMAIN}")
            carol.wait_output(rf"Call \d+ with sip:alice@{DOMAIN} connected", WAIT)
            alice.wait_event("CALL_ESTABLISHED", WAIT, direction="incoming", peeruri=f"sip:carol@{DOMAIN}")
            carol.terminate()
            alice.wait_event("CALL_CLOSED", WAIT)
        except BaseException:
            print(proxy.log_tail(80))
            raise


# --- sipp over stunnel

REGISTER_AND_MESSAGE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="REGISTER, then a MESSAGE to ourselves, over TLS by stunnel">
  <send>
    <![CDATA[
      REGISTER sip:example.com SIP/2.0
      Via: SIP/2.0/TCP [local_ip]:[local_port];branch=[branch]
      From: <sip:dave@example.com>;tag=[call_number]
      To: <sip:dave@example.com>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:dave@[local_ip]:[local_port];transport=tcp>
      Max-Forwards: 70
      Expires: 300
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <send>
    <![CDATA[
      MESSAGE sip:dave@example.com SIP/2.0
      Via: SIP/2.0/TCP [local_ip]:[local_port];branch=[branch]
      From: <sip:dave@example.com>;tag=[call_number]m
      To: <sip:dave@example.com>
      Call-ID: [call_id]
      CSeq: 2 MESSAGE
      Max-Forwards: 70
      Content-Type: text/plain
      Content-Length: [len]

      hello over tls
    ]]>
  </send>
  <recv request="MESSAGE">
    <action><ereg regexp="hello over tls" search_in="body" check_it="true" assign_to="body"/></action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=uas[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <Reference variables="body"/>
</scenario>
"""


@pytest.mark.skipif(SIPP is None or STUNNEL is None, reason="needs sipp (sip-tester) and stunnel4")
def test_sipp_registers_and_messages_through_stunnel(proxy, certs, tmp_path):
    """sipp (TCP) -> stunnel (TLS, verifying the proxy's chain and address)
    -> proxy: the REGISTER binds the TLS connection, and the MESSAGE to the
    registered user comes back over it; 200 of them at 20/s (40 requests/s,
    under the default [limits] rate), a small TLS load (Debian's sipp has
    no TLS of its own)."""
    with Stunnel(proxy.tls_port, ca=certs.ca_pem, check_ip="127.0.0.1") as tunnel:
        result = run_sipp(
            REGISTER_AND_MESSAGE,
            f"127.0.0.1:{tunnel.accept_port}",
            "-t", "t1",
            "-r", "20",
            "-default_behaviors", "all,-bye",
            calls=200,
            timeout=40,
            local_port=0,
        )
        assert result.ok, f"{result}\n{tunnel.log_tail()}\n{proxy.log_tail(60)}"


# --- outbound TLS


def register_contacts(proxy: ProxyProcess, user: str, contacts: list[tuple[str, float]]) -> None:
    for uri, q in contacts:
        answer = udp_final_response(
            proxy.port,
            lambda lport: sip_request(
                "REGISTER", f"sip:{DOMAIN}", to=f"{user}@{DOMAIN}", from_=f"{user}@{DOMAIN}", via_port=lport,
                headers=[f"Contact: <{uri}>;q={q}", "Expires: 600"],
            ),
        )
        assert answer is not None and answer.startswith("SIP/2.0 200"), answer


def send_message(proxy: ProxyProcess, to: str, text: str) -> str | None:
    answer = udp_final_response(
        proxy.port, lambda lport: message_request(to, f"alice@{DOMAIN}", text, via_port=lport), timeout=8.0
    )
    return answer.split("\r\n", 1)[0] if answer else None


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("unknown-ca", r"unknown CA: certificate for 127\.0\.0\.1 is issued by \"someone else's CA\""),
        ("other-domain", r"certificate for other\.test does not match 127\.0\.0\.1"),
    ],
)
def test_a_refused_tls_peer_fails_over_with_the_reason_logged(proxy, certs, kind, reason):
    """carol has two bindings: a sips: one (q=1.0) whose certificate the
    proxy must refuse, and a UDP one (q=0.5).  The MESSAGE fails over to the
    second, and the proxy log says why the first was refused."""
    if kind == "unknown-ca":
        cert, key = certs.peer("stranger", ca=certs.stranger, cn="127.0.0.1", ips=["127.0.0.1"])
    else:
        cert, key = certs.peer("other", cn="other.test", dns=["other.test"])
    with TLSAnsweringUA(cert, key) as bad, AnsweringUA() as good:
        register_contacts(proxy, "carol", [(f"sips:carol@127.0.0.1:{bad.port}", 1.0), (f"sip:carol@127.0.0.1:{good.port}", 0.5)])
        text = f"failover-{secrets.token_hex(4)}"
        assert send_message(proxy, f"carol@{DOMAIN}", text) == "SIP/2.0 200 OK", proxy.log_tail(60)
        assert good.received(text), (good.requests, bad.requests, proxy.log_tail(60))
        # the refused peer's thread notes its failed handshake on its own time
        wait_until(lambda: bad.handshake_errors, 5, what="no handshake error at the refused peer")
        assert bad.requests == [], bad.requests
        log = log_text(proxy)
        refusals = re.findall(rf"tls: connection to tls:127\.0\.0\.1:{bad.port} .*failed: (.*)", log)
        assert refusals and re.search(reason, refusals[0]), log[-3000:]


def test_a_tls_route_is_verified_against_its_domain(certs):
    """``[routes] other.test = sips:other.test:PORT;maddr=127.0.0.1``: the
    certificate must name other.test (not the address we connect to); one
    that names another domain makes the branch fail with 503."""
    good_cert = certs.peer("route-good", cn="other.test", dns=["other.test"])
    evil_cert = certs.peer("route-evil", cn="evil.test", dns=["evil.test"])
    with TLSAnsweringUA(*good_cert) as good, TLSAnsweringUA(*evil_cert) as evil:
        routes = {"routes": {"other.test": f"sips:other.test:{good.port};maddr=127.0.0.1",
                             "evil.test": f"sips:other.test:{evil.port};maddr=127.0.0.1"},
                  "location": {"order": "local routes"},
                  # the test's sender on 127.0.0.1 is trusted: it may relay (the relay rule, issue 10)
                  "auth": {"trusted": "127.0.0.1"}}
        with tls_proxy(certs, routes) as proxy:
            text = f"routed-{secrets.token_hex(4)}"
            assert send_message(proxy, "dan@other.test", text) == "SIP/2.0 200 OK", proxy.log_tail(60)
            assert good.received(text)
            assert re.search(r"^Via: SIP/2.0/TLS ", good.requests[0], re.M), good.requests[0]
            status = send_message(proxy, "eve@evil.test", "never")
            assert status is not None and status.startswith("SIP/2.0 503"), status
            assert evil.requests == []
            assert "certificate for evil.test does not match other.test" in log_text(proxy)


# --- reload


def served_certificate(port: int, ca: Path) -> dict:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as conn:
        return conn.getpeercert()


@pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (Debian package baresip)")
def test_sighup_reloads_the_certificate_without_dropping_connections(certs, tmp_path):
    cert, key = certs.ca.issue(cn="first", dns=[DOMAIN], ips=["127.0.0.1"]).write(tmp_path, "live")
    config = {"tls": {"certificate": cert, "key": key}}
    proxy = tls_proxy(certs, config)
    with proxy, Baresip("alice", proxy.tls_port, transport="tls", ca=certs.ca_pem, startup_timeout=WAIT) as alice:
        assert dict(x[0] for x in served_certificate(proxy.tls_port, certs.ca_pem)["subject"])["commonName"] == "first"
        certs.ca.issue(cn="second", dns=[DOMAIN], ips=["127.0.0.1"]).write(tmp_path, "live")
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "tls: reloaded certificate" in log_text(proxy), WAIT, what="the reload in the log")
        subject = dict(x[0] for x in served_certificate(proxy.tls_port, certs.ca_pem)["subject"])
        assert subject["commonName"] == "second"
        # alice's connection, made before the reload, still carries her messages.
        text = f"after-reload-{secrets.token_hex(4)}"
        assert send_message(proxy, f"alice@{DOMAIN}", text) == "SIP/2.0 200 OK", proxy.log_tail(40)
        assert alice.wait_received("MESSAGE", text, timeout=WAIT).transport == "TLS"
