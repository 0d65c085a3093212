"""Ring arithmetic and how names and nodes get their ids."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sosimple_proxy.overlay import ids

M = 8
ring = st.integers(min_value=0, max_value=(1 << M) - 1)


def brute(x: int, a: int, b: int, include_a: bool, include_b: bool) -> bool:
    """Walk clockwise from a to b, one step at a time."""
    members = set()
    if include_a:
        members.add(a)
    cur = (a + 1) % (1 << M)
    while cur != b:
        members.add(cur)
        cur = (cur + 1) % (1 << M)
    if a == b:
        # (a, a) / (a, a] / [a, a): Chord reads these as (nearly) the whole ring
        members = set(range(1 << M)) - ({a} if not (include_a or include_b) else set())
    elif include_b:
        members.add(b)
    return x in members


@given(ring, ring, ring)
def test_in_open_matches_a_walk(x, a, b):
    assert ids.in_open(x, a, b) == brute(x, a, b, False, False)


@given(ring, ring, ring)
def test_in_half_open_matches_a_walk(x, a, b):
    assert ids.in_half_open(x, a, b) == brute(x, a, b, False, True)


@given(ring, ring, ring)
def test_in_closed_open_matches_a_walk(x, a, b):
    assert ids.in_closed_open(x, a, b) == brute(x, a, b, True, False)


def test_wrap_around_examples():
    assert ids.in_open(1, 250, 5)
    assert ids.in_open(252, 250, 5)
    assert not ids.in_open(5, 250, 5)
    assert ids.in_half_open(5, 250, 5)
    assert not ids.in_half_open(250, 250, 5)
    assert not ids.in_half_open(100, 250, 5)
    # a ring of one node owns everything
    assert ids.in_half_open(7, 7, 7) and ids.in_half_open(8, 7, 7)
    assert not ids.in_open(7, 7, 7) and ids.in_open(8, 7, 7)


@given(ring, ring)
def test_distance_and_add_invert(a, b):
    d = ids.distance(a, b, M)
    assert 0 <= d < 1 << M
    assert ids.add(a, d, M) == b


def test_finger_start_wraps():
    assert ids.finger_start(250, 3, M) == 2
    assert ids.finger_start(0, 7, M) == 128


def test_flat_key_is_truncated_sha256():
    digest = int.from_bytes(hashlib.sha256(b"alice@example.com").digest(), "big")
    assert ids.flat_key("alice@example.com") == digest >> (256 - 160)
    assert ids.flat_key(b"alice@example.com", 16) == digest >> 240
    assert ids.flat_key("x") < 1 << 160


def test_domain_key_takes_high_bits_from_domain():
    k1 = ids.domain_key("alice", "Example.COM", 160, 32)
    k2 = ids.domain_key("bob", "example.com", 160, 32)
    assert k1 >> 128 == k2 >> 128 == ids.digest_bits(b"example.com", 32)
    assert k1 & ((1 << 128) - 1) == ids.digest_bits(b"alice", 128)
    assert k1 != k2
    with pytest.raises(ValueError):
        ids.domain_key("a", "b", 160, 160)


def test_key_scheme():
    flat = ids.KeyScheme()
    assert flat.key("alice@example.com") == ids.flat_key("alice@example.com")
    dom = ids.KeyScheme("domain", 160, 32)
    assert dom.key("alice@example.com") == ids.domain_key("alice", "example.com")
    # the last @ separates the domain
    assert dom.key("a@b@example.com") == ids.domain_key("a@b", "example.com")
    # names without a domain are spread over the whole ring
    assert dom.key("config") == ids.flat_key("config")
    lo, hi = dom.domain_region("example.com")
    assert lo <= dom.key("zed@example.com") <= hi
    assert hi - lo == (1 << 128) - 1
    with pytest.raises(ValueError):
        ids.KeyScheme("round")
    with pytest.raises(ValueError):
        ids.KeyScheme("domain", 16, 16)
    with pytest.raises(ValueError):
        flat.domain_region("example.com")


def test_node_id_from_public_key():
    pub = b"0\x2a" + bytes(range(40))
    assert ids.node_id_from_public_key(pub) == ids.flat_key(pub)
    homed = ids.node_id_from_public_key(pub, 160, "Example.com", 32)
    lo, hi = ids.KeyScheme("domain").domain_region("example.com")
    assert lo <= homed <= hi
    assert homed & ((1 << 128) - 1) == ids.digest_bits(pub, 128)
    with pytest.raises(ValueError):
        ids.node_id_from_public_key(b"")


def test_parse_and_format_ids():
    assert ids.parse_node_id("0xff", 8) == 255
    assert ids.format_id(255, 160) == "0" * 38 + "ff"
    assert ids.parse_node_id(ids.format_id(12345)) == 12345
    with pytest.raises(ValueError):
        ids.parse_node_id("100", 8)
    with pytest.raises(ValueError):
        ids.parse_node_id("zz")
