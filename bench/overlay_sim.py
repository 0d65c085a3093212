"""Overlay in simulation: lookup hops and latency against ring size.

Rings of N = 100, 1,000 and 10,000 Chord nodes on the simulated network
(per-link latency 5-50 ms one way, from each node's place on a plane),
grown by joins and stabilized; then lookups of random keys from random
nodes.  Latency is simulated time, hops are calls made (routing plus the
final check with the successor).  ``python -m bench overlay_sim``.
"""

from __future__ import annotations

import math
import time

from sosimple_proxy.overlay.node import NodeConfig
from sosimple_proxy.overlay.simnet import SimCluster, percentile

SIZES = (100, 1000, 10000)
LOOKUPS = 5000


def measure(n: int, seed: int = 1) -> dict:
    started = time.perf_counter()
    c = SimCluster(seed, NodeConfig(stabilize_interval=1.0))
    c.grow(n, per_round=50 if n <= 1000 else 200)
    rounds = c.settle(max_rounds=400)
    c.run(3)
    built = time.perf_counter() - started
    nodes = c.joined()
    hops: list[int] = []
    latency: list[float] = []
    wrong = 0

    def one(node, key, t0):
        def done(result):
            nonlocal wrong
            hops.append(result.hops)
            latency.append(c.clock.seconds() - t0)
            wrong += result.responsible.id != c.true_successor(key)

        return node.lookup(key).addCallback(done)

    ds = []
    for _ in range(LOOKUPS):
        key = c.random_key()
        ds.append(one(c.rng.choice(nodes), key, c.clock.seconds()))
    c.gather(ds)
    return {
        "n": n,
        "hops_mean": sum(hops) / len(hops),
        "hops_p99": percentile(hops, 99),
        "lat_mean": 1000 * sum(latency) / len(latency),
        "lat_p99": 1000 * percentile(latency, 99),
        "wrong": wrong,
        "settle": rounds,
        "wall": built,
        "events": c.clock.calls_run,
    }


def run() -> str:
    rows = [measure(n) for n in SIZES]
    lines = [
        "## Overlay lookups in simulation",
        "",
        f"{LOOKUPS} lookups of random keys from random nodes after the ring settled; "
        "latency in simulated milliseconds (links 5-50 ms one way).",
        "",
        "| N | hops mean | hops p99 | 0.5 log2 N + 1 | latency mean ms | latency p99 ms | wrong | build (wall s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['hops_mean']:.2f} | {r['hops_p99']:g} | {0.5 * math.log2(r['n']) + 1:.2f} | "
            f"{r['lat_mean']:.0f} | {r['lat_p99']:.0f} | {r['wrong']} | {r['wall']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
