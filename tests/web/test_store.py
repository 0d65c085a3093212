"""The users' store (``/store``) over real loopback HTTP, on a real in-process ring node.

The site is the admin listener's, guarded by an admin users file, with the
store mounted on it: the store must take its users' credentials (``[auth]``
users file, realm example.com) and the AoR's bound key, and nothing of the
admin's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import treq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from sosimple_proxy.overlay import userdata
from sosimple_proxy.overlay.service import OverlayService
from sosimple_proxy.security import usersig
from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.testing.polling import until, until_quiet
from sosimple_proxy.testing.ring import overlay_settings
from sosimple_proxy.web.admin import admin_credentials, admin_site
from sosimple_proxy.web.store import store_api, store_credentials, store_service

REALM = "example.com"
USERS = {"alice": "alice's secret", "bob": "bob's secret"}
ADMIN, ADMIN_PASSWORD = "root", "correct horse"
ALICE = "alice@example.com"
LIMITS = {"max_value": 1000, "max_names": 3}


def write_users(directory: str) -> tuple[str, str]:
    users = os.path.join(directory, "users")
    with open(users, "w") as f:
        f.writelines(UserEntry.from_password(u, REALM, p).line() + "\n" for u, p in USERS.items())
    admins = os.path.join(directory, "admin-users")
    with open(admins, "w") as f:
        f.write(UserEntry.from_password(ADMIN, "sosimple-admin", ADMIN_PASSWORD).line() + "\n")
    return users, admins


class StoreTestBase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="store-test-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        self.users_file, self.admin_users = write_users(self.base)
        self.ring = OverlayService(reactor, overlay_settings(os.path.join(self.base, "n0")))
        self.ring.startService()
        self.addCleanup(self._stop)
        self.node = yield self.ring.ready
        self.store = store_api(
            reactor, LIMITS, self.ring, store_credentials(reactor, self.users_file, REALM), ["example.com"]
        )
        admin = {"users_file": self.admin_users, "realm": "sosimple-admin"}
        site = admin_site(self.ring, admin, credentials=admin_credentials(reactor, admin), store=self.store)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def _stop(self):
        if self.ring.running:
            yield self.ring.stopService()
        yield until_quiet(1.0)

    @defer.inlineCallbacks
    def call(self, method, path, data=None, headers=None):
        """(status, headers, body bytes)."""
        response = yield self.http.request(method, self.url + path, data=data, headers=headers)
        body = yield response.content()
        return response.code, response.headers, body

    @defer.inlineCallbacks
    def as_user(self, user, password, method, path, data=None):
        """A request answered with digest credentials after the store's 401: (status, headers, body)."""
        code, headers, body = yield self.call(method, path, data)
        self.assertEqual(code, 401, body)
        challenge = next(v.decode() for v in headers.getRawHeaders(b"www-authenticate") if v.startswith(b"Digest"))
        authorization = answer_challenge(challenge, user, password, method, path)
        result = yield self.call(method, path, data, {"Authorization": [authorization]})
        return result

    def alice(self, method, path, data=None):
        return self.as_user("alice", USERS["alice"], method, path, data)

    def signed(self, key, method, path, data=b"", now=None):
        header = usersig.sign(key, method, path, data, now)
        return self.call(method, path, data or None, {"Authorization": [header]})

    def error(self, body):
        return json.loads(body)["error"]


class DigestTests(StoreTestBase):
    @defer.inlineCallbacks
    def test_the_users_own_credentials_put_get_list_delete(self):
        code, _, body = yield self.alice("PUT", f"/store/{ALICE}/friends", b"bob\x00carol")
        self.assertEqual(code, 201, body)
        self.assertEqual(json.loads(body), {"aor": ALICE, "name": "friends", "bytes": 9})
        code, headers, body = yield self.alice("GET", f"/store/{ALICE}/friends")
        self.assertEqual((code, body), (200, b"bob\x00carol"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/octet-stream"])
        code, _, body = yield self.alice("PUT", f"/store/{ALICE}/friends", b"v2")
        self.assertEqual(code, 200, body)
        code, _, body = yield self.alice("PUT", "/store/sip:alice%40EXAMPLE.com/key%2Fpub", b"k")
        self.assertEqual(code, 201, body)
        code, _, body = yield self.alice("GET", f"/store/{ALICE}")
        self.assertEqual((code, json.loads(body)), (200, {"aor": ALICE, "names": ["friends", "key/pub"]}))
        # a ring record of the userdata kind under the AoR's key, like a registration
        records = yield self.node.get(self.ring.keys.key(ALICE), userdata.KIND)
        self.assertEqual({r.entry: r.value for r in records}, {"friends": b"v2", "key/pub": b"k"})
        code, _, body = yield self.alice("DELETE", f"/store/{ALICE}/friends")
        self.assertEqual((code, body), (204, b""))
        code, headers, body = yield self.alice("GET", f"/store/{ALICE}/friends")
        self.assertEqual(code, 404)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIn("friends", self.error(body))
        code, _, body = yield self.alice("DELETE", f"/store/{ALICE}/friends")
        self.assertEqual(code, 404)

    @defer.inlineCallbacks
    def test_no_credentials_is_401_with_challenges(self):
        for method, path in (("GET", f"/store/{ALICE}"), ("GET", f"/store/{ALICE}/x"), ("PUT", f"/store/{ALICE}/x")):
            code, headers, body = yield self.call(method, path, b"v" if method == "PUT" else None)
            self.assertEqual(code, 401)
            self.assertEqual(self.error(body), "authentication required")
            challenges = headers.getRawHeaders(b"www-authenticate")
            self.assertTrue(any(c.startswith(b"Digest") and b'realm="example.com"' in c for c in challenges), challenges)
            self.assertIn(b"Sosimple-Sig", challenges)
        records = yield self.node.get(self.ring.keys.key(ALICE), userdata.KIND)
        self.assertEqual(records, [])

    @defer.inlineCallbacks
    def test_another_users_credentials_are_403(self):
        yield self.alice("PUT", f"/store/{ALICE}/x", b"mine")
        for method in ("GET", "PUT", "DELETE"):
            code, _, body = yield self.as_user("bob", USERS["bob"], method, f"/store/{ALICE}/x", b"theirs" if method == "PUT" else None)
            self.assertEqual(code, 403, body)
            self.assertIn("bob may not use the store of alice@example.com", self.error(body))
        code, _, body = yield self.as_user("bob", USERS["bob"], "GET", f"/store/{ALICE}")
        self.assertEqual(code, 403)
        code, _, body = yield self.alice("GET", f"/store/{ALICE}/x")
        self.assertEqual(body, b"mine")
        # alice of a domain that is not ours is not our alice
        code, _, body = yield self.alice("GET", "/store/alice@other.test")
        self.assertEqual(code, 403)

    @defer.inlineCallbacks
    def test_a_wrong_password_is_401(self):
        code, _, body = yield self.as_user("alice", "guess", "GET", f"/store/{ALICE}")
        self.assertEqual((code, self.error(body)), (401, "wrong credentials"))

    @defer.inlineCallbacks
    def test_the_admins_credentials_grant_nothing(self):
        # they do open the admin API on this very listener...
        code, headers, _ = yield self.call("GET", "/ring")
        self.assertEqual(code, 401)
        admin_challenge = headers.getRawHeaders(b"www-authenticate")[0].decode()
        authorization = answer_challenge(admin_challenge, ADMIN, ADMIN_PASSWORD, "GET", "/ring")
        code, _, _ = yield self.call("GET", "/ring", headers={"Authorization": [authorization]})
        self.assertEqual(code, 200)
        # ...but not the store: credentials for the admin realm are none for the users'
        for method in ("GET", "PUT"):
            code, headers, _ = yield self.call(method, f"/store/{ALICE}/x")
            challenge = next(v.decode() for v in headers.getRawHeaders(b"www-authenticate") if v.startswith(b"Digest"))
            as_admin = answer_challenge(admin_challenge, ADMIN, ADMIN_PASSWORD, method, f"/store/{ALICE}/x")
            code, _, body = yield self.call(method, f"/store/{ALICE}/x", b"v", {"Authorization": [as_admin]})
            self.assertEqual(code, 401, body)
            # the admin's name and password in the users' realm: no such user
            in_realm = answer_challenge(challenge, ADMIN, ADMIN_PASSWORD, method, f"/store/{ALICE}/x")
            code, _, body = yield self.call(method, f"/store/{ALICE}/x", b"v", {"Authorization": [in_realm]})
            self.assertEqual(code, 401, body)
        records = yield self.node.get(self.ring.keys.key(ALICE), userdata.KIND)
        self.assertEqual(records, [])


class SignatureTests(StoreTestBase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.key = Ed25519PrivateKey.generate()
        public = self.key.public_key().public_bytes_raw()
        # alice's key record in the ring, under her AoR's key
        yield self.node.put_value(self.ring.keys.key(ALICE), userdata.KEY_KIND, public.hex().encode(), 600)

    @defer.inlineCallbacks
    def test_a_valid_signature_reads_and_writes(self):
        code, _, body = yield self.signed(self.key, "PUT", f"/store/{ALICE}/config", b"<xml/>")
        self.assertEqual(code, 201, body)
        code, _, body = yield self.signed(self.key, "GET", f"/store/{ALICE}/config")
        self.assertEqual((code, body), (200, b"<xml/>"))
        # the path is signed percent-decoded: %40 and @ are one path
        header = usersig.sign(self.key, "GET", f"/store/{ALICE}", b"")
        code, _, body = yield self.call("GET", "/store/alice%40example.com", headers={"Authorization": [header]})
        self.assertEqual((code, json.loads(body)["names"]), (200, ["config"]))
        code, _, _ = yield self.signed(self.key, "DELETE", f"/store/{ALICE}/config")
        self.assertEqual(code, 204)

    @defer.inlineCallbacks
    def test_a_stale_timestamp_is_401(self):
        for skew in (-301, 301):
            code, headers, body = yield self.signed(self.key, "PUT", f"/store/{ALICE}/c", b"x", time.time() + skew)
            self.assertEqual(code, 401, body)
            self.assertIn("from the server's clock", self.error(body))
            self.assertIn(b"Sosimple-Sig", headers.getRawHeaders(b"www-authenticate"))
        code, _, body = yield self.signed(self.key, "PUT", f"/store/{ALICE}/c", b"x", time.time() - 250)
        self.assertEqual(code, 201, body)

    @defer.inlineCallbacks
    def test_a_bad_signature_is_401(self):
        # signed for another body, another path, another method
        header = usersig.sign(self.key, "PUT", f"/store/{ALICE}/c", b"one")
        code, _, body = yield self.call("PUT", f"/store/{ALICE}/c", b"two", {"Authorization": [header]})
        self.assertEqual(code, 401, body)
        self.assertIn("does not verify", self.error(body))
        header = usersig.sign(self.key, "PUT", f"/store/{ALICE}/d", b"one")
        code, _, _ = yield self.call("PUT", f"/store/{ALICE}/c", b"one", {"Authorization": [header]})
        self.assertEqual(code, 401)
        header = usersig.sign(self.key, "GET", f"/store/{ALICE}/c", b"")
        code, _, _ = yield self.call("DELETE", f"/store/{ALICE}/c", headers={"Authorization": [header]})
        self.assertEqual(code, 401)
        code, _, body = yield self.call("GET", f"/store/{ALICE}", headers={"Authorization": ["Sosimple-Sig key=zz, ts=1, sig=00"]})
        self.assertEqual(code, 401)
        records = yield self.node.get(self.ring.keys.key(ALICE), userdata.KIND)
        self.assertEqual(records, [])

    @defer.inlineCallbacks
    def test_a_key_not_bound_to_the_aor_is_403(self):
        other = Ed25519PrivateKey.generate()
        code, _, body = yield self.signed(other, "PUT", f"/store/{ALICE}/c", b"x")
        self.assertEqual(code, 403, body)
        self.assertIn("not the one bound to alice@example.com", self.error(body))
        # alice's own key on bob's AoR, which has none bound
        code, _, body = yield self.signed(self.key, "GET", "/store/bob@example.com")
        self.assertEqual(code, 403)
        self.assertIn("no key is bound to bob@example.com", self.error(body))

    @defer.inlineCallbacks
    def test_a_replayed_signature_is_401(self):
        header = usersig.sign(self.key, "PUT", f"/store/{ALICE}/c", b"x")
        code, _, _ = yield self.call("PUT", f"/store/{ALICE}/c", b"x", {"Authorization": [header]})
        self.assertEqual(code, 201)
        code, _, body = yield self.call("PUT", f"/store/{ALICE}/c", b"x", {"Authorization": [header]})
        self.assertEqual(code, 401)
        self.assertIn("used before", self.error(body))


class LimitTests(StoreTestBase):
    @defer.inlineCallbacks
    def test_a_value_over_max_value_is_413(self):
        code, headers, body = yield self.alice("PUT", f"/store/{ALICE}/big", b"x" * 1000)
        self.assertEqual(code, 201, body)
        code, headers, body = yield self.call("PUT", f"/store/{ALICE}/big", b"y" * 1001)
        self.assertEqual(code, 413)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIn("limit of 1000 bytes", self.error(body))
        code, _, body = yield self.alice("GET", f"/store/{ALICE}/big")
        self.assertEqual(body, b"x" * 1000)

    @defer.inlineCallbacks
    def test_max_names_per_aor(self):
        for name in ("a", "b", "c"):
            code, _, body = yield self.alice("PUT", f"/store/{ALICE}/{name}", b"v")
            self.assertEqual(code, 201, body)
        code, _, body = yield self.alice("PUT", f"/store/{ALICE}/d", b"v")
        self.assertEqual(code, 409)
        self.assertIn("already holds 3 names", self.error(body))
        code, _, body = yield self.alice("PUT", f"/store/{ALICE}/c", b"replaced")
        self.assertEqual(code, 200, body)
        yield self.alice("DELETE", f"/store/{ALICE}/a")
        code, _, body = yield self.alice("PUT", f"/store/{ALICE}/d", b"v")
        self.assertEqual(code, 201, body)
        code, _, body = yield self.alice("GET", f"/store/{ALICE}")
        self.assertEqual(json.loads(body)["names"], ["b", "c", "d"])

    @defer.inlineCallbacks
    def test_bad_names_and_paths_are_json_errors(self):
        code, _, body = yield self.call("PUT", f"/store/{ALICE}/" + "n" * 257, b"v")
        self.assertEqual(code, 400)
        self.assertIn("over the limit of 256", self.error(body))
        code, _, body = yield self.call("GET", f"/store/{ALICE}/caf%FF")
        self.assertEqual((code, self.error(body)), (400, "the name is not UTF-8"))
        code, _, body = yield self.call("GET", "/store/alice")
        self.assertEqual(code, 400)
        self.assertIn("not an address of record", self.error(body))
        for path in ("/store", "/store/"):
            code, _, body = yield self.call("GET", path)
            self.assertEqual(code, 404)
            self.assertIn("no such resource", self.error(body))
        code, headers, body = yield self.call("PUT", f"/store/{ALICE}", b"v")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"GET"]))
        self.assertIn("PUT is not allowed", self.error(body))
        code, headers, body = yield self.call("POST", f"/store/{ALICE}/x", b"v")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"DELETE, GET, PUT"]))

    @defer.inlineCallbacks
    def test_a_node_out_of_the_ring_is_503(self):
        yield self.ring.stopService()
        code, headers, body = yield self.alice("GET", f"/store/{ALICE}")
        self.assertEqual(code, 503)
        self.assertIn("the ring did not answer", self.error(body))


class OwnListenerTests(StoreTestBase):
    """``[store] listen`` with a certificate: the store alone, over HTTPS."""

    @defer.inlineCallbacks
    def test_https_listener_serves_only_the_store(self):
        import ssl

        from tests.web.guarded import write_files

        files = write_files(self.base)
        settings = {"listen": "tcp:0:interface=127.0.0.1", "certificate": files["certificate"], "key": files["key"]}
        svc = store_service(reactor, settings, self.store)
        self.assertEqual(svc.name, "store")
        port = yield svc.endpoint.listen(svc.factory)
        self.addCleanup(port.stopListening)
        base = f"https://127.0.0.1:{port.getHost().port}"
        context = ssl.create_default_context(cafile=files["ca"])

        def fetch(method, path, data=None, authorization=None):
            import urllib.error
            import urllib.request

            headers = {"Authorization": authorization} if authorization else {}
            request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as r:
                    return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers, e.read()

        from twisted.internet import threads

        code, headers, body = yield threads.deferToThread(fetch, "PUT", f"/store/{ALICE}/tls", b"secret")
        self.assertEqual(code, 401, body)
        challenge = next(v for v in headers.get_all("www-authenticate") or [] if v.startswith("Digest"))
        authorization = answer_challenge(challenge, "alice", USERS["alice"], "PUT", f"/store/{ALICE}/tls")
        code, _, body = yield threads.deferToThread(fetch, "PUT", f"/store/{ALICE}/tls", b"secret", authorization)
        self.assertEqual(code, 201, body)
        code, _, body = yield threads.deferToThread(fetch, "GET", "/ring")
        self.assertEqual(code, 404)
        self.assertIn("no such resource", json.loads(body)["error"])
        records = yield self.node.get(self.ring.keys.key(ALICE), userdata.KIND)
        self.assertEqual([r.value for r in records], [b"secret"])
