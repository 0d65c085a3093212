"""The Chord node on a small simulated ring: joins, records, leaves, failures."""

import pytest

from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.interfaces import IOverlayPeer, IOverlayRPC
from sosimple_proxy.overlay.node import ChordNode, LookupFailed, NodeConfig, StoreFailed
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.simnet import SimCluster
from sosimple_proxy.overlay.store import MemoryRecordStore
from sosimple_proxy.testing.ring import sim_ring

M = 16


def cluster(n=8, seed=1, **kw):
    cfg = NodeConfig(m=M, stabilize_interval=1.0, successors=kw.pop("successors", 4), replicas=kw.pop("replicas", 2), **kw)
    return sim_ring(n, seed, cfg, per_round=4)


def test_interfaces_and_config_defaults():
    c = cluster(2)
    n = c.joined()[0]
    assert IOverlayPeer.providedBy(n)
    assert IOverlayRPC.providedBy(n.rpc)
    cfg = NodeConfig(stabilize_interval=5.0)
    assert cfg.rpc_timeout == 2.0 and cfg.lookup_timeout == 8.0 and cfg.suspect_time == 10.0
    assert NodeConfig(successors=1, replicas=3).successors == 4
    with pytest.raises(ValueError):
        ChordNode(1 << M, 0, n.rpc, c.clock, MemoryRecordStore(c.clock.seconds), NodeConfig(m=M))


def test_a_lone_node_owns_everything():
    c = SimCluster(3, NodeConfig(m=M, stabilize_interval=1.0))
    n = c.add_node([])
    r = c.wait(n.lookup(1234))
    assert r.successors == (n.peer,) and r.hops == 0
    rec = c.make_record(key=99)
    assert c.wait(n.put(rec)) == 1
    assert c.wait(n.get(99)) == [rec]
    assert c.wait(n.get(100)) == []


def test_ring_forms_and_every_lookup_is_right():
    c = cluster(12)
    ring = c.ring()
    for n in c.joined():
        i = ring.index(n.id)
        assert [s.id for s in n.successors] == [ring[(i + j) % len(ring)] for j in range(1, 5)]
        assert n.predecessor.id == ring[i - 1]
    for _ in range(50):
        key = c.random_key()
        node = c.rng.choice(c.joined())
        result = c.wait(node.lookup(key))
        assert result.responsible.id == c.true_successor(key)
        assert [p.id for p in result.successors[:3]] == c.true_replica_set(key)


def test_put_get_replicates_and_merges_dictionary_entries():
    c = cluster(10)
    a, b = c.joined()[:2]
    key = ids.flat_key("alice@example.com", M)
    r1 = Record(key, "registration", "proxy-a|sip:alice@10.0.0.1", "a", b"one", 1e9, 1)
    r2 = Record(key, "registration", "proxy-b|sip:alice@10.0.0.2", "b", b"two", 1e9, 1)
    blob = Record(key, "blob", "", "a", b"blob", 1e9, 5)
    assert c.wait(a.put(r1)) == 3
    assert c.wait(b.put([r2, blob])) == 3
    c.run(2)
    assert c.copies_in_place(r1) == c.copies_in_place(r2) == 3
    for n in c.joined():
        got = c.wait(n.get(key))
        assert got == [blob, r1, r2]
        assert c.wait(n.get(key, "registration")) == [r1, r2]
    # a newer sequence replaces, an older one does not
    c.wait(a.put(Record(key, "blob", "", "a", b"old", 1e9, 4)))
    assert c.wait(b.get(key, "blob"))[0].value == b"blob"
    newer = c.wait(b.put_value(key, "blob", b"newer", ttl=100))
    assert newer.seq > 5
    assert [r.value for r in c.wait(a.get(key, "blob"))] == [b"newer"]


def test_remove_writes_tombstones_that_stale_copies_cannot_undo():
    c = cluster(10)
    a = c.joined()[0]
    rec = c.make_record(key=4242, seq=3)
    c.wait(a.put(rec))
    assert c.wait(a.remove(4242, "blob")) is True
    assert c.wait(a.remove(4242, "blob")) is False
    assert c.wait(a.get(4242)) == []
    # a replica that missed the removal offers its stale copy: it stays removed
    for n in c.joined():
        n.store.put(rec)
    c.run(6)
    assert all(c.wait(n.get(4242)) == [] for n in c.joined())


def test_expired_records_are_gone():
    c = cluster(6)
    a = c.joined()[0]
    c.wait(a.put(c.make_record(key=77, ttl=5)))
    assert len(c.wait(a.get(77))) == 1
    c.run(6)
    assert c.wait(a.get(77)) == []


def test_a_miss_from_the_responsible_node_is_authoritative():
    c = cluster(10)
    a = c.joined()[0]
    key = 31337
    owner = c.by_id()[c.true_successor(key)]
    assert owner.authoritative(key)
    answer = owner.remote_fetch(key, None)
    assert answer.authoritative and answer.records == ()
    assert c.wait(a.get(key)) == []


def test_join_pulls_the_keys_the_newcomer_owns():
    c = cluster(8)
    a = c.joined()[0]
    recs = [c.make_record() for _ in range(60)]
    for r in recs:
        c.wait(a.put(r))
    for _ in range(4):
        c.add_node()
    c.settle(until=lambda: all(n.joined for n in c.live()))
    c.settle(until=lambda: all(c.copies_in_place(r) == 3 for r in recs), max_rounds=5)
    for r in recs:
        owner = c.by_id()[c.true_successor(r.key)]
        assert owner.store.entry(r.entry_id) == r
    newcomers = [n for n in c.joined() if n.address >= 8]
    assert sum(n.counts()[0] for n in newcomers) > 0


def test_graceful_leave_hands_keys_over():
    c = cluster(8, replicas=0, successors=2)
    a = c.joined()[0]
    recs = [c.make_record() for _ in range(40)]
    for r in recs:
        c.wait(a.put(r))
    leaving = max(c.joined()[1:], key=lambda n: n.counts()[0])
    held = leaving.counts()[0]
    assert held > 0
    c.wait(leaving.leave())
    c.kill(leaving)
    c.settle()
    for r in recs:
        assert c.wait(a.get(r.key)) == [r]
    # the leaver keeps its copy, for a restart
    assert leaving.store.count() >= held


def test_failures_are_routed_around_and_repaired():
    c = cluster(16)
    a = c.joined()[0]
    recs = [c.make_record() for _ in range(50)]
    for r in recs:
        c.wait(a.put(r))
    victims = [n for n in c.joined() if n is not a][:2]
    for v in victims:
        c.kill(v)
    # reads work at once, before any repair
    for r in recs:
        assert c.wait(a.get(r.key)) == [r]
    c.settle()
    c.run(3)
    assert all(c.copies_in_place(r) == 3 for r in recs)


def test_the_last_survivor_carries_on_alone():
    c = cluster(4)
    a = c.joined()[0]
    for n in c.joined()[1:]:
        c.kill(n)
    key = ids.add(a.id, 1, M)
    # the first writes find the dead successors and route around them ...
    assert c.wait(a.put(c.make_record(key=key))) >= 1
    c.run(3)
    # ... until the node knows it is alone and owns the whole ring
    assert a.successors == [] and a.responsible_for(key)
    assert len(c.wait(a.get(key))) == 1


def test_joining_waits_for_a_bootstrap_node():
    c = cluster(3)
    lost = c.add_node(bootstrap=[999])  # nobody there
    c.run(5)
    assert not lost.joined
    with pytest.raises(LookupFailed):
        c.wait(lost.lookup(5, via=999))
    late = c.add_node(bootstrap=[999, c.joined()[0].address])
    c.run(2)
    assert late.joined


def test_rejoin_with_a_kept_store_offers_what_it_holds():
    c = cluster(8)
    a = c.joined()[0]
    victim = c.joined()[3]
    rec = Record(ids.add(victim.id, 0, M), "blob", "", "x", b"kept", 1e9, 9)
    c.wait(a.put(rec))
    c.kill(victim)
    # meanwhile a stale version lives on elsewhere; the rejoined node's newer one must win
    c.settle()
    for n in c.joined():
        if n.store.entry(rec.entry_id):
            n.store.put(Record(rec.key, "blob", "", "x", b"stale", 1e9, 1))
    back = ChordNode(victim.id, 1000, c.net.rpc(1000), c.clock, victim.store, c.config)
    c.net.add(1000, back)
    c.nodes[1000] = back
    c.wait(back.start([a.address]))
    c.forget_truth()
    c.settle()
    c.run(3)
    assert [r.value for r in c.wait(a.get(rec.key))] == [b"kept"]


def test_strays_are_handed_to_their_holders():
    c = cluster(12)
    ring = c.ring()
    key = ids.add(ring[0], 1, M)  # owned by ring[1]
    rec = Record(key, "blob", "", "x", b"stray", 1e9, 3)
    far = c.by_id()[ring[7]]  # nowhere near the key's replica set
    far.store.put(rec)
    c.run(9)  # a sweep runs every 2 * sync_every rounds
    assert c.copies_in_place(rec) == 3
    assert c.wait(c.joined()[0].get(key)) == [rec]
