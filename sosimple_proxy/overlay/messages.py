"""What nodes tell each other: small immutable values, shared safely.

These are the arguments and answers of :class:`.interfaces.IOverlayRPC`;
the simulated network passes them as they are, the AMP wire encodes them.
"""

from __future__ import annotations

from typing import Hashable

import attrs

from .records import EntryId, Record

#: An entry's version as sync compares it: ``(seq, deleted, expires)``.
Version = tuple[int, bool, float]


@attrs.frozen
class Peer:
    """A node as others know it: its ring id and where to reach it."""

    id: int
    address: Hashable

    def __repr__(self) -> str:
        return f"Peer({self.id:x}@{self.address})"


@attrs.frozen
class NodeState:
    """A node's neighbourhood, as stabilize asks for it."""

    peer: Peer
    predecessor: Peer | None
    successors: tuple[Peer, ...]


@attrs.frozen
class FindResult:
    """One step of an iterative lookup.

    ``done``: ``peers`` are the key's successor and the nodes after it.
    Otherwise ``peers`` are nodes closer to the key, best first.  The
    answering node's predecessor comes along so that a lookup can spot a
    node that joined before its predecessor heard of it.
    """

    done: bool
    peers: tuple[Peer, ...]
    responder: Peer
    predecessor: Peer | None = None


@attrs.frozen
class FetchResult:
    """What a node holds under a key, tombstones included.

    ``authoritative``: the node is responsible for the key and has synced
    its whole range since it last grew, so a miss here is a real miss.
    """

    records: tuple[Record, ...]
    authoritative: bool
    responder: Peer


@attrs.frozen
class SyncResult:
    """The answer to a range sync: what the asker lacks and what we lack."""

    records: tuple[Record, ...]
    wanted: tuple[EntryId, ...]


@attrs.frozen
class Proof:
    """A node's answer to a challenge (an open ring, :mod:`.admission`): its
    public key (DER), the home domain its id's top bits come from (empty:
    none), and its signature over the challenge, its id and its address."""

    public_key: bytes
    home: str
    signature: bytes


def versions_of(records: list[Record] | tuple[Record, ...]) -> dict[EntryId, Version]:
    """The versions a node offers in a sync."""
    return {r.entry_id: (r.seq, r.deleted, r.expires) for r in records}
