"""PSTN gateways end to end: the proxy under twistd, sipp UASes as gateways.

Issue 6, "Tests that must exist and pass": ``tel:+15551234567`` and a local
7-digit number go to the gateway group whose prefix matches; with the first
gateway answering 503 the second is used; an inbound INVITE from a gateway
to a DID reaches the AoR mapped to it.  Every gateway UAS checks the
Request-URI the proxy built for it (strip/prepend, ``user=phone``).
Loopback only; ``dns`` is not in ``[location] order``; OPTIONS probes are
off (``probe_interval = 0``: a sipp UAS would take a probe for a call).
"""

from __future__ import annotations

import pytest

from sosimple_proxy.testing import SIPP, ProxyProcess, free_ports
from sosimple_proxy.testing.sipp import assert_sipp_ok
from sosimple_proxy.testing.sipp_scenarios import answer_step, ere
from tests.e2e.test_proxying import HEAD, TAIL, UAS_ACK_BYE, fill, register, run_uac, start_uas, uac_call, via_regexp

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")


def gateway_config(a1: int, a2: int, b: int) -> dict:
    return {
        "proxy": {"domains": "example.com"},
        "location": {"order": "local routes pstn"},
        # the test's peers on 127.0.0.1 are trusted: they may relay (the relay rule, issue 10)
        "auth": {"trusted": "127.0.0.1"},
        "pstn": {
            "country_code": "1",
            "local_patterns": r"^([2-9][0-9]{6})$ => +1412\1",
            "probe_interval": "0",
        },
        # +1555 numbers: a1 first, a2 if a1 fails.  b serves +1412 and any
        # other +1 number, with its own digit format: 9 + national number.
        "gateway:a1": {"uri": f"sip:127.0.0.1:{a1}", "prefixes": "+1555", "priority": "1"},
        "gateway:a2": {"uri": f"sip:127.0.0.1:{a2}", "prefixes": "+1555", "priority": "2"},
        "gateway:b": {"uri": f"sip:127.0.0.1:{b}", "prefixes": "+1412 +1", "strip": "1", "prepend": "9"},
        "did": {"+14125550100": "sip:alice@example.com"},
    }


@pytest.fixture
def ports():
    return dict(zip(("a1", "a2", "b"), free_ports(3, "udp")))


@pytest.fixture
def proxy(ports):
    with ProxyProcess(gateway_config(ports["a1"], ports["a2"], ports["b"])) as p:
        yield p


UAS_INVITE_TO = """
  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp="^INVITE %(ruri_re)s SIP/2\\.0" search_in="msg" check_it="true" assign_to="ruri_ok"/>
      <ereg regexp="%(via)s" search_in="hdr" header="Via:" check_it="true" assign_to="via_ok"/>
    </action>
  </recv>
  <Reference variables="ruri_ok,via_ok"/>
"""


def uas_answers(proxy_port: int, ruri: str) -> str:
    """A gateway (or phone) that gets an INVITE for exactly ``ruri`` through
    the proxy, answers 200 and sees ACK and BYE."""
    return fill(
        HEAD + UAS_INVITE_TO + answer_step("180 Ringing") + answer_step("200 OK", sdp=True) + UAS_ACK_BYE + TAIL,
        name="gateway answers",
        ruri_re=ere(ruri),
        via=via_regexp("udp", proxy_port),
    )


def uas_refuses(proxy_port: int, ruri: str) -> str:
    """A gateway that answers the INVITE 503 and takes the ACK."""
    return fill(
        HEAD + UAS_INVITE_TO + answer_step("503 Service Unavailable") + '  <recv request="ACK"/>\n' + TAIL,
        name="gateway refuses",
        ruri_re=ere(ruri),
        via=via_regexp("udp", proxy_port),
    )


def test_tel_uri_goes_to_the_gateway_group_of_its_prefix(proxy, ports, tmp_path):
    # +1555 matches a1/a2 (+1555) longer than b (+1): a1, priority 1
    gw = start_uas(uas_answers(proxy.port, f"sip:+15551234567@127.0.0.1:{ports['a1']};user=phone"),
                   ports["a1"], "udp", tmp_path)
    result, _ = run_uac(uac_call("tel:+15551234567", proxy.port, "udp"), proxy.port, "udp", tmp_path)
    assert_sipp_ok(result, gw.wait())


def test_local_seven_digit_number_goes_to_its_group_with_strip_and_prepend(proxy, ports, tmp_path):
    # 5550123 -> +14125550123 (local pattern) -> b; strip 1, prepend 9
    gw = start_uas(uas_answers(proxy.port, f"sip:94125550123@127.0.0.1:{ports['b']};user=phone"),
                   ports["b"], "udp", tmp_path)
    result, _ = run_uac(uac_call("sip:5550123@example.com", proxy.port, "udp"), proxy.port, "udp", tmp_path)
    assert_sipp_ok(result, gw.wait())


def test_first_gateway_answering_503_fails_over_to_the_second(proxy, ports, tmp_path):
    number = "+15557654321"
    first = start_uas(uas_refuses(proxy.port, f"sip:{number}@127.0.0.1:{ports['a1']};user=phone"),
                      ports["a1"], "udp", tmp_path)
    second = start_uas(uas_answers(proxy.port, f"sip:{number}@127.0.0.1:{ports['a2']};user=phone"),
                       ports["a2"], "udp", tmp_path)
    result, _ = run_uac(uac_call(f"tel:{number}", proxy.port, "udp"), proxy.port, "udp", tmp_path)
    assert_sipp_ok(result, first.wait(), second.wait())


def test_inbound_call_from_a_gateway_to_a_did_reaches_the_mapped_aor(proxy, ports, tmp_path):
    alice_port = free_ports(1, "udp")[0]
    contact = register(proxy.port, "alice", alice_port)
    alice = start_uas(uas_answers(proxy.port, contact), alice_port, "udp", tmp_path)
    # the gateway (sipp bound to b's address) calls the DID at the proxy's IP address
    did = f"sip:+14125550100@127.0.0.1:{proxy.port};user=phone"
    result, _ = run_uac(uac_call(did, proxy.port, "udp"), proxy.port, "udp", tmp_path, "-p", str(ports["b"]))
    assert_sipp_ok(result, alice.wait())
