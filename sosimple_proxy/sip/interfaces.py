"""The contracts between the SIP layers, and between the stack and its user.

Each arrow that points up the stack (transport -> stack, transaction layer ->
transaction user, stack -> TU) is one of these interfaces, so a test can put
a simple real object in any place and ``verifyObject`` says whether it fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.address import ListenAddress, Peer
    from sosimple_proxy.sip.client_transaction import ClientTransaction
    from sosimple_proxy.sip.message import Request, Response
    from sosimple_proxy.sip.server_transaction import ServerTransaction

__all__ = [
    "IMessageSink",
    "IUnreachableObserver",
    "IConnectionObserver",
    "ITransportLayer",
    "IClientTransactionUser",
    "ITransactionUser",
    "ISipStack",
    "IStackUser",
]


# -- transport layer -> whoever consumes its messages (the stack)


class IMessageSink(Interface):
    """Who gets what the transports receive (the stack)."""

    def messageReceived(data: bytes, source: "Peer", local: "ListenAddress") -> None:
        """One whole datagram, or one framed stream message, from ``source``
        that arrived on our address ``local``."""

    def framingError(head: bytes, status: int, reason: str, source: "Peer") -> bytes | None:
        """Input that cannot be delivered (a stream out of step, a datagram
        over the size limit).  Return a response to write back first (e.g. a
        513 built from ``head``), or None; a stream is closed afterwards."""


class IUnreachableObserver(Interface):
    """A sink that wants ICMP errors on UDP sends (RFC 3261 18.4: "ICMP
    errors [...] are transport errors").  Linux reports them on an
    unconnected socket only with IP_RECVERR, through its error queue."""

    def peerUnreachable(peer: "Peer", reason: str) -> None:
        """A datagram we sent to ``peer`` came back as unreachable."""


class IConnectionObserver(Interface):
    """A sink that tracks stream connections (RFC 5626 flows: a
    registration bound to a connection is gone when the connection is)."""

    def connectionClosed(peer: "Peer") -> None:
        """The stream connection with ``peer`` is closed, by either side."""


class ITransportLayer(Interface):
    """Sending SIP messages, and knowing where we listen."""

    def send(data: bytes, dest: "Peer", local: "ListenAddress | None" = None) -> Any:
        """Send one message.  Returns a Deferred that fires None once the
        data is handed to the kernel or to the connection, or fails with
        ``TransportError``.  Never raises.  ``local`` picks the UDP socket
        to send from (a response leaves from where its request arrived,
        RFC 3581)."""

    def listening() -> "list[ListenAddress]":
        """The addresses we listen on, with the ports really bound."""

    def has_connection(peer: "Peer") -> bool:
        """Is there a usable stream connection to ``peer`` (a UA's flow)?"""


# -- transaction layer -> transaction user


class IClientTransactionUser(Interface):
    """Who receives the responses of a client transaction."""

    def responseReceived(response: "Response", transaction: "ClientTransaction") -> None:
        """A response for ``transaction``: provisional, final, every 2xx
        received in the Accepted state (RFC 6026 8.4), or a synthesized 408
        (timeout) / 503 (transport error), which the layer builds from the
        request like a real response and flags in ``transaction.failure``.
        Retransmitted non-2xx finals and the 100s after a final are not
        passed up."""


class ITransactionUser(IClientTransactionUser):
    """The transaction user (the proxy core, registrar...): what the layer calls."""

    def requestReceived(request: "Request", transaction: "ServerTransaction") -> None:
        """A new request (never an ACK, never a retransmission).  The top Via
        already carries received/rport.  Answer with ``transaction.respond``.
        A CANCEL is its own server transaction; the INVITE it cancels is
        ``layer.find_cancelled(request)`` (RFC 3261 9.2)."""

    def strayAck(ack: "Request", source: "Peer") -> None:
        """An ACK that belongs to no transaction: the ACK of a 2xx (its own
        transaction, RFC 3261 17), or one that matched an INVITE server
        transaction in the Accepted state (RFC 6026 7.1: "Any ACKs received
        from the network while in the "Accepted" state MUST be passed
        directly to the TU and not absorbed").  A proxy forwards it."""

    def strayResponse(response: "Response", source: "Peer") -> None:
        """A response matching no client transaction (e.g. a 2xx
        retransmission after Timer M).  RFC 3261 16.7 step 3: a proxy
        forwards it statelessly."""

    def serverTransactionFailed(transaction: "ServerTransaction", reason: str) -> None:
        """A server transaction failed: ``reason`` is ``TIMEOUT`` (Timer H:
        the ACK never came, RFC 3261 17.2.1) or ``TRANSPORT_ERROR`` (a
        response could not be sent, 17.2.4)."""


# -- the stack -> the TU it serves


class ISipStack(Interface):
    """What a TU is given when it is attached: the layers it sends through."""

    transport = Attribute("The ITransportLayer: where we listen, which flows are open.")
    transactions = Attribute("The TransactionLayer: send_request, send_stateless, find_cancelled.")


class IStackUser(ITransactionUser):
    """A TU that a :class:`~sosimple_proxy.sip.stack.SipStack` runs: it is
    told when the stack starts feeding it and when it stops."""

    def attach(stack: ISipStack) -> None:
        """The stack that feeds us exists: learn where we listen, start timers."""

    def detach() -> None:
        """The stack is stopping: end our timers."""
