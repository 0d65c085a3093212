"""Digest authentication in the whole proxy core (issue 10, "Digest
authentication"): real transaction layer, fake wire, Clock.

The harness's peers on 127.0.0.1 are trusted unless a test gives its own
``[auth]``; here the phones send from 192.0.2.x (strangers until they
authenticate) and 127.0.0.1 is trusted only where a test says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sosimple_proxy.security.authparams import parse_auth_header
from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request, Response

from tests.proxy.harness import Harness, invite

PHONE = Peer("udp", "192.0.2.10", 5070)
BOB = "sip:bob@10.0.0.5:6001"


def users_file(tmp_path: Path, *users: tuple[str, str], realm: str = "example.com") -> str:
    path = tmp_path / "users"
    path.write_text("".join(UserEntry.from_password(u, realm, p).line() + "\n" for u, p in users))
    path.chmod(0o600)
    return str(path)


def auth_harness(tmp_path: Path, extra: str = "", trusted: str = "127.0.0.1", **kw) -> Harness:
    path = users_file(tmp_path, ("alice", "secret"), ("bob", "hunter2"))
    return Harness(f"[auth]\nusers_file = {path}\ntrusted = {trusted}\n{extra}", **kw)


def register_request(user: str = "alice", cseq: int = 1, aor_user: str | None = None, auth: str = "") -> str:
    aor_user = aor_user or user
    return (
        f"REGISTER sip:example.com SIP/2.0\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-r-{user}-{cseq};rport\n"
        f"Max-Forwards: 70\nTo: <sip:{aor_user}@example.com>\nFrom: <sip:{aor_user}@example.com>;tag=f{cseq}\n"
        f"Call-ID: reg-{user}@phone\nCSeq: {cseq} REGISTER\n"
        f"Contact: <sip:{user}@192.0.2.10:5070>\n{auth}Expires: 600\nContent-Length: 0\n\n"
    )


def responses(h: Harness) -> list[Response]:
    return [m for m, _ in h.sent_responses(h.wire.take())]


def only_final(h: Harness) -> Response:
    finals = [r for r in responses(h) if r.status >= 200]
    assert len(finals) == 1, finals
    return finals[0]


def challenges(response: Response, header: str = "www-authenticate") -> list[dict[str, str]]:
    return [dict(parse_auth_header(v).params) for v in response.headers.get_all(header)]


def register_with_password(h: Harness, user: str, password: str, cseq: int = 1, aor_user: str | None = None):
    """REGISTER, answer the 401's first challenge; the final answer."""
    h.receive(register_request(user, cseq, aor_user), PHONE)
    first = only_final(h)
    assert first.status == 401, first
    value = answer_challenge(first.headers.get("www-authenticate"), user, password, "REGISTER", "sip:example.com")
    h.receive(register_request(user, cseq + 1, aor_user, f"Authorization: {value}\n"), PHONE)
    return only_final(h), value


# --- REGISTER


def test_register_without_credentials_is_challenged_with_both_algorithms_in_order(tmp_path):
    h = auth_harness(tmp_path)
    h.receive(register_request(), PHONE)
    answer = only_final(h)
    assert answer.status == 401
    offered = challenges(answer)
    assert [c["algorithm"] for c in offered] == ["SHA-256", "MD5"]
    assert all(c["qop"] == "auth" and c["realm"] == "example.com" for c in offered)
    assert len({c["nonce"] for c in offered}) == 1 and "stale" not in offered[0]


def test_md5_alone_when_configured(tmp_path):
    h = auth_harness(tmp_path, "algorithms = MD5\n")
    h.receive(register_request(), PHONE)
    assert [c["algorithm"] for c in challenges(only_final(h))] == ["MD5"]


def test_right_password_registers_wrong_password_is_challenged_again(tmp_path):
    failures: list[str] = []
    h = auth_harness(tmp_path, on_auth_failure=failures.append)
    ok, _ = register_with_password(h, "alice", "secret")
    assert ok.status == 200 and "192.0.2.10:5070" in ok.headers.get("contact")
    assert failures == []
    wrong, _ = register_with_password(h, "bob", "not-his", cseq=5)
    assert wrong.status == 401 and challenges(wrong)
    # only the wrong credentials count, not the first request that had none
    assert failures == ["192.0.2.10"]


def test_a_replayed_nonce_count_is_challenged_again(tmp_path):
    h = auth_harness(tmp_path)
    ok, value = register_with_password(h, "alice", "secret")
    assert ok.status == 200
    h.receive(register_request("alice", 3, auth=f"Authorization: {value}\n"), PHONE)
    again = only_final(h)
    assert again.status == 401 and "stale" not in challenges(again)[0]


def test_an_expired_nonce_is_stale(tmp_path):
    h = auth_harness(tmp_path, "nonce_ttl = 30\n")
    h.receive(register_request(), PHONE)
    challenge = only_final(h).headers.get("www-authenticate")
    h.advance(31)
    value = answer_challenge(challenge, "alice", "secret", "REGISTER", "sip:example.com")
    h.receive(register_request("alice", 2, auth=f"Authorization: {value}\n"), PHONE)
    stale = only_final(h)
    assert stale.status == 401 and [c.get("stale") for c in challenges(stale)] == ["true", "true"]


def test_a_user_may_only_register_their_own_address(tmp_path):
    h = auth_harness(tmp_path)
    answer, _ = register_with_password(h, "alice", "secret", aor_user="bob")
    assert answer.status == 403


def test_the_users_file_is_read_again_on_reload(tmp_path):
    h = auth_harness(tmp_path)
    path = Path(h.cfg.section("auth")["users_file"])
    path.write_text(path.read_text() + UserEntry.from_password("carol", "example.com", "new").line() + "\n")
    assert register_with_password(h, "carol", "new")[0].status == 401
    for _what, reload in h.proxy.reloads:
        reload()
    assert register_with_password(h, "carol", "new", cseq=5)[0].status == 200


# --- no user enumeration


def _shape(response: Response) -> tuple:
    """Status, reason and header names and values with per-request parts blanked."""
    lines = []
    for name, value in response.headers.items():
        value = re.sub(r'(nonce|opaque)="[^"]*"', r'\1=""', value)
        value = re.sub(r"tag=[^;>\s]+", "tag=", value)
        value = re.sub(r"branch=[^;\s]+", "branch=", value)
        value = re.sub(r"sip:[^@]+@", "sip:USER@", value)
        value = re.sub(r"reg-[^@]+@", "reg-X@", value)
        lines.append((name.lower(), value))
    return response.status, response.reason, tuple(lines)


def test_an_unknown_user_and_a_known_one_get_the_same_answers(tmp_path):
    h = auth_harness(tmp_path)
    shapes = set()
    for user in ("alice", "nobody"):
        h.receive(register_request(user), PHONE)
        first = only_final(h)
        shapes.add(_shape(first))
        value = answer_challenge(first.headers.get("www-authenticate"), user, "wrong", "REGISTER", "sip:example.com")
        h.receive(register_request(user, 2, auth=f"Authorization: {value}\n"), PHONE)
        shapes.add(_shape(only_final(h)))
        h.receive(invite(extra="", call_id=f"c-{user}").replace("alice@example.com", f"{user}@example.com"), PHONE)
        shapes.add(_shape(only_final(h)))
    # one 401 for both first REGISTERs, one (CSeq 2) for both wrong passwords, one 407
    assert len(shapes) == 3, shapes


# --- other requests


def test_a_request_from_our_domain_is_challenged_407_and_passes_with_credentials(tmp_path):
    h = auth_harness(tmp_path)
    h.register("bob", BOB)
    h.receive(invite(), PHONE)
    challenge = only_final(h)
    assert challenge.status == 407 and challenge.reason == "Proxy Authentication Required"
    assert [c["algorithm"] for c in challenges(challenge, "proxy-authenticate")] == ["SHA-256", "MD5"]
    value = answer_challenge(challenge.headers.get("proxy-authenticate"), "alice", "secret", "INVITE",
                             "sip:bob@example.com")
    foreign = 'Digest username="x", realm="other.test", nonce="n", uri="sip:bob@example.com", response="00"'
    h.receive(invite(branch="z9hG4bK-2", cseq=2, extra=f"Proxy-Authorization: {value}\n"
                     f"Proxy-Authorization: {foreign}\nP-Asserted-Identity: <sip:boss@example.com>\n"), PHONE)
    (sent, dest), = h.sent_requests(h.wire.take(), "INVITE")
    assert sent.uri == BOB
    # RFC 3261 22.3: our realm's credentials consumed, another realm's left
    assert sent.headers.get_all("proxy-authorization") == [foreign]
    # no asserted identity toward a phone (not in the trust domain); the forged one is gone
    assert "p-asserted-identity" not in sent.headers


def test_the_from_must_be_the_authenticated_user_or_anonymous(tmp_path):
    h = auth_harness(tmp_path)
    h.register("bob", BOB)

    def send_as(sender: str, n: int) -> Response | Request:
        h.receive(invite(branch=f"z9hG4bK-{n}", call_id=f"c{n}").replace("sip:alice@example.com", sender), PHONE)
        challenge = only_final(h)
        value = answer_challenge(challenge.headers.get("proxy-authenticate"), "alice", "secret", "INVITE",
                                 "sip:bob@example.com")
        h.receive(invite(branch=f"z9hG4bK-{n}b", call_id=f"c{n}", cseq=2,
                         extra=f"Proxy-Authorization: {value}\n").replace("sip:alice@example.com", sender), PHONE)
        sent = h.wire.take()
        forwarded = h.sent_requests(sent, "INVITE")
        return forwarded[0][0] if forwarded else [m for m, _ in h.sent_responses(sent) if m.status >= 200][0]

    assert isinstance(send_as("sip:alice@example.com", 1), Request)
    refused = send_as("sip:bob@example.com", 2)
    assert isinstance(refused, Response) and refused.status == 403


def test_cancel_and_ack_are_never_challenged(tmp_path):
    h = auth_harness(tmp_path, trusted="")
    h.receive(invite("sip:nobody@example.com", method="OPTIONS", to_tag=None), PHONE)
    assert only_final(h).status == 407
    # a CANCEL for an INVITE we never saw: 481, not 407 (RFC 3261 22.1)
    h.receive(invite(method="CANCEL", branch="z9hG4bK-none"), PHONE)
    assert only_final(h).status == 481


def test_trusted_sources_are_never_challenged(tmp_path):
    h = auth_harness(tmp_path, trusted="192.0.2.0/24 127.0.0.1")
    h.register("bob", BOB)
    h.receive(invite(), PHONE)
    (sent, _), = h.sent_requests(h.wire.take(), "INVITE")
    assert sent.uri == BOB


def test_register_is_not_challenged_without_required(tmp_path):
    h = auth_harness(tmp_path, "required = no\n")
    h.receive(register_request(), PHONE)
    assert only_final(h).status == 200


def test_malformed_credentials_are_challenged_again(tmp_path):
    h = auth_harness(tmp_path)
    h.receive(register_request(auth='Authorization: Digest username="alice", realm="example.com"\n'), PHONE)
    assert only_final(h).status == 401


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE"])
def test_requests_from_foreign_domains_are_not_challenged(tmp_path, method):
    h = auth_harness(tmp_path)
    h.register("bob", BOB)
    h.receive(invite(method=method).replace("sip:alice@example.com", "sip:x@other.test"), PHONE)
    (sent, _), = h.sent_requests(h.wire.take(), method)
    assert sent.uri == BOB


def test_options_to_the_proxy_itself_is_not_challenged(tmp_path):
    h = auth_harness(tmp_path, trusted="")
    h.receive(invite("sip:example.com", method="OPTIONS"), PHONE)
    assert only_final(h).status == 200


def test_our_credentials_repeated_on_an_in_dialog_request_go_no_further(tmp_path):
    h = auth_harness(tmp_path)
    h.register("bob", BOB)
    h.receive(invite(), PHONE)
    challenge = only_final(h)
    value = answer_challenge(challenge.headers.get("proxy-authenticate"), "alice", "secret", "INVITE",
                             "sip:bob@example.com")
    h.receive(invite(branch="z9hG4bK-2", cseq=2, extra=f"Proxy-Authorization: {value}\n"), PHONE)
    (inv, _), = h.sent_requests(h.wire.take(), "INVITE")
    (rr,) = inv.headers.get_all("record-route")
    h.answer(inv, 200, to_tag="b")
    h.wire.take()
    h.receive(
        f"BYE {BOB} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bK-bye;rport\nMax-Forwards: 70\n"
        "From: <sip:alice@example.com>;tag=a1\nTo: <sip:bob@example.com>;tag=b\nCall-ID: call-1@caller\n"
        f"CSeq: 3 BYE\nRoute: {rr}\nProxy-Authorization: {value}\nContent-Length: 0\n\n",
        PHONE,
    )
    (bye, _), = h.sent_requests(h.wire.take(), "BYE")
    assert "proxy-authorization" not in bye.headers
