"""Digest verification: the RFC 7616 example, round trips, stale, forged, replay, enumeration."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from sosimple_proxy.security import algorithms
from sosimple_proxy.security.algorithms import Algorithm, parse_algorithms
from sosimple_proxy.security.authparams import format_auth_header, parse_auth_header
from sosimple_proxy.security.digest import (
    DigestAuthenticator,
    Outcome,
    answer_challenge,
    challenge_values,
    parse_credentials,
)
from sosimple_proxy.security.users import UserEntry, UserTable

SECRET = bytes(range(32))
REALM = "example.com"
URI = "sip:example.com"


def rfc7616_example(algorithm: Algorithm) -> str:
    """RFC 7616 section 3.9.1: the same request answered with MD5 and with SHA-256."""
    return (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        f"algorithm={algorithm.value}, "
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="{}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm.SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1(algorithm, expected):
    creds = parse_credentials(rfc7616_example(algorithm).format(expected))
    stored = algorithms.ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
    got = algorithms.response(algorithm, stored, creds.nonce, creds.nc_text, creds.cnonce, creds.qop, "GET", creds.uri)
    assert got == expected
    # and through the verifier's own path: a users table holding Mufasa's HA1s
    entry = UserEntry.from_password("Mufasa", "http-auth@example.org", "Circle of Life")
    assert entry.ha1(algorithm) == stored


def make(clock=None, users=None, **kw):
    clock = clock or Clock()
    clock.advance(1_000_000)
    if users is None:
        users = UserTable(
            {
                ("alice", REALM): UserEntry.from_password("alice", REALM, "wonderland"),
                ("bob", REALM): UserEntry.from_password("bob", REALM, "builder"),
            }
        )
    return clock, DigestAuthenticator(clock, users, SECRET, REALM, **kw)


def test_challenge_has_one_value_per_algorithm_in_order():
    _, auth = make()
    values = auth.challenge()
    assert len(values) == 2
    parsed = [parse_auth_header(v) for v in values]
    assert [p.params["algorithm"] for p in parsed] == ["SHA-256", "MD5"]
    for p in parsed:
        assert p.params["realm"] == REALM
        assert p.params["qop"] == "auth" and "qop" in p.quoted
        assert "stale" not in p.params
    assert parsed[0].params["nonce"] == parsed[1].params["nonce"]
    assert parsed[0].params["opaque"] == parsed[1].params["opaque"]
    stale = [parse_auth_header(v) for v in auth.challenge(stale=True)]
    assert all(p.params["stale"] == "true" for p in stale)
    assert stale[0].params["nonce"] != parsed[0].params["nonce"]


def test_challenge_values_with_md5_alone():
    values = challenge_values('a "quoted" realm', "n", "o", [Algorithm.MD5])
    assert values == ['Digest realm="a \\"quoted\\" realm", nonce="n", opaque="o", algorithm=MD5, qop="auth"']


def test_parse_algorithms():
    assert parse_algorithms("SHA-256 MD5") == (Algorithm.SHA256, Algorithm.MD5)
    assert parse_algorithms("md5, sha-256") == (Algorithm.MD5, Algorithm.SHA256)
    for bad in ("", "SHA-1", "MD5 MD5"):
        with pytest.raises(ValueError):
            parse_algorithms(bad)


@pytest.mark.parametrize("index, algorithm", [(0, "SHA-256"), (1, "MD5")])
def test_round_trip_for_each_algorithm(index, algorithm):
    _, auth = make()
    value = answer_challenge(auth.challenge()[index], "alice", "wonderland", "REGISTER", URI)
    assert f"algorithm={algorithm}" in value
    verdict = auth.verify_request([value], "REGISTER")
    assert verdict.ok and verdict.user == "alice", verdict


@pytest.mark.parametrize("algorithm", [Algorithm.MD5_SESS, Algorithm.SHA256_SESS])
def test_sess_variants_are_accepted(algorithm):
    _, auth = make()
    challenge = auth.challenge()[0].replace("algorithm=SHA-256", f"algorithm={algorithm.value}")
    value = answer_challenge(challenge, "alice", "wonderland", "INVITE", "sip:bob@example.com")
    assert auth.verify_request([value], "INVITE").ok


def test_the_method_and_uri_are_covered():
    _, auth = make()
    value = answer_challenge(auth.challenge()[0], "alice", "wonderland", "REGISTER", URI)
    assert auth.verify_request([value], "INVITE").outcome is Outcome.WRONG
    assert auth.verify_request([value], "REGISTER", request_uri="sip:other.com").outcome is Outcome.WRONG
    assert auth.verify_request([value], "REGISTER", request_uri=URI).ok


def test_wrong_password_and_unknown_user_look_the_same():
    _, auth = make()
    challenge = auth.challenge()[0]
    wrong = auth.verify_request([answer_challenge(challenge, "alice", "looking-glass", "REGISTER", URI)], "REGISTER")
    unknown = auth.verify_request([answer_challenge(challenge, "mallory", "wonderland", "REGISTER", URI)], "REGISTER")
    assert wrong.outcome is unknown.outcome is Outcome.WRONG
    assert wrong.user is unknown.user is None


def test_unknown_user_costs_the_same_hashing(monkeypatch):
    """The same number of hash computations for a wrong password and an unknown user."""
    _, auth = make()
    challenge = auth.challenge()[0]
    calls = []
    original = Algorithm.hash
    monkeypatch.setattr(Algorithm, "hash", lambda self, text: calls.append(self) or original(self, text))
    for user in ("alice", "nobody"):
        value = answer_challenge(challenge, user, "bad", "REGISTER", URI)
        calls.clear()
        auth.verify_request([value], "REGISTER")
        counted = len(calls)
        if user == "alice":
            known = counted
    assert counted == known > 0


def test_expired_nonce_with_right_password_is_stale():
    clock, auth = make(nonce_ttl=300)
    challenge = auth.challenge()[0]
    clock.advance(299)
    assert auth.verify_request([answer_challenge(challenge, "alice", "wonderland", "REGISTER", URI)], "REGISTER").ok
    clock.advance(2)
    value = answer_challenge(challenge, "alice", "wonderland", "REGISTER", URI, nc=2)
    assert auth.verify_request([value], "REGISTER").outcome is Outcome.STALE
    # RFC 2617 3.2.1: stale only for a valid digest; a wrong password stays wrong
    value = answer_challenge(challenge, "alice", "bad", "REGISTER", URI, nc=3)
    assert auth.verify_request([value], "REGISTER").outcome is Outcome.WRONG


def test_a_nonce_from_the_far_future_is_stale():
    """A peer whose clock runs an hour ahead: its nonces are authentic but not fresh here."""
    _, auth = make()
    ahead = Clock()
    ahead.advance(1_000_000 + 3600)
    peer = DigestAuthenticator(ahead, auth._users, SECRET, REALM)
    value = answer_challenge(peer.challenge()[0], "alice", "wonderland", "REGISTER", URI)
    assert auth.verify_request([value], "REGISTER").outcome is Outcome.STALE
    # a few seconds of skew is fine
    close = Clock()
    close.advance(1_000_000 + 10)
    value = answer_challenge(DigestAuthenticator(close, auth._users, SECRET, REALM).challenge()[0], "alice", "wonderland", "REGISTER", URI)
    assert auth.verify_request([value], "REGISTER").ok


def test_forged_and_foreign_nonces_are_bad():
    clock, auth = make()
    good = parse_auth_header(auth.challenge()[0]).params["nonce"]
    for nonce in ("", "abc", "!!!!", good[:-2] + ("AA" if good[-2:] != "AA" else "BB"), good + "A"):
        challenge = format_auth_header(
            "Digest", [("realm", REALM, True), ("nonce", nonce or "x", True), ("algorithm", "SHA-256", False), ("qop", "auth", True)]
        )
        value = answer_challenge(challenge, "alice", "wonderland", "REGISTER", URI)
        assert auth.verify_request([value], "REGISTER").outcome is Outcome.BAD_NONCE, nonce
    # another proxy's secret, or the same secret for another realm
    for other in (
        DigestAuthenticator(clock, auth._users, b"\xff" * 32, REALM),
        DigestAuthenticator(clock, auth._users, SECRET, "other.org"),
    ):
        value = answer_challenge(other.challenge()[0].replace("other.org", REALM), "alice", "wonderland", "REGISTER", URI)
        assert auth.verify_request([value], "REGISTER").outcome is Outcome.BAD_NONCE


def test_a_proxy_sharing_the_secret_accepts_the_nonce():
    clock, auth = make()
    peer = DigestAuthenticator(clock, auth._users, SECRET, REALM)
    value = answer_challenge(auth.challenge()[0], "alice", "wonderland", "REGISTER", URI)
    assert peer.verify_request([value], "REGISTER").ok


def test_replay_and_increasing_nonce_counts():
    _, auth = make()
    challenge = auth.challenge()[1]
    answers = {nc: answer_challenge(challenge, "alice", "wonderland", "MESSAGE", URI, nc=nc) for nc in (1, 2, 3, 7)}
    assert auth.verify_request([answers[1]], "MESSAGE").ok
    assert auth.verify_request([answers[2]], "MESSAGE").ok
    assert auth.verify_request([answers[2]], "MESSAGE").outcome is Outcome.REPLAY
    assert auth.verify_request([answers[7]], "MESSAGE").ok
    assert auth.verify_request([answers[3]], "MESSAGE").outcome is Outcome.REPLAY  # decreasing
    assert auth.verify_request([answers[1]], "MESSAGE").outcome is Outcome.REPLAY


def test_a_wrong_response_does_not_burn_the_count():
    _, auth = make()
    challenge = auth.challenge()[0]
    bogus = answer_challenge(challenge, "alice", "guess", "REGISTER", URI, nc=0xFFFFFFFF)
    assert auth.verify_request([bogus], "REGISTER").outcome is Outcome.WRONG
    assert auth.verify_request([answer_challenge(challenge, "alice", "wonderland", "REGISTER", URI)], "REGISTER").ok


def test_replay_memory_is_bounded_and_stays_safe():
    clock, auth = make(max_tracked_nonces=3)
    challenges = []
    for _ in range(5):
        challenges.append(auth.challenge()[0])
        clock.advance(1)
    for c in challenges:
        assert auth.verify_request([answer_challenge(c, "alice", "wonderland", "REGISTER", URI)], "REGISTER").ok
    assert len(auth._counts) == 3
    # the two evicted nonces cannot be replayed: they are answered stale (take a new nonce)
    for c in challenges[:2]:
        value = answer_challenge(c, "alice", "wonderland", "REGISTER", URI)
        assert auth.verify_request([value], "REGISTER").outcome is Outcome.STALE
    # the tracked ones still count
    value = answer_challenge(challenges[4], "alice", "wonderland", "REGISTER", URI)
    assert auth.verify_request([value], "REGISTER").outcome is Outcome.REPLAY
    # and entries expire with their nonce
    clock.advance(400)
    auth.verify_request([answer_challenge(auth.challenge()[0], "alice", "wonderland", "REGISTER", URI)], "REGISTER")
    assert len(auth._counts) == 1


def test_only_credentials_for_our_realm_count():
    _, auth = make()
    challenge = auth.challenge()[0]
    ours = answer_challenge(challenge, "alice", "wonderland", "INVITE", URI)
    theirs = ours.replace(f'realm="{REALM}"', 'realm="downstream.org"')
    assert auth.verify_request([], "INVITE").outcome is Outcome.NO_CREDENTIALS
    assert auth.verify_request([theirs], "INVITE").outcome is Outcome.NO_CREDENTIALS
    assert auth.verify_request(['Basic realm="x"'], "INVITE").outcome is Outcome.NO_CREDENTIALS
    assert auth.verify_request([theirs, ours], "INVITE").ok
    assert auth.verify(theirs, "INVITE").outcome is Outcome.OTHER_REALM
    # another scheme's syntax does not hide our credentials; a broken Digest value does not either
    assert auth.verify_request(["Bearer abc.def==", 'Digest realm="x", oops', answer_challenge(challenge, "alice", "wonderland", "INVITE", URI, nc=2)], "INVITE").ok
    assert auth.verify_request(["Bearer abc.def=="], "INVITE").outcome is Outcome.NO_CREDENTIALS
    assert auth.verify_request(['Digest realm="x", oops'], "INVITE").outcome is Outcome.MALFORMED


def test_an_algorithm_not_offered_is_refused():
    _, auth = make(algorithms=[Algorithm.SHA256])
    assert len(auth.challenge()) == 1
    md5 = challenge_values(REALM, parse_auth_header(auth.challenge()[0]).params["nonce"], "o", [Algorithm.MD5])[0]
    value = answer_challenge(md5, "alice", "wonderland", "REGISTER", URI)
    assert auth.verify_request([value], "REGISTER").outcome is Outcome.MALFORMED


def _valid_params(auth):
    value = answer_challenge(auth.challenge()[1], "alice", "wonderland", "REGISTER", URI)
    return dict(parse_auth_header(value).params)


def _rebuild(params):
    unquoted = {"algorithm", "qop", "nc"}
    return format_auth_header("Digest", [(k, v, k not in unquoted) for k, v in params.items()])


@pytest.mark.parametrize("missing", ["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce"])
def test_missing_required_params_are_malformed(missing):
    _, auth = make()
    params = _valid_params(auth)
    del params[missing]
    verdict = auth.verify(_rebuild(params), "REGISTER")
    assert verdict.outcome is Outcome.MALFORMED and missing in verdict.reason


@pytest.mark.parametrize(
    "change",
    [
        {"qop": "auth-int"},
        {"nc": "1"},
        {"nc": "0000000g"},
        {"response": "abc"},
        {"algorithm": "SHA-512-256"},
        {"userhash": "true"},
        {"username*": "UTF-8''alice"},
        {"cnonce": ""},
    ],
)
def test_bad_params_are_malformed(change):
    _, auth = make()
    params = _valid_params(auth)
    params.update(change)
    assert auth.verify(_rebuild(params), "REGISTER").outcome is Outcome.MALFORMED


def test_rfc2069_style_without_qop_is_refused():
    _, auth = make()
    params = _valid_params(auth)
    for name in ("qop", "nc", "cnonce"):
        del params[name]
    assert auth.verify(_rebuild(params), "REGISTER").outcome is Outcome.MALFORMED


def test_duplicate_params_are_malformed():
    _, auth = make()
    value = answer_challenge(auth.challenge()[1], "alice", "wonderland", "REGISTER", URI)
    assert auth.verify_request([value + ', username="bob"'], "REGISTER").outcome is Outcome.MALFORMED


def test_tolerant_of_quoted_tokens_and_spacing():
    """Some phones quote qop, nc and algorithm, or put spaces around '='."""
    _, auth = make()
    params = _valid_params(auth)
    text = "Digest  " + " ,  ".join(f'{k} = "{v}"' for k, v in params.items())
    assert auth.verify_request([text], "REGISTER").ok


def test_no_algorithm_means_md5():
    _, auth = make()
    params = _valid_params(auth)
    del params["algorithm"]
    assert auth.verify(_rebuild(params), "REGISTER").ok


def test_a_users_table_change_is_seen_at_once():
    users = UserTable({("alice", REALM): UserEntry.from_password("alice", REALM, "old")})
    _, auth = make(users=users)
    assert auth.verify_request([answer_challenge(auth.challenge()[0], "alice", "old", "REGISTER", URI)], "REGISTER").ok
    users._entries[("alice", REALM)] = UserEntry.from_password("alice", REALM, "new")
    value = answer_challenge(auth.challenge()[0], "alice", "old", "REGISTER", URI)
    assert auth.verify_request([value], "REGISTER").outcome is Outcome.WRONG


def test_constructor_checks():
    clock = Clock()
    with pytest.raises(ValueError):
        DigestAuthenticator(clock, UserTable(), SECRET, REALM, algorithms=[])
    with pytest.raises(ValueError):
        DigestAuthenticator(clock, UserTable(), SECRET, REALM, algorithms=[Algorithm.MD5_SESS])
    with pytest.raises(ValueError):
        DigestAuthenticator(clock, UserTable(), b"short", REALM)


_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    user=_text.filter(lambda u: ":" not in u and u == u.strip() and not u.startswith("#")),
    password=st.text(min_size=1, max_size=20),
    method=st.sampled_from(["REGISTER", "INVITE", "MESSAGE", "SUBSCRIBE", "BYE"]),
    uri=_text,
    index=st.sampled_from([0, 1]),
    flip=st.integers(min_value=0, max_value=31),
)
def test_any_user_password_and_uri_round_trip_and_one_changed_digit_fails(user, password, method, uri, index, flip):
    users = UserTable({(user, REALM): UserEntry.from_password(user, REALM, password)})
    _, auth = make(users=users)
    value = answer_challenge(auth.challenge()[index], user, password, method, uri)
    assert auth.verify_request([value], method).user == user
    params = dict(parse_auth_header(value).params)
    digit = params["response"][flip]
    params["response"] = params["response"][:flip] + ("0" if digit != "0" else "1") + params["response"][flip + 1 :]
    params["nc"] = "00000002"
    assert auth.verify(_rebuild(params), method).outcome is Outcome.WRONG


def test_with_a_users_file_and_a_reload(tmp_path):
    """The shape the proxy uses: a UsersFile that SIGHUP reloads, a secret from its file."""
    from sosimple_proxy.security import users as users_mod
    from sosimple_proxy.security.nonces import load_or_create_secret

    path = str(tmp_path / "users")
    users_mod.add_user(path, "alice", REALM, "one")
    users_file = users_mod.UsersFile(path)
    clock = Clock()
    auth = DigestAuthenticator(clock, users_file, load_or_create_secret(str(tmp_path / "secret")), REALM)
    assert auth.verify_request([answer_challenge(auth.challenge()[0], "alice", "one", "REGISTER", URI)], "REGISTER").ok
    users_mod.set_password(path, "alice", REALM, "two")
    assert users_file.reload_if_changed()
    old = answer_challenge(auth.challenge()[0], "alice", "one", "REGISTER", URI)
    new = answer_challenge(auth.challenge()[0], "alice", "two", "REGISTER", URI)
    assert auth.verify_request([old], "REGISTER").outcome is Outcome.WRONG
    assert auth.verify_request([new], "REGISTER").ok
