"""``make soak``: the lab's scenarios and a soak, with their figures.

usage: python -m tests.lab [--soak-seconds 600] [--users 10000] [--partition-seconds 60] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from tests.lab import scenarios
from tests.lab.netlab import Lab, lab_unavailable, wait_for

NAMES = ("kill-replicas", "kill-30", "disk-full", "partition", "rolling", "floods", "soak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--scenario-users", type=int, default=1000, help="users registered for the fault scenarios")
    ap.add_argument("--soak-seconds", type=float, default=600)
    ap.add_argument("--churn-mean", type=float, default=60, help="mean seconds between node kills in the soak")
    ap.add_argument("--partition-seconds", type=float, default=60)
    ap.add_argument("--flood-seconds", type=float, default=10)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--only", action="append", choices=NAMES)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    why = lab_unavailable()
    if why:
        print(f"lab: skipped: {why}")
        return 0
    run = set(args.only or NAMES)
    rng = random.Random(args.seed)
    results: dict[str, object] = {}
    t0 = time.monotonic()
    lab = Lab(args.nodes, seed=args.seed, overlay={"replicas": args.replicas},
              extra={"limits": {"kernel_bans": "yes"}})  # floods: banned sources dropped by nft

    def abort(signum: int, frame: object) -> None:
        # Ctrl-C or a kill: worker threads may hold the main thread in a
        # wait, so tear the lab down here (processes, namespaces, mounts).
        print(f"[lab] signal {signum}: removing the lab", flush=True)
        lab.down()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, abort)
    signal.signal(signal.SIGTERM, abort)
    lab.up(start=False)
    try:
        disk_node = args.nodes - 1
        if "disk-full" in run:
            lab.small_disk(disk_node)
        lab.start_nodes()
        print(lab.describe())
        ring, took = wait_for(lab.one_ring, 60)
        print(f"[lab] up in {time.monotonic() - t0:.1f} s; one ring: {ring} after {took:.1f} s"
              f" (rings of {[len(r) for r in lab.rings()]}, {len(lab.ring_views())} nodes answering)")
        world = scenarios.World(lab, args.scenario_users, seed=args.seed)
        try:
            ok, failed = world.register_all()
            print(f"[lab] {ok} users registered ({failed} failed); settled: {world.settled(timeout=60)}")
            if "kill-replicas" in run:
                results["kill-replicas"] = scenarios.kill_nodes(world, args.replicas, "kill replicas", rng)
            if "kill-30" in run:
                results["kill-30"] = scenarios.kill_nodes(world, max(1, round(args.nodes * 0.3)), "kill 30 %", rng)
            if "disk-full" in run:
                more = [f"u{i}" for i in range(args.scenario_users, args.scenario_users + 200)]
                world.users += more
                results["disk-full"] = scenarios.disk_full(world, disk_node, rng, more)
                # the soak's store outgrows the 4 MiB tmpfs (SQLite's WAL alone
                # reaches 4 MiB): the node goes on with an ordinary disk
                try:
                    _off_small_disk(lab, disk_node)
                except Exception as e:  # the other scenarios can run on the small disk
                    print(f"[lab] could not move node {disk_node} off its small disk: {e!r}", flush=True)
            if "partition" in run:
                results["partition"] = scenarios.partition(world, args.partition_seconds, rng)
                if not lab.one_ring():
                    print("[lab] the ring stayed split: restarting every node so the next scenarios start from one ring")
                    for n in lab.nodes:
                        n.restart()
                    world.settled(timeout=90)
            if "rolling" in run:
                results["rolling"] = scenarios.rolling_restart(world, rng)
            if "floods" in run:
                results["floods"] = scenarios.floods(world, rng, args.flood_seconds)
        finally:
            world.close()
        if "soak" in run:
            world = scenarios.World(lab, args.users, seed=args.seed + 1)
            try:
                figures = scenarios.soak(world, args.soak_seconds, rng, args.churn_mean)
                figures["memory_not_levelled"] = scenarios.memory_levelled(figures["memory_samples"])
                print(f"[lab] soak: nodes whose memory did not level off: {figures['memory_not_levelled']}", flush=True)
                results["soak"] = figures
            finally:
                world.close()
    finally:
        lab.down()
    print(f"[lab] done in {time.monotonic() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


def _off_small_disk(lab: Lab, i: int) -> None:
    """Stop node ``i``, move its state off its small tmpfs, start it again."""
    node = lab.nodes[i]
    state = lab.dir / f"n{i}" / "overlay"
    node.stop()
    keep = state.with_name("overlay.keep")
    shutil.copytree(state, keep, ignore=shutil.ignore_patterns("filler*"))
    subprocess.run(["umount", "-l", str(state)], check=True)
    lab.mounts.remove(state)
    shutil.rmtree(state, ignore_errors=True)
    keep.rename(state)
    node.process = None
    node.start()


if __name__ == "__main__":
    sys.exit(main())
