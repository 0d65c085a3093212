"""``sosimple store ...`` against a real store on loopback (an in-process ring node)."""

from __future__ import annotations

import io
import json
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor

from sosimple_proxy import cli
from sosimple_proxy.overlay import userdata
from sosimple_proxy.testing import free_port
from tests.web.test_store import ALICE, USERS, StoreTestBase


def no_terminal(prompt: str) -> str:
    raise EOFError


class StoreCliTests(StoreTestBase):
    @defer.inlineCallbacks
    def sosimple(self, *argv: str, stdin: bytes = b"", env: dict | None = None, password: str | None = USERS["alice"]):
        """(status, stdout bytes, stderr text) of one command, run in-process."""
        out, err = io.BytesIO(), io.StringIO()
        environ = {"SOSIMPLE_STORE": self.url, **({"SOSIMPLE_PASSWORD": password} if password is not None else {})}
        environ.update(env or {})
        status = yield defer.Deferred.fromCoroutine(
            cli.run(reactor, ["store", *argv], out, err, io.BytesIO(stdin), environ, getpass=no_terminal)
        )
        if status:
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_put_get_list_delete_as_the_user(self):
        path = os.path.join(self.base, "value")
        with open(path, "wb") as f:
            f.write(b"from a file\x00")
        self.assertEqual((yield self.sosimple("put", ALICE, "friends", path)), (0, b"", ""))
        status, out, err = yield self.sosimple("get", f"sip:{ALICE}", "friends")
        self.assertEqual((status, out), (0, b"from a file\x00"), err)
        # names that need quoting survive the trip (and the digest uri matches)
        odd = "a b/c%d?é"
        self.assertEqual((yield self.sosimple("put", ALICE, odd, stdin=b"stdin"))[0], 0)
        status, out, _ = yield self.sosimple("get", ALICE, odd)
        self.assertEqual((status, out), (0, b"stdin"))
        status, out, _ = yield self.sosimple("list", ALICE)
        self.assertEqual((status, json.loads(out)), (0, {"aor": ALICE, "names": sorted(["friends", odd])}))
        self.assertEqual((yield self.sosimple("delete", ALICE, "friends"))[0], 0)
        status, out, err = yield self.sosimple("get", ALICE, "friends")
        self.assertEqual((status, out), (1, b""))
        self.assertIn("no value named 'friends'", err)
        status, _, err = yield self.sosimple("delete", ALICE, "friends")
        self.assertEqual(status, 1)

    @defer.inlineCallbacks
    def test_refusals_exit_4_and_usage_2(self):
        status, _, err = yield self.sosimple("put", ALICE, "x", stdin=b"v", password="wrong")
        self.assertEqual((status, err), (4, "sosimple: 401: wrong credentials\n"))
        status, _, err = yield self.sosimple("get", "bob@example.com", "x")
        self.assertEqual((status, err), (4, "sosimple: 401: wrong credentials\n"))
        status, _, err = yield self.sosimple("get", "--login", "alice", "bob@example.com", "x")
        self.assertEqual(status, 4)
        self.assertIn("403: alice may not use the store of bob@example.com", err)
        status, _, err = yield self.sosimple("list", ALICE, password=None)
        self.assertEqual(status, 2)
        self.assertIn("SOSIMPLE_PASSWORD", err)
        status, _, err = yield self.sosimple("list", "alice")
        self.assertEqual(status, 2)
        self.assertIn("not an address of record", err)
        status, _, err = yield self.sosimple("put", ALICE, "big", stdin=b"x" * 1001)
        self.assertEqual(status, 4)
        self.assertIn("413", err)
        status, _, err = yield self.sosimple("list", ALICE, env={"SOSIMPLE_STORE": f"http://127.0.0.1:{free_port('tcp')}"})
        self.assertEqual(status, 3, err)
        records = yield self.node.get(self.ring.keys.key(ALICE), userdata.KIND)
        self.assertEqual(records, [])

    @defer.inlineCallbacks
    def test_signed_with_the_aors_key(self):
        key = Ed25519PrivateKey.generate()
        path = os.path.join(self.base, "alice.pem")
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        status, _, err = yield self.sosimple("put", "--key", path, ALICE, "k/v", stdin=b"signed", password=None)
        self.assertEqual(status, 4)
        self.assertIn("403: no key is bound to alice@example.com", err)
        public = key.public_key().public_bytes_raw()
        yield self.node.put_value(self.ring.keys.key(ALICE), userdata.KEY_KIND, public, 600, name=ALICE)
        status, _, err = yield self.sosimple("put", "--key", path, ALICE, "k/v", stdin=b"signed", password=None)
        self.assertEqual(status, 0, err)
        status, out, _ = yield self.sosimple("get", "--key", path, ALICE, "k/v", password=None)
        self.assertEqual((status, out), (0, b"signed"))
        status, _, err = yield self.sosimple("get", "--key", os.path.join(self.base, "users"), ALICE, "k/v")
        self.assertEqual(status, 2)
        self.assertIn("not an unencrypted PEM private key", err)
