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

__all__ = ["Hello", "PushBindings", "PushBatch", "RingGet", "Commit", "bindings_to_json", "bindings_from_json", "batches",
           "batch_from_json", "RemoteRecord"]


class Hello(amp.Command):
    """Worker -> parent, once connected: the parent answers after it has
    pushed every binding it holds to this worker."""

    arguments = [(b"index", amp.Integer())]
    response = [(b"bindings", amp.Integer())]


class PushBindings(amp.Command):
    """Either way: a change to one AoR's bindings, as a delta
    (:mod:`.shared_bindings`): ``bindings`` new or renewed, ``removed``
    the ones that went (both JSON lists of bindings).

    Not answered: one push per REGISTER crosses worker -> parent -> every
    other worker, and an answer to each doubled the AMP messages (about 40%
    of the parent's CPU per REGISTER).  Nothing waited on the answers: the
    line is a stream, so pushes arrive in order and before anything sent
    after them (the answer to :class:`Hello` among them)."""

    arguments = [(b"aor", amp.Unicode()), (b"bindings", amp.Unicode()), (b"removed", amp.Unicode())]
    requiresAnswer = False


class RingGet(amp.Command):
    """Worker -> parent: the registration records of an AoR in one ring."""

    arguments = [(b"ring", amp.Unicode()), (b"aor", amp.Unicode()), (b"kind", amp.Unicode())]
    response = [(b"records", amp.Unicode())]
    errors = {Exception: b"RING_FAILED"}


class Commit(amp.Command):
    """Worker -> parent, after a REGISTER changed ``aor``'s bindings (whose
    delta went first on the same line): does the ring's write quorum hold
    them?  ``ok`` false: a write failed; the worker's registrar answers 500
    with Retry-After, as a single process does (issue 15)."""

    arguments = [(b"aor", amp.Unicode())]
    response = [(b"ok", amp.Boolean())]


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
    """Either way: the changes (deltas, as :class:`PushBindings`) of several AoRs (:func:`batches`).
    A worker sends its changes at most every ``hub.BATCH_INTERVAL`` seconds,
    the parent passes the same text on: one AMP message per batch instead
    of per REGISTER, whose machinery was most of what sharing a binding
    cost.  Unanswered, as :class:`PushBindings`."""

    arguments = [(b"changes", amp.Unicode())]
    requiresAnswer = False


# A batch's text stays under AMP's 64 KiB value (json.dumps writes ASCII:
# one character is one byte).
MAX_BATCH_BYTES = 60_000


def batches(changes: Iterable[tuple[str, list[Binding], list[Binding]]]) -> Iterator[str]:
    """``[[aor, [changed binding fields...], [removed...]], ...]`` texts of
    at most :data:`MAX_BATCH_BYTES` (an AoR alone may be longer: at most
    ``[registrar] max_contacts`` bindings, as one PushBindings was)."""
    rows = [[aor, [_values(b) for b in changed], [_values(b) for b in removed]] for aor, changed, removed in changes]
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


def batch_from_json(text: str) -> list[tuple[str, list[Binding], list[Binding]]]:
    return [(aor, [_binding(r) for r in changed], [_binding(r) for r in removed])
            for aor, changed, removed in json.loads(text)]


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


class SipReport(amp.Command):
    """Worker -> parent, every second: the SIP counts' increments and the
    gauges (JSON, :mod:`sosimple_proxy.workers.shared_metrics`)."""

    arguments = [(b"report", amp.Unicode())]
    response: list = []


# --- presence: the workers' agents reach the parent's ring node
# (sosimple_proxy.workers.shared_presence)

CHUNK = 0xFFFF  # AMP's longest value


class BigBytes(amp.Argument):
    """Bytes of any length, over as many AMP values as it takes (``name``,
    ``name.2``, ...): a presentity's watchers can be more than 64 KiB."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = objects[name.decode("ascii")]
        strings[name] = value[:CHUNK]
        for i, start in enumerate(range(CHUNK, len(value), CHUNK), 2):
            strings[b"%s.%d" % (name, i)] = value[start:start + CHUNK]

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        parts = [strings.get(name, b"")]
        i = 2
        while (part := strings.get(b"%s.%d" % (name, i))) is not None:
            parts.append(part)
            i += 1
        objects[name.decode("ascii")] = b"".join(parts)


_RING_ERRORS = {Exception: b"RING_FAILED"}


class PresenceHello(amp.Command):
    """Worker -> parent: the ring node's writer (the agent names its
    subscriptions' ring entries with it); fails while not joined."""

    arguments: list = []
    response = [(b"writer", amp.Unicode())]
    errors = _RING_ERRORS


class PresenceGet(amp.Command):
    """Worker -> parent: the live records at key(``name``) (``kind`` "": all)."""

    arguments = [(b"name", amp.Unicode()), (b"kind", amp.Unicode())]
    response = [(b"records", BigBytes())]
    errors = _RING_ERRORS


class PresencePublish(amp.Command):
    """Worker -> parent: write a publication, tombstoning ``replacing``."""

    arguments = [(b"presentity", amp.Unicode()), (b"etag", amp.Unicode()), (b"body", BigBytes()),
                 (b"expires_at", amp.Float()), (b"replacing", BigBytes())]
    response: list = []
    errors = _RING_ERRORS


class PresenceRemove(amp.Command):
    """Worker -> parent: tombstone these records."""

    arguments = [(b"records", BigBytes())]
    response: list = []
    errors = _RING_ERRORS


class PresenceSubscription(amp.Command):
    """Worker -> parent: store (``value`` not empty) or remove a subscription entry."""

    arguments = [(b"presentity", amp.Unicode()), (b"entry", amp.Unicode()), (b"value", BigBytes()),
                 (b"expires_at", amp.Float())]
    response: list = []
    errors = _RING_ERRORS


class PresenceWatch(amp.Command):
    """Worker -> parent: watch key(``name``) for the worker's watch ``watch``
    (``cancel``: stop); the parent pushes :class:`PresenceChanged`."""

    arguments = [(b"name", amp.Unicode()), (b"watch", amp.Integer()), (b"cancel", amp.Boolean())]
    response: list = []
    errors = _RING_ERRORS


class PresenceChanged(amp.Command):
    """Parent -> worker: the live records of watch ``watch``'s key now."""

    arguments = [(b"watch", amp.Integer()), (b"records", BigBytes())]
    response: list = []
