"""The commands between a proxy's parent process and its workers (AMP).

Bindings travel as JSON (:func:`bindings_to_json`), ring records as the
three fields a lookup reads.  Values stay well under AMP's 64 KiB: an AoR
has at most ``[registrar] max_contacts`` bindings.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
from twisted.protocols import amp

from sosimple_proxy.location.bindings import Binding

__all__ = ["Hello", "PushBindings", "RingGet", "Commit", "bindings_to_json", "bindings_from_json", "RemoteRecord"]


class Hello(amp.Command):
    """Worker -> parent, once connected: the parent answers after it has
    pushed every binding it holds to this worker."""

    arguments = [(b"index", amp.Integer())]
    response = [(b"bindings", amp.Integer())]


class PushBindings(amp.Command):
    """Either way: a change to one AoR's bindings, as a delta
    (:mod:`.shared_bindings`): ``bindings`` new or renewed, ``removed``
    the ones that went (both JSON lists of bindings)."""

    arguments = [(b"aor", amp.Unicode()), (b"bindings", amp.Unicode()), (b"removed", amp.Unicode())]
    response: list = []


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


def bindings_to_json(bindings: list[Binding]) -> str:
    return json.dumps([attrs.asdict(b) for b in bindings], separators=(",", ":"))


def bindings_from_json(text: str) -> list[Binding]:
    out = []
    for d in json.loads(text):
        d["path"] = tuple(d.get("path") or ())
        out.append(Binding(**d))
    return out


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
