"""The proxy's transaction user: requests go through the chain, strays are
forwarded without a transaction.

Everything it works with is handed in by the composition root
(:mod:`sosimple_proxy.wiring`); it builds nothing itself.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.proxy.chain import PROXY_SUPPORTED, Chain, Kind, classify
from sosimple_proxy.proxy.context import forwarded
from sosimple_proxy.proxy.forward import request_loop_hash
from sosimple_proxy.proxy.interfaces import IForwarder
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.sanity import check_request
from sosimple_proxy.proxy.stack_link import StackLink
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.interfaces import IStackUser
from sosimple_proxy.sip.message import Request, Response
from sosimple_proxy.sip.server_transaction import ServerTransaction

log = Logger()


@implementer(IStackUser)
class ProxyCore:
    """Hands each request to the chain; forwards stray ACKs and responses."""

    def __init__(
        self,
        chain: Chain,
        registrar: Registrar,
        forwarder: IForwarder,
        addressing: Addressing,
        stack: StackLink,
        ack_gate: Any = None,
    ) -> None:
        # ack_gate: the relay rule for 2xx ACKs (proxy/relay.py AckGate), or None
        self.ack_gate = ack_gate
        self.chain = chain
        self.registrar = registrar
        self.forwarder = forwarder
        self.addressing = addressing
        self.stack = stack

    def attach(self, stack: Any) -> None:
        """The stack that feeds us exists: our parts send through it."""
        self.stack.attach(stack)

    def detach(self) -> None:
        """The stack is stopping.  (Our timers are a service of their own,
        stopped with it.)"""

    def requestReceived(self, request: Request, transaction: ServerTransaction) -> None:
        self.chain.run(request, transaction)

    def responseReceived(self, response: Response, transaction: object) -> None:
        log.debug("response {r} for {t}", r=response, t=transaction)

    def strayAck(self, ack: Request, source: Peer) -> None:
        """The ACK of a 2xx is its own transaction: route it on (16.11)."""
        try:
            self._route_ack(ack, source)
        except Exception:
            log.failure("ACK from {source} not forwarded", source=source)

    def _route_ack(self, ack: Request, source: Peer | None = None) -> None:
        if check_request(ack, self.addressing, PROXY_SUPPORTED) is not None:
            log.info("ACK dropped: it fails the request checks")
            return
        if routing.is_looped(ack, request_loop_hash(ack), self.addressing.is_our_host):
            log.info("ACK dropped: loop")
            return
        gate = self.ack_gate
        stamped = gate.stamped(ack) if gate is not None else False
        routing.preprocess_routes(ack, self.addressing.is_ours, source)
        kind = classify(ack, self.addressing)
        if gate is not None and source is not None and not gate.allows(ack, source, kind, stamped):
            log.info("ACK from {source} dropped: relaying denied", source=source)
            return
        if gate is not None:
            gate.consume_credentials(ack)
        if kind is Kind.TO_PROXY:
            return  # an ACK for us: nothing to do
        if kind is Kind.LOCATE and self.addressing.is_ours(ack.ruri):
            bindings = self.registrar.table.lookup(self.addressing.aor(ack.ruri))
            if not bindings:
                log.info("ACK for {uri} dropped: no binding", uri=str(ack.ruri))
                return
            ack.uri = bindings[0].contact
        self.forwarder.forward_stateless(ack)

    def strayResponse(self, response: Response, source: Peer) -> None:
        """A response no transaction of ours matches: forward it by Via if
        the top Via is ours (18.2.1, 16.7 step 9 for late 2xx), else drop."""
        try:
            via = response.top_via
            if via is None or not self.addressing.is_our_host(via.host, via.port):
                log.info("response {r} from {source} not for us; dropped", r=response, source=source)
                return
            self.forwarder.send_response_by_via(forwarded(response))
        except Exception:
            log.failure("stray response from {source} not forwarded", source=source)

    def serverTransactionFailed(self, transaction: ServerTransaction, reason: str) -> None:
        log.info("server transaction {t} failed: {reason}", t=transaction, reason=reason)
