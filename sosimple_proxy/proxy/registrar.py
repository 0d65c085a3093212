"""REGISTER processing, RFC 3261 section 10.3 (plus RFC 3327 Path, RFC 5626).

Pure logic over a :class:`BindingTable` and an injected clock: a request in,
a response out.  Who may register what is decided before it, by the
chain's authentication step (:mod:`sosimple_proxy.proxy.authenticate`).
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.sip import headers as H
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.parser import ParseError
from sosimple_proxy.sip.uri import parse_uri

log = Logger()

#: seconds a REGISTER's retransmissions can come (64*T1 with the default T1,
#: RFC 3261 17.1.2.2): one that finds its own bindings is answered 200
RETRANSMISSION_WINDOW = 32.0


class RegistrarError(Exception):
    def __init__(self, status: int, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status, self.reason, self.extra = status, reason, extra


def aor_key(uri: Any) -> str:
    """The canonical AoR of a To URI: ``user@host``, host lower-cased.

    RFC 3261 10.3 step 5: "the registrar MUST extract the address-of-record
    from the To header field ... The URI MUST then be converted to a
    canonical form.  To do that, all URI parameters MUST be removed
    (including the user-param), and any escaped characters MUST be converted
    to their unescaped form."
    """
    user = H.unescape(uri.user) if uri.user else ""
    host = (uri.host or "").lower()
    return f"{user}@{host}" if user else host


def durable_answer(
    clock: Any, waiting: Deferred, timeout: float, request: Request, response: Response
) -> Deferred:
    """``response`` once ``waiting`` fires True within ``timeout`` seconds;
    otherwise a 500 with Retry-After, so the phone registers again rather
    than trusting a binding a single crash could lose (issue 15)."""
    answer: Deferred = Deferred()
    retry_after = str(max(1, math.ceil(timeout)))

    def give(ok: Any) -> None:
        if answer.called:
            return
        if timer.active():
            timer.cancel()
        if ok is True:
            answer.callback(response)
            return
        log.warn("registrar: the ring did not store the binding of {aor} in time", aor=request.to.uri)
        # RFC 3261 21.5.1: a 500 MAY carry Retry-After (when to try again).
        answer.callback(
            make_response(
                request,
                500,
                "Server Internal Error: the registration could not be stored in the ring",
                extra=(("Retry-After", retry_after),),
            )
        )

    timer = clock.callLater(timeout, give, False)
    waiting.addBoth(give)
    return answer
_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header value (RFC 3261 20.17), formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def _int_or_error(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise RegistrarError(400, f"Bad {what} value {text!r}")
    return min(int(text), 2**32 - 1)


class Registrar:
    """The registrar of our domains."""

    def __init__(
        self,
        clock: Any,
        table: BindingTable,
        *,
        min_expires: int,
        max_expires: int,
        default_expires: int,
        max_contacts: int,
        is_ours: Callable[[Any], bool],
        aor: Callable[[Any], str] = aor_key,
        commit: Callable[[str], Deferred | None] | None = None,
        commit_timeout: float = 4.0,
    ) -> None:
        self.clock = clock
        self.aor = aor
        self.table = table
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self.max_contacts = max_contacts
        self.is_ours = is_ours
        #: ``commit(aor)``: Deferred[bool] once the AoR's new bindings are
        #: durable elsewhere (a ring's write quorum took them); None: nothing
        #: to wait for.  The 200 waits for it (issue 15).
        self.commit = commit
        self.commit_timeout = commit_timeout

    def handle(self, request: Request, received: str | None = None) -> Response | Deferred:
        """The response, or a Deferred of it while the ring stores the bindings."""
        try:
            response = self._handle(request, received)
        except RegistrarError as e:
            return make_response(request, e.status, e.reason, extra=e.extra)
        except ParseError as e:
            return make_response(request, 400, str(e))
        if self.commit is None or response.status != 200:
            return response
        waiting = self.commit(self.aor(request.to.uri))
        if waiting is None:
            return response
        return durable_answer(self.clock, waiting, self.commit_timeout, request, response)

    def _handle(self, request: Request, received: str | None) -> Response:
        if not self.is_ours(request.ruri):
            raise RegistrarError(403, "Not a domain of this registrar")
        to_uri = request.to.uri
        if getattr(to_uri, "scheme", None) not in ("sip", "sips"):
            raise RegistrarError(404, "Address of record is not a SIP URI")
        aor = self.aor(to_uri)
        if not self.is_ours(to_uri):
            raise RegistrarError(404, "Address of record not in a domain of this registrar")

        now = self.clock.seconds()
        call_id = request.call_id or ""
        cseq = request.cseq.seq
        header_expires: int | None = None
        raw_expires = request.headers.get("expires")
        if raw_expires is not None:
            header_expires = _int_or_error(raw_expires, "Expires")
        # Parsed (and so validated) once, by the parser's validation.
        contacts = request.contacts
        bindings = self.table.lookup(aor)

        if any(c.wildcard for c in contacts):
            # RFC 3261 10.3 step 6: "*" is only allowed with Expires: 0 and
            # as the only Contact, otherwise 400.
            if len(contacts) != 1 or header_expires != 0:
                raise RegistrarError(400, "Contact * needs Expires: 0 and no other Contact")
            for b in bindings:
                if b.call_id == call_id and cseq <= b.cseq:
                    raise RegistrarError(400, "CSeq out of order for this Call-ID")
            self.table.replace(aor, [])
            return self._ok(request, aor, now)

        path = tuple(request.headers.values("path"))
        updates: list[tuple[Any, int, float, str | None, int | None, str]] = []
        for contact in contacts:
            if contact.uri.scheme not in ("sip", "sips", "tel"):
                if not str(contact.uri):
                    raise RegistrarError(400, "Bad Contact: empty URI")
            params = contact.params
            if "expires" in params and params["expires"] is not None:
                expires = _int_or_error(params["expires"], "Contact expires")
            elif header_expires is not None:
                expires = header_expires
            else:
                expires = self.default_expires
            # RFC 3261 10.3 step 7: too brief -> 423 with Min-Expires.
            if 0 < expires < self.min_expires:
                raise RegistrarError(423, "Interval Too Brief", (("Min-Expires", str(self.min_expires)),))
            expires = min(expires, self.max_expires)
            q = 1.0
            if params.get("q") is not None:
                try:
                    q = float(params["q"])
                except ValueError:
                    raise RegistrarError(400, f"Bad Contact q value {params['q']!r}") from None
                if not 0.0 <= q <= 1.0:
                    raise RegistrarError(400, f"Contact q value {params['q']} out of range 0-1")
            instance = params.get("+sip.instance")
            reg_id_text = params.get("reg-id")
            reg_id = int(reg_id_text) if reg_id_text and reg_id_text.isdigit() else None
            extra = "".join(
                f";{k}" if v is None else f";{k}={v}" for k, v in params.items() if k not in ("expires", "q")
            )
            updates.append((contact.uri, expires, q, instance, reg_id, extra))

        if self._already_applied(bindings, updates, call_id, cseq, now):
            return self._ok(request, aor, now, path)
        for uri, expires, q, instance, reg_id, extra in updates:
            existing = self._match(bindings, uri, instance, reg_id)
            if existing is not None:
                # RFC 3261 10.3 step 7: same Call-ID and a CSeq not higher
                # than the stored one: "the update MUST be aborted and the
                # request fails."
                if existing.call_id == call_id and cseq <= existing.cseq:
                    raise RegistrarError(400, "CSeq out of order for this Call-ID")
                bindings.remove(existing)
            if expires == 0:
                continue
            bindings.append(
                Binding(
                    aor=aor,
                    contact=str(uri),
                    expires_at=now + expires,
                    call_id=call_id,
                    cseq=cseq,
                    q=q,
                    path=path,
                    instance=instance,
                    reg_id=reg_id,
                    received=received,
                    params=extra,
                    registered_at=now,
                )
            )
        if len(bindings) > self.max_contacts:
            raise RegistrarError(403, f"Too many contacts (at most {self.max_contacts})")
        if updates:
            self.table.replace(aor, bindings)
        return self._ok(request, aor, now, path)

    def _already_applied(self, bindings: list[Binding], updates: list[Any], call_id: str, cseq: int, now: float) -> bool:
        """This very REGISTER (its Call-ID and CSeq) made these bindings
        moments ago: a retransmission whose server transaction is not here
        (with ``[proxy] workers`` the kernel may hand it to another worker
        than the first, or the first died before answering).  It gets the
        answer its transaction would have resent, rather than the 400 of
        RFC 3261 10.3 step 7, which is for a new request with an old CSeq;
        only within a transaction's life (64*T1), and nothing changes."""
        if not any(expires for _uri, expires, *_ in updates):
            return False
        for uri, expires, _q, instance, reg_id, _extra in updates:
            existing = self._match(bindings, uri, instance, reg_id)
            if expires == 0:
                if existing is not None:
                    return False
            elif (existing is None or existing.call_id != call_id or existing.cseq != cseq
                  or now - existing.registered_at > RETRANSMISSION_WINDOW):
                return False
        return True

    @staticmethod
    def _match(bindings: list[Binding], uri: Any, instance: str | None, reg_id: int | None) -> Binding | None:
        # RFC 5626 section 6: a binding with the same instance id and reg-id
        # is the same flow of the same device and is replaced.
        if instance is not None:
            for b in bindings:
                if b.instance == instance and b.reg_id == reg_id:
                    return b
        for b in bindings:
            if instance is not None and b.instance is not None:
                continue
            if H.uri_equivalent(parse_uri(b.contact), uri):
                return b
        return None

    def _ok(self, request: Request, aor: str, now: float, path: tuple[str, ...] = ()) -> Response:
        extra: list[tuple[str, str]] = []
        for b in self.table.lookup(aor):
            q = "" if b.q == 1.0 else f";q={b.q:g}"
            extra.append(("Contact", f"<{b.contact}>{b.params}{q};expires={b.remaining(now)}"))
        if path:
            # RFC 3327 section 5.3: the registrar returns the Path it stored.
            extra.extend(("Path", p) for p in path)
        extra.append(("Date", http_date()))
        return make_response(request, 200, "OK", extra=extra)
