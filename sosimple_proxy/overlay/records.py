"""The record format and the rules by which replicas agree.

A key holds records of several kinds side by side.  A *dictionary* kind
(registrations) holds many entries under one key, one per writer's binding,
so two proxies that register the same AoR merge instead of overwriting each
other; a *single-valued* kind (``blob``) holds one entry, the empty string.

Replicas agree without coordination because merging is a deterministic
choice per ``(key, kind, entry)``: the higher sequence number wins, ties
broken by the record's content, so every replica that has seen the same
versions holds the same one whatever order they came in.  An expired
record is gone.  A removal is a *tombstone*: a record with ``deleted`` set
and a higher sequence number, kept until the removed record would have
expired, so a replica that missed the removal cannot bring it back.

Every record is signed by its writer (:mod:`.signing`): ``owner_key_id``
carries the writer's credential (its raw Ed25519 public key in an open
ring, its node certificate in a CA ring), ``signature`` the signature over
:meth:`Record.signed_bytes`, and ``name`` the clear name the key was made
from (``alice@example.com``), so that a replica can tell whose record it is
(:mod:`.entitlement`).  A tombstone keeps the name.
"""

from __future__ import annotations

import struct
from typing import Iterable

import attrs

#: Kinds whose records hold many entries under one key.
DICTIONARY_KINDS: set[str] = {"registration"}
#: Kinds with one entry per key; known so that a typo is caught early.
SINGLE_KINDS: set[str] = {"blob", "presence", "publickey", "domain"}


def is_dictionary(kind: str) -> bool:
    """Whether ``kind`` holds many entries (a RELOAD-style DICTIONARY)."""
    return kind in DICTIONARY_KINDS


def register_kind(kind: str, dictionary: bool) -> None:
    """Declare a new record kind, single-valued or dictionary."""
    if kind in DICTIONARY_KINDS | SINGLE_KINDS:
        if is_dictionary(kind) != dictionary:
            raise ValueError(f"kind {kind!r} is already declared otherwise")
        return
    (DICTIONARY_KINDS if dictionary else SINGLE_KINDS).add(kind)


class RecordError(ValueError):
    """A record that breaks the format's rules."""


def _check(record: Record) -> None:
    if record.key < 0:
        raise RecordError("a key is a non-negative integer")
    if record.kind not in DICTIONARY_KINDS and record.kind not in SINGLE_KINDS:
        raise RecordError(f"unknown record kind {record.kind!r}")
    if not is_dictionary(record.kind) and record.entry != "":
        raise RecordError(f"kind {record.kind!r} is single-valued: its entry must be empty")
    if record.seq < 0:
        raise RecordError("a sequence number is a non-negative integer")
    if record.deleted and record.value:
        raise RecordError("a tombstone carries no value")


#: What identifies an entry within a key.
EntryId = tuple[int, str, str]


@attrs.frozen
class Record:
    """One entry under a key: immutable, so replicas can share it."""

    key: int
    kind: str
    entry: str
    writer: str
    value: bytes
    expires: float
    seq: int
    owner_key_id: bytes = b""
    signature: bytes = b""
    deleted: bool = False
    #: the name ``key`` was made from ("" for records that name nothing)
    name: str = ""

    def __attrs_post_init__(self) -> None:
        _check(self)

    @property
    def entry_id(self) -> EntryId:
        return (self.key, self.kind, self.entry)

    def alive(self, now: float) -> bool:
        """Whether the record still counts at ``now`` (tombstones never count)."""
        return not self.deleted and self.expires > now

    def expired(self, now: float) -> bool:
        """Whether the record (or tombstone) can be forgotten at ``now``."""
        return self.expires <= now

    def tombstone(self, seq: int | None = None, writer: str | None = None) -> Record:
        """The removal of this entry: a higher sequence, no value, same expiry."""
        return attrs.evolve(
            self,
            value=b"",
            seq=self.seq + 1 if seq is None else seq,
            writer=self.writer if writer is None else writer,
            deleted=True,
            signature=b"",
        )

    def signed_bytes(self) -> bytes:
        """A canonical encoding of everything a signature must cover."""
        parts = [
            self.key.to_bytes((self.key.bit_length() + 7) // 8 or 1, "big"),
            self.kind.encode(),
            self.entry.encode(),
            self.writer.encode(),
            self.value,
            struct.pack("!dQ?", self.expires, self.seq, self.deleted),
            self.owner_key_id,
            self.name.encode(),
        ]
        return b"".join(struct.pack("!I", len(p)) + p for p in parts)


def _rank(record: Record) -> tuple:
    # Higher wins: sequence first; then a tombstone over a value, so a
    # removal is never undone by a write that reused its number; the rest
    # only makes the choice deterministic.
    return (record.seq, record.deleted, record.expires, record.value, record.writer, record.signature)


def newer(a: Record, b: Record) -> bool:
    """Whether ``a`` supersedes ``b`` (same entry)."""
    return _rank(a) > _rank(b)


def merge(current: Record | None, incoming: Record) -> Record:
    """The version a replica keeps of one entry."""
    if current is None or newer(incoming, current):
        return incoming
    return current


def merge_all(records: Iterable[Record], now: float) -> list[Record]:
    """Merge versions from several replicas: one live record per entry.

    Expired records and tombstones are dropped after they have won (a
    tombstone hides an older value from another replica).
    """
    best: dict[EntryId, Record] = {}
    for r in records:
        if r.expired(now):
            continue
        best[r.entry_id] = merge(best.get(r.entry_id), r)
    return sorted(
        (r for r in best.values() if not r.deleted),
        key=lambda r: (r.kind, r.entry),
    )
