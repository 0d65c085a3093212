"""Memory per registration binding, and per-call CPU against the table size
(issue 12, "memory"): a `make bench` section.

In process (``bench.inproc``: the proxy as twistd builds it, datagrams
handed to its UDP protocol, what it sends captured):

- bytes per binding: ``tracemalloc`` around 100,000 REGISTERs of distinct
  users through the whole stack, after their transactions are gone (the
  layer cleared, a full collection), divided by the bindings held;
- CPU per REGISTER (a refresh of a registered user) and per
  INVITE-ACK-BYE call with 10 bindings and with 100,000 (process time,
  the best of ``ROUNDS`` alternating rounds: the machines are shared), so
  that a scan that grows with the table would show as a ratio above 1.

    python -m bench bindings
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

from bench import inproc

BIG = int(os.environ.get("BINDINGS_BENCH_N", 100_000))
SMALL = 10
CALLS = {"REGISTER": 2000, "INVITE": 400}
ROUNDS = 3


def fill(h: inproc.Harness, n: int) -> None:
    for i in range(n):
        h.register(f"fill{i:06d}")
        if i % 1000 == 999:
            inproc._reactor.runUntilCurrent()


def cpu_per_call(h: inproc.Harness, workload: str, calls: int) -> float:
    tick = inproc._reactor.runUntilCurrent
    if workload == "INVITE":
        h.register("uas", inproc.UAS)
    t0 = time.process_time()
    for i in range(calls):
        if workload == "REGISTER":
            h.register(f"fill{i % SMALL:06d}")  # a refresh: the user is bound in both tables
        else:
            h.invite()
        if i % 50 == 0:
            tick()
    return (time.process_time() - t0) / calls * 1e6


def bytes_per_binding(n: int) -> tuple[float, int]:
    h = inproc.Harness()
    try:
        stack = inproc._find(h.top, "transactions")
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        fill(h, n)
        stack.transactions.clear()  # the REGISTER transactions' 32 s are not the bindings' cost
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return used / n, used
    finally:
        h.stop()


def run() -> str:
    gc.freeze()
    gc.set_threshold(10_000, 10, 1_000)  # as sosimple_proxy.service does
    per, total = bytes_per_binding(BIG)
    small, big = inproc.Harness(), inproc.Harness()
    fill(small, SMALL)
    fill(big, BIG)
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(ROUNDS):
        for name, h, n in (("small", small, SMALL), ("big", big, BIG)):
            for w, calls in CALLS.items():
                results.setdefault((w, n), []).append(cpu_per_call(h, w, calls))
    small.stop()
    big.stop()
    lines = [
        "## Bindings: memory per registration and per-call CPU against the table size",
        "",
        f"In process (`bench.inproc`: the proxy as twistd builds it, datagrams handed to its UDP protocol, no kernel). "
        f"{BIG:,} REGISTERs of distinct users (one Contact each) through the whole stack; `tracemalloc` from before the "
        "first to after the last, once the REGISTER transactions were cleared and a full collection ran: "
        f"**{per:,.0f} bytes per binding** ({total / 1e6:,.1f} MB for {BIG:,}: the binding, the AoR key, the relay "
        "rule's contact index).",
        "",
        f"CPU per call (process time, best of {ROUNDS} alternating rounds) with {SMALL} and with {BIG:,} bindings; "
        "REGISTER is a refresh of a bound user, INVITE an INVITE-ACK-BYE call to a registered UAS:",
        "",
        f"| workload | {SMALL} bindings (us) | {BIG:,} bindings (us) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for w in CALLS:
        a, b = min(results[(w, SMALL)]), min(results[(w, BIG)])
        lines.append(f"| {w} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
