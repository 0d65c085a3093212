"""Server transactions (RFC 3261 17.2, RFC 6026).

Created by the :class:`~sosimple_proxy.sip.transaction.TransactionLayer` for
every new request, before the TU sees it, so that retransmissions arriving
while the TU is still thinking are already absorbed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.logger import Logger
from twisted.python.failure import Failure

from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.timers import is_reliable
from sosimple_proxy.sip.transaction_state import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    PROCEEDING,
    TERMINATED,
    TIMEOUT,
    TRANSPORT_ERROR,
    TRYING,
    Transaction,
    cancel_call,
)
from sosimple_proxy.sip.via import default_port, stamp_via

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.transaction import TransactionLayer

__all__ = ["ServerTransaction"]

log = Logger()


class ServerTransaction(Transaction):
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
                cancel_call(self._retx)  # the 100 (Trying) timer
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
                    self._shed(response)
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
                        cancel_call(self._timeout)
                        self._timeout = self._later(t.J, self._timer_end)
                        self._shed(response)
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
            observer = self.layer.observer
            if observer is not None:
                observer.final(self, response.status)
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
        d = self.layer._send(data, self.dest, self.local)
        if d is not None:
            d.addErrback(self._send_failed, data)

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
        cancel_call(self._retx)
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
                port = via.port if via is not None and via.port else default_port(self.source.transport)
            except Exception:
                port = default_port(self.source.transport)
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
