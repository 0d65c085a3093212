"""Parser throughput: ours against ``twisted.protocols.sip`` on the same
messages, in the same run, reported as messages/s and as ratios.

Two figures per message:

(a) proxy: what a proxy does with each request -- parse, read the top Via,
    CSeq, Call-ID, From tag, To, Max-Forwards and Route, add a Via,
    serialize.  For Twisted: ``MessagesParser`` + the equivalent lookups in
    its header dict (``parseViaHeader``, ``parseAddress``) + a Via inserted
    + ``toString()``.  Ours also validates the request (all Vias, From, To,
    Contact, Request-URI), which Twisted does not.
(b) full: a parse that touches every header and every parameter: every
    Via, every name-addr (From, To, Contact, Route, Record-Route) with its
    URI and parameters, the Request-URI, CSeq, Max-Forwards, and the list
    headers split into values.

Ours twice: with the compiled fast paths (``sip/_cparse.c``, what runs
when it was built) and with the pure-Python code alone (``accel.use``, as
``SOSIMPLE_PURE_PYTHON=1`` would run it).

Timed with ``time.process_time`` (CPU time of this process) over fixed slices, best of several
rounds, ours and Twisted's alternating so that noise hits both.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

from sosimple_proxy.sip import accel
from sosimple_proxy.sip.grammar import split_commas
from sosimple_proxy.sip.message import LIST_HEADERS
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.via import Via

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy.biloxi.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: Linphone/5.2.0 (belle-sip/5.2.0)\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 227\r\n"
    b"\r\n"
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n"
    b"s=Talk\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49172 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=sendrecv\r\n"
)

REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.4:5060;transport=udp>;expires=3600\r\n"
    b"Expires: 7200\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO\r\n"
    b"Supported: path, outbound, gruu\r\n"
    b"User-Agent: baresip v3.10.1 (x86_64/linux)\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

MESSAGES = {"INVITE with SDP": INVITE, "REGISTER": REGISTER}
NEW_VIA = Via("UDP", "proxy.example.com", 5060, {"branch": "z9hG4bK-proxy-1", "rport": None})
NEW_VIA_TEXT = str(NEW_VIA)


# -- ours -----------------------------------------------------------------


def ours_proxy(data: bytes) -> bytes:
    msg = parse_message(data)
    via = msg.top_via
    via.branch  # noqa: B018
    cseq = msg.cseq
    cseq.seq, cseq.method  # noqa: B018
    msg.call_id  # noqa: B018
    msg.from_.tag  # noqa: B018
    msg.to.tag  # noqa: B018
    msg.max_forwards  # noqa: B018
    msg.routes  # noqa: B018
    msg.headers.prepend("Via", str(Via("UDP", "proxy.example.com", 5060, {"branch": "z9hG4bK-proxy-1", "rport": None})))
    return msg.serialize()


def _touch_params(params: dict) -> None:  # type: ignore[type-arg]
    for _k, _v in params.items():
        pass


def ours_full(data: bytes) -> object:
    msg = parse_message(data)
    uri = msg.ruri  # type: ignore[union-attr]
    _touch_params(uri.params)
    for via in msg.vias:
        via.host, via.port, via.transport  # noqa: B018
        _touch_params(via.params)
    for na in (msg.from_, msg.to, *msg.contacts, *msg.routes, *msg.record_routes):
        na.display  # noqa: B018
        na.uri.user, na.uri.host, na.uri.port  # noqa: B018
        _touch_params(na.uri.params)
        _touch_params(na.params)
    msg.cseq, msg.max_forwards, msg.call_id  # noqa: B018
    done = {"via", "from", "to", "contact", "route", "record-route", "cseq", "max-forwards", "call-id"}
    for key, _name, value in msg.headers._fields:
        if key not in done:
            if key in LIST_HEADERS:
                split_commas(value)
            else:
                value.strip()
    return msg


# -- Twisted --------------------------------------------------------------


def _twisted() -> tuple[Callable[[bytes], object], Callable[[bytes], object]]:
    from twisted.protocols import sip as tsip

    def parse(data: bytes) -> tsip.Message:
        out: list[tsip.Message] = []
        p = tsip.MessagesParser(out.append)
        p.dataReceived(data)
        p.dataDone()
        return out[0]

    def proxy(data: bytes) -> bytes:
        msg = parse(data)
        h = msg.headers
        via = tsip.parseViaHeader(h["via"][0])
        via.branch  # noqa: B018
        seq, method = h["cseq"][0].split()
        int(seq)
        h["call-id"][0]  # noqa: B018
        tsip.parseAddress(h["from"][0])[2].get("tag")
        tsip.parseAddress(h["to"][0])[2].get("tag")
        int(h["max-forwards"][0])
        [tsip.parseAddress(r) for r in h.get("route", ())]
        h["via"].insert(0, tsip.Via("proxy.example.com", 5060, branch="z9hG4bK-proxy-1", rportRequested=True).toString())
        return msg.toString().encode("utf-8")

    def full(data: bytes) -> object:
        msg = parse(data)
        h = msg.headers
        uri = msg.uri
        uri.username, uri.host, uri.port, uri.other  # noqa: B018
        for v in h.get("via", ()):
            via = tsip.parseViaHeader(v)
            via.host, via.port, via.transport, via.otherParams  # noqa: B018
        for name in ("from", "to", "contact", "route", "record-route"):
            for v in h.get(name, ()):
                for part in v.split(",") if name in ("contact", "route", "record-route") else (v,):
                    display, u, params = tsip.parseAddress(part)
                    u.username, u.host, u.port, u.other  # noqa: B018
                    for _k, _v in params.items():
                        pass
        seq, method = h["cseq"][0].split()
        int(seq)
        int(h["max-forwards"][0])
        done = {"via", "from", "to", "contact", "route", "record-route", "cseq", "max-forwards", "call-id"}
        for name, values in h.items():
            if name not in done:
                for v in values:
                    if name in LIST_HEADERS:
                        [x.strip() for x in v.split(",")]
                    else:
                        v.strip()
        return msg

    return proxy, full


# -- timing ---------------------------------------------------------------


def rate(fn: Callable[[bytes], object], data: bytes, seconds: float) -> float:
    """Messages per CPU second (process time) over about ``seconds`` of it:
    on a shared, loaded machine wall-clock rates measure the neighbours."""
    fn(data)
    n = 0
    batch = 200
    gc_was = gc.isenabled()
    gc.disable()
    try:
        clock = time.process_time
        start = clock()
        end = start + seconds
        while True:
            for _ in range(batch):
                fn(data)
            n += batch
            now = clock()
            if now >= end:
                return n / (now - start)
    finally:
        if gc_was:
            gc.enable()


def measure(ours: Callable[[bytes], object], theirs: Callable[[bytes], object], data: bytes,
            rounds: int = 3, seconds: float = 0.6) -> tuple[float, float]:
    best_ours = best_theirs = 0.0
    for _ in range(rounds):
        best_ours = max(best_ours, rate(ours, data, seconds))
        best_theirs = max(best_theirs, rate(theirs, data, seconds))
    return best_ours, best_theirs


def measure3(ours: Callable[[bytes], object], theirs: Callable[[bytes], object], data: bytes,
             rounds: int = 3, seconds: float = 0.6) -> tuple[float, float, float]:
    """Best rates of ours compiled, ours pure, Twisted, the three alternating."""
    compiled = accel.active() is not None
    best = [0.0, 0.0, 0.0]
    try:
        for _ in range(rounds):
            if compiled:
                accel.use(True)
                best[0] = max(best[0], rate(ours, data, seconds))
            accel.use(False)
            best[1] = max(best[1], rate(ours, data, seconds))
            best[2] = max(best[2], rate(theirs, data, seconds))
    finally:
        accel.use(compiled)
    return best[0], best[1], best[2]


def check_equivalent() -> None:
    """Both sides must really handle the bench messages."""
    t_proxy, t_full = _twisted()
    for data in MESSAGES.values():
        ours = parse_message(ours_proxy(data))
        theirs = parse_message(t_proxy(data))  # type: ignore[arg-type]
        assert ours.top_via.host == theirs.top_via.host == "proxy.example.com"
        assert ours.body == theirs.body == parse_message(data).body
        assert len(ours.vias) == len(theirs.vias) == 2
        ours_full(data)
        t_full(data)


def run(rounds: int = 3, seconds: float = 0.6) -> str:
    import twisted

    check_equivalent()
    t_proxy, t_full = _twisted()
    rows = []
    compiled = accel.active() is not None
    for label, data in MESSAGES.items():
        for figure, ours, theirs in (
            ("(a) proxy workload", ours_proxy, t_proxy),
            ("(b) full parse", ours_full, t_full),
        ):
            c, p, t = measure3(ours, theirs, data, rounds, seconds)
            cc = f"{c:,.0f}" if compiled else "not built"
            ratios = f"{c / t:.2f}x | {c / p:.2f}x" if compiled else "- | -"
            rows.append(f"| {label} ({len(data)} B) | {figure} | {cc} | {p:,.0f} | {t:,.0f} | {ratios} | {p / t:.2f}x |")
    return "\n".join(
        [
            "## Parser (sosimple_proxy.sip.parser vs twisted.protocols.sip)",
            "",
            f"Twisted {twisted.__version__}, `MessagesParser`; best of {rounds} rounds of {seconds} s each, "
            f"alternating; messages per CPU second of one core (process time: the machine is shared). Ours with the compiled fast paths (`sip/_cparse.c`, "
            f"the default when built) and with the pure-Python code alone (`SOSIMPLE_PURE_PYTHON=1`). "
            f"Ratios > 1: the first named is faster.",
            "Ours validates the request in (a) too (all Vias, From, To, Contact, Request-URI, CSeq method, "
            "Content-Length, control characters), Twisted does not. In (b) ours checks every URI and parameter "
            "against the RFC 3261 grammar and builds objects for them; Twisted's splits on ';' and ',' and "
            "accepts malformed input.",
            "",
            "| message | figure | ours compiled msg/s | ours pure msg/s | Twisted msg/s | compiled / Twisted "
            "| compiled / pure | pure / Twisted |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )


if __name__ == "__main__":  # pragma: no cover
    print(run())
