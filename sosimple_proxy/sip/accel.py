"""Which implementation of the parser's hot paths runs: compiled or pure.

:mod:`sosimple_proxy.sip._cparse` (C, built by ``pip install`` where a
compiler and the Python headers exist; see setup.py) holds fast paths of
the parser, of Via, name-addr, CSeq, Max-Forwards and sip URIs.  Each of its
functions either returns exactly what the pure-Python code returns for the
input, or None for "not my shape", and the pure code then runs: the pure
code is the reference and the fallback, and every error message comes from
it.  Why C and not more Python: profiles put parsing and validation at about
a quarter of the proxy's CPU per message, spread over ~460 Python calls that
no Python rewrite removes (bench/results.md, the parser note).

``SOSIMPLE_PURE_PYTHON=1`` in the environment forces the pure code.  Tests
switch at run time with :func:`use`; the modules that call into the C code
register a binder that receives the module (or None) whenever it changes.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Callable, Optional

__all__ = ["compiled", "available", "register", "use", "active"]

_Binder = Callable[[Optional[ModuleType]], None]


def _load() -> Optional[ModuleType]:
    try:
        from sosimple_proxy.sip import _cparse
    except ImportError:
        return None
    return _cparse


#: The compiled module when it was built, whatever is in use now.
compiled: Optional[ModuleType] = _load()
_active: Optional[ModuleType] = None if os.environ.get("SOSIMPLE_PURE_PYTHON", "") not in ("", "0") else compiled
_binders: list[_Binder] = []
_classes: dict[str, type] = {}


def available() -> bool:
    """The compiled module was built and imports."""
    return compiled is not None


def active() -> Optional[ModuleType]:
    """The compiled module when it is in use, else None."""
    return _active


def register_class(name: str, cls: type) -> None:
    """A class the compiled builders make instances of (Via, URI, ...)."""
    _classes[name] = cls
    if compiled is not None:
        try:
            compiled.register(name, cls)
        except (TypeError, ValueError) as e:
            # The class changed shape (its slots): the builders of it then
            # answer None and the pure code runs; test_cparse fails on it.
            unregistered[name] = str(e)


#: Classes the compiled module refused, and why (the pure code builds them).
unregistered: dict[str, str] = {}


def register(binder: _Binder) -> None:
    """Call ``binder`` now and whenever :func:`use` switches."""
    _binders.append(binder)
    binder(_active)


def use(compiled_code: bool) -> None:
    """Switch every registered module to the compiled code (if built) or to
    the pure code; for tests and benchmarks."""
    global _active
    if compiled_code and compiled is None:
        raise RuntimeError("sosimple_proxy.sip._cparse was not built")
    _active = compiled if compiled_code else None
    for binder in _binders:
        binder(_active)
