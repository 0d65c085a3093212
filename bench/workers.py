"""``[proxy] workers``: one worker against two, next to Kamailio ``-n 1`` and
``-n 2`` (issue 12, "speed").

The same sipp runs as :mod:`bench.sip_load` (its scenarios, its step, its
rate search and its probe), with two differences that matter here:

- the sipp UAC sends from 64 source ports (``-t un -max_socket 64``) for
  every server, since the kernel's SO_REUSEPORT choice of a worker hashes
  the source address: from one port every request would reach one worker.
  The sipp UAS answers from one port, so with two workers the response to
  about half the forwarded requests reaches the worker that did not send
  them and is handed over (``sosimple_proxy/sip/handoff.py``);
- the server's CPU is that of all its processes (ours: the parent, which
  keeps the shared bindings, limits and ring, and its workers; Kamailio:
  every process), from ``/proc/PID/stat``.

Three parts, each within the section's deadline (``WORKERS_BENCH_BUDGET``
seconds, default 1,500), in this order:

(a) CPU per call at 1,000 calls/s (REGISTER, REGISTER-AUTH, MESSAGE,
    INVITE), :data:`ROUNDS` rounds with the servers alternating, the lowest
    kept; and the memory per binding (RSS growth of each process over the
    10,000 first registrations);
(b) the highest rate at <= 0.1% failures (sip_load's search), sipp sharing
    the two cores with the server;
(c) pinned: sipp, the probe and this process on CPU 0, the server (all its
    processes) on CPU 1.  A 2-core machine can only show one core against
    one core: ours with 2 workers on that one core shows what a second
    worker costs, not what a second core gives; what free cores would give
    is estimated from it (:func:`free_cores_estimate`).

    python -m bench workers                        # as a section of `make bench`
    python -m bench.workers [cpu] [rate] [pinned] [REGISTER] [MESSAGE] ...
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench import sip_load as sl
from sosimple_proxy.testing import free_port

WORKLOADS = ("REGISTER", "REGISTER-AUTH", "MESSAGE", "INVITE")
RATE_WORKLOADS = ("REGISTER", "MESSAGE", "REGISTER-AUTH", "INVITE")  # most wanted first
PINNED_WORKLOADS = ("REGISTER", "MESSAGE")
ROUNDS = 2
UAC_SOCKETS = 64
SIPP_CPU, SERVER_CPU = 0, 1  # the pinned part's cores
PARTS = ("cpu", "rate", "pinned")


@dataclass(frozen=True)
class Config:
    """One server set-up of the section."""

    key: str
    label: str
    make: Callable[[bool], sl.Server]


CONFIGS = (
    Config("ours1", "ours, 1 worker", lambda auth: sl.Ours(auth, workers=1)),
    Config("ours2", "ours, 2 workers", lambda auth: sl.Ours(auth, workers=2)),
    Config("kam1", "Kamailio -n 1", lambda auth: sl.Kamailio(auth, children=1)),
    Config("kam2", "Kamailio -n 2", lambda auth: sl.Kamailio(auth, children=2)),
)
BY_KEY = {c.key: c for c in CONFIGS}
PINNED_CONFIGS = ("ours1", "ours2", "kam1")


# --- /proc readers (pure functions of the text, tested in tests/bench)


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """``/proc/loadavg`` -> the 1, 5 and 15 minute load averages."""
    one, five, fifteen = text.split()[:3]
    return float(one), float(five), float(fifteen)


def parse_rss_kib(status: str) -> int:
    """``/proc/PID/status`` -> VmRSS in KiB (0 when the line is missing: a
    kernel thread or a process that is exiting)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return "/".join(f"{x:.2f}" for x in parse_loadavg(f.read()))
    except OSError:
        return "?"


def rss_by_process(root: int) -> dict[int, int]:
    """RSS in bytes of ``root`` and each of its living descendants."""
    out = {}
    for pid in sl.process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                out[pid] = parse_rss_kib(f.read()) * 1024
        except OSError:
            pass
    return out


def cpu_by_process(root: int) -> dict[int, float]:
    out = {}
    for pid in sl.process_tree(root):
        try:
            out[pid] = sl.cpu_seconds(pid)
        except (OSError, IndexError, ValueError):
            pass
    return out


def pin(root: int, cpus: set[int]) -> None:
    """Every thread of ``root`` and of its descendants onto ``cpus``."""
    for pid in sl.process_tree(root):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


# --- the measures


@dataclass
class Measure:
    """What one configuration gave for one workload."""

    cpu: list[sl.Step] = field(default_factory=list)  # the CPU steps, one per round
    parent_us: list[float] = field(default_factory=list)  # ours with workers: the parent's part of cpu_us
    best: sl.Step | None = None
    steps: list[sl.Step] = field(default_factory=list)
    rss_per_binding: list[int] = field(default_factory=list)  # bytes, one per process (parent first)
    note: str = ""

    @property
    def cpu_us(self) -> float | None:
        """The lowest CPU per call of the rounds that mostly worked."""
        good = [s.cpu_us for s in self.cpu if s.cpu_us is not None and s.ok >= 0.9 * s.calls]
        return min(good) if good else None

    @property
    def rate(self) -> int | None:
        return self.best.rate if self.best is not None else None


Results = dict[tuple[str, str, str], Measure]  # (part, config key, workload)


class Run:
    """One run of the section: the work directory, sip_load's Bench, the
    deadline and the results so far."""

    def __init__(self, budget: float, say: Callable[[str], None] = print) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.say = say
        self.dir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
        self.bench = sl.Bench(self.dir, self.deadline, say)
        self.bench.uac_extra = ["-t", "un", "-max_socket", str(UAC_SOCKETS)]
        self.results: Results = {}
        self.load_before = load_average()
        self.n = 0
        # CPU per call is measured where ours is not overloaded: 1,000/s,
        # or less (WORKERS_CPU_RATE) when the neighbours take most of the cores
        self.cpu_rate = int(os.environ.get("WORKERS_CPU_RATE", sl.CPU_RATE))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def close(self) -> None:
        if os.environ.get("SIP_BENCH_KEEP"):
            self.say(f"(work files kept in {self.dir})")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def one(self, part: str, key: str, workload: str, *, search: bool, pinned: bool = False,
            search_budget: float = 0.0, cpu: bool = True) -> None:
        """A fresh server: the CPU step at 1,000/s, then (``search``) the rate search."""
        m = self.results.setdefault((part, key, workload), Measure())
        self.n += 1
        sdir = self.dir / f"{self.n:03d}-{part}-{key}-{workload}"
        sdir.mkdir()
        server = BY_KEY[key].make(workload in sl.AUTH_WORKLOADS)
        mine = os.sched_getaffinity(0)
        try:
            server.start(sdir)
        except Exception as e:
            m.note = f"did not start: {e}"[:300]
            self.say(f"  {key} {workload}: {m.note}")
            return
        probe_uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe_uas.bind(("127.0.0.1", 0))
        self.bench.probe_uas = probe_uas
        try:
            if pinned:
                pin(server.pid, {SERVER_CPU})
                os.sched_setaffinity(0, {SIPP_CPU})  # this thread, so the probe's thread too
                self.bench.sipp_prefix = ["taskset", "-c", str(SIPP_CPU)]
            uas_port = free_port("udp")
            if workload in sl.UAS:
                sl.register_uas(server, uas_port)
                sl.register_uas(server, probe_uas.getsockname()[1], "probe")
                time.sleep(0.3)  # with workers: the bindings reach the other worker
            if cpu:
                self._cpu_step(server, workload, uas_port, m, key)
            if search:
                if m.cpu and m.cpu[-1].ok < 0.1 * m.cpu[-1].calls:
                    m.note = f"fails at {self.cpu_rate}/s"
                    return
                self.bench.cool_down(server)
                m.best, m.steps = self.bench.search(server, workload, uas_port, search_budget)
                top = f"{m.best.rate:,}/s" if m.best else "none"
                self.say(f"  {key} {workload}{' pinned' if pinned else ''}: highest {top}")
        except Exception as e:
            m.note = f"error: {e}"[:300]
            self.say(f"  {key} {workload}: {m.note}")
        finally:
            self.bench.probe_uas = None
            self.bench.sipp_prefix = []
            os.sched_setaffinity(0, mine)
            probe_uas.close()
            server.stop()

    def _cpu_step(self, server: sl.Server, workload: str, uas_port: int, m: Measure, key: str) -> None:
        register = workload.startswith("REGISTER")
        rss0 = rss_by_process(server.pid) if register else {}
        cpu0 = cpu_by_process(server.pid)
        users = self.bench.users if register else None
        calls = min(sl.USERS, int(self.cpu_rate * sl.CPU_SECONDS)) if register else int(self.cpu_rate * sl.CPU_SECONDS)
        st = self.bench.step(server, workload, self.cpu_rate, calls, uas_port, users)
        cpu1 = cpu_by_process(server.pid)
        m.cpu.append(st)
        done = st.ok + len(st.probe_us)
        if key.startswith("ours") and done and len(cpu1) > 1:
            m.parent_us.append((cpu1.get(server.pid, 0) - cpu0.get(server.pid, 0)) * 1e6 / done)
        if register and st.ok:
            rss1 = rss_by_process(server.pid)
            m.rss_per_binding = [(rss1[p] - rss0.get(p, 0)) // calls for p in rss1]
        self.say(f"  {key} CPU: {st.describe()}; server CPU {st.cpu_us or 0:.1f} us/call")


def measure(parts: tuple[str, ...] = PARTS, workloads: tuple[str, ...] = WORKLOADS,
            say: Callable[[str], None] = print) -> Run:
    run = Run(float(os.environ.get("WORKERS_BENCH_BUDGET", 1500)), say)
    try:
        if "cpu" in parts:
            say(f"(a) CPU per call at {run.cpu_rate:,}/s, load average {load_average()}")
            for r in range(ROUNDS):
                for w in workloads:
                    order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]
                    for c in order:
                        if run.left() < (0.45 if "rate" in parts else 0.1) * (run.deadline - run.started):
                            break
                        run.one("cpu", c.key, w, search=False)
        if "rate" in parts:
            say(f"(b) highest rates, load average {load_average()}")
            todo = [(c.key, w) for w in RATE_WORKLOADS if w in workloads for c in CONFIGS]
            reserve = 0.25 if "pinned" in parts else 0.0
            for i, (key, w) in enumerate(todo):
                left = run.left() - reserve * (run.deadline - run.started)
                if left < 40:
                    run.results.setdefault(("rate", key, w), Measure()).note = "skipped: out of time"
                    continue
                run.one("rate", key, w, search=True, cpu=False, search_budget=left / (len(todo) - i))
        if "pinned" in parts:
            say(f"(c) pinned, load average {load_average()}")
            todo = [(k, w) for w in PINNED_WORKLOADS if w in workloads for k in PINNED_CONFIGS]
            for i, (key, w) in enumerate(todo):
                left = run.left()
                if left < 40:
                    run.results.setdefault(("pinned", key, w), Measure()).note = "skipped: out of time"
                    continue
                run.one("pinned", key, w, search=True, pinned=True, search_budget=left / (len(todo) - i) - 15)
    finally:
        run.close()
    return run


# --- the report


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _n(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, the first column left-aligned, the others right."""
    out = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def free_cores_estimate(pinned_rate: int | None, cpu1: float | None, cpu_n: float | None, n: int) -> int | None:
    """What ``n`` workers on ``n`` free cores would sustain, from one worker's
    highest rate on one free core (``pinned_rate``): each worker does 1/n of
    the calls at ``cpu_n`` us each instead of ``cpu1``; the cores of sipp and
    the kernel's loopback work are not counted (they were the other core)."""
    if pinned_rate is None or cpu1 is None or not cpu_n:
        return None
    return int(pinned_rate * n * cpu1 / cpu_n)


def _get(results: Results, part: str, key: str, w: str) -> Measure:
    return results.get((part, key, w), Measure())


def report(run: Run, workloads: tuple[str, ...] = WORKLOADS) -> str:
    res = run.results
    elapsed = time.monotonic() - run.started
    lines = [
        "## Workers: ours with 1 and 2 worker processes, Kamailio with 1 and 2 children",
        "",
        f"Machine: {sl.machine()}. Load average (1/5/15 min) {run.load_before} before, {load_average()} after "
        "(the machine is shared: the rates move with the neighbours' load, CPU per call much less).",
        "",
        "sip_load's scenarios, step, search and probe (see the SIP load section), but the sipp UAC sends from "
        f"{UAC_SOCKETS} source ports (`-t un -max_socket {UAC_SOCKETS}`) to every server: SO_REUSEPORT picks a "
        "worker by the source address, so from one port every request would reach one worker. The UAS answers from "
        "one port, so with 2 workers about half the forwarded requests' responses reach the other worker and are "
        "handed over (`sip/handoff.py`). Ours with 1 worker is the plain single process (`[proxy] workers = 1`); "
        "with 2, a parent (ring, admin, the bindings, limits and nonces hub) and 2 workers. Kamailio: "
        "`-n 1` / `-n 2 -m 256 -x tlsf`. CPU: user + system time of every process of the server from "
        f"/proc/PID/stat, per call that succeeded, at {run.cpu_rate:,} calls/s ({sl.CPU_SECONDS:g} s; REGISTER and "
        f"REGISTER-AUTH: the first {min(sl.USERS, int(run.cpu_rate * sl.CPU_SECONDS)):,} registrations of distinct users), the lowest of {ROUNDS} rounds with the servers "
        "alternating.",
        "",
        f"### (a) CPU per call at {run.cpu_rate:,} calls/s, all processes (us)",
        "",
    ]
    rows = []
    for w in workloads:
        c = {k: _get(res, "cpu", k, w).cpu_us for k in BY_KEY}
        parent = _get(res, "cpu", "ours2", w).parent_us
        rows.append([w, _us(c["ours1"]), _us(c["ours2"]), _ratio(c["ours2"], c["ours1"]),
                     _us(min(parent)) if parent else "-", _us(c["kam1"]), _us(c["kam2"]),
                     _ratio(c["kam2"], c["kam1"]), _ratio(c["ours1"], c["kam1"]), _ratio(c["ours2"], c["kam2"])])
    lines += table(["workload", "ours 1 worker", "ours 2 workers", "2 / 1", "of which the parent",
                    "Kamailio -n 1", "Kamailio -n 2", "-n 2 / -n 1", "ours 1 / Kam -n 1", "ours 2 / Kam -n 2"], rows)
    mem = [(k, _get(res, "cpu", k, "REGISTER").rss_per_binding) for k in ("ours1", "ours2")]
    if any(m for _, m in mem):
        lines += ["", "Memory: RSS growth per binding over the first registrations of the REGISTER step, by process "
                  "(the workers' figure includes the REGISTER transactions that linger 32 s after their 200; "
                  "`bench.bindings` measures one binding alone in process: see the bindings section):"]
        for k, m in mem:
            if m:
                who = "single process" if len(m) == 1 else "parent, then each worker"
                lines.append(f"- {BY_KEY[k].label}: {', '.join(f'{b:,} B' for b in m)} ({who}); "
                             f"all processes {sum(m):,} B per binding")
    if any(p == "rate" for p, _, _ in res):
        lines += ["", "### (b) Highest rate at <= 0.1% failures, sipp sharing the 2 cores (calls/s)", ""]
        rows = []
        for w in RATE_WORKLOADS:
            if w not in workloads:
                continue
            r = {k: _get(res, "rate", k, w).rate for k in BY_KEY}
            rows.append([w, _n(r["ours1"]), _n(r["ours2"]), _ratio(r["ours2"], r["ours1"]), _n(r["kam1"]),
                         _n(r["kam2"]), _ratio(r["kam2"], r["kam1"]), _ratio(r["ours2"], r["kam2"])])
        lines += table(["workload", "ours 1 worker", "ours 2 workers", "2 / 1", "Kamailio -n 1", "Kamailio -n 2",
                        "-n 2 / -n 1", "ours 2 / Kam -n 2"], rows)
    if any(p == "pinned" for p, _, _ in res):
        lines += ["", f"### (c) Pinned: sipp, the probe and the bench on CPU {SIPP_CPU}, the server on CPU "
                  f"{SERVER_CPU}", "",
                  "With 2 cores only one is free for the server: ours with 2 workers here runs both on that one "
                  "core, which shows what a second worker costs, not what a second core gives. \"N free cores\": "
                  "one worker's highest rate on its own core x N x (1 worker's CPU per call / 2 workers' "
                  "CPU per call, from (a)), if the clients and the kernel keep up.", ""]
        rows = []
        for w in PINNED_WORKLOADS:
            if w not in workloads:
                continue
            p = {k: _get(res, "pinned", k, w) for k in PINNED_CONFIGS}
            c1, c2 = _get(res, "cpu", "ours1", w).cpu_us, _get(res, "cpu", "ours2", w).cpu_us
            rows.append([w, _n(p["ours1"].rate), _us(p["ours1"].cpu_us), _n(p["ours2"].rate), _us(p["ours2"].cpu_us),
                         _n(p["kam1"].rate), _us(p["kam1"].cpu_us),
                         _n(free_cores_estimate(p["ours1"].rate, c1, c2, 2)),
                         _n(free_cores_estimate(p["ours1"].rate, c1, c2, 4))])
        lines += table(["workload", "ours 1 worker /s", "us/call", "ours 2 workers, one core /s", "us/call",
                        "Kamailio -n 1 /s", "us/call", "2 free cores (est.) /s", "4 free cores (est.) /s"], rows)
    steps = []
    for (part, key, w), m in sorted(res.items()):
        if m.steps:
            text = ", ".join(f"{s.rate:,} {'pass' if s.passed else 'FAIL'}" for s in m.steps)
            steps.append(f"- {part} {BY_KEY[key].label} {w}: {text}")
        if m.note:
            steps.append(f"- {part} {BY_KEY[key].label} {w}: {m.note}")
        elif part != "rate" and m.cpu and any(s.ok < s.calls for s in m.cpu):
            steps.append(f"- {part} {BY_KEY[key].label} {w} at {run.cpu_rate:,}/s: "
                         + "; ".join(f"{s.ok:,}/{s.calls:,} ok, {s.retrans:,} retr." for s in m.cpu))
    if steps:
        lines += ["", "Steps (rate: pass/FAIL) and failures:", "", *steps]
    lines += ["", f"Section time: {elapsed:.0f} s."]
    return "\n".join(lines) + "\n"


# --- where a second worker's CPU goes (not part of `make bench`)


def profile(workload: str, rate: int = 400, seconds: float = 8.0, workers: int = 2, top: int = 25) -> str:
    """py-spy on each process of ours (the parent and every worker) under one
    sipp step at ``rate``: CPU per call by process, and each one's hottest
    functions by own time."""
    import subprocess
    import sys

    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    run_ = Run(600, lambda _t: None)
    server = sl.Ours(workload in sl.AUTH_WORKLOADS, workers=workers)
    server.start(run_.dir)
    probe_uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe_uas.bind(("127.0.0.1", 0))
    run_.bench.probe_uas = probe_uas
    spies = {}
    try:
        uas_port = free_port("udp")
        if workload in sl.UAS:
            sl.register_uas(server, uas_port)
            sl.register_uas(server, probe_uas.getsockname()[1], "probe")
            time.sleep(0.3)
        for pid in sl.process_tree(server.pid):
            out = run_.dir / f"spy-{pid}.txt"
            spies[pid] = (out, subprocess.Popen(
                [pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--duration",
                 str(int(seconds) + 1), "--nonblocking", "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        cpu0 = cpu_by_process(server.pid)
        calls = int(rate * seconds)
        st = run_.bench.step(server, workload, rate, calls, uas_port,
                             run_.bench.users if workload.startswith("REGISTER") else None)
        cpu1 = cpu_by_process(server.pid)
        done = st.ok + len(st.probe_us) or 1
        text = [f"{workload} @{rate}/s, {workers} workers: {st.describe()}; all processes {st.cpu_us or 0:.1f} us/call"]
        for pid, (out, spy) in spies.items():
            spy.wait(timeout=seconds + 30)
            who = "parent" if pid == server.pid else "worker"
            text.append(f"\n--- {who} {pid}: {(cpu1.get(pid, 0) - cpu0.get(pid, 0)) * 1e6 / done:.1f} us/call")
            if out.exists():
                text.append(sl.summarize_pyspy(out.read_text(), top))
        return "\n".join(text)
    finally:
        run_.bench.probe_uas = None
        probe_uas.close()
        server.stop()
        run_.close()


def hub_cost(changes: int = 3000, rounds: int = 3, rate: float | None = None) -> tuple[float, float]:
    """Python CPU (us) of one binding change in a lone table, and what sharing
    it between 2 workers adds (worker -> parent -> the other worker), in
    process: the hub and two workers' lines joined by ``twisted.test.iosim``
    (no kernel: the Unix socket's writes, reads and wake-ups are not in it),
    the lines flushed after each change as one REGISTER at a time would be.
    ``rate``: changes a second at the worker, whose link then batches them on
    a clock (``hub.BATCH_INTERVAL``); None: a link without a clock, each
    change sent at once.  Best of ``rounds``."""
    from twisted.internet.task import Clock
    from twisted.test.iosim import connectedServerAndClient

    from sosimple_proxy.location.bindings import Binding, BindingTable
    from sosimple_proxy.workers.hub import Hub, WorkerLink
    from sosimple_proxy.workers.protocol import Hello

    clock = Clock()
    hub = Hub(BindingTable(clock), {})
    tables, pumps = [], []
    for index in range(2):
        table = BindingTable(clock)
        client, _server, pump = connectedServerAndClient(lambda: hub.buildProtocol(None),
                                                         lambda t=table: WorkerLink(t, lambda: None,
                                                                                    clock if rate else None))
        client.callRemote(Hello, index=index)
        pump.flush()
        tables.append(table)
        pumps.append(pump)
    lone = BindingTable(clock)

    def change(table: BindingTable, i: int) -> None:
        aor = f"user{i % 10000:05d}@{sl.DOMAIN}"
        table.replace(aor, [Binding(aor, f"sip:user{i % 10000:05d}@127.0.0.1:{5000 + i % 60000}", 1e12,
                                    f"{i}-reg@127.0.0.1", 1, received="udp:127.0.0.1:5070", registered_at=i)])

    base, shared = [], []
    for _ in range(rounds):
        t0 = time.process_time()
        for i in range(changes):
            change(lone, i)
        base.append((time.process_time() - t0) / changes)
        t0 = time.process_time()
        for i in range(changes):
            change(tables[0], i)
            if rate:
                clock.advance(1 / rate)
            pumps[0].flush()
            pumps[1].flush()
        shared.append((time.process_time() - t0) / changes)
    assert tables[1].lookup(f"user00000@{sl.DOMAIN}"), "the change did not reach the other worker"
    return min(base) * 1e6, (min(shared) - min(base)) * 1e6


def run() -> str:
    say = lambda text: print(text, flush=True)  # noqa: E731
    return report(measure(say=say))


def main(argv: list[str]) -> None:
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if "--hub" in argv:
        for rate in (None, 100.0, 500.0, 2000.0):
            base, extra = hub_cost(rate=rate)
            how = f"batched, {rate:g} changes/s at the worker" if rate else "each at once"
            print(f"binding change: {base:.1f} us in a lone table; shared by 2 workers ({how}): +{extra:.1f} us "
                  "(Python, in process)", flush=True)
        return
    if "--profile" in argv:
        for w in [a for a in argv if a in WORKLOADS] or ["REGISTER", "MESSAGE"]:
            print(profile(w, int(opts.get("rate", 400)), float(opts.get("seconds", 8)), int(opts.get("workers", 2))),
                  flush=True)
        return
    parts = tuple(a for a in argv if a in PARTS) or PARTS
    wls = tuple(a for a in argv if a in WORKLOADS) or WORKLOADS
    print(report(measure(parts, wls), wls))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
