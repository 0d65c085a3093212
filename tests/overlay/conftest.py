"""Figures from the overlay simulations, printed at the end of the run.

Simulations report what they measured (hops, losses, success rates)
through the ``figures`` fixture; the lines are printed as they come (seen
with ``-s``) and again in a section of pytest's closing summary, so a
plain ``pytest -q`` run shows them too.
"""

from __future__ import annotations

import pytest

_FIGURES: list[str] = []


@pytest.fixture
def figures(request):
    def report(line: str) -> None:
        text = f"{request.node.name}: {line}"
        print(text)
        _FIGURES.append(text)

    return report


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("overlay simulation figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
