"""The SIP stack the proxy sends through, known once the stack exists.

The stack is built with the proxy's core as its transaction user, so the
proxy's parts are built first; the stack hands itself to the core
(``attach``), which puts it here.  The forwarder, CANCEL matching, the
gateway probes and "where do we listen" read it.
"""

from __future__ import annotations

from typing import Any, Callable

from sosimple_proxy.sip.address import ListenAddress


def _nowhere() -> list[ListenAddress]:
    return []


class StackLink:
    """``transport`` and ``transactions`` of the stack, once attached (the
    attributes of ``ISipStack``), and ``listening()``: our bound addresses,
    none before the stack exists."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.transactions: Any = None
        self.listening: Callable[[], list[ListenAddress]] = _nowhere

    def attach(self, stack: Any) -> None:
        self.transport = stack.transport
        self.transactions = stack.transactions
        self.listening = stack.transport.listening
