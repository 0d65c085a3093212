"""The live fuzzer: mutated datagrams and malformed streams at a running proxy.

The proxy runs under twistd in a network namespace of its own (``unshare
-n``, as root; ``--no-netns`` runs on this host's loopback instead).  The
mutated messages name documentation and random addresses in their Vias and
URIs; in a namespace with only loopback, nothing the proxy answers or
forwards can leave the machine.

- UDP: ``--datagrams`` messages mutated from the RFC 4475/5118 torture
  corpus.  After every ``--sync`` of them an OPTIONS is sent and waited for
  (the socket is a queue: the answer comes once the proxy has read what
  came before), and after every ``--probe-every`` it must be answered: the
  proxy must still serve.  RSS is sampled at each probe.
- Streams, over TCP and over TLS: truncated messages, an oversized head, an
  oversized body, never-ending header lines, slow senders (one byte at a
  time, several connections), binary junk, mutated messages, a pipelined
  burst; TLS alone: plaintext to the TLS port, a stalled and a truncated
  handshake.  Each connection must be ended by the proxy (or by us, at the
  end of its case) within a bound, and an OPTIONS must be answered after
  each case.

Prints its figures; ``--json`` writes them.  Exit status 0 when the proxy
never died, answered every probe, and its RSS stayed bounded.

usage: python -m tests.fuzz.live [--datagrams N] [--no-netns] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sosimple_proxy.testing import ProxyProcess, free_port, sip_options_ping  # noqa: E402
from tests.fuzz.mutate import mutate, torture_messages  # noqa: E402

DOMAINS = "example.com example.org example.net company.com localhost"
MAX_MESSAGE = 65536
MESSAGE_TIMEOUT = 2.0  # [sip] message_timeout: slow senders are cut after this
HANDSHAKE_TIMEOUT = 2.0  # [tls] handshake_timeout
CASE_BOUND = 30.0  # seconds any one stream case may take
# RSS may grow while caches (parsed headers, keys) warm up; past the first
# probe it must stay within this many MiB of what it was then.
RSS_SLACK_MB = 96


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def probe(port: int, attempts: int = 5, timeout: float = 2.0) -> bool:
    """An OPTIONS over UDP answered 200, retried (the proxy may be busy)."""
    for _ in range(attempts):
        answer = sip_options_ping("127.0.0.1", port, timeout=timeout)
        if answer is not None and answer.startswith(b"SIP/2.0 200"):
            return True
    return False


# -- UDP


def udp_phase(proxy: ProxyProcess, count: int, probe_every: int, sync: int, seed: int, figures: dict) -> list[str]:
    rng = random.Random(seed)
    corpus = torture_messages()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    errors: list[str] = []
    samples: list[tuple[int, float]] = []
    pid = proxy.process.pid  # type: ignore[union-attr]
    t0 = time.monotonic()
    sent = send_errors = syncs_unanswered = 0
    for i in range(1, count + 1):
        data = mutate(rng.choice(corpus), rng)[:65000]
        try:
            sender.sendto(data, ("127.0.0.1", proxy.port))
            sent += 1
        except OSError:
            send_errors += 1  # ECONNREFUSED from an earlier ICMP, ENOBUFS: not the proxy's doing
        if i % probe_every == 0:
            if not probe(proxy.port):
                errors.append(f"no answer to the OPTIONS probe after {i} datagrams (running: {proxy.running})")
                break
            samples.append((i, rss_mb(pid)))
        elif i % sync == 0:
            syncs_unanswered += not probe(proxy.port, attempts=1, timeout=2.0)
        if not proxy.running:
            errors.append(f"the proxy died after {i} datagrams")
            break
    took = time.monotonic() - t0
    sender.close()
    figures["udp"] = {
        "datagrams": sent,
        "send_errors": send_errors,
        "seconds": round(took, 1),
        "per_second": round(sent / took) if took else None,
        "probes_answered": len(samples),
        "syncs_unanswered": syncs_unanswered,
        "rss_mb": [[i, round(r, 1)] for i, r in samples],
    }
    if len(samples) >= 2:
        base, peak = samples[0][1], max(r for _, r in samples)
        figures["udp"]["rss_growth_mb"] = round(peak - base, 1)
        if peak - base > RSS_SLACK_MB:
            errors.append(f"RSS grew from {base:.0f} to {peak:.0f} MiB over the UDP run")
    return errors


# -- streams

OPTIONS = (
    "OPTIONS sip:localhost SIP/2.0\r\n"
    "Via: SIP/2.0/{t} 127.0.0.1:5999;branch=z9hG4bK-{n}\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:fuzz@localhost>;tag=f{n}\r\nTo: <sip:localhost>\r\n"
    "Call-ID: live-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: {cl}\r\n\r\n"
)


def options(n: int, transport: str, cl: int = 0) -> bytes:
    return OPTIONS.format(t=transport.upper(), n=n, cl=cl).encode()


class Conn:
    """One client connection, TCP or TLS, with bounded reads."""

    def __init__(self, port: int, tls: bool, handshake: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        if tls and handshake:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname="localhost")
        else:
            self.sock = raw
        self.received = b""

    def send(self, data: bytes) -> bool:
        """False once the proxy has closed (or reset) the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            return False

    def closed_by_peer(self, within: float) -> bool:
        """Read until the proxy closes the connection, or ``within`` seconds."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                    ready = True
                else:
                    ready = bool(select.select([self.sock], [], [], max(0.0, min(0.5, deadline - time.monotonic())))[0])
                if not ready:
                    continue
                chunk = self.sock.recv(65536)
            except (ssl.SSLWantReadError, socket.timeout):
                continue
            except (OSError, ssl.SSLError):
                return True
            if not chunk:
                return True
            self.received += chunk
        return False

    def read_answers(self, count: int, within: float) -> int:
        deadline = time.monotonic() + within
        while self.received.count(b"SIP/2.0 ") < count and time.monotonic() < deadline:
            try:
                ready = (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()) or select.select(
                    [self.sock], [], [], 0.5)[0]
                if ready:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    self.received += chunk
            except (ssl.SSLWantReadError, socket.timeout):
                continue
            except (OSError, ssl.SSLError):
                break
        return self.received.count(b"SIP/2.0 ")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def case_truncated(port: int, tls: bool, rng: random.Random) -> str | None:
    """A head cut mid-line, and a body shorter than its Content-Length, then our close."""
    for data in (options(1, "tls" if tls else "tcp")[:57], options(2, "tls" if tls else "tcp", cl=500) + b"0123456789"):
        c = Conn(port, tls)
        c.send(data)
        c.close()
    return None


def case_oversized_head(port: int, tls: bool, rng: random.Random) -> str | None:
    c = Conn(port, tls)
    head = b"OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-big\r\n"
    head += b"X-Big: " + b"a" * (MAX_MESSAGE + 1000) + b"\r\n\r\n"
    c.send(head)
    closed = c.closed_by_peer(CASE_BOUND)
    c.close()
    return None if closed else "a head over max_message_size did not end the connection"


def case_oversized_body(port: int, tls: bool, rng: random.Random) -> str | None:
    c = Conn(port, tls)
    c.send(options(3, "tls" if tls else "tcp", cl=10_000_000))
    closed = c.closed_by_peer(CASE_BOUND)
    c.close()
    if not closed:
        return "a Content-Length over max_message_size did not end the connection"
    if b"SIP/2.0 513" not in c.received and b"SIP/2.0 413" not in c.received:
        return f"a Content-Length over max_message_size got {c.received[:60]!r}, not 513"
    return None


def case_endless_headers(port: int, tls: bool, rng: random.Random) -> str | None:
    c = Conn(port, tls)
    c.send(b"OPTIONS sip:localhost SIP/2.0\r\n")
    line = b"X-Endless: " + b"b" * 100 + b"\r\n"
    sent, limit = 0, 64 * MAX_MESSAGE
    c.sock.settimeout(5)
    while sent < limit and c.send(line * 64):
        sent += len(line) * 64
    closed = sent < limit or c.closed_by_peer(CASE_BOUND)
    c.close()
    return None if closed else f"{sent} bytes of header lines and the connection is still open"


def case_slow_senders(port: int, tls: bool, rng: random.Random) -> str | None:
    """Ten connections sending a message one byte every 0.1 s: each must
    be cut after message_timeout, long before the message is complete."""
    conns = [Conn(port, tls) for _ in range(10)]
    data = options(4, "tls" if tls else "tcp") + b"X-Pad: " + b"p" * 400 + b"\r\n"
    open_ = set(range(len(conns)))
    deadline = time.monotonic() + CASE_BOUND
    i = 0
    while open_ and i < len(data) and time.monotonic() < deadline:
        for k in list(open_):
            if not conns[k].send(data[i : i + 1]):
                open_.discard(k)
        i += 1
        time.sleep(0.1)
        for k in list(open_):
            try:
                if select.select([conns[k].sock], [], [], 0)[0] and not conns[k].sock.recv(4096):
                    open_.discard(k)
            except (OSError, ssl.SSLError):
                open_.discard(k)
    for c in conns:
        c.close()
    return None if not open_ else f"{len(open_)} slow senders never cut (sent {i} bytes each)"


def case_junk(port: int, tls: bool, rng: random.Random) -> str | None:
    c = Conn(port, tls)
    c.send(bytes(rng.randrange(256) for _ in range(32768)))
    c.closed_by_peer(3.0)  # junk may frame as something; either way we close
    c.close()
    return None


def case_mutated(port: int, tls: bool, rng: random.Random) -> str | None:
    corpus = torture_messages()
    c = Conn(port, tls)
    for _ in range(300):
        if not c.send(mutate(rng.choice(corpus), rng)):
            c.close()
            c = Conn(port, tls)  # the proxy closed it on a framing error: a fresh one
    c.close()
    return None


def case_pipelined(port: int, tls: bool, rng: random.Random) -> str | None:
    c = Conn(port, tls)
    t = "tls" if tls else "tcp"
    c.send(b"".join(options(1000 + n, t) for n in range(200)))
    got = c.read_answers(200, CASE_BOUND)
    c.close()
    return None if got == 200 else f"200 pipelined OPTIONS got {got} answers"


def case_plaintext_to_tls(port: int, tls: bool, rng: random.Random) -> str | None:
    c = Conn(port, tls, handshake=False)
    c.send(options(5, "tcp"))
    closed = c.closed_by_peer(CASE_BOUND)
    c.close()
    return None if closed else "plaintext SIP on the TLS port did not end the connection"


def case_stalled_handshake(port: int, tls: bool, rng: random.Random) -> str | None:
    """Connections that never finish (or never start) a handshake are cut
    after [tls] handshake_timeout."""
    hello = _client_hello()
    conns = [Conn(port, tls, handshake=False) for _ in range(5)]
    for k, c in enumerate(conns):
        if k % 2:
            c.send(hello[: len(hello) // 2])
    stuck = sum(not c.closed_by_peer(CASE_BOUND) for c in conns)
    for c in conns:
        c.close()
    return None if not stuck else f"{stuck} stalled handshakes never cut"


def _client_hello() -> bytes:
    """The first flight of a real TLS client, captured through a memory BIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


STREAM_CASES: list[tuple[str, Callable[[int, bool, random.Random], str | None]]] = [
    ("truncated", case_truncated),
    ("oversized head", case_oversized_head),
    ("oversized body", case_oversized_body),
    ("never-ending headers", case_endless_headers),
    ("slow senders", case_slow_senders),
    ("binary junk", case_junk),
    ("mutated messages", case_mutated),
    ("pipelined burst", case_pipelined),
]
TLS_ONLY = [("plaintext to TLS", case_plaintext_to_tls), ("stalled handshakes", case_stalled_handshake)]


def stream_phase(proxy: ProxyProcess, tls_port: int, seed: int, figures: dict) -> list[str]:
    rng = random.Random(seed)
    errors: list[str] = []
    rows = []
    for transport, port, cases in (("tcp", proxy.port, STREAM_CASES), ("tls", tls_port, STREAM_CASES + TLS_ONLY)):
        for name, case in cases:
            t0 = time.monotonic()
            try:
                problem = case(port, transport == "tls", rng)
            except Exception as e:  # a client-side failure is a finding too
                problem = f"{type(e).__name__}: {e}"
            alive = proxy.running and probe(proxy.port)
            rows.append([transport, name, round(time.monotonic() - t0, 1), problem or "ok", alive])
            if problem:
                errors.append(f"{transport} {name}: {problem}")
            if not alive:
                errors.append(f"{transport} {name}: the proxy no longer answers OPTIONS (running: {proxy.running})")
                figures["streams"] = rows
                return errors
    figures["streams"] = rows
    figures["rss_after_streams_mb"] = round(rss_mb(proxy.process.pid), 1)  # type: ignore[union-attr]
    return errors


# -- the run


def logged_failures(proxy: ProxyProcess, figures: dict) -> list[str]:
    """The stack turns an exception on input into a logged traceback and
    carries on: in the proxy's log is where a crash shows."""
    try:
        text = proxy.log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    figures["tracebacks_logged"] = len(starts)
    if not starts:
        return []
    first = "\n".join(lines[max(0, starts[0] - 1) : starts[0] + 30])
    return [f"{len(starts)} tracebacks in the proxy's log; the first:\n{first}"]


def certificates(directory: Path) -> tuple[Path, Path]:
    from tests.certs import CA

    ca = CA("live fuzz CA")
    return ca.issue(cn="localhost", dns=["localhost"], ips=["127.0.0.1"]).write(directory, "proxy")


def run(args: argparse.Namespace) -> int:
    if args.inside:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="live-fuzz-"))
    cert, key = certificates(work)
    port, tls_port = free_port("both"), free_port("tcp")
    config = {
        "proxy": {
            "listen": f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}, tls:127.0.0.1:{tls_port}",
            "domains": DOMAINS,
            "max_message_size": MAX_MESSAGE,
        },
        "sip": {"message_timeout": MESSAGE_TIMEOUT, "tcp_idle_timeout": 20},
        "tls": {"certificate": cert, "key": key, "verify": "no", "handshake_timeout": HANDSHAKE_TIMEOUT},
        # The fuzzer is one source sending as fast as it can: no rate limit
        # (the gate still reads every datagram), no per-source connection cap.
        "limits": {"requests_per_second": 0, "max_connections_per_source": 0},
    }
    figures: dict[str, Any] = {"netns": bool(args.inside), "seed": args.seed}
    errors: list[str] = []
    with ProxyProcess(config, port=port, workdir=work / "proxy") as proxy:
        figures["rss_start_mb"] = round(rss_mb(proxy.process.pid), 1)  # type: ignore[union-attr]
        if args.datagrams:
            errors += udp_phase(proxy, args.datagrams, args.probe_every, args.sync, args.seed, figures)
        if args.streams and not errors:
            errors += stream_phase(proxy, tls_port, args.seed, figures)
        figures["running_at_end"] = proxy.running
        if not proxy.running:
            errors.append("the proxy is not running at the end")
        figures["rss_end_mb"] = round(rss_mb(proxy.process.pid), 1) if proxy.running else None  # type: ignore[union-attr]
        errors += logged_failures(proxy, figures)
        if errors:
            figures["log_tail"] = proxy.log_tail(30)
    shutil.rmtree(work, ignore_errors=True)
    figures["errors"] = errors
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 1 if errors else 0


def report(f: dict) -> None:
    print(f"live fuzz ({'own network namespace' if f['netns'] else 'host loopback'}, seed {f['seed']})")
    u = f.get("udp")
    if u:
        print(f"  UDP: {u['datagrams']} mutated datagrams in {u['seconds']} s ({u['per_second']}/s), "
              f"{u['probes_answered']} OPTIONS probes answered, {u['send_errors']} send errors, "
              f"{u['syncs_unanswered']} sync pings unanswered")
        rss = u["rss_mb"]
        if rss:
            shown = rss if len(rss) <= 12 else rss[:: max(1, len(rss) // 10)] + [rss[-1]]
            print("  RSS MiB at probes: " + ", ".join(f"{i}:{r}" for i, r in shown)
                  + f" (growth {u.get('rss_growth_mb', 0)} MiB)")
    for transport, name, secs, outcome, alive in f.get("streams", []):
        print(f"  {transport:<4}{name:<22}{secs:>6} s  {outcome}{'' if alive else '  PROXY NOT ANSWERING'}")
    print(f"  tracebacks in the proxy's log: {f.get('tracebacks_logged', 0)}")
    print(f"  RSS MiB: start {f.get('rss_start_mb')}, end {f.get('rss_end_mb')}; running at end: {f.get('running_at_end')}")
    for e in f["errors"]:
        print(f"  FAILED: {e}")
    if f.get("log_tail"):
        print(f["log_tail"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datagrams", type=int, default=1_000_000)
    ap.add_argument("--probe-every", type=int, default=10_000)
    ap.add_argument("--sync", type=int, default=500, help="wait for an OPTIONS answer after this many datagrams")
    ap.add_argument("--no-streams", dest="streams", action="store_false")
    ap.add_argument("--seed", type=int, default=4475)
    ap.add_argument("--json")
    ap.add_argument("--no-netns", action="store_true", help="run on this host's loopback")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.inside and not args.no_netns:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            print("live fuzz: not root (or no unshare): running on this host's loopback", file=sys.stderr)
        else:
            cmd = [sys.executable, "-m", "tests.fuzz.live", "--inside"] + (argv if argv is not None else sys.argv[1:])
            return subprocess.run(["unshare", "-n"] + cmd, cwd=ROOT).returncode
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
