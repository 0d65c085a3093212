"""A short A/B probe of server CPU per call (not a `make bench` section).

Runs each workload once at a fixed rate for a few seconds (sipp against a
freshly started server, as ``bench.sip_load`` does) and prints the server's
CPU per call from /proc; with ``--profile`` also a py-spy summary of ours.
Short bursts on purpose: the machines are shared, and CPU time per call,
unlike wall-clock rates, is not much disturbed by neighbours.

    python -m bench.cpu_quick [ours] [kamailio] [REGISTER] [MESSAGE] [INVITE] \
        [--rate=1000] [--seconds=5] [--profile] [--cprofile=FILE]
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import sip_load as sl
from sosimple_proxy.testing import free_port


def _with_cprofile(out: Path) -> None:
    """Make ProxyProcess run twistd with its own cProfile (written at stop)."""
    from sosimple_proxy.testing.proxy import ProxyProcess

    plain = ProxyProcess.argv

    def argv(self: ProxyProcess) -> list[str]:
        # twistd's own profiler: wall time (a sendto preempted on a shared
        # machine is charged for the wait), but exact call counts.
        args = plain(self)
        i = args.index("-n") + 1
        return args[:i] + [f"--profile={out}", "--profiler=cprofile", "--savestats"] + args[i:]

    ProxyProcess.argv = argv  # type: ignore[method-assign]


def cprofile_summary(path: Path, top: int) -> str:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def one(kind: str, workload: str, rate: int, seconds: float, profile: bool, top: int = 30,
        cprofile: Path | None = None) -> str:
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-quick-"))
    bench = sl.Bench(work, time.monotonic() + 600, say=lambda _t: None)
    server = {"ours": sl.Ours, "kamailio": sl.Kamailio}[kind](auth=workload in sl.AUTH_WORKLOADS)
    server.start(work)
    probe_uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe_uas.bind(("127.0.0.1", 0))
    bench.probe_uas = probe_uas
    spy = None
    try:
        uas_port = free_port("udp")
        if workload in sl.UAS:
            sl.register_uas(server, uas_port)
            sl.register_uas(server, probe_uas.getsockname()[1], "probe")
        calls = int(rate * seconds)
        raw = work / "pyspy.txt"
        if profile and kind == "ours":
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([pyspy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "200",
                                    "--duration", str(int(seconds) + 1), "--nonblocking", "-o", str(raw)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        users = bench.users if workload.startswith("REGISTER") else None
        st = bench.step(server, workload, rate, calls, uas_port, users)
        text = f"{kind} {workload} @{rate}/s: {st.describe()}; server CPU {st.cpu_us or 0:.1f} us/call"
        if spy is not None:
            spy.wait(timeout=seconds + 30)
            if raw.exists():
                text += "\n" + sl.summarize_pyspy(raw.read_text(), top)
        return text
    finally:
        probe_uas.close()
        server.stop()
        if "--log" in sys.argv:
            for log in work.rglob("twistd.log"):
                lines = log.read_text(errors="replace").splitlines()
                print(f"{log}: {len(lines)} lines; last: " + "\n".join(lines[-8:]))
        shutil.rmtree(work, ignore_errors=True)
        if cprofile is not None and cprofile.exists():
            print(cprofile_summary(cprofile, top))


def main(argv: list[str]) -> None:
    kinds = [a for a in argv if a in ("ours", "kamailio")] or ["ours"]
    wls = [a for a in argv if a in sl.WORKLOADS] or ["REGISTER", "MESSAGE", "INVITE"]
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    rate, seconds = int(opts.get("rate", 1000)), float(opts.get("seconds", 5))
    cprof = Path(opts["cprofile"]) if "cprofile" in opts else None
    if cprof is not None:
        _with_cprofile(cprof)
    for w in wls:
        for k in kinds:
            print(one(k, w, rate, seconds, "--profile" in argv, cprofile=cprof if k == "ours" else None), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
