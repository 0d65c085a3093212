"""The SIP stack: transports, parser and transaction layer joined together.

Bytes come in from the transport layer; a message that does not parse is
answered 400 with a reason phrase that says what is wrong when enough of it
parsed to address a response, and is otherwise dropped and logged.  Nothing
that arrives on the wire can raise into the reactor.

With ``limits`` the ``[limits]`` rules run first, on the raw bytes
(:mod:`~sosimple_proxy.sip.admission`): a banned source is dropped before
parsing; the request that takes a source over its rate is answered 503 with
Retry-After, statelessly; emergency calls pass whatever the source did.
After parsing, ``max_transactions`` turns new requests away with 503 while
established calls carry on: requests inside a dialog (a To tag), ACK,
CANCEL, retransmissions and responses still pass.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.security.limits import Limits, Verdict
from sosimple_proxy.security.tls import DEFAULT_HANDSHAKE_TIMEOUT
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.admission import DROP, EXEMPT, LIMITED, PASS, Gate
from sosimple_proxy.sip.interfaces import IMessageSink, ISipStack, IStackUser, IUnreachableObserver
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.parser import ParseError, parse_message
from sosimple_proxy.sip.timers import TimerConfig
from sosimple_proxy.sip.transaction import TransactionLayer
from sosimple_proxy.sip.transport import TransportLayer
from sosimple_proxy.sip.via import response_peer

log = Logger()

REASONS_FOR = {400: "Bad Request", 505: "Version Not Supported"}

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")

# Retry-After of a 503 for a full transaction table: transactions end by
# their timers within about 32 s, a few seconds frees many.
OVERLOAD_RETRY_AFTER = 5
# Methods that never start a new transaction the cap protects against: ACK
# (part of an INVITE's, or of a dialog) and CANCEL (ends one).
_UNCAPPED = frozenset({"ACK", "CANCEL"})


def reason_phrase(text: str, limit: int = 160) -> str:
    """A reason phrase made safe for a status line (no control characters)."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    return text[:limit] or "Bad Request"


@implementer(IMessageSink, IUnreachableObserver, ISipStack)
class SipStack(MultiService):
    """Owns the transport and transaction layers; hands requests to the TU.

    Every setting is an argument (``config.py`` is above this layer):
    ``listen`` the addresses to bind, ``timers`` T1/T2/T4, the transport's
    limits, and TLS (``tls_server``/``tls_client`` from
    :mod:`sosimple_proxy.security.tls`, see
    :class:`~sosimple_proxy.sip.transport.TransportLayer`).  ``limits``
    (the ``[limits]`` rules; None: none) and ``emergency`` (the ``[pstn]
    emergency`` numbers, exempt from them) guard the door;
    ``message_timeout`` is how long a stream peer may take to send one
    message.
    """

    # Class defaults: a subclass that skips __init__ (a test's) has no limits.
    limits: Limits | None = None
    gate: Gate | None = None
    _overloaded = False
    #: with [proxy] workers: passes another worker's responses to it (:mod:`.handoff`)
    handoff: Any = None

    def __init__(
        self,
        reactor: Any,
        listen: Sequence[ListenAddress],
        tu: IStackUser,
        *,
        timers: TimerConfig | None = None,
        max_message_size: int = 65536,
        udp_rcvbuf: int = 4194304,
        tcp_idle_timeout: float = 600.0,
        tls_server: Any = None,
        tls_client: Any = None,
        tls_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        message_timeout: float | None = 30.0,
        limits: Limits | None = None,
        emergency: Iterable[str] = (),
        reuse_port: bool = False,
    ) -> None:
        super().__init__()
        self.tu = tu
        self.limits = limits
        self.gate = Gate(limits, emergency, reactor) if limits is not None else None
        self._overloaded = False
        self.transport = TransportLayer(
            reactor,
            listen,
            self,
            max_message_size=max_message_size,
            udp_rcvbuf=udp_rcvbuf,
            tcp_idle_timeout=tcp_idle_timeout,
            tls_server=tls_server,
            tls_client=tls_client,
            tls_handshake_timeout=tls_handshake_timeout,
            message_timeout=message_timeout,
            limits=limits,
            reuse_port=reuse_port,
        )
        self.transport.admit_banned = self.gate is not None and bool(self.gate.numbers)
        self.transport.setServiceParent(self)
        self.transactions = TransactionLayer(reactor, self.transport, tu, timers)
        tu.attach(self)

    def privilegedStartService(self) -> None:
        """A listen address we cannot bind stops startup with one line, as a
        bad site.ini does (twistd prints a SystemExit's text and exits 1)."""
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            where = f"{e.interface or '*'}:{e.port}"
            why = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise SystemExit(f"site.ini: [proxy] listen: cannot listen on {where}: {why}") from None

    def stopService(self) -> Any:
        self.tu.detach()
        self.transactions.clear()
        return super().stopService()

    # -- IMessageSink

    def messageReceived(self, data: bytes, source: Peer, local: ListenAddress) -> None:
        try:
            self._received(data, source, local)
        except Exception:
            # Last line of defence: a bug must cost one message, not the reactor.
            log.failure("unexpected error on a message from {source}", source=source)

    def _received(self, data: bytes, source: Peer, local: ListenAddress) -> None:
        handoff = self.handoff
        if handoff is not None and handoff.elsewhere(data, source, local):
            return
        gate = self.gate
        admission = gate.admit(data, source.host) if gate is not None else None
        if admission is DROP:
            if source.reliable:
                self.transport.close_from(source)
            return
        try:
            msg = parse_message(data)
        except ParseError as e:
            if admission is not LIMITED:
                self._bad_message(e, source, local, len(data))
            return
        if type(msg) is Response and type(data) is bytes:
            msg.keep_raw(data)  # forwarded upstream as these bytes (context.forwarded)
        if admission is LIMITED:
            self._refuse(msg, source, local, f"over {self.limits.config.requests_per_second:g} requests/s",
                         self.limits.retry_after(source.host))
            return
        if (
            handoff is not None
            and isinstance(msg, Request)
            and msg.method == "CANCEL"
            and self.transactions.find_cancelled(msg) is None
            and handoff.pass_cancel(data, source, local)
        ):
            return  # its INVITE may be another worker's
        capped = admission is not None and admission is not EXEMPT and isinstance(msg, Request)
        if capped and self._over_capacity(msg, source):  # type: ignore[arg-type]
            self._refuse(msg, source, local, "too many transactions", OVERLOAD_RETRY_AFTER)
            return
        self.transactions.receive(msg, source, local)

    def _over_capacity(self, request: Request, source: Peer) -> bool:
        """A new request while ``max_transactions`` are live.  What keeps
        established calls going passes: ACK, CANCEL, requests in a dialog,
        retransmissions (matched to their transaction); and so do the
        ``[limits] allow`` sources (gateways, our other proxies), which are
        never limited."""
        txns = self.transactions
        live = txns.server_count + txns.client_count
        if self.limits.check_transactions(live) is not Verdict.LIMITED:  # type: ignore[union-attr]
            if self._overloaded:
                self._overloaded = False
                log.info("limits: {live} transactions, below max_transactions again", live=live)
            return False
        if request.method in _UNCAPPED:
            return False
        try:
            if request.to.tag:
                return False
        except Exception:
            return False  # the transaction layer drops what it cannot match
        if txns.find_server_transaction(request) is not None:
            return False
        if self.limits.is_allowed(source.host):  # type: ignore[union-attr]
            return False
        if not self._overloaded:
            self._overloaded = True
            log.warn("limits: {live} transactions (max_transactions): new requests get 503 until some end", live=live)
        return True

    def _refuse(self, msg: Request | Response, source: Peer, local: ListenAddress, why: str, retry_after: int) -> None:
        """Answer 503 with Retry-After, statelessly (a limited request gets
        no transaction: it is what the limit saves)."""
        if not isinstance(msg, Request) or msg.method == "ACK":
            return
        try:
            response = make_response(msg, 503, reason_phrase(f"Service Unavailable: {why}"))
            response.headers.add("Retry-After", str(max(1, math.ceil(retry_after))))
            via = msg.top_via
            dest = response_peer(via, source) if via is not None else source
        except Exception as e:
            log.debug("cannot answer 503 to {source}: {why}", source=source, why=e)
            return
        self.transactions.send_stateless(response, dest, local)

    def _bad_message(self, error: ParseError, source: Peer, local: ListenAddress | None, size: int) -> None:
        partial = error.partial
        if isinstance(partial, Request) and partial.method != "ACK" and "via" in partial.headers:
            # (Without a Via no response can be formed: 8.2.6.2 copies them.)
            # RFC 3261 16.3 / 8.2: a request that fails the syntax checks is
            # answered 400; the reason phrase names the problem.
            status = error.status or 400
            try:
                response = make_response(partial, status, reason_phrase(f"{REASONS_FOR.get(status, 'Bad Request')}: {error}"))
            except Exception as e:  # the partial request may lack what a response needs
                log.info("dropped bad request from {source} ({size} bytes): {error}; cannot answer: {why}",
                         source=source, size=size, error=error, why=e)
                return
            try:
                via = partial.top_via
                dest = response_peer(via, source) if via is not None else source
            except Exception:
                # A Via we cannot read: answer where the packet came from.
                dest = source
            log.info("answered {status} to a bad request from {source}: {error}", status=status, source=source, error=error)
            self.transactions.send_stateless(response, dest, local)
            return
        kind = "response" if isinstance(partial, Response) else "message"
        log.info("dropped a bad {kind} from {source} ({size} bytes): {error}", kind=kind, source=source, size=size,
                 error=error)

    # -- IUnreachableObserver

    def peerUnreachable(self, peer: Peer, reason: str) -> None:
        self.transactions.peer_unreachable(peer, reason)

    def framingError(self, head: bytes, status: int, reason: str, source: Peer) -> bytes | None:
        """Answer a stream that cannot be framed (413/513/400), if we can."""
        gate = self.gate
        if gate is not None and gate.admit(head, source.host) not in (PASS, EXEMPT):
            return None  # banned, or over its rate: no parse, no answer
        try:
            msg = parse_message(head)
        except ParseError as e:
            msg = e.partial
        except Exception:
            msg = None
        if isinstance(msg, Request) and msg.method != "ACK":
            try:
                return make_response(msg, status, reason_phrase(reason)).serialize()
            except Exception:
                pass
        log.info("framing error from {source}: {status} {reason}; not answerable", source=source, status=status,
                 reason=reason)
        return None
