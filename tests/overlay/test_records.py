"""Record format and merge rules."""

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sosimple_proxy.overlay.records import Record, RecordError, is_dictionary, merge, merge_all, newer, register_kind


def rec(seq=1, entry="", kind="blob", value=b"v", expires=100.0, key=7, writer="w", deleted=False):
    return Record(key, kind, entry, writer, value, expires, seq, deleted=deleted)


def test_kinds():
    assert is_dictionary("registration")
    assert not is_dictionary("blob")
    register_kind("test-dict", True)
    register_kind("test-dict", True)
    assert is_dictionary("test-dict")
    with pytest.raises(ValueError):
        register_kind("blob", True)


def test_format_rules():
    with pytest.raises(RecordError):
        rec(entry="x")  # blob is single-valued
    with pytest.raises(RecordError):
        rec(kind="nonsense")
    with pytest.raises(RecordError):
        rec(seq=-1)
    with pytest.raises(RecordError):
        rec(deleted=True)  # a tombstone with a value
    r = rec(kind="registration", entry="node1|sip:a@1.2.3.4")
    assert r.entry_id == (7, "registration", "node1|sip:a@1.2.3.4")


def test_newer_sequence_wins_either_order():
    old, new = rec(seq=1, value=b"old"), rec(seq=2, value=b"new")
    assert merge(old, new) is new
    assert merge(new, old) is new
    assert merge(None, old) is old


def test_tombstone_beats_its_record_and_keeps_expiry():
    r = rec(seq=5, expires=50.0)
    t = r.tombstone(writer="remover")
    assert t.deleted and t.value == b"" and t.seq == 6 and t.expires == 50.0 and t.writer == "remover"
    assert merge(r, t) is t and merge(t, r) is t
    # a stale replica's copy cannot resurrect it
    assert merge_all([r, t, r], now=0.0) == []
    # a tombstone wins a tie on sequence, so a removal is never undone by a reused number
    assert newer(rec(seq=6, expires=50.0, value=b"").tombstone(seq=6), rec(seq=6, expires=50.0))


def test_merge_all_keeps_one_live_record_per_entry():
    a1 = rec(kind="registration", entry="a", seq=1, value=b"a1")
    a2 = rec(kind="registration", entry="a", seq=2, value=b"a2")
    b1 = rec(kind="registration", entry="b", seq=9, value=b"b1")
    blob = rec(seq=3, value=b"blob")
    gone = rec(kind="registration", entry="c", expires=5.0)
    assert merge_all([a1, b1, a2, blob, gone], now=10.0) == [blob, a2, b1]


st_records = st.builds(
    Record,
    key=st.just(1),
    kind=st.just("blob"),
    entry=st.just(""),
    writer=st.sampled_from(["x", "y"]),
    value=st.binary(max_size=3),
    expires=st.sampled_from([10.0, 20.0]),
    seq=st.integers(0, 4),
)


@given(st.lists(st_records, min_size=1, max_size=6), st.randoms())
def test_merge_is_order_independent(records, random):
    shuffled = list(records)
    random.shuffle(shuffled)
    a = None
    for r in records:
        a = merge(a, r)
    b = None
    for r in shuffled:
        b = merge(b, r)
    assert a == b


def test_signed_bytes_cover_the_content():
    r = rec(seq=1)
    assert r.signed_bytes() == rec(seq=1).signed_bytes()
    assert r.signed_bytes() != rec(seq=2).signed_bytes()
    assert r.signed_bytes() != attrs.evolve(r, value=b"w").signed_bytes()
    assert r.signed_bytes() != attrs.evolve(r, owner_key_id=b"k").signed_bytes()
