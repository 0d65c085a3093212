"""Stream framing: Content-Length splitting, keep-alives, limits (pure, no I/O)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sosimple_proxy.sip import framing
from sosimple_proxy.sip.framing import Frame, FramingError, KeepAlive, StreamFramer, content_length, head_end

INVITE_BODY = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def msg(body: bytes = b"", *, cl: bytes | None = None, name: bytes = b"Content-Length", extra: bytes = b"") -> bytes:
    """A small request with the given body; ``cl`` overrides the length text."""
    length = str(len(body)).encode() if cl is None else cl
    return (
        b"INVITE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1\r\n"
        b"Call-ID: abc@127.0.0.1\r\n" + extra + name + b": " + length + b"\r\n\r\n" + body
    )


def frames(events: list) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Frame)]


def test_single_message():
    m = msg(INVITE_BODY)
    assert StreamFramer(65536).feed(m) == [Frame(m)]


def test_no_body():
    m = msg()
    assert StreamFramer(65536).feed(m) == [Frame(m)]


def test_pipelined_in_one_chunk():
    a, b, c = msg(b"one"), msg(), msg(INVITE_BODY)
    assert frames(StreamFramer(65536).feed(a + b + c)) == [a, b, c]


def test_byte_by_byte():
    a, b = msg(INVITE_BODY), msg(b"x")
    f = StreamFramer(65536)
    events = []
    for i in range(len(a + b)):
        events += f.feed((a + b)[i : i + 1])
    assert frames(events) == [a, b]
    assert f.buffered == 0


def test_partial_body_waits():
    m = msg(b"0123456789")
    f = StreamFramer(65536)
    assert f.feed(m[:-3]) == []
    assert f.feed(m[-3:]) == [Frame(m)]


def test_body_may_contain_anything():
    body = b"\x00\r\n\r\n\nINVITE sip:x SIP/2.0\r\nContent-Length: 99\r\n\r\n\r\r\x00"
    m = msg(body)
    n = msg()
    assert frames(StreamFramer(65536).feed(m + n)) == [m, n]


def test_compact_name_and_case():
    for name in (b"l", b"L", b"content-length", b"CONTENT-LENGTH", b"Content-length"):
        m = msg(b"abc", name=name)
        assert StreamFramer(65536).feed(m + m) == [Frame(m), Frame(m)], name


def test_whitespace_around_colon_and_value():
    m = b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\nContent-Length  \t:   3  \r\n\r\nabc"
    assert StreamFramer(65536).feed(m) == [Frame(m)]


def test_folded_content_length():
    m = b"OPTIONS sip:a SIP/2.0\r\nContent-Length:\r\n   3\r\nVia: x\r\n\r\nabc"
    assert StreamFramer(65536).feed(m) == [Frame(m)]


def test_folded_other_header_does_not_confuse():
    m = b"OPTIONS sip:a SIP/2.0\r\nSubject: hello\r\n Content-Length: 99\r\nl: 2\r\n\r\nab"
    assert StreamFramer(65536).feed(m) == [Frame(m)]


def test_start_line_is_not_a_header():
    # "l: 5" in the Request-URI position must not count as Content-Length.
    assert content_length(b"l: 5 sip:x SIP/2.0\r\nVia: x\r\n\r\n") == "Missing Content-Length"


def test_leading_zeros_and_duplicates_equal():
    assert content_length(b"X\r\nContent-Length: 007\r\n\r\n") == 7
    assert content_length(b"X\r\nContent-Length: 3\r\nl: 3\r\n\r\n") == 3


def test_bare_lf_head():
    m = b"OPTIONS sip:a SIP/2.0\nVia: x\nContent-Length: 2\n\nok"
    assert StreamFramer(65536).feed(m + m) == [Frame(m), Frame(m)]


def test_head_end_variants():
    for end in (b"\r\n\r\n", b"\n\n", b"\r\n\n", b"\n\r\n"):
        head = b"OPTIONS sip:a SIP/2.0\r\nl: 0" + end
        assert head_end(head + b"body\n\n\r\n\r\n") == len(head), end
        assert StreamFramer(1000).feed(head + head) == [Frame(head), Frame(head)], end
    assert head_end(b"OPTIONS sip:a SIP/2.0\r\nl: 0\r\n\r") == -1


# --- keep-alives (RFC 5626 section 3.5.1)


def test_ping_answered_with_pong():
    assert StreamFramer(65536).feed(b"\r\n\r\n") == [KeepAlive(b"\r\n")]


def test_ping_between_messages():
    a = msg(b"abc")
    assert StreamFramer(65536).feed(a + b"\r\n\r\n" + a) == [Frame(a), KeepAlive(b"\r\n"), Frame(a)]


def test_ping_split_byte_by_byte():
    f = StreamFramer(65536)
    out = []
    for b in b"\r\n\r\n\r\n\r\n":
        out += f.feed(bytes([b]))
    assert out == [KeepAlive(), KeepAlive()]


def test_lone_crlf_skipped():
    a = msg()
    f = StreamFramer(65536)
    assert f.feed(b"\r\n") == []
    assert f.feed(a) == [Frame(a)]
    assert f.buffered == 0


def test_crlf_inside_body_is_not_a_ping():
    m = msg(b"\r\n\r\n")
    assert StreamFramer(65536).feed(m) == [Frame(m)]


# --- errors


def _error(data: bytes, max_size: int = 65536) -> FramingError:
    events = StreamFramer(max_size).feed(data)
    assert isinstance(events[-1], FramingError), events
    return events[-1]


def test_missing_content_length():
    m = b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n"
    e = _error(m)
    assert (e.status, e.reason, e.head) == (400, "Missing Content-Length", m)


def test_negative_content_length():
    e = _error(msg(cl=b"-5"))
    assert (e.status, e.reason) == (400, "Negative Content-Length")


def test_non_numeric_content_length():
    for bad in (b"abc", b"", b"5 5", b"0x10", b"+3", b"3.0"):
        e = _error(msg(cl=bad))
        assert (e.status, e.reason) == (400, "Bad Content-Length: not a number"), bad


def test_conflicting_content_length():
    e = _error(msg(b"abc", extra=b"l: 4\r\n"))
    assert (e.status, e.reason) == (400, "Conflicting Content-Length values")


def test_huge_content_length_is_513():
    e = _error(msg(cl=b"9" * 5000))
    assert (e.status, e.reason) == (513, "Message Too Large")


def test_body_over_limit_is_513_without_reading_body():
    m = msg(b"x" * 2000)
    f = StreamFramer(1024)
    events = f.feed(m[:300])
    assert len(events) == 1 and isinstance(events[0], FramingError)
    assert events[0].status == 513 and events[0].head.startswith(b"INVITE ")
    assert f.feed(m[300:]) == []  # dead after the error


def test_exactly_at_limit_is_accepted():
    k = next(k for k in range(1024) if len(msg(b"x" * k)) == 1024)
    m = msg(b"x" * k)
    assert StreamFramer(1024).feed(m) == [Frame(m)]
    assert _error(msg(b"x" * (k + 1)), 1024).status == 513


def test_endless_head_is_513_and_bounded():
    f = StreamFramer(4096)
    line = b"X-Filler: " + b"a" * 100 + b"\r\n"
    events = f.feed(b"INVITE sip:a SIP/2.0\r\n")
    n = 0
    while not events:
        events = f.feed(line)
        n += 1
        assert f.buffered <= 4096 + len(line)
    assert events[0].status == 513 and events[0].reason == "Message Too Large"
    assert len(events[0].head) <= 4096 and events[0].head.endswith(b"\r\n")
    assert f.buffered == 0


def test_error_after_good_messages_keeps_them():
    a = msg(b"ok")
    events = StreamFramer(65536).feed(a + b"OPTIONS sip:a SIP/2.0\r\n\r\n" + a)
    assert events[0] == Frame(a)
    assert isinstance(events[1], FramingError) and len(events) == 2


def test_large_message_byte_by_byte_is_linear(monkeypatch):
    # Counts the bytes the framer searches for the end of the head, not the
    # seconds it takes: fed in small pieces, each byte is searched about
    # once, where a framer that rescanned its buffer from the start on every
    # feed would search ~1e9 bytes (quadratic).
    searched = []

    def counting_head_end(buf, start=0):
        searched.append(len(buf) - start)
        return head_end(buf, start)

    monkeypatch.setattr(framing, "head_end", counting_head_end)
    body = b"y" * 200_000
    head = b"MESSAGE sip:a SIP/2.0\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(2000))
    m = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    f = StreamFramer(1 << 20)
    out = []
    for i in range(0, len(m), 7):
        out += f.feed(m[i : i + 7])
    assert out == [Frame(m)]
    # 46k feeds; the head's ~120 kB are searched once, plus 2 bytes of overlap a feed.
    assert sum(searched) < 2 * len(head)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_content_length_never_raises(head):
    assert isinstance(content_length(head), (int, str))
    f = StreamFramer(256)
    for i in range(0, len(head), 17):
        f.feed(head[i : i + 17])


@given(st.lists(st.sampled_from([b"Content-Length", b"l", b"CONTENT-length", b"X-Other", b"lx", b"Length"]), max_size=4), st.integers(0, 10**6))
def test_content_length_against_simple_reading(names, n):
    lines = [name + b": %d" % n for name in names]
    head = b"MESSAGE sip:a SIP/2.0\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    counted = [x for x in names if x.lower() in (b"content-length", b"l")]
    assert content_length(head) == (n if counted else "Missing Content-Length")


# --- property: any split of a stream of valid messages yields the same frames

_body = st.binary(max_size=200)
_name = st.sampled_from([b"Content-Length", b"content-length", b"l", b"L", b"CONTENT-LENGTH"])


@st.composite
def _messages(draw):
    body = draw(_body)
    name = draw(_name)
    m = msg(body, name=name)
    pings = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    return pings, m


@settings(max_examples=300, deadline=None)
@given(st.lists(_messages(), min_size=1, max_size=6), st.data())
def test_any_split_gives_same_events(items, data):
    stream = b"".join(p + m for p, m in items)
    expected = []
    for p, m in items:
        if p == b"\r\n\r\n":
            expected.append(KeepAlive())
        expected.append(Frame(m))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    f = StreamFramer(65536)
    events = []
    prev = 0
    for c in cuts + [len(stream)]:
        events += f.feed(stream[prev:c])
        prev = c
    assert events == expected
    assert f.buffered == 0
