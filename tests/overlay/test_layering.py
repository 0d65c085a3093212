"""The overlay imports nothing above it (DESIGN.md, layers): no sip, proxy,
location, web, nor the config module (``service.py`` takes a mapping)."""

from __future__ import annotations

import ast
import pathlib

import sosimple_proxy.overlay

ABOVE = ("sip", "proxy", "location", "web", "config", "service", "cli", "testing")


def imported(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level >= 2:  # from ..x import y: a sibling layer
                names.add("sosimple_proxy." + (node.module or node.names[0].name))
            elif node.level == 0 and node.module:
                names.add(node.module)
    return names


def test_the_overlay_imports_nothing_above_it():
    folder = pathlib.Path(sosimple_proxy.overlay.__file__).parent
    bad = {
        f"{path.name}: {name}"
        for path in sorted(folder.glob("*.py"))
        for name in imported(path)
        if any(name == f"sosimple_proxy.{layer}" or name.startswith(f"sosimple_proxy.{layer}.") for layer in ABOVE)
    }
    assert not bad
