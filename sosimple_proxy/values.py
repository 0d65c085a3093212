"""Value parsers for site.ini: each takes the raw string and returns a value
or raises ``ValueError`` with the problem (config.py adds section and key).

Shared by :mod:`sosimple_proxy.config`, the location providers' table
(:mod:`sosimple_proxy.providers`), which declares the sections its
providers read, and the parsers of the security settings; so it imports
nothing of the project and sits at the bottom of the layers.
"""

from __future__ import annotations

import re
from typing import Callable

Schema = dict[str, tuple[Callable[[str], object], str]]
"""A section's keys: key -> (parser, default raw value)."""


def boolean(raw: str) -> bool:
    """``yes``/``no`` (and ``true``/``false``, ``on``/``off``, ``1``/``0``)."""
    word = raw.strip().lower()
    if word in ("yes", "true", "on", "1"):
        return True
    if word in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"{raw.strip()!r} is not yes or no")


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"{raw.strip()!r} is not an integer") from None
        if lo is not None and value < lo:
            raise ValueError(f"{value} is below the minimum of {lo}")
        if hi is not None and value > hi:
            raise ValueError(f"{value} is above the maximum of {hi}")
        return value

    return parse


def number(lo: float = 0.0, strict: bool = True) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"{raw.strip()!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{raw.strip()!r} is not a finite number")
        if value < lo or (strict and value == lo):
            raise ValueError(f"{value:g} must be greater than {lo:g}")
        return value

    return parse


def words(raw: str) -> tuple[str, ...]:
    return tuple(w for w in re.split(r"[\s,]+", raw.strip()) if w)


def port(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what}: {text!r} is not a port number")
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{what}: port {port} is out of range 0-65535")
    return port


def hostports(raw: str) -> tuple[tuple[str, int], ...]:
    out = []
    for word in words(raw):
        m = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<h>[^:\[\]]+)):(?P<p>.*)", word)
        if not m:
            raise ValueError(f"{word!r} is not host:port")
        out.append((m["v6"] or m["h"], port(m["p"], repr(word))))
    return tuple(out)
