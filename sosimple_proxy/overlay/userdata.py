"""The users' own data as ring records: what ``/store`` keeps, and the keys bound to AoRs.

A user's values live under the ring key of their AoR (``user@domain``,
the key their registrations use), as one record of kind ``userdata`` per
name: a dictionary kind, entry = the name, value = the bytes.  Keeping
them under the AoR's key puts them next to the AoR's bound key record
(kind ``publickey``) and lets the entitlement rules for the AoR (who may
write its records) cover them too; they replicate and are removed with
tombstones like every record.  Listing the names is one fetch of the key.

:class:`RingUserData` is the whole interface the web layer uses
(:class:`IUserData`), so that signing records or another placement changes
this module only.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import defer

from . import ids
from .errors import NotRunning
from .node import ChordNode
from .records import register_kind

KIND = "userdata"
#: the record kind of the public key bound to an AoR (single-valued)
KEY_KIND = "publickey"
#: values are kept until removed; a record needs an expiry, this is it (10 years)
TTL = 10 * 365 * 86400.0

register_kind(KIND, dictionary=True)
register_kind(KEY_KIND, dictionary=False)


class TooManyNames(Exception):
    """A new name for an AoR that already holds its ``max_names``."""


class IUserData(Protocol):
    """The users' store as the web layer sees it; every method returns a Deferred
    and fails with an :class:`~.errors.OverlayError` when the ring cannot answer."""

    def names(self, aor: str) -> defer.Deferred:
        """Deferred[list[str]]: the AoR's names, sorted."""

    def get(self, aor: str, name: str) -> defer.Deferred:
        """Deferred[bytes | None]: one value, None when there is none."""

    def put(self, aor: str, name: str, value: bytes, max_names: int) -> defer.Deferred:
        """Deferred[bool]: store a value (True when the name is new); fails with
        :class:`TooManyNames` for a new name past ``max_names``."""

    def delete(self, aor: str, name: str) -> defer.Deferred:
        """Deferred[bool]: remove a value; whether there was one."""

    def bound_keys(self, aor: str) -> defer.Deferred:
        """Deferred[list[bytes]]: the values of the AoR's ``publickey`` records."""


class Ring(Protocol):
    """What we need of a ring member (``OverlayService`` provides it)."""

    node: ChordNode | None
    keys: ids.KeyScheme
    ready: defer.Deferred


class RingUserData:
    """:class:`IUserData` on a ring member's node facade."""

    def __init__(self, ring: Ring | None) -> None:
        self.ring = ring

    def _node(self) -> ChordNode:
        ring = self.ring
        if ring is None:
            raise NotRunning("this node runs no overlay ([overlay] listen is empty)")
        node = ring.node
        if node is None or not node.joined:
            if ring.ready.called:
                raise NotRunning("the overlay failed to start; see the node's log")
            raise NotRunning("the node is joining the ring")
        if not node.running:
            raise NotRunning("the node has left the ring")
        return node

    def _key(self, aor: str) -> int:
        assert self.ring is not None
        return self.ring.keys.key(aor)

    @defer.inlineCallbacks
    def _records(self, aor: str, kind: str) -> Any:
        node = self._node()
        return (yield node.get(self._key(aor), kind))

    @defer.inlineCallbacks
    def names(self, aor: str) -> Any:
        records = yield self._records(aor, KIND)
        return sorted({r.entry for r in records})

    @defer.inlineCallbacks
    def get(self, aor: str, name: str) -> Any:
        records = yield self._records(aor, KIND)
        for r in records:
            if r.entry == name:
                return r.value
        return None

    @defer.inlineCallbacks
    def put(self, aor: str, name: str, value: bytes, max_names: int) -> Any:
        node = self._node()
        key = self._key(aor)
        held = {r.entry for r in (yield node.get(key, KIND))}
        new = name not in held
        if new and len(held) >= max_names:
            raise TooManyNames(f"{aor} already holds {len(held)} names, the limit is {max_names}")
        yield node.put_value(key, KIND, value, TTL, entry=name)
        return new

    @defer.inlineCallbacks
    def delete(self, aor: str, name: str) -> Any:
        node = self._node()
        return (yield node.remove(self._key(aor), KIND, entry=name))

    @defer.inlineCallbacks
    def bound_keys(self, aor: str) -> Any:
        records = yield self._records(aor, KEY_KIND)
        return [r.value for r in records]
