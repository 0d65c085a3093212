"""The binary encoding of overlay messages, and AMP's chunked argument."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sosimple_proxy.overlay import wire
from sosimple_proxy.overlay.amp import CHUNK, Chunked, split_address
from sosimple_proxy.overlay.messages import FetchResult, FindResult, NodeState, Peer, SyncResult
from sosimple_proxy.overlay.records import Record

ids_ = st.integers(0, 2**160 - 1)
peers = st.builds(Peer, ids_, st.from_regex(r"127\.0\.0\.1:[0-9]{1,5}", fullmatch=True))
records = st.one_of(
    st.builds(
        Record,
        key=ids_,
        kind=st.just("blob"),
        entry=st.just(""),
        writer=st.text(max_size=10),
        value=st.binary(max_size=200),
        expires=st.floats(0, 1e10),
        seq=st.integers(0, 2**63),
        owner_key_id=st.binary(max_size=8),
        signature=st.binary(max_size=8),
    ),
    st.builds(
        Record,
        key=ids_,
        kind=st.just("registration"),
        entry=st.text(max_size=20),
        writer=st.text(max_size=10),
        value=st.just(b""),
        expires=st.floats(0, 1e10),
        seq=st.integers(0, 2**63),
        deleted=st.just(True),
    ),
)


@given(st.lists(records, max_size=5))
def test_records_round_trip(rs):
    assert wire.decode_records(wire.encode_records(rs)) == tuple(rs)


@given(peers, st.none() | peers, st.lists(peers, max_size=4))
def test_state_find_leave_round_trip(p, pred, succs):
    state = NodeState(p, pred, tuple(succs))
    assert wire.decode_state(wire.encode_state(state)) == state
    found = FindResult(bool(succs), tuple(succs), p, pred)
    assert wire.decode_find_result(wire.encode_find_result(found)) == found
    assert wire.decode_leave(wire.encode_leave(p, pred, succs)) == (p, pred, tuple(succs))
    assert wire.decode_peers(wire.encode_peers(succs)) == tuple(succs)


@given(st.lists(records, max_size=3), peers, st.booleans())
def test_fetch_and_sync_round_trip(rs, p, auth):
    res = FetchResult(tuple(rs), auth, p)
    assert wire.decode_fetch_result(wire.encode_fetch_result(res)) == res
    assert wire.decode_fetch(wire.encode_fetch(5, None)) == (5, None)
    assert wire.decode_fetch(wire.encode_fetch(5, "blob")) == (5, "blob")
    versions = {r.entry_id: (r.seq, r.deleted, r.expires) for r in rs}
    assert wire.decode_sync(wire.encode_sync(1, 2, versions)) == (1, 2, versions)
    sync = SyncResult(tuple(rs), tuple(r.entry_id for r in rs))
    assert wire.decode_sync_result(wire.encode_sync_result(sync)) == sync


def test_bad_bodies_raise_value_error():
    good = wire.encode_records([Record(1, "blob", "", "w", b"v", 5.0, 1)])
    with pytest.raises(ValueError):
        wire.decode_records(good[:-3])  # cut short
    with pytest.raises(ValueError):
        wire.decode_records(good + b"x")  # left over
    with pytest.raises(ValueError):
        wire.decode_peer(b"\x07")  # a flag that is neither 0 nor 1
    with pytest.raises(ValueError):
        # a well-formed body carrying a record that breaks the format
        wire.decode_records(wire._Writer().int(1).int(1).str("nonsense").str("").str("w").raw(b"").float(1.0).int(1).raw(b"").raw(b"").bool(False).bytes())
    with pytest.raises(ValueError):
        wire.decode_int(wire._Writer().raw(b"\x01\x02").bytes() + b"junk")


def test_chunked_argument_splits_big_values():
    arg = Chunked()
    value = bytes(range(256)) * 1000  # 256 KB
    strings = {}
    arg.toBox(b"body", strings, {"body": value}, None)
    assert len(strings) == -(-len(value) // CHUNK)
    assert all(len(v) <= CHUNK for v in strings.values())
    out = {}
    arg.fromBox(b"body", strings, out, None)
    assert out["body"] == value
    empty = {}
    arg.toBox(b"body", empty, {"body": b""}, None)
    back = {}
    arg.fromBox(b"body", empty, back, None)
    assert back["body"] == b""


def test_split_address():
    assert split_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert split_address("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ValueError):
        split_address("nowhere")
