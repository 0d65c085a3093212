"""The simulated network: latency, loss, crashes, and determinism by seed."""

from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.node import NodeConfig
from sosimple_proxy.overlay.simclock import SimClock
from sosimple_proxy.overlay.simnet import SimCluster, SimNetwork, percentile
from sosimple_proxy.testing.ring import sim_ring


class Echo:
    def __init__(self):
        self.seen = []

    def remote_state(self):
        self.seen.append("state")
        return "here"

    def remote_notify(self, peer):
        raise ValueError("refused")


def test_latency_loss_and_crashes():
    clock = SimClock()
    net = SimNetwork(clock, seed=1)
    a, b = Echo(), Echo()
    net.add("a", a)
    net.add("b", b)
    net.set_link("a", "b", latency=0.25)
    answers = []
    net.rpc("a").state("b").addCallback(answers.append)
    clock.advance(0.49)
    assert answers == [] and b.seen == ["state"]
    clock.advance(0.01)
    assert answers == ["here"]
    # a handler's exception comes back as a failure
    failures = []
    net.rpc("a").notify("b", Peer(1, "a")).addErrback(failures.append)
    clock.advance(1)
    assert failures and failures[0].check(ValueError)
    # a lossy link, a dead node, an unknown address: never answered
    net.set_link("a", "b", loss=1.0)
    lost = net.rpc("a").state("b")
    net.set_link("a", "b", loss=0.0)
    net.kill("b")
    dead = net.rpc("a").state("b")
    nowhere = net.rpc("a").state("zz")
    clock.advance(10)
    assert not lost.called and not dead.called and not nowhere.called
    assert net.lost == 1


def run(seed):
    c = sim_ring(30, seed, NodeConfig(m=32, stabilize_interval=1.0), per_round=10)
    nodes = c.joined()
    results = c.gather([c.rng.choice(nodes).lookup(c.random_key()) for _ in range(50)])
    return [r.hops for ok, r in results], sorted(n.id for n in nodes), c.clock.calls_run


def test_the_same_seed_gives_the_same_run():
    assert run(7) == run(7)
    assert run(7)[1] != run(8)[1]


def test_a_lossy_network_still_forms_a_ring_and_answers():
    c = SimCluster(3, NodeConfig(m=32, stabilize_interval=1.0), loss=0.01)
    c.grow(20, per_round=5)
    c.settle(max_rounds=50, lists=False)
    nodes = c.joined()
    keys = [c.random_key() for _ in range(100)]
    results = c.gather([c.rng.choice(nodes).lookup(k) for k in keys])
    right = sum(1 for (ok, r), k in zip(results, keys) if ok and r.responsible.id == c.true_successor(k))
    assert c.net.lost > 0
    # A node takes a peer for gone at its first missed answer, so loss
    # costs some lookups until stabilization brings the peer back.
    assert right >= 90


def test_percentile():
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5], 99) == 5
