"""Simulated phones for the lab: many users behind one UDP socket per
user namespace, as a load generator would have them.

Each :class:`Phones` owns a socket at ``<its address>:5070`` (made inside
its namespace) and a receiver thread that matches responses to client
transactions by the top Via's branch and answers requests as the users'
phones would: MESSAGE and BYE 200, INVITE 200 with a Contact (ACK
swallowed).  Client transactions retransmit as RFC 3261 17.1.2.2 says
(T1 doubling, capped at T2) until a final answer or ``timeout``.

Users are ``u<n>@example.com``; user ``n`` has a *home* proxy it registers
at, and fails over to the next proxy when its home does not answer (as a
phone does with DNS SRV).
"""

from __future__ import annotations

import re
import secrets
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable

DOMAIN = "example.com"
PORT = 5070
T1, T2 = 0.5, 4.0

_BRANCH = re.compile(r"(?im)^(?:via|v)\s*:[^\r\n]*?branch=([^;,\s]+)")
_STATUS = re.compile(r"^SIP/2\.0 (\d{3})")
_TO_TAG = re.compile(r"(?im)^(?:to|t)\s*:[^\r\n]*?;\s*tag=([^;,\s]+)")
_RR = re.compile(r"(?im)^record-route\s*:\s*([^\r\n]+)")
_CONTACT = re.compile(r"(?im)^(?:contact|m)\s*:\s*<([^>]+)>")
_HOSTPORT = re.compile(r"sips?:(?:[^@;>]*@)?([0-9.]+)(?::(\d+))?")
_COPIED = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq", "record-route")


def _answer(request: str, status: int, contact: str | None) -> bytes:
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].strip().lower() in _COPIED]
    keep = [h + ";tag=ph" if h.lower().startswith(("to:", "t:")) and "tag=" not in h else h for h in keep]
    if contact:
        keep.append(f"Contact: <{contact}>")
    reason = {200: "OK", 481: "Call/Transaction Does Not Exist"}.get(status, "OK")
    return f"SIP/2.0 {status} {reason}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"


class _Txn:
    __slots__ = ("event", "final", "provisional")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.final: str | None = None
        self.provisional = False


class Phones:
    """Every phone of one user namespace: ``make_socket`` runs in it."""

    def __init__(self, address: str, in_namespace: Callable[[Callable[[], Any]], Any], proxies: list[str],
                 port: int = PORT) -> None:
        self.address = address
        self.port = port
        self.proxies = proxies
        self.sock: socket.socket = in_namespace(self._make_socket)
        self.txns: dict[str, _Txn] = {}
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()  # status lines of failed MESSAGEs
        self.register_failures: Counter[str] = Counter()  # of failed REGISTERs, or "unanswered"
        self.cseq: dict[str, int] = {}
        self.home: dict[str, int] = {}
        # a phone's Call-ID for its REGISTERs lasts one boot (RFC 3261 10.2):
        # a new population of the same users is a reboot, or the registrar
        # would refuse its first CSeq as older than the last one it saw
        self.boot = secrets.token_hex(3)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"phones-{address}")
        self.thread.start()

    def _make_socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((self.address, self.port))
        s.settimeout(0.2)
        return s

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()

    # -- the phones' side: answering

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if self._stop:
                    return
                continue
            text = data.decode("utf-8", "replace")
            if text.startswith("SIP/2.0 "):
                m = _BRANCH.search(text)
                if not m:
                    continue
                with self.lock:
                    txn = self.txns.get(m.group(1))
                if txn is None:
                    continue
                code = int(text[8:11])
                if code >= 200:
                    txn.final = text
                    txn.event.set()
                else:
                    txn.provisional = True
                continue
            method = text.split(" ", 1)[0]
            self.received[method] += 1
            if method == "ACK":
                continue
            user = re.match(r"\S+ sips?:([^@\s;>]+)@", text)
            contact = f"sip:{user.group(1) if user else 'x'}@{self.address}:{self.port}" if method == "INVITE" else None
            try:
                self.sock.sendto(_answer(text, 200, contact).encode(), addr)
            except OSError:
                pass

    # -- the phones' side: asking

    def _transaction(self, data: str, dest: tuple[str, int], branch: str, timeout: float, invite: bool) -> str | None:
        txn = _Txn()
        with self.lock:
            self.txns[branch] = txn
        try:
            deadline = time.monotonic() + timeout
            interval = T1
            payload = data.encode()
            while True:
                if not (invite and txn.provisional):
                    try:
                        self.sock.sendto(payload, dest)
                    except OSError:
                        pass
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if txn.event.wait(min(interval, left)):
                    return txn.final
                interval = min(interval * 2, T2)
        finally:
            with self.lock:
                self.txns.pop(branch, None)

    def _request(self, method: str, uri: str, *, from_user: str, to: str, call_id: str, cseq: int,
                 extra: list[str] = (), body: str = "", from_tag: str | None = None, to_tag: str | None = None) -> tuple[str, str]:
        branch = "z9hG4bK" + secrets.token_hex(8)
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.address}:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{from_user}@{DOMAIN}>;tag={from_tag or secrets.token_hex(4)}",
            f"To: <sip:{to}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            *extra,
            f"Content-Length: {len(body.encode())}",
            "",
            body,
        ]
        return "\r\n".join(lines), branch

    def proxy_addr(self, index: int) -> tuple[str, int]:
        return self.proxies[index % len(self.proxies)], 5060

    def register(self, user: str, home: int, expires: int = 600, timeout: float = 8.0,
                 alive: Callable[[int], bool] | None = None) -> int | None:
        """REGISTER ``user`` at its home proxy, failing over to the next ones
        (skipping any ``alive`` says is down); the proxy index that said
        200, or None."""
        start = self.home.get(user, home)
        for attempt in range(len(self.proxies)):
            p = (start + attempt) % len(self.proxies)
            if alive is not None and not alive(p):
                continue
            self.cseq[user] = self.cseq.get(user, 0) + 1
            data, branch = self._request(
                "REGISTER", f"sip:{DOMAIN}", from_user=user, to=user, call_id=f"reg-{user}-{self.boot}@{self.address}",
                cseq=self.cseq[user], extra=[f"Contact: <sip:{user}@{self.address}:{self.port}>", f"Expires: {expires}"],
                from_tag=f"r{user}",
            )
            answer = self._transaction(data, self.proxy_addr(p), branch, timeout, False)
            if answer is not None and answer.startswith("SIP/2.0 200"):
                self.home[user] = p
                return p
            if answer is not None:
                self.register_failures[answer.split("\r\n", 1)[0][8:80]] += 1
                return None  # answered, but not 200: no failover for a refusal
        self.register_failures["unanswered"] += 1
        return None

    def message(self, caller: str, callee: str, via: int, timeout: float = 8.0) -> int | None:
        """A MESSAGE through proxy ``via``; the final status, or None (the
        last failure's status line is kept in ``failures``)."""
        data, branch = self._request(
            "MESSAGE", f"sip:{callee}@{DOMAIN}", from_user=caller, to=callee, call_id=f"m-{secrets.token_hex(8)}",
            cseq=1, extra=["Content-Type: text/plain"], body=f"hello {callee}",
        )
        answer = self._transaction(data, self.proxy_addr(via), branch, timeout, False)
        if answer is None:
            self.failures["(no final answer)"] += 1
        elif not answer.startswith("SIP/2.0 200"):
            self.failures[answer.split("\r\n", 1)[0][8:80]] += 1
        return int(answer[8:11]) if answer else None

    def call(self, caller: str, callee: str, via: int, timeout: float = 8.0) -> str:
        """INVITE through proxy ``via``, ACK, BYE: "ok" or what failed."""
        call_id, tag = f"c-{secrets.token_hex(8)}", secrets.token_hex(4)
        contact = f"Contact: <sip:{caller}@{self.address}:{self.port}>"
        data, branch = self._request("INVITE", f"sip:{callee}@{DOMAIN}", from_user=caller, to=callee,
                                     call_id=call_id, cseq=1, extra=[contact], from_tag=tag)
        answer = self._transaction(data, self.proxy_addr(via), branch, timeout, True)
        if answer is None:
            return "INVITE unanswered"
        if not answer.startswith("SIP/2.0 200"):
            return f"INVITE {answer[8:11]}"
        to_tag = (_TO_TAG.search(answer) or [None, None])[1]
        routes = [r.strip() for line in _RR.findall(answer) for r in line.split(",")][::-1]
        target = (_CONTACT.search(answer) or [None, f"sip:{callee}@{DOMAIN}"])[1]
        first = routes[0] if routes else f"<{target}>"
        hp = _HOSTPORT.search(first)
        if hp is None:
            return "no route for the ACK"
        dest = (hp.group(1), int(hp.group(2) or 5060))
        extra = [f"Route: {r}" for r in routes] + [contact]
        ack, _ = self._request("ACK", target, from_user=caller, to=callee, call_id=call_id, cseq=1, extra=extra,
                               from_tag=tag, to_tag=to_tag)
        try:
            self.sock.sendto(ack.encode(), dest)
        except OSError:
            pass
        bye, bbranch = self._request("BYE", target, from_user=caller, to=callee, call_id=call_id, cseq=2,
                                     extra=extra, from_tag=tag, to_tag=to_tag)
        answer = self._transaction(bye, dest, bbranch, timeout, False)
        if answer is None:
            return "BYE unanswered"
        return "ok" if answer.startswith("SIP/2.0 200") else f"BYE {answer[8:11]}"
