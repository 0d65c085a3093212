"""Where a node keeps its records: in memory, or in SQLite under state_dir.

Both stores answer from memory: a node's share of the ring is small, and
ring-range queries (what to hand a newcomer, what to sync with a replica)
are then a bisect on a sorted list of keys.  The SQLite store writes
through to disk, so a restarted node comes back with what it held, minus
what expired meanwhile.
"""

from __future__ import annotations

import bisect
import os
import sqlite3
from typing import Callable, Iterable, Iterator

from twisted.logger import Logger
from zope.interface import Interface, implementer

from .errors import StoreRefused
from .records import EntryId, Record, merge

log = Logger()


class IRecordStore(Interface):
    """A node's local record store; merging follows :mod:`.records`."""

    def put(record: Record) -> bool:
        """Merge one record in; True if it was new or newer than what we had."""

    def put_many(records: Iterable[Record]) -> int:
        """Merge records in; how many changed the store."""

    def get(key: int, kind: str | None = None) -> list[Record]:
        """The live records under ``key`` (of ``kind`` when given)."""

    def entry(entry_id: EntryId) -> Record | None:
        """The version held of one entry, tombstone included, unless expired."""

    def in_range(lo: int, hi: int) -> list[Record]:
        """Unexpired records and tombstones with ``key`` in ``(lo, hi]``."""

    def records() -> Iterator[Record]:
        """Every unexpired record and tombstone held."""

    def count(lo: int | None = None, hi: int | None = None) -> int:
        """How many live records are held (with key in ``(lo, hi]`` if given)."""

    def purge() -> int:
        """Forget expired records and tombstones; how many went."""

    def discard(records: Iterable[Record]) -> int:
        """Forget these versions (handed to the nodes that should hold them)."""

    def close() -> None:
        """Release what the store holds open."""


@implementer(IRecordStore)
class MemoryRecordStore:
    """Records in a dict of keys, with the keys also in a sorted list."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._by_key: dict[int, dict[tuple[str, str], Record]] = {}
        self._keys: list[int] = []
        #: called with each record the store took (newer than what it held):
        #: watches push the change (overlay/watch.py)
        self.listeners: list[Callable[[Record], object]] = []

    # -- hooks for a persistent subclass
    def _saved(self, record: Record) -> None:
        pass

    def _dropped(self, records: list[Record]) -> None:
        pass

    def _insert(self, record: Record) -> bool:
        slot = self._by_key.get(record.key)
        if slot is None:
            slot = self._by_key[record.key] = {}
            bisect.insort(self._keys, record.key)
        sub = (record.kind, record.entry)
        current = slot.get(sub)
        if current is not None and current.expired(self._now()):
            current = None
        if merge(current, record) is current:
            return False
        slot[sub] = record
        return True

    def put(self, record: Record) -> bool:
        if record.expired(self._now()):
            return False
        if self._insert(record):
            self._saved(record)
            for listener in self.listeners:
                listener(record)
            return True
        return False

    def put_many(self, records: Iterable[Record]) -> int:
        return sum(1 for r in records if self.put(r))

    def get(self, key: int, kind: str | None = None) -> list[Record]:
        now = self._now()
        slot = self._by_key.get(key, {})
        return sorted(
            (r for r in slot.values() if r.alive(now) and (kind is None or r.kind == kind)),
            key=lambda r: (r.kind, r.entry),
        )

    def entry(self, entry_id: EntryId) -> Record | None:
        key, kind, name = entry_id
        r = self._by_key.get(key, {}).get((kind, name))
        if r is None or r.expired(self._now()):
            return None
        return r

    def _keys_in(self, lo: int, hi: int) -> Iterable[int]:
        keys = self._keys
        if lo < hi:
            return keys[bisect.bisect_right(keys, lo) : bisect.bisect_right(keys, hi)]
        if lo > hi:
            return keys[bisect.bisect_right(keys, lo) :] + keys[: bisect.bisect_right(keys, hi)]
        return list(keys)

    def in_range(self, lo: int, hi: int) -> list[Record]:
        now = self._now()
        out = []
        for k in self._keys_in(lo, hi):
            out.extend(r for r in self._by_key[k].values() if not r.expired(now))
        return out

    def records(self) -> Iterator[Record]:
        now = self._now()
        for k in list(self._keys):
            for r in list(self._by_key.get(k, {}).values()):
                if not r.expired(now):
                    yield r

    def count(self, lo: int | None = None, hi: int | None = None) -> int:
        now = self._now()
        keys = self._keys if lo is None or hi is None else self._keys_in(lo, hi)
        return sum(1 for k in keys for r in self._by_key[k].values() if r.alive(now))

    def purge(self) -> int:
        now = self._now()
        gone: list[Record] = []
        for k in list(self._keys):
            slot = self._by_key[k]
            for sub, r in list(slot.items()):
                if r.expired(now):
                    gone.append(r)
                    del slot[sub]
            if not slot:
                del self._by_key[k]
        if gone:
            self._keys = sorted(self._by_key)
            self._dropped(gone)
        return len(gone)

    def discard(self, records: Iterable[Record]) -> int:
        gone: list[Record] = []
        for r in records:
            slot = self._by_key.get(r.key)
            if slot is not None and slot.get((r.kind, r.entry)) == r:
                del slot[(r.kind, r.entry)]
                gone.append(r)
                if not slot:
                    del self._by_key[r.key]
                    self._keys.pop(bisect.bisect_left(self._keys, r.key))
        if gone:
            self._dropped(gone)
        return len(gone)

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return self.count()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    entry TEXT NOT NULL,
    writer TEXT NOT NULL,
    value BLOB NOT NULL,
    expires REAL NOT NULL,
    seq INTEGER NOT NULL,
    owner_key_id BLOB NOT NULL,
    signature BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (key, kind, entry)
)
"""
_KEY_WIDTH = 64  # hex digits: any m up to 256 bits


def _hex(key: int) -> str:
    return format(key, f"0{_KEY_WIDTH}x")


@implementer(IRecordStore)
class SQLiteRecordStore(MemoryRecordStore):
    """The memory store, written through to ``records.sqlite`` in a directory.

    Records that expired while the node was down are dropped at load, and
    so is every record ``check`` refuses (it returns why): the disk is not
    trusted more than the network, so a record edited there is not served,
    and the ring's syncs bring the true version back.  Sequence numbers must
    fit SQLite's 64-bit INTEGER, which microsecond clocks stay far inside.
    """

    FILENAME = "records.sqlite"

    def __init__(
        self, directory: str, now: Callable[[], float], check: Callable[[Record], str | None] | None = None
    ) -> None:
        super().__init__(now)
        self._check = check
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, self.FILENAME)
        self.refusing: str | None = None  # why writes are refused now (a full disk), else None
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        if "name" not in columns:  # a store written before records carried names
            self._db.execute("ALTER TABLE records ADD COLUMN name TEXT NOT NULL DEFAULT ''")
        self._load()

    def _load(self) -> None:
        now = self._now()
        with self._db:
            dropped = self._db.execute("DELETE FROM records WHERE expires <= ?", (now,)).rowcount
            rows = self._db.execute(
                "SELECT key, kind, entry, writer, value, expires, seq, owner_key_id, signature, deleted, name FROM records"
            ).fetchall()
        kept = 0
        bad: list[tuple[str, str, str]] = []
        for key, kind, entry, writer, value, expires, seq, okid, sig, deleted, name in rows:
            try:
                record = Record(
                    int(key, 16), kind, entry, writer, bytes(value), expires, seq, bytes(okid), bytes(sig), bool(deleted), name
                )
                why = self._check(record) if self._check is not None else None
            except ValueError as e:
                why = str(e)
            if why is not None:
                bad.append((key, kind, entry))
                log.warn(
                    "overlay store {path}: dropping the stored record {kind} {entry!r} at key {key}: {why}",
                    path=self.path, kind=kind, entry=entry, key=key, why=why,
                )
                continue
            kept += self._insert(record)
        if bad:
            with self._db:
                self._db.executemany("DELETE FROM records WHERE key = ? AND kind = ? AND entry = ?", bad)
        log.info(
            "overlay store {path}: loaded {kept} records, dropped {dropped} expired and {bad} that failed verification",
            path=self.path, kept=kept, dropped=dropped, bad=len(bad),
        )

    def put(self, record: Record) -> bool:
        """Kept in memory only once it is on disk: a record the disk refuses
        (full, read-only, I/O error) is taken back out and :class:`StoreRefused`
        raised, so a full node does not claim copies a restart would lose."""
        if record.expired(self._now()):
            return False
        slot = self._by_key.get(record.key)
        before = slot.get((record.kind, record.entry)) if slot is not None else None
        if not self._insert(record):
            return False
        try:
            self._saved(record)
        except sqlite3.Error as e:
            self._take_back(record, before)
            if self.refusing is None:
                log.error("overlay store {path}: refusing writes: {error} (disk full?); the ring's other copies serve",
                          path=self.path, error=str(e))
            self.refusing = str(e)
            raise StoreRefused(f"the store of this node refuses writes: {e}") from None
        if self.refusing is not None:
            log.info("overlay store {path}: writes accepted again", path=self.path)
            self.refusing = None
        return True

    def _take_back(self, record: Record, before: Record | None) -> None:
        slot = self._by_key[record.key]
        if before is not None:
            slot[(record.kind, record.entry)] = before
            return
        del slot[(record.kind, record.entry)]
        if not slot:
            del self._by_key[record.key]
            self._keys.pop(bisect.bisect_left(self._keys, record.key))

    def _saved(self, record: Record) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _hex(record.key),
                    record.kind,
                    record.entry,
                    record.writer,
                    record.value,
                    record.expires,
                    record.seq,
                    record.owner_key_id,
                    record.signature,
                    int(record.deleted),
                    record.name,
                ),
            )

    def _dropped(self, records: list[Record]) -> None:
        with self._db:
            self._db.executemany(
                "DELETE FROM records WHERE key = ? AND kind = ? AND entry = ? AND seq = ?",
                [(_hex(r.key), r.kind, r.entry, r.seq) for r in records],
            )

    def close(self) -> None:
        self._db.close()
