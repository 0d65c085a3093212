"""One binding table in many processes.

Each worker's registrar writes its own table; every change goes to the
parent, which applies it to its table (the one the ring publisher and the
admin API read) and passes it to the other workers.  A change that arrived
that way is applied without being sent on again.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from sosimple_proxy.location.bindings import Binding, BindingTable

__all__ = ["SharedBindings"]

log = Logger()


class SharedBindings:
    """``send(aor, bindings)`` hears of each change made here."""

    def __init__(self, table: BindingTable, send: Callable[[str, list[Binding]], object]) -> None:
        self.table = table
        self.send = send
        self._applying = False
        table.listeners.append(self._changed)

    def _changed(self, aor: str, bindings: list[Binding]) -> None:
        if not self._applying:
            self.send(aor, bindings)

    def apply(self, aor: str, bindings: list[Binding]) -> None:
        """A change made elsewhere: into the table, not back out."""
        self._applying = True
        try:
            self.table.replace(aor, bindings)
        finally:
            self._applying = False
