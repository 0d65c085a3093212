"""Profile summaries kept in ``bench/profiles/`` (issue 12): the top 15
functions by own time for each workload (REGISTER, REGISTER-AUTH, MESSAGE,
INVITE-ACK-BYE), one markdown file each, from ``bench.inproc --summary``
(the proxy as twistd builds it, in process, cProfile with the cyclic GC
off).  Run in a child process: the harness starts the proxy's services on
the global reactor, which the other sections must not inherit.

    python -m bench profiles
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "profiles"
WORKLOADS = ("REGISTER", "REGISTER-AUTH", "MESSAGE", "INVITE")
TIMEOUT = 600.0


def headline(text: str) -> str:
    """The first line of a summary without its ``### ``: "REGISTER: 560
    Python function calls per call"."""
    first = text.splitlines()[0] if text.strip() else ""
    return first.lstrip("#").strip()


def run() -> str:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.inproc", "--summary", f"--out={OUT}", *WORKLOADS],
        cwd=HERE.parent, capture_output=True, text=True, timeout=TIMEOUT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.inproc --summary failed ({done.returncode}): {done.stderr[-2000:]}")
    lines = [
        "## Profile summaries (top 15 functions per workload)",
        "",
        "`bench.inproc --summary`: the proxy as twistd builds it, datagrams handed to its UDP protocol (no kernel), "
        "1,000 calls of each workload under cProfile with the cyclic GC off; own time in percent (relative) and "
        "calls per SIP call (exact). One file per workload:",
        "",
    ]
    for w in WORKLOADS:
        path = OUT / f"{w}.md"
        if path.exists():
            lines.append(f"- [`bench/profiles/{w}.md`](profiles/{w}.md): {headline(path.read_text())}")
        else:
            lines.append(f"- {w}: not written")
    lines += ["", f"Section time: {time.monotonic() - started:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run())
