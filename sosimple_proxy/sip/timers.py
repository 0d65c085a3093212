"""SIP transaction timer values (RFC 3261 section 17 and Table 4, RFC 6026).

One frozen object holds T1, T2 and T4 and derives every transaction timer
from them, so the transaction state machines never hard-code a duration and
``[sip] t1/t2/t4`` in site.ini change the whole schedule consistently.

RFC 3261 Table 4 (the values used here)::

    T1       500ms default    RTT estimate
    T2       4s               max retransmit interval, non-INVITE and INVITE responses
    T4       5s               max duration a message remains in the network
    Timer A  initially T1     INVITE request retransmit interval, UDP only
    Timer B  64*T1            INVITE transaction timeout timer
    Timer D  > 32s for UDP    wait time for response retransmits
             0s for TCP/SCTP
    Timer E  initially T1     non-INVITE request retransmit interval, UDP only
    Timer F  64*T1            non-INVITE transaction timeout timer
    Timer G  initially T1     INVITE response retransmit interval
    Timer H  64*T1            wait time for ACK receipt
    Timer I  T4 for UDP       wait time for ACK retransmits
             0s for TCP/SCTP
    Timer J  64*T1 for UDP    wait time for non-INVITE request retransmits
             0s for TCP/SCTP
    Timer K  T4 for UDP       wait time for response retransmits
             0s for TCP/SCTP

RFC 6026 adds Timer L (64*T1, INVITE server transaction, Accepted state) and
Timer M (64*T1, INVITE client transaction, Accepted state).  Timer C (the
proxy's INVITE timer, RFC 3261 16.8) is not a transaction timer and lives in
the proxy.
"""

from __future__ import annotations

from typing import Iterator

__all__ = ["TimerConfig", "RELIABLE_TRANSPORTS", "is_reliable"]

# Transports on which the transaction layer does not retransmit and waits
# zero seconds in Completed/Confirmed (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1,
# 17.2.2: "reliable transports" -- TCP, SCTP and TLS over them; WebSocket
# (RFC 7118) is also stream-based).
RELIABLE_TRANSPORTS = frozenset({"tcp", "tls", "sctp", "tls-sctp", "ws", "wss"})


def is_reliable(transport: str) -> bool:
    """True for stream transports, on which SIP does not retransmit."""
    return transport.lower() in RELIABLE_TRANSPORTS


class TimerConfig:
    """T1/T2/T4 and every transaction timer derived from them (seconds).

    Immutable, hashable, cheap to share between all transactions of a layer:
    the derived values are computed once here, not per transaction.
    """

    __slots__ = ("t1", "t2", "t4", "A", "B", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M")

    t1: float
    t2: float
    t4: float
    A: float
    B: float
    D: float
    E: float
    F: float
    G: float
    H: float
    I: float  # noqa: E741 - the RFC's name
    J: float
    K: float
    L: float
    M: float

    def __init__(self, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0) -> None:
        if not (t1 > 0 and t2 > 0 and t4 > 0):
            raise ValueError("T1, T2 and T4 must be positive")
        if t2 < t1:
            raise ValueError(f"T2 ({t2:g}) must not be below T1 ({t1:g})")
        s = object.__setattr__
        s(self, "t1", float(t1))
        s(self, "t2", float(t2))
        s(self, "t4", float(t4))
        s(self, "A", float(t1))
        s(self, "B", 64.0 * t1)
        # RFC 3261 17.1.1.2: "The client transaction SHOULD start timer D when
        # it enters the "Completed" state, with a value of at least 32 seconds
        # for unreliable transports".  With a T1 above the default, 64*T1 is
        # the time a retransmitted final response can still arrive, so keep
        # the larger of the two.
        s(self, "D", max(32.0, 64.0 * t1))
        s(self, "E", float(t1))
        s(self, "F", 64.0 * t1)
        s(self, "G", float(t1))
        s(self, "H", 64.0 * t1)
        s(self, "I", float(t4))
        s(self, "J", 64.0 * t1)
        s(self, "K", float(t4))
        s(self, "L", 64.0 * t1)
        s(self, "M", 64.0 * t1)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("TimerConfig is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimerConfig):
            return NotImplemented
        return (self.t1, self.t2, self.t4) == (other.t1, other.t2, other.t4)

    def __hash__(self) -> int:
        return hash((self.t1, self.t2, self.t4))

    def __repr__(self) -> str:
        return f"TimerConfig(t1={self.t1:g}, t2={self.t2:g}, t4={self.t4:g})"

    # -- schedules, for documentation, logging and tests

    def invite_request_schedule(self) -> list[float]:
        """Times (from the first send) of every INVITE send over UDP before Timer B.

        Timer A starts at T1 and doubles each time with no cap (17.1.1.2).
        """
        return list(_schedule(self.A, None, self.B))

    def non_invite_request_schedule(self) -> list[float]:
        """Times of every non-INVITE send over UDP (Trying state) before Timer F.

        Timer E starts at T1 and doubles up to T2 (17.1.2.2).
        """
        return list(_schedule(self.E, self.t2, self.F))

    def invite_response_schedule(self) -> list[float]:
        """Times of every non-2xx final response send over UDP before Timer H.

        Timer G starts at T1 and doubles up to T2 (17.2.1).
        """
        return list(_schedule(self.G, self.t2, self.H))


def _schedule(first: float, cap: float | None, stop: float) -> Iterator[float]:
    t, interval = 0.0, first
    while t < stop:
        yield t
        t += interval
        interval = interval * 2 if cap is None else min(interval * 2, cap)
