"""Every input the fuzzers ever crashed on, replayed through its target
(``tests/data/fuzz/<target>/``), plus the torture corpus and a short,
seeded mutation pass through each target so that the suite itself fuzzes
a little without atheris.  ``make fuzz`` is the long, coverage-guided run.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.fuzz.mutate import mutate, torture_messages
from tests.fuzz.targets import TARGETS

DATA = Path(__file__).resolve().parent.parent / "data"
SAVED = sorted(p for p in (DATA / "fuzz").glob("*/*") if p.is_file() and p.parent.name in TARGETS)
TORTURE = sorted((DATA / "torture").rglob("*.dat"))


@pytest.mark.parametrize("path", SAVED, ids=[f"{p.parent.name}/{p.name}" for p in SAVED])
def test_saved_crash_input_no_longer_crashes(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())


def test_every_target_has_a_place_for_its_crashes() -> None:
    assert TORTURE, "the torture corpus is the fuzzers' seed"
    names = {p.parent.name for p in SAVED}
    assert names <= set(TARGETS)


@pytest.mark.parametrize("target", ["sip_parser", "parser_c_vs_pure", "framing", "transaction_input"])
def test_torture_corpus_through_target(target: str) -> None:
    for path in TORTURE:
        data = path.read_bytes()
        TARGETS[target](bytes([13]) + data if target == "framing" else data)


@pytest.mark.parametrize("target", ["sip_parser", "framing", "transaction_input"])
def test_mutated_torture_messages(target: str) -> None:
    rng = random.Random(f"fuzz-{target}")
    corpus = torture_messages()
    for _ in range(1000):
        TARGETS[target](mutate(rng.choice(corpus), rng))


def test_mutated_amp_bodies() -> None:
    from tests.fuzz.run import amp_bodies

    rng = random.Random("fuzz-amp")
    bodies = amp_bodies()
    for _ in range(300):
        TARGETS["amp_decoder"](bytes([rng.randrange(10)]) + mutate(rng.choice(bodies), rng))
