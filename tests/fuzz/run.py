"""``make fuzz``: coverage-guided fuzzing (atheris, libFuzzer) of each target
in :mod:`tests.fuzz.targets` for a fixed time, seeded from the torture
corpus and the saved crash inputs; prints figures per target.

usage: python -m tests.fuzz.run [--seconds-per-target N] [--only NAME] [--target NAME]

Each target runs in its own child process (libFuzzer owns the process it
runs in and exits it on a crash).  A crash input is written to
``tests/data/fuzz/<target>/crash-<sha1>``; add it to the repository with
the fix, and ``tests/fuzz/test_fuzz_regressions.py`` replays it forever.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data"
CRASHES = DATA / "fuzz"
TORTURE = DATA / "torture"


def seeds(target: str) -> list[Path]:
    """Torture messages for the SIP targets, encoded bodies for the AMP one,
    and every crash input saved for the target."""
    out: list[Path] = []
    if target != "amp_decoder":
        out += sorted(p for p in TORTURE.rglob("*.dat"))
    saved = CRASHES / target
    if saved.is_dir():
        out += sorted(p for p in saved.iterdir() if p.is_file())
    return out


def amp_bodies() -> list[bytes]:
    """Well-formed bodies of the overlay's messages, so a fuzzer starts past the length prefixes."""
    from sosimple_proxy.overlay import wire
    from sosimple_proxy.overlay.messages import Peer
    from sosimple_proxy.overlay.records import Record

    peer = Peer(12345, "10.0.0.1:7000")
    rec = Record(99, "registration", "e1", "w", b"value", 1e9, 3, b"", b"", False)
    bodies = [
        wire.encode_int(42),
        wire.encode_hello(1, 0, peer),
        wire.encode_peer(peer),
        wire.encode_peers([peer, peer]),
        wire.encode_records([rec, rec]),
        wire.encode_fetch(99, "registration"),
        wire.encode_sync(1, 2**32, {}),
        wire.encode_leave(peer, None, [peer]),
    ]
    return bodies


def amp_seeds(directory: Path) -> None:
    for i, body in enumerate(amp_bodies()):
        for command in range(10):
            (directory / f"seed-{i}-{command}").write_bytes(bytes([command]) + body)


def child(target: str, seconds: int, corpus: Path, crash_dir: Path) -> None:
    """Runs inside the child: atheris over one target."""
    import atheris

    with atheris.instrument_imports(include=["sosimple_proxy"]):
        from tests.fuzz import targets
    func = targets.TARGETS[target]
    if target == "amp_decoder":
        targets._ring()  # built before fuzzing, not counted as a slow input
    crash_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        "-max_len=8192",
        "-rss_limit_mb=2048",
        "-timeout=10",
        f"-artifact_prefix={crash_dir}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, func)
    atheris.Fuzz()


def run_target(target: str, seconds: int) -> dict:
    crash_dir = CRASHES / target
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, p in enumerate(seeds(target)):
            shutil.copy(p, corpus / f"s{i}-{p.name}")
        if target == "amp_decoder":
            amp_seeds(corpus)
        before = set(crash_dir.iterdir()) if crash_dir.is_dir() else set()
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.run", "--child", target, "--seconds-per-target", str(seconds),
             "--corpus", str(corpus)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            errors="replace",
        )
        took = time.monotonic() - t0
        corpus_size = len(list(corpus.iterdir()))
    out = proc.stdout + proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", out)
    after = set(crash_dir.iterdir()) if crash_dir.is_dir() else set()
    new = sorted(after - before)
    return {
        "target": target,
        "seconds": round(took, 1),
        "execs": int(runs[-1]) if runs else None,
        "coverage": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "corpus": corpus_size,
        "exit": proc.returncode,
        "crashes": [str(p.relative_to(ROOT)) for p in new],
        "tail": out[-3000:] if proc.returncode != 0 else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds-per-target", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--child")
    ap.add_argument("--corpus")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.seconds_per_target, Path(args.corpus), CRASHES / args.child)
        return 0
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed (pip install '.[fuzz]')", file=sys.stderr)
        return 2
    from tests.fuzz.targets import TARGETS

    names = args.only or list(TARGETS)
    results = []
    for name in names:
        print(f"fuzz: {name} for {args.seconds_per_target}s ...", flush=True)
        r = run_target(name, args.seconds_per_target)
        results.append(r)
        if r["tail"]:
            print(r["tail"])
    print()
    print(f"{'target':<20}{'seconds':>9}{'execs':>11}{'execs/s':>9}{'cov':>7}{'ft':>7}{'corpus':>8}  crashes")
    bad = 0
    for r in results:
        rate = f"{r['execs'] / r['seconds']:.0f}" if r["execs"] and r["seconds"] else "-"
        print(f"{r['target']:<20}{r['seconds']:>9}{r['execs'] or '-':>11}{rate:>9}{r['coverage'] or '-':>7}"
              f"{r['features'] or '-':>7}{r['corpus']:>8}  {', '.join(r['crashes']) or 'none'}")
        bad += bool(r["crashes"]) or r["exit"] != 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
