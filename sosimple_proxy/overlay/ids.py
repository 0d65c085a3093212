"""Ring arithmetic on ``2**m`` identifiers, and where names and nodes land.

Every position on the ring is an ``int`` in ``[0, 2**m)``.  Intervals are
read clockwise from their first bound and wrap around zero; an interval
whose two bounds are equal is the whole ring (minus the bound itself when
open), which is what Chord needs for a ring of one node.

Keys are SHA-256 digests truncated to their top ``m`` bits.  With the
``domain`` scheme (the paper's topological awareness) the top
``domain_bits`` come from the domain and the rest from the user part, so an
organisation's names are neighbours on the ring; a node with a home domain
takes its top bits from that domain, the rest from its public key, so it
lands in its organisation's region without choosing its exact place.
"""

from __future__ import annotations

import hashlib

import attrs

DEFAULT_BITS = 160
DIGEST_BITS = 256


def distance(a: int, b: int, m: int = DEFAULT_BITS) -> int:
    """Clockwise distance from ``a`` to ``b``."""
    return (b - a) & ((1 << m) - 1)


def add(a: int, delta: int, m: int = DEFAULT_BITS) -> int:
    """``a + delta`` on the ring."""
    return (a + delta) & ((1 << m) - 1)


def finger_start(n: int, i: int, m: int = DEFAULT_BITS) -> int:
    """The start of finger ``i`` (0-based) of node ``n``: ``n + 2**i``."""
    return (n + (1 << i)) & ((1 << m) - 1)


def in_open(x: int, a: int, b: int) -> bool:
    """``x`` in ``(a, b)`` clockwise; ``(a, a)`` is every id but ``a``."""
    if a < b:
        return a < x < b
    if a > b:
        return x > a or x < b
    return x != a


def in_half_open(x: int, a: int, b: int) -> bool:
    """``x`` in ``(a, b]`` clockwise; ``(a, a]`` is the whole ring.

    This is the range a node ``b`` whose predecessor is ``a`` is
    responsible for.
    """
    if a < b:
        return a < x <= b
    if a > b:
        return x > a or x <= b
    return True


def in_closed_open(x: int, a: int, b: int) -> bool:
    """``x`` in ``[a, b)`` clockwise; ``[a, a)`` is the whole ring."""
    if a < b:
        return a <= x < b
    if a > b:
        return x >= a or x < b
    return True


def digest_bits(data: bytes, bits: int) -> int:
    """The top ``bits`` bits of SHA-256(``data``) as an int."""
    if not 0 < bits <= DIGEST_BITS:
        raise ValueError(f"cannot take {bits} bits of a {DIGEST_BITS}-bit digest")
    return int.from_bytes(hashlib.sha256(data).digest(), "big") >> (DIGEST_BITS - bits)


def _bytes(name: str | bytes) -> bytes:
    return name.encode("utf-8") if isinstance(name, str) else name


def flat_key(name: str | bytes, m: int = DEFAULT_BITS) -> int:
    """key = SHA-256(name) truncated to ``m`` bits."""
    return digest_bits(_bytes(name), m)


def domain_key(user: str | bytes, domain: str | bytes, m: int = DEFAULT_BITS, domain_bits: int = 32) -> int:
    """Top ``domain_bits`` from SHA-256(domain), the rest from SHA-256(user).

    The domain is compared case-insensitively (as DNS does); the user part
    is taken as given.
    """
    if not 0 < domain_bits < m:
        raise ValueError(f"domain_bits must lie between 1 and {m - 1}, not {domain_bits}")
    dom = _bytes(domain).lower()
    high = digest_bits(dom, domain_bits)
    low = digest_bits(_bytes(user), m - domain_bits)
    return (high << (m - domain_bits)) | low


@attrs.frozen
class KeyScheme:
    """How a name becomes a key: ``flat`` or ``domain`` (site.ini ``key_scheme``).

    With ``domain``, a name ``user@domain`` is split at its last ``@``; a
    name without ``@`` (a blob's name, say) has no domain and gets its flat
    key, so it is spread over the whole ring like any other.
    """

    scheme: str = "flat"
    m: int = DEFAULT_BITS
    domain_bits: int = 32

    def __attrs_post_init__(self) -> None:
        if self.scheme not in ("flat", "domain"):
            raise ValueError(f"unknown key scheme {self.scheme!r}")
        if not 0 < self.m <= DIGEST_BITS:
            raise ValueError(f"m must lie between 1 and {DIGEST_BITS}, not {self.m}")
        if self.scheme == "domain" and not 0 < self.domain_bits < self.m:
            raise ValueError(f"domain_bits must lie between 1 and {self.m - 1}, not {self.domain_bits}")

    def key(self, name: str | bytes) -> int:
        """The ring key of ``name``."""
        raw = _bytes(name)
        if self.scheme == "domain" and b"@" in raw:
            user, _, domain = raw.rpartition(b"@")
            return domain_key(user, domain, self.m, self.domain_bits)
        return flat_key(raw, self.m)

    def domain_region(self, domain: str | bytes) -> tuple[int, int]:
        """The ``[first, last]`` ids of a domain's region (``domain`` scheme)."""
        if self.scheme != "domain":
            raise ValueError("only the domain key scheme has regions")
        shift = self.m - self.domain_bits
        high = digest_bits(_bytes(domain).lower(), self.domain_bits) << shift
        return high, high | ((1 << shift) - 1)


def node_id_from_public_key(
    public_key: bytes,
    m: int = DEFAULT_BITS,
    home_domain: str | bytes | None = None,
    domain_bits: int = 32,
) -> int:
    """A node's id: SHA-256 of its public key (DER), truncated to ``m`` bits.

    Deriving the id from the key means a node cannot pick its place (and so
    cannot pick which keys it is responsible for).  With a ``home_domain``
    the top ``domain_bits`` come from the domain instead, placing the node
    in its organisation's region; the rest still comes from its key.
    """
    if not public_key:
        raise ValueError("a node id needs a public key")
    if home_domain:
        return domain_key(public_key, home_domain, m, domain_bits)
    return flat_key(public_key, m)


def parse_node_id(text: str, m: int = DEFAULT_BITS) -> int:
    """A hex node id (site.ini ``node_id``, for tests), checked against ``m``."""
    word = text.strip().lower().removeprefix("0x")
    try:
        value = int(word, 16)
    except ValueError:
        raise ValueError(f"{text!r} is not a hex number") from None
    if value >= (1 << m):
        raise ValueError(f"{text!r} does not fit in {m} bits")
    return value


def format_id(value: int, m: int = DEFAULT_BITS) -> str:
    """A fixed-width hex string, so ids sort as text the way they sort as numbers."""
    return format(value, f"0{(m + 3) // 4}x")
