"""Client transactions (RFC 3261 17.1, RFC 6026), and the ACK and CANCEL
requests they build from the request they sent (17.1.1.3, 9.1).

Created by :meth:`~sosimple_proxy.sip.transaction.TransactionLayer.send_request`;
sans-I/O: timers come from the layer's ``IReactorTime``, sends go through
the layer to its transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.grammar import first_element
from sosimple_proxy.sip.interfaces import IClientTransactionUser
from sosimple_proxy.sip.message import Headers, Request, Response, header_key, make_response
from sosimple_proxy.sip.timers import is_reliable
from sosimple_proxy.sip.transaction_state import (
    ACCEPTED,
    CALLING,
    COMPLETED,
    PROCEEDING,
    TERMINATED,
    TIMEOUT,
    TRANSPORT_ERROR,
    TRYING,
    Transaction,
)

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.transaction import TransactionLayer

__all__ = ["ClientTransaction", "make_ack", "make_cancel"]

log = Logger()


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
                fields.append((name, first_element(value).strip()))
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


class ClientTransaction(Transaction):
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
        d = self.layer._send(data, self.dest, None)
        if d is not None:
            d.addErrback(self._send_failed)

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
                    if self.state is ACCEPTED:
                        self._shed(response)
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
                if self.state is COMPLETED:
                    self._shed(response)
        # Completed: "any retransmissions of the final response that are
        # received while in the "Completed" state MUST be discarded" (absorbed)

    def _send_ack(self) -> None:
        assert self._ack is not None
        # An ACK send failure is not reported: the response retransmission
        # will make us send it again, and the TU already has its response.
        d = self.layer._send(self._ack, self.dest, None)
        if d is not None:
            d.addErrback(_log_ack_failure, self)

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
