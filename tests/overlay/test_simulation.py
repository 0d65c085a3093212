"""The ring at scale, in simulation: the figures issue 5 asks for.

Every scenario runs with five seeds, all of which must pass; each prints
what it measured (see ``conftest.py``).  Set ``OVERLAY_BIG=1`` to also run
the larger versions (more seeds, bigger rings).

The seeds are independent and deterministic, so the selected ones run in
worker processes, one per core (``OVERLAY_SIM_WORKERS`` overrides; 0 runs
them in the test process): each test waits for its own seed's outcome and
reports its figures.  On two cores that halves the wall time.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import traceback

import pytest

from sosimple_proxy.overlay.node import LookupFailed, NodeConfig
from sosimple_proxy.overlay.simnet import SimCluster, percentile
from sosimple_proxy.testing.ring import sim_ring

SEEDS = [1, 2, 3, 4, 5]
BIG = pytest.mark.skipif(not os.environ.get("OVERLAY_BIG"), reason="set OVERLAY_BIG=1 for the large simulations")


def build(seed: int, n: int, **cfg) -> SimCluster:
    return sim_ring(n, seed, NodeConfig(stabilize_interval=1.0, **cfg))


def lookup_batch(c: SimCluster, count: int) -> tuple[int, list[int], int]:
    """``count`` lookups of random keys from random nodes: (right, hops, failed)."""
    nodes = c.joined()
    keys, ds = [], []
    for _ in range(count):
        key = c.random_key()
        keys.append(key)
        ds.append(c.rng.choice(nodes).lookup(key))
    results = c.gather(ds)
    right, hops, failed = 0, [], 0
    for (ok, r), key in zip(results, keys):
        if not ok:
            failed += 1
            continue
        hops.append(r.hops)
        right += r.responsible.id == c.true_successor(key)
    return right, hops, failed


def run_stable_lookups(seed: int, n: int, lookups: int, figures) -> None:
    c = build(seed, n)
    c.run(3)
    right, hops, failed = lookup_batch(c, lookups)
    mean = sum(hops) / len(hops)
    bound = 0.5 * math.log2(n) + 1
    figures(
        f"N={n} seed={seed}: {right}/{lookups} lookups right, hops mean {mean:.2f} "
        f"(bound {bound:.2f}) p99 {percentile(hops, 99):g} max {max(hops)}"
    )
    assert failed == 0
    assert right == lookups
    assert mean <= bound


def lookups_1000(seed: int, figures) -> None:
    run_stable_lookups(seed, 1000, 10_000, figures)


def lookups_4000(seed: int, figures) -> None:
    run_stable_lookups(seed, 4000, 10_000, figures)


def store_records(c: SimCluster, count: int) -> list:
    """Put ``count`` records of random keys through random nodes."""
    nodes = c.joined()
    records = [c.make_record(value=b"r%d" % i) for i in range(count)]
    acks = c.gather([c.rng.choice(nodes).put(r) for r in records])
    assert all(ok and n == c.config.replicas + 1 for ok, n in acks)
    return records


def read_all(c: SimCluster, records: list) -> int:
    """Read every record back through random nodes; how many came back right."""
    nodes = c.joined()
    results = c.gather([c.rng.choice(nodes).get(r.key) for r in records])
    return sum(1 for (ok, got), r in zip(results, records) if ok and got == [r])


def kill_two(seed: int, figures) -> None:
    """replicas = 2: 100 trials of two simultaneous crashes, repaired in between."""
    c = build(seed, 64, replicas=2)
    records = store_records(c, 300)
    lost = unreadable = 0
    repair_rounds = []
    for trial in range(100):
        victims = c.rng.sample(c.joined(), 2)
        for v in victims:
            c.kill(v)
        lost += sum(1 for r in records if not c.holders(r))
        # reads work at once, before any repair
        sample = c.rng.sample(records, 10)
        unreadable += len(sample) - read_all(c, sample)
        # then the ring re-replicates: every record back at replicas + 1 copies
        # on its true replica set within a few rounds
        rounds = 0
        while not all(c.copies_in_place(r) == 3 for r in records):
            assert rounds < 10, "not re-replicated within 10 rounds"
            c.run(1)
            rounds += 1
        repair_rounds.append(rounds)
        c.settle(max_rounds=30)
        # keep the ring's size: two newcomers join (and pull their keys)
        c.add_node()
        c.add_node()
    c.settle(until=lambda: all(c.copies_in_place(r) == 3 for r in records))
    readable = read_all(c, records)
    figures(
        f"seed={seed}: 100 trials x 2 crashes in 64 nodes, replicas=2: lost {lost} of 300 records, "
        f"{unreadable} failed reads right after a crash, repaired to 3 copies in "
        f"mean {sum(repair_rounds) / len(repair_rounds):.1f} max {max(repair_rounds)} rounds, {readable}/300 readable at the end"
    )
    assert lost == 0 and unreadable == 0 and readable == len(records)


def kill_30_percent(seed: int, figures) -> None:
    """successors = 20 (2 log2 N): nothing is lost that had a surviving copy; lookups recover."""
    n = 1000
    c = build(seed, n, successors=20, replicas=2)
    records = store_records(c, 2000)
    replica_sets = {r.key: set(c.true_replica_set(r.key)) for r in records}
    victims = c.rng.sample(c.joined(), int(0.3 * n))
    for v in victims:
        c.kill(v)
    dead = {v.id for v in victims}
    doomed = [r for r in records if replica_sets[r.key] <= dead]
    survivors = [r for r in records if not replica_sets[r.key] <= dead]
    success = []
    for _ in range(10):
        c.run(1)
        right, _, failed = lookup_batch(c, 500)
        success.append(right / 500)
        if right == 500:
            break
    recovered = len(success)
    c.settle(until=lambda: all(c.copies_in_place(r) == 3 for r in survivors))
    lost = sum(1 for r in survivors if not c.holders(r))
    readable = read_all(c, survivors)
    figures(
        f"seed={seed}: killed 300 of 1000 (successors=20): {len(doomed)} records had their whole replica set killed, "
        f"{lost} of the other {len(survivors)} lost, {readable} readable; lookup success by round "
        + " ".join(f"{s:.1%}" for s in success)
    )
    assert lost == 0 and readable == len(survivors)
    assert success[-1] == 1.0 and recovered <= 10


def poisson(rng, mean: float) -> int:
    """A Poisson-distributed count (Knuth's method; fine for small means)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def run_churn(seed: int, n: int, rounds: int, figures, median_session: float = 20.0) -> None:
    """Poisson joins and crashes around ``n`` nodes, with lookups, writes and reads throughout."""
    c = build(seed, n)
    rng = c.rng
    records = store_records(c, 300)
    rate = math.log(2) / median_session  # crashes per node per round: exponential sessions
    stats = {"lookups": 0, "lookups_ok": 0, "reads": 0, "reads_ok": 0, "writes": 0, "writes_ok": 0}
    joins = crashes = 0

    def at(delay, f, *args):
        c.clock.callLater(delay, f, *args)

    def crash():
        live = c.joined()
        if len(live) > n // 2:
            c.kill(rng.choice(live))

    def lookup():
        node, key = rng.choice(c.joined()), c.random_key()

        def done(result):
            if node.address not in c.net.alive:
                return  # the asker crashed: not the ring's fault
            stats["lookups"] += 1
            ok = not isinstance(result, Exception) and hasattr(result, "responsible")
            stats["lookups_ok"] += ok and result.responsible.id == c.true_successor(key)

        node.lookup(key).addBoth(done)

    def read():
        node, record = rng.choice(c.joined()), rng.choice(records)
        if not c.holders(record):
            return  # every copy died: no read can find it

        def done(result):
            if node.address not in c.net.alive:
                return
            stats["reads"] += 1
            stats["reads_ok"] += isinstance(result, list) and record in result

        node.get(record.key).addBoth(done)

    def write():
        node, record = rng.choice(c.joined()), c.make_record(value=b"churn")

        def done(result):
            if node.address not in c.net.alive:
                return
            stats["writes"] += 1
            if isinstance(result, int):
                stats["writes_ok"] += 1
                records.append(record)

        node.put(record).addBoth(done)

    for _ in range(rounds):
        width = c.interval
        for _ in range(poisson(rng, rate * len(c.joined()))):
            crashes += 1
            at(rng.random() * width, crash)
        for _ in range(poisson(rng, rate * n)):
            joins += 1
            at(rng.random() * width, c.add_node)
        for _ in range(20):
            at(rng.random() * width, lookup)
        for _ in range(5):
            at(rng.random() * width, read)
        at(rng.random() * width, write)
        c.run(1)
    c.run(5)  # let what is in flight finish
    c.settle(max_rounds=60)
    c.run(5)
    with_copy = [r for r in records if c.holders(r)]
    readable = read_all(c, with_copy)
    lookup_rate = stats["lookups_ok"] / stats["lookups"]
    read_rate = stats["reads_ok"] / stats["reads"]
    figures(
        f"seed={seed}: {n} nodes, {rounds} rounds, {joins} joins, {crashes} crashes (median session {median_session:g} rounds): "
        f"lookups {stats['lookups_ok']}/{stats['lookups']} = {lookup_rate:.2%} right, "
        f"reads {stats['reads_ok']}/{stats['reads']} = {read_rate:.2%}, writes {stats['writes_ok']}/{stats['writes']}; "
        f"records: {len(records)} stored, {len(records) - len(with_copy)} lost every copy, "
        f"{readable}/{len(with_copy)} with a live copy readable"
    )
    assert lookup_rate >= 0.99
    assert readable == len(with_copy)


def churn_500(seed: int, figures) -> None:
    run_churn(seed, 500, 200, figures)


# ------------------------------------------------------------- the tests

#: test name -> (scenario, seeds); the BIG ones only with OVERLAY_BIG set
TESTS = {
    "test_lookups_in_a_stable_ring_of_1000": (lookups_1000, SEEDS),
    "test_lookups_in_a_stable_ring_of_4000": (lookups_4000, list(range(6, 11))),
    "test_killing_two_nodes_at_once_loses_nothing": (kill_two, SEEDS),
    "test_killing_30_percent_at_once": (kill_30_percent, SEEDS),
    "test_churn_500_nodes_200_rounds": (churn_500, SEEDS),
}
BIG_TESTS = {"test_lookups_in_a_stable_ring_of_4000"}


def run_scenario(name: str, seed: int) -> tuple[list[str], str | None]:
    """Run one seed of a scenario: (its figures, the failure text or None)."""
    lines: list[str] = []
    try:
        globals()[name](seed, lines.append)
    except Exception:
        return lines, traceback.format_exc()
    return lines, None


def _workers() -> int:
    given = os.environ.get("OVERLAY_SIM_WORKERS")
    if given is not None:
        return max(0, int(given))
    return min(os.cpu_count() or 1, 4) if (os.cpu_count() or 1) > 1 else 0


@pytest.fixture(scope="module")
def outcomes(request):
    """Start every selected seed in worker processes at once; futures by (test, seed)."""
    wanted = []
    for item in request.session.items:
        test = getattr(item, "originalname", None)
        if getattr(item, "module", None) is not request.module or test not in TESTS or not hasattr(item, "callspec"):
            continue
        if test in BIG_TESTS and not os.environ.get("OVERLAY_BIG"):
            continue
        wanted.append((test, item.callspec.params["seed"]))
    workers = _workers()
    if not workers:
        yield {}
        return
    # spawn, not fork: the test process may have threads and a reactor
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield {job: pool.submit(run_scenario, TESTS[job[0]][0].__name__, job[1]) for job in wanted}
    finally:
        pool.shutdown(cancel_futures=True)


def check(test: str, seed: int, outcomes, figures) -> None:
    future = outcomes.get((test, seed))
    if future is None:
        lines, failure = run_scenario(TESTS[test][0].__name__, seed)
    else:
        lines, failure = future.result()
    for line in lines:
        figures(line)
    if failure:
        pytest.fail(f"{test}[seed={seed}] failed in its worker:\n{failure}", pytrace=False)


@pytest.mark.parametrize("seed", SEEDS)
def test_lookups_in_a_stable_ring_of_1000(seed, outcomes, figures):
    check("test_lookups_in_a_stable_ring_of_1000", seed, outcomes, figures)


@BIG
@pytest.mark.parametrize("seed", range(6, 11))
def test_lookups_in_a_stable_ring_of_4000(seed, outcomes, figures):
    check("test_lookups_in_a_stable_ring_of_4000", seed, outcomes, figures)


@pytest.mark.parametrize("seed", SEEDS)
def test_killing_two_nodes_at_once_loses_nothing(seed, outcomes, figures):
    check("test_killing_two_nodes_at_once_loses_nothing", seed, outcomes, figures)


@pytest.mark.parametrize("seed", SEEDS)
def test_killing_30_percent_at_once(seed, outcomes, figures):
    check("test_killing_30_percent_at_once", seed, outcomes, figures)


@pytest.mark.parametrize("seed", SEEDS)
def test_churn_500_nodes_200_rounds(seed, outcomes, figures):
    check("test_churn_500_nodes_200_rounds", seed, outcomes, figures)
