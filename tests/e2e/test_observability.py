"""Metrics and JSON logs of a real proxy under twistd while sipp calls it.

One proxy with ``[log] format = json`` and ``[metrics] enabled = yes``:
``GET /metrics`` parses with ``prometheus_client.parser``, every family
carries HELP and TYPE, and the counters move by exactly the calls sipp
made; ``GET /calls`` shows the same minute; every line the process wrote
is a JSON object, and the refusals carry the Call-ID sipp sent.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sosimple_proxy.testing import ProxyProcess, free_port
from sosimple_proxy.testing.sipp import run_sipp
from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario, send_message_step
from tests.e2e.test_limits import REGISTER_STEP

CALLS = 20
RATE = "20"

#: every family /metrics must always have (HELP and TYPE even before traffic)
FAMILIES = {
    "sosimple_sip_requests": "counter",
    "sosimple_sip_responses": "counter",
    "sosimple_sip_transaction_seconds": "histogram",
    "sosimple_sip_call_setup_seconds": "histogram",
    "sosimple_sip_active_transactions": "gauge",
    "sosimple_registrations": "gauge",
    "sosimple_registered_contacts": "gauge",
    "sosimple_ring_size": "gauge",
    "sosimple_ring_lookup_hops": "histogram",
    "sosimple_ring_lookup_seconds": "histogram",
    "sosimple_ring_lookup_failures": "counter",
    "sosimple_ring_rpc_errors": "counter",
    "sosimple_ring_replica_repairs": "counter",
    "sosimple_ring_tls_refusals": "counter",
    "sosimple_contact_cache_hits": "counter",
    "sosimple_contact_cache_misses": "counter",
    "sosimple_dns_queries": "counter",
    "sosimple_dns_failures": "counter",
    "sosimple_gateway_state": "gauge",
    "sosimple_bans": "counter",
    "sosimple_banned_sources": "gauge",
    "sosimple_banned_dropped": "counter",
    "sosimple_banned_refused_connections": "counter",
    "sosimple_kernel_dropped_packets": "counter",
    "sosimple_sip_tls_handshake_failures": "counter",
    "sosimple_auth_failures": "counter",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
}

REGISTER = scenario("REGISTER", REGISTER_STEP, expect_response(200))
UNKNOWN = scenario("MESSAGE to nobody", send_message_step("sip:nobody@localhost", "hi", from_uri="sip:sipp@localhost"), expect_response(404))


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def metrics(url: str) -> tuple[str, dict]:
    status, ctype, body = _get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    text = body.decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, family: str, name: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    port = free_port("tcp")
    config = {
        "admin": {"listen": f"tcp:{port}:interface=127.0.0.1"},
        "log": {"format": "json"},
        "metrics": {"enabled": "yes"},
        "limits": {"allow": "127.0.0.0/8"},
    }
    with ProxyProcess(config, workdir=tmp_path_factory.mktemp("observed")) as p:
        p.admin = f"http://127.0.0.1:{port}"
        yield p


def test_metrics_parse_and_move_with_sipp_traffic_and_logs_are_json(proxy, tmp_path):
    text, before = metrics(proxy.admin)
    for name, kind in FAMILIES.items():
        assert re.search(rf"^# HELP {name}(_total)? \S", text, re.M), f"no HELP for {name}"
        assert re.search(rf"^# TYPE {name}(_total)? {kind}$", text, re.M), f"no TYPE {kind} for {name}"
        assert before[name].type == kind
    for line in text.splitlines():  # every sample line belongs to a family with HELP and TYPE
        if line and not line.startswith("#"):
            family = re.match(r"([a-z_]+?)(_total|_bucket|_sum|_count|_created)?[{ ]", line).group(1)
            assert f"# HELP {family}" in text, line

    for s in (REGISTER, UNKNOWN):
        result = run_sipp(s, f"127.0.0.1:{proxy.port}", "-r", RATE, calls=CALLS, timeout=30, workdir=tmp_path)
        assert result.ok, f"{result}\n{proxy.log_tail()}"

    _, after = metrics(proxy.admin)

    def moved(family: str, name: str, **labels: str) -> float:
        return sample(after, family, name, **labels) - sample(before, family, name, **labels)

    assert moved("sosimple_sip_requests", "sosimple_sip_requests_total", method="REGISTER") == CALLS
    assert moved("sosimple_sip_requests", "sosimple_sip_requests_total", method="MESSAGE") == CALLS
    assert moved("sosimple_sip_responses", "sosimple_sip_responses_total", method="REGISTER", code="200") == CALLS
    assert moved("sosimple_sip_responses", "sosimple_sip_responses_total", method="MESSAGE", code="404") == CALLS
    assert moved("sosimple_sip_transaction_seconds", "sosimple_sip_transaction_seconds_count", method="REGISTER") == CALLS
    assert sample(after, "sosimple_registrations", "sosimple_registrations") == CALLS
    assert sample(after, "sosimple_sip_active_transactions", "sosimple_sip_active_transactions", side="server") >= 0

    _, _, body = _get(proxy.admin + "/calls")
    calls = json.loads(body)
    assert calls["last_minute"]["by_method"]["REGISTER"]["200"] == CALLS
    assert calls["last_minute"]["by_method"]["MESSAGE"]["404"] == CALLS
    assert calls["top_sources"][0]["address"] == "127.0.0.1"
    assert calls["top_sources"][0]["requests"] >= 2 * CALLS

    proxy.stop()
    lines = [line for line in proxy.output_path.read_text().splitlines() if line.strip()]
    assert lines, proxy.log_tail()
    records = [json.loads(line) for line in lines]  # every line is JSON
    for record in records:
        assert {"time", "level", "event"} <= record.keys(), record
    refusals = [r for r in records if "answered 404" in r["event"]]
    assert len(refusals) == CALLS, [r["event"] for r in records][-20:]
    call_ids = {r["call_id"] for r in refusals}
    assert len(call_ids) == CALLS
    assert all(re.fullmatch(r"\d+-\d+@127\.0\.0\.1", c) for c in call_ids), call_ids
    assert all(r["branch"].startswith("z9hG4bK") for r in refusals)
    # a busy proxy's log stays short: nothing per accepted REGISTER at info level
    assert len(records) < CALLS * 2 + 40


def test_sip_trace_logs_whole_messages_without_credentials(tmp_path):
    """``sip_trace = yes`` on a proxy with users: a REGISTER carrying a
    (wrong) digest answer is logged whole, received and answered, but its
    response hash and nonce are not."""
    from sosimple_proxy.security.users import UserEntry
    from sosimple_proxy.testing.sip_requests import sip_request, udp_final_response

    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("alice", "localhost", "secret").line() + "\n")
    secret_hash = "5f4dcc3b5aa765d61d8327deb882cf99"
    config = {
        "log": {"sip_trace": "yes"},
        "auth": {"users_file": str(users), "algorithms": "MD5", "nonce_secret_file": str(tmp_path / "nonce")},
    }
    with ProxyProcess(config, workdir=tmp_path / "proxy") as proxy:
        authorization = (
            'Authorization: Digest username="alice", realm="localhost", nonce="NONCEVALUE", '
            f'uri="sip:localhost", response="{secret_hash}", algorithm=MD5'
        )

        def register(port: int) -> str:
            return sip_request(
                "REGISTER", "sip:localhost", to="alice@localhost", from_="alice@localhost", via_port=port,
                call_id="traced-register", headers=[authorization, "Contact: <sip:alice@127.0.0.1:5099>"],
            )

        answer = udp_final_response(proxy.port, register)
        assert answer is not None and answer.startswith("SIP/2.0 401"), answer
        time.sleep(0.5)
        log = proxy._log_since_start()
    assert "sip received from udp:127.0.0.1:" in log and "REGISTER sip:localhost SIP/2.0" in log
    assert 'Authorization: Digest username="alice", realm="localhost", <redacted>' in log
    assert "sip sent to udp:127.0.0.1:" in log and "SIP/2.0 401" in log and "WWW-Authenticate: Digest" in log
    assert secret_hash not in log and "NONCEVALUE" not in log
