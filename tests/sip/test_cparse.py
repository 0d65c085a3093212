"""The compiled fast paths (sosimple_proxy/sip/_cparse.c) against the pure
code they shortcut: identical messages, views and errors on the RFC 4475 /
5118 torture corpus, on seeded mutations of it (the fuzzers' corpus) and
on mutated header values fed to each fast path alone; no crash and no
leak on malformed input; the switch (``SOSIMPLE_PURE_PYTHON``) works.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sosimple_proxy.sip import accel
from sosimple_proxy.sip.headers import _fast_name_addr, parse_contacts, parse_cseq, parse_max_forwards, parse_routes
from sosimple_proxy.sip.uri import parse_uri
from sosimple_proxy.sip.via import parse_via, parse_vias
from tests.fuzz.mutate import mutate, torture_messages
from tests.sip.differential import both, describe, implementation, outcome

pytestmark = pytest.mark.skipif(
    not accel.available() and os.environ.get("SOSIMPLE_REQUIRE_PEERS") != "1",
    reason="the compiled parser sosimple_proxy.sip._cparse is not installed",
)

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH_INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.7:5061;received=192.0.2.7;rport=5061;branch=z9hG4bKx2\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy.biloxi.example.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice A." <sip:alice@atlanta.example.com>;tag=1928301774;x=y\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com:5060;transport=udp;ob>;expires=60\r\n"
    b"Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\r\n"
    b"l: 4\r\n"
    b"\r\n"
    b"v=0\r\n"
)
RESPONSE = (
    b"SIP/2.0 180 Ringing\r\n"
    b"v: SIP/2.0/udp h.example.com:5060;branch=z9hG4bK1;received=10.0.0.1;rport=5060\r\n"
    b"t: <sip:bob@example.com>;tag=9\r\n"
    b"f: sip:alice@example.com;tag=1\r\n"
    b"i: c1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"m: <sips:bob@[2001:db8::1]:5061>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
SEEDS = [BENCH_INVITE, RESPONSE, *torture_messages()]


def _same(data: bytes, stream: bool = False, validate: bool = True) -> None:
    pure, fast = both(lambda: outcome(data, stream, validate))
    assert fast == pure, data


def test_the_compiled_code_is_in_use_unless_pure_python_is_asked_for() -> None:
    """The switch: built and imported by default; SOSIMPLE_PURE_PYTHON=1 forces pure."""
    code = "from sosimple_proxy.sip import accel, parser; print(accel.active() is not None, parser._C_HEAD is not None)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SOSIMPLE_PURE_PYTHON", None)
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], env={**env, "SOSIMPLE_PURE_PYTHON": "1"},
                         capture_output=True, text=True, check=True)
    assert on.stdout.split() == ["True", "True"]
    assert off.stdout.split() == ["False", "False"]


def test_the_fast_paths_take_the_common_shapes() -> None:
    """Not only equal results: the compiled code does produce them (a fast
    path that always said "not my shape" would pass every other test)."""
    c = accel.compiled
    assert c is not None
    assert not accel.unregistered
    from sosimple_proxy.sip.parser import _KEYS
    from sosimple_proxy.sip.message import COMPACT

    assert c.parse_head(BENCH_INVITE, False, _KEYS, COMPACT) is not None
    assert c.parse_head(RESPONSE, True, _KEYS, COMPACT) is not None
    assert c.via("SIP/2.0/UDP h.example.com:5060;branch=z9hG4bK1;received=10.0.0.1;rport=5060") is not None
    assert c.name_addr('"A" <sip:a@example.com>;tag=1') is not None
    assert c.cseq("1 INVITE") is not None
    assert c.max_forwards("70") == 70
    assert c.sip_uri("sip:bob@example.com:5060;transport=tcp") is not None
    assert c.callid("a84b4c76e66710@pc33.atlanta.example.com") is True


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("index", range(len(SEEDS)))
def test_torture_corpus_identical(index: int, stream: bool) -> None:
    data = SEEDS[index]
    _same(data, stream)
    _same(data, stream, validate=False)


def test_mutated_corpus_identical() -> None:
    """The fuzzers' seeded mutations of the torture corpus (tests/fuzz/mutate.py)."""
    rng = random.Random("cparse-differential")
    for i in range(3000):
        data = mutate(rng.choice(SEEDS), rng)
        _same(data, stream=bool(i & 1))


def test_saved_fuzz_inputs_identical() -> None:
    for path in sorted((ROOT / "tests" / "data" / "fuzz").glob("*/*")):
        if path.is_file() and path.parent.name in ("sip_parser", "framing", "transaction_input"):
            _same(path.read_bytes())
            _same(path.read_bytes(), stream=True)


# -- each fast path alone, on mutated values -------------------------------------

_VALUES = {
    "via": [
        "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport",
        "SIP/2.0/TCP 192.0.2.7:5061;received=192.0.2.7;rport=5061;branch=z9hG4bKx2;ttl=16;maddr=224.0.0.1",
        "SIP/2.0/udp h;Branch=z9hG4bK1;RPORT",
        "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1",
    ],
    "name_addr": [
        '"Alice A." <sip:alice@atlanta.example.com>;tag=1928301774',
        "Bob <sips:bob@biloxi.example.com:5061;transport=tcp;lr>;expires=60;q=0.5",
        "<sip:p1.example.com;lr>",
        "sip:alice@example.com;tag=1",
        '"\\"q\\"" <sip:a@[::1]:5060>',
    ],
    "vias": [
        "SIP/2.0/UDP a.example.com;branch=z9hG4bK1|SIP/2.0/TCP 192.0.2.7:5061;received=192.0.2.7;rport=5061",
        "SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2",
        "SIP/2.0/UDP h;branch=z9hG4bK1",
    ],
    "name_addrs": [
        "<sip:p2.example.com;lr>|<sip:p1.example.com;lr;transport=tcp>",
        "<sip:p2.example.com;lr>, <sip:p1.example.com;lr>",
        '"B" <sip:b@example.com:5060>;expires=60;q=0.5|*',
    ],
    "cseq": ["314159 INVITE", "1 REGISTER", "0123 ACK", "4294967296 INVITE", "1 FOO"],
    "max_forwards": ["70", "0", "00255", "256", " 7"],
    "uri": ["sip:bob@biloxi.example.com", "sips:a@b.example.com:5061;transport=tcp;lr;maddr=10.0.0.1",
            "sip:host", "sip:a;b@h.example.com", "sip:%61@h", "tel:+1-555"],
}
_ALPHABET = list(" \t;:=@<>\"\\,.[]-_%?&/|AaZz09\x00\xe9") + ["\r\n ", "lr", "tag=", "branch=", "sip:", "255.", "65536"]


def _pure_result(fn, text):  # type: ignore[no-untyped-def]
    from sosimple_proxy.sip.errors import ParseError

    try:
        return ("ok", describe(fn(text)))
    except ParseError as e:
        return ("error", str(e))


def _mutate_text(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(chars) + 1)
        op = rng.randrange(3)
        if op == 0:
            chars[pos:pos] = rng.choice(_ALPHABET)
        elif op == 1 and chars:
            del chars[pos : pos + rng.randint(1, 3)]
        elif chars:
            chars[min(pos, len(chars) - 1)] = rng.choice(_ALPHABET)
    return "".join(chars)


_FUNCTIONS = {
    "via": (parse_via, "via"),
    # several field lines, '|' between them
    "vias": (lambda t: parse_vias(t.split("|")), lambda c: lambda t: c.vias(t.split("|"))),
    "name_addr": (lambda t: _fast_name_addr(t, "From", False), "name_addr"),
    "name_addrs": (lambda t: parse_contacts(t.split("|")), lambda c: lambda t: c.name_addrs(t.split("|"))),
    "routes": (lambda t: parse_routes(t.split("|")), lambda c: lambda t: c.name_addrs(t.split("|"))),
    "cseq": (parse_cseq, "cseq"),
    "max_forwards": (parse_max_forwards, "max_forwards"),
    "uri": (parse_uri, "sip_uri"),
}


@pytest.mark.parametrize("kind", sorted(_FUNCTIONS))
def test_each_fast_path_matches_the_pure_function(kind: str) -> None:
    """Where a fast path answers, its object equals the pure function's,
    slot by slot; where the pure function raises, the fast path says None."""
    fn, cname = _FUNCTIONS[kind]
    values = _VALUES["name_addrs" if kind == "routes" else kind]
    cfn = getattr(accel.compiled, cname) if isinstance(cname, str) else cname(accel.compiled)
    rng = random.Random(f"cparse-{kind}")
    answered = 0
    texts = list(values)
    texts += [_mutate_text(rng.choice(values), rng) for _ in range(4000)]
    with implementation(False):
        for text in texts:
            fast = cfn(text)
            if fast is None:
                continue
            answered += 1
            assert ("ok", describe(fast)) == _pure_result(fn, text), text
    assert answered > len(values) // 2


def test_classify_and_callid_match_the_pure_code() -> None:
    from sosimple_proxy.sip.parser import _CALL_ID, _classify
    from sosimple_proxy.sip.errors import ParseError

    c = accel.compiled
    rng = random.Random("cparse-classify")
    keys = ["via", "to", "from", "call-id", "cseq", "max-forwards", "content-type", "contact", "route",
            "record-route", "allow", "x"]
    for _ in range(2000):
        fields = [(k, k, str(rng.randrange(5))) for k in rng.sample(keys, rng.randint(0, len(keys)))]
        fields += [(rng.choice(keys), "n", "v") for _ in range(rng.randint(0, 2))]
        got = c.classify(fields)
        try:
            want = _classify(fields)
        except ParseError:
            assert got is None
        else:
            assert got == want
    for _ in range(3000):
        text = _mutate_text("a84b4c76e66710@pc33.example.com", rng)
        if c.callid(text):
            assert _CALL_ID(text.strip()) and text.strip() == text, text


def test_deferred_parts_of_a_name_addr_match_the_pure_code() -> None:
    """NameAddr.uri and .params, built on first read from what the fast
    parse kept (``_lazy``): the compiled builders against the pure ones."""
    from sosimple_proxy.sip.grammar import simple_params
    from sosimple_proxy.sip.uri import build_sip_uri
    from sosimple_proxy.sip.errors import ParseError

    c = accel.compiled
    rng = random.Random("cparse-lazy")
    answered = 0
    for _ in range(3000):
        text = _mutate_text(rng.choice(_VALUES["name_addr"][:3]), rng)
        with implementation(False):
            try:
                na = _fast_name_addr(text, "From", False)
            except ParseError:
                continue
        if na is None:
            continue
        lazy = na._lazy
        got = c.lazy_uri(lazy)
        if got is not None:
            answered += 1
            try:
                want = build_sip_uri(*lazy[:5], "URI")
            except ParseError:
                raise AssertionError(f"compiled built a URI the pure code refuses: {lazy}") from None
            assert describe(got) == describe(want), lazy
        ptext = _mutate_text(lazy[5], rng) if lazy[5] else ";a=b;C"
        params = c.params(ptext)
        if params is not None:
            assert describe(params) == describe(simple_params(ptext)), ptext
        else:
            assert not ptext or simple_params(ptext) is None or not ptext.isascii(), ptext
    assert answered > 500


# -- robustness ---------------------------------------------------------------------


def test_no_leak_over_many_parses() -> None:
    """Refcounts: Python's allocated blocks stay flat over thousands of
    parses of good and bad messages through the compiled code (a missing
    DECREF leaks a block per call), and so does the process RSS."""
    from sosimple_proxy.sip.errors import ParseError
    from sosimple_proxy.sip.parser import parse_message

    rng = random.Random("cparse-leak")
    corpus = SEEDS + [mutate(rng.choice(SEEDS), rng) for _ in range(200)]

    def views(msg):  # type: ignore[no-untyped-def]
        for name in ("vias", "from_", "to", "cseq", "contacts", "routes", "record_routes", "max_forwards"):
            try:
                getattr(msg, name)
            except ParseError:
                pass

    def round_(n: int) -> None:
        for i in range(n):
            data = corpus[i % len(corpus)]
            try:
                msg = parse_message(data, stream=bool(i & 2))
            except ParseError:
                continue
            views(msg)
            if msg.headers.get("from"):
                accel.compiled.name_addr(msg.headers.get("from"))  # type: ignore[union-attr]

    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    with implementation(True):
        round_(3000)  # warm: caches (_KEYS, lru_cache) filled
        gc.collect()
        blocks0, rss0 = sys.getallocatedblocks(), rss_kib()
        round_(20000)
        gc.collect()
        blocks1, rss1 = sys.getallocatedblocks(), rss_kib()
    # ~20,000 parses: a leak of one object per parse would be 20,000 blocks.
    assert blocks1 - blocks0 < 2000, (blocks0, blocks1)
    assert rss1 - rss0 < 4096, (rss0, rss1)
