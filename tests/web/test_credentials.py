"""AdminCredentials without I/O: Basic only inside TLS, Digest on a fake clock."""

from __future__ import annotations

import base64

from twisted.internet import task

from sosimple_proxy.security.digest import Outcome, answer_challenge
from sosimple_proxy.security.users import UserEntry, UserTable
from sosimple_proxy.web.credentials import AdminCredentials

REALM = "sosimple-admin"


def make(clock=None) -> AdminCredentials:
    table = UserTable({("root", REALM): UserEntry.from_password("root", REALM, "pw")})
    return AdminCredentials(clock or task.Clock(), table, REALM, nonce_ttl=60)


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_basic_is_checked_against_the_sha256_ha1_over_tls_only():
    creds = make()
    assert creds.check([basic("root:pw")], "GET", "/ring", secure=True).user == "root"
    assert creds.check([basic("root:pw")], "GET", "/ring", secure=False).outcome is Outcome.NO_CREDENTIALS
    assert creds.check([basic("root:no")], "GET", "/ring", secure=True).outcome is Outcome.WRONG
    assert creds.check([basic("nobody:pw")], "GET", "/ring", secure=True).outcome is Outcome.WRONG
    assert creds.check([basic("no colon")], "GET", "/ring", secure=True).outcome is Outcome.MALFORMED
    assert creds.check(["Basic !!!"], "GET", "/ring", secure=True).outcome is Outcome.MALFORMED
    assert creds.check([], "GET", "/ring", secure=True).outcome is Outcome.NO_CREDENTIALS


def test_a_password_with_colons_and_utf8():
    table = UserTable({("ops", REALM): UserEntry.from_password("ops", REALM, "a:b é")})
    creds = AdminCredentials(task.Clock(), table, REALM)
    assert creds.check([basic("ops:a:b é")], "GET", "/", secure=True).ok


def test_challenges_offer_basic_only_over_tls():
    creds = make()
    assert [c.split()[0] for c in creds.challenges(secure=True)] == ["Digest", "Digest", "Basic"]
    assert [c.split()[0] for c in creds.challenges(secure=False)] == ["Digest", "Digest"]


def test_an_old_nonce_is_stale_and_the_uri_must_be_the_request_target():
    clock = task.Clock()
    creds = make(clock)
    challenge = creds.challenges(secure=False)[0]
    assert creds.check([answer_challenge(challenge, "root", "pw", "GET", "/ring")], "GET", "/ring", False).ok
    wrong_uri = answer_challenge(challenge, "root", "pw", "GET", "/ring", nc=2)
    assert creds.check([wrong_uri], "GET", "/limits", False).outcome is Outcome.WRONG
    clock.advance(61)
    late = answer_challenge(challenge, "root", "pw", "GET", "/ring", nc=3)
    assert creds.check([late], "GET", "/ring", False).outcome is Outcome.STALE
    assert any("stale=true" in c for c in creds.challenges(secure=False, stale=True))
