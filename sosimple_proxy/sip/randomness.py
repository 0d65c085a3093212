"""Random hex for tags and branches, without a system call each.

RFC 3261 19.3 wants tags with "at least 32 bits of randomness" and 8.1.1.7
branches unique in space and time; both must stay unguessable (a guessed
branch lets an off-path sender answer someone else's transaction).  So the
digits come from ``secrets``, but drawn 4 KiB at a time and sliced: the
same randomness as ``secrets.token_hex`` per item, one ``getrandom`` call
per few hundred tags instead of one each.
"""

from __future__ import annotations

import os
import secrets

__all__ = ["random_hex"]

_POOL_BYTES = 2048
_pool = ""


def random_hex(chars: int) -> str:
    """``chars`` random hex digits (4 bits each), never handed out twice."""
    global _pool
    pool = _pool
    if len(pool) < chars:
        pool = secrets.token_hex(max(_POOL_BYTES, chars))
    _pool = pool[chars:]
    return pool[:chars]


def _forget_pool() -> None:
    """A forked child must not hand out its parent's remaining digits."""
    global _pool
    _pool = ""


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)
