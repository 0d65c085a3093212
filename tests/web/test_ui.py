"""The admin pages (``/ui/``) and ``GET /ring/nodes``, the JSON they draw from.

The page is checked as served (type, no external assets, the hooks the
browser test counts); what it draws is checked by the Chromium test in
``tests/e2e/test_admin_page.py``.  ``/ring/nodes`` is checked against
simulated rings, whose true order the test knows.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from sosimple_proxy import __version__
from sosimple_proxy.overlay import ids
from sosimple_proxy.testing.ring import sim_ring
from sosimple_proxy.web.admin import admin_site
from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.web.registrations import LocalRegistrations
from sosimple_proxy.web.ringnodes import NodeStatus, ring_nodes
from sosimple_proxy.web.ui import page
from tests.web.guarded import serve as serve_guarded
from tests.web.guarded import write_files

REPO = Path(__file__).resolve().parents[2]


def as_ring(node) -> SimpleNamespace:
    """A simulated node in the shape the admin API takes a ring in."""
    return SimpleNamespace(node=node, keys=None, ready=defer.succeed(node))


class HttpBase(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    def serve(self, ring, status: NodeStatus | None = None, local: LocalRegistrations | None = None) -> str:
        port = reactor.listenTCP(0, admin_site(ring, {}, status=status, local=local), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def call(self, method: str, url: str):
        response = yield self.http.request(method, url, allow_redirects=False)
        body = yield response.content()
        return response.code, response.headers, body


class PageTests(HttpBase):
    def setUp(self):
        super().setUp()
        self.url = self.serve(None)

    @defer.inlineCallbacks
    def test_the_page_is_html_at_ui(self):
        code, headers, body = yield self.call("GET", self.url + "/ui/")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        text = body.decode("utf-8")
        self.assertTrue(text.lstrip().lower().startswith("<!doctype html>"))
        self.assertIn('name="viewport"', text)
        self.assertRegex(text, r'<svg id="ring" viewBox="[-0-9 ]+"')
        self.assertIn('fetch("../ring/nodes"', text)  # relative: works behind any prefix
        self.assertEqual(body, page("ring.html"))

    @defer.inlineCallbacks
    def test_the_registrations_page_is_html(self):
        code, headers, body = yield self.call("GET", self.url + "/ui/registrations")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        text = body.decode("utf-8")
        self.assertIn('name="viewport"', text)
        self.assertIn('fetch("../registrations"', text)
        self.assertIn('<input id="filter" type="search"', text)
        self.assertEqual(body, page("registrations.html"))

    @defer.inlineCallbacks
    def test_the_calls_page_is_html(self):
        code, headers, body = yield self.call("GET", self.url + "/ui/calls")
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        text = body.decode("utf-8")
        self.assertIn('name="viewport"', text)
        self.assertIn('fetch("../calls"', text)
        self.assertIn('"../limits/banned/"', text)
        self.assertEqual(body, page("calls.html"))

    @defer.inlineCallbacks
    def test_the_pages_have_no_external_assets(self):
        for path in ("/ui/", "/ui/registrations", "/ui/calls"):
            yield self.check_no_external_assets(path)

    @defer.inlineCallbacks
    def check_no_external_assets(self, path: str):
        _, headers, body = yield self.call("GET", self.url + path)
        text = body.decode("utf-8").lower()
        self.assertNotIn("http://", text)
        self.assertNotIn("https://", text)
        self.assertNotRegex(text, r"(src|href|action)\s*=\s*[\"']?//")  # protocol-relative
        self.assertNotRegex(text, r"<script[^>]*\bsrc\s*=")
        self.assertNotRegex(text, r"<link\b")
        self.assertNotRegex(text, r"<img\b|@import|url\(")
        # and the browser is told so
        csp = headers.getRawHeaders(b"content-security-policy")[0].decode()
        self.assertIn("default-src 'none'", csp)
        self.assertIn("connect-src 'self'", csp)

    @defer.inlineCallbacks
    def test_root_and_bare_ui_redirect_to_the_page(self):
        for path in ("/", "/ui"):
            code, headers, _ = yield self.call("GET", self.url + path)
            self.assertEqual((path, code, headers.getRawHeaders(b"location")), (path, 302, [b"/ui/"]))

    @defer.inlineCallbacks
    def test_unknown_page_and_other_methods(self):
        code, headers, body = yield self.call("GET", self.url + "/ui/nope")
        self.assertEqual(code, 404)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertIn("error", json.loads(body))
        code, headers, _ = yield self.call("POST", self.url + "/ui/")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"GET"]))

    @defer.inlineCallbacks
    def test_the_json_api_is_not_shadowed(self):
        code, headers, body = yield self.call("GET", self.url + "/health")
        self.assertEqual((code, json.loads(body)), (200, {"status": "ok"}))
        code, _, body = yield self.call("GET", self.url + "/no-such-thing")
        self.assertEqual(code, 404)
        self.assertIn("error", json.loads(body))

    @defer.inlineCallbacks
    def test_ring_nodes_without_an_overlay_is_503(self):
        code, headers, body = yield self.call("GET", self.url + "/ring/nodes")
        self.assertEqual(code, 503)
        self.assertIn("overlay", json.loads(body)["error"])

    @defer.inlineCallbacks
    def test_registrations_without_a_registrar_is_503(self):
        code, headers, body = yield self.call("GET", self.url + "/registrations")
        self.assertEqual(code, 503)
        self.assertIn("no SIP registrar", json.loads(body)["error"])

    def test_the_page_ships_as_package_data(self):
        cfg = configparser.ConfigParser()
        cfg.read(REPO / "setup.cfg")
        # setup.cfg ships every .html under the package (tests/test_packaging.py checks the wheel)
        self.assertIn("**/*.html", cfg["options.package_data"]["sosimple_proxy"].split())
        for name in ("ring.html", "registrations.html", "calls.html"):
            self.assertTrue((REPO / "sosimple_proxy" / "web" / "pages" / name).is_file())


class BrowserRequiredTests(unittest.TestCase):
    def test_a_missing_chromium_fails_where_peers_are_required(self):
        """The browser test's skip reason is one ``SOSIMPLE_REQUIRE_PEERS=1``
        turns into a failure (``tests/conftest.py``), as for sipp and baresip."""
        from sosimple_proxy.testing.chromium import MISSING
        from tests.conftest import _ENVIRONMENT

        self.assertTrue(any(word in MISSING for word in _ENVIRONMENT), MISSING)


class GuardedPageTests(unittest.TestCase):
    """With admin credentials the pages are guarded like the API."""

    timeout = 30

    @defer.inlineCallbacks
    def test_pages_and_redirect_ask_for_credentials(self):
        directory = tempfile.mkdtemp(prefix="ui-guard-")
        self.addCleanup(shutil.rmtree, directory, True)
        url = yield serve_guarded(self, write_files(Path(directory)), tls=False)
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        for path in ("/", "/ui/", "/ring/nodes"):
            response = yield http.request("GET", url + path, allow_redirects=False)
            yield response.content()
            self.assertEqual((path, response.code), (path, 401))


class RingNodesTests(HttpBase):
    """``GET /ring/nodes`` on simulated rings."""

    def nodes_in_order(self, cluster):
        return sorted(cluster.nodes.values(), key=lambda n: n.id)

    @defer.inlineCallbacks
    def test_shape_on_a_whole_ring(self):
        cluster = sim_ring(3)
        order = self.nodes_in_order(cluster)
        me = order[1]
        clock = task.Clock()
        clock.advance(1000)
        status = NodeStatus(clock)
        clock.advance(42.5)
        url = self.serve(as_ring(me), status)
        code, headers, body = yield self.call("GET", url + "/ring/nodes")
        self.assertEqual(code, 200, body)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        view = json.loads(body)
        self.assertEqual(set(view), {"id", "address", "m", "complete", "nodes", "version", "uptime"})
        self.assertEqual(view["id"], ids.format_id(me.id))
        self.assertEqual(view["address"], str(me.address))
        self.assertEqual((view["m"], view["version"], view["uptime"]), (160, __version__, 42.5))
        self.assertTrue(view["complete"])
        fmt = ids.format_id
        self.assertEqual([n["id"] for n in view["nodes"]], [fmt(n.id) for n in order])  # ring order
        for i, (got, true) in enumerate(zip(view["nodes"], order)):
            self.assertEqual(
                set(got), {"id", "address", "roles", "range_from", "records", "primary", "replica"}
            )
            self.assertEqual(got["address"], str(true.address))
            # a whole ring: every node's range is known, from its true predecessor
            self.assertEqual(got["range_from"], fmt(order[i - 1].id))
        by_role = {n["address"]: n["roles"] for n in view["nodes"]}
        self.assertEqual(by_role[str(me.address)], ["self"])
        # in a ring of three the node before us is also our second successor
        self.assertEqual(by_role[str(order[0].address)][:2], ["predecessor", "successor"])
        self.assertEqual(by_role[str(order[2].address)][0], "successor")
        # counts: this node's own, the others' are not known here
        mine = view["nodes"][1]
        primary, replica = me.counts()
        self.assertEqual((mine["records"], mine["primary"], mine["replica"]), (primary + replica, primary, replica))
        for other in (view["nodes"][0], view["nodes"][2]):
            self.assertEqual((other["records"], other["primary"], other["replica"]), (None, None, None))

    def test_counts_follow_the_store(self):
        cluster = sim_ring(3)
        me = self.nodes_in_order(cluster)[0]
        me.store.put(cluster.make_record(me.id))  # our own id is in our own range
        mine = [n for n in ring_nodes(me)["nodes"] if "self" in n["roles"]][0]
        self.assertEqual((mine["records"], mine["primary"], mine["replica"]), (1, 1, 0))

    def test_a_partial_view_on_a_larger_ring(self):
        cluster = sim_ring(40)
        order = self.nodes_in_order(cluster)
        me = order[10]
        view = ring_nodes(me)
        self.assertFalse(view["complete"])
        self.assertNotIn("version", view)  # no status given
        got = {n["address"]: n for n in view["nodes"]}
        succs = me.successors
        self.assertEqual(len(succs), me.config.successors)
        # every table entry appears once, with its roles
        self.assertEqual(len(got), len({me.address, me.predecessor.address, *(s.address for s in succs), *(f.address for f in me.finger_peers())}))
        self.assertIn("predecessor", got[str(me.predecessor.address)]["roles"])
        self.assertEqual(got[str(me.address)]["range_from"], ids.format_id(me.predecessor.id))
        prev = me
        for s in succs:
            self.assertIn("successor", got[str(s.address)]["roles"])
            self.assertEqual(got[str(s.address)]["range_from"], ids.format_id(prev.id))
            prev = s
        # a finger only: its range is not known from here
        far = [n for n in view["nodes"] if n["roles"] == ["finger"]]
        self.assertTrue(far)
        self.assertTrue(all(n["range_from"] is None for n in far))
        # the predecessor's own range is not known either (it is no one's successor here)
        self.assertIsNone(got[str(me.predecessor.address)]["range_from"])
        self.assertEqual([n["id"] for n in view["nodes"]], sorted(n["id"] for n in view["nodes"]))

    def test_alone_a_node_owns_the_whole_ring(self):
        cluster = sim_ring(1)
        (me,) = cluster.nodes.values()
        view = ring_nodes(me)
        self.assertTrue(view["complete"])
        self.assertEqual(view["nodes"], [
            {"id": ids.format_id(me.id), "address": str(me.address), "roles": ["self"],
             "range_from": ids.format_id(me.id), "records": 0, "primary": 0, "replica": 0}
        ])

    def test_uptime_follows_the_clock(self):
        clock = task.Clock()
        status = NodeStatus(clock, version="9.9")
        self.assertEqual(status.uptime(), 0.0)
        clock.advance(3600)
        self.assertEqual((status.uptime(), status.version), (3600.0, "9.9"))
        status.start()  # the admin service started now
        clock.advance(5)
        self.assertEqual(status.uptime(), 5.0)



class LocalRegistrationsTests(HttpBase):
    """``GET /registrations``: this proxy's binding table, as the page shows it."""

    @defer.inlineCallbacks
    def test_shape_order_and_expiry(self):
        clock = task.Clock()
        clock.advance(5000)
        table = BindingTable(clock)
        now = clock.seconds()
        table.replace("bob@example.com", [
            Binding("bob@example.com", "sip:bob@192.0.2.9:5062;transport=tcp", now + 300, "c1", 1,
                    q=0.5, path=("<sip:edge.example.com;lr>",), received="tcp:192.0.2.9:40000",
                    instance='"<urn:uuid:00000000-0000-0000-0000-000000000001>"', reg_id=1, registered_at=now - 20),
            Binding("bob@example.com", "sip:bob@192.0.2.9:5060", now + 60, "c2", 1, registered_at=now),
        ])
        table.replace("alice@example.com", [
            Binding("alice@example.com", "sip:alice@198.51.100.1:5060", now + 3600, "c3", 1,
                    received="udp:198.51.100.1:5060", registered_at=now),
        ])
        table.replace("gone@example.com", [Binding("gone@example.com", "sip:gone@192.0.2.1", now + 10, "c4", 1)])
        clock.advance(30)  # gone@ has expired, bob's second binding has 30 s left
        url = self.serve(None, local=LocalRegistrations(clock, table))
        for path in ("/registrations", "/registrations/"):
            code, headers, body = yield self.call("GET", url + path)
            self.assertEqual(code, 200, body)
            self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
            view = json.loads(body)
            self.assertEqual([r["aor"] for r in view["registrations"]], ["alice@example.com", "bob@example.com"])
            alice, bob = view["registrations"]
            self.assertEqual(set(alice), {"aor", "bindings"})
            self.assertEqual(alice["bindings"], [{
                "contact": "sip:alice@198.51.100.1:5060", "expires": 3570, "path": [], "q": 1.0,
                "transport": "udp", "received": "198.51.100.1:5060", "instance": None, "reg_id": None,
                "registered": 30,
            }])
            # highest q first, as the registrar orders them
            self.assertEqual([b["expires"] for b in bob["bindings"]], [30, 270])
            tcp = bob["bindings"][1]
            self.assertEqual((tcp["transport"], tcp["received"], tcp["reg_id"], tcp["q"]), ("tcp", "192.0.2.9:40000", 1, 0.5))
            self.assertEqual(tcp["path"], ["<sip:edge.example.com;lr>"])
            self.assertIn("urn:uuid:", tcp["instance"])
            self.assertIsNone(bob["bindings"][0]["transport"])  # registered with no source known

    @defer.inlineCallbacks
    def test_an_empty_table_is_an_empty_list(self):
        clock = task.Clock()
        url = self.serve(None, local=LocalRegistrations(clock, BindingTable(clock)))
        code, _, body = yield self.call("GET", url + "/registrations")
        self.assertEqual((code, json.loads(body)), (200, {"registrations": []}))
        # an AoR still asks the ring (none here)
        code, _, body = yield self.call("GET", url + "/registrations/alice@example.com")
        self.assertEqual(code, 503)


def test_the_composition_root_hands_the_binding_table_to_the_admin_site():
    from sosimple_proxy.config import parse_config
    from sosimple_proxy.wiring import build_service

    cfg = parse_config(
        "[proxy]\nlisten = udp:127.0.0.1:0\ndomains = example.com\n[overlay]\nlisten =\n"
        "[admin]\nlisten = tcp:0:interface=127.0.0.1\n[location]\norder = local\n"
    )
    top = build_service(cfg, reactor)
    admin = top.getServiceNamed("admin")
    assert isinstance(admin.registrations, LocalRegistrations)
    assert isinstance(admin.registrations.table, BindingTable)
    assert admin.status.version == __version__
