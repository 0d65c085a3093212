"""Digest authentication end to end (issue 10): twistd, real sockets, sipp's
``[authentication]`` (MD5: Debian's sipp answers only a challenge whose
first algorithm is MD5, so these proxies set ``algorithms = MD5``), and a
Python client for SHA-256, replays and the enumeration check.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest

from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.testing import SIPP, ProxyProcess, run_sipp, sip_request, udp_final_response
from sosimple_proxy.testing.sipp import assert_sipp_ok
from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario, sent_messages

pytestmark = pytest.mark.skipif(SIPP is None, reason="sipp is not installed (Debian package sip-tester)")

REALM = "example.com"
PASSWORDS = {"alice": "secret", "bob": "hunter2"}


def write_users(path: Path, users: dict[str, str]) -> str:
    path.write_text("".join(UserEntry.from_password(u, REALM, p).line() + "\n" for u, p in users.items()))
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def users_path(tmp_path_factory) -> str:
    return write_users(tmp_path_factory.mktemp("auth") / "users", PASSWORDS)


@pytest.fixture(scope="module")
def md5_proxy(users_path):
    with ProxyProcess({"proxy": {"domains": REALM}, "auth": {"users_file": users_path, "algorithms": "MD5"}}) as p:
        yield p


@pytest.fixture(scope="module")
def default_proxy(users_path):
    """The default algorithms, SHA-256 then MD5."""
    with ProxyProcess({"proxy": {"domains": REALM}, "auth": {"users_file": users_path}}) as p:
        yield p


def register_step(cseq: int, auth: str = "", user: str = "alice") -> str:
    return f"""  <send retrans="500">
    <![CDATA[
REGISTER sip:{REALM} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: 70
From: <sip:{user}@{REALM}>;tag=[pid]SIPpTag00[call_number]
To: <sip:{user}@{REALM}>
Call-ID: [call_id]
CSeq: {cseq} REGISTER
Contact: <sip:{user}@[local_ip]:[local_port]>
{auth}
Expires: 60
Content-Length: 0

    ]]>
  </send>
"""


def credentials(password: str, user: str = "alice") -> str:
    return f"[authentication username={user} password={password}]"


def challenged(regexp: str | None = None) -> str:
    """A 401 whose challenge sipp keeps for ``[authentication]``; its
    WWW-Authenticate must match ``regexp`` (POSIX extended) if given."""
    if regexp is None:
        return '  <recv response="401" auth="true"/>\n'
    return f"""  <recv response="401" auth="true">
    <action>
      <ereg regexp="{regexp}" search_in="hdr" header="WWW-Authenticate:" check_it="true" assign_to="st"/>
    </action>
  </recv>
  <Reference variables="st"/>
"""


def sipp_run(proxy: ProxyProcess, xml: str, tmp_path: Path, *args: str):
    return run_sipp(xml, f"127.0.0.1:{proxy.port}", "-default_behaviors", "all,-bye", *args, timeout=15,
                    workdir=tmp_path)


def test_sipp_no_credentials_401_right_password_200(md5_proxy, tmp_path):
    xml = scenario("digest", register_step(1), challenged("algorithm=MD5, qop=&quot;auth&quot;$"),
                   register_step(2, credentials("secret")), expect_response(200))
    assert_sipp_ok(sipp_run(md5_proxy, xml, tmp_path))


def test_sipp_wrong_password_is_challenged_again(md5_proxy, tmp_path):
    xml = scenario("wrong", register_step(1), challenged(),
                   register_step(2, credentials("guess")), challenged(),
                   register_step(3, credentials("guess2")), expect_response(401))
    assert_sipp_ok(sipp_run(md5_proxy, xml, tmp_path))


def test_sipp_replayed_nonce_count_is_challenged_again(md5_proxy, tmp_path):
    """sipp registers (200); its REGISTER with credentials, sent again by an
    eavesdropper as a new request (a new branch and CSeq, the same nonce and
    nonce-count), is challenged."""
    xml = scenario("replay", register_step(1), challenged(), register_step(2, credentials("secret")),
                   expect_response(200))
    result = sipp_run(md5_proxy, xml, tmp_path, "-trace_msg", "-message_file", str(tmp_path / "msgs.log"))
    assert_sipp_ok(result)
    (sent,) = [m for m in sent_messages((tmp_path / "msgs.log").read_text(), "REGISTER") if "Authorization" in m]
    head = sent.strip().replace("\r\n", "\n").split("\n\n", 1)[0]
    replay = re.sub(r"branch=[^;\s]+", f"branch=z9hG4bK-{uuid.uuid4().hex}", head)
    replay = replay.replace("CSeq: 2 REGISTER", "CSeq: 7 REGISTER")
    replay = re.sub(r"Content-Length: *\d+", "Content-Length: 0", replay)
    answer = udp_final_response(md5_proxy.port, replay.replace("\n", "\r\n") + "\r\n\r\n")
    assert answer is not None and answer.startswith("SIP/2.0 401 "), answer


def test_sipp_expired_nonce_is_stale_and_the_retry_registers(users_path, tmp_path):
    with ProxyProcess({"proxy": {"domains": REALM},
                       "auth": {"users_file": users_path, "algorithms": "MD5", "nonce_ttl": "1"}}) as proxy:
        xml = scenario("stale", register_step(1), challenged(), '  <pause milliseconds="2500"/>\n',
                       register_step(2, credentials("secret")), challenged("stale=true"),
                       register_step(3, credentials("secret")), expect_response(200))
        assert_sipp_ok(sipp_run(proxy, xml, tmp_path))


def test_sha256_and_md5_are_both_offered_and_sha256_registers(default_proxy):
    port = default_proxy.port
    first = udp_final_response(port, lambda lport: register("alice", lport))
    assert first is not None and first.startswith("SIP/2.0 401 ")
    offered = re.findall(r"^WWW-Authenticate: *(.*)$", first, re.M)
    assert [re.search(r"algorithm=([\w-]+)", v).group(1) for v in offered] == ["SHA-256", "MD5"]
    value = answer_challenge(offered[0].strip(), "alice", "secret", "REGISTER", f"sip:{REALM}")
    ok = udp_final_response(port, lambda lport: register("alice", lport, cseq=2, auth=value))
    assert ok is not None and ok.startswith("SIP/2.0 200 "), ok


def register(user: str, lport: int, cseq: int = 1, auth: str | None = None, call_id: str | None = None) -> str:
    headers = [f"Contact: <sip:{user}@127.0.0.1:{lport}>", "Expires: 60"]
    if auth:
        headers.append(f"Authorization: {auth}")
    return sip_request("REGISTER", f"sip:{REALM}", to=f"{user}@{REALM}", from_=f"{user}@{REALM}", via_port=lport,
                       cseq=cseq, headers=headers, call_id=call_id or f"reg-{user}")


# --- no user enumeration


def _normalised(answer: str, user: str) -> str:
    text = answer.replace(user, "USER")
    text = re.sub(r"branch=[^;\s]+", "branch=B", text)
    text = re.sub(r"tag=[^;\s>]+", "tag=T", text)
    text = re.sub(r"^(Call-ID|i): *.*$", r"\1: C", text, flags=re.M)
    text = re.sub(r'(nonce|opaque)="[^"]*"', r'\1="N"', text)
    return text


def test_existing_and_unknown_users_get_identical_answers(tmp_path):
    existing = {f"user{i:02d}": f"pw{i}" for i in range(20)}
    unknown = [f"nouser{i:02d}" for i in range(20)]
    path = write_users(tmp_path / "users", existing)
    with ProxyProcess({"proxy": {"domains": REALM}, "auth": {"users_file": path}}) as proxy, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        lport = sock.getsockname()[1]
        answers = {}
        for user in list(existing) + unknown:
            request = register(user, lport, call_id=f"enum-{user}-{uuid.uuid4().hex[:8]}")
            sock.sendto(request.encode(), ("127.0.0.1", proxy.port))
            answer = sock.recv(65536).decode()
            answers[user] = _normalised(answer, user)
        shapes = set(answers.values())
        assert len(shapes) == 1, shapes
        assert next(iter(shapes)).startswith("SIP/2.0 401 ")
        # and a wrong password of a known user looks like any password of an unknown one
        wrong = {}
        for user in ("user00", "nouser00"):
            first = udp_final_response(proxy.port, lambda p, u=user: register(u, p, call_id=f"w-{u}"))
            challenge = re.search(r"^WWW-Authenticate: *(.*)$", first, re.M).group(1).strip()
            value = answer_challenge(challenge, user, "wrong", "REGISTER", f"sip:{REALM}")
            again = udp_final_response(proxy.port, lambda p, u=user, v=value: register(u, p, 2, v, f"w-{u}"))
            wrong[user] = re.sub(r"(rport=|received=|127\.0\.0\.1:)\d+", r"\1P", _normalised(again, user))
        assert wrong["user00"] == wrong["nouser00"]


def test_sighup_reads_the_users_file_again(tmp_path):
    import os
    import signal

    from sosimple_proxy.security.users import add_user
    from sosimple_proxy.testing import wait_until

    path = write_users(tmp_path / "users", {"alice": "secret"})
    with ProxyProcess({"proxy": {"domains": REALM}, "auth": {"users_file": path}}) as proxy:

        def registers(user: str, password: str) -> bool:
            first = udp_final_response(proxy.port, lambda p: register(user, p, call_id=f"h-{user}"))
            challenge = re.search(r"^WWW-Authenticate: *(.*)$", first, re.M).group(1).strip()
            value = answer_challenge(challenge, user, password, "REGISTER", f"sip:{REALM}")
            again = udp_final_response(proxy.port, lambda p: register(user, p, 2, value, f"h-{user}"))
            return again is not None and again.startswith("SIP/2.0 200 ")

        assert not registers("carol", "new")
        add_user(path, "carol", REALM, "new")
        os.kill(proxy.process.pid, signal.SIGHUP)
        wait_until(lambda: registers("carol", "new"), 10, what="carol cannot register after SIGHUP")
        assert proxy.process.poll() is None


# --- guessing passwords gets a source banned ([limits] auth_failures)


def test_wrong_passwords_ban_the_source_and_the_admin_api_says_why(tmp_path):
    """Only wrong credentials count (not the first request that carries
    none); after ``auth_failures`` of them the source is banned: the right
    password then gets no answer at all, and GET /limits names the reason."""
    import json
    import urllib.request

    from sosimple_proxy.testing import free_port

    guesser = "127.0.0.5"
    path = write_users(tmp_path / "users", PASSWORDS)
    admin = free_port("tcp")
    settings = {
        "proxy": {"domains": REALM},
        "auth": {"users_file": path},
        "limits": {"auth_failures": "3", "ban_seconds": "60"},
        "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"},
    }
    with ProxyProcess(settings) as proxy:
        def attempt(cseq: int, password: str | None) -> str | None:
            call_id = f"guess-{uuid.uuid4().hex[:8]}"
            first = udp_final_response(proxy.port, lambda p: register("alice", p, call_id=call_id), source=guesser)
            if first is None or password is None:
                return first
            challenge = re.search(r"^WWW-Authenticate: *(.*)$", first, re.M).group(1).strip()
            value = answer_challenge(challenge, "alice", password, "REGISTER", f"sip:{REALM}")
            return udp_final_response(proxy.port, lambda p: register("alice", p, cseq, value, call_id), source=guesser)

        # requests without credentials are challenged as often as they come
        for _ in range(5):
            assert attempt(1, None).startswith("SIP/2.0 401 ")
        for n in range(2):
            assert attempt(2, "wrong").startswith("SIP/2.0 401 "), n
        third = attempt(2, "wrong")  # the third wrong password: banned from now on
        assert third is None or third.startswith("SIP/2.0 401 ")
        assert attempt(2, PASSWORDS["alice"]) is None  # silence, even for the right password
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/limits", timeout=5) as answer:
            banned = json.load(answer)["banned"]
        assert [b["address"] for b in banned] == [guesser]
        assert banned[0]["reason"] == "3 wrong credentials in 60 s", banned
        # another source still registers
        value_first = udp_final_response(proxy.port, lambda p: register("bob", p, call_id="bob-ok"))
        challenge = re.search(r"^WWW-Authenticate: *(.*)$", value_first, re.M).group(1).strip()
        value = answer_challenge(challenge, "bob", PASSWORDS["bob"], "REGISTER", f"sip:{REALM}")
        ok = udp_final_response(proxy.port, lambda p: register("bob", p, 2, value, "bob-ok"))
        assert ok is not None and ok.startswith("SIP/2.0 200 "), ok
