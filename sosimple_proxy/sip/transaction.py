"""The SIP transaction layer (RFC 3261 section 17, with RFC 6026 and RFC 3581).

Sans-I/O in the sense of DESIGN.md: the state machines only see parsed
messages, an injected ``IReactorTime`` (``callLater``) and an injected
transport whose ``send(data, dest, local)`` returns a Deferred.  Nothing here
opens a socket or imports the global reactor, so tests drive every timer
with ``twisted.internet.task.Clock``.

How the stack uses it
---------------------

* Every parsed message goes to :meth:`TransactionLayer.receive` with the
  :class:`~sosimple_proxy.sip.transport.Peer` it came from (and the local
  listen address it arrived on, if known).
* A request that matches a server transaction is a retransmission (absorbed,
  the last response resent) or the ACK of a non-2xx final response (absorbed).
  Any other request except ACK gets a new server transaction, *created by the
  layer*, and goes to the TU with :meth:`ITransactionUser.requestReceived`.
  The TU answers with :meth:`ServerTransaction.respond`.  Creating the server
  transaction in the layer means that retransmissions arriving while the TU is
  still thinking (an overlay lookup) are already absorbed, and that a stateless
  TU decision is simply "respond once and forget".
* An ACK matching no transaction (the ACK of a 2xx, RFC 3261 17: "If the
  response was a 2xx, the ACK is not considered part of the transaction"), or
  matching an INVITE server transaction in RFC 6026's Accepted state, goes to
  :meth:`ITransactionUser.strayAck`.
* A response matching a client transaction goes to that transaction's user;
  any other response goes to :meth:`ITransactionUser.strayResponse`.
* The TU sends requests with :meth:`TransactionLayer.send_request`; the
  returned :class:`ClientTransaction` reports every response (including the
  synthesized 408 on timeout and 503 on transport error, RFC 3261 8.1.3.1 and
  17.1.4) to ``user.responseReceived(response, transaction)``.
* Before a new request reaches the TU, the layer adds ``received`` and fills
  ``rport`` in its top Via (RFC 3261 18.2.1, RFC 3581); :func:`stamp_via` is
  the same operation for code that handles requests outside the layer.
  Responses of a server transaction go where :func:`response_peer` says
  (RFC 3261 18.2.2, RFC 3581), from the local address the request came in on.

Lifetimes: every transaction ends by the RFC timers once it has a final
response.  Before that, an INVITE client transaction in Proceeding and an
INVITE server transaction waiting for the TU live until the TU acts (Timer C
is the proxy's: it CANCELs, or calls ``terminate()``); a non-INVITE server
transaction the TU never answers is forgotten after 64*T1 + T4, when its
client has long given up.  ``ServerTransaction.terminate()`` lets a TU act
statelessly on a request (e.g. forward a CANCEL it has no context for, RFC
3261 16.10): retransmissions then reach it again as new requests.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from sosimple_proxy.config import ListenAddress
from sosimple_proxy.sip.message import Headers, Request, Response, header_key, make_response
from sosimple_proxy.sip.timers import TimerConfig, is_reliable
from sosimple_proxy.sip.transport import Peer

__all__ = [
    "MAGIC_COOKIE",
    "ITransactionUser",
    "IClientTransactionUser",
    "TransactionUser",
    "TransactionLayer",
    "ClientTransaction",
    "ServerTransaction",
    "make_ack",
    "make_cancel",
    "new_branch",
    "stamp_via",
    "response_peer",
    "TIMEOUT",
    "TRANSPORT_ERROR",
    "CALLING",
    "TRYING",
    "PROCEEDING",
    "COMPLETED",
    "CONFIRMED",
    "ACCEPTED",
    "TERMINATED",
]

log = Logger()

#: RFC 3261 8.1.1.7: "The branch ID inserted by an element compliant with
#: this specification MUST always begin with the characters "z9hG4bK"."
MAGIC_COOKIE = "z9hG4bK"

# States (RFC 3261 figures 5-8, RFC 6026 figures 5 and 7).  Plain strings:
# cheap to compare, readable in logs and tests.
CALLING = "Calling"
TRYING = "Trying"
PROCEEDING = "Proceeding"
COMPLETED = "Completed"
CONFIRMED = "Confirmed"
ACCEPTED = "Accepted"
TERMINATED = "Terminated"

#: ``ClientTransaction.failure`` / ``serverTransactionFailed`` reasons.
TIMEOUT = "timeout"
TRANSPORT_ERROR = "transport"


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(8)


# ---------------------------------------------------------------- interfaces


class IClientTransactionUser(Interface):
    """Who receives the responses of a client transaction."""

    def responseReceived(response: Response, transaction: "ClientTransaction") -> None:
        """A response for ``transaction``: provisional, final, every 2xx
        received in the Accepted state (RFC 6026 8.4), or a synthesized 408
        (timeout) / 503 (transport error), which the layer builds from the
        request like a real response and flags in ``transaction.failure``.
        Retransmitted non-2xx finals and the 100s after a final are not
        passed up."""


class ITransactionUser(IClientTransactionUser):
    """The transaction user (the proxy core, registrar...): what the layer calls."""

    def requestReceived(request: Request, transaction: "ServerTransaction") -> None:
        """A new request (never an ACK, never a retransmission).  The top Via
        already carries received/rport.  Answer with ``transaction.respond``.
        A CANCEL is its own server transaction; the INVITE it cancels is
        ``layer.find_cancelled(request)`` (RFC 3261 9.2)."""

    def strayAck(ack: Request, source: Peer) -> None:
        """An ACK that belongs to no transaction: the ACK of a 2xx (its own
        transaction, RFC 3261 17), or one that matched an INVITE server
        transaction in the Accepted state (RFC 6026 7.1: "Any ACKs received
        from the network while in the "Accepted" state MUST be passed
        directly to the TU and not absorbed").  A proxy forwards it."""

    def strayResponse(response: Response, source: Peer) -> None:
        """A response matching no client transaction (e.g. a 2xx
        retransmission after Timer M).  RFC 3261 16.7 step 3: a proxy
        forwards it statelessly."""

    def serverTransactionFailed(transaction: "ServerTransaction", reason: str) -> None:
        """A server transaction failed: ``reason`` is :data:`TIMEOUT` (Timer
        H: the ACK never came, RFC 3261 17.2.1) or :data:`TRANSPORT_ERROR`
        (a response could not be sent, 17.2.4)."""


@implementer(ITransactionUser)
class TransactionUser:
    """A do-nothing TU to subclass: override only what you need."""

    def requestReceived(self, request: Request, transaction: "ServerTransaction") -> None:
        pass

    def responseReceived(self, response: Response, transaction: "ClientTransaction") -> None:
        pass

    def strayAck(self, ack: Request, source: Peer) -> None:
        pass

    def strayResponse(self, response: Response, source: Peer) -> None:
        pass

    def serverTransactionFailed(self, transaction: "ServerTransaction", reason: str) -> None:
        pass


# ---------------------------------------------------------- message helpers


def _first_value(value: str) -> str:
    """The first comma-separated value of a header line (quotes respected)."""
    if "," not in value:
        return value.strip()
    from sosimple_proxy.sip.headers import split_commas

    parts = split_commas(value)
    return parts[0] if parts else value.strip()


def _copy_for(request: Request, method: str, to_value: str | None) -> Request:
    """The ACK/CANCEL skeleton shared by :func:`make_ack` and :func:`make_cancel`.

    Keeps the original order and spelling of the fields it copies: the top
    Via only, Route, Max-Forwards, From, To (or ``to_value``), Call-ID, and
    CSeq with the same number and the new method.
    """
    fields: list[tuple[str, str]] = []
    have_via = have_mf = False
    seq = request.cseq.seq
    for name, value in request.headers:
        key = header_key(name)
        if key == "via":
            if not have_via:
                fields.append((name, _first_value(value)))
                have_via = True
        elif key in ("route", "from", "call-id"):
            fields.append((name, value))
        elif key == "max-forwards":
            fields.append((name, value))
            have_mf = True
        elif key == "to":
            fields.append((name, value if to_value is None else to_value))
        elif key == "cseq":
            fields.append((name, f"{seq} {method}"))
    if not have_mf:
        fields.append(("Max-Forwards", "70"))
    return Request(method, request.uri, Headers(fields))


def make_ack(request: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response to ``request`` (RFC 3261 17.1.1.3).

    "The ACK request constructed by the client transaction MUST contain
    values for the Call-ID, From, and Request-URI that are equal to the
    values of those header fields in the request passed to the transport by
    the client transaction [...]. The To header field in the ACK MUST equal
    the To header field in the response being acknowledged [...]. The ACK
    MUST contain a single Via header field, and this MUST be equal to the top
    Via header field of the original request.  The CSeq header field in the
    ACK MUST contain the same value for the sequence number as was present
    in the original request, but the method parameter MUST be equal to
    "ACK".  If the INVITE request whose response is being acknowledged had
    Route header fields, those header fields MUST appear in the ACK."
    """
    return _copy_for(request, "ACK", response.headers.get("to"))


def make_cancel(request: Request) -> Request:
    """A CANCEL for ``request`` (RFC 3261 9.1).

    "The Request-URI, Call-ID, To, the numeric part of CSeq, and From header
    fields in the CANCEL request MUST be identical to those in the request
    being cancelled, including tags.  A CANCEL constructed by a client MUST
    have only a single Via header field value matching the top Via value in
    the request being cancelled. [...] the method parameter [of CSeq] MUST
    have a value of "CANCEL". [...] If the request being cancelled contains
    a Route header field, the CANCEL request MUST include that Route header
    field's values."  Send it to the same destination as the request.
    """
    return _copy_for(request, "CANCEL", None)


def _bare(host: str) -> str:
    return host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host


def _same_address(a: str, b: str) -> bool:
    a, b = _bare(a), _bare(b)
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False  # a domain name never equals the packet's address


def _split_params(text: str) -> list[str]:
    """Split a via-parm at ';' outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    out, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            out.append(text[start:i])
            start = i + 1
        i += 1
    out.append(text[start:])
    return out


def _stamped_via_text(raw: str, received: str | None, rport: int | None) -> str:
    parts = _split_params(raw)
    out = [parts[0]]
    for p in parts[1:]:
        name = p.split("=", 1)[0].strip().lower()
        if name == "received" and received is not None:
            continue
        if name == "rport" and rport is not None:
            p = f"rport={rport}"
        out.append(p)
    if received is not None:
        out.append(f"received={received}")
    return ";".join(out)


def stamp_via(request: Request, source: Peer) -> bool:
    """Record in the top Via where ``request`` really came from.

    RFC 3261 18.2.1: "If the host portion of the "sent-by" parameter
    contains a domain name, or if it contains an IP address that differs
    from the packet source address, the server MUST add a "received"
    parameter to that Via header field value.  This parameter MUST contain
    the source address from which the packet was received."

    RFC 3581 section 4: "If this Via header field value contains an "rport"
    parameter with no value, it MUST set the value of the parameter to the
    source port of the request. [...] the server MUST also add a "received"
    parameter containing the source IP address that the request came from,
    even if it is identical to the value of the "sent-by" component."

    Returns True if the Via was changed.  The TransactionLayer calls this
    for every request it passes to the TU.
    """
    via = request.top_via
    if via is None:
        return False
    params = via.params
    rport = None
    if "rport" in params and not params["rport"]:
        rport = source.port
    received = None
    if rport is not None or not _same_address(via.host, source.host):
        received = source.host
    if received is None and rport is None:
        return False
    headers = request.headers
    name = next(n for n, _v in headers if header_key(n) == "via")
    raw = headers.pop_first_value("via")
    assert raw is not None
    headers.prepend(name, _stamped_via_text(raw, received, rport))
    return True


def _default_port(transport: str) -> int:
    return 5061 if transport.lower() in ("tls", "tls-sctp", "wss") else 5060


def response_peer(via: Any, source: Peer | None = None) -> Peer:
    """Where a response to a request with top Via ``via`` goes (RFC 3261 18.2.2, RFC 3581).

    With ``source`` (the Peer the request came from, as for every server
    transaction):

    * reliable transport: "the response MUST be sent using the existing
      connection to the source of the original request" -- the transport
      layer keeps connections keyed by Peer, so that is ``source``;
    * maddr: "the response MUST be forwarded to the address listed there,
      using the port indicated in "sent-by", or port 5060 if none is present";
    * rport (RFC 3581): "send it to the IP address indicated in the
      "received" parameter, and the port indicated in the "rport" parameter"
      -- the source address and port;
    * otherwise the received address (the source address, which is also the
      sent-by host when no received was needed) and the sent-by port.

    Without ``source`` (a proxy forwarding a stray response statelessly), the
    same rules read received/rport from the Via itself; a sent-by that is a
    domain name is returned as is and must be resolved (RFC 3263 section 5)
    by the caller.
    """
    transport = (source.transport if source is not None else via.transport).lower()
    params = via.params
    sent_port = via.port or _default_port(transport)
    if source is not None:
        if is_reliable(transport):
            return source
        maddr = params.get("maddr")
        if maddr:
            return Peer(transport, _bare(maddr), sent_port)
        if "rport" in params:
            return source
        if source.port == sent_port:
            return source
        return attrs.evolve(source, port=sent_port)
    maddr = params.get("maddr")
    if maddr:
        return Peer(transport, _bare(maddr), sent_port)
    host = params.get("received") or via.host
    rport = params.get("rport")
    port = int(rport) if rport else sent_port
    return Peer(transport, _bare(host), port)


# ------------------------------------------------------------- transactions


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()


class _Transaction:
    """What client and server transactions share: request, state, timers."""

    __slots__ = (
        "layer",
        "request",
        "key",
        "is_invite",
        "reliable",
        "state",
        "data",
        "_wire",
        "_retx",
        "_timeout",
        "_interval",
        "__weakref__",
    )

    layer: "TransactionLayer"
    request: Request
    key: tuple
    is_invite: bool
    reliable: bool
    state: str
    data: Any
    _wire: bytes | None
    _retx: IDelayedCall | None
    _timeout: IDelayedCall | None
    _interval: float

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED

    def _cancel_timers(self) -> None:
        _cancel(self._retx)
        _cancel(self._timeout)
        self._retx = self._timeout = None

    def _later(self, delay: float, fn: Callable[[], None]) -> IDelayedCall:
        return self.layer.reactor.callLater(delay, fn)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state} {self.key!r}>"


class ClientTransaction(_Transaction):
    """An INVITE (17.1.1) or non-INVITE (17.1.2) client transaction.

    Create with :meth:`TransactionLayer.send_request`.  ``failure`` is None,
    :data:`TIMEOUT` or :data:`TRANSPORT_ERROR` (then the last response the
    user saw was synthesized); ``data`` is free for the TU.
    """

    __slots__ = ("dest", "user", "failure", "final", "_cancel_pending", "_cancel_user", "cancel_transaction", "_ack")

    dest: Peer
    user: IClientTransactionUser
    failure: str | None
    final: Response | None
    cancel_transaction: "ClientTransaction | None"

    def __init__(self, layer: "TransactionLayer", request: Request, dest: Peer, user: IClientTransactionUser, key: tuple) -> None:
        self.layer = layer
        self.request = request
        self.key = key
        self.dest = dest
        self.user = user
        self.is_invite = request.method == "INVITE"
        self.reliable = is_reliable(dest.transport)
        self.state = CALLING if self.is_invite else TRYING
        self.data = None
        self.failure = None
        self.final = None
        self.cancel_transaction = None
        self._cancel_pending = False
        self._cancel_user: IClientTransactionUser | None = None
        self._ack: bytes | None = None
        self._wire = None
        self._retx = self._timeout = None
        self._interval = 0.0

    def _start(self) -> None:
        t = self.layer.timers
        self._wire = self.request.serialize()
        if self.is_invite:
            # 17.1.1.2: "If an unreliable transport is being used, the client
            # transaction MUST start timer A with a value of T1. [...] For any
            # transport, the client transaction MUST start timer B with a
            # value of 64*T1 seconds".
            if not self.reliable:
                self._interval = t.A
                self._retx = self._later(t.A, self._timer_retransmit)
            self._timeout = self._later(t.B, self._timer_timeout)
        else:
            # 17.1.2.2: "If an unreliable transport is in use, the client
            # transaction MUST set timer E to fire in T1 seconds. [...] the
            # client transaction MUST set timer F to fire in 64*T1 seconds."
            if not self.reliable:
                self._interval = t.E
                self._retx = self._later(t.E, self._timer_retransmit)
            self._timeout = self._later(t.F, self._timer_timeout)
        self._send(self._wire)

    def _send(self, data: bytes) -> None:
        self.layer._send(data, self.dest, None).addErrback(self._send_failed)

    # -- timers

    def _timer_retransmit(self) -> None:
        """Timer A (INVITE, doubling without cap) or E (non-INVITE, capped at T2)."""
        self._retx = None
        state = self.state
        if self.is_invite:
            if state is not CALLING:
                return
            # 17.1.1.2: "When timer A fires, the client transaction MUST
            # retransmit the request by passing it to the transport layer,
            # and MUST reset the timer with a value of 2*T1."
            self._interval *= 2
        else:
            if state is TRYING:
                # 17.1.2.2: "If timer E fires while still in this state, the
                # timer is reset, but this time with a value of MIN(2*T1, T2)."
                self._interval = min(self._interval * 2, self.layer.timers.t2)
            elif state is PROCEEDING:
                # "If Timer E fires while in the "Proceeding" state, the
                # request MUST be passed to the transport layer for
                # retransmission, and Timer E MUST be reset with a value of T2"
                self._interval = self.layer.timers.t2
            else:
                return
        self._retx = self._later(self._interval, self._timer_retransmit)
        assert self._wire is not None
        self._send(self._wire)

    def _timer_timeout(self) -> None:
        """Timer B (INVITE, Calling only) or F (non-INVITE, Trying/Proceeding)."""
        self._timeout = None
        if self.state in (CALLING, TRYING, PROCEEDING):
            # 17.1.1.2: "If the client transaction is still in the "Calling"
            # state when timer B fires, the client transaction SHOULD inform
            # the TU that a timeout has occurred."  17.1.2.2: "If Timer F
            # fires while in the "Trying" [or "Proceeding"] state, the client
            # transaction SHOULD inform the TU about the timeout, and then it
            # SHOULD enter the "Terminated" state."
            self._fail(TIMEOUT, 408, None)

    def _timer_end(self) -> None:
        """Timer D, K or M: leave Completed/Accepted."""
        self._timeout = None
        self._terminate()
        self._release()

    def _release(self) -> None:
        """Drop the TU's objects once nothing more will be delivered: a
        terminated transaction and its TU's state (a proxy's branch points
        back at it) would otherwise be a reference cycle, which only the
        cyclic garbage collector frees -- at a cost that dominated the
        proxy's CPU under load."""
        self.data = None
        self.user = None  # type: ignore[assignment]
        self._cancel_user = None

    # -- failures

    def _send_failed(self, failure: Failure) -> None:
        # Reported on the next reactor turn: a send that fails at once must
        # not call the user back before send_request() has returned.
        self.layer.reactor.callLater(0, self._transport_error, failure)

    def _transport_error(self, failure: Failure) -> None:
        if self.state in (CALLING, TRYING, PROCEEDING):
            # 17.1.4: "the client transaction SHOULD inform the TU that a
            # transport failure has occurred, and the client transaction
            # SHOULD transition directly to the "Terminated" state."  8.1.3.1:
            # the UAC treats it as a 503 (Service Unavailable).
            reason = getattr(failure.value, "reason", None) or failure.getErrorMessage()
            log.info("{txn}: transport error to {dest}: {reason}", txn=self, dest=self.dest, reason=reason)
            self._fail(TRANSPORT_ERROR, 503, None)
        else:
            log.debug("{txn}: transport error ignored: {f}", txn=self, f=failure.getErrorMessage())

    def _fail(self, reason: str, status: int, phrase: str | None) -> None:
        self.failure = reason
        self._terminate()
        response = make_response(self.request, status, phrase)
        self.final = response
        self.layer._deliver(self.user, response, self)

    def _terminate(self) -> None:
        if self.state is TERMINATED:
            return
        self.state = TERMINATED
        self._cancel_timers()
        self._cancel_pending = False
        self.layer._forget_client(self)

    # -- responses

    def _on_response(self, response: Response) -> None:
        status = response.status
        state = self.state
        if self.is_invite:
            if state is CALLING or state is PROCEEDING:
                if status < 200:
                    if state is CALLING:
                        # 17.1.1.2: "If the client transaction receives a
                        # provisional response while in the "Calling" state,
                        # it transitions to the "Proceeding" state. In the
                        # "Proceeding" state, the client transaction SHOULD
                        # NOT retransmit the request any longer."  Timer B
                        # only acts in Calling; Timer C is the proxy's.
                        self.state = PROCEEDING
                        self._cancel_timers()
                    self.layer._deliver(self.user, response, self)
                    if self._cancel_pending:
                        self._send_cancel()
                elif status < 300:
                    # RFC 6026 8.4: "If a 2xx response is received while the
                    # client INVITE state machine is in the "Calling" or
                    # "Proceeding" states, it MUST transition to the
                    # "Accepted" state, pass the 2xx response to the TU, and
                    # set Timer M to 64*T1."
                    self.state = ACCEPTED
                    self.final = response
                    self._cancel_pending = False
                    self._cancel_timers()
                    self._timeout = self._later(self.layer.timers.M, self._timer_end)
                    self.layer._deliver(self.user, response, self)
                else:
                    # 17.1.1.2: "reception of a response with status code from
                    # 300-699 MUST cause the client transaction to transition
                    # to "Completed". The client transaction MUST pass the
                    # received response up to the TU, and the client
                    # transaction MUST generate an ACK request [...]. The
                    # client transaction SHOULD start timer D [...] at least
                    # 32 seconds for unreliable transports, and a value of
                    # zero seconds for reliable transports."
                    self.state = COMPLETED
                    self.final = response
                    self._cancel_pending = False
                    self._cancel_timers()
                    self._ack = make_ack(self.request, response).serialize()
                    self._send_ack()
                    if self.reliable:
                        self._terminate()
                    else:
                        self._timeout = self._later(self.layer.timers.D, self._timer_end)
                    self.layer._deliver(self.user, response, self)
            elif state is ACCEPTED:
                if 200 <= status < 300:
                    # RFC 6026 8.4: "Any 2xx responses that match this client
                    # transaction and that are received while in the
                    # "Accepted" state MUST be passed up to the TU. The client
                    # transaction MUST NOT generate an ACK to the 2xx response."
                    self.layer._deliver(self.user, response, self)
            elif state is COMPLETED:
                if status >= 300:
                    # 17.1.1.2: "Any retransmissions of the final response that
                    # are received while in the "Completed" state MUST cause
                    # the ACK to be re-passed to the transport layer for
                    # retransmission, but the newly generated ACK MUST NOT be
                    # passed up to the TU."
                    self._send_ack()
            return
        # non-INVITE
        if state is TRYING or state is PROCEEDING:
            if status < 200:
                # 17.1.2.2: "If a provisional response is received while in
                # the "Trying" state, the response MUST be passed to the TU,
                # and then the client transaction SHOULD move to the
                # "Proceeding" state."
                self.state = PROCEEDING
                self.layer._deliver(self.user, response, self)
            else:
                # "If a final response (status codes 200-699) is received while
                # in the "Trying" [or "Proceeding"] state, the response MUST be
                # passed to the TU, and the client transaction MUST transition
                # to the "Completed" state. [...] Timer K [...] T4 seconds for
                # unreliable transports, and zero seconds for reliable"
                self.final = response
                self._cancel_timers()
                if self.reliable:
                    self._terminate()
                else:
                    self.state = COMPLETED
                    self._timeout = self._later(self.layer.timers.K, self._timer_end)
                self.layer._deliver(self.user, response, self)
        # Completed: "any retransmissions of the final response that are
        # received while in the "Completed" state MUST be discarded" (absorbed)

    def _send_ack(self) -> None:
        assert self._ack is not None
        # An ACK send failure is not reported: the response retransmission
        # will make us send it again, and the TU already has its response.
        self.layer._send(self._ack, self.dest, None).addErrback(_log_ack_failure, self)

    # -- for the TU

    def cancel(self, user: IClientTransactionUser | None = None) -> bool:
        """Cancel this INVITE (RFC 3261 9.1), now or when a provisional arrives.

        "If no provisional response has been received, the CANCEL request
        MUST NOT be sent; rather, the client MUST wait for the arrival of a
        provisional response before sending the request. If the original
        request has generated a final response, the CANCEL SHOULD NOT be
        sent".  Returns False if there is nothing left to cancel.  The
        CANCEL's own client transaction is ``cancel_transaction`` once sent;
        its responses go to ``user`` (default: this transaction's user).
        """
        if not self.is_invite or self.cancel_transaction is not None:
            return False
        if self.state is CALLING:
            self._cancel_pending = True
            self._cancel_user = user
            return True
        if self.state is PROCEEDING:
            self._cancel_user = user
            self._send_cancel()
            return True
        return False

    def _send_cancel(self) -> None:
        self._cancel_pending = False
        user = self._cancel_user or self.user
        self._cancel_user = None
        self.cancel_transaction = self.layer.send_request(make_cancel(self.request), self.dest, user)

    def terminate(self) -> None:
        """Stop retransmitting and forget this transaction, telling no one.

        For a TU that has given up on it (e.g. after Timer C and a CANCEL).
        """
        self._terminate()
        self._release()


def _log_ack_failure(failure: Failure, txn: ClientTransaction) -> None:
    log.info("{txn}: ACK not sent: {f}", txn=txn, f=failure.getErrorMessage())


class ServerTransaction(_Transaction):
    """An INVITE (17.2.1, RFC 6026) or non-INVITE (17.2.2) server transaction.

    Created by the layer for every new request; the TU answers with
    :meth:`respond`.  ``source`` is where the request came from, ``dest``
    where responses go (RFC 3261 18.2.2 / RFC 3581), ``local`` the listen
    address it arrived on (responses leave from there).  ``data`` is free for
    the TU.
    """

    __slots__ = ("source", "dest", "local", "last_response", "_final", "_fallback_tried")

    source: Peer
    dest: Peer
    local: ListenAddress | None
    last_response: Response | None

    def __init__(
        self, layer: "TransactionLayer", request: Request, source: Peer, dest: Peer, local: ListenAddress | None, key: tuple
    ) -> None:
        self.layer = layer
        self.request = request
        self.key = key
        self.source = source
        self.dest = dest
        self.local = local
        self.is_invite = request.method == "INVITE"
        self.reliable = is_reliable(source.transport)
        self.state = PROCEEDING if self.is_invite else TRYING
        self.data = None
        self.last_response = None
        self._final: Response | None = None
        self._fallback_tried = False
        self._wire = None
        self._retx = self._timeout = None
        self._interval = 0.0

    # -- the TU's side

    def respond(self, response: Response) -> bool:
        """Send ``response`` in this transaction; False if its state refuses it.

        1xx keeps the transaction open; an INVITE's 2xx moves it to Accepted
        (RFC 6026), where further 2xx (retransmissions and other branches'
        2xx forwarded by a proxy) are still sent; any other final response
        moves it to Completed.  A response the state machine cannot send
        (a second non-2xx final, anything after termination) is dropped and
        False is returned.
        """
        status = response.status
        state = self.state
        t = self.layer.timers
        if self.is_invite:
            if state is PROCEEDING:
                _cancel(self._retx)  # the 100 (Trying) timer
                self._retx = None
                if status < 200:
                    # 17.2.1: "So long as the server transaction is in the
                    # "Proceeding" state, each of these MUST be passed to the
                    # transport layer for transmission."
                    self._sent(response)
                elif status < 300:
                    # RFC 6026 8.5: "If, while in the "Proceeding" state, the
                    # TU passes a 2xx response to the server transaction, the
                    # server transaction MUST pass this response to the
                    # transport layer for transmission. It is not
                    # retransmitted by the server transaction; retransmissions
                    # of 2xx responses are handled by the TU. The server
                    # transaction MUST then transition to the "Accepted" state."
                    self.state = ACCEPTED
                    self._timeout = self._later(t.L, self._timer_end)
                    self._sent(response)
                else:
                    # 17.2.1: "If, while in the "Proceeding" state, the TU
                    # passes a response with status code from 300 to 699 to
                    # the server transaction, the response MUST be passed to
                    # the transport layer for transmission, and the state
                    # machine MUST enter the "Completed" state. For unreliable
                    # transports, timer G is set to fire in T1 seconds [...].
                    # When the "Completed" state is entered, timer H MUST be
                    # set to fire in 64*T1 seconds for all transports."
                    self.state = COMPLETED
                    if not self.reliable:
                        self._interval = t.G
                        self._retx = self._later(t.G, self._timer_g)
                    self._timeout = self._later(t.H, self._timer_h)
                    self._sent(response)
                return True
            if state is ACCEPTED and 200 <= status < 300:
                # RFC 6026 8.7: "Any retransmission of the 2xx response passed
                # from the TU to the transaction while in the "Accepted" state
                # MUST be passed to the transport layer for transmission."
                self._sent(response)
                return True
        else:
            if state is TRYING or state is PROCEEDING:
                if status < 200:
                    # 17.2.2: "While in the "Trying" state, if the TU passes a
                    # provisional response to the server transaction, the
                    # server transaction MUST enter the "Proceeding" state."
                    self.state = PROCEEDING
                    self._sent(response)
                else:
                    # "If the TU passes a final response (status codes
                    # 200-699) to the server while in the "Proceeding"
                    # [or "Trying"] state, the transaction MUST enter the
                    # "Completed" state, and the response MUST be passed to the
                    # transport layer for transmission. [...] timer J to fire
                    # in 64*T1 seconds for unreliable transports, and zero
                    # seconds for reliable transports."
                    self._sent(response)
                    if self.reliable:
                        self._terminate()
                    else:
                        self.state = COMPLETED
                        # Timer J replaces the unanswered-request limit.
                        # Not DelayedCall.reset(): moving a call earlier makes
                        # the reactor search its whole heap for it, and
                        # there is one such call per transaction of the last
                        # 37 s -- the proxy's main cost under load.
                        _cancel(self._timeout)
                        self._timeout = self._later(t.J, self._timer_end)
                return True
            # 17.2.2: "Any other final responses passed by the TU to the
            # server transaction MUST be discarded while in the "Completed"
            # state."
        log.info("{txn}: {status} from the TU dropped in state {state}", txn=self, status=status, state=state)
        return False

    def _sent(self, response: Response) -> None:
        self.last_response = response
        if response.status >= 200 and self._final is None:
            self._final = response
        self._wire = data = response.serialize()
        self._send(data)

    @property
    def response_to_tag(self) -> str | None:
        """The To tag of our first final response (RFC 2543 ACK matching)."""
        final = self._final
        if final is None:
            return None
        try:
            return final.to.tag
        except Exception:  # a TU's malformed To
            return None

    def _send(self, data: bytes) -> None:
        self.layer._send(data, self.dest, self.local).addErrback(self._send_failed, data)

    # -- requests from the wire

    def _on_request(self, request: Request, source: Peer) -> None:
        state = self.state
        if request.method == "ACK":
            if state is COMPLETED:
                # 17.2.1: "If an ACK is received while the server transaction
                # is in the "Completed" state, the server transaction MUST
                # transition to the "Confirmed" state.  As Timer G is ignored
                # in this state, any retransmissions of the response will
                # cease."  "When this state is entered, timer I is set to fire
                # in T4 seconds for unreliable transports, and zero seconds for
                # reliable transports."
                self._cancel_timers()
                if self.reliable:
                    self._terminate()
                else:
                    self.state = CONFIRMED
                    self._timeout = self._later(self.layer.timers.I, self._timer_end)
            elif state is ACCEPTED:
                # RFC 6026 7.1: "Any ACKs received from the network while in
                # the "Accepted" state MUST be passed directly to the TU and
                # not absorbed."
                stamp_via(request, source)
                self.layer._stray_ack(request, source)
            # Confirmed: "any ACKs that are received [...] are merely absorbed"
            return
        # A retransmission of the request.
        if state is PROCEEDING or state is COMPLETED:
            # 17.2.1: "If a request retransmission is received while in the
            # "Proceeding" state, the most recent provisional response that
            # was received from the TU MUST be passed to the transport layer
            # for retransmission."  "while in the "Completed" state, if a
            # request retransmission is received, the server SHOULD pass the
            # response to the transport for retransmission."  17.2.2 says
            # the same for non-INVITE ("MUST").
            if self._wire is not None:
                self._send(self._wire)
            elif self.is_invite and self.layer.trying_delay is not None:
                self._send_trying()
        # Trying (non-INVITE): "any retransmissions of the request received
        # while in the "Trying" state MUST be discarded"; Accepted: RFC 6026
        # 8.7 "any retransmissions of the INVITE received will [...] be
        # absorbed by the machine without changing its state"; Confirmed.

    # -- timers

    def _send_trying(self) -> None:
        """17.2.1: "The server transaction MUST generate a 100 (Trying)
        response unless it knows that the TU will generate a provisional or
        final response within 200 ms"."""
        _cancel(self._retx)
        self._retx = None
        if self.state is not PROCEEDING or self.last_response is not None:
            return
        request = self.request
        ts = request.headers.get("timestamp")
        # 8.2.6.1: a 100 reflects the request's Timestamp; 17.2.1: no To tag.
        response = make_response(request, 100, extra=(("Timestamp", ts),) if ts else ())
        self._sent(response)

    def _timer_g(self) -> None:
        self._retx = None
        if self.state is not COMPLETED:
            return
        # 17.2.1: "If timer G fires, the response is passed to the transport
        # layer once more for retransmission, and timer G is set to fire in
        # MIN(2*T1, T2) seconds. From then on, when timer G fires, the
        # response is passed to the transport again for transmission, and
        # timer G is reset with a value that doubles, unless that value
        # exceeds T2, in which case it is reset with the value of T2."
        self._interval = min(self._interval * 2, self.layer.timers.t2)
        self._retx = self._later(self._interval, self._timer_g)
        assert self._wire is not None
        self._send(self._wire)

    def _timer_h(self) -> None:
        self._timeout = None
        if self.state is COMPLETED:
            # 17.2.1: "If timer H fires while in the "Completed" state, it
            # implies that the ACK was never received.  In this case, the
            # server transaction MUST transition to the "Terminated" state,
            # and MUST indicate to the TU that a transaction failure has
            # occurred."
            log.info("{txn}: no ACK (Timer H)", txn=self)
            self._terminate()
            self.layer._server_failed(self, TIMEOUT)

    def _timer_end(self) -> None:
        """Timer I, J or L."""
        self._timeout = None
        self._terminate()

    def _timer_abandon(self) -> None:
        """The unanswered non-INVITE limit, or Timer J once answered."""
        self._timeout = None
        if self.state is TRYING or self.state is PROCEEDING:
            log.info("{txn}: no final response from the TU in time; forgotten", txn=self)
        self._terminate()

    def terminate(self) -> None:
        """Forget this transaction without answering (e.g. a CANCEL the TU
        forwards statelessly, RFC 3261 16.10): retransmissions of the request
        then reach the TU again as new requests."""
        self._terminate()

    # -- failures

    def _send_failed(self, failure: Failure, data: bytes) -> None:
        self.layer.reactor.callLater(0, self._transport_error, failure, data)

    def _transport_error(self, failure: Failure, data: bytes) -> None:
        # Over a reliable transport Timers I and J are zero: the transaction
        # may be gone when its last response fails, and the TU still needs
        # to hear about it.
        if self.state is TERMINATED and not self.reliable:
            return
        reason = getattr(failure.value, "reason", None) or failure.getErrorMessage()
        if self.reliable and not self._fallback_tried:
            # 18.2.2: "If the connection is no longer open, the server SHOULD
            # open a connection to the IP address in the "received"
            # parameter, if present, using the port in the "sent-by" value,
            # or the default port for that transport, if no port is
            # specified."  (The received address is the source address.)
            self._fallback_tried = True
            try:
                via = self.request.top_via
                port = via.port if via is not None and via.port else _default_port(self.source.transport)
            except Exception:
                port = _default_port(self.source.transport)
            fallback = attrs.evolve(self.source, port=port)
            if fallback != self.dest:
                log.info("{txn}: {reason}; trying {dest}", txn=self, reason=reason, dest=fallback)
                self.dest = fallback
                self._send(data)
                return
        # 17.2.4: "the server transaction [...] SHOULD inform the TU that a
        # failure has occurred" (RFC 3261 figures 7 and 8: Transport Err.,
        # Inform TU, -> Terminated).  In Accepted the TU may still have 2xx
        # to send on another try, so the transaction stays until Timer L.
        log.info("{txn}: transport error to {dest}: {reason}", txn=self, dest=self.dest, reason=reason)
        if self.state is not ACCEPTED:
            self._terminate()
        self.layer._server_failed(self, TRANSPORT_ERROR)

    def _terminate(self) -> None:
        if self.state is TERMINATED:
            return
        self.state = TERMINATED
        self._cancel_timers()
        self.data = None  # the TU's state refers back to us: no cycle left behind
        self.layer._forget_server(self)


# -------------------------------------------------------------------- layer


class TransactionLayer:
    """Matches messages to transactions and owns them (RFC 3261 17.1.3, 17.2.3).

    ``transport`` provides ``send(data, dest, local=None) -> Deferred``
    (:class:`~sosimple_proxy.sip.transport.ITransportLayer`); ``tu`` provides
    :class:`ITransactionUser` and may be set after construction.
    ``timers`` is a :class:`TimerConfig` or the ``[sip]`` config section.
    ``trying_delay`` is how long an INVITE server transaction waits for the
    TU's first response before sending 100 (Trying) itself (17.2.1: "unless
    it knows that the TU will generate a provisional or final response
    within 200 ms"): 0 sends it before the TU sees the INVITE, None never.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        transport: Any,
        tu: ITransactionUser | None = None,
        timers: TimerConfig | Mapping[str, Any] | None = None,
        trying_delay: float | None = 0.2,
    ) -> None:
        self.reactor = reactor
        self.transport = transport
        self.tu = tu
        if timers is None:
            timers = TimerConfig()
        elif not isinstance(timers, TimerConfig):
            timers = TimerConfig.from_config(timers)
        self.timers: TimerConfig = timers
        self.trying_delay = trying_delay
        # (branch, sent-by host, sent-by port, method) for RFC 3261 requests,
        # a longer tuple (see _key_2543) for RFC 2543 ones.  ACK uses INVITE.
        self._server: dict[tuple, ServerTransaction] = {}
        # (branch, method) -- 17.1.3.
        self._client: dict[tuple, ClientTransaction] = {}
        self._unanswered: dict[Peer, dict[ClientTransaction, None]] = {}

    # -- counts, for metrics and tests

    @property
    def server_count(self) -> int:
        return len(self._server)

    @property
    def client_count(self) -> int:
        return len(self._client)

    # -- input

    def receive(self, msg: Request | Response, source: Peer, local: ListenAddress | None = None) -> None:
        """Feed one parsed message from ``source`` (arrived on ``local``)."""
        if isinstance(msg, Response):
            self._receive_response(msg, source)
        else:
            self._receive_request(msg, source, local)

    def _receive_response(self, response: Response, source: Peer) -> None:
        # 17.1.3: "1. If the response has the same value of the branch
        # parameter in the top Via header field as the branch parameter in the
        # top Via header field of the request that created the transaction.
        # 2. If the method parameter in the CSeq header field matches the
        # method of the request that created the transaction."
        try:
            via = response.top_via
            key = (via.branch, response.cseq.method) if via is not None else None
        except Exception:
            log.info("response from {source} without a usable Via or CSeq dropped", source=source)
            return
        txn = self._client.get(key) if key is not None else None
        if txn is not None:
            txn._on_response(response)
            return
        tu = self.tu
        if tu is not None:
            try:
                tu.strayResponse(response, source)
            except Exception:
                log.failure("TU failed on a stray response from {source}", source=source)

    def _receive_request(self, request: Request, source: Peer, local: ListenAddress | None) -> None:
        try:
            via = request.top_via
            if via is None:
                log.info("request without Via from {source} dropped", source=source)
                return
            key = self._server_key(request, via, request.method)
            txn = self._server.get(key)
            if txn is None and request.method == "ACK" and len(key) > 4:
                txn = self._match_2543_ack(request, via)
        except Exception:
            log.info("request from {source} without usable Via/CSeq/From/To dropped", source=source)
            return
        if txn is not None:
            if txn.state is not TERMINATED:
                txn._on_request(request, source)
            return
        if request.method == "ACK":
            stamp_via(request, source)
            self._stray_ack(request, source)
            return
        dest = response_peer(via, source)
        txn = ServerTransaction(self, request, source, dest, local, key)
        self._server[key] = txn
        stamp_via(request, source)
        if txn.is_invite:
            delay = self.trying_delay
            if delay is not None:
                if delay <= 0:
                    txn._send_trying()
                else:
                    txn._retx = self.reactor.callLater(delay, txn._send_trying)
        else:
            # Not in RFC 3261: a non-INVITE the TU never answers would live
            # forever.  Its client gives up at Timer F (64*T1), and RFC 4320
            # forbids a late 408 ("A transaction-stateful SIP element MUST NOT
            # send a response with Status-Code of 408 to a non-INVITE
            # request"), so after 64*T1 + T4 nobody can use an answer.
            txn._timeout = self.reactor.callLater(self.timers.F + self.timers.t4, txn._timer_abandon)
        tu = self.tu
        if tu is None:
            log.warn("no transaction user: {request} from {source} unanswered", request=request, source=source)
            return
        try:
            tu.requestReceived(request, txn)
        except Exception:
            log.failure("TU failed on {request} from {source}", request=request, source=source)

    # -- matching (17.2.3)

    @staticmethod
    def _server_key(request: Request, via: Any, method: str) -> tuple:
        if method == "ACK":
            method = "INVITE"
        branch = via.branch
        if branch and branch.startswith(MAGIC_COOKIE):
            # 17.2.3: "1. the branch parameter in the request is equal to the
            # one in the top Via header field of the request that created the
            # transaction, and 2. the sent-by value in the top Via of the
            # request is equal to the one in the request that created the
            # transaction, and 3. the method of the request matches the one
            # that created the transaction, except for ACK, where the method
            # of the request that created the transaction is INVITE."
            return (branch, via.host.lower(), via.port, method)
        return TransactionLayer._key_2543(request, via, method, request.to.tag)

    @staticmethod
    def _key_2543(request: Request, via: Any, method: str, to_tag: str | None) -> tuple:
        # 17.2.3, RFC 2543 compatibility: "The INVITE request matches a
        # transaction if the Request-URI, To tag, From tag, Call-ID, CSeq, and
        # top Via header field match those of the INVITE request which created
        # the transaction. [...] For all other request methods, a request is
        # matched to a transaction if the Request-URI, To tag, From tag,
        # Call-ID, CSeq (including the method), and top Via header field
        # match those of the request that created the transaction."
        return (
            request.uri.strip(),
            to_tag or "",
            request.from_.tag or "",
            request.call_id,
            request.cseq.seq,
            method,
            via.transport.upper(),
            via.host.lower(),
            via.port,
            via.branch or "",
        )

    def _match_2543_ack(self, ack: Request, via: Any) -> ServerTransaction | None:
        # 17.2.3: "the ACK request matches a transaction if the Request-URI,
        # From tag, Call-ID, CSeq number (not the method), and top Via header
        # field match those of the INVITE request which created the
        # transaction, and the To tag of the ACK matches the To tag of the
        # response sent by the server transaction."  The INVITE usually had
        # no To tag, so look it up without one and compare with the response.
        txn = self._server.get(self._key_2543(ack, via, "INVITE", None))
        if txn is not None and txn.response_to_tag == ack.to.tag:
            return txn
        return None

    def find_server_transaction(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` belongs to, if any."""
        try:
            via = request.top_via
            if via is None:
                return None
            key = self._server_key(request, via, request.method)
        except Exception:
            return None
        txn = self._server.get(key)
        if txn is None and request.method == "ACK" and len(key) > 4:
            txn = self._match_2543_ack(request, via)
        return txn

    def find_cancelled(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL cancels (RFC 3261 9.2).

        "The TU determines the transaction to be cancelled by taking the
        CANCEL request, and then assuming that the request method is anything
        but CANCEL or ACK and applying the transaction matching procedures of
        Section 17.2.3."  Only INVITE is looked for (CANCEL SHOULD NOT be
        sent for anything else, 9.1).  The Via of a received CANCEL has been
        stamped, which does not change branch or sent-by.
        """
        try:
            via = cancel.top_via
            if via is None:
                return None
            txn = self._server.get(self._server_key(cancel, via, "INVITE"))
        except Exception:
            return None
        if txn is not None and txn.is_invite and txn.state is not TERMINATED:
            return txn
        return None

    # -- output

    def send_request(self, request: Request, dest: Peer, user: IClientTransactionUser | None = None) -> ClientTransaction:
        """Start a client transaction for ``request`` to ``dest``.

        The request must already carry our top Via with a fresh RFC 3261
        branch (:func:`new_branch`; a proxy computes its own, 16.6 step 8).
        Responses go to ``user`` (default: the layer's TU).  Never an ACK:
        the ACK of a 2xx is sent with :meth:`send_stateless`.
        """
        if request.method == "ACK":
            raise ValueError("an ACK is not a transaction; use send_stateless()")
        via = request.top_via
        branch = via.branch if via is not None else None
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError(f"the top Via of {request!r} needs a {MAGIC_COOKIE} branch")
        key = (branch, request.method)
        if key in self._client:
            raise ValueError(f"a client transaction with branch {branch} {request.method} already exists")
        owner = user if user is not None else self.tu
        if owner is None:
            raise ValueError("no transaction user to give the responses to")
        txn = ClientTransaction(self, request, dest, owner, key)
        self._client[key] = txn
        # by destination, for ICMP errors (peer_unreachable); an insertion-
        # ordered dict as a set, left when the transaction ends
        self._unanswered.setdefault(dest, {})[txn] = None
        txn._start()
        return txn

    def peer_unreachable(self, peer: Peer, reason: str) -> int:
        """An ICMP error for ``peer`` (RFC 3261 18.4): a transport error for
        every client transaction still waiting for its first response there
        (17.1.4).  Returns how many were failed."""
        hit = [t for t in self._unanswered.get(peer, ()) if t.state in (CALLING, TRYING)]
        for txn in hit:
            log.info("{txn}: {peer} unreachable: {reason}", txn=txn, peer=peer, reason=reason)
            txn._fail(TRANSPORT_ERROR, 503, None)
        return len(hit)

    def send_stateless(self, msg: Request | Response, dest: Peer, local: ListenAddress | None = None) -> Any:
        """Send without a transaction (a 2xx ACK, a stateless response).

        Returns the transport's Deferred; errors are logged and swallowed.
        """
        d = self._send(msg.serialize(), dest, local)
        d.addErrback(lambda f: log.info("stateless send to {dest} failed: {f}", dest=dest, f=f.getErrorMessage()))
        return d

    # -- internals the transactions call

    def _send(self, data: bytes, dest: Peer, local: ListenAddress | None) -> Any:
        if local is None:
            return self.transport.send(data, dest)
        return self.transport.send(data, dest, local)

    def _deliver(self, user: IClientTransactionUser, response: Response, txn: ClientTransaction) -> None:
        try:
            user.responseReceived(response, txn)
        except Exception:
            log.failure("TU failed on {response} for {txn}", response=response, txn=txn)
        if txn.state is TERMINATED:
            txn._release()  # that was its last word

    def _stray_ack(self, ack: Request, source: Peer) -> None:
        tu = self.tu
        if tu is None:
            return
        try:
            tu.strayAck(ack, source)
        except Exception:
            log.failure("TU failed on an ACK from {source}", source=source)

    def _server_failed(self, txn: ServerTransaction, reason: str) -> None:
        tu = self.tu
        if tu is None:
            return
        try:
            tu.serverTransactionFailed(txn, reason)
        except Exception:
            log.failure("TU failed on the failure of {txn}", txn=txn)

    def _forget_client(self, txn: ClientTransaction) -> None:
        if self._client.get(txn.key) is txn:
            del self._client[txn.key]
        waiting = self._unanswered.get(txn.dest)
        if waiting is not None:
            waiting.pop(txn, None)
            if not waiting:
                del self._unanswered[txn.dest]

    def _forget_server(self, txn: ServerTransaction) -> None:
        if self._server.get(txn.key) is txn:
            del self._server[txn.key]

    def clear(self) -> None:
        """Cancel every timer and forget every transaction (service stop)."""
        for txn in list(self._client.values()):
            txn._terminate()
        for stxn in list(self._server.values()):
            stxn._terminate()
