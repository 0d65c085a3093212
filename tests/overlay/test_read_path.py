"""Issue 12 (speed): the calls a read and a write cost.

A read's fetch from the key's candidate successor is also the lookup's
last step: an authoritative answer says what the verifying ``find`` would
(the key is in the node's range, and it has synced that range).  A
``put_value`` writes to the holders its read found, with no second lookup.
Whatever cannot be vouched for that way falls back to the verified lookup.

The calls are counted on the simulated network (every call a node makes
goes through ``SimNetwork.call``).
"""

from __future__ import annotations

from typing import Any

from sosimple_proxy.overlay import quorum
from sosimple_proxy.overlay.tuning import NodeConfig
from sosimple_proxy.testing.ring import run_until_answered, sim_ring


def config(**kw: Any) -> NodeConfig:
    # no read repair, syncs only on changes: a settled ring makes no calls of its own but rounds
    return NodeConfig(stabilize_interval=1.0, sync_every=10_000, **kw)


def counted(cluster, node, action) -> tuple[Any, list[tuple[str, Any]]]:
    """Run ``action()`` to its answer; the (method, destination) of every
    call ``node`` made meanwhile that is not a maintenance round's."""
    seen: list[tuple[str, Any]] = []
    net = cluster.net
    real = net.call

    def spy(src, dst, method, args):
        if src == node.address and method not in ("state", "notify", "fingers", "successor_hint", "sync"):
            seen.append((method, dst))
        return real(src, dst, method, args)

    net.call = spy
    try:
        result = run_until_answered(cluster, action())
    finally:
        del net.call
    return result, seen


def holders_of(cluster, key):
    nodes = cluster.by_id()
    return [nodes[i] for i in cluster.true_replica_set(key)]


def outsider(cluster, key):
    """A node that holds no copy of ``key`` (so every read of it is remote)."""
    held = {n.address for n in holders_of(cluster, key)}
    return next(n for n in cluster.joined() if n.address not in held)


def test_a_read_asks_the_successor_once_and_its_fetch_verifies_it():
    cluster = sim_ring(8, 31, config(), settle_rounds=3)
    rec = cluster.make_record(value=b"x")
    assert run_until_answered(cluster, cluster.joined()[0].put(rec)) == 3
    holders = holders_of(cluster, rec.key)
    reader = outsider(cluster, rec.key)
    got, calls = counted(cluster, reader, lambda: reader.get(rec.key))
    assert got == [rec]
    # the reader's tables know the key's successor; before, a verifying
    # find went to it first, then the fetches (as many holders as a read
    # quorum, quorum.reads)
    reads = quorum.reads(cluster.config.write_quorum, cluster.config.replicas)
    assert calls == [("fetch", h.address) for h in holders[:reads]]


def test_put_value_writes_to_the_holders_its_read_found():
    cluster = sim_ring(8, 32, config(), settle_rounds=3)
    key = cluster.random_key()
    holders = holders_of(cluster, key)
    writer = outsider(cluster, key)
    record, calls = counted(cluster, writer, lambda: writer.put_value(key, "blob", b"v1", 3600))
    assert record.value == b"v1"
    # the fetches of a read (the first one its verification too), then a store at each holder: no find
    reads = quorum.reads(cluster.config.write_quorum, cluster.config.replicas)
    assert calls[:reads] == [("fetch", h.address) for h in holders[:reads]]
    assert sorted(calls[reads:], key=str) == sorted((("store", h.address) for h in holders), key=str)
    assert all(h.store.entry(record.entry_id) == record for h in holders)


def test_a_candidate_that_cannot_vouch_is_verified_by_the_lookup():
    cluster = sim_ring(8, 33, config(), settle_rounds=3)
    rec = cluster.make_record(value=b"y")
    run_until_answered(cluster, cluster.joined()[0].put(rec))
    primary = holders_of(cluster, rec.key)[0]
    primary.replication._covered_from = None  # as right after its range grew: it has not synced it yet
    reader = outsider(cluster, rec.key)
    got, calls = counted(cluster, reader, lambda: reader.get(rec.key))
    assert got == [rec]
    methods = [m for m, _ in calls]
    assert methods[0] == "fetch" and "find" in methods  # not authoritative: the verified lookup, as before


def test_a_successor_list_too_short_to_name_the_holders_is_completed_by_the_lookup():
    # three successors, two replicas: for a key at the end of its list a
    # node's own tables name fewer than the three holders
    cluster = sim_ring(8, 34, config(successors=3, replicas=2), settle_rounds=3)
    ring = cluster.ring()
    nodes = cluster.by_id()
    writer = nodes[ring[0]]
    key = ring[3]  # the writer's third successor holds it, the two after it the copies
    holders = holders_of(cluster, key)
    record, calls = counted(cluster, writer, lambda: writer.put_value(key, "blob", b"v", 3600))
    assert ("find", holders[0].address) in calls
    assert all(h.store.entry(record.entry_id) == record for h in holders)


def test_a_miss_nobody_can_vouch_for_yet_waits_for_the_holders_sync():
    """Right after a ring formed (CI saw it: a put's read 503'd "no holder
    could vouch for a miss yet") the holders have not synced their ranges:
    the read asks again an RPC timeout later instead of failing at once."""
    cluster = sim_ring(8, 35, config(), settle_rounds=3)
    key = cluster.random_key()
    holders = holders_of(cluster, key)
    saved = [h.replication._covered_from for h in holders]
    for h in holders:
        h.replication._covered_from = None  # none has synced its range

    def synced() -> None:
        for h, lo in zip(holders, saved):
            h.replication._covered_from = lo

    cluster.clock.callLater(cluster.config.rpc_timeout * 1.5, synced)
    reader = outsider(cluster, key)
    got, calls = counted(cluster, reader, lambda: reader.get(key))
    assert got == []  # a real miss, once a holder could vouch for it
    assert [m for m, _ in calls].count("fetch") > len(holders)  # asked again


def test_a_miss_nobody_ever_vouches_for_fails_after_the_retries():
    from sosimple_proxy.overlay.errors import NotVouched
    from sosimple_proxy.overlay.replication import Replicator

    cluster = sim_ring(8, 36, config(), settle_rounds=3)
    key = cluster.random_key()
    for h in holders_of(cluster, key):
        h.replication._covered_from = None
    reader = outsider(cluster, key)
    started = cluster.clock.seconds()
    failure = run_until_answered(cluster, reader.get(key), rounds=40)
    assert failure.check(NotVouched), failure
    waited = cluster.clock.seconds() - started
    assert waited >= Replicator.UNVOUCHED_RETRIES * cluster.config.rpc_timeout
