"""Run the parser once with its pure-Python code and once with the compiled
fast paths (:mod:`sosimple_proxy.sip.accel`), and describe each outcome down
to every slot of every object, so that two outcomes compare equal only when
the message, every parsed view and the view cache are the same, or the
errors are (same text, status, partial message).

Shared by tests/sip/test_cparse.py and the fuzz target in
tests/fuzz/targets.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sosimple_proxy.sip import accel
from sosimple_proxy.sip.errors import ParseError
from sosimple_proxy.sip.grammar import Params
from sosimple_proxy.sip.headers import CSeq, NameAddr
from sosimple_proxy.sip.message import Message, Request, Response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.uri import URI
from sosimple_proxy.sip.via import Via

_SLOTTED = (Via, URI, NameAddr, CSeq)


def describe(obj: Any) -> Any:
    """A plain, comparable rendering of a parse result: types, every slot
    (NameAddr's lazy state included), Params with their spellings."""
    if isinstance(obj, Params):
        return ("Params", list(dict.items(obj)), sorted(obj._names.items()))
    if isinstance(obj, _SLOTTED):
        return (type(obj).__name__, [(s, describe(getattr(obj, s, "<unset>"))) for s in type(obj).__slots__])
    if isinstance(obj, Message):
        return describe_message(obj)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [describe(x) for x in obj])
    if isinstance(obj, dict):
        return ("dict", sorted((k, describe(v)) for k, v in obj.items()))
    return (type(obj).__name__, obj)


def describe_message(msg: Message) -> Any:
    if isinstance(msg, Request):
        start: tuple[Any, ...] = ("Request", msg.method, msg.uri, msg.version)
    else:
        assert isinstance(msg, Response)
        start = ("Response", msg.status, msg.reason, msg.version)
    return (start, describe(msg.headers._fields), msg.body, describe(msg._cache), msg._validated >= 0)


def _views(msg: Message) -> list[Any]:
    """Every structured view, read after the parse (lazy ones included)."""
    names = ["vias", "top_via", "cseq", "call_id", "from_", "to", "max_forwards", "contacts", "routes",
             "record_routes"]
    if isinstance(msg, Request):
        names.append("ruri")
    out = []
    for name in names:
        try:
            out.append((name, describe(getattr(msg, name))))
        except ParseError as e:
            out.append((name, "ParseError", str(e)))
    return out


def outcome(data: bytes, stream: bool = False, validate: bool = True) -> Any:
    """What parse_message does with ``data``: the message and its views, or the error."""
    try:
        msg = parse_message(data, stream=stream, validate=validate)
    except ParseError as e:
        partial = describe_message(e.partial) if e.partial is not None else None
        return ("error", str(e), e.status, e.is_request, partial)
    return ("ok", describe_message(msg), _views(msg), msg.serialize())


@contextmanager
def implementation(compiled: bool) -> Iterator[None]:
    """Run the block with the compiled fast paths on or off, then restore."""
    before = accel.active() is not None
    accel.use(compiled)
    try:
        yield
    finally:
        accel.use(before)


def both(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` with the pure code, then with the compiled code."""
    with implementation(False):
        pure = fn()
    with implementation(True):
        fast = fn()
    return pure, fast
