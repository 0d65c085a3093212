"""The live fuzzer, short: 20,000 mutated torture datagrams and every
malformed TCP/TLS stream case at a proxy in its own network namespace.
The proxy never dies, answers an OPTIONS after every 10,000 datagrams and
after every stream case, logs no traceback, and its RSS stays bounded.
``make fuzz`` runs the same with a million datagrams."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def test_live_fuzz_short(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a loopback-only network namespace")
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.live", "--datagrams", "20000", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    print(proc.stdout)
    assert out.exists(), proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["netns"], "the live fuzzer must run in its own namespace here"
    assert figures["errors"] == [], proc.stdout
    assert figures["udp"]["datagrams"] == 20000 and figures["udp"]["probes_answered"] == 2
    assert figures["tracebacks_logged"] == 0
    assert len(figures["streams"]) == 18 and all(row[3] == "ok" and row[4] for row in figures["streams"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
