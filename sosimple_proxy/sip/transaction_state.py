"""What client and server transactions share: the state names of RFC 3261
figures 5-8 and RFC 6026, why a transaction fails, and the base class that
holds a request, its state and its two timers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IDelayedCall

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.message import Request
    from sosimple_proxy.sip.transaction import TransactionLayer

__all__ = [
    "CALLING",
    "TRYING",
    "PROCEEDING",
    "COMPLETED",
    "CONFIRMED",
    "ACCEPTED",
    "TERMINATED",
    "TIMEOUT",
    "TRANSPORT_ERROR",
    "Transaction",
    "cancel_call",
]

# States (RFC 3261 figures 5-8, RFC 6026 figures 5 and 7).  Plain strings:
# cheap to compare, readable in logs and tests.
CALLING = "Calling"
TRYING = "Trying"
PROCEEDING = "Proceeding"
COMPLETED = "Completed"
CONFIRMED = "Confirmed"
ACCEPTED = "Accepted"
TERMINATED = "Terminated"

#: ``ClientTransaction.failure`` / ``serverTransactionFailed`` reasons.
TIMEOUT = "timeout"
TRANSPORT_ERROR = "transport"


def cancel_call(call: IDelayedCall | None) -> None:
    """Cancel a pending timer, if it is still pending."""
    if call is not None and call.active():
        call.cancel()


class Transaction:
    """What client and server transactions share: request, state, timers."""

    __slots__ = (
        "layer",
        "request",
        "key",
        "is_invite",
        "reliable",
        "state",
        "data",
        "_wire",
        "_retx",
        "_timeout",
        "_interval",
        "__weakref__",
    )

    layer: "TransactionLayer"
    request: Request
    key: tuple
    is_invite: bool
    reliable: bool
    state: str
    data: Any
    _wire: bytes | None
    _retx: IDelayedCall | None
    _timeout: IDelayedCall | None
    _interval: float

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED

    def _cancel_timers(self) -> None:
        cancel_call(self._retx)
        cancel_call(self._timeout)
        self._retx = self._timeout = None

    def _shed(self, *messages: Any) -> None:
        """Drop the parsed views of messages a finished non-INVITE keeps for
        its last seconds (Timers J and K): they are recomputed if ever read,
        and until then the cyclic GC has fewer objects to walk (issue 12)."""
        for m in (self.request, *messages):
            if m is not None and m._cache:
                m._cache = {}

    def _later(self, delay: float, fn: Callable[[], None]) -> IDelayedCall:
        return self.layer.timer_queues.call_later(delay, fn)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state} {self.key!r}>"
