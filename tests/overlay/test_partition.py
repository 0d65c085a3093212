"""A partition heals into one ring (issue 15): the simulated network is cut
in two, each half stabilizes into a ring of its own and keeps serving,
then the cut heals and the rejoin probes (overlay/rejoin.py) merge the two
rings; records written on both sides end at their newest version."""

from __future__ import annotations

import attrs
import pytest

from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.tuning import NodeConfig
from sosimple_proxy.testing.ring import run_until_answered, sim_ring

#: rounds the merged ring may take to be right again after the heal
HEAL_ROUNDS = 40


def ring_right(nodes) -> bool:
    """The nodes form a ring of their own: true successor and predecessor each."""
    order = sorted(nodes, key=lambda n: n.id)
    for i, n in enumerate(order):
        succ, pred = order[(i + 1) % len(order)], order[i - 1]
        if not n.successors or n.successors[0].address != succ.address:
            return False
        if n.predecessor is None or n.predecessor.address != pred.address:
            return False
    return True


def rounds_until(cluster, check, limit: int) -> int:
    for r in range(limit + 1):
        if check():
            return r
        cluster.run(1)
    raise AssertionError(f"not within {limit} rounds")


def put(cluster, node, record: Record) -> None:
    got = run_until_answered(cluster, node.put(record))
    assert isinstance(got, int), got


@pytest.mark.parametrize("seed, cut_rounds", [(1, 20), (2, 60), (3, 120)])
def test_two_rings_made_by_a_partition_merge_after_it_heals(seed, cut_rounds, figures):
    cluster = sim_ring(24, seed, NodeConfig(stabilize_interval=1.0), settle_rounds=5)
    nodes = list(cluster.joined())
    rng = cluster.rng
    side_a = set(rng.sample([n.address for n in nodes], len(nodes) // 2))
    a = [n for n in nodes if n.address in side_a]
    b = [n for n in nodes if n.address not in side_a]
    before = [cluster.make_record(seq=1, value=b"before") for _ in range(30)]
    for r in before:
        put(cluster, nodes[0], r)

    cluster.net.partition(side_a)
    split = rounds_until(cluster, lambda: ring_right(a) and ring_right(b), 60)
    # each half serves on its own: writes there succeed
    only_a = [attrs.evolve(r, value=b"a", seq=2) for r in before[:10]]
    only_b = [attrs.evolve(r, value=b"b", seq=2) for r in before[10:20]]
    # both sides wrote the same entry; the later write (higher seq) must win
    both = [(attrs.evolve(r, value=b"a-old", seq=3), attrs.evolve(r, value=b"b-new", seq=4)) for r in before[20:]]
    fresh_a = [cluster.make_record(seq=1, value=b"new-a") for _ in range(5)]
    fresh_b = [cluster.make_record(seq=1, value=b"new-b") for _ in range(5)]
    for r in only_a + [x for x, _ in both] + fresh_a:
        put(cluster, rng.choice(a), r)
    for r in only_b + [y for _, y in both] + fresh_b:
        put(cluster, rng.choice(b), r)
    cluster.run(cut_rounds)  # a long partition: each side forgets the other
    assert ring_right(a) and ring_right(b)

    cluster.net.heal()
    healed = rounds_until(cluster, lambda: ring_right(nodes), HEAL_ROUNDS)
    merges = sum(n.rejoin.merges for n in nodes)
    want = only_a + only_b + [y for _, y in both] + fresh_a + fresh_b

    def all_newest() -> bool:
        return all(cluster.copies_in_place(r) == 3 for r in want)

    converged = rounds_until(cluster, all_newest, 40)
    for r in want:
        reader = rng.choice(nodes)
        got = run_until_answered(cluster, reader.get(r.key))
        assert got == [r], (r, got)
    figures(
        f"seed={seed}: 24 nodes cut 12/12 for {cut_rounds} rounds: two rings after {split} rounds; healed into one ring "
        f"{healed} rounds after the cut healed ({merges} merge steps), every copy at its newest version "
        f"{healed + converged} rounds after"
    )


def test_without_rejoin_the_two_rings_stay_apart():
    """The test above is about the probes: with none, nothing joins the rings."""
    cluster = sim_ring(16, 4, NodeConfig(stabilize_interval=1.0), settle_rounds=5)
    nodes = list(cluster.joined())
    for n in nodes:
        n.rejoin.each_round = lambda rounds: None
    side_a = {n.address for n in nodes[:8]}
    cluster.net.partition(side_a)
    a = [n for n in nodes if n.address in side_a]
    b = [n for n in nodes if n.address not in side_a]
    rounds_until(cluster, lambda: ring_right(a) and ring_right(b), 60)
    cluster.run(20)
    cluster.net.heal()
    cluster.run(HEAL_ROUNDS)
    assert not ring_right(nodes)


def test_a_dead_member_is_remembered_and_probed_ever_less_often_but_within_the_bound():
    from sosimple_proxy.overlay import rejoin

    cluster = sim_ring(6, 5, NodeConfig(stabilize_interval=1.0), settle_rounds=3)
    nodes = sorted(cluster.joined(), key=lambda n: n.id)
    dead = nodes[3]
    cluster.kill(dead)
    cluster.run(3)
    pred = nodes[2]
    assert dead.address in pred.rejoin.lost()
    probes = []
    original = pred.rejoin._probe

    def counted(entry):
        if entry.address == dead.address:
            probes.append(pred.rejoin.rounds)
        return original(entry)

    pred.rejoin._probe = counted
    cluster.run(80)
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert len(probes) >= 5 and gaps == sorted(gaps)  # backing off...
    assert max(gaps) <= rejoin.MAX_BACKOFF + 1  # ...up to a bound
    assert dead.address in pred.rejoin.lost()  # never given up on
