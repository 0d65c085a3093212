"""watch(key) on the simulated ring: pushes, renewal after failure and join, expiry."""

from __future__ import annotations

from sosimple_proxy.overlay.node import NodeConfig
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.watch import decode_watch, decode_watch_notify, encode_watch, encode_watch_notify
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.testing.ring import sim_ring


def _record(c, key, value, entry="", ttl=1e6, kind="blob"):
    return Record(key, kind, entry, "w", value, c.clock.seconds() + ttl, int(c.clock.seconds() * 1e6) + 1)


def _watcher(c, key):
    """A joined node outside the key's replica set, and what it was told."""
    holders = set(c.true_replica_set(key))
    node = next(n for n in c.joined() if n.id not in holders)
    seen: list[list[bytes]] = []
    node.watch(key, lambda k, records: seen.append(sorted(r.value for r in records)))
    return node, seen


def _writer(c, key, watcher):
    holders = set(c.true_replica_set(key))
    return next(n for n in c.joined() if n.id not in holders and n is not watcher)


def test_a_change_is_pushed_within_a_fraction_of_a_round():
    c = sim_ring(12, 3, NodeConfig(stabilize_interval=1.0, replicas=2))
    key = c.random_key()
    watcher, seen = _watcher(c, key)
    c.run(1)
    assert seen == [[]]  # the first answer: nothing there yet
    writer = _writer(c, key, watcher)
    c.wait(writer.put(_record(c, key, b"one")))
    c.run(0.3)  # the push, not the next round's renewal
    assert seen[-1] == [b"one"]
    # a removal is a change too
    c.wait(writer.remove(key, "blob"))
    c.run(0.3)
    assert seen[-1] == []
    assert watcher.watches.pushes_received > 0


def test_the_watch_survives_the_failure_of_the_responsible_node():
    # No replicas: only the successor holds the key, so the watcher must
    # find the new successor itself (one round) to hear of the next write.
    c = sim_ring(12, 5, NodeConfig(stabilize_interval=1.0, replicas=0, successors=4))
    key = c.random_key()
    watcher, seen = _watcher(c, key)
    c.run(1)
    responsible = c.by_id()[c.true_successor(key)]
    c.kill(responsible)
    c.settle()
    writer = _writer(c, key, watcher)
    c.wait(writer.put(_record(c, key, b"after")))
    c.run(1.5)  # at most one round (plus the lookup) later
    assert seen[-1] == [b"after"]
    new = c.by_id()[c.true_successor(key)]
    assert watcher.address in new.watches.held.get(key, {})


def test_the_watch_follows_a_newcomer_that_takes_the_key():
    c = sim_ring(8, 7, NodeConfig(stabilize_interval=1.0, replicas=0, successors=4))
    key = c.random_key()
    watcher, seen = _watcher(c, key)
    c.run(1)
    # a node placed just before the key's successor... at the key itself
    newcomer = c.add_node(node_id=key)
    c.settle(until=lambda: newcomer.joined)
    assert c.true_successor(key) == key
    writer = _writer(c, key, watcher)
    c.wait(writer.put(_record(c, key, b"newcomer")))
    c.run(1.5)
    assert seen[-1] == [b"newcomer"]


def test_expiry_is_reported():
    c = sim_ring(6, 2, NodeConfig(stabilize_interval=1.0))
    key = c.random_key()
    watcher, seen = _watcher(c, key)
    writer = _writer(c, key, watcher)
    c.wait(writer.put(_record(c, key, b"short", ttl=3.0)))
    c.run(0.5)
    assert seen[-1] == [b"short"]
    c.run(3)
    assert seen[-1] == []


def test_duplicates_from_several_holders_are_one_callback():
    c = sim_ring(10, 4, NodeConfig(stabilize_interval=1.0, replicas=2))
    key = c.random_key()
    watcher, seen = _watcher(c, key)
    c.run(1)
    writer = _writer(c, key, watcher)
    c.wait(writer.put(_record(c, key, b"x")))
    c.run(3)  # three holders pushed, rounds renewed: one change
    assert seen == [[], [b"x"]]


def test_a_cancelled_watch_hears_nothing_and_holders_forget_it():
    c = sim_ring(6, 9, NodeConfig(stabilize_interval=1.0))
    key = c.random_key()
    watcher, seen = _watcher(c, key)
    c.run(1)
    handle = watcher.watches.watched[key].callbacks[0]
    handle.cancel()
    writer = _writer(c, key, watcher)
    c.wait(writer.put(_record(c, key, b"y")))
    c.run(5)
    assert seen == [[]]
    assert not any(watcher.address in n.watches.held.get(key, {}) for n in c.joined())


def test_watch_bodies_round_trip():
    p = Peer(5, "127.0.0.1:7000")
    assert decode_watch(encode_watch(1 << 150, p, 15.0)) == (1 << 150, p, 15.0)
    r = Record(7, "blob", "", "w", b"v", 100.0, 3)
    assert decode_watch_notify(encode_watch_notify(7, [r])) == (7, (r,))


def test_watches_of_many_keys_survive_a_fifth_of_the_ring_dying_at_once(figures):
    c = sim_ring(100, 13, NodeConfig(stabilize_interval=1.0, replicas=2))
    keys = [c.random_key() for _ in range(20)]
    seen: dict[int, list[bytes]] = {}
    watchers = []
    for key in keys:
        holders = set(c.true_replica_set(key))
        w = c.rng.choice([n for n in c.joined() if n.id not in holders])
        watchers.append(w)
        w.watch(key, lambda k, records: seen.__setitem__(k, [r.value for r in records]))
    c.run(2)
    spared = {w.address for w in watchers}
    victims = c.rng.sample([n for n in c.joined() if n.address not in spared], 20)
    for v in victims:
        c.kill(v)
    writer = next(n for n in c.joined() if n.address not in spared)
    results = c.gather([writer.put(_record(c, key, b"after-%d" % i)) for i, key in enumerate(keys)], rounds=30)
    assert all(ok for ok, _ in results)
    written = c.clock.seconds()
    c.run(2)  # the push, or at the latest the next round's renewal at the new holders
    late = [i for i, key in enumerate(keys) if seen.get(key) != [b"after-%d" % i]]
    figures(f"20 watched keys, 20 of 100 nodes killed at once: {20 - len(late)}/20 watchers had the write "
            f"within {c.clock.seconds() - written:.1f} s of its completion")
    assert not late
