"""The proxy's implementers of the sip layer's interfaces provide them:
the core is the stack's user, a response context and the gateway prober
receive client transaction responses, and the harness's fakes stand in for
the stack and the transport."""

from __future__ import annotations

from zope.interface.verify import verifyObject

from sosimple_proxy.location.gateways import Gateway, GatewayProber, GatewaySet
from sosimple_proxy.proxy.chain import TAKEN
from sosimple_proxy.proxy.context import ResponseContext, Target
from sosimple_proxy.sip.interfaces import (
    IClientTransactionUser,
    ISipStack,
    IStackUser,
    ITransactionUser,
    ITransportLayer,
)
from sosimple_proxy.sip.uri import parse_uri
from tests.proxy.harness import Harness, Stack


def test_proxy_core_is_a_stack_user() -> None:
    h = Harness()
    for iface in (IStackUser, ITransactionUser, IClientTransactionUser):
        assert verifyObject(iface, h.core)


def test_response_context_receives_responses() -> None:
    h = Harness()
    h.core.chain.processors = [lambda job: TAKEN]
    h.receive(
        "MESSAGE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-i1\n"
        "Max-Forwards: 70\nFrom: <sip:a@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: i1@x\n"
        "CSeq: 1 MESSAGE\nContent-Length: 0\n\n"
    )
    txn = next(iter(h.layer._server.values()))
    ctx = ResponseContext(h.clock, h.core.forwarder, txn.request, txn, [Target(parse_uri("sip:bob@127.0.0.1:6001"))])
    assert verifyObject(IClientTransactionUser, ctx)


def test_gateway_prober_receives_responses() -> None:
    h = Harness()
    gateways = GatewaySet([Gateway("gw", parse_uri("sip:192.0.2.7:5060"))], h.clock)
    assert verifyObject(IClientTransactionUser, GatewayProber(gateways, h.clock, 30.0, Stack(h.wire, h.layer)))


def test_harness_fakes_fit_the_stack_interfaces() -> None:
    h = Harness()
    assert verifyObject(ITransportLayer, h.wire)
    assert verifyObject(ISipStack, Stack(h.wire, h.layer))
