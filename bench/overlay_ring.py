"""Overlay over loopback: put/get throughput and latency, ours against OpenDHT.

Ours: 10 storage peers as real ``twistd`` processes (the e2e helper
``PeerProcess``), replicas = 2, stabilize interval 1 s; the workload goes
through one node's admin HTTP API (``PUT``/``GET /records/{name}``) from a
pool of client threads with keep-alive connections, so every operation pays
an HTTP request on top of the ring's own work (a lookup, then 3 stores for a
put, which also reads the entry first; a lookup and a fetch for a get).

Reference: the OpenDHT Python package (``opendht`` wheel, installed by
``make bench`` only) with 10 nodes on loopback: 9 in their own processes,
the 10th in this process, through which the same workload goes with its
native API (``put``/``get`` with callbacks).  OpenDHT stores each value on
its 8 closest nodes and a get gathers values from several of them, so the
work per operation differs from ours; the figures compare what a client
sees.  Both run in the same ``make bench`` run on the same machine, one
after the other.  ``python -m bench overlay_ring``.

Knobs for a shorter run while working on speed (the recorded section uses
the defaults): ``OVERLAY_RING_RECORDS`` (operations per phase),
``OVERLAY_RING_OPENDHT=0`` (skip the reference).  Besides latency and
throughput, the section gives the CPU time of all our peers per operation
(utime + stime from /proc, every peer process): on a shared machine that
is the figure that compares before and after.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

NODES = 10
RECORDS = int(os.environ.get("OVERLAY_RING_RECORDS", 1000))
CONCURRENCY = 16
VALUE_SIZE = 200
PHASE_TIMEOUT = 120.0
INTERVAL = 1.0


def _value(i: int) -> bytes:
    return (f"{i:08d}".encode() * (VALUE_SIZE // 8 + 1))[:VALUE_SIZE]


def _name(i: int) -> str:
    return f"bench-{i}@example.com"


def _stats(latencies: list[float], wall: float, ok: int, total: int) -> dict:
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    return {
        "ops": ok,
        "total": total,
        "per_s": ok / wall if wall > 0 else 0.0,
        "mean_ms": 1000 * sum(lat) / len(lat) if lat else float("nan"),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "wall": wall,
    }


# --------------------------------------------------------------------- ours


class _Http:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.local = threading.local()

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body)
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.local.conn = None
            return 0, b""


def _settled(apis: list[_Http]) -> bool:
    views = []
    for api in apis:
        status, body = api.call("GET", "/ring")
        if status != 200:
            return False
        views.append(json.loads(body))
    order = sorted(views, key=lambda v: v["id"])
    for j, v in enumerate(order):
        succ = order[(j + 1) % len(order)]["address"]
        pred = order[j - 1]["address"]
        if not v["successors"] or v["successors"][0]["address"] != succ or (v["predecessor"] or {}).get("address") != pred:
            return False
    return True


def _run_ops(op, count: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    ok = 0

    def one(i: int) -> None:
        nonlocal ok
        t0 = time.perf_counter()
        good = op(i)
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)
            ok += bool(good)

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(count)))
    return latencies, ok, time.perf_counter() - started


def measure_ours() -> dict:
    from sosimple_proxy.testing import PeerProcess

    settings = {"stabilize_interval": INTERVAL, "replicas": 2}
    peers: list = []
    try:
        first = PeerProcess(overlay=settings).start()
        peers.append(first)
        rest = [PeerProcess(bootstrap=[first.overlay_address], overlay=settings) for _ in range(NODES - 1)]
        peers += rest
        with ThreadPoolExecutor(len(rest)) as pool:
            list(pool.map(lambda p: p.start(), rest))
        apis = [_Http(p.host, p.admin_port) for p in peers]
        deadline = time.monotonic() + 60
        while not _settled(apis):
            if time.monotonic() > deadline:
                raise RuntimeError("our ring did not settle within 60 s")
            time.sleep(0.5)
        time.sleep(2 * INTERVAL)  # successor lists and fingers fill in
        entry = apis[0]

        def put(i: int) -> bool:
            return entry.call("PUT", f"/records/{quote(_name(i))}?ttl=3600", _value(i))[0] == 201

        def get(i: int) -> bool:
            return entry.call("GET", f"/records/{quote(_name(i))}") == (200, _value(i))

        pids = [p.process.pid for p in peers if p.process is not None]
        cpu0 = _cpu(pids)
        lat, ok, wall = _run_ops(put, RECORDS)
        cpu1 = _cpu(pids)
        puts = _stats(lat, wall, ok, RECORDS)
        puts["cpu_us"] = 1e6 * (cpu1 - cpu0) / RECORDS
        lat, ok, wall = _run_ops(get, RECORDS)
        gets = _stats(lat, wall, ok, RECORDS)
        gets["cpu_us"] = 1e6 * (_cpu(pids) - cpu1) / RECORDS
        return {"put": puts, "get": gets}
    finally:
        for p in peers:
            p.cleanup()


def _cpu(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    from bench.sip_load import cpu_seconds

    return sum(cpu_seconds(pid) for pid in pids)


# ----------------------------------------------------------------- OpenDHT

_OPENDHT_NODE = r"""
import sys, opendht as dht
cfg = dht.DhtConfig()
cfg.setNetwork(int(sys.argv[1]))
cfg.setRateLimit(-1, -1)
node = dht.DhtRunner()
node.run(port=0, ipv4="127.0.0.1", config=cfg)
if len(sys.argv) > 2:
    host, port = sys.argv[2].rsplit(":", 1)
    node.bootstrap(host, port)
print(node.getBound().getPort(), flush=True)
sys.stdin.read()  # until the bench closes our stdin
node.join()
"""


def opendht_version() -> str | None:
    try:
        import opendht

        return str(getattr(opendht, "version", lambda: "?")())
    except Exception:
        return None


def measure_opendht() -> dict:
    import opendht as dht

    network = 4000 + os.getpid() % 1000
    procs: list[subprocess.Popen] = []
    local = None
    try:
        cfg = dht.DhtConfig()
        cfg.setNetwork(network)
        cfg.setRateLimit(-1, -1)
        local = dht.DhtRunner()
        local.run(port=0, ipv4="127.0.0.1", config=cfg)
        boot = f"127.0.0.1:{local.getBound().getPort()}"
        for _ in range(NODES - 1):
            p = subprocess.Popen(
                [sys.executable, "-c", _OPENDHT_NODE, str(network), boot],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            procs.append(p)
        for p in procs:
            if not p.stdout.readline().strip():
                raise RuntimeError("an OpenDHT node did not start")
        time.sleep(3)  # routing tables fill in (as our ring settles first)

        def timed(issue) -> tuple[list[float], int, float]:
            sem = threading.Semaphore(CONCURRENCY)
            lock = threading.Lock()
            done = threading.Event()
            latencies: list[float] = []
            counts = {"ok": 0, "finished": 0}

            def finish(t0: float, good: bool) -> None:
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    counts["ok"] += good
                    counts["finished"] += 1
                    if counts["finished"] == RECORDS:
                        done.set()
                sem.release()

            started = time.perf_counter()
            for i in range(RECORDS):
                if not sem.acquire(timeout=PHASE_TIMEOUT):
                    break
                issue(i, time.perf_counter(), finish)
            done.wait(PHASE_TIMEOUT)
            return latencies, counts["ok"], time.perf_counter() - started

        def put(i: int, t0: float, finish) -> None:
            local.put(dht.InfoHash.get(_name(i)), dht.Value(_value(i)), lambda ok, nodes: finish(t0, bool(ok)))

        def get(i: int, t0: float, finish) -> None:
            found: list[bytes] = []

            def on_value(v) -> bool:
                found.append(bytes(v.data))
                return True

            local.get(dht.InfoHash.get(_name(i)), on_value, lambda ok, nodes: finish(t0, bool(ok) and _value(i) in found))

        # CPU of its 9 processes and of this one (its 10th node's threads,
        # and the workload's callbacks, counted against OpenDHT)
        pids = [p.pid for p in procs] + [os.getpid()]
        cpu0 = _cpu(pids)
        lat, ok, wall = timed(put)
        cpu1 = _cpu(pids)
        puts = _stats(lat, wall, ok, RECORDS)
        puts["cpu_us"] = 1e6 * (cpu1 - cpu0) / RECORDS
        lat, ok, wall = timed(get)
        gets = _stats(lat, wall, ok, RECORDS)
        gets["cpu_us"] = 1e6 * (_cpu(pids) - cpu1) / RECORDS
        return {"put": puts, "get": gets}
    finally:
        for p in procs:
            try:
                p.stdin.close()
                p.wait(10)
            except Exception:
                p.kill()
        if local is not None:
            local.join()


# ------------------------------------------------------------------ report


def _row(who: str, op: str, s: dict) -> str:
    return (
        f"| {who} | {op} | {s['ops']}/{s['total']} | {s['per_s']:,.0f} | {s['mean_ms']:.1f} | "
        f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} |"
    )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "-"


def run() -> str:
    load = os.getloadavg()[0]
    ours = measure_ours()
    version = opendht_version()
    ref: dict | None = None
    why = ""
    if os.environ.get("OVERLAY_RING_OPENDHT", "1") == "0":
        version, why = None, "skipped (OVERLAY_RING_OPENDHT=0)"
    elif version is None:
        why = "the `opendht` package is not installed (`make bench` installs the wheel from PyPI; it could not here)"
    else:
        try:
            ref = measure_opendht()
        except Exception as e:
            why = f"OpenDHT {version} did not run: {e.__class__.__name__}: {e}"
    lines = [
        "## Overlay over loopback: 10-node ring of real processes, against OpenDHT",
        "",
        f"{RECORDS} puts then {RECORDS} gets of {VALUE_SIZE}-byte values, {CONCURRENCY} in flight, "
        f"through one node. Ours: `twistd` storage peers, replicas = 2 (3 copies), through the admin "
        f"HTTP API. OpenDHT{' ' + version if version else ''}: 10 nodes (9 processes + the client's), "
        f"native API, 8 copies per value. Latency in ms; ratio = ours / OpenDHT throughput. "
        f"{os.cpu_count()} CPUs, load average {load:.1f} when the run began (shared machine: other loads skew both).",
        "",
        "| ring | op | ok | ops/s | mean ms | p50 ms | p99 ms |",
        "|---|---|---|---:|---:|---:|---:|",
        _row("ours", "put", ours["put"]),
        _row("ours", "get", ours["get"]),
    ]
    if ref is not None:
        lines += [_row("OpenDHT", "put", ref["put"]), _row("OpenDHT", "get", ref["get"])]
        lines += [""]
        for op in ("put", "get"):
            r = ours[op]["per_s"] / ref[op]["per_s"] if ref[op]["per_s"] else float("nan")
            lines.append(f"- {op} throughput ratio (ours / OpenDHT): {r:.2f}x")
    else:
        lines += ["", f"- No reference figures: {why}."]
    lines.append(
        f"- CPU of all our peers per operation (utime + stime, /proc): put {ours['put']['cpu_us']:,.0f} us, "
        f"get {ours['get']['cpu_us']:,.0f} us"
    )
    if ref is not None:
        lines.append(
            f"- CPU of all OpenDHT nodes per operation (its 9 processes and the client's, /proc): put "
            f"{ref['put']['cpu_us']:,.0f} us, get {ref['get']['cpu_us']:,.0f} us; ours / OpenDHT: put "
            f"{_ratio(ours['put']['cpu_us'], ref['put']['cpu_us'])}, get {_ratio(ours['get']['cpu_us'], ref['get']['cpu_us'])} "
            f"(on a loaded machine the figure that compares; ops/s there follow each side's share of the CPU)"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
