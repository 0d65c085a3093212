"""The stateful proxy end to end: twistd, real sockets, sipp on both sides.

Issue 4, "Tests that must exist and pass": every flow runs over UDP and
over TCP (sipp ``-t u1`` / ``-t t1`` for the caller, the callee UAS
listening on the same transport).  A callee is a sipp UAS registered from
Python (over UDP, with ``;transport=tcp`` in its Contact for TCP) and
started before the caller; its scenario checks what the proxy must have
done to the request (Record-Route, our Via on top), so a proxy that skips
a step fails the UAS, not only the caller.

The scenarios are inline XML with ``%(name)s`` slots filled per test.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from sosimple_proxy.testing import (
    SIPP,
    ProxyProcess,
    SippProcess,
    bound_by,
    free_port,
    register_contact,
    sip_request,
    start_sipp,
    udp_final_response,
)
from sosimple_proxy.testing.sipp import assert_sipp_ok
from sosimple_proxy.testing.sipp_scenarios import (
    ack_bye_steps,
    ack_non_2xx_step,
    answer_step,
    ere,
    expect_response,
    invite_step,
    scenario,
    send_message_step,
    sent_messages,
)

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")

SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}
# How a UAS's Contact and a [routes] value say the transport.
URI_TRANSPORT = {"udp": "", "tcp": ";transport=tcp"}
RUN_TIMEOUT = 15  # seconds, for any one sipp run


# --- fixtures


@pytest.fixture(scope="module", params=["udp", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def route_port(transport: str) -> int:
    """Where [routes] other.test points: a UAS of the test listens there."""
    return free_port(transport)


@pytest.fixture(scope="module")
def proxy(transport: str, route_port: int):
    """One proxy per transport for the module: example.com is ours,
    other.test is reached through [routes], loop.test routes back to us."""
    port = free_port("both")
    config = {
        "proxy": {"domains": "example.com"},
        "location": {"order": "local routes"},
        # the test's peers on 127.0.0.1 are trusted: they may relay (the relay rule, issue 10)
        "auth": {"trusted": "127.0.0.1"},
        "routes": {
            "other.test": f"sip:127.0.0.1:{route_port}{URI_TRANSPORT[transport]}",
            "loop.test": f"sip:127.0.0.1:{port}",
        },
    }
    with ProxyProcess(config, port=port) as p:
        yield p


@pytest.fixture(scope="module")
def redirect_proxy():
    with ProxyProcess({"proxy": {"domains": "example.com", "mode": "redirect"}}) as p:
        yield p


@pytest.fixture(scope="module")
def timer_c_proxy():
    with ProxyProcess({"proxy": {"domains": "example.com"}, "sip": {"timer_c": 2}}) as p:
        yield p


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# --- helpers


def register(proxy_port: int, user: str, contact_port: int, transport: str = "udp", expires: int = 120) -> str:
    """Register ``user@example.com`` at ``127.0.0.1:contact_port`` (a sipp UAS)
    with a REGISTER over UDP; the Contact names the UAS's transport."""
    contact = f"sip:{user}@127.0.0.1:{contact_port}{URI_TRANSPORT[transport]}"
    answer = register_contact(proxy_port, f"{user}@example.com", contact, expires=expires)
    assert answer == "SIP/2.0 200 OK", answer
    return contact


def start_uas(scenario: str, port: int, transport: str, workdir: Path, *extra: str) -> SippProcess:
    """A one-call sipp UAS on ``port``, returned once it holds the port."""
    uas = start_sipp(
        scenario,
        "-t", SIPP_TRANSPORT[transport],
        "-recv_timeout", "8000",
        *extra,
        calls=1,
        timeout=RUN_TIMEOUT,
        workdir=workdir,
        local_port=port,
    )
    if not bound_by(uas.process.pid, port, transport):
        raise AssertionError(f"sipp UAS did not bind {transport} port {port}\n{uas.kill()}")
    return uas


def run_uac(scenario: str, proxy_port: int, transport: str, workdir: Path, *extra: str, trace: bool = False):
    """Run a one-call sipp UAC against the proxy; (result, trace text)."""
    args = [f"127.0.0.1:{proxy_port}", "-t", SIPP_TRANSPORT[transport], "-recv_timeout", "8000", *extra]
    trace_path = workdir / f"uac-{uuid.uuid4().hex[:6]}-messages.log"
    if trace:
        args += ["-trace_msg", "-message_file", str(trace_path)]
    result = start_sipp(scenario, *args, calls=1, timeout=RUN_TIMEOUT, workdir=workdir).wait()
    text = trace_path.read_text(errors="replace") if trace and trace_path.exists() else ""
    return result, text


def fill(template: str, **values: object) -> str:
    return template % values


def via_regexp(transport: str, port: int) -> str:
    """Our Via as the top one: the proxy really handled the message."""
    return rf"^ *SIP/2\.0/{transport.upper()} 127\.0\.0\.1:{port};branch=z9hG4bK"


def rr_entry(transport: str, port: int, r2: bool = False) -> str:
    """One of our Record-Route values (two with r2=on across transports, RFC 5658)
    up to its dialog stamp (``;sst=`` and an HMAC, proxy/dialog_stamp.py)."""
    return f"<sip:127.0.0.1:{port}{URI_TRANSPORT[transport]};lr{';r2=on' if r2 else ''};sst="


def rr_regexp(transport: str, port: int, r2: bool = False) -> str:
    return ere(rr_entry(transport, port, r2)).replace("<", "") + "[0-9a-f]{32}>"


# --- scenario pieces

ALICE = "sip:alice@example.com"  # every UAC here calls as alice

HEAD = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="%(name)s">\n'
TAIL = "</scenario>\n"

UAC_INVITE = invite_step("%(ruri)s", from_uri=ALICE) + expect_response(100, optional=True)
UAC_ACK_NON_2XX = ack_non_2xx_step("%(ruri)s", from_uri=ALICE)
# The ACK and BYE of an established dialog (the 200 received with rrs="true").
UAC_ACK_BYE = ack_bye_steps("%(ruri)s", from_uri=ALICE)


# The INVITE arrives through the proxy: our Via on top, our Record-Route;
# its Vias and CSeq number are kept for a 487 sent after a CANCEL.
UAS_RECV_INVITE = """
  <recv request="INVITE" rrs="true">
    <action>
      <ereg regexp="%(via)s" search_in="hdr" header="Via:" check_it="true" assign_to="inv_via_ok"/>
      <ereg regexp="%(rr)s" search_in="hdr" header="Record-Route:" check_it="true" assign_to="inv_rr_ok"/>
      <ereg regexp="Via:[[:print:]]*([[:cntrl:]]+Via:[[:print:]]*)*" search_in="msg" assign_to="inv_vias,inv_vias_1"/>
      <ereg regexp="([0-9]+) INVITE" search_in="hdr" header="CSeq:" assign_to="inv_cseq_all,inv_cseq"/>
    </action>
  </recv>
  <Reference variables="inv_via_ok,inv_rr_ok,inv_vias,inv_vias_1,inv_cseq_all,inv_cseq"/>
"""

UAS_CANCELLED = """
  <recv request="CANCEL">
    <action>
      <ereg regexp="%(via)s" search_in="hdr" header="Via:" check_it="true" assign_to="cancel_via_ok"/>
    </action>
  </recv>
  <Reference variables="cancel_via_ok"/>
""" + answer_step("200 OK") + """
  <send>
    <![CDATA[
SIP/2.0 487 Request Terminated
[$inv_vias]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: [$inv_cseq] INVITE
Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
"""

# The ACK of the 2xx and the BYE come through the proxy too; the proxy took
# its own Route entry off (16.4), so none is left.
UAS_ACK_BYE = """
  <recv request="ACK">
    <action>
      <ereg regexp="%(via)s" search_in="hdr" header="Via:" check_it="true" assign_to="ack_via_ok"/>
      <ereg regexp="." search_in="hdr" header="Route:" check_it_inverse="true" assign_to="ack_route"/>
    </action>
  </recv>
  <recv request="BYE">
    <action>
      <ereg regexp="%(via)s" search_in="hdr" header="Via:" check_it="true" assign_to="bye_via_ok"/>
      <ereg regexp="." search_in="hdr" header="Route:" check_it_inverse="true" assign_to="bye_route"/>
    </action>
  </recv>
  <Reference variables="ack_via_ok,ack_route,bye_via_ok,bye_route"/>
""" + answer_step("200 OK", in_dialog=True)


def uac_call(ruri: str, proxy_port: int, transport: str, provisionals: int = 1, rr: str | None = None) -> str:
    """Call ``ruri``; the 200's (top) Record-Route must match ``rr``."""
    rr = rr or rr_regexp(transport, proxy_port)
    return fill(
        HEAD
        + UAC_INVITE
        + '  <recv response="180" optional="true"/>\n' * provisionals
        + f"""
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="{rr}" search_in="hdr" header="Record-Route:" check_it="true" assign_to="ok_rr"/>
    </action>
  </recv>
  <Reference variables="ok_rr"/>
"""
        + UAC_ACK_BYE
        + TAIL,
        name="UAC call",
        ruri=ruri,
    )


def uas_call(proxy_port: int, transport: str, answer_after_ms: int = 0, rr: str | None = None) -> str:
    """Answer a call: 180, 200, then ACK and BYE; the INVITE's top
    Record-Route must match ``rr``."""
    pause = f'  <pause milliseconds="{answer_after_ms}"/>\n' if answer_after_ms else ""
    return fill(
        HEAD + UAS_RECV_INVITE + answer_step("180 Ringing") + pause + answer_step("200 OK", sdp=True) + UAS_ACK_BYE + TAIL,
        name="UAS call",
        via=via_regexp(transport, proxy_port),
        rr=rr or rr_regexp(transport, proxy_port),
    )


def uas_ring_then_cancelled(proxy_port: int, transport: str) -> str:
    return fill(
        HEAD + UAS_RECV_INVITE + answer_step("180 Ringing") + UAS_CANCELLED + TAIL,
        name="UAS rings, is cancelled",
        via=via_regexp(transport, proxy_port),
        rr=rr_regexp(transport, proxy_port),
    )


# --- 1. REGISTER, refresh, de-REGISTER

REGISTER_STEP = """
  <send retrans="500">
    <![CDATA[
REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: 70
From: <sip:%(user)s@example.com>;tag=[pid]SIPpTag00[call_number]
To: <sip:%(user)s@example.com>
Call-ID: [call_id]
CSeq: %(cseq)s REGISTER
%(headers)s
Content-Length: 0

    ]]>
  </send>
  <recv response="200">
    <action>
%(checks)s
    </action>
  </recv>
"""


def _present(var: str, regexp: str) -> str:
    # search_in="hdr" would look at the first Contact only
    return f'      <ereg regexp="{regexp}" search_in="msg" check_it="true" assign_to="{var}"/>'


def _absent(var: str, regexp: str) -> str:
    return f'      <ereg regexp="{regexp}" search_in="msg" check_it_inverse="true" assign_to="{var}"/>'


def register_scenario(user: str, c1: str, c2: str) -> str:
    e1, e2 = ere(c1), ere(c2)
    # Remaining expiry: the 200 is sent within the second of the REGISTER.
    steps = [
        # a first binding, Expires header
        (1, f"Contact: <{c1}>\nExpires: 300", [_present("r1", rf"Contact: *.{e1}.;expires=(300|299)")]),
        # refresh it with a longer interval and add a second contact with its own expires
        (
            2,
            f"Contact: <{c1}>, <{c2}>;expires=120\nExpires: 600",
            [_present("r2a", rf"Contact: *.{e1}.;expires=(600|599)"), _present("r2b", rf"Contact: *.{e2}.;expires=(120|119)")],
        ),
        # remove the first: only the second is listed
        (3, f"Contact: <{c1}>;expires=0", [_absent("r3a", e1), _present("r3b", rf"Contact: *.{e2}.;expires=(120|11[0-9])")]),
        # remove all
        (4, "Contact: *\nExpires: 0", [_absent("r4", "[[:cntrl:]](Contact|m) *:")]),
    ]
    body = "".join(
        fill(REGISTER_STEP, user=user, cseq=cseq, headers=headers, checks="\n".join(checks))
        for cseq, headers, checks in steps
    )
    variables = "r1,r2a,r2b,r3a,r3b,r4"
    return HEAD % {"name": "REGISTER, refresh, de-REGISTER"} + body + f'  <Reference variables="{variables}"/>\n' + TAIL


def test_register_refresh_and_deregister(proxy, transport, tmp_path):
    user = unique("reg")
    c1, c2 = f"sip:{user}@127.0.0.1:5999", f"sip:{user}@127.0.0.1:5998{URI_TRANSPORT[transport]}"
    result, _ = run_uac(register_scenario(user, c1, c2), proxy.port, transport, tmp_path, "-default_behaviors", "all,-bye")
    assert_sipp_ok(result)
    # Nothing is left: a request for the AoR is not found.
    answer = udp_final_response(
        proxy.port,
        lambda lport: sip_request(
            "OPTIONS", f"sip:{user}@example.com", to=f"{user}@example.com", from_="x@example.com", via_port=lport
        ),
    )
    assert answer is not None and answer.startswith("SIP/2.0 404 "), answer


# --- 2. MESSAGE to a registered sipp UAS

UAS_MESSAGE = """
  <recv request="MESSAGE">
    <action>
      <ereg regexp="%(via)s" search_in="hdr" header="Via:" check_it="true" assign_to="via_ok"/>
      <ereg regexp="^MESSAGE %(ruri_re)s SIP/2\\.0" search_in="msg" check_it="true" assign_to="ruri_ok"/>
      <ereg regexp="%(text)s" search_in="body" check_it="true" assign_to="text_ok"/>
    </action>
  </recv>
  <Reference variables="via_ok,ruri_ok,text_ok"/>
""" + answer_step("200 OK", record_route=False, contact=False)

NO_BYE = ("-default_behaviors", "all,-bye")


def uac_message(ruri: str, expect: int = 200, text: str = "hello through the proxy", max_forwards: int = 70) -> str:
    return scenario(
        "UAC MESSAGE",
        send_message_step(ruri, text, from_uri="sip:alice@example.com", max_forwards=max_forwards),
        expect_response(expect),
    )


def uas_message(proxy_port: int, transport: str, ruri_re: str, text: str = "hello through the proxy") -> str:
    return fill(HEAD + UAS_MESSAGE + TAIL, name="UAS MESSAGE", via=via_regexp(transport, proxy_port),
                ruri_re=ruri_re, text=text)


def test_message_to_registered_uas_is_delivered(proxy, transport, tmp_path):
    user = unique("bob")
    port = free_port(transport)
    contact = register(proxy.port, user, port, transport)
    uas = start_uas(uas_message(proxy.port, transport, ere(contact)), port, transport, tmp_path, *NO_BYE)
    result, _ = run_uac(uac_message(f"sip:{user}@example.com"), proxy.port, transport, tmp_path, *NO_BYE)
    assert_sipp_ok(result, uas.wait())


# --- 3. a call, Record-Route honoured


def test_call_with_record_route(proxy, transport, tmp_path):
    user = unique("bob")
    port = free_port(transport)
    register(proxy.port, user, port, transport)
    uas = start_uas(uas_call(proxy.port, transport), port, transport, tmp_path)
    result, trace = run_uac(uac_call(f"sip:{user}@example.com", proxy.port, transport), proxy.port, transport,
                            tmp_path, trace=True)
    assert_sipp_ok(result, uas.wait())
    # The caller's ACK and BYE went to the UAS's Contact with the proxy's
    # Record-Route as their Route set.
    route = f"Route: {rr_entry(transport, proxy.port)}"
    for method in ("ACK", "BYE"):
        (sent,) = sent_messages(trace, method)
        assert sent.startswith(f"{method} sip:127.0.0.1:{port};transport="), sent
        assert route in sent, sent


@pytest.mark.parametrize("transport", ["udp"], indirect=True)
@pytest.mark.parametrize("caller, callee", [("udp", "tcp"), ("tcp", "udp")])
def test_call_across_transports_double_record_route(proxy, transport, caller, callee, tmp_path):
    """RFC 5658: in by one transport, out by another, the proxy adds two
    Record-Route entries, each naming the side it faces; the caller's
    route set leads with the entry for its transport, and the proxy takes
    both off the ACK and the BYE."""
    user = unique("bob")
    port = free_port(callee)
    register(proxy.port, user, port, callee)
    top = rr_regexp(callee, proxy.port, r2=True)  # faces the callee
    uas = start_uas(uas_call(proxy.port, callee, rr=top), port, callee, tmp_path)
    result, trace = run_uac(uac_call(f"sip:{user}@example.com", proxy.port, caller, rr=top), proxy.port, caller,
                            tmp_path, trace=True)
    assert_sipp_ok(result, uas.wait())
    near, far = rr_entry(caller, proxy.port, r2=True), rr_entry(callee, proxy.port, r2=True)
    for method in ("ACK", "BYE"):
        (sent,) = sent_messages(trace, method)
        assert near in sent and far in sent and sent.index(near) < sent.index(far), sent


# --- 4. CANCEL


UAC_CANCEL = """
  <recv response="180"/>
  <send>
    <![CDATA[
CANCEL %(ruri)s SIP/2.0
[last_Via:]
From: <sip:alice@example.com>;tag=[pid]SIPpTag00[call_number]
To: <%(ruri)s>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
"""


def test_cancelled_invite_ends_487(proxy, transport, tmp_path):
    user = unique("bob")
    port = free_port(transport)
    register(proxy.port, user, port, transport)
    uas = start_uas(uas_ring_then_cancelled(proxy.port, transport), port, transport, tmp_path)
    ruri = f"sip:{user}@example.com"
    uac_scenario = fill(HEAD + UAC_INVITE + UAC_CANCEL + UAC_ACK_NON_2XX + TAIL, name="UAC cancels", ruri=ruri)
    result, _ = run_uac(uac_scenario, proxy.port, transport, tmp_path)
    assert_sipp_ok(result, uas.wait())


# --- 5. busy


def test_busy_callee_486_is_relayed(proxy, transport, tmp_path):
    user = unique("bob")
    port = free_port(transport)
    register(proxy.port, user, port, transport)
    uas_scenario = fill(
        HEAD + UAS_RECV_INVITE + answer_step("486 Busy Here") + '  <recv request="ACK"/>\n' + TAIL,
        name="UAS busy",
        via=via_regexp(transport, proxy.port),
        rr=rr_regexp(transport, proxy.port),
    )
    uas = start_uas(uas_scenario, port, transport, tmp_path)
    ruri = f"sip:{user}@example.com"
    uac_scenario = fill(
        HEAD + UAC_INVITE + '  <recv response="486"/>\n' + UAC_ACK_NON_2XX + TAIL, name="UAC to busy", ruri=ruri
    )
    result, _ = run_uac(uac_scenario, proxy.port, transport, tmp_path)
    assert_sipp_ok(result, uas.wait())


# --- 6. forking


def test_forked_invite_one_answers_other_cancelled(proxy, transport, tmp_path):
    user = unique("bob")
    answering, ringing = free_port(transport), free_port(transport)
    register(proxy.port, user, answering, transport)
    register(proxy.port, user, ringing, transport)
    # The answering UAS waits, so that the other has rung before the 200.
    uas_a = start_uas(uas_call(proxy.port, transport, answer_after_ms=700), answering, transport, tmp_path)
    uas_b = start_uas(uas_ring_then_cancelled(proxy.port, transport), ringing, transport, tmp_path)
    result, _ = run_uac(uac_call(f"sip:{user}@example.com", proxy.port, transport, provisionals=2), proxy.port,
                        transport, tmp_path)
    assert_sipp_ok(result, uas_a.wait(), uas_b.wait())


# --- 7. redirect mode


def test_redirect_mode_answers_302_with_the_contact(redirect_proxy, transport, tmp_path):
    user = unique("bob")
    port = free_port(transport)
    contact = register(redirect_proxy.port, user, port, transport)
    ruri = f"sip:{user}@example.com"
    recv_302 = f"""
  <recv response="302">
    <action>
      <ereg regexp="{ere(contact)}" search_in="hdr" header="Contact:" check_it="true" assign_to="ok"/>
    </action>
  </recv>
  <Reference variables="ok"/>
"""
    uac_scenario = fill(HEAD + UAC_INVITE + recv_302 + UAC_ACK_NON_2XX + TAIL, name="UAC redirected", ruri=ruri)
    result, _ = run_uac(uac_scenario, redirect_proxy.port, transport, tmp_path)
    assert_sipp_ok(result)


# --- 8. [routes] to another domain


def test_request_to_routed_domain_reaches_the_next_hop(proxy, transport, route_port, tmp_path):
    ruri = "sip:carol@other.test"
    uas = start_uas(uas_message(proxy.port, transport, ere(ruri)), route_port, transport, tmp_path, *NO_BYE)
    result, _ = run_uac(uac_message(ruri), proxy.port, transport, tmp_path, *NO_BYE)
    assert_sipp_ok(result, uas.wait())


# --- errors and Timer C (UDP)

udp_only = pytest.mark.parametrize("transport", ["udp"], indirect=True)


@udp_only
def test_looped_request_gets_482(proxy, transport, tmp_path):
    result, _ = run_uac(uac_message("sip:x@loop.test", expect=482), proxy.port, transport, tmp_path, *NO_BYE)
    assert_sipp_ok(result)


@udp_only
def test_max_forwards_zero_gets_483(proxy, transport, tmp_path):
    user = unique("bob")
    register(proxy.port, user, free_port("udp"))
    result, _ = run_uac(
        uac_message(f"sip:{user}@example.com", expect=483, max_forwards=0), proxy.port, transport, tmp_path, *NO_BYE
    )
    assert_sipp_ok(result)


@udp_only
def test_timer_c_cancels_the_branch_and_answers_408(timer_c_proxy, transport, tmp_path):
    proxy = timer_c_proxy
    user = unique("bob")
    port = free_port(transport)
    register(proxy.port, user, port, transport)
    uas = start_uas(uas_ring_then_cancelled(proxy.port, transport), port, transport, tmp_path)
    ruri = f"sip:{user}@example.com"
    uac_scenario = fill(
        HEAD + UAC_INVITE + '  <recv response="180"/>\n  <recv response="408"/>\n' + UAC_ACK_NON_2XX + TAIL,
        name="UAC waits for Timer C",
        ruri=ruri,
    )
    started = time.monotonic()
    result, _ = run_uac(uac_scenario, proxy.port, transport, tmp_path)
    elapsed = time.monotonic() - started
    assert_sipp_ok(result, uas.wait())
    assert elapsed >= 1.8, f"408 after {elapsed:.2f}s, before Timer C (2 s)"
