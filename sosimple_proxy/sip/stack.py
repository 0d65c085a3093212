"""The SIP stack: transports, parser and transaction layer joined together.

Bytes come in from the transport layer; a message that does not parse is
answered 400 with a reason phrase that says what is wrong when enough of it
parsed to address a response, and is otherwise dropped and logged.  Nothing
that arrives on the wire can raise into the reactor.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.security.tls import DEFAULT_HANDSHAKE_TIMEOUT
from sosimple_proxy.sip.address import ListenAddress, Peer
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
    :class:`~sosimple_proxy.sip.transport.TransportLayer`).
    """

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
    ) -> None:
        super().__init__()
        self.tu = tu
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
        )
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
        try:
            msg = parse_message(data)
        except ParseError as e:
            self._bad_message(e, source, local, len(data))
            return
        self.transactions.receive(msg, source, local)

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
