"""Python CPU per call, in process, without sockets (not a `make bench` section).

The whole proxy as ``twistd`` builds it (``wiring.build_service`` from a
site.ini like ``bench.sip_load``'s), but the datagrams are handed to its UDP
protocol directly and what it sends is captured instead of reaching the
kernel; a tiny UAC and UAS written here answer it.  What is left is the
proxy's own work per call (parsing, transactions, proxy logic, timers
scheduled), repeatable to a few percent on a shared machine, which the
sipp runs (``bench.cpu_quick``) are not.  The kernel's part (epoll, recvfrom,
sendto, wake-ups) is not in these figures.

    python -m bench.inproc [REGISTER] [REGISTER-AUTH] [MESSAGE] [INVITE] [--calls=N] [--profile] [--nogc]
    python -m bench.inproc --summary   # top 15 functions per workload, markdown
    python -m bench.inproc --summary --out=bench/profiles   # one file per workload (bench.profiles)
"""

from __future__ import annotations

import cProfile
import gc
import hashlib
import io
import pstats
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor

from bench.sip_load import BENCH_LIMITS, DOMAIN, PASSWORD, write_users_file
from sosimple_proxy.config import parse_config
from sosimple_proxy.testing import free_port
from sosimple_proxy.wiring import build_service

UAC = ("127.0.0.1", 40000)
UAS = ("127.0.0.1", 40002)


class Capture:
    """Stands for the UDP socket: keeps what the proxy sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.sent.append((data, addr))
        return len(data)

    def close(self) -> None:
        pass

    def take(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self.sent = self.sent, []
        return out


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def _get(lines: list[bytes], *names: bytes) -> list[bytes]:
    out = []
    for ln in lines[1:]:
        name, _, value = ln.partition(b":")
        if name.strip().lower() in names:
            out.append(value.strip())
    return out


def answer(request: bytes, status: bytes, tag: bytes, contact: bytes, rr: bool = True, body: bytes = b"") -> bytes:
    """A UAS's response: Vias, From, To (+tag), Call-ID, CSeq copied."""
    lines = _lines(request)
    out = [b"SIP/2.0 " + status]
    for ln in lines[1:]:
        low = ln.split(b":", 1)[0].strip().lower()
        if low in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq") or (rr and low == b"record-route"):
            out.append(ln)
        elif low in (b"to", b"t"):
            out.append(ln if b";tag=" in ln else ln + b";tag=" + tag)
    if contact:
        out.append(b"Contact: <" + contact + b">")
    if body:
        out.append(b"Content-Type: application/sdp")
    out.append(b"Content-Length: %d\r\n\r\n" % len(body))
    return b"\r\n".join(out) + body


SDP = (b"v=0\r\no=sipp 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


WORKLOADS = ("REGISTER", "REGISTER-AUTH", "MESSAGE", "INVITE")


class Harness:
    def __init__(self, auth: bool = False) -> None:
        port = free_port("udp")
        ini = (f"[proxy]\nlisten = udp:127.0.0.1:{port}\ndomains = {DOMAIN}\n"
               "[overlay]\nlisten =\n[admin]\nlisten =\n[location]\norder = local\n[limits]\n"
               + "".join(f"{k} = {v}\n" for k, v in BENCH_LIMITS.items()))
        if auth:  # as bench.sip_load's REGISTER-AUTH: every user's password PASSWORD, MD5 only
            self.tmp = Path(tempfile.mkdtemp(prefix="bench-inproc-"))
            ini += ("auth_failures = 0\n[auth]\n"
                    f"users_file = {write_users_file(self.tmp / 'users')}\nrequired = yes\nrealm = {DOMAIN}\n"
                    f"algorithms = MD5\ntrusted =\nnonce_secret_file = {self.tmp / 'nonce-secret'}\n")
        self.cfg = parse_config(ini, "inproc.ini")
        self.top = build_service(self.cfg, _reactor)
        self.top.startService()
        stack = _find(self.top, "transactions")
        self.layer = stack.transport
        _addr, port_obj = self.layer._udp[0]
        self.proto = port_obj.protocol
        self.cap = Capture()
        port_obj.stopListening()
        # The port closes its socket in a reactor call of its own: let it
        # run now, or it would take the capture away at the first tick.
        _reactor.runUntilCurrent()
        port_obj.socket = self.cap
        self.n = 0
        self.feed = self.proto.datagramReceived

    def register(self, user: str, contact: tuple[str, int] = UAC, expires: int = 3600) -> None:
        self.n += 1
        n = self.n
        msg = (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {contact[0]}:{contact[1]};branch=z9hG4bK-r{n};rport\r\n"
               "Max-Forwards: 70\r\n"
               f"From: <sip:{user}@{DOMAIN}>;tag={n}R\r\n"
               f"To: <sip:{user}@{DOMAIN}>\r\n"
               f"Call-ID: {n}-reg@127.0.0.1\r\n"
               "CSeq: 1 REGISTER\r\n"
               f"Contact: <sip:{user}@{contact[0]}:{contact[1]}>\r\n"
               f"Expires: {expires}\r\n"
               "User-Agent: sipp bench\r\n"
               "Content-Length: 0\r\n\r\n").encode()
        self.feed(msg, contact)
        out = self.cap.take()
        assert out and out[-1][0].startswith(b"SIP/2.0 200"), out

    def register_auth(self, user: str, contact: tuple[str, int] = UAC) -> None:
        """REGISTER, its 401, the REGISTER with an MD5 qop=auth answer, its 200."""
        self.n += 1
        n = self.n

        def register(cseq: int, extra: str = "") -> bytes:
            return (f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {contact[0]}:{contact[1]};branch=z9hG4bK-a{n}-{cseq};rport\r\n"
                    "Max-Forwards: 70\r\n"
                    f"From: <sip:{user}@{DOMAIN}>;tag={n}A\r\n"
                    f"To: <sip:{user}@{DOMAIN}>\r\n"
                    f"Call-ID: {n}-areg@127.0.0.1\r\n"
                    f"CSeq: {cseq} REGISTER\r\n"
                    f"Contact: <sip:{user}@{contact[0]}:{contact[1]}>\r\n"
                    f"{extra}Expires: 3600\r\n"
                    "Content-Length: 0\r\n\r\n").encode()

        self.feed(register(1), contact)
        out = self.cap.take()
        assert out and out[-1][0].startswith(b"SIP/2.0 401"), out
        challenge = _get(_lines(out[-1][0]), b"www-authenticate")[0].decode()
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
        uri, nc, cnonce = f"sip:{DOMAIN}", "00000001", f"c{n}"

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1, ha2 = md5(f"{user}:{params['realm']}:{PASSWORD}"), md5(f"REGISTER:{uri}")
        resp = md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        opaque = f', opaque="{params["opaque"]}"' if "opaque" in params else ""
        self.feed(register(2, f'Authorization: Digest username="{user}", realm="{params["realm"]}", '
                              f'nonce="{params["nonce"]}", uri="{uri}", response="{resp}", algorithm=MD5, '
                              f'qop=auth, nc={nc}, cnonce="{cnonce}"{opaque}\r\n'), contact)
        out = self.cap.take()
        assert out and out[-1][0].startswith(b"SIP/2.0 200"), out

    def message(self) -> None:
        self.n += 1
        n = self.n
        body = b"Hello number %d.\r\n" % n
        msg = (f"MESSAGE sip:uas@{DOMAIN} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch=z9hG4bK-m{n};rport\r\n"
               "Max-Forwards: 70\r\n"
               f"From: <sip:sipp@{DOMAIN}>;tag={n}M\r\n"
               f"To: <sip:uas@{DOMAIN}>\r\n"
               f"Call-ID: {n}-msg@127.0.0.1\r\n"
               "CSeq: 1 MESSAGE\r\n"
               "Content-Type: text/plain\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        self.feed(msg, UAC)
        fwd = [d for d, a in self.cap.take() if a == UAS]
        assert fwd, "MESSAGE not forwarded"
        self.feed(answer(fwd[0], b"200 OK", b"%dU" % n, b"", rr=False), UAS)
        out = self.cap.take()
        assert any(d.startswith(b"SIP/2.0 200") and a == UAC for d, a in out), out

    def invite(self) -> None:
        self.n += 1
        n = self.n
        sdp = SDP
        inv = (f"INVITE sip:uas@{DOMAIN} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch=z9hG4bK-i{n};rport\r\n"
               "Max-Forwards: 70\r\n"
               f"From: <sip:sipp@{DOMAIN}>;tag={n}I\r\n"
               f"To: <sip:uas@{DOMAIN}>\r\n"
               f"Call-ID: {n}-inv@127.0.0.1\r\n"
               "CSeq: 1 INVITE\r\n"
               f"Contact: <sip:sipp@{UAC[0]}:{UAC[1]}>\r\n"
               "Content-Type: application/sdp\r\n"
               f"Content-Length: {len(sdp)}\r\n\r\n").encode() + sdp
        self.feed(inv, UAC)
        fwd = [d for d, a in self.cap.take() if a == UAS]
        assert fwd, "INVITE not forwarded"
        contact = b"sip:uas@%s:%d" % (UAS[0].encode(), UAS[1])
        tag = b"%dU" % n
        self.feed(answer(fwd[0], b"180 Ringing", tag, contact), UAS)
        self.feed(answer(fwd[0], b"200 OK", tag, contact, body=SDP), UAS)
        out = self.cap.take()
        ok = [d for d, a in out if a == UAC and d.startswith(b"SIP/2.0 200")]
        assert ok, out
        lines = _lines(ok[0])
        routes = _get(lines, b"record-route")
        to = _get(lines, b"to", b"t")[0]
        route_lines = "".join(f"Route: {r.decode()}\r\n" for r in routes)
        for method, cseq, branch in (("ACK", 1, f"z9hG4bK-a{n}"), ("BYE", 2, f"z9hG4bK-b{n}")):
            req = (f"{method} {contact.decode()} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {UAC[0]}:{UAC[1]};branch={branch};rport\r\n"
                   "Max-Forwards: 70\r\n" + route_lines +
                   f"From: <sip:sipp@{DOMAIN}>;tag={n}I\r\n"
                   f"To: {to.decode()}\r\n"
                   f"Call-ID: {n}-inv@127.0.0.1\r\n"
                   f"CSeq: {cseq} {method}\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
            self.feed(req, UAC)
            fwd = [d for d, a in self.cap.take() if a == UAS]
            assert fwd, f"{method} not forwarded"
        self.feed(answer(fwd[0], b"200 OK", b"", b"", rr=False), UAS)
        out = self.cap.take()
        assert any(a == UAC and d.startswith(b"SIP/2.0 200") for d, a in out), out

    def stop(self) -> None:
        try:
            self.top.stopService()
        except Exception:
            pass


def _find(service: Any, attr: str) -> Any:
    if hasattr(service, attr) and hasattr(service, "transport"):
        return service
    for child in getattr(service, "services", []):
        got = _find(child, attr)
        if got is not None:
            return got
    return None


def run_calls(h: Harness, workload: str, calls: int, warmup: int = 200) -> float:
    """CPU seconds per call (process time) for ``calls`` calls."""
    if workload == "MESSAGE" or workload == "INVITE":
        h.register("uas", UAS)
    one = {"REGISTER": lambda i: h.register(f"user{i % 10000:05d}"),
           "REGISTER-AUTH": lambda i: h.register_auth(f"user{i % 10000:05d}"),
           "MESSAGE": lambda i: h.message(), "INVITE": lambda i: h.invite()}[workload]
    tick = _reactor.runUntilCurrent  # expired timers run, as in the real loop
    for i in range(warmup):  # warm-up
        one(i)
    t0 = time.process_time()
    for i in range(calls):
        one(i)
        if i % 50 == 0:
            tick()
    return (time.process_time() - t0) / calls


def profile_summary(workloads: tuple[str, ...] = ("REGISTER", "MESSAGE", "INVITE"), calls: int = 1000,
                    top: int = 15) -> str:
    """The top functions by own time for each workload (cProfile, cyclic GC
    off so that no collection is charged to an allocation site), with
    calls per SIP call: the counts are exact, the times relative."""
    return "\n".join(profile_summaries(workloads, calls, top).values())


def profile_summaries(workloads: tuple[str, ...] = WORKLOADS, calls: int = 1000, top: int = 15) -> dict[str, str]:
    """:func:`profile_summary`, one markdown text per workload."""
    out: dict[str, list[str]] = {}
    gc.freeze()
    was = gc.isenabled()
    gc.disable()
    try:
        for w in workloads:
            h = Harness(auth=w == "REGISTER-AUTH")
            try:
                run_calls(h, w, 100, 100)
                # process time, not wall time: on a shared machine a preempted
                # function would be charged for the wait
                prof = cProfile.Profile(time.process_time)
                prof.enable()
                run_calls(h, w, calls, 0)
                prof.disable()
            finally:
                h.stop()
            st = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            total = sum(v[2] for v in st.values())
            ncalls = sum(v[1] for v in st.values())
            rows = sorted(st.items(), key=lambda kv: -kv[1][2])[:top]
            text = out[w] = [f"### {w}: {ncalls / calls:,.0f} Python function calls per call", ""]
            text.append(f"In process (`bench.inproc`), {calls:,} calls, cProfile, cyclic GC off: the counts are exact, "
                        f"the times relative (process time; {total * 1e6 / calls:,.0f} us per call under the profiler).")
            text.append("")
            text.append("| own time | calls per call | function |")
            text.append("| ---: | ---: | --- |")
            for (path, line, name), (_cc, nc, tt, _ct, _callers) in rows:
                where = path.split("/sosimple_proxy/")[-1].split("/site-packages/")[-1]
                text.append(f"| {100 * tt / total:.1f}% | {nc / calls:.1f} | `{name}` ({where}:{line}) |")
            text.append("")
    finally:
        if was:
            gc.enable()
    return {w: "\n".join(lines) for w, lines in out.items()}


def main(argv: list[str]) -> None:
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if "--summary" in argv:
        chosen = tuple(a for a in argv if a in WORKLOADS)
        if "out" in opts:  # bench.profiles: one file per workload
            out = Path(opts["out"])
            out.mkdir(parents=True, exist_ok=True)
            for w, text in profile_summaries(chosen or WORKLOADS).items():
                (out / f"{w}.md").write_text(text)
                print(f"{out / (w + '.md')}", flush=True)
        else:
            print(profile_summary(chosen or ("REGISTER", "MESSAGE", "INVITE")))
        return
    wls = [a for a in argv if a in WORKLOADS] or ["REGISTER", "MESSAGE", "INVITE"]
    calls = int(opts.get("calls", 5000))
    gc.freeze()
    gc.set_threshold(10_000, 10, 1_000)  # as sosimple_proxy.service does
    if "--nogc" in argv:
        gc.disable()  # the profile then charges no collection to an allocation
    for w in wls:
        h = Harness(auth=w == "REGISTER-AUTH")
        try:
            if "--profile" in argv:
                prof = cProfile.Profile()
                prof.enable()
                per = run_calls(h, w, calls)
                prof.disable()
                buf = io.StringIO()
                st = pstats.Stats(prof, stream=buf)
                st.sort_stats("tottime").print_stats(int(opts.get("top", 35)))
                print(buf.getvalue())
            else:
                per = run_calls(h, w, calls, int(opts.get("warmup", 200)))
            print(f"{w}: {per * 1e6:.1f} us of Python CPU per call (in process, {calls} calls)", flush=True)
        finally:
            h.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
