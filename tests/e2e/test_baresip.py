"""Real softphones through the proxy: two baresip instances register as
alice and bob, send each other instant messages and make a call (issue 4,
"Real softphones").  Signalling is real; media is ausine into a bridge
nobody reads."""

from __future__ import annotations

import re
import secrets
import time

import pytest

from sosimple_proxy.testing import (
    BARESIP,
    Baresip,
    BaresipError,
    ProxyProcess,
    register_request,
    udp_final_response,
    wait_until,
)

pytestmark = pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (Debian package baresip)")

DOMAIN = "example.com"
WAIT = 15.0  # every wait in these tests is bounded by this


def registered_contacts(proxy: ProxyProcess, user: str) -> list[str]:
    """Ask the registrar (REGISTER without Contact, RFC 3261 10.2.3) which
    contacts are bound to ``user``; one UDP exchange, retransmitted as T1 says."""
    answer = udp_final_response(
        proxy.port, lambda lport: register_request(f"{user}@{DOMAIN}", None, via_port=lport, expires=None), timeout=5.0
    )
    assert answer is not None, f"registrar did not answer a REGISTER query\n{proxy.log_tail()}"
    assert answer.startswith("SIP/2.0 200"), answer
    head = answer.split("\r\n\r\n", 1)[0]
    return [m.group(2).strip() for m in re.finditer(r"^(Contact|m)\s*:(.*)$", head, re.M | re.I)]


@pytest.fixture
def proxy():
    with ProxyProcess({"proxy": {"domains": DOMAIN}}) as p:
        yield p


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresips_register_message_and_call_through_the_proxy(proxy, transport):
    t0 = time.monotonic()
    with Baresip("bob", proxy.port, transport=transport, contacts=[f"sip:alice@{DOMAIN}"],
                 startup_timeout=WAIT) as bob, \
         Baresip("alice", proxy.port, transport=transport, contacts=[f"sip:bob@{DOMAIN}"],
                 startup_timeout=WAIT) as alice:
        try:
            # Both registered: each got 200 OK with its one binding, and the
            # registrar lists each one's contact.
            for phone in (alice, bob):
                assert phone.registrations()[0] == (200, "OK", 1), phone.log_tail()
                contacts = registered_contacts(proxy, phone.user)
                assert len(contacts) == 1 and f"@{phone.sip_address}" in contacts[0], contacts

            # alice -> bob instant message, through the proxy, answered 200.
            text = f"hello-bob-{secrets.token_hex(6)}"
            alice.message(text)
            got = bob.wait_received("MESSAGE", text, timeout=WAIT)
            assert got.body.strip() == text
            assert got.src == proxy_address(proxy), got  # relayed, not direct
            assert_answered(alice, "MESSAGE", 200)

            # and back: bob -> alice reaches alice's binding too.
            text = f"hello-alice-{secrets.token_hex(6)}"
            bob.message(text)
            assert alice.wait_received("MESSAGE", text, timeout=WAIT).body.strip() == text

            # alice calls bob, who answers by himself (answermode=auto).
            alice.dial(f"sip:bob@{DOMAIN}")
            alice.wait_event("CALL_ESTABLISHED", WAIT, direction="outgoing", peeruri=f"sip:bob@{DOMAIN}")
            bob.wait_event("CALL_ESTABLISHED", WAIT, direction="incoming", peeruri=f"sip:alice@{DOMAIN}")
            invite = bob.wait_received("INVITE", timeout=WAIT)
            assert re.search(r"^Record-Route:", invite.text, re.M | re.I), invite.text
            bob.wait_received("ACK", timeout=WAIT)  # the ACK for the 2xx follows the route set

            alice.hangup()
            alice.wait_event("CALL_CLOSED", WAIT)
            bob.wait_event("CALL_CLOSED", WAIT)
            assert bob.wait_received("BYE", timeout=WAIT).src == proxy_address(proxy)

            # quit unregisters: the registrar forgets them.
            for phone in (alice, bob):
                phone.stop()
                assert phone.returncode == 0, phone.log_tail()
                assert registered_contacts(proxy, phone.user) == []
        except BaseException:
            print(proxy.log_tail(80))
            raise
    assert time.monotonic() - t0 < 60


def proxy_address(proxy: ProxyProcess) -> str:
    return f"127.0.0.1:{proxy.port}"


def assert_answered(phone: Baresip, method: str, status: int) -> None:
    def answers() -> list[int | None]:
        return [e.status for e in phone.sip_trace() if e.incoming and e.method is None and e.cseq_method == method]

    wait_until(
        lambda: status in answers(),
        WAIT,
        what=lambda: f"{phone.user}: no {status} to {method} (got {answers()})\n{phone.log_tail()}",
    )


def test_a_refused_registration_fails_fast_and_cleans_up(proxy):
    phone = Baresip("carol", proxy.port, domain="other.test", startup_timeout=WAIT)
    t0 = time.monotonic()
    with pytest.raises(BaresipError, match="registration failed: 403"):
        with phone:
            pass
    assert time.monotonic() - t0 < 5
    assert not phone.running and not phone.dir.exists()


def test_a_call_to_nobody_registered_ends_404(proxy):
    with Baresip("alice", proxy.port, startup_timeout=WAIT) as alice:
        alice.dial(f"sip:nobody@{DOMAIN}")
        closed = alice.wait_event("CALL_CLOSED", WAIT)
        assert "404" in closed.get("param", ""), closed
