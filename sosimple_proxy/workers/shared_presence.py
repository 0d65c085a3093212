"""Presence with ``[proxy] workers``: every worker runs the presence agent,
on the parent's ring node (issue 12).

The agent (:mod:`sosimple_proxy.presence.agent`) keeps everything it shares
in the ring: publications at the presentity's key, subscriptions at the
watchers' key, and it follows a presentity through ``watch(key)``.  A
worker has no ring node of its own, so its agent gets a
:class:`RemotePresenceRing`: the methods of
:class:`~sosimple_proxy.presence.ring.PresenceRing`, each one AMP call to
the parent, whose own ``PresenceRing`` on the proxy's one ring node does
the work (writes, tombstones, watches).  A watch lives in the parent and
pushes each change of the key to the worker that asked
(:class:`~sosimple_proxy.workers.protocol.PresenceChanged`).

So a subscription accepted by any worker is that worker's (its dialog,
its NOTIFYs: their answers come back to it by their branch), a PUBLISH
at any worker reaches every watcher through the ring, as between proxies,
and a refresh that reaches another worker (the phone changed port, or
its worker was restarted) takes the subscription over from the ring, as
another proxy of the ring would.  The parent's watches for a worker end
with its line.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from sosimple_proxy.overlay.wire import decode_records, encode_records
from sosimple_proxy.presence.ring import SUBSCRIPTION, RingUnavailable, watchers_key_name
from sosimple_proxy.workers.protocol import (
    PresenceChanged,
    PresenceGet,
    PresenceHello,
    PresencePublish,
    PresenceRemove,
    PresenceSubscription,
    PresenceWatch,
)

__all__ = ["RemotePresenceRing", "PresenceParentSide", "PresenceWorkerSide"]

log = Logger()


def _lost(failure: Any) -> None:
    log.debug("presence: message between processes lost: {why}", why=failure.getErrorMessage())


class _RemoteWatch:
    def __init__(self, ring: RemotePresenceRing, watch: int) -> None:
        self.ring = ring
        self.watch = watch

    def cancel(self) -> None:
        self.ring._unwatch(self.watch)


class RemotePresenceRing(Service):
    """What the presence agent reads and writes in the ring, through the
    parent (``link()``: the AMP line, None while there is none).  Its
    writer (the parent node's) is asked once the worker serves; until the
    parent answers (its node may still be joining) the ring counts as
    unavailable, as a joining node does (the agent answers 480)."""

    def __init__(self, link: Callable[[], Any]) -> None:
        self.link = link
        self._writer: str | None = None
        self._asking = False
        self._watches: dict[int, Callable[[list[Any]], Any]] = {}
        self._next = 0

    def startService(self) -> None:
        super().startService()
        self._ask()

    def _ask(self) -> None:
        line = self.link()
        if line is None or self._asking:
            return
        self._asking = True

        def known(answer: dict) -> None:
            self._writer = answer["writer"]

        def done(result: Any) -> None:
            self._asking = False
            if isinstance(result, Failure):
                log.debug("presence: the parent's ring is not ready: {why}", why=result.getErrorMessage())

        line.callRemote(PresenceHello).addCallback(known).addBoth(done)

    @property
    def node(self) -> Any:
        """The line to the parent; RingUnavailable while there is none, or
        the parent's node has not joined."""
        line = self.link()
        if line is None:
            raise RingUnavailable("no line to the parent process")
        if self._writer is None:
            self._ask()
            raise RingUnavailable("not joined to the ring yet")
        return line

    @property
    def writer(self) -> str:
        self.node  # noqa: B018 (raises while unavailable)
        assert self._writer is not None
        return self._writer

    def watch(self, presentity: str, callback: Callable[[list[Any]], Any]) -> _RemoteWatch:
        line = self.node
        self._next += 1
        watch = self._next
        self._watches[watch] = callback
        line.callRemote(PresenceWatch, name=presentity, watch=watch, cancel=False).addErrback(_lost)
        return _RemoteWatch(self, watch)

    def _unwatch(self, watch: int) -> None:
        if self._watches.pop(watch, None) is None:
            return
        line = self.link()
        if line is not None:
            line.callRemote(PresenceWatch, name="", watch=watch, cancel=True).addErrback(_lost)

    def changed(self, watch: int, records: bytes) -> None:
        """The parent pushed watch ``watch``'s records."""
        callback = self._watches.get(watch)
        if callback is not None:
            callback(list(decode_records(records)))

    def _get(self, name: str, kind: str) -> defer.Deferred:
        try:
            line = self.node
        except RingUnavailable as e:
            return defer.fail(e)
        d = line.callRemote(PresenceGet, name=name, kind=kind)
        return d.addCallback(lambda answer: list(decode_records(answer["records"])))

    def get(self, presentity: str) -> defer.Deferred:
        return self._get(presentity, "")

    def get_subscriptions(self, presentity: str) -> defer.Deferred:
        return self._get(watchers_key_name(presentity), SUBSCRIPTION)

    def put_publication(self, presentity: str, etag: str, body: bytes, expires_at: float,
                        replacing: list[Any] = ()) -> defer.Deferred:  # type: ignore[assignment]
        return self.node.callRemote(PresencePublish, presentity=presentity, etag=etag, body=body,
                                    expires_at=expires_at, replacing=encode_records(list(replacing)))

    def remove_records(self, records: list[Any]) -> defer.Deferred:
        line = self.node
        if not records:
            return defer.succeed(0)
        return line.callRemote(PresenceRemove, records=encode_records(records))

    def put_subscription(self, presentity: str, entry: str, value: bytes, expires_at: float) -> defer.Deferred:
        return self.node.callRemote(PresenceSubscription, presentity=presentity, entry=entry, value=value,
                                    expires_at=expires_at)

    def remove_subscription(self, presentity: str, entry: str) -> defer.Deferred:
        return self.node.callRemote(PresenceSubscription, presentity=presentity, entry=entry, value=b"",
                                    expires_at=0.0)


class PresenceParentSide(amp.CommandLocator):
    """The parent's responders (a base of the hub's protocol, whose ``hub``
    has ``presence``: a PresenceRing on the parent's node, or None)."""

    hub: Any

    def _ring(self) -> Any:
        ring = self.hub.presence
        if ring is None:
            raise RingUnavailable("presence is not served here")
        return ring

    @PresenceHello.responder
    def presence_hello(self) -> dict:
        return {"writer": self._ring().writer}

    @PresenceGet.responder
    def presence_get(self, name: str, kind: str) -> defer.Deferred:
        ring = self._ring()
        d = defer.maybeDeferred(ring.node.get, ring.key(name), kind or None)
        return d.addCallback(lambda records: {"records": encode_records(list(records))})

    @PresencePublish.responder
    def presence_publish(self, presentity: str, etag: str, body: bytes, expires_at: float, replacing: bytes) -> Any:
        d = self._ring().put_publication(presentity, etag, body, expires_at, list(decode_records(replacing)))
        return d.addCallback(lambda _: {})

    @PresenceRemove.responder
    def presence_remove(self, records: bytes) -> Any:
        return self._ring().remove_records(list(decode_records(records))).addCallback(lambda _: {})

    @PresenceSubscription.responder
    def presence_subscription(self, presentity: str, entry: str, value: bytes, expires_at: float) -> Any:
        ring = self._ring()
        if value:
            d = ring.put_subscription(presentity, entry, value, expires_at)
        else:
            d = ring.remove_subscription(presentity, entry)
        return d.addCallback(lambda _: {})

    @PresenceWatch.responder
    def presence_watch(self, name: str, watch: int, cancel: bool) -> dict:
        watches = self.presence_watches()
        old = watches.pop(watch, None)
        if old is not None:
            old.cancel()
        if not cancel:
            def push(records: list[Any]) -> None:
                self.callRemote(PresenceChanged, watch=watch, records=encode_records(list(records))).addErrback(_lost)

            watches[watch] = self._ring().watch(name, push)
        return {}

    def presence_watches(self) -> dict[int, Any]:
        """This worker's watches in the parent's node, by the worker's id."""
        return self.__dict__.setdefault("_presence_watches", {})

    def drop_presence_watches(self) -> None:
        """The worker's line is gone: so are its watches."""
        for w in self.presence_watches().values():
            w.cancel()
        self.presence_watches().clear()


class PresenceWorkerSide(amp.CommandLocator):
    """A worker's responder (a base of its line to the parent)."""

    presence: RemotePresenceRing | None = None

    @PresenceChanged.responder
    def presence_changed(self, watch: int, records: bytes) -> dict:
        if self.presence is not None:
            self.presence.changed(watch, records)
        return {}
