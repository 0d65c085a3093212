"""What a CA ring's mutual TLS costs (issue 11): the same work over an open
ring and over a CA ring, in one run, as ratios.

Open ring: node keys, ids derived from them (or fixed, with
``allow_chosen_ids``), AMP over plain TCP, peers proving their keys once
each.  CA ring: certificates from a test CA (``tests/certs.py``), every AMP
connection mutual TLS.  Everything else is the same: ``twistd`` processes
on loopback, one after the other on the same machine.

(a) ring put/get: RING_TLS_NODES storage peers (replicas 2, stabilize
    interval 1 s); RING_TLS_OPS puts, then as many gets, through one node's
    admin API from CONCURRENCY client threads (as ``bench/overlay_ring.py``:
    each operation is an HTTP request plus the ring's lookup and stores or
    fetch).  Connections are pooled, so TLS costs its handshakes once per
    peer pair and then the encryption of every message.
(b) SIP call setup through the ring: ``bench/ring_sip.py``'s three proxies
    (callee registered at proxy 1, caller at proxy 3), INVITE to 180 timed
    by its probe; *cold*: the first call to each of RING_TLS_CALLS fresh
    AoRs (proxy 3 looks the AoR up in the ring first), *warm*: RING_TLS_WARM
    further calls (answered from proxy 3's contact cache, the ring not
    asked).  SIP itself is UDP in both: what differs is the ring.

    python -m bench ring_tls
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from bench.overlay_ring import CONCURRENCY, _Http, _name, _run_ops, _settled, _stats, _value
from bench.ring_sip import DOMAIN, CallProbe, Setup, _At, register_uas
from bench.sip_load import cpu_seconds, machine

#: rounds of each setup, alternating open/CA so that a busy machine's drift
#: hits both; the best round counts (as the parser's bench does)
ROUNDS = int(os.environ.get("RING_TLS_ROUNDS", 3))
NODES = int(os.environ.get("RING_TLS_NODES", 4))
OPS = int(os.environ.get("RING_TLS_OPS", 500))
COLD = int(os.environ.get("RING_TLS_CALLS", 15))
WARM = int(os.environ.get("RING_TLS_WARM", 100))
INTERVAL = 1.0
SETTLE_TIMEOUT = 60.0


def _ca(directory: Path) -> tuple[Any, str]:
    from tests.certs import CA

    ca = CA("bench ring CA")
    return ca, str(ca.write(directory, "ring-ca"))


def _node_files(ca: Any, state_dir: Path, node_id: int) -> None:
    from tests.overlay.test_ringtls import node_files

    node_files(ca, str(state_dir), node_id, (DOMAIN,))


# ----------------------------------------------------------- (a) put / get


def measure_store(workdir: Path, tls: bool) -> dict:
    from sosimple_proxy.testing.ring import peer_ring

    settings: dict[str, object] = {"stabilize_interval": INTERVAL, "replicas": 2, "successors": 4}
    workdir.mkdir(parents=True, exist_ok=True)
    if tls:
        ca, ca_path = _ca(workdir)
        for i in range(NODES):
            _node_files(ca, workdir / f"n{i}" / "overlay", (i * (1 << 160)) // NODES + 0x1234)
        settings["ca"] = ca_path
    with peer_ring(settings, workdir, NODES) as peers:
        apis = [_Http(p.host, p.admin_port) for p in peers]
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not _settled(apis):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {'CA' if tls else 'open'} ring did not settle within {SETTLE_TIMEOUT:g} s")
            time.sleep(0.5)
        time.sleep(2 * INTERVAL)  # successor lists and fingers fill in
        entry = apis[0]

        def put(i: int) -> bool:
            return entry.call("PUT", f"/records/{quote(_name(i))}?ttl=3600", _value(i))[0] == 201

        def get(i: int) -> bool:
            return entry.call("GET", f"/records/{quote(_name(i))}") == (200, _value(i))

        def cpu() -> float:  # every peer's CPU: less at the mercy of a busy machine than wall time
            return sum(cpu_seconds(p.process.pid) for p in peers if p.process is not None)

        c0 = cpu()
        lat, ok, wall = _run_ops(put, OPS)
        c1 = cpu()
        puts = _stats(lat, wall, ok, OPS) | {"cpu_ms": 1000 * (c1 - c0) / OPS}
        lat, ok, wall = _run_ops(get, OPS)
        gets = _stats(lat, wall, ok, OPS) | {"cpu_ms": 1000 * (cpu() - c1) / OPS}
    return {"put": puts, "get": gets}


# ------------------------------------------------------ (b) SIP call setup


class CARingSetup(Setup):
    """``ring_sip``'s three proxies as a CA ring: each node's certificate
    places it where the open setup's fixed id does."""

    def __init__(self, name: str, nodes: int, ca: Any, ca_path: str) -> None:
        super().__init__(name, nodes)
        self.ca, self.ca_path = ca, ca_path
        self.label = f"{nodes}-node CA ring"

    def overlay_keys(self, workdir: Path, nid: int) -> dict[str, str]:
        _node_files(self.ca, workdir / "overlay", nid)
        return {"ca": self.ca_path}


def measure_calls(setup: Setup, workdir: Path) -> dict:
    setup.start(workdir)
    probe = CallProbe(setup.port)
    try:
        home = _At(setup.home, f"{setup.label} proxy 1")
        users = [f"tls{i:02d}" for i in range(COLD)]
        for user in users:
            register_uas(home, probe.uas_port, user)
        if not setup.published([f"{u}@{DOMAIN}" for u in users]):
            raise RuntimeError("registrations not visible in the ring within 20 s")
        probe.call("nobody")  # wakes every process on the path up
        probe.errors.clear()
        cold = [us for us in (probe.call(u) for u in users) if us is not None]
        warm = [us for us in (probe.call(users[i % len(users)]) for i in range(WARM)) if us is not None]
        return {"cold": cold, "warm": warm, "failures": len(probe.errors), "errors": probe.errors[:3]}
    finally:
        probe.close()
        setup.stop()


# ------------------------------------------------------------------ report


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _ratio(tls: float | None, plain: float | None) -> str:
    return f"{tls / plain:.2f}x" if tls and plain else "-"


def _fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def report(store: dict[str, dict], calls: dict[str, dict], notes: list[str], seconds: float) -> str:
    lines = [
        "## The ring with and without TLS: open ring vs CA ring (mutual TLS)",
        "",
        f"Machine: {machine()}.",
        "",
        f"{ROUNDS} rounds of each setup, alternating, on a machine shared with other work (load average "
        f"{os.getloadavg()[0]:.1f} at the end): the best round's rate per operation and the lowest CPU (all "
        "peers' user+system time over the phase, per operation); call setup medians over every round's calls.  "
        f"(a) {NODES} storage peers under twistd, replicas 2; {OPS} puts then {OPS} gets of 200-byte records "
        f"through one node's admin API, {CONCURRENCY} client threads.  (b) 3 proxies (callee at proxy 1, caller at proxy 3), "
        f"INVITE to 180 in us: cold = first call to each of {COLD} AoRs (a ring lookup first), warm = {WARM} more "
        "(proxy 3's contact cache).  SIP is UDP in both.  TLS cost = CA ring / open ring for times, "
        "open / CA for ops/s: above 1, TLS costs that much more; below 1 is noise or the CA ring doing better.",
        "",
        "| workload | figure | open ring | CA ring | TLS cost |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    o, c = store.get("open"), store.get("ca")
    for op in ("put", "get"):
        if o and c:
            figures = (("ops/s", "per_s", 0), ("median ms", "p50_ms", 1), ("p99 ms", "p99_ms", 1), ("CPU ms per op", "cpu_ms", 2))
            for fig, key, digits in figures:
                a, b = o[op][key], c[op][key]
                cost = _ratio(a, b) if key == "per_s" else _ratio(b, a)
                lines.append(f"| ring {op} | {fig} | {_fmt(a, digits)} | {_fmt(b, digits)} | {cost} |")
            lines.append(f"| ring {op} | ok | {o[op]['ops']}/{o[op]['total']} | {c[op]['ops']}/{c[op]['total']} | |")
    co, cc = calls.get("open"), calls.get("ca")
    if co and cc:
        for fig in ("cold", "warm"):
            a, b = _median(co[fig]), _median(cc[fig])
            lines.append(f"| SIP call setup | {fig} median us | {_fmt(a)} | {_fmt(b)} | {_ratio(b, a)} |")
        lines.append(f"| SIP call setup | failures | {co['failures']} | {cc['failures']} | |")
    lines += ["", *[f"- {n}" for n in notes], "", f"Section time: {seconds:.0f} s."]
    return "\n".join(lines)


def _best(rounds: list[dict]) -> dict:
    """Per operation, the round with the highest rate (its CPU per
    operation: the lowest of the rounds)."""
    out = {}
    for op in ("put", "get"):
        best = dict(max((r[op] for r in rounds), key=lambda st: st["per_s"]))
        best["cpu_ms"] = min(r[op]["cpu_ms"] for r in rounds)
        out[op] = best
    return out


def measure(say: Callable[[str], None] = print) -> tuple[dict, dict, list[str]]:
    store_rounds: dict[str, list[dict]] = {"open": [], "ca": []}
    calls: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-ring-tls-") as tmp:
        base = Path(tmp)
        for r in range(ROUNDS):
            for name in (("open", "ca") if r % 2 == 0 else ("ca", "open")):
                try:
                    got = measure_store(base / f"store-{name}-{r}", name == "ca")
                    store_rounds[name].append(got)
                    say(f"ring {name} round {r + 1}: put {got['put']['per_s']:.0f}/s, get {got['get']['per_s']:.0f}/s")
                except Exception as e:
                    notes.append(f"ring put/get, {name} ring, round {r + 1}: {e}"[:300])
            for name in (("open", "ca") if r % 2 == 0 else ("ca", "open")):
                workdir = base / f"sip-{name}-{r}"
                workdir.mkdir()
                try:
                    if name == "open":
                        setup: Setup = Setup(f"open{r}", 3)
                    else:
                        ca, ca_path = _ca(workdir)
                        setup = CARingSetup(f"ca{r}", 3, ca, ca_path)
                    got = measure_calls(setup, workdir)
                    total = calls.setdefault(name, {"cold": [], "warm": [], "failures": 0, "errors": []})
                    total["cold"] += got["cold"]
                    total["warm"] += got["warm"]
                    total["failures"] += got["failures"]
                    total["errors"] += got["errors"]
                    say(f"calls {name} round {r + 1}: cold {_median(got['cold'])} us, warm {_median(got['warm'])} us")
                except Exception as e:
                    notes.append(f"SIP call setup, {name} ring, round {r + 1}: {e}"[:300])
    for name, total in calls.items():
        if total["failures"]:
            notes.append(f"{name} ring: {total['failures']} failed calls, e.g. {total['errors'][:3]}")
    store = {name: _best(rounds) for name, rounds in store_rounds.items() if rounds}
    return store, calls, notes


def run() -> str:
    started = time.monotonic()
    store, calls, notes = measure()
    return report(store, calls, notes, time.monotonic() - started)


if __name__ == "__main__":
    print(run())
