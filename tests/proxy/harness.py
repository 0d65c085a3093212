"""The whole proxy core in-process: real transaction layer, fake wire, Clock.

Messages go in as bytes from a Peer, everything the proxy sends is recorded
parsed, and time moves only when the test says.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer

from sosimple_proxy.config import parse_config
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.interfaces import ISipStack, ITransportLayer
from sosimple_proxy.sip.message import Message, Request, Response
from sosimple_proxy.sip.parser import ParseError, parse_message
from sosimple_proxy.sip.timers import TimerConfig
from sosimple_proxy.sip.transaction import TransactionLayer
from sosimple_proxy.sip.transport import TransportError
from sosimple_proxy.wiring import build_proxy

PROXY_UDP = ListenAddress("udp", "127.0.0.1", 5060)
PROXY_TCP = ListenAddress("tcp", "127.0.0.1", 5060)
CALLER = Peer("udp", "127.0.0.1", 5070)


@implementer(ITransportLayer)
class Wire:
    """The transport layer's place: records sends, fails some on demand."""

    def __init__(self, clock: Clock, listening: list[ListenAddress]) -> None:
        self.clock = clock
        self._listening = listening
        self.sent: list[tuple[Message, Peer, Any]] = []
        self.fail: set[Peer] = set()
        self.open_flows: set[Peer] = set()
        #: what TLS peers presented (the real layer reads its connections)
        self.certificates: dict[Peer, Any] = {}

    def send(self, data: bytes, dest: Peer, local: Any = None) -> defer.Deferred:
        try:
            sent: Any = parse_message(data)
        except ParseError:
            # e.g. a 400 that echoes the malformed Via of the request it answers
            sent = parse_message(data, validate=False)
        self.sent.append((sent, dest, local))
        if dest in self.fail:
            return defer.fail(TransportError(dest, "connection refused"))
        return defer.succeed(None)

    def listening(self) -> list[ListenAddress]:
        return list(self._listening)

    def has_connection(self, peer: Peer) -> bool:
        return peer in self.open_flows

    def peer_certificate(self, peer: Peer) -> Any:
        return self.certificates.get(peer)

    def take(self) -> list[tuple[Message, Peer]]:
        out = [(m, d) for m, d, _ in self.sent]
        del self.sent[:]
        return out


@implementer(ISipStack)
class Stack:
    """The two layers of a SipStack that the proxy uses."""

    def __init__(self, transport: Wire, transactions: TransactionLayer) -> None:
        self.transport = transport
        self.transactions = transactions


class Harness:
    """The proxy as the composition root builds it, on a Wire and a Clock."""

    def __init__(
        self,
        ini: str = "",
        listening: list[ListenAddress] | None = None,
        rfc3263: Any = None,
        clock: Clock | None = None,
        on_auth_failure: Any = None,
    ) -> None:
        text = "[proxy]\ndomains = example.com\nlisten = udp:127.0.0.1:5060, tcp:127.0.0.1:5060\n" + ini
        text += "\n[location]\norder = local routes\n" if "[location]" not in ini else ""
        # The routing tests' peers (127.0.0.1) are a trusted lab, as in the
        # conf/site.ini of `make run`: the relay rule lets them go anywhere.
        # Security tests send from other addresses, or give their own [auth].
        text += "\n[auth]\ntrusted = 127.0.0.1\n" if "[auth]" not in ini else ""
        self.cfg = parse_config(text, "test.ini")
        self.clock = clock or Clock()
        self.wire = Wire(self.clock, listening or [PROXY_UDP, PROXY_TCP])
        self.proxy = build_proxy(self.cfg, self.clock, rfc3263=rfc3263, on_auth_failure=on_auth_failure)
        self.core = self.proxy.core
        self.providers = self.proxy.providers
        self.layer = TransactionLayer(
            self.clock, self.wire, self.core, TimerConfig(self.cfg.sip["t1"], self.cfg.sip["t2"], self.cfg.sip["t4"])
        )
        self.core.attach(Stack(self.wire, self.layer))  # what SipStack does
        self.proxy.timers.startService()

    def receive(self, data: str | bytes | Message, source: Peer = CALLER, local: ListenAddress = PROXY_UDP) -> None:
        if isinstance(data, Message):
            data = data.serialize()
        if isinstance(data, str):
            data = data.replace("\n", "\r\n").encode()
        self.layer.receive(parse_message(data), source, local)

    def advance(self, seconds: float, step: float = 0.25) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))

    def register(self, user: str, contact: str, q: float | None = None, extra: str = "", cseq: int = 1) -> Response:
        qp = f";q={q}" if q is not None else ""
        self.receive(
            f"REGISTER sip:example.com SIP/2.0\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bK-reg-{user}-{cseq}-{abs(hash(contact))};rport\n"
            f"Max-Forwards: 70\nTo: <sip:{user}@example.com>\nFrom: <sip:{user}@example.com>;tag=r\n"
            f"Call-ID: reg-{user}-{abs(hash(contact))}\nCSeq: {cseq} REGISTER\n"
            f"Contact: <{contact}>{qp}\n{extra}Expires: 3600\nContent-Length: 0\n\n",
            Peer("udp", "127.0.0.1", 5099),
        )
        sent = self.wire.take()
        assert sent and isinstance(sent[-1][0], Response), sent
        return sent[-1][0]  # type: ignore[return-value]

    def sent_requests(self, sent: list[tuple[Message, Peer]], method: str | None = None) -> list[tuple[Request, Peer]]:
        return [(m, d) for m, d in sent if isinstance(m, Request) and (method is None or m.method == method)]

    def sent_responses(self, sent: list[tuple[Message, Peer]]) -> list[tuple[Response, Peer]]:
        return [(m, d) for m, d in sent if isinstance(m, Response)]

    def answer(self, request: Request, status: int, to_tag: str = "callee", source: Peer | None = None,
               extra: str = "") -> None:
        """The downstream UA answers ``request`` (which we sent) with ``status``."""
        from sosimple_proxy.sip.message import make_response

        r = make_response(request, status, to_tag=to_tag)
        for line in extra.splitlines():
            if line.strip():
                name, value = line.split(":", 1)
                r.headers.add(name.strip(), value.strip())
        via = request.top_via
        src = source or Peer(via.transport.lower(), "127.0.0.1", 9)
        self.layer.receive(parse_message(r.serialize()), src, PROXY_UDP)


def unstamped(record_route: str) -> str:
    """A Record-Route value of ours without its dialog stamp (``;sst=``, an
    HMAC: proxy/dialog_stamp.py), which must be there."""
    stamp = re.search(r";sst=[0-9a-f]{32}(?=[;>])", record_route)
    assert stamp, record_route
    return record_route.replace(stamp.group(0), "")


def invite(uri: str = "sip:bob@example.com", branch: str = "z9hG4bK-caller-1", method: str = "INVITE",
           extra: str = "", to_tag: str | None = None, cseq: int = 1, call_id: str = "call-1@caller") -> str:
    to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} {uri} SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\n"
        f"Max-Forwards: 70\nTo: {to}\nFrom: <sip:alice@example.com>;tag=a1\n"
        f"Call-ID: {call_id}\nCSeq: {cseq} {method}\nContact: <sip:alice@127.0.0.1:5070>\n"
        f"{extra}Content-Length: 0\n\n"
    )
