"""Write quorum: how many copies must take a write before it counts as done.

A write acknowledged by one node is lost when that node dies before the
ring repairs it (issue 15: the proxy that registered a user and held its
key died right after the 200 OK).  A write therefore waits for
``min(write_quorum, replicas + 1, distinct live holders)`` acknowledgements:
never more than the copies the ring keeps, never more than there are nodes
to take them (a ring of one still works).
"""

from __future__ import annotations

from typing import Hashable, Iterable

from .errors import StoreFailed


class QuorumFailed(StoreFailed):
    """Fewer nodes than the write quorum took the records."""

    def __init__(self, message: str, acks: int, needed: int) -> None:
        super().__init__(message)
        self.acks = acks
        self.needed = needed


def needed(write_quorum: int, replicas: int, holders: Iterable[Hashable]) -> int:
    """Acknowledgements a write needs, given the distinct addresses that could hold it."""
    live = len(set(holders))
    return max(1, min(write_quorum, replicas + 1, live))


def reads(write_quorum: int, replicas: int) -> int:
    """Holders a read asks (when they answer) before it believes what they say.

    A write is done once ``write_quorum`` of the ``replicas + 1`` holders
    took it, so the key's primary may be one that missed it (a lost
    message, a store call that timed out half-way) while it still vouches
    for its range.  Asking ``R`` holders with ``R + write_quorum >
    replicas + 1`` meets at least one copy of every done write, and the
    newest version of each entry wins the merge (issue 15: lookups right
    after a REGISTER's 200 missed for a second or two, until the next sync).
    """
    return max(1, replicas + 2 - max(1, write_quorum))


def check(acks: int, write_quorum: int, replicas: int, holders: Iterable[Hashable], key: int) -> None:
    """Raise :class:`QuorumFailed` (or :class:`StoreFailed` for none) unless ``acks`` suffice."""
    need = needed(write_quorum, replicas, holders)
    if acks == 0:
        raise QuorumFailed(f"no node took key {key:x}", 0, need)
    if acks < need:
        raise QuorumFailed(f"only {acks} of {need} copies of key {key:x} acknowledged", acks, need)
