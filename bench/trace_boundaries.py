"""Count the sosimple_proxy modules a REGISTER and an INVITE pass through,
from the datagram to the response, in the in-process harness.

    python bench/trace_boundaries.py

Prints, per flow, the distinct modules entered and the distinct
caller -> callee module pairs (the boundaries crossed).
"""

from __future__ import annotations

import sys

from sosimple_proxy.sip.stack import SipStack
from sosimple_proxy.sip.address import Peer
from tests.proxy.harness import PROXY_UDP, Harness, invite


class Stackless(SipStack):
    def __init__(self, harness: Harness) -> None:  # the real message handling, no sockets
        self.tu = harness.core
        self.transactions = harness.layer
        self.transport = harness.wire


def module_of(frame) -> str | None:
    name = frame.f_globals.get("__name__", "")
    return name if name.startswith("sosimple_proxy") else None


def trace(run) -> tuple[set[str], set[tuple[str, str]]]:
    modules: set[str] = set()
    edges: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event != "call":
            return
        callee = module_of(frame)
        if callee is None:
            return
        modules.add(callee)
        back = frame.f_back
        while back is not None and module_of(back) is None:
            back = back.f_back
        caller = module_of(back) if back is not None else None
        if caller is not None and caller != callee:
            edges.add((caller, callee))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return modules, edges


def register_flow() -> None:
    h = Harness()
    stack = Stackless(h)
    data = (
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-reg-1;rport\r\n"
        "Max-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:bob@example.com>;tag=r\r\n"
        "Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@127.0.0.1:6001>\r\nExpires: 3600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    modules, edges = trace(lambda: stack.messageReceived(data, Peer("udp", "127.0.0.1", 5099), PROXY_UDP))
    assert h.wire.sent and h.wire.sent[-1][0].status == 200
    report("REGISTER -> 200", modules, edges)


def invite_flow() -> None:
    h = Harness()
    h.register("bob", "sip:bob@127.0.0.1:6001")
    stack = Stackless(h)
    data = invite().replace("\n", "\r\n").encode()

    def run() -> None:
        stack.messageReceived(data, Peer("udp", "127.0.0.1", 5070), PROXY_UDP)
        sent = h.wire.take()
        (req, _), = h.sent_requests(sent, "INVITE")
        from sosimple_proxy.sip.message import make_response

        ok = make_response(req, 200, to_tag="callee")
        stack.messageReceived(ok.serialize(), Peer("udp", "127.0.0.1", 6001), PROXY_UDP)

    modules, edges = trace(run)
    assert any(getattr(m, "status", 0) == 200 for m, _, _ in h.wire.sent)
    report("INVITE -> forwarded, 200 -> upstream", modules, edges)


def report(flow: str, modules: set[str], edges: set[tuple[str, str]]) -> None:
    print(f"{flow}: {len(modules)} modules, {len(edges)} module boundaries (caller -> callee pairs)")
    for m in sorted(modules):
        print(f"    {m}")


if __name__ == "__main__":
    register_flow()
    invite_flow()
