"""A node whose disk is full: its SQLite store refuses writes with one
clear log line, keeps nothing in memory that is not on disk, and takes
writes again once there is room.  SQLite's own ``max_page_count`` makes
the database full for real (SQLITE_FULL, "database or disk is full"),
exactly as a full file system does."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from sosimple_proxy.overlay.errors import StoreRefused
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.store import SQLiteRecordStore


def rec(key: int, seq: int = 1, value: bytes = b"v" * 2000) -> Record:
    return Record(key, "blob", "", "w", value, 1e9, seq)


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_full_store_refuses_writes_then_recovers(tmp_path, logged) -> None:
    store = SQLiteRecordStore(str(tmp_path), lambda: 0.0)
    store._db.execute("PRAGMA journal_mode=DELETE")  # pages counted in the main file
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 3}")
    kept = []
    with pytest.raises(StoreRefused, match="refuses writes"):
        for key in range(1, 1000):
            store.put(rec(key))
            kept.append(key)
    refused = len(kept) + 1
    assert kept, "some records fit before the disk filled"
    # Nothing in memory that is not on disk: the refused record is not served.
    assert store.get(refused) == [] and store.count() == len(kept)
    # A newer version of a kept record refused: the old one stays.
    with pytest.raises(StoreRefused):
        store.put(rec(kept[0], seq=2, value=b"w" * 40000))
    assert store.get(kept[0])[0].seq == 1
    errors = [e for e in logged if e.get("log_level") == LogLevel.error and "refusing writes" in e.get("log_format", "")]
    assert len(errors) == 1, "one clear line when the disk fills, not one per write"
    # Room again: writes are taken, and a restart finds exactly what was kept.
    store._db.execute("PRAGMA max_page_count = 1000000")
    assert store.put(rec(refused))
    assert any("accepted again" in e.get("log_format", "") for e in logged)
    store.close()
    again = SQLiteRecordStore(str(tmp_path), lambda: 0.0)
    assert sorted(r.key for r in again.records()) == sorted(kept + [refused])
    again.close()


def test_a_node_that_refused_a_record_vouches_for_no_miss_until_synced() -> None:
    """Issue 15 (the lab's disk-full scenario): a full node refused a user's
    record, then took a smaller one (room for that); its store no longer
    says it refuses, but it still lacks the first: a reader asking it first
    must not hear an authoritative miss while the other copies hold it."""
    from sosimple_proxy.overlay.node import NodeConfig
    from sosimple_proxy.testing.ring import sim_ring

    c = sim_ring(8, 3, NodeConfig(m=16, stabilize_interval=1.0, successors=4, replicas=2), per_round=4)
    ring = c.ring()
    nodes = c.by_id()
    owner = nodes[ring[2]]
    big, small = ring[2] - 1, ring[2]  # both in the owner's range
    reader = nodes[ring[5]]
    store = owner.store
    real_put = store.put

    def put(record: Record) -> bool:
        if record.key == big:  # too large for what is left on the disk
            store.refusing = "database or disk is full"
            raise StoreRefused("the store of this node refuses writes: database or disk is full")
        store.refusing = None
        return real_put(record)

    store.put = put  # type: ignore[method-assign]
    assert owner.authoritative(big)
    wanted = c.make_record(key=big)
    assert c.wait(reader.put(wanted)) >= 2  # the other holders took it
    assert c.wait(reader.put(c.make_record(key=small))) == 3  # the owner took this one
    assert getattr(store, "refusing", None) is None
    assert c.wait(reader.get(big)) == [wanted]


def test_a_full_successor_stays_in_its_predecessors_lists() -> None:
    """Issue 15: a full node answers (it refuses the records its predecessor's
    sync hands it); it is alive and must not be dropped from the successor
    list, or the ring flaps around it every sync."""
    from sosimple_proxy.overlay.node import NodeConfig
    from sosimple_proxy.testing.ring import sim_ring

    c = sim_ring(6, 4, NodeConfig(m=16, stabilize_interval=1.0, successors=4, replicas=2), per_round=3)
    ring = c.ring()
    nodes = c.by_id()
    pred, full = nodes[ring[1]], nodes[ring[2]]
    for r in (c.make_record(key=ring[1] - k) for k in range(5)):  # pred's range: its syncs offer them to full
        pred.store.put(r)

    def refuse(record: Record) -> bool:
        full.store.refusing = "database or disk is full"
        raise StoreRefused("the store of this node refuses writes: database or disk is full")

    full.store.put = refuse  # type: ignore[method-assign]
    firsts = []
    for _ in range(12):
        c.run(1)
        firsts.append(pred.successors[0].id)
    assert set(firsts) == {full.id}, "the full node was dropped from its predecessor's list"
