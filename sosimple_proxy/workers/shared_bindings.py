"""One binding table in many processes.

Each worker's registrar writes its own table; every change goes to the
parent, which applies it to its table (the one the ring publisher and the
admin API read) and passes it to the other workers.  A change that arrived
that way is applied without being sent on again.

A change travels as a *delta* (issue 12): the bindings of the AoR that are
new or renewed, and the keys of those that went, never the whole set.  Two
workers that take REGISTERs for one AoR at once (two phones of one user,
each reaching another worker) each send their own binding, and every table
merges both; a whole set would overwrite the other worker's binding
wherever it arrived second.  Where two processes changed the *same*
binding (one phone whose REGISTER and its retransmission reached two
workers), the newer registration wins everywhere (:func:`newer`), so every
table ends up the same whatever order the deltas came in.  A removal
carries the binding it removed, and removes only that registration or an
older one: an expiry swept here does not take away a renewal that another
worker took meanwhile.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.logger import Logger

from sosimple_proxy.location.bindings import Binding, BindingTable

__all__ = ["SharedBindings", "binding_key", "newer", "version"]

log = Logger()

Send = Callable[[str, list[Binding], list[Binding]], object]


def binding_key(b: Binding) -> str:
    """What makes two bindings of an AoR the same one (RFC 5626 section 6:
    instance and reg-id; else the contact, as the registrar matches them)."""
    if b.instance is not None:
        return f"i {b.instance} {b.reg_id}"
    return f"c {b.contact}"


def version(b: Binding) -> tuple[float, int, float]:
    return (b.registered_at, b.cseq, b.expires_at)


def newer(a: Binding, b: Binding) -> bool:
    """``a`` is a later registration of the binding than ``b``."""
    return version(a) > version(b)


class SharedBindings:
    """``send(aor, changed, removed)`` hears of each change made here."""

    def __init__(self, table: BindingTable, send: Send) -> None:
        self.table = table
        self.send = send
        self._applying = False
        # the keys of each AoR's bindings as last seen: what a change removed
        self._keys: dict[str, dict[str, Binding]] = {}
        table.listeners.append(self._changed)

    def _changed(self, aor: str, bindings: list[Binding]) -> None:
        before = self._keys.get(aor, {})
        now = {binding_key(b): b for b in bindings}
        if now:
            self._keys[aor] = now
        else:
            self._keys.pop(aor, None)
        if self._applying:
            return
        changed = [b for k, b in now.items() if before.get(k) is not b]
        removed = [b for k, b in before.items() if k not in now]
        if changed or removed:
            self.send(aor, changed, removed)

    def apply(self, aor: str, changed: Iterable[Binding], removed: Iterable[Binding] = ()) -> None:
        """A change made elsewhere, merged into the table, not sent back out."""
        merged = {binding_key(b): b for b in self.table.lookup(aor)}
        for gone in removed:
            key = binding_key(gone)
            mine = merged.get(key)
            if mine is not None and not newer(mine, gone):
                del merged[key]
        for b in changed:
            key = binding_key(b)
            mine = merged.get(key)
            if mine is None or newer(b, mine):
                merged[key] = b
        self._applying = True
        try:
            self.table.replace(aor, list(merged.values()))
        finally:
            self._applying = False
