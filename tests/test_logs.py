"""``[log]``: JSON lines, the request a line is about, the SIP trace's redaction."""

from __future__ import annotations

import io
import json

from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel, LogPublisher

from sosimple_proxy import logs
from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import make_response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.transaction import TransactionLayer, TransactionUser

import pytest

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-reg-1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: reg-1@test\r\n"
    b"CSeq: 2 REGISTER\r\n"
    b'Authorization: Digest username="alice", realm="example.com", nonce="abc", uri="sip:example.com",\r\n'
    b' response="0123456789abcdef0123456789abcdef", algorithm=MD5\r\n'
    b"proxy-authorization: Basic YWxpY2U6c2VjcmV0\r\n"
    b"Contact: <sip:alice@127.0.0.1:5070>\r\n"
    b"Content-Length: 16\r\n\r\n"
    b"Authorization: x"
)


def test_redact_hides_credentials_and_keeps_who():
    out = logs.redact(REGISTER)
    assert b"0123456789abcdef" not in out and b"abc\"" not in out and b"YWxpY2U6c2VjcmV0" not in out
    assert b'Authorization: Digest username="alice", realm="example.com", <redacted>\r\n' in out
    assert b"proxy-authorization: Basic <redacted>\r\n" in out
    # the folded continuation went with its header; other headers and the body are untouched
    assert b"algorithm=MD5" not in out
    assert b"Contact: <sip:alice@127.0.0.1:5070>\r\n" in out and out.endswith(b"\r\n\r\nAuthorization: x")
    assert logs.redact(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n") == b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n"


def published(current=None):
    out = io.StringIO()
    publisher = LogPublisher()
    publisher.addObserver(logs.json_observer(out) if current is None else logs.JsonLines(out, current))
    return out, Logger(namespace="test", observer=publisher)


def test_json_lines_carry_time_level_event_and_the_request_being_handled():
    current = [None]
    out, log = published(current)
    log.info("plain {x}", x=1)
    current[0] = parse_message(REGISTER)
    log.warn("about the request")
    current[0] = None
    log.info("explicit", call_id="c-1", branch="z9hG4bK-x")
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("it broke")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in lines] == ["plain 1", "about the request", "explicit", "it broke"]
    assert lines[0]["level"] == "info" and "call_id" not in lines[0] and lines[0]["time"].endswith("+00:00")
    assert lines[1]["level"] == "warn" and lines[1]["call_id"] == "reg-1@test" and lines[1]["branch"] == "z9hG4bK-reg-1"
    assert (lines[2]["call_id"], lines[2]["branch"]) == ("c-1", "z9hG4bK-x")
    assert lines[3]["level"] == "critical" and "ZeroDivisionError" in lines[3]["traceback"]


def test_json_observer_leaves_out_debug():
    out, log = published()
    log.debug("noise")
    log.info("news")
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["news"]


class Refusing(TransactionUser):
    def requestReceived(self, req, txn):
        req_status = 404 if req.method == "REGISTER" else 200
        txn.respond(make_response(req, req_status))


class Sent:
    def __init__(self):
        self.data = []

    def send(self, data, dest, local=None):
        self.data.append(data)
        return defer.succeed(None)


def test_decisions_trace_and_context_through_a_real_transaction_layer():
    captured = []
    publisher = LogPublisher()
    publisher.addObserver(captured.append)
    old = logs.log, logs.trace_log
    logs.log = Logger(namespace="sosimple.sip", observer=publisher)
    logs.trace_log = Logger(namespace="sosimple.sip.trace", observer=publisher)
    try:
        sent = Sent()
        layer = TransactionLayer(task.Clock(), logs.TracingTransport(sent), Refusing())
        layer.observer = logs.Decisions()
        seen = []
        current = [None]
        receive = layer.receive

        def spy(msg, source, local=None):
            seen.append(current[0])
            receive(msg, source, local)

        layer.receive = logs.traced_receive(spy, True, current)
        source = Peer("udp", "127.0.0.1", 5070)
        layer.receive(parse_message(REGISTER), source)
        layer.receive(parse_message(REGISTER), source)  # a retransmission: answered again, decided once
    finally:
        logs.log, logs.trace_log = old
    assert seen[0] is not None and seen[0].call_id == "reg-1@test" and current[0] is None
    decisions = [e for e in captured if e["log_namespace"] == "sosimple.sip"]
    assert len(decisions) == 1
    assert decisions[0]["status"] == 404 and decisions[0]["call_id"] == "reg-1@test"
    assert decisions[0]["branch"] == "z9hG4bK-reg-1"
    traces = [e for e in captured if e["log_namespace"] == "sosimple.sip.trace"]
    assert [e["direction"] for e in traces] == ["received from", "sent to", "received from", "sent to"]
    assert all("0123456789abcdef" not in e["message"] for e in traces)
    assert "<redacted>" in traces[0]["message"]
    assert len(sent.data) == 2 and sent.data[0].startswith(b"SIP/2.0 404")


def test_log_keys_in_site_ini():
    cfg = parse_config("[log]\nformat = json\nsip_trace = yes\n[metrics]\nenabled = no\n")
    assert cfg.section("log")["format"] == "json" and cfg.section("log")["sip_trace"] is True
    assert cfg.section("metrics")["enabled"] is False
    assert parse_config("").section("log")["format"] == "text"
    for text, where in (
        ("[log]\nformat = xml\n", "[log] format"),
        ("[log]\nsip_trace = maybe\n", "[log] sip_trace"),
        ("[metrics]\nenabled = perhaps\n", "[metrics] enabled"),
        ("[overlay]\nbootstrap = http://a:1/.well-known/sosimple-config\n", "[overlay] bootstrap"),
        ("[overlay]\nbootstrap = https://a:1/x b:2\n", "[overlay] bootstrap"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_config(text)
        assert where in str(e.value) and "\n" not in str(e.value)
    url = "https://ring.example:8443/.well-known/sosimple-config"
    assert parse_config(f"[overlay]\nbootstrap = {url}\n").section("overlay")["bootstrap"] == (url,)


def test_a_send_without_waiting_is_traced_too():
    """The transactions send through ``send_nowait`` when the transport has
    one (UDP); the trace must see those messages as well."""
    from twisted.logger import LogPublisher, Logger

    captured: list = []
    publisher = LogPublisher(captured.append)
    old = logs.trace_log
    logs.trace_log = Logger(namespace="sosimple.sip.trace", observer=publisher)

    class Nowait:
        def __init__(self):
            self.data = []

        def send(self, data, dest, *local):
            raise AssertionError("send_nowait should have been used")

        def send_nowait(self, data, dest, *local):
            self.data.append(data)

    inner = Nowait()
    try:
        assert logs.TracingTransport(inner).send_nowait(b"SIP/2.0 401 Unauthorized\r\n\r\n", "udp:127.0.0.1:5070") is None
    finally:
        logs.trace_log = old
    assert inner.data == [b"SIP/2.0 401 Unauthorized\r\n\r\n"]
    assert [e["direction"] for e in captured] == ["sent to"]
