"""Watchers and publishers of presence on one UDP socket, for tests.

:class:`PresenceUA` holds any number of subscriptions (one Call-ID each) on
one socket served by one thread: it sends SUBSCRIBE and PUBLISH, keeps
every NOTIFY it gets (its Subscription-State and PIDF body) and answers
each with ``notify_status`` (200, or 481 to refuse them).  Every wait is
bounded.
"""

from __future__ import annotations

import re
import secrets
import socket
import threading
import time

import attrs

from sosimple_proxy.testing.sip_requests import hostport
from sosimple_proxy.testing.ua import answer_200

__all__ = ["PresenceUA", "Subscription", "pidf_document"]

_BASIC = re.compile(r"<basic>\s*(open|closed)\s*</basic>")


def pidf_document(aor: str, basic: str = "open", note: str = "", tuple_id: str = "t1") -> str:
    """A small PIDF document (RFC 3863)."""
    note_xml = f"<note>{note}</note>" if note else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{aor}">\n'
        f'<tuple id="{tuple_id}"><status><basic>{basic}</basic></status>{note_xml}</tuple>\n'
        "</presence>\n"
    )


def _header(text: str, name: str) -> str | None:
    head = text.split("\r\n\r\n", 1)[0]
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def _body(text: str) -> str:
    return text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""


def _tag(value: str | None) -> str | None:
    m = re.search(r";\s*tag=([^;>\s]+)", value or "")
    return m.group(1) if m else None


@attrs.define(eq=False)
class Subscription:
    presentity: str
    watcher: str
    proxy: tuple[str, int]
    call_id: str
    from_tag: str
    cseq: int = 1
    to_tag: str | None = None
    target: str | None = None
    status: int | None = None
    expires: int | None = None
    #: (Subscription-State, body) of every NOTIFY received, in order
    notifies: list[tuple[str, str]] = attrs.field(factory=list)
    notify_status: int | None = None
    #: NOTIFYs that arrived, answered 200 or not
    received: int = 0

    @property
    def basic(self) -> str | None:
        """open/closed from the last NOTIFY with a body (None: none yet)."""
        for _, body in reversed(self.notifies):
            found = _BASIC.findall(body)
            if found:
                return "open" if "open" in found else "closed"
        return None

    @property
    def last_state(self) -> str | None:
        return self.notifies[-1][0] if self.notifies else None


class PresenceUA:
    """A UDP socket of subscriptions (see the module's docstring)."""

    def __init__(self, host: str = "127.0.0.1", notify_status: int = 200) -> None:
        self.host = host
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.notify_status = notify_status
        self.subs: dict[str, Subscription] = {}
        self._responses: dict[tuple[str, int, str], str] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # -- the socket

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            text = data.decode(errors="replace")
            call_id = _header(text, "call-id") or _header(text, "i") or ""
            cseq = (_header(text, "cseq") or "0 X").split()
            if text.startswith("SIP/2.0 "):
                status = int(text.split(" ", 2)[1])
                if status >= 200:
                    with self._lock:
                        self._responses[(call_id, int(cseq[0]), cseq[1])] = text
                continue
            if text.startswith("NOTIFY "):
                sub = self.subs.get(call_id)
                status = self.notify_status if sub is None or sub.notify_status is None else sub.notify_status
                if sub is not None:
                    sub.received += 1
                if sub is not None and status == 200:
                    with self._lock:
                        sub.notifies.append((_header(text, "subscription-state") or "", _body(text)))
                reply = answer_200(text, to_tag=sub.from_tag if sub else "x")
                if status != 200:
                    reply = reply.replace("SIP/2.0 200 OK", f"SIP/2.0 {status} Refused", 1)
                self.sock.sendto(reply.encode(), addr)
            else:
                self.sock.sendto(
                    answer_200(text).replace("200 OK", "405 Method Not Allowed", 1).encode(), addr
                )

    def _send(self, text: str, dest: tuple[str, int]) -> None:
        self.sock.sendto(text.encode(), dest)

    def _wait(self, key: tuple[str, int, str], text: str, dest: tuple[str, int], timeout: float) -> str | None:
        """Send (retransmitting like Timer A) until a final response comes."""
        deadline = time.monotonic() + timeout
        interval = 0.5
        next_send = time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                self._send(text, dest)
                next_send = time.monotonic() + interval
                interval = min(interval * 2, 4.0)
            with self._lock:
                got = self._responses.pop(key, None)
            if got is not None:
                return got
            time.sleep(0.01)
        return None

    def _request(self, method: str, ruri: str, sub: Subscription, extra: list[str], body: str = "") -> str:
        to = f"<sip:{sub.presentity}>" + (f";tag={sub.to_tag}" if sub.to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {hostport(self.host, self.port)};branch=z9hG4bK-{secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{sub.watcher}>;tag={sub.from_tag}",
            f"To: {to}",
            f"Call-ID: {sub.call_id}",
            f"CSeq: {sub.cseq} {method}",
            *extra,
            f"Content-Length: {len(body.encode())}",
        ]
        return "\r\n".join(lines) + "\r\n\r\n" + body

    # -- subscriptions

    def subscribe(
        self,
        proxy_port: int,
        presentity: str,
        watcher: str = "alice@example.com",
        expires: int = 600,
        event: str = "presence",
        proxy_host: str = "127.0.0.1",
        timeout: float = 5.0,
        ruri: str | None = None,
    ) -> Subscription:
        """A new subscription through the proxy; ``status`` is its answer (None: none)."""
        sub = Subscription(presentity, watcher, (proxy_host, proxy_port), secrets.token_hex(8), secrets.token_hex(4))
        with self._lock:
            self.subs[sub.call_id] = sub
        text = self._request(
            "SUBSCRIBE",
            ruri or f"sip:{presentity}",
            sub,
            [
                f"Contact: <sip:{watcher.split('@')[0]}@{hostport(self.host, self.port)}>",
                f"Event: {event}",
                "Accept: " + ("application/watcherinfo+xml" if event == "presence.winfo" else "application/pidf+xml"),
                f"Expires: {expires}",
            ],
        )
        self._answered(sub, self._wait((sub.call_id, sub.cseq, "SUBSCRIBE"), text, sub.proxy, timeout))
        return sub

    def _answered(self, sub: Subscription, answer: str | None) -> None:
        if answer is None:
            sub.status = None
            return
        sub.status = int(answer.split(" ", 2)[1])
        if 200 <= sub.status < 300:
            sub.to_tag = sub.to_tag or _tag(_header(answer, "to") or _header(answer, "t"))
            contact = _header(answer, "contact") or _header(answer, "m")
            if contact:
                sub.target = contact.strip().strip("<>").split(">")[0]
            expires = _header(answer, "expires")
            sub.expires = int(expires) if expires and expires.isdigit() else None

    def refresh(self, sub: Subscription, expires: int = 600, timeout: float = 5.0, target: str | None = None) -> int | None:
        """An in-dialog SUBSCRIBE to the notifier's Contact (or ``target``,
        say another proxy of the ring); its status (None: no answer).  A
        Contact in the 200 becomes the dialog's target (a target refresh)."""
        assert sub.target is not None and sub.to_tag is not None
        sub.cseq += 1
        target = target or sub.target
        m = re.match(r"sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;>]+):(\d+)", target)
        dest = (m.group(1).strip("[]"), int(m.group(2))) if m else sub.proxy
        contact = f"Contact: <sip:{sub.watcher.split('@')[0]}@{hostport(self.host, self.port)}>"
        text = self._request("SUBSCRIBE", target, sub, ["Event: presence", f"Expires: {expires}", contact])
        answer = self._wait((sub.call_id, sub.cseq, "SUBSCRIBE"), text, dest, timeout)
        if answer is None:
            return None
        status = int(answer.split(" ", 2)[1])
        if 200 <= status < 300:
            self._answered(sub, answer)
        return status

    def publish(
        self,
        proxy_port: int,
        presentity: str,
        body: str = "",
        expires: int = 600,
        etag: str | None = None,
        publisher: str | None = None,
        timeout: float = 5.0,
    ) -> tuple[int | None, str | None]:
        """A PUBLISH: (status, SIP-ETag) of its answer."""
        sub = Subscription(presentity, publisher or presentity, ("127.0.0.1", proxy_port), secrets.token_hex(8), secrets.token_hex(4))
        extra = ["Event: presence", f"Expires: {expires}"]
        if etag:
            extra.append(f"SIP-If-Match: {etag}")
        if body:
            extra.append("Content-Type: application/pidf+xml")
        text = self._request("PUBLISH", f"sip:{presentity}", sub, extra, body)
        answer = self._wait((sub.call_id, sub.cseq, "PUBLISH"), text, sub.proxy, timeout)
        if answer is None:
            return None, None
        return int(answer.split(" ", 2)[1]), _header(answer, "sip-etag")

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> PresenceUA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
