"""The nftables mirror of ``[limits]`` bans, with a recording runner in
place of ``nft`` (the command text is what these tests check; the real
kernel is tests/security/test_kernel_bans_netns.py's)."""

from __future__ import annotations

from typing import Sequence

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sosimple_proxy.security.kernel_bans import (
    IBanMirror,
    ICommandRunner,
    KernelBans,
    RunResult,
    counter_packets,
    kernel_bans_unavailable,
    parse_kernel_bans,
    table_name,
)
from sosimple_proxy.security.limits import Limits, LimitsConfig, parse_limits

T = "sosimple_10_0_0_1_5060"


@implementer(ICommandRunner)
class FakeRunner:
    """Records each run; answers from ``results`` (default: success), and
    holds each run's Deferred until :meth:`finish` when ``hold`` is set."""

    def __init__(self, hold: bool = False) -> None:
        self.runs: list[tuple[list[str], str]] = []
        self.hold = hold
        self.waiting: list[defer.Deferred] = []
        self.results: list[RunResult] = []
        self.counter_json = b'{"nftables": [{"metainfo": {}}, {"counter": {"name": "dropped", "packets": 42, "bytes": 9}}]}'

    def run(self, argv: Sequence[str], stdin: bytes) -> defer.Deferred:
        self.runs.append((list(argv), stdin.decode()))
        if "-j" in argv:
            return defer.succeed(RunResult(0, self.counter_json))
        result = self.results.pop(0) if self.results else RunResult(0)
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.waiting.append(d)
            d.addCallback(lambda _: result)
            return d
        return defer.succeed(result)

    def finish(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def batches(self) -> list[list[str]]:
        return [text.splitlines() for argv, text in self.runs if argv[1:] == ["-f", "-"]]


class LogEvents(list):
    def __call__(self, event: dict) -> None:
        self.append(event)


def mirror(runner: FakeRunner | None = None, **config) -> tuple[KernelBans, Limits, Clock, FakeRunner, LogEvents]:
    clock = Clock()
    runner = runner or FakeRunner()
    events = LogEvents()
    bans = KernelBans(clock, runner, T, [5060, 5061], log=Logger(observer=events))
    limits = Limits(clock, LimitsConfig(**config), log=Logger(observer=lambda e: None))
    limits.mirror = bans
    limits.on_ban.append(bans.banned)
    limits.on_lift.append(bans.lifted)
    return bans, limits, clock, runner, events


def started(**config) -> tuple[KernelBans, Limits, Clock, FakeRunner, LogEvents]:
    bans, limits, clock, runner, events = mirror(**config)
    done = bans.start()
    clock.advance(0)
    assert done.result is True
    return bans, limits, clock, runner, events


def test_provides_the_interface() -> None:
    bans, *_ = mirror()
    assert verifyObject(IBanMirror, bans)
    assert verifyObject(ICommandRunner, FakeRunner())


def test_start_makes_a_table_of_its_own_with_a_drop_rule_for_the_sip_ports() -> None:
    bans, limits, clock, runner, events = started()
    assert bans.state == "on"
    assert runner.batches() == [[
        f"add table inet {T}",
        f"delete table inet {T}",  # a crash's leftover table goes first
        f"add table inet {T}",
        f"add counter inet {T} dropped",
        f"add set inet {T} banned4 {{ type ipv4_addr; flags timeout; }}",
        f"add set inet {T} banned6 {{ type ipv6_addr; flags timeout; }}",
        f"add chain inet {T} input {{ type filter hook prerouting priority -300; policy accept; }}",
        f'add rule inet {T} input ip saddr @banned4 meta l4proto {{ tcp, udp }} th dport {{ 5060, 5061 }} counter name "dropped" drop',
        f'add rule inet {T} input ip6 saddr @banned6 meta l4proto {{ tcp, udp }} th dport {{ 5060, 5061 }} counter name "dropped" drop',
    ]]
    assert runner.runs[0][0] == ["nft", "-f", "-"]


def test_a_ban_becomes_an_element_with_the_ban_as_its_timeout() -> None:
    bans, limits, clock, runner, _ = started(ban_seconds=120)
    limits.ban("192.0.2.7", "flood")
    assert len(runner.batches()) == 1, "not run inside the ban: on the next reactor turn"
    clock.advance(0)
    assert runner.batches()[-1] == [
        f"add element inet {T} banned4 {{ 192.0.2.7 timeout 1s }}",
        f"delete element inet {T} banned4 {{ 192.0.2.7 }}",
        f"add element inet {T} banned4 {{ 192.0.2.7 timeout 120000ms }}",
    ]


def test_ipv6_and_ipv4_mapped_addresses_go_to_their_sets_and_names_nowhere() -> None:
    bans, limits, clock, runner, _ = started(ban_seconds=10)
    limits.ban("2001:db8::1", "flood")
    limits.ban("::ffff:198.51.100.2", "flood")  # a dual-stack socket's IPv4 peer
    limits.ban("not-an-address", "flood")
    clock.advance(0)
    batch = runner.batches()[-1]
    assert f"add element inet {T} banned6 {{ 2001:db8::1 timeout 10000ms }}" in batch
    assert f"add element inet {T} banned4 {{ 198.51.100.2 timeout 10000ms }}" in batch
    assert not any("not-an-address" in line for line in batch)


def test_bans_of_one_turn_and_those_made_while_nft_runs_are_batched() -> None:
    runner = FakeRunner(hold=True)
    bans, limits, clock, runner, _ = mirror(runner, ban_seconds=60)
    bans.start()
    clock.advance(0)
    for i in range(3):
        limits.ban(f"192.0.2.{i}", "flood")  # nft (the setup) still runs
    clock.advance(0)
    assert len(runner.batches()) == 1, "one nft at a time"
    runner.finish()
    clock.advance(0)
    assert len(runner.batches()) == 2
    assert len(runner.batches()[1]) == 9, "three bans, one batch"
    limits.ban("192.0.2.9", "flood")
    clock.advance(0)
    assert len(runner.batches()) == 2
    runner.finish()
    clock.advance(0)
    assert len(runner.batches()) == 3
    idle = bans.idle()
    assert not idle.called
    runner.finish()
    assert idle.called


def test_an_early_lift_deletes_the_element_an_expiry_leaves_it_to_the_kernel() -> None:
    bans, limits, clock, runner, _ = started(ban_seconds=60)
    limits.ban("192.0.2.7", "flood")
    limits.ban("192.0.2.8", "flood")
    clock.advance(0)
    n = len(runner.batches())
    assert limits.unban("192.0.2.7")
    clock.advance(0)
    assert runner.batches()[-1] == [
        f"add element inet {T} banned4 {{ 192.0.2.7 timeout 1s }}",  # so the delete cannot fail
        f"delete element inet {T} banned4 {{ 192.0.2.7 }}",
    ]
    clock.advance(61)  # 192.0.2.8 expires: its element has timed out in the kernel
    clock.advance(0)
    assert len(runner.batches()) == n + 1


def test_unblock_waits_for_the_kernel() -> None:
    runner = FakeRunner(hold=True)
    bans, limits, clock, runner, _ = mirror(runner)
    bans.start()
    clock.advance(0)
    runner.finish()
    limits.ban("192.0.2.7", "flood")
    clock.advance(0)
    runner.finish()
    limits.unban("192.0.2.7")
    settled = limits.settled()
    clock.advance(0)
    assert not settled.called, "the admin API answers once the element is gone"
    runner.finish()
    assert settled.called


def test_a_failing_nft_is_logged_once_and_the_process_bans_stay() -> None:
    runner = FakeRunner()
    runner.results = [RunResult(0), RunResult(1, b"", b"Error: Could not process rule: Operation not permitted\nmore")]
    bans, limits, clock, runner, events = mirror(runner)
    bans.start()
    clock.advance(0)
    limits.ban("192.0.2.7", "flood")
    clock.advance(0)
    assert bans.state == "failed"
    assert bans.failure == "Error: Could not process rule: Operation not permitted"
    warnings = [e for e in events if "nft failed" in e["log_format"]]
    assert len(warnings) == 1
    limits.ban("192.0.2.8", "flood")
    limits.unban("192.0.2.7")
    clock.advance(0)
    assert runner.batches()[2] == [f"add table inet {T}", f"delete table inet {T}"], "the kernel's copy goes"
    assert len(runner.batches()) == 3, "no more nft after a failure"
    assert limits.is_banned("192.0.2.8"), "the in-process ban holds"
    assert limits.report()["kernel"]["state"] == "failed"


def test_a_failed_start_leaves_it_off() -> None:
    runner = FakeRunner()
    runner.results = [RunResult(None, b"", b"No such file or directory: nft")]
    bans, limits, clock, runner, events = mirror(runner)
    done = bans.start()
    clock.advance(0)
    assert done.result is False and bans.state == "failed"
    limits.ban("192.0.2.7", "flood")
    clock.advance(0)
    assert len(runner.batches()) == 1


def test_stop_deletes_the_table() -> None:
    bans, limits, clock, runner, events = started()
    limits.ban("192.0.2.7", "flood")
    done = bans.stop()
    assert done.called
    assert runner.batches()[-1] == [f"add table inet {T}", f"delete table inet {T}"]
    assert bans.state == "stopped"
    assert [c.func.__name__ for c in clock.getDelayedCalls()] == ["_expire"], "no counter read or flush left behind"
    limits.ban("192.0.2.8", "flood")
    clock.advance(0)
    assert runner.batches()[-1] == [f"add table inet {T}", f"delete table inet {T}"]


def test_stop_waits_for_a_running_nft() -> None:
    runner = FakeRunner(hold=True)
    bans, *_ = mirror(runner)
    bans.start()
    bans.clock.advance(0)  # type: ignore[attr-defined]
    done = bans.stop()
    assert not done.called and len(runner.batches()) == 1
    runner.finish()
    runner.finish()
    assert done.called and runner.batches()[-1][-1] == f"delete table inet {T}"


def test_the_drop_counter_is_read_now_and_then_and_reported() -> None:
    bans, limits, clock, runner, _ = started()
    assert bans.dropped_packets == 0
    clock.advance(bans.counter_interval)
    assert runner.runs[-1][0] == ["nft", "-j", "list", "counter", "inet", T, "dropped"]
    assert bans.dropped_packets == 42
    runner.counter_json = b'{"nftables": [{"counter": {"packets": 50}}]}'
    assert limits.report()["kernel"] == {"state": "on", "table": T, "dropped_packets": 50}


def test_counter_packets() -> None:
    assert counter_packets(b'{"nftables": [{"metainfo": {}}, {"counter": {"packets": 7}}]}') == 7
    assert counter_packets(b"not json") is None
    assert counter_packets(b'{"nftables": []}') is None


def test_parse_kernel_bans_and_the_config_key() -> None:
    assert [parse_kernel_bans(v) for v in ("auto", " YES ", "no")] == ["auto", "yes", "no"]
    with pytest.raises(ValueError, match="'maybe' is not one of auto, yes, no"):
        parse_kernel_bans("maybe")
    assert parse_limits({}).kernel_bans == "auto"
    with pytest.raises(ValueError, match=r"\[limits\] kernel_bans: 'on' is not one of"):
        parse_limits({"kernel_bans": "on"})


def test_unavailable_says_why() -> None:
    assert kernel_bans_unavailable(which=lambda n: "/usr/sbin/nft", net_admin=lambda: True) is None
    assert "CAP_NET_ADMIN" in kernel_bans_unavailable(which=lambda n: "/usr/sbin/nft", net_admin=lambda: False)
    assert "not installed" in kernel_bans_unavailable(which=lambda n: None, net_admin=lambda: True)


def test_table_name_follows_the_first_listen_address() -> None:
    assert table_name([("127.0.0.9", 5060), ("127.0.0.9", 5061)]) == "sosimple_127_0_0_9_5060"
    assert table_name([("0.0.0.0", 5070)]) == "sosimple_any_5070"
    assert table_name([("2001:db8::1", 5060)]) == "sosimple_2001_db8_1_5060"


def test_unblock_waits_a_few_seconds_at_most_for_a_stuck_nft() -> None:
    runner = FakeRunner(hold=True)
    bans, limits, clock, runner, _ = mirror(runner)
    bans.start()
    clock.advance(0)
    settled = limits.settled()
    clock.advance(5)
    assert settled.called and settled.result is None
    runner.finish()  # nft ends at last: nothing breaks
    assert bans.state == "on"
