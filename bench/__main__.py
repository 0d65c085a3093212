"""Run the benchmark sections and record each in ``bench/results.md``.

A section is any module ``bench/<name>.py`` with ``run() -> str`` returning
a markdown section (the parser's is ``bench/parser.py``); so another layer
adds its figures by adding a module, nothing else.  ``python -m bench`` runs
them all (parser first), ``python -m bench parser`` only the named ones.
A section that fails is reported and the others still run.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from bench.results import write_section

FIRST = ["parser"]
NOT_SECTIONS = {"results", "__main__"}


def sections() -> list[str]:
    found = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in NOT_SECTIONS)
    return [n for n in FIRST if n in found] + [n for n in found if n not in FIRST]


def main(argv: list[str]) -> int:
    failed = 0
    for name in argv or sections():
        module = importlib.import_module(f"bench.{name}")
        run = getattr(module, "run", None)
        if run is None:
            continue
        started = time.perf_counter()
        try:
            text = run()
        except Exception:
            failed += 1
            traceback.print_exc()
            print(f"({name}: FAILED)\n", flush=True)
            continue
        print(text)
        print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
        write_section(name, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
