"""Presence's records in the ring, and the presentity key the notifier watches.

- ``publication`` (a dictionary kind) at key(presentity): one entry per
  entity-tag, the PIDF document a device published (RFC 3903), expiring
  with the publication; a removal is a tombstone.  Next to the
  presentity's ``registration`` entries, so one watch of the key sees
  both, and they survive a node's failure as registrations do.
- ``subscription`` (a dictionary kind) at key("presence-watchers:" +
  presentity): one entry per subscription, the dialog as the notifier
  keeps it, expiring with the subscription.  A key of its own, so that
  subscribing does not push the presentity's records to every watcher.

The ring is an overlay service as the location providers see it: ``node``
(None before it joined), ``keys.key(name)``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer

from sosimple_proxy.location import regrecord
from sosimple_proxy.overlay.records import Record, register_kind

PUBLICATION = "publication"
SUBSCRIPTION = "subscription"
USERDATA = "userdata"  # the users' store (/store): a per-user allow list lives there
ALLOW_NAME = "presence.allow"

register_kind(PUBLICATION, dictionary=True)
register_kind(SUBSCRIPTION, dictionary=True)


class RingUnavailable(Exception):
    """Not joined to the ring (yet)."""


def watchers_key_name(presentity: str) -> str:
    return f"presence-watchers:{presentity}"


class PresenceRing:
    """What presence reads and writes in one ring."""

    def __init__(self, overlay: Any, clock: Any) -> None:
        self.overlay = overlay
        self.clock = clock

    @property
    def node(self) -> Any:
        node = getattr(self.overlay, "node", None)
        if node is None or not getattr(node, "joined", True):
            raise RingUnavailable("not joined to the ring yet")
        return node

    def key(self, name: str) -> int:
        return self.overlay.keys.key(name)

    def watch(self, presentity: str, callback: Callable[[list[Record]], Any]) -> Any:
        return self.node.watch(self.key(presentity), lambda key, records: callback(records))

    def get(self, presentity: str) -> defer.Deferred:
        """Deferred[list[Record]]: every live record at the presentity's key."""
        try:
            node = self.node
        except RingUnavailable as e:
            return defer.fail(e)
        return defer.maybeDeferred(node.get, self.key(presentity))

    def put_publication(
        self, presentity: str, etag: str, body: bytes, expires_at: float, replacing: list[Record] = ()
    ) -> defer.Deferred:
        """Write a publication, and remove the ones it replaces in the same write."""
        node = self.node
        value = json.dumps({"body": body.decode("utf-8")}, separators=(",", ":")).encode()
        record = Record(self.key(presentity), PUBLICATION, etag, node.writer, value, expires_at, node.next_seq())
        gone = [r.tombstone(seq=node.next_seq(r.seq), writer=node.writer) for r in replacing]
        return defer.maybeDeferred(node.put, [record, *gone])

    def remove_records(self, records: list[Record]) -> defer.Deferred:
        node = self.node
        if not records:
            return defer.succeed(0)
        return defer.maybeDeferred(node.put, [r.tombstone(seq=node.next_seq(r.seq), writer=node.writer) for r in records])

    def put_subscription(self, presentity: str, entry: str, value: bytes, expires_at: float) -> defer.Deferred:
        node = self.node
        record = Record(
            self.key(watchers_key_name(presentity)), SUBSCRIPTION, entry, node.writer, value, expires_at, node.next_seq()
        )
        return defer.maybeDeferred(node.put, record)

    def get_subscriptions(self, presentity: str) -> defer.Deferred:
        """Deferred[list[Record]]: the subscriptions to ``presentity`` the ring holds."""
        node = self.node
        return defer.maybeDeferred(node.get, self.key(watchers_key_name(presentity)), SUBSCRIPTION)

    def remove_subscription(self, presentity: str, entry: str) -> defer.Deferred:
        node = self.node
        return defer.maybeDeferred(node.remove, self.key(watchers_key_name(presentity)), SUBSCRIPTION, entry)

    @property
    def writer(self) -> str:
        return self.node.writer


def publications(records: list[Record]) -> list[tuple[str, bytes, float]]:
    """(etag, PIDF body, expires) of the live publications, oldest first."""
    out = []
    for r in sorted((r for r in records if r.kind == PUBLICATION), key=lambda r: r.seq):
        try:
            body = json.loads(r.value.decode("utf-8"))["body"].encode("utf-8")
        except Exception:
            continue
        out.append((r.entry, body, r.expires))
    return out


def registered_contacts(records: list[Record]) -> list[str]:
    """The contacts of the presentity's live registrations, anywhere in the ring."""
    out = []
    for r in records:
        if r.kind != regrecord.KIND:
            continue
        try:
            out.append(regrecord.decode(r.value)["contact"])
        except Exception:
            continue
    return out


def allow_list(records: list[Record]) -> set[str] | None:
    """The presentity's allow list (its ``presence.allow`` in the users'
    store: AoRs separated by white space or commas), None if it has none."""
    for r in records:
        if r.kind == USERDATA and r.entry == ALLOW_NAME:
            text = r.value.decode("utf-8", "replace").replace(",", " ")
            return {regrecord.canonical_aor(w) for w in text.split() if w}
    return None


def subscription_watchers(records: list[Record]) -> list[str]:
    """The watchers of the live subscriptions among ``records`` (the watchers' key)."""
    out = []
    for r in records:
        if r.kind != SUBSCRIPTION:
            continue
        try:
            out.append(str(json.loads(r.value.decode("utf-8"))["watcher"]))
        except Exception:
            continue
    return out
