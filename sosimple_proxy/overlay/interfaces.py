"""The two sides of node-to-node talk.

:class:`IOverlayRPC` is what a node calls to reach another (by address;
every method returns a Deferred).  :class:`IOverlayPeer` is what a node
answers; transports (the simulated network, AMP) call it for incoming
requests.  The node itself never does I/O: give it an ``IOverlayRPC`` and
it runs over whatever that one runs over.  Timeouts are the node's own
business (it adds them with its clock), so a transport may leave a call
unanswered forever, as a lost packet would.

The last three are the narrow surfaces between the parts of one node
(:mod:`.routing`, :mod:`.lookup`, :mod:`.replication`, :mod:`.maintenance`,
composed by :mod:`.node`): timed calls to peers, the ring lookup, and what
the routing table tells whoever must react to its changes.
"""

from __future__ import annotations

from typing import Hashable, Sequence

from zope.interface import Interface

from .messages import EntryId, Peer, Version
from .records import Record


class IOverlayRPC(Interface):
    """Calls to another node; each returns a Deferred of the peer's answer."""

    def state(address: Hashable):
        """Deferred[NodeState]: the peer's predecessor and successor list."""

    def find(address: Hashable, key: int):
        """Deferred[FindResult]: one lookup step towards ``key``."""

    def notify(address: Hashable, peer: Peer):
        """Deferred[NodeState]: ``peer`` thinks it is the callee's predecessor.

        The answer is the callee's state after taking that in, so that one
        call per round does stabilize's asking and telling both."""

    def successor_hint(address: Hashable, peer: Peer):
        """Deferred[None]: ``peer`` just joined right after the callee."""

    def store(address: Hashable, records: Sequence[Record]):
        """Deferred[int]: merge records in; how many were new."""

    def fetch(address: Hashable, key: int, kind: str | None):
        """Deferred[FetchResult]: what the callee holds under ``key``."""

    def sync(address: Hashable, lo: int, hi: int, versions: dict[EntryId, Version]):
        """Deferred[SyncResult]: compare holdings of keys in ``(lo, hi]``."""

    def leave(address: Hashable, peer: Peer, predecessor: Peer | None, successors: Sequence[Peer]):
        """Deferred[None]: ``peer`` leaves; here are its neighbours."""

    def fingers(address: Hashable):
        """Deferred[tuple[Peer, ...]]: the distinct nodes of the callee's finger table.

        A newcomer seeds its own fingers from its successor's, which point
        at nearly the same places, instead of a lookup per finger."""

    def prove(address: Hashable, nonce: bytes):
        """Deferred[Proof]: the callee signs our fresh ``nonce`` with its
        node key (an open ring's admission, :mod:`.admission`)."""


class IOverlayPeer(Interface):
    """What a node answers; a value or a Deferred of one."""

    def remote_state():
        """NodeState."""

    def remote_find(key: int):
        """FindResult."""

    def remote_notify(peer: Peer):
        """NodeState."""

    def remote_successor_hint(peer: Peer):
        """None."""

    def remote_store(records: Sequence[Record]):
        """int."""

    def remote_fetch(key: int, kind: str | None):
        """FetchResult."""

    def remote_sync(lo: int, hi: int, versions: dict[EntryId, Version]):
        """SyncResult."""

    def remote_leave(peer: Peer, predecessor: Peer | None, successors: Sequence[Peer]):
        """None."""

    def remote_fingers():
        """tuple[Peer, ...]."""

    def remote_prove(nonce: bytes):
        """Proof; fails with ``NotAdmitted`` without a node key."""


class IPeerCalls(Interface):
    """Calls to other nodes with the node's own timeouts (see :mod:`.calls`).

    ``method`` names an :class:`IOverlayRPC` method; each returns a Deferred
    that fails with ``TimeoutError`` when the answer is overdue.
    """

    def call(address: Hashable, method: str, *args: object):
        """Deferred: a maintenance call, given the whole call timeout."""

    def hop(address: Hashable, method: str, *args: object):
        """Deferred: a lookup or read step, timed out as soon as it is overdue."""


class ILookup(Interface):
    """Finding the nodes responsible for a key (see :mod:`.lookup`)."""

    def lookup(key: int, verify: bool = True, via: Hashable | None = None):
        """Deferred[LookupResult]; fails with ``LookupFailed``."""


class IRoutingListener(Interface):
    """Told by a :class:`.routing.RoutingTable` about changes others act on."""

    def replica_set_changed():
        """The first ``replicas`` successors (where our range's copies live) changed."""

    def predecessor_changed(peer: Peer | None):
        """A predecessor was adopted (or dropped): our range is now ``(peer, us]``."""
