"""Digest nonce-counts shared by the worker processes of one proxy (issue 12).

A nonce-count accepted by one worker must not be accepted again by any
other (RFC 7616 3.4: "the server can detect request replays by maintaining
its own copy of this count"), as in a single process.

The choice: **every nonce has one owner worker, which alone keeps its
counts.**  The owner is read from the nonce itself: its first two random
bytes, as a number, modulo the worker count (:func:`owner`).  A worker
draws the random bytes of the nonces it issues so that it owns them
(:meth:`WorkerNonceCounts.random`), so the format, the length and the HMAC
are those of any other nonce of the realm; a nonce from another proxy of
the realm (shared ``nonce_secret_file``) has an owner here too.

- The usual case costs nothing: a phone's requests come from one socket or
  one connection, so they reach the worker that challenged it, which owns
  the nonce and checks the count in its own table, synchronously.
- A request whose nonce another worker owns (the phone changed port, a
  captured request played from elsewhere) is verified here in full
  (nonce HMAC and age, the password) and only the count is asked of the
  owner, through the parent (:class:`~sosimple_proxy.workers.protocol.AcceptCount`:
  two AMP round trips over Unix sockets, about 1 ms measured on a 2-core
  machine at load 14, against 2-3 us for a count kept here; the chain waits
  on a Deferred and the transaction absorbs retransmissions meanwhile).
  Nothing is asked for a wrong password.
- An owner that does not answer within :data:`ASK_TIMEOUT` (restarting, or
  gone) counts as FORGOTTEN: the phone gets ``stale=true`` and a nonce of
  the worker it talks to; a replay can never pass for lack of an answer.
- A worker that starts (again) knows none of its predecessor's counts, so
  nonces issued before it started are FORGOTTEN unless seen since
  (:meth:`~sosimple_proxy.security.nonces.NonceCounts.forget_before`).

Rejected: the parent keeping every count (a round trip on every
authenticated request, the common case included), and a worker refusing
others' nonces with ``stale=true`` (cheap, but a client that sends each
transaction from a new port could be challenged for ever).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from sosimple_proxy.security.nonces import (
    DEFAULT_MAX_TRACKED,
    CountVerdict,
    NonceCounts,
    nonce_random,
)
from sosimple_proxy.workers.protocol import AcceptCount

__all__ = ["WorkerNonceCounts", "owner", "NoncesParentSide", "NoncesWorkerSide", "ASK_TIMEOUT"]

log = Logger()

# Seconds a worker waits for the owner of a nonce to answer.
ASK_TIMEOUT = 2.0
# Workers beyond this could not all own nonces (two random bytes).
MAX_WORKERS = 0x10000


def owner(nonce: str, count: int) -> int:
    """The worker (of ``count``) that keeps the counts of ``nonce``."""
    return int.from_bytes(nonce_random(nonce)[:2], "big") % count


class WorkerNonceCounts:
    """Nonce-counts as worker ``index`` of ``count`` keeps them: its own
    nonces' here (``local``), the others' at their owner, asked through
    ``link()`` (the AMP line to the parent, None while there is none)."""

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float,
        index: int,
        count: int,
        link: Callable[[], Any],
        max_entries: int = DEFAULT_MAX_TRACKED,
        source: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not 0 <= index < count <= MAX_WORKERS:
            raise ValueError(f"worker {index} of {count}")
        self.clock = clock
        self.index = index
        self.count = count
        self.link = link
        self.source = source
        self.local = NonceCounts(clock, ttl, max_entries)
        # Nonces issued before this second are a predecessor's, or another
        # run's: their counts are unknown here (issued times are whole seconds).
        self.local.forget_before(int(clock.seconds()) - 1)
        self.asked = 0  # counts asked of other workers

    def random(self, n: int) -> bytes:
        """Random bytes for a nonce that this worker owns."""
        raw = bytearray(self.source(n))
        value = int.from_bytes(raw[:2], "big")
        value = value - value % self.count + self.index
        if value > 0xFFFF:
            value -= self.count
        raw[:2] = value.to_bytes(2, "big")
        return bytes(raw)

    def accept(self, nonce: str, issued: float, nc: int) -> CountVerdict | defer.Deferred:
        whose = owner(nonce, self.count)
        if whose == self.index:
            return self.local.accept(nonce, issued, nc)
        link = self.link()
        if link is None:
            return CountVerdict.FORGOTTEN
        self.asked += 1
        d = link.callRemote(AcceptCount, owner=whose, nonce=nonce, issued=issued, nc=nc)
        d.addTimeout(ASK_TIMEOUT, self.clock)
        return d.addCallbacks(lambda answer: CountVerdict(answer["verdict"]), self._unanswered, errbackArgs=(whose,))

    @staticmethod
    def _unanswered(failure: Any, whose: int) -> CountVerdict:
        log.info("nonce-count not checked at worker {owner} ({why}): the nonce is taken as stale",
                 owner=whose, why=failure.getErrorMessage() or failure.type.__name__)
        return CountVerdict.FORGOTTEN


class NoncesParentSide(amp.CommandLocator):
    """The parent passes a count to the nonce's owner (a base of the hub's
    protocol, whose ``hub`` has ``lines``, the workers' lines by index)."""

    hub: Any

    @AcceptCount.responder
    def accept_count(self, owner: int, nonce: str, issued: float, nc: int) -> Any:
        line = self.hub.lines.get(owner)
        if line is None:
            return {"verdict": CountVerdict.FORGOTTEN.value}
        return line.callRemote(AcceptCount, owner=owner, nonce=nonce, issued=issued, nc=nc)


class NoncesWorkerSide(amp.CommandLocator):
    """The owner's responder (a base of a worker's line to the parent)."""

    nonces: WorkerNonceCounts | None = None

    @AcceptCount.responder
    def accept_count(self, owner: int, nonce: str, issued: float, nc: int) -> dict:
        if self.nonces is None:
            return {"verdict": CountVerdict.FORGOTTEN.value}
        return {"verdict": self.nonces.local.accept(nonce, issued, nc).value}
