"""The admin API over HTTPS behind credentials: Digest (RFC 7616) and Basic over TLS."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from sosimple_proxy.cli import https_policy
from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.limits import Limits
from sosimple_proxy.security.users import set_password
from sosimple_proxy.web.guard import is_open
from tests.web.guarded import PASSWORD, REALM, USER, serve, write_files


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class GuardedAdminTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.files = write_files(self._dir())
        self.limits = Limits(task.Clock())
        self.url = yield serve(self, self.files, tls=True, limits=self.limits)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.https = treq.client.HTTPClient(Agent(reactor, contextFactory=https_policy(self.files["ca"]), pool=pool))

    def _dir(self) -> Path:
        path = tempfile.mkdtemp(prefix="admin-https-")
        self.addCleanup(shutil.rmtree, path, True)
        return Path(path)

    @defer.inlineCallbacks
    def call(self, method: str, path: str, authorization: str | None = None, url: str | None = None, client=None):
        headers = {"Authorization": [authorization]} if authorization else {}
        response = yield (client or self.https).request(method, (url or self.url) + path, headers=headers)
        body = yield response.content()
        return response.code, response.headers, body

    def challenges(self, headers) -> list[str]:
        return [v.decode() for v in headers.getRawHeaders(b"www-authenticate", [])]

    @defer.inlineCallbacks
    def test_without_credentials_401_with_digest_and_basic_challenges(self):
        code, headers, body = yield self.call("GET", "/limits")
        self.assertEqual(code, 401)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIn("error", json.loads(body))
        offered = self.challenges(headers)
        self.assertEqual([v.split()[0] for v in offered], ["Digest", "Digest", "Basic"])
        self.assertIn("algorithm=SHA-256", offered[0])
        self.assertIn("algorithm=MD5", offered[1])
        for value in offered:
            self.assertIn(f'realm="{REALM}"', value)

    @defer.inlineCallbacks
    def test_digest_sha256_gets_200(self):
        _, headers, _ = yield self.call("GET", "/limits")
        challenge = next(v for v in self.challenges(headers) if "SHA-256" in v)
        authorization = answer_challenge(challenge, USER, PASSWORD, "GET", "/limits")
        code, _, body = yield self.call("GET", "/limits", authorization)
        self.assertEqual((code, json.loads(body)["banned"]), (200, []))
        # the same nonce-count again is a replay: challenged afresh
        code, headers, _ = yield self.call("GET", "/limits", authorization)
        self.assertEqual(code, 401)
        # the digest covers the URI: credentials for /limits do not open /ring
        other = answer_challenge(challenge, USER, PASSWORD, "GET", "/limits", nc=2)
        code, _, _ = yield self.call("GET", "/ring", other)
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_basic_over_tls_gets_through(self):
        self.limits.ban("192.0.2.7", "flood")
        code, _, body = yield self.call("GET", "/limits", basic(USER, PASSWORD))
        self.assertEqual(code, 200)
        self.assertEqual([b["address"] for b in json.loads(body)["banned"]], ["192.0.2.7"])
        code, _, body = yield self.call("DELETE", "/limits/banned/192.0.2.7", basic(USER, PASSWORD))
        self.assertEqual((code, body), (204, b""))
        # past the guard: the API's own answers (no overlay here)
        code, _, _ = yield self.call("GET", "/ring", basic(USER, PASSWORD))
        self.assertEqual(code, 503)

    @defer.inlineCallbacks
    def test_wrong_password_and_unknown_user_look_the_same(self):
        answers = []
        for user, password in ((USER, "wrong"), ("nobody", PASSWORD)):
            code, headers, body = yield self.call("GET", "/limits", basic(user, password))
            answers.append((code, json.loads(body), [v.split()[0] for v in self.challenges(headers)]))
            _, headers, _ = yield self.call("GET", "/limits")
            challenge = self.challenges(headers)[0]
            code, headers, body = yield self.call("GET", "/limits", answer_challenge(challenge, user, password, "GET", "/limits"))
            answers.append((code, json.loads(body), [v.split()[0] for v in self.challenges(headers)]))
        self.assertEqual(answers[0][0], 401)
        self.assertEqual(len({json.dumps(a) for a in answers}), 1, answers)

    @defer.inlineCallbacks
    def test_open_paths_need_no_credentials(self):
        code, _, body = yield self.call("GET", "/health")
        self.assertEqual((code, json.loads(body)), (200, {"status": "ok"}))
        for path in ("/store/alice@example.com/notes", "/.well-known/sosimple-config"):
            code, _, _ = yield self.call("GET", path)
            self.assertNotEqual(code, 401, path)
        # other spellings of guarded paths stay guarded
        for path in ("/health/../limits", "/%6cimits", "/health/x", "/.well-known/other"):
            code, _, _ = yield self.call("GET", path)
            self.assertEqual(code, 401, path)

    @defer.inlineCallbacks
    def test_a_changed_password_is_used_without_a_restart(self):
        set_password(self.files["users_file"], USER, REALM, "new one")
        code, _, _ = yield self.call("GET", "/limits", basic(USER, PASSWORD))
        self.assertEqual(code, 401)
        code, _, _ = yield self.call("GET", "/limits", basic(USER, "new one"))
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_plain_http_offers_digest_only_and_refuses_basic(self):
        url = yield serve(self, self.files, tls=False)
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        code, headers, _ = yield self.call("GET", "/limits", basic(USER, PASSWORD), url=url, client=http)
        self.assertEqual(code, 401)
        offered = self.challenges(headers)
        self.assertEqual([v.split()[0] for v in offered], ["Digest", "Digest"])
        authorization = answer_challenge(offered[0], USER, PASSWORD, "GET", "/limits")
        code, _, _ = yield self.call("GET", "/limits", authorization, url=url, client=http)
        self.assertEqual(code, 200)


class OpenPathTests(unittest.TestCase):
    def test_is_open(self):
        self.assertTrue(is_open([b"health"]))
        self.assertTrue(is_open([b"health", b""]))
        self.assertTrue(is_open([b"store", b"alice@example.com", b"x"]))
        self.assertTrue(is_open([b".well-known", b"sosimple-config"]))
        for segments in ([], [b""], [b"ring"], [b"health", b"..", b"ring"], [b"limits"], [b"stores"]):
            self.assertFalse(is_open(segments), segments)
