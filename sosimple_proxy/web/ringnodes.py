"""``GET /ring/nodes``: every node this node knows, for drawing the ring.

``/ring`` lists this node's tables as they are (predecessor, successors,
fingers), with the same node appearing in several of them.  A picture needs
the other cut: each known node once, what it is to us (its roles), where
the key range it owns starts when our tables tell us, and its record counts
when we have them.  The page cannot ask the other nodes itself (their admin
listeners are other origins, often not reachable at all), so this node
answers from its own tables through the ``ChordNode`` facade only:

- the successor list is consecutive on the ring, so each successor's range
  starts at the node before it in the list (the first one's at us), and ours
  at our predecessor;
- a successor list shorter than its capacity holds the whole ring
  (``complete``), and then every node's range is known;
- the range of a node known only as a finger is not known (``null``);
- record counts are this node's own; the overlay has no RPC that asks
  another node for its counts, so for the others they are ``null``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from sosimple_proxy import __version__
from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.node import ChordNode

#: the roles a node can have in this node's tables, in the order they are listed
ROLES = ("self", "predecessor", "successor", "finger")


class NodeStatus:
    """What the page shows about the process rather than the ring: the
    version and how long the node has run (on the given clock, so a test
    can move it): since :meth:`start`, which the admin service calls when
    the node starts, or since it was made."""

    def __init__(self, clock: IReactorTime, version: str = __version__) -> None:
        self.clock = clock
        self.version = version
        self.started = clock.seconds()

    def start(self) -> None:
        self.started = self.clock.seconds()

    def uptime(self) -> float:
        return max(0.0, self.clock.seconds() - self.started)


def ring_nodes(node: ChordNode, status: NodeStatus | None = None) -> dict[str, Any]:
    """The ``GET /ring/nodes`` body (shape in ``shared/site-ini.md``)."""
    m = node.config.m
    fmt = lambda i: ids.format_id(i, m)  # noqa: E731
    roles: dict[Any, list[str]] = {node.address: ["self"]}
    peers: dict[Any, Peer] = {node.address: node.peer}
    range_from: dict[Any, int | None] = {}

    def add(peer: Peer, role: str) -> None:
        peers.setdefault(peer.address, peer)
        have = roles.setdefault(peer.address, [])
        if role not in have:
            have.append(role)

    pred = node.predecessor
    if pred is not None:
        add(pred, "predecessor")
        range_from[node.address] = pred.id
    successors = list(node.successors)
    previous = node.peer
    for s in successors:
        add(s, "successor")
        range_from.setdefault(s.address, previous.id)
        previous = s
    for f in node.finger_peers():
        add(f, "finger")
    complete = len(successors) < node.config.successors
    if not successors:
        # alone: we own the whole ring
        range_from[node.address] = node.id
        complete = True

    primary, replica = node.counts()
    nodes = []
    for address, peer in sorted(peers.items(), key=lambda kv: kv[1].id):
        mine = address == node.address
        start = range_from.get(address)
        nodes.append(
            {
                "id": fmt(peer.id),
                "address": str(address),
                "roles": sorted(roles[address], key=ROLES.index),
                "range_from": fmt(start) if start is not None else None,
                "records": primary + replica if mine else None,
                "primary": primary if mine else None,
                "replica": replica if mine else None,
            }
        )
    body: dict[str, Any] = {
        "id": fmt(node.id),
        "address": str(node.address),
        "m": m,
        "complete": complete,
        "nodes": nodes,
    }
    if status is not None:
        body["version"] = status.version
        body["uptime"] = round(status.uptime(), 1)
    return body
