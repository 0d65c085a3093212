"""The auth-param list parser: quoted commas, escapes, tolerance and refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sosimple_proxy.security.authparams import (
    MalformedCredentials,
    format_auth_header,
    parse_auth_header,
    parse_auth_params,
    quote,
)


def test_a_typical_sip_authorization():
    h = parse_auth_header(
        'Digest username="bob", realm="biloxi.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="sip:bob@biloxi.com", qop=auth, nc=00000001, cnonce="0a4f113b", '
        'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert h.is_digest()
    assert h.params["username"] == "bob"
    assert h.params["uri"] == "sip:bob@biloxi.com"
    assert h.params["qop"] == "auth"
    assert h.params["nc"] == "00000001"
    assert "qop" not in h.quoted and "uri" in h.quoted


def test_quoted_commas_equals_and_escapes():
    params, quoted = parse_auth_params(r'a="x, y=z", b="say \"hi\"", c="back\\slash", d=tok')
    assert params == {"a": "x, y=z", "b": 'say "hi"', "c": "back\\slash", "d": "tok"}
    assert quoted == {"a", "b", "c"}


def test_spaces_tabs_and_empty_elements_are_tolerated():
    params, _ = parse_auth_params('  a = "1" ,\tb=2 ,, ,c\t=\t"3",  ')
    assert params == {"a": "1", "b": "2", "c": "3"}


def test_names_are_case_insensitive_values_are_not():
    h = parse_auth_header('dIgEsT UserName="Alice", Realm="Example.COM"')
    assert h.is_digest()
    assert h.params == {"username": "Alice", "realm": "Example.COM"}


def test_utf8_in_quoted_strings():
    params, _ = parse_auth_params('username="jörg", realm="例え.jp"')
    assert params["username"] == "jörg"


@pytest.mark.parametrize(
    "text, words",
    [
        ('a="1", a="2"', "twice"),
        ('a="1", A=2', "twice"),
        ('a="unterminated', "not closed"),
        ('a="ends in a backslash\\', "not closed"),
        ("a=", "no value"),
        ("a", "no '='"),
        ('a="1" b="2"', "expected ','"),
        ("a=sip:bob@x", "expected ','"),
        ('="1"', "parameter name"),
        ('a="line\r\nbreak"', "control character"),
        ('a="nul\x00"', "control character"),
    ],
)
def test_malformed_lists(text, words):
    with pytest.raises(MalformedCredentials, match=words):
        parse_auth_params(text)


@pytest.mark.parametrize("value", ["", "   ", '"Digest" a=1', "Digest,a=1", 'Digest/1 a="b"'])
def test_malformed_scheme(value):
    with pytest.raises(MalformedCredentials):
        parse_auth_header(value)


def test_a_scheme_alone_has_no_params():
    assert parse_auth_header("Digest").params == {}


def test_quote_refuses_line_breaks():
    assert quote('a"b\\c') == r'"a\"b\\c"'
    with pytest.raises(ValueError):
        quote("a\r\nWWW-Authenticate: evil")


def test_format_refuses_an_unquoted_non_token():
    with pytest.raises(ValueError):
        format_auth_header("Digest", [("uri", "sip:a@b", False)])


_names = st.from_regex(r"[a-z][a-z0-9\-]{0,10}", fullmatch=True)
_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00\x7f"), max_size=30
).filter(lambda v: all(ord(c) >= 0x20 or c == "\t" for c in v))
_tokens = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,12}", fullmatch=True)


@given(
    st.dictionaries(_names, st.one_of(st.tuples(_values, st.just(True)), st.tuples(_tokens, st.just(False))), max_size=8),
    st.sampled_from([", ", ",", " , ", "\t,\t"]),
)
def test_format_then_parse_round_trips(params, separator):
    text = format_auth_header("Digest", [(k, v, q) for k, (v, q) in params.items()])
    text = text.replace(", ", separator) if not any("," in v for v, _ in params.values()) else text
    h = parse_auth_header(text)
    assert h.params == {k: v for k, (v, _) in params.items()}
    assert h.quoted == {k for k, (_, q) in params.items() if q}


@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_is_malformed(text):
    try:
        parse_auth_header(text)
    except MalformedCredentials:
        pass
