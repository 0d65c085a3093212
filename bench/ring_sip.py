"""SIP through a 3-node SOSIMPLE ring against one proxy, in the same run
(issue 6, "Benchmark").

Two setups of the same proxy configuration (``[location] order = local
overlay``, UDP SIP on 127.0.0.1, ``[proxy] domains = example.com``):

- ``single``: one proxy (a ring of one node); callee and caller both use it;
- ``ring``: three proxies under twistd forming one ring (``bootstrap`` to the
  first, ``stabilize_interval`` 0.5 s, node ids fixed at 0, 1/3 and 2/3 of
  the identifier circle so that which node holds a key is known); the callee
  registers at proxy 1, the caller sends to proxy 3, which finds the binding
  in the ring and routes the request through proxy 1 (the binding's path).

For each setup:

(a) call setup time, INVITE sent to 180 received, timed with
    ``perf_counter`` by a Python probe that is both the UAC (sends INVITE,
    then ACK and BYE along the Record-Route) and the UAS (answers 180 then
    200 at once, and the BYE), one call at a time, each as soon as the last
    ended, with the proxies otherwise idle (a first call to an unregistered
    user wakes everything up).
    *Cold*: the first call to each of COLD_AORS freshly registered AoRs: in
    the ring, proxy 3 has never looked them up, so this is a ring lookup
    (find the key's successor, fetch the record) before forwarding; on the
    single proxy it is just the first call.  *Warm*: WARM_CALLS further calls
    to the same AoRs, round robin: proxy 3 answers from its contact cache
    (paper IV.B) and the ring is no longer asked; then IDLE_CALLS warm calls
    each after IDLE_GAP of idle (on this VM, waking the processes up costs
    about as much as the call itself).
(b) the highest MESSAGE rate with at most 0.1% failures: sipp UAC at
    increasing rates (``bench.sip_load.Bench.search``: doubling from 500/s,
    halving down to 125/s, then bisecting; each step rate x 3 s calls, at
    least 1,000, a fresh sipp UAS registered as ``sip:uas@example.com`` at
    the callee's proxy), with the probe's MESSAGE median alongside and the
    CPU of all the setup's proxies per MESSAGE.

A third setup is the ring with ``[overlay] publish_path = needed``: the
UAS's binding (registered from its Contact's own address) goes into the
ring without proxy 1's Path, and proxy 3 sends to the UAS directly.

Every wait is bounded; the section keeps to RING_SIP_BUDGET seconds
(default 420).  ``RING_SIP_MESSAGE=0`` skips the MESSAGE searches (call
setup only, for a quick run; not for the recorded section).

    python -m bench ring_sip         # as a section of `make bench`
    python -m bench.ring_sip         # alone, printing the section
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import socket
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.sip_load import (
    DOMAIN,
    Bench,
    Server,
    Step,
    _header_lines,
    _named,
    cpu_seconds,
    machine,
    register_uas,
)
from sosimple_proxy.overlay.ids import DEFAULT_BITS, KeyScheme, format_id
from sosimple_proxy.testing import ProxyProcess, free_port

RING = 2**DEFAULT_BITS
NODES = 3
NODE_IDS = [0, RING // 3, 2 * RING // 3]  # proxy 1, 2, 3
COLD_AORS = 15
WARM_CALLS = 200
IDLE_CALLS = 100
IDLE_GAP = 0.02  # seconds of idle before each "idle" call
CALL_TIMEOUT = 3.0
STABILIZE = 0.5
BUDGET = float(os.environ.get("RING_SIP_BUDGET", 420))


# --- the setups


class _AnyDead:
    """``process`` for ``sip_load.server_died``: poll() is not None once any proxy died."""

    def __init__(self, procs: list[ProxyProcess]) -> None:
        self.procs = procs

    def poll(self) -> int | None:
        for p in self.procs:
            rc = p.process.poll() if p.process is not None else -1
            if rc is not None:
                return rc
        return None


class Setup(Server):
    """One or several proxies seen as one server by ``sip_load.Bench``:
    ``port`` is the caller's proxy (the last), the callee registers at
    ``home`` (the first), ``cpu()`` sums every proxy's CPU."""

    def __init__(self, name: str, nodes: int, publish_path: str = "always") -> None:
        self.name, self.nodes = name, nodes
        self.publish_path = publish_path
        self.label = "one proxy" if nodes == 1 else f"{nodes}-node ring"
        if publish_path != "always":
            self.label += f", publish_path = {publish_path}"
        self.proxies: list[ProxyProcess] = []
        self.admin: list[str] = []
        self.ids: list[int] = []

    @property
    def home(self) -> ProxyProcess:
        return self.proxies[0]

    @property
    def process(self) -> _AnyDead:
        return _AnyDead(self.proxies)

    def start(self, workdir: Path) -> None:
        overlay_ports = [free_port("tcp") for _ in range(self.nodes)]
        for i in range(self.nodes):
            sip, admin = free_port("udp"), free_port("tcp")
            nid = NODE_IDS[i] if self.nodes > 1 else 0
            sections = {
                "proxy": {"listen": f"udp:127.0.0.1:{sip}", "domains": DOMAIN},
                "location": {"order": "local overlay"},
                "overlay": {
                    "listen": f"tcp:{overlay_ports[i]}:interface=127.0.0.1",
                    "bootstrap": f"127.0.0.1:{overlay_ports[0]}" if i else "",
                    "stabilize_interval": str(STABILIZE),
                    "state_dir": "overlay",
                    "publish_path": self.publish_path,
                    **self.overlay_keys(workdir / f"{self.name}-proxy{i + 1}", nid),
                },
                "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"},
                # sipp and the other proxies all come from 127.0.0.1 (a site
                # lists its own proxies in allow); see sip_load.BENCH_LIMITS.
                "limits": {"allow": "127.0.0.0/8", "max_transactions": "0"},
            }
            p = ProxyProcess(sections, port=sip, workdir=workdir / f"{self.name}-proxy{i + 1}")
            self.proxies.append(p)
            p.start()
            self.admin.append(f"http://127.0.0.1:{admin}")
            self.ids.append(nid)
        self.port = self.proxies[-1].port
        assert self.proxies[-1].process is not None
        self.pid = self.proxies[-1].process.pid
        self.wait_ring()

    def overlay_keys(self, workdir: Path, nid: int) -> dict[str, str]:
        """How the node gets its place: fixed ids in an open ring (a CA
        ring's setup, ``bench/ring_tls.py``, writes certificates instead)."""
        return {"node_id": format_id(nid), "allow_chosen_ids": "yes"}  # a bench ring at fixed, evenly spread ids

    def wait_ring(self, timeout: float = 30.0) -> None:
        """Until every node is joined (``/health``) and, in a ring, each has
        the other two among its successors."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(self._ring_ok(url) for url in self.admin):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the {self.label} did not form within {timeout:g} s")

    def _ring_ok(self, url: str) -> bool:
        if _get_json(url + "/health") is None:
            return False
        if self.nodes == 1:
            return True
        view = _get_json(url + "/ring")
        if not view:
            return False
        ids = {s.get("id") for s in view.get("successors", []) if isinstance(s, dict)}
        ids.add(view.get("id"))
        return len(ids) >= self.nodes

    def holder(self, aor: str) -> int:
        """1-based number of the proxy responsible for the AoR's key."""
        key = KeyScheme("flat", DEFAULT_BITS).key(aor)
        for i in sorted(range(self.nodes), key=lambda i: self.ids[i]):
            if self.ids[i] >= key:
                return i + 1
        return min(range(self.nodes), key=lambda i: self.ids[i]) + 1

    def published(self, aors: list[str], timeout: float = 20.0) -> bool:
        """Until a node that is neither the callee's nor the caller's proxy
        (the single proxy itself, alone) finds every AoR in the ring: asked
        through its admin API, so the caller's contact cache stays cold."""
        url = self.admin[1] if self.nodes > 2 else self.admin[0]
        end = time.monotonic() + timeout
        todo = list(aors)
        while todo and time.monotonic() < end:
            todo = [a for a in todo if _get_json(f"{url}/registrations/{a}") is None]
            if todo:
                time.sleep(0.2)
        return not todo

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()

    def cpu(self) -> float:
        total = 0.0
        for p in self.proxies:
            if p.process is not None:
                try:
                    total += cpu_seconds(p.process.pid)
                except (OSError, IndexError, ValueError):
                    pass
        return total

    def logs(self) -> list[Path]:
        return [p.log_path for p in self.proxies]


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read() or b"null") if r.status == 200 else None
    except Exception:
        return None


class _At:
    """What ``register_uas`` needs of a server: where to send the REGISTER."""

    def __init__(self, proxy: ProxyProcess, label: str) -> None:
        self.port, self.label = proxy.port, label


# --- the call setup probe: UAC and UAS on two sockets, one thread


class CallProbe:
    def __init__(self, dest_port: int) -> None:
        self.dest = ("127.0.0.1", dest_port)
        self.uac = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.uac.bind(("127.0.0.1", 0))
        self.uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.uas.bind(("127.0.0.1", 0))
        self.uac_port = self.uac.getsockname()[1]
        self.uas_port = self.uas.getsockname()[1]
        self.n = 0
        self.tag = f"{random.getrandbits(40):x}"
        self.errors: list[str] = []

    def close(self) -> None:
        self.uac.close()
        self.uas.close()

    def _via(self) -> str:
        return f"Via: SIP/2.0/UDP 127.0.0.1:{self.uac_port};branch=z9hG4bK-cp{self.tag}-{self.n}-{random.getrandbits(24):x};rport"

    def _send(self, text: str) -> None:
        self.uac.sendto(text.replace("\n", "\r\n").encode(), self.dest)

    def _uas_answer(self, data: bytes, addr: tuple[str, int]) -> None:
        first, lines = _header_lines(data)
        if first.startswith((b"SIP/2.0", b"ACK ")):
            return
        keep = []
        for ln in lines:
            name = ln.partition(b":")[0].strip().lower()
            if name in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq", b"record-route"):
                keep.append(ln)
            elif name in (b"to", b"t"):
                keep.append(ln if b"tag=" in ln else ln + b";tag=uas" + self.tag.encode())
        contact = b"Contact: <sip:callee@127.0.0.1:%d>" % self.uas_port
        if first.startswith(b"INVITE "):
            sdp = b"v=0\r\no=uas 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
            self.uas.sendto(b"\r\n".join([b"SIP/2.0 180 Ringing", *keep, contact, b"Content-Length: 0", b"", b""]), addr)
            self.uas.sendto(b"\r\n".join([b"SIP/2.0 200 OK", *keep, contact, b"Content-Type: application/sdp",
                                          b"Content-Length: %d" % len(sdp), b"", sdp]), addr)
        else:
            self.uas.sendto(b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""]), addr)

    def _wait(self, call_id: bytes, method: bytes, want: Callable[[int], bool], timeout: float):
        """The first response to (call_id, method) whose status ``want``s,
        answering the UAS side meanwhile; (status, lines, perf_counter) or None."""
        end = time.monotonic() + timeout
        for _ in range(10_000):
            left = end - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.uac, self.uas], [], [], left)
            now = time.perf_counter()
            for sock in ready:
                data, addr = sock.recvfrom(65536)
                if sock is self.uas:
                    self._uas_answer(data, addr)
                    continue
                first, lines = _header_lines(data)
                if not first.startswith(b"SIP/2.0 "):
                    continue
                cseq = _named(lines, b"cseq")
                if _named(lines, b"call-id", b"i") != [call_id] or not cseq or not cseq[0].endswith(b" " + method):
                    continue
                try:
                    status = int(first[8:11])
                except ValueError:
                    continue
                if want(status) or status >= 300:
                    return status, lines, now
        return None

    def call(self, user: str) -> float | None:
        """One call to sip:USER@example.com; INVITE -> 180 in microseconds, or
        None (failure noted in ``errors``).  The call is completed (200, ACK,
        BYE) before returning."""
        self.n += 1
        call_id = f"cp-{self.tag}-{self.n}@127.0.0.1"
        frm = f"From: <sip:caller@{DOMAIN}>;tag=c{self.tag}{self.n}"
        sdp = "v=0\no=uac 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 9 RTP/AVP 0\n"
        via = self._via()
        t0 = time.perf_counter()
        self._send(f"""INVITE sip:{user}@{DOMAIN} SIP/2.0
{via}
Max-Forwards: 70
{frm}
To: <sip:{user}@{DOMAIN}>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sip:caller@127.0.0.1:{self.uac_port}>
Content-Type: application/sdp
Content-Length: {len(sdp.replace(chr(10), chr(13) + chr(10)))}

{sdp}""")
        ringing = self._wait(call_id.encode(), b"INVITE", lambda s: s == 180, CALL_TIMEOUT)
        if ringing is None or ringing[0] != 180:
            self.errors.append(f"{user}: {'no 180' if ringing is None else ringing[0]}")
            final = ringing if ringing is not None and ringing[0] >= 300 else None
            if ringing is not None and ringing[0] < 300:
                final = self._wait(call_id.encode(), b"INVITE", lambda s: s >= 200, CALL_TIMEOUT)
            if final is not None and final[0] >= 300:  # ACK it (same branch), or the proxy retransmits it
                to = _named(final[1], b"to", b"t")[0].decode()
                self._send(f"ACK sip:{user}@{DOMAIN} SIP/2.0\n{via}\nMax-Forwards: 70\n{frm}\nTo: {to}\n"
                           f"Call-ID: {call_id}\nCSeq: 1 ACK\nContent-Length: 0\n\n")
            return None
        setup_us = (ringing[2] - t0) * 1e6
        ok = self._wait(call_id.encode(), b"INVITE", lambda s: s >= 200, CALL_TIMEOUT)
        if ok is None or ok[0] != 200:
            self.errors.append(f"{user}: 180 then {'nothing' if ok is None else ok[0]}")
            return setup_us
        lines = ok[1]
        to = _named(lines, b"to", b"t")[0].decode()
        contact = _named(lines, b"contact", b"m")
        target = contact[0].decode().split("<", 1)[-1].split(">", 1)[0] if contact else f"sip:{user}@{DOMAIN}"
        rr = [r.strip() for v in _named(lines, b"record-route") for r in v.decode().split(",")]
        routes = "".join(f"Route: {r}\n" for r in reversed(rr))
        common = f"Max-Forwards: 70\n{routes}{frm}\nTo: {to}\nCall-ID: {call_id}\n"
        self._send(f"ACK {target} SIP/2.0\n{self._via()}\n{common}CSeq: 1 ACK\nContent-Length: 0\n\n")
        self._send(f"BYE {target} SIP/2.0\n{self._via()}\n{common}CSeq: 2 BYE\nContent-Length: 0\n\n")
        bye = self._wait(call_id.encode(), b"BYE", lambda s: s >= 200, CALL_TIMEOUT)
        if bye is None or bye[0] != 200:
            self.errors.append(f"{user}: BYE {'unanswered' if bye is None else bye[0]}")
        return setup_us

    def drain(self, seconds: float = 0.05) -> None:
        """Answer what is still arriving (a retransmitted 200, a late BYE)."""
        end = time.monotonic() + seconds
        for _ in range(1000):
            left = end - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.uac, self.uas], [], [], left)
            for sock in ready:
                data, addr = sock.recvfrom(65536)
                if sock is self.uas:
                    self._uas_answer(data, addr)


# --- one setup


@dataclass
class Result:
    name: str
    label: str
    cold: list[tuple[int, float | None]] = field(default_factory=list)  # (holder, us)
    warm: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)
    warm_cpu_us: float | None = None  # CPU of all proxies per warm call (INVITE to BYE answered)
    warm_path: list[str] | None = None  # the Path the ring holds for the warm calls' first AoR
    call_failures: int = 0
    call_errors: list[str] = field(default_factory=list)
    best: Step | None = None
    steps: list[Step] = field(default_factory=list)
    note: str = ""
    oddities: list[str] = field(default_factory=list)

    @property
    def cold_us(self) -> list[float]:
        return [us for _, us in self.cold if us is not None]


def measure_setup(setup: Setup, workdir: Path, bench: Bench, search_budget: float, say: Callable[[str], None]) -> Result:
    res = Result(setup.name, setup.label)
    t0 = time.monotonic()
    try:
        setup.start(workdir)
    except Exception as e:
        setup.stop()
        res.note = f"did not start: {e}"[:300]
        say(f"  {setup.label}: {res.note}")
        return res
    say(f"{setup.label}: up in {time.monotonic() - t0:.1f} s")
    probe = CallProbe(setup.port)
    msg_probe_uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    msg_probe_uas.bind(("127.0.0.1", 0))
    try:
        home = _At(setup.home, f"{setup.label} proxy 1")
        uas_port = free_port("udp")
        # each UAS registers from its own Contact address, as a phone does
        # (what publish_path = needed looks at)
        register_uas(home, uas_port, from_contact=True)  # sip:uas@ -> the sipp UAS of each MESSAGE step
        register_uas(home, msg_probe_uas.getsockname()[1], "probe", sock=msg_probe_uas)  # the MESSAGE probe's UAS
        cold = [f"callee{i:02d}" for i in range(COLD_AORS)]
        for user in cold:
            register_uas(home, probe.uas_port, user, sock=probe.uas)
        if not setup.published([f"{u}@{DOMAIN}" for u in [*cold, "uas", "probe"]]):
            res.oddities.append("not every registration was visible in the ring 20 s after the REGISTER")
        # (a) call setup: the first call to each AoR (cold), then warm calls
        probe.call("nobody")  # a 404 (not registered): wakes every process on the path up
        probe.errors.clear()
        for user in cold:
            us = probe.call(user)
            res.cold.append((setup.holder(f"{user}@{DOMAIN}") if setup.nodes > 1 else 1, us))
        cpu0 = setup.cpu()
        for i in range(WARM_CALLS):
            us = probe.call(cold[i % len(cold)])
            if us is not None:
                res.warm.append(us)
        res.warm_cpu_us = 1e6 * (setup.cpu() - cpu0) / WARM_CALLS
        seen = _get_json(f"{setup.admin[0]}/registrations/{cold[0]}@{DOMAIN}")
        if seen and seen.get("bindings"):
            res.warm_path = list(seen["bindings"][0].get("path") or [])
        for i in range(IDLE_CALLS):
            probe.drain(IDLE_GAP)
            us = probe.call(cold[i % len(cold)])
            if us is not None:
                res.idle.append(us)
        res.call_failures = len(probe.errors)
        res.call_errors = probe.errors[:5]
        say(f"  call setup: cold median {_fmt(_median(res.cold_us))} us, warm median {_fmt(_median(res.warm))} us "
            f"p90 {_fmt(_p90(res.warm))} us, {res.call_failures} failures {probe.errors[:3]}")
        # (b) MESSAGE rate
        if os.environ.get("RING_SIP_MESSAGE", "1") == "0":
            return res  # call setup only (a quick run while working on it)
        bench.probe_uas = msg_probe_uas
        res.best, res.steps = bench.search(setup, "MESSAGE", uas_port, search_budget)
        if res.best is None and res.steps:
            low = min(res.steps, key=lambda st: st.rate)
            res.note = f"MESSAGE fails even at {low.rate}/s ({low.ok}/{low.calls} ok, {low.retrans} retransmissions)"
        if any(p.process is not None and p.process.poll() is not None for p in setup.proxies):
            res.oddities.append("a proxy exited during the run: " + ", ".join(
                f"proxy {i + 1} status {p.process.poll()}" for i, p in enumerate(setup.proxies)
                if p.process is not None and p.process.poll() is not None))
    except Exception as e:
        res.note = f"error: {e}"[:300]
        say(f"  {setup.label}: error: {e}")
    finally:
        bench.probe_uas = None
        msg_probe_uas.close()
        probe.close()
        setup.stop()
        res.oddities += _log_oddities(setup)
    return res


def _log_oddities(setup: Setup) -> list[str]:
    """Tracebacks and warnings in the proxies' logs, counted by first line."""
    seen: dict[str, int] = {}
    for i, path in enumerate(setup.logs()):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            low = line.lower()
            if "traceback" in low or "unhandled" in low or "[-] error" in low or "critical" in low:
                key = f"proxy {i + 1}: {line.split(' ', 2)[-1][:160]}"
                seen[key] = seen.get(key, 0) + 1
    return [f"{k} (x{n})" for k, n in list(seen.items())[:8]]


# --- figures


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _p90(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return xs[0] if xs else None
    return statistics.quantiles(xs, n=10, method="inclusive")[-1]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def measure(say: Callable[[str], None] = print) -> tuple[dict[str, Result], dict[str, Any]]:
    started = time.monotonic()
    deadline = started + BUDGET
    info: dict[str, Any] = {"load_before": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="bench-ring-sip-"))
    bench = Bench(work, deadline, say)
    results: dict[str, Result] = {}
    try:
        single = Setup("single", 1)
        # the ring needs more steps' worth of time to start and check; give
        # the single proxy a bit under half of what is left
        results["single"] = measure_setup(single, work, bench, max(30.0, (deadline - time.monotonic() - 40) * 0.45), say)
        ring = Setup("ring", NODES)
        results["ring"] = measure_setup(ring, work, bench, max(30.0, (deadline - time.monotonic() - 50) * 0.5), say)
        direct = Setup("direct", NODES, publish_path="needed")
        results["direct"] = measure_setup(direct, work, bench, max(30.0, deadline - time.monotonic() - 25), say)
    finally:
        info["load_after"] = os.getloadavg()
        info["elapsed"] = time.monotonic() - started
        if os.environ.get("SIP_BENCH_KEEP"):
            say(f"(work files kept in {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results, info


def report(results: dict[str, Result], info: dict[str, Any]) -> str:
    s, r, d = results.get("single"), results.get("ring"), results.get("direct")
    lb, la = info.get("load_before", (0, 0, 0)), info.get("load_after", (0, 0, 0))
    lines = [
        "## SIP through a 3-node ring vs one proxy: call setup and MESSAGE rate",
        "",
        f"Machine: {machine()}. Load average (1/5/15 min) {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} before, "
        f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} after (other work may share the machine).",
        "",
        "Same proxy configuration in both setups: twistd, UDP SIP on 127.0.0.1, `[location] order = local overlay`, "
        f"`stabilize_interval = {STABILIZE:g}`. **One proxy**: a ring of one node; callee and caller use it. "
        "**Ring**: 3 proxies (node ids 0, 1/3, 2/3 of the circle); the callee registers at proxy 1, the caller sends "
        "to proxy 3, which finds the binding in the ring and forwards through proxy 1 (the binding's path), so a "
        "request crosses two proxies. **Ring, publish_path = needed**: the same ring with `[overlay] publish_path = "
        "needed`: a UA that registered over UDP from its Contact's own address goes into the ring without proxy 1's "
        "Path, so proxy 3 sends to it directly (every UAS here registers from its Contact's address). "
        "Call setup = INVITE sent to 180 received, timed with `perf_counter` by a Python probe that is UAC and UAS "
        "(answers 180 then 200 at once, completes ACK and BYE), one call at a time, each started as soon as the last "
        "ended (BYE answered), the proxies otherwise idle. "
        f"Cold: the first call to each of {COLD_AORS} freshly registered AoRs (ring: proxy 3 looks the AoR up in the "
        f"ring); warm: {WARM_CALLS} more calls to the same AoRs (ring: proxy 3's contact cache, paper IV.B); "
        f"then {IDLE_CALLS} warm calls each after {IDLE_GAP * 1000:g} ms of idle, which on this (virtual) machine "
        "cost a wake-up of every process on the path and roughly double the time. "
        "MESSAGE rate: sipp UAC to `sip:uas@example.com` (a fresh sipp UAS per step, registered at proxy 1), "
        "`bench.sip_load`'s search (double from 500/s, halve down to 125/s, bisect; a step is rate x 3 s calls, "
        "at least 1,000; it passes with failed calls + retransmissions <= 0.1% and sipp sending at >= 95% of the rate); "
        "median: a Python MESSAGE probe (about 50/s) alongside the load at that rate; CPU: all the setup's proxies, "
        "from /proc, per MESSAGE at that rate.",
        "",
        "| | one proxy | 3-node ring | ring / one | ring, publish_path = needed | needed / one |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, f: Callable[[Result], float | None], unit: str = "") -> None:
        a = f(s) if s else None
        b = f(r) if r else None
        c = f(d) if d else None
        lines.append(f"| {label} | {_fmt(a)}{unit} | {_fmt(b)}{unit} | {_ratio(b, a)} | {_fmt(c)}{unit} | {_ratio(c, a)} |")

    row("call setup, cold, median (us)", lambda x: _median(x.cold_us))
    row("call setup, cold, p90 (us)", lambda x: _p90(x.cold_us))
    row("call setup, cold, first call (us)", lambda x: x.cold[0][1] if x.cold else None)
    row("call setup, warm, median (us)", lambda x: _median(x.warm))
    row("call setup, warm, p90 (us)", lambda x: _p90(x.warm))
    row("call setup, warm: CPU of all proxies per call, INVITE to BYE (us)", lambda x: x.warm_cpu_us)
    row(f"call setup, warm, {IDLE_GAP * 1000:g} ms idle before each call, median (us)", lambda x: _median(x.idle))
    row(f"call setup, warm, {IDLE_GAP * 1000:g} ms idle before each call, p90 (us)", lambda x: _p90(x.idle))
    row("MESSAGE: highest rate at <= 0.1% failures (/s)", lambda x: x.best.rate if x.best else None)
    row("MESSAGE: probe median at that rate (us)", lambda x: x.best.median_us if x.best else None)
    row("MESSAGE: CPU of all proxies per MESSAGE at that rate (us)", lambda x: x.best.cpu_us if x.best else None)
    if r and r.cold:
        by: dict[int, list[float]] = {}
        for holder, us in r.cold:
            if us is not None:
                by.setdefault(holder, []).append(us)
        parts = [f"proxy {h} ({'the caller' if h == NODES else 'the callee' if h == 1 else 'neither'}'s proxy) "
                 f"{len(v)} AoRs, median {_fmt(_median(v))} us" for h, v in sorted(by.items())]
        lines += ["", "Ring, cold call setup by the node responsible for the AoR's key: " + "; ".join(parts) + "."]
    for res in (s, r, d):
        if res is None:
            continue
        steps = ", ".join(f"{st.rate:,}/s {'pass' if st.passed else 'FAIL'} ({st.calls - st.ok} failed, {st.retrans} retr.)"
                          for st in res.steps)
        lines += ["", f"{res.label}: MESSAGE steps: {steps or '-'}."]
        if res.warm_path is not None and res.name != "single":
            lines.append(f"{res.label}: the ring's Path for the callees: {', '.join(res.warm_path) or 'none (reached directly)'}.")
        if res.call_failures:
            lines.append(f"{res.label}: {res.call_failures} probe calls failed, e.g. {'; '.join(res.call_errors)}.")
        if res.note:
            lines.append(f"{res.label}: {res.note}.")
        for odd in res.oddities:
            lines.append(f"{res.label}: {odd}")
    if "elapsed" in info:
        lines += ["", f"Section time: {info['elapsed']:.0f} s."]
    return "\n".join(lines) + "\n"


def run() -> str:
    say = lambda text: print(text, flush=True)  # noqa: E731
    results, info = measure(say)
    return report(results, info)


if __name__ == "__main__":
    print(run())
