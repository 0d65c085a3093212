"""Every implementer in the sip layer provides the interfaces it declares,
and the stack calls its TU's attach/detach (IStackUser) directly."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyClass, verifyObject

from sosimple_proxy.sip.interfaces import (
    IClientTransactionUser,
    IMessageSink,
    ISipStack,
    IStackUser,
    ITransactionUser,
    ITransportLayer,
    IUnreachableObserver,
)
from sosimple_proxy.sip.stack import SipStack
from sosimple_proxy.sip.timers import TimerConfig
from sosimple_proxy.sip.transaction import TransactionLayer, TransactionUser
from sosimple_proxy.sip.transport import TransportLayer
from sosimple_proxy.testing.transaction import RecordingTU, RecordingWire


class AttachedTU(TransactionUser):
    def __init__(self) -> None:
        self.calls: list[object] = []

    def attach(self, stack: object) -> None:
        self.calls.append(("attach", stack))

    def detach(self) -> None:
        self.calls.append("detach")


def test_sip_stack_provides_what_the_transport_and_the_tu_expect() -> None:
    stack = SipStack(MemoryReactorClock(), [], TransactionUser())
    for iface in (IMessageSink, IUnreachableObserver, ISipStack):
        assert verifyObject(iface, stack)
    assert verifyClass(IMessageSink, SipStack)


def test_sip_stack_takes_explicit_settings() -> None:
    timers = TimerConfig(t1=0.25, t2=2.0, t4=3.0)
    stack = SipStack(
        MemoryReactorClock(), [], TransactionUser(), timers=timers, max_message_size=4096, udp_rcvbuf=0,
        tcp_idle_timeout=30.0,
    )
    assert stack.transactions.timers == timers
    assert (stack.transport.max_message_size, stack.transport.udp_rcvbuf, stack.transport.tcp_idle_timeout) == (
        4096, 0, 30.0,
    )


def test_sip_stack_attaches_and_detaches_its_tu() -> None:
    tu = AttachedTU()
    stack = SipStack(MemoryReactorClock(), [], tu)
    assert tu.calls == [("attach", stack)]
    stack.startService()
    stack.stopService()
    assert tu.calls == [("attach", stack), "detach"]


def test_transaction_user_base_is_a_stack_user() -> None:
    tu = TransactionUser()
    for iface in (IStackUser, ITransactionUser, IClientTransactionUser):
        assert verifyObject(iface, tu)


def test_transport_layer_provides_itransportlayer() -> None:
    assert verifyObject(ITransportLayer, TransportLayer(MemoryReactorClock(), [], SinkStub()))


def test_test_fakes_fit_the_interfaces() -> None:
    assert verifyObject(ITransactionUser, RecordingTU())
    layer = TransactionLayer(Clock(), RecordingWire(Clock()), RecordingTU())
    assert layer.timers == TimerConfig()


class SinkStub:
    def messageReceived(self, data: bytes, source: object, local: object) -> None:
        pass

    def framingError(self, head: bytes, status: int, reason: str, source: object) -> None:
        return None
