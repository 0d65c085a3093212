"""Run every benchmark section and record it in ``bench/results.md``.

Each section is a module ``bench.<name>`` with ``run() -> str`` returning a
markdown section; a section whose module does not exist yet is skipped, so
other layers add theirs by adding a module and a name here.
"""

from __future__ import annotations

import importlib
import sys
import time

from bench.results import write_section

SECTIONS = ["parser", "transport", "transaction", "overlay"]


def main(argv: list[str]) -> int:
    wanted = argv or SECTIONS
    for name in wanted:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                continue
            raise
        started = time.perf_counter()
        text = module.run()
        print(text)
        print(f"({name}: {time.perf_counter() - started:.1f} s)\n", flush=True)
        write_section(name, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
