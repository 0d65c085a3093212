"""``GET /limits`` and ``DELETE /limits/banned/{address}`` over real loopback
HTTP, with a real ``Limits`` on a ``task.Clock``."""

from __future__ import annotations

import json

import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface.verify import verifyObject

from sosimple_proxy.security.limits import ILimitsView, Limits, LimitsConfig
from sosimple_proxy.web.admin import admin_site


class LimitsApiTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.clock = task.Clock()
        self.limits = Limits(self.clock, LimitsConfig(ban_seconds=300))
        self.addCleanup(self.limits.stop)
        self.url = self.serve(self.limits)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def serve(self, limits) -> str:
        port = reactor.listenTCP(0, admin_site(None, {}, limits), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def call(self, method: str, path: str, url: str | None = None):
        response = yield self.http.request(method, (url or self.url) + path)
        body = yield response.content()
        return response.code, response.headers, body

    def test_limits_provides_the_view(self):
        self.assertTrue(verifyObject(ILimitsView, self.limits))

    @defer.inlineCallbacks
    def test_get_limits_lists_bans_with_reason_and_remaining_seconds(self):
        code, headers, body = yield self.call("GET", "/limits")
        self.assertEqual((code, json.loads(body)), (200, {"banned": [], "dropped": 0, "refused_connections": 0}))
        self.limits.ban("192.0.2.7", "over 50 requests/s")
        self.clock.advance(100.5)
        self.limits.ban("2001:db8::1", "10 wrong credentials in 60 s")
        code, headers, body = yield self.call("GET", "/limits")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(
            json.loads(body),
            {
                "banned": [
                    {"address": "192.0.2.7", "reason": "over 50 requests/s", "remaining": 200},
                    {"address": "2001:db8::1", "reason": "10 wrong credentials in 60 s", "remaining": 300},
                ],
                "dropped": 0,
                "refused_connections": 0,
            },
        )
        self.clock.advance(200)
        code, _, body = yield self.call("GET", "/limits/")
        self.assertEqual([b["address"] for b in json.loads(body)["banned"]], ["2001:db8::1"])

    @defer.inlineCallbacks
    def test_delete_lifts_a_ban_then_404(self):
        self.limits.ban("192.0.2.7", "flood")
        code, _, body = yield self.call("DELETE", "/limits/banned/192.0.2.7")
        self.assertEqual((code, body), (204, b""))
        self.assertFalse(self.limits.is_banned("192.0.2.7"))
        code, headers, body = yield self.call("DELETE", "/limits/banned/192.0.2.7")
        self.assertEqual(code, 404)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIn("192.0.2.7", json.loads(body)["error"])

    @defer.inlineCallbacks
    def test_ipv6_addresses_percent_encoded_or_not_and_in_any_spelling(self):
        for spelling in ("2001:db8::1", "2001%3Adb8%3A%3A1", "%5B2001:db8:0:0::1%5D"):
            self.limits.ban("2001:db8::1", "flood")
            code, _, body = yield self.call("DELETE", f"/limits/banned/{spelling}")
            self.assertEqual(code, 204, (spelling, body))
            self.assertFalse(self.limits.is_banned("2001:db8::1"))

    @defer.inlineCallbacks
    def test_wrong_methods_and_paths(self):
        code, headers, body = yield self.call("DELETE", "/limits")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"GET"]))
        self.assertIn("error", json.loads(body))
        code, headers, _ = yield self.call("GET", "/limits/banned/192.0.2.7")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"DELETE"]))
        for path in ("/limits/banned", "/limits/banned/", "/limits/other"):
            code, _, body = yield self.call("DELETE", path)
            self.assertEqual(code, 404, path)
            self.assertIn("error", json.loads(body))

    @defer.inlineCallbacks
    def test_without_a_limiter_nobody_is_banned(self):
        url = self.serve(None)
        code, _, body = yield self.call("GET", "/limits", url)
        self.assertEqual((code, json.loads(body)), (200, {"banned": []}))
        code, _, body = yield self.call("DELETE", "/limits/banned/192.0.2.7", url)
        self.assertEqual(code, 404)
        self.assertIn("not banned", json.loads(body)["error"])
