"""Digest algorithms by their RFC 8760 names, and the RFC 7616 computations.

    HA1      = H(username ":" realm ":" password)              (RFC 7616 3.4.2)
    HA1-sess = H(HA1 ":" nonce ":" cnonce)                     (the -sess variants)
    HA2      = H(method ":" digest-uri)                        (qop=auth, 3.4.3)
    response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)  (3.4.1)

Everything is lower-case hex, as the RFCs define the "unq(...)" strings;
text is UTF-8 (SIP has no other charset).  SHA-512-256 is not offered:
the users file keeps MD5 and SHA-256 HA1s only, and no SIP phone we test
asks for it.
"""

from __future__ import annotations

import enum
import hashlib


class Algorithm(enum.Enum):
    """An algorithm we can verify; ``value`` is its RFC 8760 name."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"

    @property
    def base(self) -> "Algorithm":
        """The algorithm without -sess: whose HA1 the users file stores."""
        return {Algorithm.MD5_SESS: Algorithm.MD5, Algorithm.SHA256_SESS: Algorithm.SHA256}.get(self, self)

    @property
    def is_session(self) -> bool:
        return self is not self.base

    @property
    def hex_length(self) -> int:
        return 32 if self.base is Algorithm.MD5 else 64

    def hash(self, text: str) -> str:
        """H(text): the lower-case hex digest of the UTF-8 bytes."""
        name = "md5" if self.base is Algorithm.MD5 else "sha256"
        return hashlib.new(name, text.encode("utf-8")).hexdigest()

    @classmethod
    def named(cls, name: str) -> "Algorithm":
        """By name, case-insensitively (RFC 7616 3.3: "algorithm" values are tokens
        compared without regard to case); ValueError for one we do not know."""
        for algorithm in cls:
            if algorithm.value.lower() == name.lower():
                return algorithm
        raise ValueError(f"unknown digest algorithm {name!r} (known: {', '.join(a.value for a in cls)})")


DEFAULT_ALGORITHMS: tuple[Algorithm, ...] = (Algorithm.SHA256, Algorithm.MD5)


def parse_algorithms(text: str) -> tuple[Algorithm, ...]:
    """``"SHA-256 MD5"`` (spaces or commas) -> the algorithms in order; ValueError if bad."""
    names = text.replace(",", " ").split()
    if not names:
        raise ValueError("no algorithm given")
    algorithms = tuple(Algorithm.named(name) for name in names)
    if len(set(algorithms)) != len(algorithms):
        raise ValueError(f"an algorithm is listed twice in {text!r}")
    return algorithms


def ha1(algorithm: Algorithm, user: str, realm: str, password: str) -> str:
    """H(user:realm:password), what the users file stores for the algorithm's base."""
    return algorithm.base.hash(f"{user}:{realm}:{password}")


def response(
    algorithm: Algorithm,
    stored_ha1: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str,
    method: str,
    digest_uri: str,
) -> str:
    """The ``response`` a client holding the password sends, for qop=auth."""
    a1 = stored_ha1
    if algorithm.is_session:
        a1 = algorithm.hash(f"{stored_ha1}:{nonce}:{cnonce}")
    ha2 = algorithm.hash(f"{method}:{digest_uri}")
    return algorithm.hash(f"{a1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
