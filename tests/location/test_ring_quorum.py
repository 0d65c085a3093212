"""RingPublisher.settled (issue 15): what the REGISTER answer waits for, over
real Chord nodes on the simulated network."""

from __future__ import annotations

from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.location.ring import RingPublisher
from sosimple_proxy.overlay.tuning import NodeConfig
from sosimple_proxy.testing.ring import run_until_answered, sim_ring
from tests.location.test_ring import Member


def binding(contact: str, now: float) -> Binding:
    return Binding("alice@example.com", contact, now + 600, "cid", 1)


def test_settled_fires_true_once_a_quorum_holds_the_write():
    cluster = sim_ring(5, 11, NodeConfig(stabilize_interval=1.0))
    node = list(cluster.joined())[0]
    table = BindingTable(cluster.clock)
    publisher = RingPublisher(Member(node, cluster.config.m), table, lambda b: None, cluster.clock)
    assert publisher.settled("alice@example.com") is None  # nothing under way
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1", cluster.clock.seconds())])
    first = publisher.settled("alice@example.com")
    # a newer write before the first is done: both waiters hear of the newest
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.2", cluster.clock.seconds())])
    second = publisher.settled("alice@example.com")
    assert run_until_answered(cluster, first) is True
    assert run_until_answered(cluster, second) is True
    assert publisher.settled("alice@example.com") is None
    key = Member(node, cluster.config.m).keys.key("alice@example.com")
    holding = [n for n in cluster.live() if any(r.key == key and not r.deleted for r in n.store.records())]
    assert len(holding) >= 2


def test_settled_fires_false_when_no_quorum_could_be_had():
    cluster = sim_ring(2, 11, NodeConfig(stabilize_interval=1.0))
    a, b = cluster.joined()
    table = BindingTable(cluster.clock)
    publisher = RingPublisher(Member(a, cluster.config.m), table, lambda b: None, cluster.clock, retries=0)

    def disk_full(records):
        raise OSError("disk full")

    # b answers lookups but its store refuses every write (a full disk):
    # our own copy is the only one, one crash from being lost
    b.replication.store.put_many = disk_full
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1", cluster.clock.seconds())])
    assert run_until_answered(cluster, publisher.settled("alice@example.com")) is False
