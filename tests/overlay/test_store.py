"""The record stores, in memory and in SQLite."""

import pytest

from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.store import IRecordStore, MemoryRecordStore, SQLiteRecordStore


class Now:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def rec(key, seq=1, entry="", kind="blob", value=b"v", expires=100.0):
    return Record(key, kind, entry, "w", value, expires, seq)


@pytest.fixture(params=["memory", "sqlite"])
def made(request, tmp_path):
    now = Now()
    if request.param == "memory":
        store = MemoryRecordStore(now)
    else:
        store = SQLiteRecordStore(str(tmp_path / "state"), now)
    yield store, now
    store.close()


def test_provides_the_interface(made):
    store, _ = made
    assert IRecordStore.providedBy(store)


def test_put_get_merge(made):
    store, now = made
    assert store.put(rec(5, seq=2, value=b"two"))
    assert not store.put(rec(5, seq=1, value=b"one"))  # stale
    assert [r.value for r in store.get(5)] == [b"two"]
    assert store.put(rec(5, kind="registration", entry="a"))
    assert store.put(rec(5, kind="registration", entry="b"))
    assert [r.entry for r in store.get(5, "registration")] == ["a", "b"]
    assert len(store.get(5)) == 3
    assert store.get(6) == []
    assert store.count() == 3


def test_tombstone_hides_and_blocks_stale_copies(made):
    store, _ = made
    r = rec(9, seq=3)
    store.put(r)
    assert store.put(r.tombstone())
    assert store.get(9) == []
    assert not store.put(r)
    assert store.entry((9, "blob", "")).deleted
    assert store.count() == 0
    # tombstones travel in range transfers, so replicas learn of removals
    assert store.in_range(0, 10) == [r.tombstone()]


def test_expiry(made):
    store, now = made
    store.put(rec(1, expires=10.0))
    store.put(rec(2, expires=30.0))
    now.t = 20.0
    assert store.get(1) == []
    assert store.entry((1, "blob", "")) is None
    assert store.count() == 1
    assert not store.put(rec(3, expires=15.0))  # born dead
    assert store.purge() == 1
    assert [r.key for r in store.records()] == [2]


def test_ranges_wrap_around(made):
    store, _ = made
    for k in (1, 5, 10, 200, 250):
        store.put(rec(k))
    keys = lambda lo, hi: sorted(r.key for r in store.in_range(lo, hi))
    assert keys(1, 10) == [5, 10]
    assert keys(200, 5) == [1, 5, 250]
    assert keys(7, 7) == [1, 5, 10, 200, 250]
    assert store.count(200, 5) == 3


def test_sqlite_survives_restart_and_drops_expired(tmp_path):
    now = Now()
    d = str(tmp_path / "overlay")
    store = SQLiteRecordStore(d, now)
    big = 2**160 - 1
    store.put(rec(big, seq=1, value=b"x" * 1000))
    store.put(rec(big, seq=2, value=b"newer"))
    store.put(rec(3, kind="registration", entry="e1", expires=50.0))
    store.put(rec(4, expires=500.0).tombstone())
    store.put(rec(8, expires=500.0))
    store.purge()
    store.close()

    now.t = 60.0
    again = SQLiteRecordStore(d, now)
    assert [r.value for r in again.get(big)] == [b"newer"]
    assert again.get(3) == []  # expired while down
    assert again.entry((4, "blob", "")).deleted
    assert again.count() == 2
    again.close()


def test_discard_forgets_only_that_version(made):
    store, _ = made
    a, b = rec(3, seq=2), rec(4)
    store.put(a)
    store.put(b)
    assert store.discard([rec(3, seq=1)]) == 0  # not the version held
    assert store.discard([a]) == 1
    assert store.get(3) == [] and store.get(4) == [b]
    assert [r.key for r in store.in_range(0, 10)] == [4]
