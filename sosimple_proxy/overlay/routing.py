"""One node's routing table: successor list, predecessor, fingers, suspects.

Pure state and ring arithmetic, with no calls and no timers, so the rules
(who precedes a key, who is responsible, what a ``find`` answers) are
tested on their own.  Peers that failed a call lately are *suspects*: kept
out of the tables and out of answers until their time is up.  Changes that
others must act on (the replica set, the predecessor) go to an
:class:`.interfaces.IRoutingListener`.

In an open ring a table is given ``admit`` (:meth:`.admission.PeerGate.status`):
a peer enters it only once it has proved its key.  A refused peer is
skipped; a successor list stops at the first peer not known yet (it is
being challenged), so the list stays a true prefix of the ring.
"""

from __future__ import annotations

import bisect
from typing import Callable, Hashable, Iterable, Sequence

from . import ids
from .interfaces import IRoutingListener
from .messages import FindResult, NodeState, Peer


class Suspects:
    """Addresses that failed a call, each kept out until ``hold`` seconds after."""

    def __init__(self, now: Callable[[], float], hold: float) -> None:
        self._now = now
        self._hold = hold
        self._until: dict[Hashable, float] = {}

    def add(self, address: Hashable) -> None:
        self._until[address] = self._now() + self._hold

    def discard(self, address: Hashable) -> None:
        """``address`` proved alive (it called us)."""
        self._until.pop(address, None)

    def __contains__(self, address: Hashable) -> bool:
        until = self._until.get(address)
        if until is None:
            return False
        if until > self._now():
            return True
        del self._until[address]
        return False


class RoutingTable:
    """Who this node knows on the ring, and where keys fall among them.

    ``successors`` holds up to ``size`` distinct live peers; the first
    ``replicas`` of them are the replica set of our range.  ``fingers[i]`` is
    the first node at or after ``id + 2**i``.
    """

    def __init__(
        self,
        me: Peer,
        m: int,
        size: int,
        replicas: int,
        suspects: Suspects,
        listener: IRoutingListener | None = None,
        admit: Callable[[Peer], bool | None] | None = None,
    ) -> None:
        self.me = me
        self.admit = admit
        self._offered: list[Peer] | None = None
        self.m = m
        self.size = size
        self.replicas = replicas
        self.suspects = suspects
        self.listener = listener
        self.predecessor: Peer | None = None
        self.successors: list[Peer] = []
        self.fingers: dict[int, Peer] = {}
        self._replica_set: tuple[Hashable, ...] = ()
        # every known peer sorted by distance from us, rebuilt when dirty
        self._dirty = True
        self._dists: list[int] = []
        self._peers: list[Peer] = []

    # ---------------------------------------------------------------- changes

    def set_successors(self, peers: Iterable[Peer]) -> None:
        """Adopt ``peers`` (best first), skipping ourselves, repeats and suspects."""
        me = self.me
        admit = self.admit
        out: list[Peer] = []
        seen = set()
        pending = 0
        for p in peers:
            if p.address == me.address or p.id == me.id or p.address in seen or p.address in self.suspects:
                continue
            if admit is not None:
                ok = admit(p)  # a peer not known yet is challenged now
                if ok is False:
                    continue
                if ok is None or pending:
                    # not proved yet: the list stops before it (the rest are
                    # only asked to prove themselves, all at once)
                    pending += 1
                    if pending >= self.size:
                        break
                    continue
            seen.add(p.address)
            out.append(p)
            if len(out) >= self.size:
                break
        # the offer is made again once a peer in it has proved itself
        # (:meth:`offer_again`); meanwhile keep the proved ones we had
        # beyond the last one adopted
        self._offered = list(peers) if pending else None
        if pending:
            out += self._kept_after(out, seen)
        self.successors = out
        self._dirty = True
        replica_set = tuple(p.address for p in out[: self.replicas])
        if replica_set != self._replica_set:
            self._replica_set = replica_set
            if self.listener is not None:
                self.listener.replica_set_changed()

    def offer_again(self) -> None:
        """A peer proved itself: take the successor list last offered again
        (at once, rather than at the next stabilize round)."""
        offered = self._offered
        if offered is not None:
            self.set_successors(offered)

    def _kept_after(self, out: list[Peer], seen: set) -> list[Peer]:
        me, m = self.me.id, self.m
        floor = ids.distance(me, out[-1].id, m) if out else 0
        kept = [
            p
            for p in self.successors
            if p.address not in seen and p.address not in self.suspects and ids.distance(me, p.id, m) > floor
        ]
        kept.sort(key=lambda p: ids.distance(me, p.id, m))
        return kept[: self.size - len(out)]

    def set_predecessor(self, peer: Peer | None) -> None:
        if peer is not None and self.admit is not None and self.admit(peer) is not True:
            return
        self.predecessor = peer
        self._dirty = True
        if self.listener is not None:
            self.listener.predecessor_changed(peer)

    def set_finger(self, i: int, peer: Peer) -> None:
        if self.admit is not None and self.admit(peer) is not True:
            return
        self.fingers[i] = peer
        self._dirty = True

    def drop_finger(self, i: int) -> None:
        self.fingers.pop(i, None)
        self._dirty = True

    def drop_fingers_below(self, first: int) -> None:
        """Fingers below ``first`` all point at our successor: not worth keeping."""
        for i in [i for i in self.fingers if i < first]:
            del self.fingers[i]
            self._dirty = True

    def failed(self, address: Hashable) -> None:
        """A call to ``address`` failed: route around it until it proves alive."""
        if address == self.me.address:
            return
        self.suspects.add(address)
        if self.predecessor is not None and self.predecessor.address == address:
            self.predecessor = None
        if any(s.address == address for s in self.successors):
            self.set_successors([s for s in self.successors if s.address != address])
        self._drop_fingers_at(address)

    def neighbour_left(self, peer: Peer, predecessor: Peer | None, successors: Sequence[Peer]) -> None:
        """``peer`` left gracefully; ``predecessor`` and ``successors`` were its own."""
        self.suspects.add(peer.address)
        if self.predecessor is not None and self.predecessor.address == peer.address:
            ok = predecessor is not None and predecessor.address != self.me.address
            self.set_predecessor(predecessor if ok else None)
        if self.successors and self.successors[0].address == peer.address:
            self.set_successors([*successors, *self.successors[1:]])
        else:
            self.set_successors(self.successors)
        self._drop_fingers_at(peer.address)

    def _drop_fingers_at(self, address: Hashable) -> None:
        for i in [i for i, p in self.fingers.items() if p.address == address]:
            del self.fingers[i]
        self._dirty = True

    # ---------------------------------------------------------------- answers

    def state(self) -> NodeState:
        return NodeState(self.me, self.predecessor, tuple(self.successors))

    def responsible_for(self, key: int) -> bool:
        """Whether we think ``key`` falls in our range ``(predecessor, us]``."""
        if not self.successors:
            return True
        return self.predecessor is not None and ids.in_half_open(key, self.predecessor.id, self.me.id)

    def find(self, key: int, count: int) -> FindResult:
        """One lookup step: the key's successors if we know them, else ``count`` closer peers."""
        me = self.me
        succs = self.successors
        pred = self.predecessor
        if not succs:
            return FindResult(True, (me,), me, pred)
        if pred is not None and ids.in_half_open(key, pred.id, me.id):
            return FindResult(True, (me, *succs), me, pred)
        prev = me.id
        for i, s in enumerate(succs):
            if ids.in_half_open(key, prev, s.id):
                return FindResult(True, tuple(succs[i:]), me, pred)
            prev = s.id
        return FindResult(False, tuple(self.closest_preceding(key, count)), me, pred)

    def closest_preceding(self, key: int, count: int) -> list[Peer]:
        """Up to ``count`` known live peers in ``(self, key)``, closest to the key first."""
        self._refresh()
        i = bisect.bisect_left(self._dists, ids.distance(self.me.id, key, self.m))
        out: list[Peer] = []
        while i > 0 and len(out) < count:
            i -= 1
            p = self._peers[i]
            if p.address not in self.suspects:
                out.append(p)
        return out

    def known_peers(self) -> list[Peer]:
        """Every distinct peer in our tables, in ring order from us."""
        self._refresh()
        return list(self._peers)

    def finger_peers(self) -> list[Peer]:
        """The distinct nodes of the finger table, in ring order."""
        seen: dict[Hashable, Peer] = {}
        for i in sorted(self.fingers):
            seen.setdefault(self.fingers[i].address, self.fingers[i])
        return list(seen.values())

    def first_finger(self) -> int:
        """Fingers below this index all point at our successor."""
        if not self.successors:
            return self.m
        d = ids.distance(self.me.id, self.successors[0].id, self.m)
        return max(0, (d - 1).bit_length())

    def _refresh(self) -> None:
        if not self._dirty:
            return
        peers: dict[Hashable, Peer] = {}
        for p in self.successors:
            peers[p.address] = p
        for p in self.fingers.values():
            peers.setdefault(p.address, p)
        if self.predecessor is not None:
            peers.setdefault(self.predecessor.address, self.predecessor)
        me, m = self.me.id, self.m
        entries = sorted((ids.distance(me, p.id, m), i, p) for i, p in enumerate(peers.values()) if p.id != me)
        self._dists = [d for d, _, _ in entries]
        self._peers = [p for _, _, p in entries]
        self._dirty = False
