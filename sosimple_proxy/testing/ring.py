"""Rings for tests: a settled simulated ring, a check that real nodes
settled, and a ring of real members under twistd.

Tests of the overlay, of the location providers on it and of the admin API
each need a ring whose nodes already know their neighbours; building one
the same way everywhere keeps the seeds and settling rules in one place.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from twisted.internet.defer import Deferred

from sosimple_proxy.overlay.tuning import NodeConfig
from sosimple_proxy.overlay.simnet import SimCluster
from sosimple_proxy.testing.polling import wait_until
from sosimple_proxy.testing.proxy import PeerProcess

__all__ = ["sim_ring", "run_until_answered", "ring_settled", "overlay_settings", "peer_ring"]


def sim_ring(
    n: int,
    seed: int = 1,
    config: NodeConfig | None = None,
    *,
    per_round: int = 50,
    settle_rounds: int = 0,
    **cluster: Any,
) -> SimCluster:
    """``n`` Chord nodes on the simulated network (deterministic clock, seeded
    randomness), grown ``per_round`` at a time and run until every node has
    its true successor, predecessor and lists.  ``cluster`` goes to
    :class:`SimCluster` (``loss``, ``latency``...)."""
    c = SimCluster(seed, config, **cluster) if config is not None else SimCluster(seed, **cluster)
    c.grow(n, per_round=per_round, settle_rounds=settle_rounds)
    c.settle()
    return c


def run_until_answered(cluster: SimCluster, value: Any, rounds: float = 20) -> Any:
    """Run the simulation until ``value`` (a Deferred, or a plain value) has
    an answer, and return it; a failure is returned, not raised, so a test
    can look at it.  Fails the test if no answer comes within ``rounds``."""
    if not isinstance(value, Deferred):
        return value
    got: list[Any] = []
    value.addBoth(got.append)
    step = cluster.interval / 10
    deadline = cluster.clock.seconds() + rounds * cluster.interval
    while not got and cluster.clock.seconds() < deadline:
        cluster.clock.advance(step)
    assert got, "no answer from the ring"
    return got[0]


def ring_settled(nodes: Iterable[Any]) -> bool:
    """Every node (running ``ChordNode``s, over real sockets or not) has its
    true successor and predecessor and vouches for its own range (has synced
    every key of it, so a miss there is authoritative)."""
    order = sorted(nodes, key=lambda n: n.id)
    if len(order) == 1:
        return bool(order[0].joined)
    for i, n in enumerate(order):
        succ, pred = order[(i + 1) % len(order)], order[i - 1]
        if not n.successors or n.successors[0].address != succ.address:
            return False
        if n.predecessor is None or n.predecessor.address != pred.address or not n.authoritative(n.id):
            return False
    return True


def overlay_settings(state_dir: str, bootstrap: Iterable[tuple[str, int]] = (), **extra: Any) -> dict[str, Any]:
    """An ``[overlay]`` section as ``OverlayService`` takes it, for an
    in-process node: a kernel-chosen loopback port (bound at once, so it
    cannot race), flat keys, state under ``state_dir``, stabilization every
    0.5 s (RPCs time out after half of it: generous for a busy machine).
    ``extra`` overrides any key."""
    settings: dict[str, Any] = {
        "listen": "tcp:0:interface=127.0.0.1",
        "advertise": "",
        "bootstrap": tuple(bootstrap),
        "replicas": 2,
        "successors": 4,
        "stabilize_interval": 0.5,
        "state_dir": state_dir,
        "key_scheme": "flat",
        "domain_bits": 32,
        "home_domain": "",
        "node_id": "",
    }
    settings.update(extra)
    return settings


def peers_settled(peers: Iterable[PeerProcess]) -> bool:
    """``ring_settled`` for members under twistd, read from their ``GET /ring``."""
    import json
    import urllib.request

    views = []
    for p in peers:
        try:
            with urllib.request.urlopen(p.admin_url + "/ring", timeout=2.0) as answer:
                views.append(json.load(answer))
        except (OSError, ValueError):
            return False
    order = sorted(views, key=lambda v: int(v["id"], 16))
    for i, v in enumerate(order):
        succ, pred = order[(i + 1) % len(order)], order[i - 1]
        if not v["successors"] or v["successors"][0]["address"] != succ["address"]:
            return False
        if len(order) > 1 and (v["predecessor"] or {}).get("address") != pred["address"]:
            return False
        if not v["synced"]:
            return False
    return True


@contextmanager
def peer_ring(
    overlay: Mapping[str, object],
    workdir: Path,
    count: int,
    sections: Mapping[str, Mapping[str, object]] | None = None,
    settle: float = 0.0,
) -> Iterator[list[PeerProcess]]:
    """``count`` storage-only ring members under twistd, the first starting
    the ring and the others joining it in parallel (member ``i`` in
    ``workdir/n{i}``); on a failure their log tails are printed, and every
    one is stopped and cleaned up at the end.  ``sections`` adds other
    ``site.ini`` sections (``[auth]``...) to every member's.  ``settle``:
    wait up to that many seconds for every member to know its true
    neighbours and have synced its range (fails the test if not)."""
    started: list[PeerProcess] = []
    extra = {name: dict(keys) for name, keys in (sections or {}).items()}
    try:
        first = PeerProcess(extra or None, overlay=dict(overlay), workdir=workdir / "n0")
        started.append(first)
        first.start()
        rest = [
            PeerProcess(extra or None, bootstrap=[first.overlay_address], overlay=dict(overlay), workdir=workdir / f"n{i}")
            for i in range(1, count)
        ]
        started += rest
        if rest:
            with ThreadPoolExecutor(len(rest)) as pool:
                list(pool.map(lambda p: p.start(), rest))
        if settle:
            wait_until(lambda: peers_settled(started), settle, 0.2, "the members' ring to settle")
        yield started
    except BaseException:
        for p in started:
            print(p.log_tail(15))
        raise
    finally:
        for p in started:
            p.cleanup()
