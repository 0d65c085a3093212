"""One subscription's dialog, as the notifier keeps it (RFC 6665 over RFC 3261 12).

The SUBSCRIBE that creates a subscription creates a dialog (RFC 6665
4.2.1: the 2xx to SUBSCRIBE creates it, with our tag in the To).  We are
its UAS side; each NOTIFY is a request within it:

- Request-URI: the remote target, the SUBSCRIBE's Contact (RFC 3261 12.1.1);
- Route: the route set, the SUBSCRIBE's Record-Route in order (12.1.1:
  "The route set MUST be set to the list of URIs in the Record-Route
  header field from the request, taken in order");
- From: the SUBSCRIBE's To with our tag; To: its From; its Call-ID;
- CSeq: our own counter, one more per request (12.2.1.1: "The CSeq
  number MUST be incremented (by one) from the previous request");
- Event: the SUBSCRIBE's Event, ``id`` included (RFC 6665 8.2.1);
- Subscription-State (RFC 6665 4.2.2: every NOTIFY MUST carry one).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import attrs

from sosimple_proxy.sip.headers import parse_contacts, parse_from, parse_record_routes, parse_to
from sosimple_proxy.sip.message import Headers, Request

EVENT = "presence"


def event_package(value: str | None) -> tuple[str, str | None]:
    """``presence;id=7`` -> ("presence", "7"); missing -> ("", None)."""
    if not value:
        return "", None
    parts = [p.strip() for p in value.split(";")]
    package = parts[0].lower()
    event_id = None
    for p in parts[1:]:
        name, _, val = p.partition("=")
        if name.strip().lower() == "id":
            event_id = val.strip().strip('"')
    return package, event_id


def dialog_id(call_id: str, local_tag: str, remote_tag: str) -> str:
    return f"{call_id};{local_tag};{remote_tag}"


@attrs.define(eq=False)
class Subscription:
    """One watcher's subscription to one presentity, and its dialog state."""

    presentity: str  # user@domain
    watcher: str  # user@domain of the subscriber
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # the SUBSCRIBE's To, without tag
    remote_uri: str  # the SUBSCRIBE's From (with its tag)
    remote_target: str
    route_set: tuple[str, ...]
    event_id: str | None
    expires_at: float
    remote_cseq: int
    local_cseq: int = attrs.field(factory=lambda: secrets.randbelow(1 << 20) + 1)
    #: where NOTIFYs go when the SUBSCRIBE came straight from the watcher
    #: (no proxy between): its source, so a NAT or a TCP flow is followed
    flow: Any = None
    #: the NOTIFY in flight, whether another is owed, when the last left
    in_flight: Any = None
    again: bool = False
    last_sent: float = float("-inf")
    timer: Any = None
    ended: bool = False
    #: the body of the last NOTIFY (to send a refresh's NOTIFY only when useful)
    last_body: bytes | None = None
    #: the event package: presence, or presence.winfo (who watches the presentity)
    package: str = EVENT
    #: the version of the last watcher information document sent (RFC 3858 4.2.1)
    winfo_version: int = -1

    @property
    def id(self) -> str:
        return dialog_id(self.call_id, self.local_tag, self.remote_tag)

    def next_cseq(self) -> int:
        self.local_cseq += 1
        return self.local_cseq

    def to_json(self, notifier: str) -> bytes:
        """What the ring keeps of it (the dialog, for whoever takes it over)."""
        return json.dumps(
            {
                "presentity": self.presentity,
                "watcher": self.watcher,
                "call_id": self.call_id,
                "local_tag": self.local_tag,
                "remote_tag": self.remote_tag,
                "local_uri": self.local_uri,
                "remote_uri": self.remote_uri,
                "remote_target": self.remote_target,
                "route_set": list(self.route_set),
                "event_id": self.event_id,
                "expires": self.expires_at,
                "cseq": self.local_cseq,
                "notifier": notifier,
                "package": self.package,
            },
            separators=(",", ":"),
        ).encode()


    @classmethod
    def from_json(cls, value: bytes, remote_cseq: int) -> Subscription:
        """A subscription another notifier stored (:meth:`to_json`), to take over.

        Its NOTIFYs went on after it was stored, so our CSeq starts well
        above the stored one (RFC 3261 12.2.1.1: it only ever grows)."""
        d = json.loads(value.decode("utf-8"))
        return cls(
            presentity=d["presentity"],
            watcher=d["watcher"],
            call_id=d["call_id"],
            local_tag=d["local_tag"],
            remote_tag=d["remote_tag"],
            local_uri=d["local_uri"],
            remote_uri=d["remote_uri"],
            remote_target=d["remote_target"],
            route_set=tuple(d["route_set"]),
            event_id=d["event_id"],
            expires_at=float(d["expires"]),
            remote_cseq=remote_cseq,
            local_cseq=int(d["cseq"]) + 100_000,
            package=d.get("package", EVENT),
        )


def from_subscribe(
    request: Request, presentity: str, watcher: str, local_tag: str, expires_at: float, flow: Any
) -> Subscription:
    """The dialog a new SUBSCRIBE creates, we being its UAS (RFC 3261 12.1.1)."""
    frm = parse_from(request.headers.get("from"))
    to = parse_to(request.headers.get("to"))
    to.tag = None
    contacts = parse_contacts(request.headers.get_all("contact"))
    if not contacts:
        raise ValueError("a SUBSCRIBE needs a Contact")
    routes = tuple(str(r) for r in parse_record_routes(request.headers.get_all("record-route")))
    package, event_id = event_package(request.headers.get("event"))
    return Subscription(
        presentity=presentity,
        watcher=watcher,
        call_id=request.call_id or "",
        local_tag=local_tag,
        remote_tag=frm.tag or "",
        local_uri=str(to),
        remote_uri=str(frm),
        remote_target=str(contacts[0].uri),
        route_set=routes,
        event_id=event_id,
        expires_at=expires_at,
        remote_cseq=request.cseq.seq,
        flow=flow if not routes else None,
        package=package or EVENT,
    )


def notify_request(sub: Subscription, state: str, body: bytes | None, contact: str, content_type: str) -> Request:
    """A NOTIFY in the subscription's dialog, without its Via (the sender adds it)."""
    event = sub.package + (f";id={sub.event_id}" if sub.event_id else "")
    fields = [
        ("Max-Forwards", "70"),
        ("From", f"{sub.local_uri};tag={sub.local_tag}"),
        ("To", sub.remote_uri),
        ("Call-ID", sub.call_id),
        ("CSeq", f"{sub.next_cseq()} NOTIFY"),
        ("Contact", contact),
        ("Event", event),
        ("Subscription-State", state),
    ]
    for route in sub.route_set:
        fields.append(("Route", route))
    if body is not None:
        fields.append(("Content-Type", content_type))
    fields.append(("Content-Length", str(len(body or b""))))
    return Request("NOTIFY", sub.remote_target, Headers(fields), body or b"")
