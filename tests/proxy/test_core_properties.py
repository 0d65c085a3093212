"""Properties of the whole proxy on bad input: a mutated request or response
fed through the stack (parser, transaction layer, core, context) never
raises and never reaches the "last line of defence" (log.failure)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.stack import SipStack
from tests.proxy.harness import PROXY_UDP, Harness
from tests.sip.test_parser_properties import SEEDS

FAST = settings(
    max_examples=int(os.environ.get("SOSIMPLE_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

SOURCE = Peer("udp", "127.0.0.1", 5070)
BOB = "sip:bob@127.0.0.1:6001"
PROXY_SEEDS = [
    (
        "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-m;rport\r\n"
        "Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: m@x\r\n"
        "CSeq: 1 MESSAGE\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nContent-Length: 2\r\n\r\nhi"
    ).encode(),
    (
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i;rport\r\n"
        "Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: i@x\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
    ).encode(),
    (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsp0.x\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i;rport=5070\r\nTo: <sip:bob@example.com>;tag=b\r\n"
        "From: <sip:a@example.com>;tag=1\r\nCall-ID: i@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode(),
    (
        "ACK sip:bob@127.0.0.1:6001 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a;rport\r\n"
        "Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5060;lr>, <sip:f-dGNwOjEyNy4wLjAuMTo0MDAwMA@127.0.0.1:5060;lr>\r\n"
        "To: <sip:bob@example.com>;tag=b\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: i@x\r\nCSeq: 1 ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode(),
]


class Stackless(SipStack):
    """The real SipStack's message handling on the harness's layers."""

    def __init__(self, harness: Harness) -> None:  # no MultiService setup, no sockets
        self.tu = harness.core
        self.transactions = harness.layer
        self.transport = harness.wire


def make() -> tuple[Harness, Stackless]:
    h = Harness("[routes]\nother.test = sip:127.0.0.1:5080\n")
    h.register("bob", BOB)
    return h, Stackless(h)


def feed(data: bytes) -> list[dict]:
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        h, stack = make()
        stack.messageReceived(data, SOURCE, PROXY_UDP)
        h.advance(40, step=2.0)  # every timer the message started runs out
    finally:
        globalLogPublisher.removeObserver(observe)
    return failures


def mutate(seed: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "dup"]))
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] = data.draw(st.sampled_from(b" :;,<>@\"\\\r\n0123456789zZ%[]="))
        elif op == "delete":
            del buf[i : i + data.draw(st.integers(1, 12))]
        elif op == "insert":
            buf[i:i] = data.draw(st.sampled_from([b";lr", b",", b"<sip:127.0.0.1:5060;lr>", b"\r\nRoute: <sip:x>",
                                                 b"\r\nVia: SIP/2.0/TCP [::1]:1", b"tag=", b"0", b"\r\n"]))
        else:
            j = data.draw(st.integers(i, min(len(buf), i + 40)))
            buf[j:j] = buf[i:j]
    return bytes(buf)


@FAST
@given(st.sampled_from(PROXY_SEEDS + SEEDS), st.data())
def test_mutated_messages_never_reach_the_last_line_of_defence(seed: bytes, data: st.DataObject) -> None:
    message = mutate(seed, data)
    failures = feed(message)
    assert not failures, (message, [f.get("log_format") for f in failures], failures[0]["log_failure"].getTraceback())


def test_the_seeds_themselves_go_through_cleanly():
    for seed in PROXY_SEEDS + SEEDS:
        assert not feed(seed), seed
