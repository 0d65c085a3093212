"""Which worker process of a proxy made a branch (``[proxy] workers``).

With several workers sharing the SIP ports (SO_REUSEPORT) the kernel hands
a response to whichever worker its addresses hash to, not to the one whose
client transaction sent the request.  Every branch a worker makes ends in
``.w<index>``, so the worker that receives the response can see whose it is
and hand it over (:mod:`.handoff`).  One process is one worker for its whole
life: the suffix is set once at startup, before any branch is made, and is
empty in a single-process proxy (branches stay as they were).
"""

from __future__ import annotations

import re

__all__ = ["SUFFIX", "set_worker", "owner"]

#: appended to every branch this process makes; "" without workers
SUFFIX = ""

_TAG = re.compile(r"\.w([0-9]{1,3})$")


def set_worker(index: int | None) -> None:
    """Mark this process as worker ``index`` (None: no workers)."""
    global SUFFIX
    SUFFIX = "" if index is None else f".w{index}"


def owner(branch: str) -> int | None:
    """The worker whose branch this is, or None (not one of ours, or no workers)."""
    m = _TAG.search(branch)
    return int(m.group(1)) if m else None
