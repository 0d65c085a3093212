"""The commands between a proxy's parent process and its workers (AMP).

Bindings travel as JSON (:func:`bindings_to_json`), ring records as the
three fields a lookup reads.  Values stay well under AMP's 64 KiB: an AoR
has at most ``[registrar] max_contacts`` bindings.
"""

from __future__ import annotations

import base64
import json
import operator
from typing import Any, Iterable, Iterator

import attrs
from twisted.protocols import amp

from sosimple_proxy.location.bindings import Binding

__all__ = ["Hello", "PushBindings", "PushBatch", "RingGet", "bindings_to_json", "bindings_from_json", "batches",
           "batch_from_json", "RemoteRecord"]


class Hello(amp.Command):
    """Worker -> parent, once connected: the parent answers after it has
    pushed every binding it holds to this worker."""

    arguments = [(b"index", amp.Integer())]
    response = [(b"bindings", amp.Integer())]


class PushBindings(amp.Command):
    """Either way: the new binding set of one AoR (empty: none left).

    Not answered: one push per REGISTER crosses worker -> parent -> every
    other worker, and an answer to each doubled the AMP messages (about 40%
    of the parent's CPU per REGISTER).  Nothing waited on the answers: the
    line is a stream, so pushes arrive in order and before anything sent
    after them (the answer to :class:`Hello` among them)."""

    arguments = [(b"aor", amp.Unicode()), (b"bindings", amp.Unicode())]
    requiresAnswer = False


class RingGet(amp.Command):
    """Worker -> parent: the registration records of an AoR in one ring."""

    arguments = [(b"ring", amp.Unicode()), (b"aor", amp.Unicode()), (b"kind", amp.Unicode())]
    response = [(b"records", amp.Unicode())]
    errors = {Exception: b"RING_FAILED"}


# A binding travels as the list of its fields in this order (not a dict
# from attrs.asdict, whose recursion was 8% of a worker's CPU per REGISTER).
_FIELDS = tuple(a.name for a in attrs.fields(Binding))
_PATH = _FIELDS.index("path")
_values = operator.attrgetter(*_FIELDS)


def bindings_to_json(bindings: list[Binding]) -> str:
    return json.dumps([_values(b) for b in bindings], separators=(",", ":"))


def _binding(row: list[Any]) -> Binding:
    row[_PATH] = tuple(row[_PATH] or ())
    return Binding(*row)


def bindings_from_json(text: str) -> list[Binding]:
    return [_binding(row) for row in json.loads(text)]


class PushBatch(amp.Command):
    """Either way: the new binding sets of several AoRs (:func:`batches`).
    A worker sends its changes at most every ``hub.BATCH_INTERVAL`` seconds,
    the parent passes the same text on: one AMP message per batch instead
    of per REGISTER, whose machinery was most of what sharing a binding
    cost.  Unanswered, as :class:`PushBindings`."""

    arguments = [(b"changes", amp.Unicode())]
    requiresAnswer = False


# A batch's text stays under AMP's 64 KiB value (json.dumps writes ASCII:
# one character is one byte).
MAX_BATCH_BYTES = 60_000


def batches(changes: Iterable[tuple[str, list[Binding]]]) -> Iterator[str]:
    """``[[aor, [binding fields...]], ...]`` texts of at most
    :data:`MAX_BATCH_BYTES` (an AoR alone may be longer: at most
    ``[registrar] max_contacts`` bindings, as one PushBindings was)."""
    rows = [[aor, [_values(b) for b in bindings]] for aor, bindings in changes]
    if rows:
        yield from _split(rows)


def _split(rows: list[list[Any]]) -> Iterator[str]:
    text = json.dumps(rows, separators=(",", ":"))  # one call for the batch: most are small
    if len(text) <= MAX_BATCH_BYTES or len(rows) == 1:
        yield text
        return
    half = len(rows) // 2
    yield from _split(rows[:half])
    yield from _split(rows[half:])


def batch_from_json(text: str) -> list[tuple[str, list[Binding]]]:
    return [(aor, [_binding(row) for row in rows]) for aor, rows in json.loads(text)]


@attrs.frozen
class RemoteRecord:
    """What a ring lookup reads of a record, as the parent sent it."""

    entry: str
    value: bytes
    expires: float


def records_to_json(records: list[Any]) -> str:
    return json.dumps(
        [{"entry": r.entry, "value": base64.b64encode(r.value).decode("ascii"), "expires": r.expires} for r in records],
        separators=(",", ":"),
    )


def records_from_json(text: str) -> list[RemoteRecord]:
    return [RemoteRecord(d["entry"], base64.b64decode(d["value"]), float(d["expires"])) for d in json.loads(text)]


# --- [limits] and digest nonce-counts shared by the workers
# (sosimple_proxy.workers.shared_limits, .shared_nonces)


class LimitsReport(amp.Command):
    """Worker -> parent: per source, the requests the worker let through
    and the wrong credentials it saw since its last report (JSON objects,
    address -> count; at most ``shared_limits.MAX_BATCH`` sources each)."""

    arguments = [(b"requests", amp.Unicode()), (b"failures", amp.Unicode())]
    response: list = []


class BanSource(amp.Command):
    """Either way: ``address`` is banned for ``seconds`` more."""

    arguments = [(b"address", amp.Unicode()), (b"reason", amp.Unicode()), (b"seconds", amp.Float())]
    response: list = []


class UnbanSource(amp.Command):
    """Parent -> worker: the ban of ``address`` is lifted."""

    arguments = [(b"address", amp.Unicode()), (b"why", amp.Unicode())]
    response: list = []


class AcceptCount(amp.Command):
    """Worker -> parent -> worker ``owner``: accept nonce-count ``nc`` of
    ``nonce`` (issued at ``issued``)?  The verdict is a
    :class:`~sosimple_proxy.security.nonces.CountVerdict` value."""

    arguments = [(b"owner", amp.Integer()), (b"nonce", amp.Unicode()), (b"issued", amp.Float()), (b"nc", amp.Integer())]
    response = [(b"verdict", amp.Unicode())]
