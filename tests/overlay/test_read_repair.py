"""Read repair (issue 15): a read that meets copies of different versions
gives the newest to the stale ones, long before the next periodic sync."""

from __future__ import annotations

import attrs
import pytest

from sosimple_proxy.overlay.repair import newest, stale
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.tuning import NodeConfig
from sosimple_proxy.testing.ring import run_until_answered, sim_ring


def config(read_repair: bool) -> NodeConfig:
    # syncs only on changes (none in a settled ring): only a read can repair
    return NodeConfig(stabilize_interval=1.0, sync_every=10_000, read_repair=read_repair)


def holders_of(cluster, key):
    nodes = cluster.by_id()
    return [nodes[i] for i in cluster.true_replica_set(key)]


def version(node, record):
    held = node.store.entry(record.entry_id)
    return None if held is None else (held.seq, held.deleted)


def test_newest_and_stale_pick_the_winner_per_entry():
    a1 = Record(1, "registration", "a", "w", b"1", 100.0, 1)
    a2 = attrs.evolve(a1, value=b"2", seq=2)
    b1 = Record(1, "registration", "b", "w", b"x", 100.0, 5)
    best = newest([[a1, b1], [a2]], now=0.0)
    assert best == {a1.entry_id: a2, b1.entry_id: b1}
    assert stale([a1, b1], best) == [a2]
    assert stale([a2], best) == [b1]
    assert stale([a2, b1], best) == []
    assert newest([[a1]], now=200.0) == {}  # expired: nothing to spread


@pytest.mark.parametrize("read_repair", [True, False])
def test_a_read_repairs_the_copies_that_missed_a_write(read_repair):
    cluster = sim_ring(8, 21, config(read_repair), settle_rounds=3)
    nodes = list(cluster.joined())
    old = cluster.make_record(seq=1, value=b"old")
    assert run_until_answered(cluster, nodes[0].put(old)) == 3
    primary, r1, r2 = holders_of(cluster, old.key)
    # a newer version reached the primary and one replica only
    new = attrs.evolve(old, value=b"new", seq=2)
    primary.store.put_many([new])
    r1.store.put_many([new])
    assert version(r2, old) == (1, False)
    reader = next(n for n in nodes if n not in (primary, r1, r2))
    got = run_until_answered(cluster, reader.get(old.key))
    assert got == [new]  # the primary vouches for its range
    cluster.run(2)
    if read_repair:
        assert [version(n, old) for n in (primary, r1, r2)] == [(2, False)] * 3
        assert reader.replication.repair.repaired == 1
    else:
        assert version(r2, old) == (1, False)  # still stale: nothing repairs it this soon


def test_a_removal_only_the_primary_saw_reaches_the_replicas_through_a_read():
    cluster = sim_ring(8, 22, config(True), settle_rounds=3)
    nodes = list(cluster.joined())
    rec = cluster.make_record(seq=1)
    run_until_answered(cluster, nodes[0].put(rec))
    primary, r1, r2 = holders_of(cluster, rec.key)
    primary.store.put_many([rec.tombstone(seq=7)])
    assert run_until_answered(cluster, nodes[1].get(rec.key)) == []
    cluster.run(2)
    assert [version(n, rec) for n in (primary, r1, r2)] == [(7, True)] * 3
