"""The dial plan (site-ini.md, [pstn]): which Request-URIs are numbers, and
their E.164 form; the [did] table."""

from __future__ import annotations

import pytest

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.location.dialplan import (
    DialPlan,
    DidTable,
    parse_country_code,
    parse_local_pattern,
    parse_local_patterns,
)
from sosimple_proxy.sip.uri import parse_uri

PLAN = DialPlan("1", parse_local_patterns("^([2-9][0-9]{6})$ => +1412\\1\n^011([0-9]+)$ => +\\1"))


@pytest.mark.parametrize(
    "uri, number",
    [
        ("tel:+15551234567", "+15551234567"),
        ("tel:+1-555-123-4567", "+15551234567"),
        ("tel:+1(555)123.4567;foo=bar", "+15551234567"),
        ("tel:5550123;phone-context=example.com", "+14125550123"),  # local pattern
        ("tel:4125550123;phone-context=example.com", "+14125550123"),  # no pattern: +country_code in front
        ("tel:1234;phone-context=+4420", "+44201234"),  # RFC 3966 global phone-context
        ("tel:01144201234567;phone-context=example.com", "+44201234567"),  # international prefix by a pattern
        ("sip:+15551234567@example.com;user=phone", "+15551234567"),
        ("sip:+15551234567;isub=12@example.com;user=phone", "+15551234567"),
        ("sip:5550123@example.com;user=phone", "+14125550123"),
        ("sip:+15551234567@example.com", "+15551234567"),  # a global number is never a user name
        ("sip:%2B15551234567@example.com", "+15551234567"),
        ("sip:5550123@example.com", "+14125550123"),  # matches a local pattern
        ("sip:5550123@127.0.0.1:5060", "+14125550123"),
    ],
)
def test_numbers_and_their_e164_form(uri, number):
    u = parse_uri(uri)
    assert PLAN.is_number(u)
    assert PLAN.number(u) == number


@pytest.mark.parametrize(
    "uri",
    [
        "sip:alice@example.com",
        "sip:example.com",
        "sip:12345@example.com",  # an extension: no pattern matches, no user=phone
        "sip:0123456@example.com",  # a 7-digit pattern wants [2-9] first
        "sip:+1555abc@example.com",
        "mailto:x@example.com",
    ],
)
def test_users_are_not_numbers(uri):
    u = parse_uri(uri)
    assert not PLAN.is_number(u)
    assert PLAN.number(u) is None


def test_a_number_the_plan_cannot_normalise_is_still_a_number():
    plan = DialPlan("", ())  # no country code, no patterns
    for text in ("tel:5551234;phone-context=example.com", "sip:5551234@example.com;user=phone"):
        uri = parse_uri(text)
        assert plan.is_number(uri) and plan.number(uri) is None
    assert plan.number(parse_uri("tel:+15551234567")) == "+15551234567"


def test_first_matching_pattern_wins_and_must_match_whole():
    plan = DialPlan("44", parse_local_patterns("^0([1-9][0-9]+)$ => +44\\1\n^0(.*)$ => +1\\1"))
    assert plan.normalise("02071234567") == "+442071234567"
    assert plan.normalise("2071234567") == "+442071234567"  # country code
    assert plan.normalise("+44 20 7123 4567".replace(" ", "-")) == "+442071234567"
    assert plan.normalise("+1234567890123456") is None  # more than 15 digits


def test_a_pattern_that_gives_no_e164_number_gives_none():
    plan = DialPlan("1", (parse_local_pattern("^9([0-9]+)$ => \\1"),))
    assert plan.normalise("95551234") is None  # "5551234" has no '+'


@pytest.mark.parametrize(
    "line, words",
    [
        ("^([0-9]+)$", "REGEX => REPLACEMENT"),
        ("^([0-9]+$ => +1\\1", "not a regular expression"),
        ("^([0-9]+)$ => +1\\2", "does not have"),
        ("^(?P<n>[0-9]+)$ => +1\\g<m>", "does not have"),
        ("^([0-9]+)$ => +1x\\1", "not an E.164 number"),
        ("^([0-9]+)$ => 1\\1", "not an E.164 number"),
    ],
)
def test_bad_local_patterns(line, words):
    with pytest.raises(ValueError, match=words):
        parse_local_pattern(line)


def test_country_code():
    assert parse_country_code("+44") == "44" and parse_country_code("") == ""
    for bad in ("0", "1234", "x1"):
        with pytest.raises(ValueError):
            parse_country_code(bad)


def test_did_table_maps_our_numbers_to_aors():
    dids = DidTable(PLAN, {"+14125550100": "sip:alice@example.com", "4125550101": " sip:bob@example.com "})
    assert dids.lookup(parse_uri("tel:+1-412-555-0100")) == "sip:alice@example.com"
    assert dids.lookup(parse_uri("sip:+14125550100@127.0.0.1:5060;user=phone")) == "sip:alice@example.com"
    # a gateway that sends the national number without user=phone
    assert dids.lookup(parse_uri("sip:4125550101@127.0.0.1")) == "sip:bob@example.com"
    assert dids.lookup(parse_uri("sip:5550100@example.com")) == "sip:alice@example.com"  # local form
    # a foreign host's number is not our DID; other numbers and users are not DIDs
    assert dids.lookup(parse_uri("sip:+14125550100@carrier.test;user=phone"), ours=False) is None
    assert dids.lookup(parse_uri("tel:+14125550199")) is None
    assert dids.lookup(parse_uri("sip:alice@example.com")) is None


def test_pstn_config_is_validated_and_parsed():
    cfg = parse_config(
        "[pstn]\ncountry_code = 1\nlocal_patterns = ^([2-9][0-9]{6})$ => +1412\\1\n"
        "    ^011([0-9]+)$ => +\\1\nprobe_interval = 0\n"
        "[gateway:a]\nuri = sip:127.0.0.1:5080;transport=udp\nprefixes = +1 +44\nprepend = 9\n"
        "[did]\n+14125550100 = sip:alice@example.com\n"
    )
    plan = DialPlan(cfg.section("pstn")["country_code"], cfg.section("pstn")["local_patterns"])
    assert plan.normalise("01144201234567") == "+44201234567"
    assert cfg.section("pstn")["probe_interval"] == 0
    gw = cfg.named("gateway")["a"]
    assert gw["prefixes"] == ("1", "44") and gw["prepend"] == "9" and gw["priority"] == 1
    # defaults: every number, probes every 30 s
    cfg = parse_config("[gateway:b]\nuri = sip:192.0.2.1\n")
    assert cfg.named("gateway")["b"]["prefixes"] == ("",)
    assert cfg.section("pstn")["probe_interval"] == 30


@pytest.mark.parametrize(
    "text, section, key, words",
    [
        ("[pstn]\ncountry_code = abc\n", "pstn", "country_code", "country calling code"),
        ("[pstn]\nlocal_patterns = ^([0-9]+$ => +1\\1\n", "pstn", "local_patterns", "regular expression"),
        ("[pstn]\nprobe_interval = -1\n", "pstn", "probe_interval", "greater than"),
        ("[gateway:a]\nprefixes = +1\n", "gateway:a", "uri", "required"),
        ("[gateway:a]\nuri = tel:+1555\n", "gateway:a", "uri", "sip: or sips:"),
        ("[gateway:a]\nuri = sip:+1@192.0.2.1\n", "gateway:a", "uri", "no user part"),
        ("[gateway:a]\nuri = sip:192.0.2.1\nprefixes = +1x\n", "gateway:a", "prefixes", "prefix"),
        ("[gateway:a]\nuri = sip:192.0.2.1\nstrip = 99\n", "gateway:a", "strip", "maximum"),
        ("[gateway:a]\nuri = sip:192.0.2.1\nprepend = 9a\n", "gateway:a", "prepend", "dialling digits"),
        ("[did]\n5550100 = sip:alice@example.com\n", "did", "5550100", "country_code"),
        ("[did]\n+14125550100 = alice\n", "did", "+14125550100", "not"),
        ("[did]\n+14125550100 = sip:example.com\n", "did", "+14125550100", "address of record"),
    ],
)
def test_bad_pstn_values_name_section_and_key(text, section, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    err = info.value
    assert (err.section, err.key) == (section, key)
    assert words in str(err) and "\n" not in str(err)
