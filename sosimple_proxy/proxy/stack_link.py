"""The SIP stack the proxy sends through, known once the stack exists.

The stack is built with the proxy's core as its transaction user, so the
proxy's parts are built first; the stack hands itself to the core
(``attach``), which puts it here.  The forwarder, CANCEL matching, the
gateway probes and "where do we listen" read it.
"""

from __future__ import annotations

from typing import Any

from sosimple_proxy.sip.transport import ListenAddress


class StackLink:
    """``transport`` and ``transactions`` of the stack, once attached
    (the attributes of ``ISipStack``)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.transactions: Any = None

    def attach(self, stack: Any) -> None:
        self.transport = stack.transport
        self.transactions = stack.transactions

    def listening(self) -> list[ListenAddress]:
        """Our bound addresses; none before the stack exists."""
        return self.transport.listening() if self.transport is not None else []
