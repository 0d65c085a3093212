"""The local binding table: address of record -> contacts (like Kamailio's usrloc).

The registrar writes it, the ``local`` location provider reads it.  Expiry
is checked against an injected clock on every read, and a timer sweeps
expired bindings so the table does not grow without bound.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import attrs
from twisted.logger import Logger

log = Logger()


@attrs.define
class Binding:
    """One contact of an AoR, as RFC 3261 section 10.3 keeps it."""

    aor: str
    contact: str  # the Contact URI as registered (params kept, e.g. cparam02's ;unknownparam)
    expires_at: float
    call_id: str
    cseq: int
    q: float = 1.0
    path: tuple[str, ...] = ()  # RFC 3327 Path values, top first
    instance: str | None = None  # RFC 5626 +sip.instance
    reg_id: int | None = None  # RFC 5626 reg-id
    received: str | None = None  # source the REGISTER came from, "transport:host:port"
    params: str = ""  # contact header params other than expires/q, as written (e.g. ;+sip.instance="<...>")
    registered_at: float = 0.0

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now + 0.5))


Listener = Callable[[str, list[Binding]], None]


class BindingTable:
    """All local bindings, keyed by AoR (``user@domain``, see :func:`aor_key`)."""

    def __init__(self, clock: Any, sweep_interval: float = 30.0) -> None:
        self._clock = clock
        self._table: dict[str, list[Binding]] = {}
        self._sweep_interval = sweep_interval
        self._sweeper: Any = None
        self.listeners: list[Listener] = []

    def start(self) -> None:
        self._sweeper = self._clock.callLater(self._sweep_interval, self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None

    def _sweep(self) -> None:
        now = self._clock.seconds()
        for aor in list(self._table):
            self._live(aor, now)
        self._sweeper = self._clock.callLater(self._sweep_interval, self._sweep)

    def _live(self, aor: str, now: float) -> list[Binding]:
        bindings = self._table.get(aor)
        if not bindings:
            return []
        alive = [b for b in bindings if b.expires_at > now]
        if len(alive) != len(bindings):
            if alive:
                self._table[aor] = alive
            else:
                del self._table[aor]
            self._changed(aor, alive)
        return alive

    def _changed(self, aor: str, bindings: list[Binding]) -> None:
        for listener in self.listeners:
            try:
                listener(aor, list(bindings))
            except Exception:
                log.failure("binding listener failed for {aor}", aor=aor)

    def lookup(self, aor: str) -> list[Binding]:
        """Live bindings of an AoR, highest q first, newest first within a q."""
        alive = self._live(aor, self._clock.seconds())
        return sorted(alive, key=lambda b: (-b.q, -b.registered_at))

    def replace(self, aor: str, bindings: list[Binding]) -> None:
        """Store the new binding set of an AoR (the registrar computed it)."""
        if bindings:
            self._table[aor] = list(bindings)
        else:
            self._table.pop(aor, None)
        self._changed(aor, bindings)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table))

    def __len__(self) -> int:
        return len(self._table)
