"""Keep one section per benchmark in ``bench/results.md``, replaced in place."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("results.md")
HEADER = "# Benchmark results\n\nWritten by `make bench` (`python -m bench`); each section is replaced when its benchmark runs again.\n"


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else HEADER
    if begin in old and end in old:
        head, _, rest = old.partition(begin)
        _, _, tail = rest.partition(end)
        new = head + block.rstrip("\n") + tail
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)
