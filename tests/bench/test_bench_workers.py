"""The bench's own helpers (bench.workers, bench.profiles): /proc parsers,
the estimate and the report's tables.  No timed assertion: the figures
themselves are `make bench`'s."""

from __future__ import annotations

import time
from types import SimpleNamespace

from bench import profiles, workers
from bench import sip_load as sl


def test_proc_parsers():
    assert workers.parse_loadavg("19.43 19.80 20.51 3/812 26890\n") == (19.43, 19.80, 20.51)
    status = "Name:\tpython\nVmPeak:\t  200000 kB\nVmRSS:\t   51234 kB\nThreads:\t1\n"
    assert workers.parse_rss_kib(status) == 51234
    assert workers.parse_rss_kib("Name:\tkworker/0:1\n") == 0


def test_free_cores_estimate():
    # one worker 1,000/s on its own core; 2 workers cost 10% more per call
    assert workers.free_cores_estimate(1000, 200.0, 220.0, 2) == 1818
    assert workers.free_cores_estimate(None, 200.0, 220.0, 2) is None
    assert workers.free_cores_estimate(1000, None, 220.0, 2) is None


def test_table_aligns_numbers_right():
    assert workers.table(["a", "b", "c"], [["x", "1", "2"]]) == [
        "| a | b | c |", "| --- | ---: | ---: |", "| x | 1 | 2 |"]


def step(rate: int, calls: int, ok: int, cpu: float, retrans: int = 0) -> sl.Step:
    st = sl.Step("REGISTER", rate, calls, ok=ok, retrans=retrans, sent_rate=rate, server_cpu=cpu)
    return st


def test_report_gives_ratios_and_notes():
    m1 = workers.Measure(cpu=[step(150, 900, 900, 0.18), step(150, 900, 900, 0.20)])  # 200 us, then 222
    m2 = workers.Measure(cpu=[step(150, 900, 900, 0.198)], parent_us=[12.0, 15.0], rss_per_binding=[250, 1300, 1250])
    k1 = workers.Measure(cpu=[step(150, 900, 900, 0.045)])
    bad = workers.Measure(cpu=[step(150, 900, 300, 0.5, retrans=400)])  # mostly failed: no figure
    r1 = workers.Measure(best=step(2000, 6000, 6000, 1.0), steps=[step(2000, 6000, 6000, 1.0), step(4000, 12000, 100, 3.0)])
    results = {("cpu", "ours1", "REGISTER"): m1, ("cpu", "ours2", "REGISTER"): m2, ("cpu", "kam1", "REGISTER"): k1,
               ("cpu", "kam2", "REGISTER"): bad, ("rate", "ours1", "REGISTER"): r1}
    run = SimpleNamespace(results=results, started=time.monotonic(), load_before="1.00/1.00/1.00", cpu_rate=150)
    text = workers.report(run, ("REGISTER",))  # type: ignore[arg-type]
    row = next(ln for ln in text.splitlines() if ln.startswith("| REGISTER | 200.0"))
    # ours 1 worker 200 us (the lower round), 2 workers 220 us: 1.10x; the parent 12 us; Kamailio -n 1 50 us
    assert row.split(" | ")[1:5] == ["200.0", "220.0", "1.10x", "12.0"]
    assert "| 50.0 | - | - | 4.00x | - |" in row
    assert "all processes 2,800 B per binding" in text
    assert "| REGISTER | 2,000 | - | - |" in text
    assert "rate ours, 1 worker REGISTER: 2,000 pass, 4,000 FAIL" in text
    assert "cpu Kamailio -n 2 REGISTER at 150/s: 300/900 ok, 400 retr." in text


def test_profiles_headline():
    assert profiles.headline("### REGISTER: 571 Python function calls per call\n\n| a |") == \
        "REGISTER: 571 Python function calls per call"
    assert profiles.headline("") == ""
