"""The SIP transaction layer (RFC 3261 section 17, with RFC 6026 and RFC 3581).

Sans-I/O in the sense of DESIGN.md: the state machines only see parsed
messages, an injected ``IReactorTime`` (``callLater``) and an injected
transport whose ``send(data, dest, local)`` returns a Deferred.  Nothing here
opens a socket or imports the global reactor, so tests drive every timer
with ``twisted.internet.task.Clock``.

This module matches messages to transactions and dispatches them; the state
machines are :mod:`~sosimple_proxy.sip.client_transaction` and
:mod:`~sosimple_proxy.sip.server_transaction`, what they share is in
:mod:`~sosimple_proxy.sip.transaction_state`, the Via rules they follow in
:mod:`~sosimple_proxy.sip.via`, and the TU's contract in
:mod:`~sosimple_proxy.sip.interfaces`.

How the stack uses it
---------------------

* Every parsed message goes to :meth:`TransactionLayer.receive` with the
  :class:`~sosimple_proxy.sip.address.Peer` it came from (and the local
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
  ``rport`` in its top Via (RFC 3261 18.2.1, RFC 3581); ``via.stamp_via`` is
  the same operation for code that handles requests outside the layer.
  Responses of a server transaction go where ``via.response_peer`` says
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

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.client_transaction import ClientTransaction
from sosimple_proxy.sip.interfaces import IClientTransactionUser, IStackUser, ISipStack, ITransactionUser
from sosimple_proxy.sip.message import Request, Response
from sosimple_proxy.sip.server_transaction import ServerTransaction
from sosimple_proxy.sip.timer_queues import TimerQueues
from sosimple_proxy.sip.timers import TimerConfig
from sosimple_proxy.sip.transaction_state import CALLING, TERMINATED, TRANSPORT_ERROR, TRYING
from sosimple_proxy.sip.via import MAGIC_COOKIE, response_peer, stamp_via

__all__ = ["TransactionLayer", "TransactionUser"]

log = Logger()


@implementer(IStackUser)
class TransactionUser:
    """A do-nothing TU to subclass: override only what you need."""

    def attach(self, stack: ISipStack) -> None:
        pass

    def detach(self) -> None:
        pass

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


class TransactionLayer:
    """Matches messages to transactions and owns them (RFC 3261 17.1.3, 17.2.3).

    ``transport`` provides ``send(data, dest, local=None) -> Deferred``
    (:class:`~sosimple_proxy.sip.interfaces.ITransportLayer`); ``tu`` provides
    :class:`ITransactionUser` and may be set after construction.
    ``timers`` holds T1, T2, T4 and the timers derived from them.
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
        timers: TimerConfig | None = None,
        trying_delay: float | None = 0.2,
    ) -> None:
        self.reactor = reactor
        self.transport = transport
        self.tu = tu
        self.timers = timers if timers is not None else TimerConfig()
        # Every transaction timer goes through these (one reactor call per
        # duration, not per timer).
        self.timer_queues = TimerQueues(reactor)
        self.trying_delay = trying_delay
        # (branch, sent-by host, sent-by port, method) for RFC 3261 requests,
        # a longer tuple (see _key_2543) for RFC 2543 ones.  ACK uses INVITE.
        self._server: dict[tuple, ServerTransaction] = {}
        # (branch, method) -- 17.1.3.
        self._client: dict[tuple, ClientTransaction] = {}
        self._unanswered: dict[Peer, dict[ClientTransaction, None]] = {}
        #: counts for metrics (``tally.SipTally``): told of each new server
        #: transaction and of its first final response; None: nobody counts
        self.observer: Any = None

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
        if self.observer is not None:
            self.observer.request(txn)
        stamp_via(request, source)
        if txn.is_invite:
            delay = self.trying_delay
            if delay is not None:
                if delay <= 0:
                    txn._send_trying()
                else:
                    txn._retx = self.timer_queues.call_later(delay, txn._send_trying)
        else:
            # Not in RFC 3261: a non-INVITE the TU never answers would live
            # forever.  Its client gives up at Timer F (64*T1), and RFC 4320
            # forbids a late 408 ("A transaction-stateful SIP element MUST NOT
            # send a response with Status-Code of 408 to a non-INVITE
            # request"), so after 64*T1 + T4 nobody can use an answer.
            txn._timeout = self.timer_queues.call_later(self.timers.F + self.timers.t4, txn._timer_abandon)
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
        branch (``via.new_branch``; a proxy computes its own, 16.6 step 8).
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
        if d is None:
            return succeed(None)
        d.addErrback(lambda f: log.info("stateless send to {dest} failed: {f}", dest=dest, f=f.getErrorMessage()))
        return d

    # -- internals the transactions call

    def _send(self, data: bytes, dest: Peer, local: ListenAddress | None) -> Any:
        """The transport's Deferred, or None when the message has gone
        (a transport with ``send_nowait``: no Deferred per datagram)."""
        now = getattr(self.transport, "send_nowait", None)
        if now is not None:
            return now(data, dest, local)
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
        self.timer_queues.stop()

