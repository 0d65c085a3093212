"""Gateway choice (longest prefix, priority, weight), strip/prepend, the
per-gateway state machine, and the pstn provider's answers, with Clock and
a fixed random."""

from __future__ import annotations

from collections import Counter

import pytest
from twisted.internet.task import Clock
from zope.interface import implementer

from sosimple_proxy.location.dialplan import DialPlan, parse_local_patterns
from sosimple_proxy.location.gateways import (
    ACTIVE,
    INACTIVE,
    Gateway,
    GatewaySet,
    GatewayState,
    parse_gateway_uri,
    weighted_order,
)
from sosimple_proxy.location.interfaces import NOT_MINE, Found, ILocator, IRetargeting, Miss
from sosimple_proxy.location.pstn import PassNumbers, PstnLocator
from sosimple_proxy.sip.message import Response
from sosimple_proxy.sip.uri import parse_uri


def gw(name, port, prefixes=("",), priority=1, weight=1, strip=0, prepend="", transport=""):
    t = f";transport={transport}" if transport else ""
    return Gateway(name, parse_gateway_uri(f"sip:127.0.0.1:{port}{t}"), tuple(prefixes), priority, weight, strip, prepend)


class Fixed:
    """A random() that returns the given values in turn."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self):
        return self.values.pop(0) if self.values else 0.0


def names(gateways):
    return [g.name for g in gateways]


def test_longest_prefix_wins_across_gateways():
    s = GatewaySet([gw("any", 1), gw("us", 2, ["1"]), gw("pa", 3, ["1412", "44"]), gw("uk", 4, ["44"])], Clock())
    assert names(s.group("+14125551234")) == ["pa"]
    assert names(s.group("+15551234567")) == ["us"]
    assert names(s.group("+442071234567")) == ["pa", "uk"]
    assert names(s.group("+33123456789")) == ["any"]
    assert names(GatewaySet([gw("us", 2, ["1"])], Clock()).group("+33123")) == []


def test_priority_first_then_weighted_random_within_a_priority():
    a, b, c = gw("a", 1, priority=1, weight=1), gw("b", 2, priority=1, weight=3), gw("c", 3, priority=2)
    # b has 3/4 of the weight: a draw below 0.25 picks a, above picks b
    assert names(GatewaySet([c, a, b], Clock(), rand=Fixed(0.1)).choose("+1")[0]) == ["a", "b", "c"]
    assert names(GatewaySet([c, a, b], Clock(), rand=Fixed(0.5)).choose("+1")[0]) == ["b", "a", "c"]


def test_weights_share_calls_in_proportion():
    import random

    rng = random.Random(7)
    s = GatewaySet([gw("a", 1, weight=1), gw("b", 2, weight=3), gw("z", 3, weight=0)], Clock(), rand=rng.random)
    firsts = Counter(s.choose("+1")[0][0].name for _ in range(4000))
    assert firsts["z"] == 0
    assert 0.70 < firsts["b"] / 4000 < 0.80
    # weight 0: tried only after the weighted ones
    assert names(weighted_order([gw("z", 3, weight=0), gw("a", 1)], rng.random)) == ["a", "z"]


def test_strip_and_prepend_shape_the_request_uri():
    assert str(gw("g", 5080).request_uri("+15551234567")) == "sip:+15551234567@127.0.0.1:5080;user=phone"
    assert str(gw("g", 5080, strip=1, prepend="9").request_uri("+15551234567")) == "sip:95551234567@127.0.0.1:5080;user=phone"
    assert str(gw("g", 5080, prepend="00").request_uri("+442071234567")) == "sip:00442071234567@127.0.0.1:5080;user=phone"
    tcp = gw("g", 5080, strip=1, transport="tcp")
    assert str(tcp.request_uri("+15551234567")) == "sip:5551234567@127.0.0.1:5080;transport=tcp;user=phone"
    assert tcp.dest == "tcp:127.0.0.1:5080"
    assert Gateway("n", parse_gateway_uri("sip:gw.carrier.test")).dest is None


def test_state_machine_probes_and_call_failures():
    clock = Clock()
    st = GatewayState(clock, retry_interval=30)
    assert st.state == ACTIVE and st.active()
    st.probe_failed()
    assert st.state == INACTIVE and not st.active()
    clock.advance(3600)
    assert not st.active()  # a probe failure waits for a probe answer
    st.probe_answered(404)  # any answer but 408/5xx: it is alive
    assert st.active()
    st.probe_answered(503)
    assert not st.active()
    st.probe_answered(200)
    # a call failure: skipped for retry_interval (or Retry-After), unless a probe answers earlier
    st.call_failed(500)
    assert st.active()  # a 500 speaks for that call only
    st.call_failed(503)
    assert not st.active()
    clock.advance(29)
    assert not st.active()
    clock.advance(1)
    assert st.active()
    st.call_failed(503, retry_after=120)
    clock.advance(100)
    assert not st.active()
    st.probe_answered(200)
    assert st.active()
    st.call_failed(408)
    assert st.state == INACTIVE


PLAN = DialPlan("1", parse_local_patterns("^([2-9][0-9]{6})$ => +1412\\1"))


def pstn(*gateways, rand=None):
    clock = Clock()
    return PstnLocator(PLAN, GatewaySet(gateways, clock, retry_interval=30, rand=rand or Fixed())), clock


def test_pstn_target_has_dest_and_the_rest_of_its_group_as_fallbacks():
    loc, _ = pstn(gw("a1", 5081, ["1555"], priority=1), gw("a2", 5082, ["1555"], priority=2), gw("b", 5083, ["1"]))
    result = loc.locate(parse_uri("tel:+15551234567"))
    assert isinstance(result, Found) and result.provider == "pstn"
    (t,) = result.targets
    assert str(t.uri) == "sip:+15551234567@127.0.0.1:5081;user=phone" and t.dest == "udp:127.0.0.1:5081"
    assert t.source == "pstn"
    assert [(str(f.uri), f.dest) for f in t.fallbacks] == [("sip:+15551234567@127.0.0.1:5082;user=phone", "udp:127.0.0.1:5082")]
    # a local 7-digit number is +1412...: only b's +1 matches
    (t,) = loc.locate(parse_uri("sip:5550123@example.com")).targets
    assert str(t.uri) == "sip:+14125550123@127.0.0.1:5083;user=phone" and t.fallbacks == ()


def test_pstn_serves_numbers_only_and_misses_what_no_gateway_serves():
    loc, _ = pstn(gw("uk", 5081, ["44"]))
    assert loc.locate(parse_uri("sip:alice@example.com")) is NOT_MINE
    miss = loc.locate(parse_uri("tel:+15551234567"))
    assert isinstance(miss, Miss) and miss.status == 404 and "no gateway" in miss.reason
    loc2 = PstnLocator(DialPlan(), loc.gateways)
    miss = loc2.locate(parse_uri("tel:5551234;phone-context=example.com"))
    assert isinstance(miss, Miss) and miss.status == 404


def test_failed_calls_make_a_gateway_skipped_until_its_retry_time():
    loc, clock = pstn(gw("a1", 5081, priority=1), gw("a2", 5082, priority=2))
    (t,) = loc.locate(parse_uri("tel:+15551234567")).targets
    loc.target_failed(t, Response(503, "Service Unavailable"))
    assert loc.gateways.state("a1").state == INACTIVE
    (t2,) = loc.locate(parse_uri("tel:+15551234567")).targets
    assert t2.dest == "udp:127.0.0.1:5082" and t2.fallbacks == ()
    # a2 times out too: nothing is left in the group
    loc.target_failed(t2, Response(408, "Request Timeout"))
    miss = loc.locate(parse_uri("tel:+15551234567"))
    assert isinstance(miss, Miss) and miss.status == 503 and "a1, a2" in miss.reason
    clock.advance(30)
    (t3,) = loc.locate(parse_uri("tel:+15551234567")).targets
    assert t3.dest == "udp:127.0.0.1:5081"
    # other failures fail over but leave the gateway as it was
    loc.target_failed(t3, Response(500, "Server Internal Error"))
    assert loc.gateways.state("a1").state == ACTIVE


def test_retry_after_of_a_503_sets_how_long_the_gateway_rests():
    loc, clock = pstn(gw("a1", 5081))
    (t,) = loc.locate(parse_uri("tel:+15551234567")).targets
    r = Response(503, "Service Unavailable")
    r.headers.add("Retry-After", "120 (maintenance)")
    loc.target_failed(t, r)
    clock.advance(100)
    assert isinstance(loc.locate(parse_uri("tel:+15551234567")), Miss)
    clock.advance(20)
    assert isinstance(loc.locate(parse_uri("tel:+15551234567")), Found)


@implementer(ILocator, IRetargeting)
class Users:
    name = "local"

    def __init__(self, answer):
        self.answer = answer

    def locate(self, uri):
        return self.answer

    def target_failed(self, target, response):
        return "delegated"


@pytest.mark.parametrize("async_", [False, True])
def test_providers_of_users_pass_numbers_they_miss_on(async_):
    from twisted.internet.defer import succeed

    found = Found((object(),), "local")  # type: ignore[arg-type]

    def ask(answer, uri):
        p = PassNumbers(Users(succeed(answer) if async_ else answer), PLAN)
        got = []
        result = p.locate(parse_uri(uri))
        if async_:
            result.addCallback(got.append)
            return got[0]
        return result

    assert ask(Miss("Not Found", "local"), "sip:+15551234567@example.com;user=phone") is NOT_MINE
    assert ask(Miss("Not Found", "local"), "sip:5550123@example.com") is NOT_MINE
    assert ask(Miss("Temporarily Unavailable", "local", 480), "sip:5550123@example.com") is NOT_MINE
    # a user who registered that number is found; a user name miss stays a miss
    assert ask(found, "sip:+15551234567@example.com;user=phone") is found
    assert isinstance(ask(Miss("Not Found", "local"), "sip:alice@example.com"), Miss)
    p = PassNumbers(Users(found), PLAN)
    assert p.name == "local" and p.target_failed(None, None) == "delegated"


def test_a_sips_gateway_is_reached_over_tls():
    from sosimple_proxy.location.gateways import uri_dest
    from sosimple_proxy.sip.uri import parse_uri

    assert uri_dest(parse_uri("sips:192.0.2.10")) == "tls:192.0.2.10:5061"
    assert uri_dest(parse_uri("sips:192.0.2.10:5071;transport=tcp")) == "tls:192.0.2.10:5071"
    assert uri_dest(parse_uri("sip:192.0.2.10;transport=tls")) == "tls:192.0.2.10:5061"
    assert uri_dest(parse_uri("sip:192.0.2.10")) == "udp:192.0.2.10:5060"


def test_replacing_the_gateways_keeps_the_state_of_those_unchanged():
    """SIGHUP: a dead gateway that kept its name and URI stays dead until a
    probe says otherwise; a changed or new one starts afresh."""
    clock = Clock()
    gateways = GatewaySet([gw("a", 5081), gw("b", 5082)], clock)
    gateways.state("a").probe_failed()
    gateways.state("b").probe_failed()
    gateways.replace([gw("a", 5081), gw("b", 5090), gw("c", 5083)])
    assert not gateways.state("a").active()
    assert gateways.state("b").active() and gateways.state("c").active()
    assert {g.name for g in gateways.choose("+15551234567")[0]} == {"b", "c"}
