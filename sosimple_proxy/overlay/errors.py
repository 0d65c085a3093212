"""What the ring's operations fail with; callers above the overlay catch these."""

from __future__ import annotations


class OverlayError(Exception):
    """The ring could not do what was asked."""


class LookupFailed(OverlayError):
    """No live node answered for the key within the lookup's time."""


class NotVouched(LookupFailed):
    """Holders answered, held nothing, and none of them has synced its range
    yet (a ring still settling): not a miss, and not yet an answer."""


class StoreFailed(OverlayError):
    """No node took the records."""


class NotRunning(OverlayError):
    """The node has left or was never started."""


class NotAdmitted(OverlayError):
    """An open ring's node did not prove the key its id is derived from
    (see :mod:`.admission`), or this node has no key to prove."""


class StoreRefused(OverlayError):
    """This node's store cannot keep records now (its disk is full, say):
    the writer counts the copy as not made and the ring's other copies serve."""
