"""Timer values (RFC 3261 Table 4, RFC 6026) derived from T1/T2/T4."""

from __future__ import annotations

import pytest

from sosimple_proxy.config import parse_config
from sosimple_proxy.sip.timers import TimerConfig, is_reliable


def test_defaults_are_table_4():
    t = TimerConfig()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert (t.A, t.B, t.D, t.E, t.F, t.G, t.H, t.I, t.J, t.K) == (0.5, 32, 32, 0.5, 32, 0.5, 32, 5, 32, 5)
    assert (t.L, t.M) == (32, 32)


def test_schedules():
    t = TimerConfig()
    assert t.invite_request_schedule() == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert t.non_invite_request_schedule() == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert t.invite_response_schedule() == t.non_invite_request_schedule()


def test_derived_from_t1_and_timer_d_at_least_32s():
    t = TimerConfig(t1=0.25, t2=2, t4=3)
    assert (t.B, t.F, t.H, t.J, t.L, t.M) == (16, 16, 16, 16, 16, 16)
    assert t.D == 32 and t.I == t.K == 3
    assert TimerConfig(t1=1).D == 64


def test_from_site_ini_section():
    cfg = parse_config("[sip]\nt1 = 0.2\nt2 = 1.6\nt4 = 2.5\n")
    t = TimerConfig(cfg.sip["t1"], cfg.sip["t2"], cfg.sip["t4"])
    assert t == TimerConfig(0.2, 1.6, 2.5) and t.F == pytest.approx(12.8)
    defaults = parse_config("").sip
    assert TimerConfig(defaults["t1"], defaults["t2"], defaults["t4"]) == TimerConfig()


def test_validation_and_immutability():
    with pytest.raises(ValueError):
        TimerConfig(t1=0)
    with pytest.raises(ValueError):
        TimerConfig(t1=1, t2=0.5)
    t = TimerConfig()
    with pytest.raises(AttributeError):
        t.t1 = 1  # type: ignore[misc]
    assert hash(t) == hash(TimerConfig()) and "t1=0.5" in repr(t)


def test_reliable_transports():
    assert is_reliable("TCP") and is_reliable("tls") and is_reliable("ws")
    assert not is_reliable("udp") and not is_reliable("UDP")
