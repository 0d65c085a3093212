"""The ``sosimple`` command against a real admin API on loopback (one in-process node)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from sosimple_proxy import cli
from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.service import OverlayService
from sosimple_proxy.testing import free_port
from sosimple_proxy.web.admin import admin_site

SOSIMPLE = [sys.executable, "-c", "from sosimple_proxy.cli import main; main()"]


class CliTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="cli-test-")
        self.addCleanup(shutil.rmtree, self.base, True)
        settings = {
            "listen": "tcp:0:interface=127.0.0.1",
            "bootstrap": (),
            "replicas": 2,
            "successors": 4,
            "stabilize_interval": 0.2,
            "state_dir": os.path.join(self.base, "node"),
        }
        self.svc = OverlayService(reactor, settings)
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.node = yield self.svc.ready
        port = reactor.listenTCP(0, admin_site(self.svc, {"max_name": 100, "max_value": 1000}), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def sosimple(self, *argv: str, stdin: bytes = b"", env: dict | None = None, admin: bool = True):
        """(status, stdout bytes, stderr text) of one command, run in-process."""
        out, err = io.BytesIO(), io.StringIO()
        args = (["--admin", self.url] if admin else []) + list(argv)
        status = yield defer.Deferred.fromCoroutine(
            cli.run(reactor, args, out, err, io.BytesIO(stdin), env if env is not None else {})
        )
        if status:
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
            self.assertTrue(err.getvalue().startswith("sosimple: "))
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_put_get_delete(self):
        path = os.path.join(self.base, "value.bin")
        with open(path, "wb") as f:
            f.write(b"\x00\x01binary\xff")
        status, out, err = yield self.sosimple("put", "greeting", path, "--ttl", "120")
        self.assertEqual((status, out, err), (0, b"", ""))
        stored = self.node.store.get(ids.flat_key("greeting"))
        self.assertLess(abs(stored[0].expires - reactor.seconds() - 120), 5)
        status, out, _ = yield self.sosimple("get", "greeting")
        self.assertEqual((status, out), (0, b"\x00\x01binary\xff"))
        status, out, _ = yield self.sosimple("delete", "greeting")
        self.assertEqual((status, out), (0, b""))
        status, out, err = yield self.sosimple("get", "greeting")
        self.assertEqual((status, out), (1, b""))
        self.assertIn("no record named 'greeting'", err)
        status, _, err = yield self.sosimple("delete", "greeting")
        self.assertEqual(status, 1)

    @defer.inlineCallbacks
    def test_put_from_stdin_and_odd_names(self):
        for name, argv in (("from stdin", ["-"]), ("a/b%c@d é?#", [])):
            status, _, err = yield self.sosimple("put", name, *argv, stdin=name.encode() * 3)
            self.assertEqual(status, 0, err)
            self.assertEqual(self.node.store.get(ids.flat_key(name))[0].value, name.encode() * 3)
            status, out, _ = yield self.sosimple("get", name)
            self.assertEqual(out, name.encode() * 3)

    @defer.inlineCallbacks
    def test_ring_prints_json_and_admin_comes_from_the_environment(self):
        status, out, _ = yield self.sosimple("ring", env={"SOSIMPLE_ADMIN": self.url}, admin=False)
        self.assertEqual(status, 0)
        view = json.loads(out)
        self.assertEqual(view["id"], ids.format_id(self.node.id))
        # --admin after the command works too, and wins over the environment
        status, out, _ = yield self.sosimple(
            "ring", "--admin", self.url, env={"SOSIMPLE_ADMIN": "http://127.0.0.1:1"}, admin=False
        )
        self.assertEqual(json.loads(out)["address"], self.node.address)

    @defer.inlineCallbacks
    def test_error_answers_are_status_4_with_the_servers_message(self):
        status, _, err = yield self.sosimple("put", "big", "-", stdin=b"x" * 1001)
        self.assertEqual(status, 4)
        self.assertIn("413", err)
        self.assertIn("over the limit of 1000 bytes", err)
        status, _, err = yield self.sosimple("get", "n" * 101)
        self.assertEqual(status, 4)
        self.assertIn("400", err)

    @defer.inlineCallbacks
    def test_lookup_prints_the_rings_bindings_or_exits_1(self):
        from sosimple_proxy.location.bindings import Binding, BindingTable
        from sosimple_proxy.location.ring import RingPublisher

        status, _, err = yield self.sosimple("lookup", "alice@example.com")
        self.assertEqual(status, 1)
        self.assertIn("no binding for alice@example.com", err)
        table = BindingTable(reactor)
        RingPublisher(self.svc, table, lambda b: "<sip:127.0.0.1:5060;lr>", reactor)
        table.replace("alice@example.com", [Binding("alice@example.com", "sip:alice@10.0.0.1", reactor.seconds() + 60, "c", 1)])
        for _ in range(50):
            status, out, err = yield self.sosimple("lookup", "sip:alice@example.com")
            if status == 0:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(status, 0, err)
        view = json.loads(out)
        self.assertEqual(view["aor"], "alice@example.com")
        self.assertEqual([b["contact"] for b in view["bindings"]], ["sip:alice@10.0.0.1"])

    @defer.inlineCallbacks
    def test_a_server_that_is_not_the_api(self):
        class Broken(resource.Resource):
            isLeaf = True

            def render(self, request):
                request.setResponseCode(500, b"Exploded")
                return b"<html>traceback here</html>"

        port = reactor.listenTCP(0, server.Site(Broken()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        status, _, err = yield self.sosimple("--admin", f"http://127.0.0.1:{port.getHost().port}", "get", "x", admin=False)
        self.assertEqual((status, err), (4, "sosimple: 500: Exploded\n"))

    @defer.inlineCallbacks
    def test_unreachable_and_silent_servers_are_status_3(self):
        dead = free_port("tcp")
        status, _, err = yield self.sosimple("--admin", f"http://127.0.0.1:{dead}", "ring", admin=False)
        self.assertEqual(status, 3)
        self.assertIn("connection refused", err)
        silent = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        url = f"http://127.0.0.1:{silent.getHost().port}"
        status, _, err = yield self.sosimple("--admin", url, "--timeout", "0.3", "get", "x", admin=False)
        self.assertEqual(status, 3)
        self.assertIn("no answer", err)
        yield task.deferLater(reactor, 0.1, lambda: None)

    @defer.inlineCallbacks
    def test_usage_errors_are_status_2(self):
        for argv in (
            [],
            ["frobnicate"],
            ["get"],
            ["get", ""],
            ["put", "x", "--ttl", "soon"],
            ["put", "x", "--ttl", "0"],
            ["put", "x", os.path.join(self.base, "missing")],
            ["--admin", "ftp://127.0.0.1/", "ring"],
            ["--admin", "not a url", "ring"],
            ["--admin", "http://127.0.0.1:99999", "ring"],
            ["--admin", "http://127.0.0.1:8080/?q=1", "ring"],
        ):
            status, out, err = yield self.sosimple(*argv, admin=False)
            self.assertEqual(status, 2, (argv, err))
            self.assertEqual(out, b"")
        status, _, err = yield self.sosimple("ring", env={"SOSIMPLE_ADMIN": "nowhere"}, admin=False)
        self.assertEqual(status, 2)
        self.assertIn("$SOSIMPLE_ADMIN", err)


def test_console_script_exit_codes_and_no_traceback():
    """The real command line, as a shell runs it: one line, never a traceback."""
    dead = free_port("tcp")
    env = dict(os.environ, SOSIMPLE_ADMIN=f"http://127.0.0.1:{dead}")
    cases = [
        (["ring"], 3, "connection refused"),
        (["get", "x"], 3, "connection refused"),
        (["--admin", "http://[::1", "ring"], 2, "is not a URL"),
        (["put"], 2, "required: NAME"),
    ]
    for argv, status, words in cases:
        result = subprocess.run(SOSIMPLE + argv, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == status, (argv, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and words in lines[0], (argv, result.stderr)
        assert "Traceback" not in result.stderr
    help_ = subprocess.run(SOSIMPLE + ["--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "Exit status" in help_.stdout


# --- adduser / passwd / deluser: the users file, no network ----------------


def _users(*argv: str, stdin: bytes = b"", env: dict | None = None, answers: list[str] | None = None):
    """(status, stdout, stderr) of a users-file command run in-process; ``answers``
    feeds the password prompts (which are recorded in ``prompts``)."""
    from sosimple_proxy.security import users as _  # noqa: F401  (import errors fail here, clearly)

    out, err = io.BytesIO(), io.StringIO()
    prompts: list[str] = []
    feed = list(answers or [])

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        if not feed:
            raise EOFError
        return feed.pop(0)

    coro = cli.run(None, list(argv), out, err, io.BytesIO(stdin), env if env is not None else {}, getpass=getpass)
    try:
        coro.send(None)
    except StopIteration as stop:
        status = stop.value
    else:  # pragma: no cover - these verbs never wait on the reactor
        raise AssertionError("a users-file command waited on the network")
    if status:
        assert len(err.getvalue().splitlines()) == 1 and err.getvalue().startswith("sosimple: "), err.getvalue()
    return status, out.getvalue(), err.getvalue(), prompts


def test_adduser_passwd_deluser(tmp_path):
    from sosimple_proxy.security.users import UserEntry, read_users

    path = str(tmp_path / "users")
    status, out, err, prompts = _users("adduser", "alice", "--realm", "example.com", "--file", path, answers=["s3cret", "s3cret"])
    assert (status, out, err) == (0, b"", "")
    assert prompts == ["Password for alice@example.com: ", "Again: "]
    assert read_users(path).lookup("alice", "example.com") == UserEntry.from_password("alice", "example.com", "s3cret")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "s3cret" not in open(path).read()

    status, _, err, _ = _users("passwd", "alice", "--realm", "example.com", "--file", path, "--password-stdin", stdin=b"new one\n")
    assert status == 0, err
    assert read_users(path).lookup("alice", "example.com") == UserEntry.from_password("alice", "example.com", "new one")

    status, _, err, _ = _users("deluser", "alice", "--realm", "example.com", "--file", path)
    assert status == 0, err
    assert read_users(path).lookup("alice", "example.com") is None


def test_file_from_the_environment_then_var_users(tmp_path, monkeypatch):
    from sosimple_proxy.security.users import read_users

    env_file = str(tmp_path / "from-env")
    status, _, err, _ = _users("adduser", "bob", "--password-stdin", stdin=b"pw\n", env={"SOSIMPLE_USERS_FILE": env_file})
    assert status == 0, err
    assert read_users(env_file).lookup("bob", "localhost") is not None  # the default realm
    monkeypatch.chdir(tmp_path)
    status, _, err, _ = _users("adduser", "carol", "--password-stdin", stdin=b"pw\r\n")
    assert status == 0, err
    from sosimple_proxy.security.users import UserEntry

    assert read_users("var/users").lookup("carol", "localhost") == UserEntry.from_password("carol", "localhost", "pw")


def test_user_command_failures_and_exit_codes(tmp_path):
    path = str(tmp_path / "users")
    f = ["--file", path]
    assert _users("adduser", "alice", *f, "--password-stdin", stdin=b"pw\n")[0] == 0
    cases = [
        # (argv, stdin, answers, status, words)
        (["adduser", "bob", *f], b"", ["one", "two"], 2, "do not match"),
        (["adduser", "bob", *f], b"", [], 2, "no password given"),
        (["adduser", "bob", *f, "--password-stdin"], b"\n", None, 2, "password is empty"),
        (["adduser", "bob", *f, "--password-stdin"], b"\xff\xfe\n", None, 2, "not UTF-8"),
        (["adduser", "a:b", *f, "--password-stdin"], b"pw\n", None, 2, "contains ':'"),
        (["adduser", "bob", "--realm", "", *f, "--password-stdin"], b"pw\n", None, 2, "realm is empty"),
        (["adduser", *f], b"", None, 2, "required: USER"),
        (["deluser", "alice", *f, "--password-stdin"], b"", None, 2, "unrecognized arguments"),
        (["adduser", "alice", *f], b"", ["x", "x"], 4, "already in"),
        (["passwd", "nobody", *f, "--password-stdin"], b"pw\n", None, 1, "no user nobody@localhost"),
        (["deluser", "nobody", *f], b"", None, 1, "no user nobody@localhost"),
        (["deluser", "alice", "--file", str(tmp_path / "missing")], b"", None, 1, "no such file"),
    ]
    for argv, stdin, answers, status, words in cases:
        got, out, err, prompts = _users(*argv, stdin=stdin, answers=answers)
        assert (got, out) == (status, b""), (argv, err)
        assert words in err, (argv, err)
    # a user that exists or is missing is reported before any password is asked for
    assert _users("adduser", "alice", *f, answers=["x", "x"])[3] == []
    # nothing above changed the file
    from sosimple_proxy.security.users import read_users

    assert [e.user for e in read_users(path)] == ["alice"]


def test_a_broken_users_file_is_status_4_and_left_alone(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:localhost:not-a-hash\n")
    status, _, err, _ = _users("adduser", "bob", "--file", str(path), "--password-stdin", stdin=b"pw\n")
    assert status == 4 and f"{path}:1:" in err
    assert path.read_text() == "alice:localhost:not-a-hash\n"


def test_user_commands_from_the_console_script(tmp_path):
    """The real command: no terminal and no --password-stdin is one line; a pipe works."""
    path = str(tmp_path / "users")
    env = dict(os.environ, SOSIMPLE_USERS_FILE=path)
    run = lambda argv, data: subprocess.run(  # noqa: E731
        SOSIMPLE + argv, env=env, input=data, capture_output=True, text=True, timeout=60, start_new_session=True
    )
    result = run(["adduser", "alice", "--password-stdin"], "pw\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = run(["passwd", "alice"], "")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--password-stdin" in result.stderr
    result = run(["deluser", "bob"], "")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    help_ = run(["adduser", "--help"], "")
    assert help_.returncode == 0 and "localhost" in help_.stdout and "$SOSIMPLE_USERS_FILE" in help_.stdout
    assert os.stat(path).st_mode & 0o777 == 0o600


class GuardedAdminCliTests(unittest.TestCase):
    """``--user``, ``$SOSIMPLE_ADMIN_PASSWORD`` and ``--ca`` against an admin API behind credentials."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        from sosimple_proxy.security.limits import Limits
        from tests.web import guarded

        self.guarded = guarded
        self.files = guarded.write_files(self.mktemp_dir())
        self.limits = Limits(task.Clock())
        self.limits.ban("192.0.2.7", "flood")
        self.https = yield guarded.serve(self, self.files, tls=True, limits=self.limits)
        self.http = yield guarded.serve(self, self.files, tls=False, limits=self.limits)

    @defer.inlineCallbacks
    def sosimple(self, *argv: str, env: dict | None = None):
        out, err = io.BytesIO(), io.StringIO()

        def no_terminal(prompt: str) -> str:
            raise EOFError

        status = yield defer.Deferred.fromCoroutine(
            cli.run(reactor, list(argv), out, err, io.BytesIO(), env or {}, getpass=no_terminal)
        )
        return status, out.getvalue(), err.getvalue()

    def env(self, **extra: str) -> dict:
        g = self.guarded
        return {"SOSIMPLE_ADMIN_USER": g.USER, "SOSIMPLE_ADMIN_PASSWORD": g.PASSWORD, **extra}

    @defer.inlineCallbacks
    def test_https_with_ca_and_user_from_the_environment(self):
        env = self.env(SOSIMPLE_ADMIN=self.https, SOSIMPLE_CA=self.files["ca"])
        status, out, err = yield self.sosimple("ring", env=env)
        # past the guard, this test's API has no ring: its own 503
        self.assertEqual(status, 4, err)
        self.assertIn("503", err)
        self.assertIn("no overlay", err)

    @defer.inlineCallbacks
    def test_https_with_options_and_digest_over_plain_http(self):
        for url in (self.https, self.http):
            status, _, err = yield self.sosimple(
                "--admin", url, "--ca", self.files["ca"], "--user", self.guarded.USER, "get", "x",
                env={"SOSIMPLE_ADMIN_PASSWORD": self.guarded.PASSWORD},
            )
            # the guard let it through: the API's own 503 (no ring), not 401
            self.assertEqual(status, 4, err)
            self.assertIn("503", err)

    @defer.inlineCallbacks
    def test_no_or_wrong_credentials_are_401(self):
        status, _, err = yield self.sosimple("--admin", self.https, "--ca", self.files["ca"], "ring")
        self.assertEqual((status, err), (4, "sosimple: 401: authentication required\n"))
        for url in (self.https, self.http):
            env = self.env(SOSIMPLE_ADMIN_PASSWORD="wrong", SOSIMPLE_CA=self.files["ca"])
            status, _, err = yield self.sosimple("--admin", url, "ring", env=env)
            self.assertEqual((status, err), (4, "sosimple: 401: wrong credentials\n"), url)

    @defer.inlineCallbacks
    def test_a_user_without_a_password_or_terminal_is_usage(self):
        status, _, err = yield self.sosimple("--admin", self.https, "--user", "root", "ring")
        self.assertEqual(status, 2)
        self.assertIn("SOSIMPLE_ADMIN_PASSWORD", err)

    @defer.inlineCallbacks
    def test_an_unknown_ca_is_a_tls_failure_and_a_bad_ca_file_is_usage(self):
        from tests.certs import CA

        other = CA("someone else").write(self.mktemp_dir(), "other")
        status, _, err = yield self.sosimple("--admin", self.https, "--ca", str(other), "ring", env=self.env())
        self.assertEqual(status, 3, err)
        self.assertIn("TLS with", err)
        status, _, err = yield self.sosimple("--admin", self.https, "--ca", self.files["users_file"], "ring", env=self.env())
        self.assertEqual(status, 2, err)
        self.assertIn("no PEM certificate", err)

    def mktemp_dir(self):
        from pathlib import Path

        path = tempfile.mkdtemp(prefix="cli-admin-")
        self.addCleanup(shutil.rmtree, path, True)
        return Path(path)
