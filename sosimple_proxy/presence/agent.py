"""The presence agent: SUBSCRIBE and PUBLISH for our users' ``presence``.

RFC 3856 (the presence event package) over RFC 6665 (SIP events), PUBLISH
per RFC 3903, documents per RFC 3863 (:mod:`.pidf`).

- The proxy that accepts a SUBSCRIBE is that subscription's notifier: it
  keeps the dialog (:mod:`.dialog`), watches the presentity's key in the
  ring (``watch(key)``, :mod:`sosimple_proxy.overlay.watch`) and sends a
  NOTIFY whenever the presentity's document changes, at most one per
  ``notify_interval`` per subscription and one at a time (the last state
  wins).  Each subscription is also written to the ring (:mod:`.ring`).
- The document: every live publication's tuples; with none, derived from
  the presentity's registrations anywhere in the ring (open while a
  binding exists).
- PUBLISH writes publications as ring records at the presentity's key, so
  whichever proxy a watcher uses hears of them through its watch.

What the agent does not serve (other event packages, other domains,
dialogs it does not hold) it leaves to the proxy: ``handle`` answers
None, and the chain goes on.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.location.regrecord import canonical_aor
from sosimple_proxy.presence import pidf, winfo
from sosimple_proxy.presence.dialog import EVENT, Subscription, dialog_id, event_package, from_subscribe, notify_request
from sosimple_proxy.presence.ring import (
    PresenceRing,
    RingUnavailable,
    allow_list,
    publications,
    registered_contacts,
    subscription_watchers,
    watchers_key_name,
)
from sosimple_proxy.sip.headers import parse_from, parse_to
from sosimple_proxy.sip.interfaces import IClientTransactionUser
from sosimple_proxy.sip.message import Request, Response, make_response, new_tag

log = Logger()

POLICIES = ("domain", "all", "list")
#: the event packages the agent serves
PACKAGES = (EVENT, winfo.PACKAGE)
CONTENT_TYPES = {EVENT: pidf.CONTENT_TYPE, winfo.PACKAGE: winfo.CONTENT_TYPE}


@attrs.frozen
class PresenceSettings:
    """``[presence]`` as the agent uses it."""

    max_subscriptions: int = 10000
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    notify_interval: float = 0.5
    policy: str = "domain"


@attrs.frozen
class Sender:
    """Who the agent sends through: ``send(request, flow, user)`` (a
    Deferred of the client transaction) and ``contact(transport)``."""

    send: Callable[[Request, Any, Any], defer.Deferred]
    contact: Callable[[str], str]


class Presentity:
    """A presentity this notifier has subscriptions to: its watch and its document."""

    def __init__(self, aor: str, package: str = EVENT) -> None:
        self.aor = aor
        self.package = package
        self.watch: Any = None
        self.records: list[Any] | None = None
        self.body: bytes | None = None
        self.allowed: set[str] | None = None
        self.subs: dict[str, Subscription] = {}


@implementer(IClientTransactionUser)
class _NotifyUser:
    """Hears the answer to one NOTIFY."""

    def __init__(self, agent: PresenceAgent, sub: Subscription) -> None:
        self.agent = agent
        self.sub = sub

    def responseReceived(self, response: Response, transaction: Any) -> None:
        if response.status >= 200:
            self.agent._notify_answered(self.sub, response, getattr(transaction, "failure", None))


def _expires(request: Request, default: int) -> int | None:
    value = request.headers.get("expires")
    if value is None:
        return default
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


class PresenceAgent:
    """Notifier and event state compositor for our users' presence."""

    def __init__(
        self,
        ring: PresenceRing,
        clock: Any,
        sender: Sender,
        settings: PresenceSettings,
        is_ours: Callable[[Any], bool],
        aor: Callable[[Any], str],
        authenticating: bool = False,
    ) -> None:
        self.ring = ring
        self.clock = clock
        self.sender = sender
        self.settings = settings
        self.is_ours = is_ours
        self.aor = aor
        #: with digest authentication, only the authenticated user publishes for themselves
        self.authenticating = authenticating
        self.presentities: dict[str, Presentity] = {}
        self.dialogs: dict[str, Subscription] = {}
        self.notifies_sent = 0
        self.stopped = False

    # ------------------------------------------------------------ dispatch

    def handle(self, request: Request, source: Any, trusted: bool, user: str | None, to_self: bool) -> Any:
        """A Response, a Deferred of one, or None (not ours: the proxy goes on)."""
        method = request.method
        if method not in ("SUBSCRIBE", "PUBLISH") or self.stopped:
            return None
        package, _ = event_package(request.headers.get("event"))
        if method == "SUBSCRIBE":
            to_tag = parse_to(request.headers.get("to")).tag
            if to_tag:
                frm = parse_from(request.headers.get("from"))
                sub = self.dialogs.get(dialog_id(request.call_id or "", to_tag, frm.tag or ""))
                if sub is not None:
                    return self._refresh(request, sub)
                if to_self:
                    # another notifier's dialog (it died; the watcher's refresh
                    # came here): taken over from the ring, or 481
                    return self._take_over(request, to_tag, frm.tag or "", source)
                return None
        if to_self:
            if package not in PACKAGES:
                # RFC 6665 4.2.1: "... unknown event package ... MUST respond with 489"
                return make_response(request, 489, "Bad Event", extra=[("Allow-Events", ", ".join(PACKAGES))])
            return None
        uri = request.ruri
        served = PACKAGES if method == "SUBSCRIBE" else (EVENT,)
        if package not in served or not getattr(uri, "user", None) or not self.is_ours(uri):
            return None
        presentity = self.aor(uri)
        if method == "SUBSCRIBE":
            return self._subscribe(request, presentity, source, trusted, user)
        return self._publish(request, presentity, trusted, user)

    def _sender_aor(self, request: Request, user: str | None) -> str:
        frm = parse_from(request.headers.get("from"))
        aor = canonical_aor(f"{frm.uri.user or ''}@{frm.uri.host or ''}")
        if user:
            # authentication checked the From is this user of ours
            return canonical_aor(f"{user}@{frm.uri.host or ''}")
        return aor

    # ------------------------------------------------------------ SUBSCRIBE

    def _subscribe(self, request: Request, presentity: str, source: Any, trusted: bool, user: str | None) -> Any:
        s = self.settings
        expires = _expires(request, s.default_expires)
        if expires is None:
            return make_response(request, 400, "Bad Request: Expires")
        if 0 < expires < s.min_expires:
            # RFC 6665 4.2.1.1: too short -> 423 with Min-Expires
            return make_response(request, 423, "Interval Too Brief", extra=[("Min-Expires", str(s.min_expires))])
        expires = min(expires, s.max_expires)
        package, _ = event_package(request.headers.get("event"))
        ctype = CONTENT_TYPES[package]
        accept = ",".join(request.headers.values("accept")).lower()
        if accept.strip() and not any(t in accept for t in (ctype, "application/*", "*/*")):
            # RFC 3856 6.7: PIDF is the format every watcher must accept (RFC 3857 6.7: watcherinfo)
            return make_response(request, 406, "Not Acceptable", extra=[("Accept", ctype)])
        if not request.headers.get_all("contact"):
            return make_response(request, 400, "Bad Request: a SUBSCRIBE needs a Contact")
        if expires > 0 and len(self.dialogs) >= s.max_subscriptions:
            return make_response(request, 503, "Service Unavailable: too many subscriptions", extra=[("Retry-After", "60")])
        watcher = self._sender_aor(request, user)
        try:
            self.ring.node
        except RingUnavailable:
            return make_response(request, 480, "Temporarily Unavailable: not joined to the ring yet")
        if package == winfo.PACKAGE:
            # RFC 3857 5.1: who watches a presentity is the presentity's business
            if trusted or watcher == presentity:
                return self._accept(request, presentity, watcher, expires, source)
            return make_response(request, 403, "Forbidden: only the presentity sees its watchers")
        if trusted or s.policy == "all":
            return self._accept(request, presentity, watcher, expires, source)
        if s.policy == "domain":
            if watcher.rpartition("@")[2] == presentity.rpartition("@")[2] or watcher == presentity:
                return self._accept(request, presentity, watcher, expires, source)
            return make_response(request, 403, "Forbidden: not allowed to watch this presentity")
        d = self.ring.get(presentity)

        def decided(records: list[Any]) -> Response:
            allowed = allow_list(records) or set()
            if watcher == presentity or watcher in allowed:
                return self._accept(request, presentity, watcher, expires, source)
            return make_response(request, 403, "Forbidden: not on the presentity's allow list")

        def failed(f: Any) -> Response:
            log.info("presence: allow list of {p} not read: {why}", p=presentity, why=f.getErrorMessage())
            return make_response(request, 480, "Temporarily Unavailable: the ring did not answer")

        return d.addCallbacks(decided, failed)

    def _flow(self, request: Request, source: Any) -> Any:
        """The watcher's own source, when the SUBSCRIBE came straight from it."""
        if request.headers.get_all("record-route") or len(request.vias) != 1:
            return None
        return source

    def _accept(self, request: Request, presentity: str, watcher: str, expires: int, source: Any) -> Response:
        tag = new_tag()
        now = self.clock.seconds()
        try:
            sub = from_subscribe(request, presentity, watcher, tag, now + expires, self._flow(request, source))
        except Exception as e:
            return make_response(request, 400, f"Bad Request: {e}")
        transport = getattr(sub.flow, "transport", None) or "udp"
        contact = self.sender.contact(transport)
        # RFC 6665 4.2.1.1: the 200 carries the Expires the subscription got
        response = make_response(
            request, 200, "OK", to_tag=tag, extra=[("Expires", str(expires)), ("Contact", contact)]
        )
        log.info("presence: {w} subscribes to {p} for {n} s", w=watcher, p=presentity, n=expires)
        self.dialogs[sub.id] = sub
        pres = self._presentity(presentity, sub.package)
        pres.subs[sub.id] = sub
        if expires == 0:
            # a fetch: one NOTIFY with the state, terminated (RFC 6665 4.4.3)
            self.clock.callLater(0, self._end_when_known, sub, now + self.FETCH_WAIT)
        else:
            sub.timer = self.clock.callLater(expires, self._end, sub, "timeout")
            self._store(sub)
            # RFC 6665 4.2.1.2: a NOTIFY right after accepting (once the state is known)
            self.clock.callLater(0, self._kick, sub)
        return response

    def _refresh(self, request: Request, sub: Subscription) -> Response:
        if request.cseq.seq <= sub.remote_cseq:
            # RFC 3261 12.2.2: a lower CSeq within the dialog MUST get 500
            return make_response(request, 500, "Server Internal Error: CSeq out of order")
        sub.remote_cseq = request.cseq.seq
        expires = _expires(request, self.settings.default_expires)
        if expires is None:
            return make_response(request, 400, "Bad Request: Expires")
        if 0 < expires < self.settings.min_expires:
            return make_response(request, 423, "Interval Too Brief", extra=[("Min-Expires", str(self.settings.min_expires))])
        expires = min(expires, self.settings.max_expires)
        # SUBSCRIBE is a target refresh request (RFC 6665 4.1.2.1): the 2xx carries our Contact
        contact = self.sender.contact(getattr(sub.flow, "transport", None) or "udp")
        response = make_response(request, 200, "OK", extra=[("Expires", str(expires)), ("Contact", contact)])
        if expires == 0:
            # the watcher unsubscribes: a last NOTIFY, terminated (RFC 6665 4.2.1.4)
            self.clock.callLater(0, self._end, sub, "timeout")
            return response
        sub.expires_at = self.clock.seconds() + expires
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        sub.timer = self.clock.callLater(expires, self._end, sub, "timeout")
        self._store(sub)
        # RFC 6665 4.2.1.2: a refresh is answered by a NOTIFY too
        sub.last_body = None
        self.clock.callLater(0, self._kick, sub)
        return response

    def _take_over(self, request: Request, to_tag: str, from_tag: str, source: Any) -> Any:
        """A refresh of a dialog another notifier of the ring kept: if the ring
        holds that subscription, it becomes ours (our Contact in the 200
        moves the watcher's later requests here); else 481 (RFC 6665
        4.1.2.4: the watcher then subscribes anew)."""
        unknown = make_response(request, 481, "Subscription Does Not Exist")
        to_uri = parse_to(request.headers.get("to")).uri
        if not getattr(to_uri, "user", None) or not self.is_ours(to_uri):
            return unknown
        presentity = self.aor(to_uri)
        wanted = "/" + dialog_id(request.call_id or "", to_tag, from_tag)
        try:
            d = self.ring.get_subscriptions(presentity)
        except RingUnavailable:
            return unknown

        def found(records: list[Any]) -> Response:
            record = next((r for r in records if r.entry.endswith(wanted)), None)
            if record is None or self.stopped:
                return unknown
            if dialog_id(request.call_id or "", to_tag, from_tag) in self.dialogs:
                return self._refresh(request, self.dialogs[dialog_id(request.call_id or "", to_tag, from_tag)])
            try:
                sub = Subscription.from_json(record.value, request.cseq.seq - 1)
            except Exception:
                return unknown
            sub.flow = self._flow(request, source)
            log.info("presence: taking over {w}'s subscription to {p} from {old}", w=sub.watcher, p=sub.presentity,
                     old=record.entry.split("/", 1)[0])
            self.dialogs[sub.id] = sub
            self._presentity(presentity, sub.package).subs[sub.id] = sub
            sub.timer = self.clock.callLater(max(0.0, sub.expires_at - self.clock.seconds()), self._end, sub, "timeout")
            self.ring.remove_records([record]).addErrback(lambda f: None)
            return self._refresh(request, sub)

        return d.addCallbacks(found, lambda f: unknown)

    # ------------------------------------------------------------ the state

    @staticmethod
    def _pkey(aor: str, package: str) -> str:
        return aor if package == EVENT else f"{package}:{aor}"

    def _of(self, sub: Subscription) -> Presentity | None:
        return self.presentities.get(self._pkey(sub.presentity, sub.package))

    def _presentity(self, aor: str, package: str = EVENT) -> Presentity:
        pkey = self._pkey(aor, package)
        pres = self.presentities.get(pkey)
        if pres is None:
            pres = self.presentities[pkey] = Presentity(aor, package)
            # presence watches the presentity's key; its watcher information the watchers' key
            name = aor if package == EVENT else watchers_key_name(aor)
            try:
                pres.watch = self.ring.watch(name, lambda records: self._changed(pres, records))
            except RingUnavailable:
                pass
        return pres

    def _changed(self, pres: Presentity, records: list[Any]) -> None:
        """The presentity's records changed somewhere in the ring."""
        pres.records = records
        entity = f"sip:{pres.aor}"
        if pres.package == winfo.PACKAGE:
            body = winfo.document(entity, subscription_watchers(records))
        else:
            pres.allowed = allow_list(records)
            published = publications(records)
            if published:
                body = pidf.compose(entity, [(etag, doc) for etag, doc, _ in published])
            else:
                body = pidf.derived(entity, registered_contacts(records))
        if body == pres.body:
            return
        pres.body = body
        for sub in list(pres.subs.values()):
            self._kick(sub)

    # ------------------------------------------------------------ NOTIFY

    def _kick(self, sub: Subscription) -> None:
        """The watcher is owed a NOTIFY: send it now, or once the one in
        flight is answered and ``notify_interval`` has passed."""
        if sub.ended or sub.expires_at <= self.clock.seconds():
            return  # ended, or a fetch: its one NOTIFY is the terminated one
        pres = self._of(sub)
        if pres is None or pres.body is None or pres.body == sub.last_body:
            return  # the state is not known yet (it comes with the watch), or unchanged
        if sub.in_flight is not None:
            sub.again = True
            return
        wait = sub.last_sent + self.settings.notify_interval - self.clock.seconds()
        if wait > 0:
            if not sub.again:
                sub.again = True
                self.clock.callLater(wait, self._again, sub)
            return
        self._send(sub, pres.body)

    def _again(self, sub: Subscription) -> None:
        if sub.in_flight is None:
            sub.again = False
            self._kick(sub)

    def _state(self, sub: Subscription) -> str:
        left = max(0, int(sub.expires_at - self.clock.seconds()))
        return f"active;expires={left}"

    def _send(self, sub: Subscription, body: bytes | None, state: str | None = None) -> None:
        contact = self.sender.contact(getattr(sub.flow, "transport", None) or "udp")
        if body is not None:
            sub.last_body = body
            if sub.package == winfo.PACKAGE:
                sub.winfo_version += 1
                body = winfo.numbered(body, sub.winfo_version)
        request = notify_request(sub, state or self._state(sub), body, contact, CONTENT_TYPES[sub.package])
        sub.last_sent = self.clock.seconds()
        final = state is not None and state.startswith("terminated")
        marker = object()
        sub.in_flight = None if final else marker
        self.notifies_sent += 1
        d = self.sender.send(request, sub.flow, _NotifyUser(self, sub))

        def failed(f: Any) -> None:
            log.info("presence: NOTIFY to {w} not sent: {why}", w=sub.watcher, why=f.getErrorMessage())
            if sub.in_flight is marker:
                sub.in_flight = None
            if not final:
                self._remove(sub)

        d.addErrback(failed)

    def _notify_answered(self, sub: Subscription, response: Response, failure: Any) -> None:
        if sub.ended:
            return
        sub.in_flight = None
        status = response.status
        if status == 481 or status == 408 or failure is not None or (400 <= status < 500 and status != 423) or status >= 600:
            # RFC 6665 4.2.2: "a 481 ... the notifier MUST remove the
            # subscription"; after a timeout (Timer F) it SHOULD.
            log.info("presence: {w} answered NOTIFY {s}: subscription to {p} removed", w=sub.watcher, s=status, p=sub.presentity)
            self._remove(sub)
            return
        if sub.again:
            sub.again = False
            self._kick(sub)

    # ------------------------------------------------------------ ending

    #: how long a fetch waits for the presentity's state before answering without it
    FETCH_WAIT = 2.0

    def _end_when_known(self, sub: Subscription, deadline: float) -> None:
        pres = self._of(sub)
        if pres is not None and pres.body is None and self.clock.seconds() < deadline:
            self.clock.callLater(0.05, self._end_when_known, sub, deadline)
            return
        self._end(sub, "timeout")

    def _end(self, sub: Subscription, reason: str) -> None:
        """A final NOTIFY (RFC 6665 4.2.2: "terminated" with a reason), then gone."""
        if sub.ended:
            return
        pres = self._of(sub)
        body = pres.body if pres is not None else None
        try:
            self._send(sub, body, f"terminated;reason={reason}")
        except Exception:
            log.failure("presence: final NOTIFY to {w} not sent", w=sub.watcher)
        self._remove(sub)

    def _remove(self, sub: Subscription) -> None:
        if sub.ended:
            return
        sub.ended = True
        if sub.timer is not None and sub.timer.active():
            sub.timer.cancel()
        self.dialogs.pop(sub.id, None)
        pres = self._of(sub)
        if pres is not None:
            pres.subs.pop(sub.id, None)
            if not pres.subs:
                del self.presentities[self._pkey(sub.presentity, sub.package)]
                if pres.watch is not None:
                    pres.watch.cancel()
        if sub.package != EVENT:
            return
        try:
            self.ring.remove_subscription(sub.presentity, self._entry(sub)).addErrback(lambda f: None)
        except RingUnavailable:
            pass

    def _entry(self, sub: Subscription) -> str:
        return f"{self.ring.writer}/{sub.id}"

    def _store(self, sub: Subscription) -> None:
        """The subscription in the ring (see the README: when the notifier dies).

        Only presence subscriptions: they are the watchers ``presence.winfo`` lists."""
        if sub.package != EVENT:
            return
        try:
            d = self.ring.put_subscription(sub.presentity, self._entry(sub), sub.to_json(self.ring.writer), sub.expires_at)
        except RingUnavailable:
            return
        d.addErrback(lambda f: log.info("presence: subscription not stored in the ring: {why}", why=f.getErrorMessage()))

    def stop(self) -> None:
        """Shutting down: every watcher hears ``terminated;reason=deactivated``
        (RFC 6665 4.2.2: it may subscribe again at once, through a proxy that runs)."""
        self.stopped = True
        for sub in list(self.dialogs.values()):
            self._end(sub, "deactivated")

    # ------------------------------------------------------------ PUBLISH

    def _publish(self, request: Request, presentity: str, trusted: bool, user: str | None) -> Any:
        s = self.settings
        publisher = self._sender_aor(request, user)
        if not trusted and (publisher != presentity or (self.authenticating and not user)):
            return make_response(request, 403, "Forbidden: only the presentity publishes its presence")
        expires = _expires(request, s.default_expires)
        if expires is None:
            return make_response(request, 400, "Bad Request: Expires")
        if 0 < expires < s.min_expires:
            # RFC 3903 6 step 5: too short -> 423 with Min-Expires
            return make_response(request, 423, "Interval Too Brief", extra=[("Min-Expires", str(s.min_expires))])
        expires = min(expires, s.max_expires)
        body = request.body or b""
        if body:
            ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
            if ctype != pidf.CONTENT_TYPE:
                # RFC 3903 6 step 6: a body we do not understand -> 415
                return make_response(request, 415, "Unsupported Media Type", extra=[("Accept", pidf.CONTENT_TYPE)])
            try:
                pidf.check(body)
            except pidf.PidfError as e:
                return make_response(request, 400, f"Bad Request: {e}")
        if_match = (request.headers.get("sip-if-match") or "").strip()
        if not if_match and not body:
            # RFC 3903 6 step 4: an initial PUBLISH must carry a state
            return make_response(request, 400, "Bad Request: an initial PUBLISH needs a body")
        if not if_match and expires == 0:
            return make_response(request, 400, "Bad Request: nothing to remove without SIP-If-Match")
        try:
            self.ring.node
        except RingUnavailable:
            return make_response(request, 480, "Temporarily Unavailable: not joined to the ring yet")
        d = self.ring.get(presentity) if if_match else defer.succeed([])
        d.addCallback(self._published, request, presentity, if_match, body, expires)

        def failed(f: Any) -> Response:
            log.info("presence: PUBLISH for {p} failed: {why}", p=presentity, why=f.getErrorMessage())
            return make_response(request, 480, "Temporarily Unavailable: the ring did not answer")

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _published(self, records: list[Any], request: Request, presentity: str, if_match: str, body: bytes, expires: int):
        from sosimple_proxy.presence.ring import PUBLICATION

        old = [r for r in records if r.kind == PUBLICATION and r.entry == if_match]
        if if_match and not old:
            # RFC 3903 6 step 3: an entity-tag we do not hold -> 412
            return make_response(request, 412, "Conditional Request Failed")
        if expires == 0:
            yield self.ring.remove_records(old)
            log.info("presence: {p} removed publication {e}", p=presentity, e=if_match)
            return make_response(request, 200, "OK", extra=[("Expires", "0")])
        if not body:
            # a refresh keeps the document (RFC 3903 4.3)
            published = publications(old)
            body = published[0][1] if published else b""
        etag = secrets.token_hex(8)  # a new entity-tag for each success (RFC 3903 6 step 8)
        yield self.ring.put_publication(presentity, etag, body, self.clock.seconds() + expires, replacing=old)
        log.info("presence: {p} published {e} for {n} s", p=presentity, e=etag, n=expires)
        return make_response(request, 200, "OK", extra=[("SIP-ETag", etag), ("Expires", str(expires))])
