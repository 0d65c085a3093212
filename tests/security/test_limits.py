"""Per-source limits on a task.Clock: rates, bans, auth failures, caps, memory."""

from __future__ import annotations

import ipaddress

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger

from sosimple_proxy.security.limits import (
    ALLOW,
    BANNED,
    LIMITED,
    LIMITS_SCHEMA,
    Limits,
    LimitsConfig,
    LimitsConfigError,
    parse_limits,
)

SRC = "192.0.2.10"


class Events(list):
    """A Logger observer that keeps the events."""

    def __call__(self, event: dict) -> None:
        self.append(event)

    def about(self, word: str) -> list[dict]:
        return [e for e in self if word in e["log_format"]]


def make(**overrides) -> tuple[Limits, Clock, Events]:
    clock, events = Clock(), Events()
    config = attrs.evolve(LimitsConfig(requests_per_second=10, burst=20, ban_seconds=300), **overrides)
    return Limits(clock, config, log=Logger(observer=events)), clock, events


# --- rates and bans


def test_rate_within_limits_passes_forever():
    limits, clock, _ = make()
    for _ in range(1000):  # 10/s for 100 s
        assert limits.check(SRC) is ALLOW
        clock.advance(0.1)


def test_burst_then_limited_once_then_silence():
    limits, clock, _ = make()
    assert [limits.check(SRC) for _ in range(20)] == [ALLOW] * 20
    assert limits.check(SRC) is LIMITED
    assert limits.retry_after(SRC) == 300
    assert [limits.check(SRC) for _ in range(5)] == [BANNED] * 5
    clock.advance(10)  # tokens came back, the ban did not end
    assert limits.check(SRC) is BANNED
    assert limits.is_banned(SRC)
    assert limits.check("192.0.2.11") is ALLOW  # others unaffected


def test_bucket_refills_at_the_rate():
    limits, clock, _ = make(ban_seconds=0)  # no bans: every excess is LIMITED
    for _ in range(20):
        limits.check(SRC)
    assert limits.check(SRC) is LIMITED
    assert limits.check(SRC) is LIMITED
    clock.advance(0.5)  # 5 tokens
    assert [limits.check(SRC) for _ in range(6)] == [ALLOW] * 5 + [LIMITED]


def test_ban_ends_on_time_and_is_logged_once():
    limits, clock, events = make()
    for _ in range(21):
        limits.check(SRC)
    for _ in range(100):
        limits.check(SRC)
    assert len(events.about("banned {address}")) == 1
    assert "requests/s" in events.about("banned {address}")[0]["reason"]
    assert limits.bans() == [{"address": SRC, "reason": "over 10 requests/s (burst 20)", "remaining": 300}]
    clock.advance(120.5)
    assert limits.bans()[0]["remaining"] == 180
    clock.advance(179.5)  # the ban's timer fires: logged without traffic
    assert limits.bans() == []
    assert len(events.about("unbanned")) == 1
    assert events.about("unbanned")[0]["why"] == "expired"
    assert limits.check(SRC) is ALLOW
    assert len(events.about("unbanned")) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=2.0, allow_nan=False), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_time(gaps):
    """Whatever the arrival pattern, a source gets at most burst + rate * t
    requests through in any stretch of t seconds."""
    limits, clock, _ = make(ban_seconds=0)
    passed = []
    for gap in gaps:
        clock.advance(gap)
        if limits.check(SRC) is ALLOW:
            passed.append(clock.seconds())
    for i, start in enumerate(passed):
        for j in range(i, len(passed)):
            assert j - i + 1 <= 20 + 10 * (passed[j] - start) + 1e-6


def test_report_is_the_limits_body():
    limits, _, _ = make()
    limits.ban(SRC, "testing")
    assert limits.report() == {
        "banned": [{"address": SRC, "reason": "testing", "remaining": 300}],
        "dropped": 0,
        "refused_connections": 0,
    }


def test_unban():
    limits, clock, events = make()
    limits.ban(SRC, "testing")
    assert limits.check(SRC) is BANNED
    assert limits.unban(SRC) is True
    assert limits.unban(SRC) is False
    assert limits.unban("198.51.100.1") is False
    assert limits.check(SRC) is ALLOW
    assert len(events.about("unbanned")) == 1
    clock.advance(301)  # the old timer finds nothing to lift
    assert len(events.about("unbanned")) == 1


def test_unban_accepts_any_ip_spelling():
    limits, _, _ = make()
    limits.ban("2001:db8::1", "testing")
    assert limits.unban("2001:0db8:0:0::0001") is True


def test_many_bans_expire_in_order():
    limits, clock, _ = make()
    limits.ban("192.0.2.1", "a", seconds=30)
    limits.ban("192.0.2.2", "b", seconds=10)
    limits.ban("192.0.2.3", "c", seconds=20)
    assert [b["address"] for b in limits.bans()] == ["192.0.2.2", "192.0.2.3", "192.0.2.1"]
    clock.advance(15)
    assert [b["address"] for b in limits.bans()] == ["192.0.2.3", "192.0.2.1"]
    clock.advance(10)
    assert [b["address"] for b in limits.bans()] == ["192.0.2.1"]
    clock.advance(10)
    assert limits.bans() == [] and clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "allow, source",
    [("192.0.2.0/24", "192.0.2.77"), ("2001:db8::/32", "2001:db8::5"), ("::1", "::1"), ("10.1.2.3", "::ffff:10.1.2.3")],
)
def test_allow_networks_are_never_limited(allow, source):
    limits, _, _ = make(allow=parse_limits({"allow": allow}).allow)
    assert all(limits.check(source) is ALLOW for _ in range(1000))
    assert all(limits.auth_failed(source) is ALLOW for _ in range(100))
    assert limits.ban(source, "no") is False
    assert limits.bans() == []


def test_loopback_is_not_implicitly_allowed():
    limits, _, _ = make()
    assert [limits.check("127.0.0.1") for _ in range(21)][-1] is LIMITED
    assert [limits.check("::1") for _ in range(21)][-1] is LIMITED


def test_rate_zero_turns_limiting_off():
    limits, _, _ = make(requests_per_second=0)
    assert all(limits.check(SRC) is ALLOW for _ in range(10_000))
    assert limits.tracked() == 0


# --- authentication failures


def test_ten_wrong_credentials_in_a_minute_ban():
    limits, clock, events = make()
    for _ in range(9):
        assert limits.auth_failed(SRC) is ALLOW
        clock.advance(6)
    assert limits.auth_failed(SRC) is BANNED  # the 10th at 54 s
    assert limits.check(SRC) is BANNED
    assert limits.bans()[0]["reason"] == "10 wrong credentials in 60 s"
    assert len(events.about("banned {address}")) == 1


def test_ten_wrong_credentials_over_61_seconds_do_not_ban():
    limits, clock, _ = make()
    for _ in range(10):
        assert limits.auth_failed(SRC) is ALLOW
        clock.advance(61 / 9)
    assert limits.check(SRC) is ALLOW
    assert limits.bans() == []


def test_auth_failures_zero_is_off():
    limits, _, _ = make(auth_failures=0)
    assert all(limits.auth_failed(SRC) is ALLOW for _ in range(100))


# --- connections and transactions


def test_connection_caps():
    limits, _, _ = make(max_connections=5, max_connections_per_source=3, connections_per_second=0,
                        allow=parse_limits({"allow": "10.0.0.0/8"}).allow)
    assert [limits.connection_opened("192.0.2.1") for _ in range(4)] == [ALLOW] * 3 + [LIMITED]
    assert limits.connections_from("192.0.2.1") == 3
    assert [limits.connection_opened("192.0.2.2") for _ in range(3)] == [ALLOW, ALLOW, LIMITED]  # 5 in total
    assert limits.connection_opened("10.0.0.1") is ALLOW  # allowed: over both caps
    assert limits.connections == 6
    limits.connection_closed("192.0.2.1")
    limits.connection_closed("10.0.0.1")
    assert limits.connection_opened("192.0.2.2") is ALLOW  # 5 in total again
    assert limits.connection_opened("192.0.2.1") is LIMITED  # the total cap
    for _ in range(5):
        limits.connection_closed("192.0.2.1")
        limits.connection_closed("192.0.2.2")
    assert limits.connections == 0 and limits.tracked() == 0


def test_banned_source_gets_no_connection():
    limits, _, _ = make()
    limits.ban(SRC, "testing")
    assert limits.connection_opened(SRC) is BANNED
    assert limits.connections == 0


def test_banned_source_may_connect_when_its_first_message_decides():
    # With emergency numbers the stack reads a banned source's first message.
    limits, _, _ = make(max_connections_per_source=1)
    limits.ban(SRC, "testing")
    assert limits.connection_opened(SRC, banned_ok=True) is ALLOW
    assert limits.connection_opened(SRC, banned_ok=True) is LIMITED  # the caps still hold
    assert limits.connections == 1


def test_transaction_cap():
    limits, _, _ = make(max_transactions=100)
    assert limits.check_transactions(99) is ALLOW
    assert limits.check_transactions(100) is LIMITED
    unlimited, _, _ = make(max_transactions=0)
    assert unlimited.check_transactions(10**9) is ALLOW


# --- memory


def test_memory_bounded_after_sweep_with_100k_sources():
    limits, clock, _ = make()
    base = int(ipaddress.ip_address("10.0.0.0"))
    for i in range(100_000):
        limits.check(str(ipaddress.ip_address(base + i)))
    assert limits.tracked() == 100_000  # all fresh: nothing to drop yet
    clock.advance(2.0)  # burst / rate: every bucket is full again
    assert limits.sweep() == 100_000
    assert limits.tracked() == 0


def test_periodic_sweep_on_the_clock():
    limits, clock, _ = make()
    limits.start_sweeping(60)
    for i in range(1000):
        limits.check(f"10.0.{i // 256}.{i % 256}")
        limits.auth_failed(f"10.1.{i // 256}.{i % 256}")
    assert limits.tracked() == 2000
    clock.advance(60)
    assert limits.tracked() == 0
    limits.stop()
    assert clock.getDelayedCalls() == []


def test_idle_buckets_dropped_lazily_by_traffic():
    limits, clock, _ = make()
    for i in range(1000):
        limits.check(f"10.0.{i // 256}.{i % 256}")
    clock.advance(3)
    for i in range(250):  # each check drops a few stale buckets
        limits.check(f"192.0.2.{i}")
    assert limits.tracked() == 250


def test_hard_cap_on_sources():
    clock = Clock()
    limits = Limits(clock, LimitsConfig(), max_sources=1000)
    for i in range(5000):
        limits.check(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")
    assert limits.tracked() <= 1000


# --- configuration


def test_defaults():
    config = parse_limits({})
    assert config == LimitsConfig()
    assert (config.requests_per_second, config.burst, config.ban_seconds, config.auth_failures) == (50, 100, 300, 10)
    assert (config.max_connections, config.max_connections_per_source, config.max_transactions) == (1024, 32, 100000)
    assert config.allow == ()
    assert set(LIMITS_SCHEMA) == set(attrs.fields_dict(LimitsConfig))


def test_values_parsed():
    config = parse_limits({"requests_per_second": "2.5", "burst": "5", "ban_seconds": "0", "allow": "10.0.0.1/8, ::1 [2001:db8::]/32"})
    assert config.requests_per_second == 2.5 and config.burst == 5 and config.ban_seconds == 0
    assert [str(n) for n in config.allow] == ["10.0.0.0/8", "::1/128", "2001:db8::/32"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.burst = 7  # type: ignore[misc]


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("requests_per_second", "fast", "'fast' is not a number"),
        ("requests_per_second", "-1", "must not be negative"),
        ("requests_per_second", "inf", "not a finite number"),
        ("burst", "0", "below the minimum of 1"),
        ("burst", "1.5", "'1.5' is not an integer"),
        ("ban_seconds", "nan", "not a finite number"),
        ("allow", "10.0.0.0/8 example.com", "'example.com' is not an IP address or network"),
        ("auth_failures", "-3", "must not be negative"),
        ("max_connections", "lots", "'lots' is not an integer"),
    ],
)
def test_bad_values_name_the_key(key, value, problem):
    with pytest.raises(LimitsConfigError) as caught:
        parse_limits({key: value})
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"[limits] {key}: ")
    assert isinstance(caught.value, ValueError)


# --- connection rate and failed TLS handshakes (issue 15: handshake floods)


def test_connections_faster_than_the_rate_ban_the_source():
    limits, clock, events = make(connections_per_second=10, max_connections_per_source=4)
    # a burst of twice the per-source cap; each closes at once (a flooder's habit)
    for _ in range(8):
        assert limits.connection_opened(SRC) is ALLOW
        limits.connection_closed(SRC)
    assert limits.connection_opened(SRC) is BANNED
    assert limits.is_banned(SRC) and limits.refused == 1
    assert events.about("banned")[0]["reason"] == "over 10 new connections/s (burst 8)"
    assert limits.connection_opened(SRC) is BANNED and limits.refused == 2


def test_connections_at_the_rate_pass_and_the_allowed_are_never_counted():
    limits, clock, _ = make(connections_per_second=10, max_connections_per_source=4, allow=parse_limits({"allow": "10.0.0.0/8"}).allow)
    for _ in range(200):  # 10/s for 20 s
        assert limits.connection_opened(SRC) is ALLOW
        limits.connection_closed(SRC)
        assert limits.connection_opened("10.0.0.1") is ALLOW
        limits.connection_closed("10.0.0.1")
        clock.advance(0.1)
    clock.advance(10)
    assert limits.sweep() >= 1 and limits.tracked() == 0


def test_refused_attempts_count_toward_the_rate():
    # A source hammering at its cap is banned too, not refused forever.
    limits, _, _ = make(connections_per_second=1, max_connections_per_source=2)
    verdicts = [limits.connection_opened(SRC) for _ in range(6)]
    assert verdicts == [ALLOW, ALLOW, LIMITED, LIMITED, BANNED, BANNED]


def test_failed_tls_handshakes_ban_like_wrong_passwords():
    limits, clock, events = make(auth_failures=3)
    assert limits.handshake_failed(SRC) is ALLOW
    clock.advance(61)  # the first has left the window
    assert [limits.handshake_failed(SRC) for _ in range(3)] == [ALLOW, ALLOW, BANNED]
    assert limits.is_banned(SRC)
    assert events.about("banned")[0]["reason"] == "3 failed TLS handshakes in 60 s"
    assert limits.handshake_failed(SRC) is ALLOW, "already banned: nothing more"


def test_the_gate_counts_what_it_drops_on_the_limiter():
    from sosimple_proxy.sip.admission import DROP, Gate

    limits, _, _ = make()
    limits.ban(SRC, "flood")
    gate = Gate(limits)
    assert [gate.admit(b"OPTIONS sip:x SIP/2.0\r\n\r\n", SRC) for _ in range(3)] == [DROP] * 3
    assert limits.dropped == 3 and limits.report()["dropped"] == 3
