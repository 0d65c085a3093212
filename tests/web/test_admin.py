"""The admin HTTP API over real loopback HTTP, against real in-process ring nodes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile

import treq
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.node import NotRunning
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.service import OverlayService
from sosimple_proxy.testing.ring import overlay_settings, ring_settled
from sosimple_proxy.testing.polling import until, until_quiet
from sosimple_proxy.web.admin import admin_site


class AdminTestBase(unittest.TestCase):
    timeout = 60
    LIMITS = {"max_name": 64, "max_value": 200_000}

    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="admin-test-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    @defer.inlineCallbacks
    def start_ring(self, n: int):
        """``n`` overlay nodes, each with its own admin API; waits for the ring to settle."""
        self.services, self.urls = [], []
        first_address = None
        for i in range(n):
            boot = [tuple(first_address.rsplit(":", 1))] if first_address else []
            boot = [(h, int(p)) for h, p in boot]
            svc = OverlayService(reactor, overlay_settings(os.path.join(self.base, f"n{i}"), boot))
            svc.startService()
            self.addCleanup(self._stop, svc)
            node = yield svc.ready
            first_address = first_address or node.address
            self.services.append(svc)
            self.urls.append(self.serve(svc))
        yield until(lambda: ring_settled([s.node for s in self.services]), 15, what="the ring to settle")

    def serve(self, ring) -> str:
        port = reactor.listenTCP(0, admin_site(ring, self.LIMITS), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def _stop(self, svc):
        if svc.running:
            yield svc.stopService()
        yield until_quiet(1.0)  # its RPCs in flight answer or time out

    @defer.inlineCallbacks
    def call(self, method: str, url: str, data: bytes | None = None):
        """(status, headers, body bytes)."""
        response = yield self.http.request(method, url, data=data)
        body = yield response.content()
        return response.code, response.headers, body

    @defer.inlineCallbacks
    def json_call(self, method: str, url: str, data: bytes | None = None):
        code, headers, body = yield self.call(method, url, data)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"], body)
        return code, json.loads(body)


class OneNodeTests(AdminTestBase):
    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        yield self.start_ring(1)
        self.url = self.urls[0]
        self.node = self.services[0].node

    @defer.inlineCallbacks
    def test_health_and_ring_view(self):
        code, body = yield self.json_call("GET", self.url + "/health")
        self.assertEqual((code, body), (200, {"status": "ok"}))
        code, view = yield self.json_call("GET", self.url + "/ring")
        self.assertEqual(code, 200)
        self.assertEqual(
            set(view),
            {"id", "address", "predecessor", "synced", "successors", "fingers", "records", "primary", "replica"},
        )
        self.assertIs(view["synced"], True)  # a one-node ring vouches for the whole ring
        self.assertEqual(view["id"], ids.format_id(self.node.id))
        self.assertEqual(view["address"], self.node.address)
        self.assertEqual((view["records"], view["primary"], view["replica"]), (0, 0, 0))

    @defer.inlineCallbacks
    def test_put_get_delete_round_trip(self):
        code, body = yield self.json_call("PUT", self.url + "/records/greeting?ttl=60", b"hello\x00world")
        self.assertEqual(code, 201)
        self.assertEqual(body["key"], ids.format_id(ids.flat_key("greeting")))
        self.assertEqual(body["ttl"], 60)
        code, headers, value = yield self.call("GET", self.url + "/records/greeting")
        self.assertEqual((code, value), (200, b"hello\x00world"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/octet-stream"])
        stored = self.node.store.get(ids.flat_key("greeting"))
        self.assertEqual(len(stored), 1)
        self.assertLess(abs(stored[0].expires - reactor.seconds() - 60), 5)
        _, view = yield self.json_call("GET", self.url + "/ring")
        self.assertEqual(view["records"], 1)
        # a second PUT replaces the value
        yield self.call("PUT", self.url + "/records/greeting", b"v2")
        code, _, value = yield self.call("GET", self.url + "/records/greeting")
        self.assertEqual(value, b"v2")
        self.assertLess(abs(self.node.store.get(ids.flat_key("greeting"))[0].expires - reactor.seconds() - 3600), 5)
        code, _, body = yield self.call("DELETE", self.url + "/records/greeting")
        self.assertEqual((code, body), (204, b""))
        code, body = yield self.json_call("GET", self.url + "/records/greeting")
        self.assertEqual(code, 404)
        self.assertIn("greeting", body["error"])
        code, body = yield self.json_call("DELETE", self.url + "/records/greeting")
        self.assertEqual(code, 404)
        self.assertIn("error", body)
        code, body = yield self.json_call("GET", self.url + "/records/greeting?local=1")
        self.assertEqual(code, 404)
        self.assertIn("holds no copy", body["error"])

    @defer.inlineCallbacks
    def test_other_kinds_under_the_key_are_left_alone(self):
        key = ids.flat_key("alice@example.com")
        # a registration names its AoR (the node signs it, and claims example.com first)
        reg = Record(key, "registration", "binding-1", "t", b"contact", reactor.seconds() + 600, 1, name="alice@example.com")
        yield self.node.put(reg)
        code, _, _ = yield self.call("PUT", self.url + "/records/alice@example.com", b"blob")
        self.assertEqual(code, 201)
        code, _, value = yield self.call("GET", self.url + "/records/alice@example.com")
        self.assertEqual(value, b"blob")
        code, _, _ = yield self.call("DELETE", self.url + "/records/alice@example.com")
        self.assertEqual(code, 204)
        left = yield self.node.get(key)
        self.assertEqual([(r.kind, r.entry, r.value) for r in left], [("registration", "binding-1", b"contact")])

    @defer.inlineCallbacks
    def test_names_with_slashes_and_utf8(self):
        yield self.call("PUT", self.url + "/records/a/b", b"slash")
        code, _, value = yield self.call("GET", self.url + "/records/a%2Fb")
        self.assertEqual((code, value), (200, b"slash"))
        yield self.call("PUT", self.url + "/records/caf%C3%A9", b"utf8")
        self.assertEqual(self.node.store.get(ids.flat_key("café"))[0].value, b"utf8")
        code, body = yield self.json_call("GET", self.url + "/records/caf%FF")
        self.assertEqual(code, 400)
        self.assertIn("UTF-8", body["error"])

    @defer.inlineCallbacks
    def test_locate_names_the_key_and_holder(self):
        code, body = yield self.json_call("GET", self.url + "/locate/alice@example.com")
        self.assertEqual(code, 200)
        self.assertEqual(body["key"], ids.format_id(ids.flat_key("alice@example.com")))
        self.assertEqual(body["responsible"], {"id": ids.format_id(self.node.id), "address": self.node.address})
        self.assertEqual(body["replicas"], [])

    @defer.inlineCallbacks
    def test_limits_give_400_and_413(self):
        code, body = yield self.json_call("PUT", self.url + "/records/" + "n" * 65, b"x")
        self.assertEqual(code, 400)
        self.assertIn("over the limit of 64", body["error"])
        code, body = yield self.json_call("GET", self.url + "/records/" + "n" * 65)
        self.assertEqual(code, 400)
        code, body = yield self.json_call("PUT", self.url + "/records/big", b"x" * 200_001)
        self.assertEqual(code, 413)
        self.assertIn("200000", body["error"])
        code, _, _ = yield self.call("PUT", self.url + "/records/big", b"x" * 200_000)
        self.assertEqual(code, 201)
        self.assertEqual(len(self.node.store.get(ids.flat_key("big"))[0].value), 200_000)

    @defer.inlineCallbacks
    def test_chunked_body_over_the_limit_is_cut_off(self):
        port = int(self.url.rsplit(":", 1)[1])

        def send() -> bytes:
            chunk = b"x" * 50_000
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"PUT /records/chunky HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                for _ in range(5):
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                s.sendall(b"0\r\n\r\n")
                data = b""
                while part := s.recv(65536):
                    data += part
                return data

        answer = yield threads.deferToThread(send)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:200])
        self.assertIn(b'{"error":', answer)
        self.assertEqual(self.node.store.get(ids.flat_key("chunky")), [])

    @defer.inlineCallbacks
    def test_bad_ttl_is_400(self):
        for ttl in ("soon", "0", "-5", "nan", "inf", "1e12"):
            code, body = yield self.json_call("PUT", self.url + f"/records/t?ttl={ttl}", b"x")
            self.assertEqual(code, 400, ttl)
            self.assertIn("ttl", body["error"])

    @defer.inlineCallbacks
    def test_unknown_paths_methods_and_missing_names(self):
        for path in ("/nothing", "/ring/extra", "/health/x"):  # "/" redirects to /ui/ (test_ui.py)
            code, body = yield self.json_call("GET", self.url + path)
            self.assertEqual(code, 404, path)
            self.assertIn("no such resource", body["error"])
        code, headers, raw = yield self.call("POST", self.url + "/records/x", b"x")
        self.assertEqual(code, 405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"DELETE, GET, PUT"])
        self.assertIn("POST", json.loads(raw)["error"])
        code, body = yield self.json_call("PUT", self.url + "/ring", b"x")
        self.assertEqual(code, 405)
        for path in ("/records/", "/records", "/locate/"):
            code, body = yield self.json_call("GET", self.url + path)
            self.assertEqual(code, 400, path)
            self.assertIn("name is needed", body["error"])
        code, body = yield self.json_call("GET", self.url + "/registrations/alice@example.com")
        self.assertEqual(code, 404)
        self.assertIn("no binding for alice@example.com", body["error"])

    @defer.inlineCallbacks
    def test_registrations_show_what_the_ring_holds_for_an_aor(self):
        from sosimple_proxy.location.bindings import Binding, BindingTable
        from sosimple_proxy.location.ring import RingPublisher

        table = BindingTable(reactor)
        RingPublisher(self.services[0], table, lambda b: "<sip:127.0.0.1:5060;lr>", reactor)
        now = reactor.seconds()
        table.replace(
            "Alice@example.com",
            [
                Binding("Alice@example.com", "sip:alice@10.0.0.1:5062", now + 600, "c", 1, q=0.5),
                Binding("Alice@example.com", "sip:alice@10.0.0.2:5062", now + 300, "c", 1, path=("<sip:10.9.9.9;lr>",)),
            ],
        )
        view = None
        for _ in range(50):  # an HTTP round trip each: the loop cannot be a plain predicate
            code, view = yield self.json_call("GET", self.url + "/registrations/sip:Al%2569ce@EXAMPLE.com")
            if code == 200:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(code, 200, view)
        self.assertEqual(view["aor"], "Alice@example.com")
        first, second = view["bindings"]
        self.assertEqual((first["contact"], first["q"], first["proxy"]), ("sip:alice@10.0.0.2:5062", 1.0, "sip:127.0.0.1:5060"))
        self.assertEqual(first["path"], ["<sip:127.0.0.1:5060;lr>", "<sip:10.9.9.9;lr>"])
        self.assertTrue(290 <= first["expires"] <= 300, first)
        self.assertEqual((second["contact"], second["q"]), ("sip:alice@10.0.0.1:5062", 0.5))
        self.assertTrue(590 <= second["expires"] <= 600, second)

    @defer.inlineCallbacks
    def test_a_node_that_left_answers_503(self):
        self.node.stop()
        code, body = yield self.json_call("GET", self.url + "/health")
        self.assertEqual(code, 503)
        self.assertIn("left", body["error"])
        code, body = yield self.json_call("GET", self.url + "/records/x")
        self.assertEqual(code, 503)


class StatesTests(AdminTestBase):
    @defer.inlineCallbacks
    def test_without_overlay_health_is_ok_and_ring_is_503(self):
        url = self.serve(None)
        code, body = yield self.json_call("GET", url + "/health")
        self.assertEqual((code, body), (200, {"status": "ok"}))
        code, body = yield self.json_call("GET", url + "/ring")
        self.assertEqual(code, 503)
        self.assertIn("no overlay", body["error"])

    @defer.inlineCallbacks
    def test_joining_then_ready(self):
        # a node whose bootstrap does not answer keeps trying: it is joining
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        svc = OverlayService(
            reactor, overlay_settings(os.path.join(self.base, "j"), [("127.0.0.1", dead)], stabilize_interval=0.1)
        )
        url = self.serve(svc)
        code, body = yield self.json_call("GET", url + "/health")
        self.assertEqual(code, 503)
        self.assertIn("joining", body["error"])
        svc.startService()
        svc.ready.addErrback(lambda f: f.trap(NotRunning))  # stopped before it could join
        self.addCleanup(until_quiet, 1.0)  # its last connection attempt
        self.addCleanup(self._stop, svc)
        code, body = yield self.json_call("GET", url + "/ring")
        self.assertEqual(code, 503)
        self.assertIn("joining", body["error"])

    @defer.inlineCallbacks
    def test_failed_start_is_reported(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            taken = s.getsockname()[1]
            svc = OverlayService(
                reactor, overlay_settings(os.path.join(self.base, "f"), listen=f"tcp:{taken}:interface=127.0.0.1")
            )
            svc.startService()
            self.addCleanup(self._stop, svc)
            yield self.assertFailure(svc.ready, Exception)
            self.flushLoggedErrors()
            code, body = yield self.json_call("GET", self.serve(svc) + "/health")
        self.assertEqual(code, 503)
        self.assertIn("failed to start", body["error"])


class ThreeNodeTests(AdminTestBase):
    @defer.inlineCallbacks
    def test_write_through_one_read_through_another(self):
        yield self.start_ring(3)
        a, b, c = self.urls
        value = os.urandom(150_000)  # over AMP's 64 KiB value cap: travels in chunks
        code, _, _ = yield self.call("PUT", a + "/records/photo", value)
        self.assertEqual(code, 201)
        for url in (b, c):
            code, _, got = yield self.call("GET", url + "/records/photo")
            self.assertEqual((code, got == value), (200, True))
        code, loc = yield self.json_call("GET", c + "/locate/photo")
        key = ids.flat_key("photo")
        order = sorted((s.node for s in self.services), key=lambda n: ids.distance(key, n.id))
        self.assertEqual(loc["responsible"]["address"], order[0].address)
        self.assertEqual([p["address"] for p in loc["replicas"]], [order[1].address, order[2].address])
        # every node holds a copy (replicas = 2 in a ring of three)
        total = 0
        for url, svc in zip(self.urls, self.services):
            _, view = yield self.json_call("GET", url + "/ring")
            self.assertEqual(view["records"], 1)
            self.assertEqual(view["primary"], 1 if svc.node is order[0] else 0)
            self.assertIsNotNone(view["predecessor"])
            self.assertEqual(len({p["address"] for p in view["successors"]} - {svc.node.address}), 2)
            self.assertIsInstance(view["fingers"], list)
            total += view["records"]
        self.assertEqual(total, 3)
        for url in self.urls:  # each node's own copy, without asking the ring
            code, _, got = yield self.call("GET", url + "/records/photo?local=1")
            self.assertEqual((code, got == value), (200, True))
        code, _, _ = yield self.call("DELETE", b + "/records/photo")
        self.assertEqual(code, 204)
        code, body = yield self.json_call("GET", a + "/records/photo")
        self.assertEqual(code, 404)
