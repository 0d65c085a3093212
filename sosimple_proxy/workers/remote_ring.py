"""A ring as a worker process sees it: lookups go to the parent, whose
node is the proxy's one member of that ring (``[proxy] workers``).

It offers what :class:`~sosimple_proxy.location.ring.RingLocator` uses of
an overlay service: ``keys.key(aor)`` and ``node.get(key, kind)``.  The
"key" is the AoR itself; the parent turns it into the ring's key with its
own key scheme, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from sosimple_proxy.workers.protocol import Commit, RingGet, records_from_json

__all__ = ["RemoteRing", "remote_commit"]


class _AorIsKey:
    @staticmethod
    def key(aor: str) -> str:
        return aor


class _RemoteNode:
    joined = True

    def __init__(self, ring: RemoteRing) -> None:
        self.ring = ring

    def get(self, key: str, kind: str) -> defer.Deferred:
        link = self.ring.link()
        if link is None:
            return defer.fail(RuntimeError("no line to the parent process"))
        d = link.callRemote(RingGet, ring=self.ring.name, aor=key, kind=kind)
        return d.addCallback(lambda answer: records_from_json(answer["records"]))


class RemoteRing:
    """Ring ``name`` through ``link()`` (the AMP line to the parent, or None)."""

    keys = _AorIsKey()

    def __init__(self, name: str, link: Callable[[], Any]) -> None:
        self.name = name
        self.link = link
        self.node = _RemoteNode(self)
        # never fires: a worker publishes nothing itself (the parent does)
        self.ready: defer.Deferred = defer.Deferred()
        #: the presence agent's ring through the parent (shared_presence.py), or None
        self.presence: Any = None


def remote_commit(link: Callable[[], Any]) -> Callable[[str], defer.Deferred]:
    """A worker registrar's ``commit``: the parent, which writes the rings,
    says whether the write quorum took the AoR's new bindings (issue 15,
    as in one process).  No line to the parent: not stored (a 500 with
    Retry-After, never a 200 for a binding the ring may not have)."""

    def commit(aor: str) -> defer.Deferred:
        line = link()
        if line is None:
            return defer.succeed(False)
        ask = getattr(line, "commit", None)  # a WorkerLink: after its batch of deltas
        d = ask(aor) if ask is not None else line.callRemote(Commit, aor=aor)
        return d.addCallback(lambda answer: answer["ok"])

    return commit
