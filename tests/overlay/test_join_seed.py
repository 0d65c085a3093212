"""A node started before its bootstrap peers, that they joined through while
it waited, must still join the ring they formed (seen in the lab soak)."""

from sosimple_proxy.overlay.simnet import SimCluster
from sosimple_proxy.overlay.tuning import NodeConfig

M = 32


def test_a_node_whose_bootstraps_came_up_after_it_joins_the_ring_they_formed_through_it():
    c = SimCluster(7, NodeConfig(m=M, stabilize_interval=1.0))
    first = c.add_node([1, 2])  # address 0: its bootstraps do not exist yet
    c.run(3)
    c.add_node([0, 2])
    c.add_node([0, 1])
    for _ in range(7):
        c.add_node([0])
    c.settle(lambda: len(c.joined()) == 10 and c.ring_correct(), max_rounds=60)
    assert first.joined, "the first node never joined"
    assert len(c.joined()) == 10 and c.ring_correct()
