"""``GET /calls``, ``GET /gateways``, ``GET /metrics`` and the ``sosimple
calls/gateways/registrations`` verbs over real loopback HTTP: a real
transaction layer on a ``task.Clock`` answers parsed requests, real
gateway states and a real limiter feed the views."""

from __future__ import annotations

import io
import json

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from sosimple_proxy import cli
from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.location.gateways import Gateway, GatewaySet, parse_gateway_uri
from sosimple_proxy.metrics import Metrics, Sources
from sosimple_proxy.security.limits import Limits, LimitsConfig
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import make_response
from sosimple_proxy.sip.parser import parse_message
from sosimple_proxy.sip.tls_transport import TLSTransport
from sosimple_proxy.sip.transaction import TransactionLayer, TransactionUser
from sosimple_proxy.tally import SipTally
from sosimple_proxy.web.admin import admin_site
from sosimple_proxy.web.registrations import LocalRegistrations
from sosimple_proxy.web.ringnodes import NodeStatus
from sosimple_proxy.web.views import Views


def request(method: str, n: int, source: str = "127.0.0.5") -> bytes:
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:5070;branch=z9hG4bK-{method}-{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\n"
        "To: <sip:bob@example.com>\r\n"
        f"Call-ID: call-{method}-{n}@test\r\n"
        f"CSeq: 1 {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Answering(TransactionUser):
    """Answers MESSAGE 404, OPTIONS 200; leaves INVITE unanswered (a call setting up)."""

    def requestReceived(self, req, txn):
        if req.method == "MESSAGE":
            txn.respond(make_response(req, 404))
        elif req.method == "OPTIONS":
            txn.respond(make_response(req, 200))


class Sent:
    def send(self, data, dest, local=None):
        return defer.succeed(None)


class ViewsTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.layer = TransactionLayer(self.clock, Sent(), Answering())
        self.tally = SipTally(self.clock)
        self.layer.observer = self.tally

        class Transport:
            tls = TLSTransport()

        class Stack:  # what the views read of a SIP stack: its transaction layer, its TLS counts
            transactions = self.layer
            transport = Transport

        self.limits = Limits(self.clock, LimitsConfig(ban_seconds=300))
        self.addCleanup(self.limits.stop)
        gw = [Gateway("carrier", parse_gateway_uri("sip:192.0.2.10:5060")), Gateway("backup", parse_gateway_uri("sip:192.0.2.11"))]
        self.gateways = GatewaySet(gw, self.clock)
        self.bindings = BindingTable(self.clock)
        sources = Sources(sip=self.tally, stack=Stack, bindings=self.bindings, gateways=self.gateways, limits=self.limits)
        self.views = Views(Metrics(sources), self.tally, Stack, self.limits, self.gateways, None)
        site = admin_site(None, {}, self.limits, status=NodeStatus(self.clock), views=self.views)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def feed(self, method: str, count: int, source: str = "127.0.0.5") -> None:
        for n in range(count):
            self.layer.receive(parse_message(request(method, n, source)), Peer("udp", source, 5070))

    @defer.inlineCallbacks
    def get(self, path: str):
        response = yield self.http.get(self.url + path)
        body = yield response.content()
        return response.code, body

    @defer.inlineCallbacks
    def test_calls_counts_the_last_minute_by_method_and_code(self):
        self.feed("MESSAGE", 3)
        self.feed("OPTIONS", 2, source="127.0.0.6")
        self.feed("INVITE", 1)
        self.limits.ban("192.0.2.99", "too many requests")
        self.gateways.states["carrier"].probe_answered(200)
        self.gateways.states["backup"].probe_failed("no answer to OPTIONS")
        self.clock.advance(5)
        code, body = yield self.get("/calls")
        self.assertEqual(code, 200)
        calls = json.loads(body)
        self.assertEqual(calls["last_minute"]["by_method"], {"MESSAGE": {"404": 3}, "OPTIONS": {"200": 2}})
        self.assertEqual(calls["last_minute"]["transactions"], 5)
        self.assertEqual(calls["current"]["calls_setting_up"], 1)
        self.assertEqual(calls["current"]["server_transactions"], self.layer.server_count)
        self.assertEqual(calls["top_sources"][0], {"address": "127.0.0.5", "requests": 4, "per_second": round(4 / 60, 2)})
        self.assertEqual(calls["top_sources"][1]["address"], "127.0.0.6")
        self.assertEqual([b["address"] for b in calls["banned"]], ["192.0.2.99"])
        self.assertEqual({g["name"]: g["state"] for g in calls["gateways"]}, {"carrier": "up", "backup": "down"})
        # a minute later the window is empty again
        self.clock.advance(61)
        calls = json.loads((yield self.get("/calls"))[1])
        self.assertEqual(calls["last_minute"]["by_method"], {})
        self.assertEqual(calls["top_sources"], [])

    @defer.inlineCallbacks
    def test_gateways_say_up_down_and_when_probed(self):
        self.gateways.states["carrier"].probe_answered(200)
        self.clock.advance(12)
        self.gateways.states["backup"].probe_answered(503)
        code, body = yield self.get("/gateways")
        self.assertEqual(code, 200)
        view = {g["name"]: g for g in json.loads(body)["gateways"]}
        self.assertEqual(view["carrier"]["state"], "up")
        self.assertEqual(view["carrier"]["last_probe"], 12.0)
        self.assertEqual(view["backup"]["state"], "down")
        self.assertEqual(view["backup"]["why"], "OPTIONS answered 503")
        self.assertEqual(view["backup"]["last_probe"], 0.0)
        self.assertEqual(view["carrier"]["uri"], "sip:192.0.2.10:5060")

    @defer.inlineCallbacks
    def test_metrics_follow_the_same_counts(self):
        self.feed("MESSAGE", 3)
        self.limits.ban("192.0.2.99", "too many requests")
        from sosimple_proxy.sip.admission import Gate

        Gate(self.limits).admit(b"OPTIONS sip:x SIP/2.0\r\n\r\n", "192.0.2.99")  # dropped unparsed
        self.limits.connection_opened("192.0.2.99")  # refused
        code, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        self.assertEqual(samples[("sosimple_sip_requests_total", (("method", "MESSAGE"),))], 3)
        self.assertEqual(samples[("sosimple_sip_responses_total", (("code", "404"), ("method", "MESSAGE")))], 3)
        self.assertEqual(samples[("sosimple_bans_total", ())], 1)
        self.assertEqual(samples[("sosimple_banned_sources", ())], 1)
        self.assertEqual(samples[("sosimple_banned_dropped_total", ())], 1)
        self.assertEqual(samples[("sosimple_banned_refused_connections_total", ())], 1)
        self.assertNotIn(("sosimple_kernel_dropped_packets_total", ()), samples)  # no kernel copy here
        self.assertEqual(samples[("sosimple_gateway_state", (("gateway", "carrier"), ("state", "up")))], 1)
        self.assertEqual(samples[("sosimple_sip_active_transactions", (("side", "server"),))], self.layer.server_count)

    @defer.inlineCallbacks
    def test_metrics_off_is_404_and_no_sip_is_503(self):
        site = admin_site(None, {}, None, status=NodeStatus(self.clock), views=Views())
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        for path, status in (("/metrics", 404), ("/calls", 503), ("/gateways", 200), ("/.well-known/sosimple-config", 404)):
            response = yield self.http.get(url + path)
            yield response.content()
            self.assertEqual(response.code, status, path)
        response = yield self.http.request("POST", self.url + "/calls")
        yield response.content()
        self.assertEqual(response.code, 405)

    @defer.inlineCallbacks
    def sosimple(self, *argv: str):
        out, err = io.BytesIO(), io.StringIO()
        status = yield defer.Deferred.fromCoroutine(cli.run(reactor, ["--admin", self.url, *argv], out, err, io.BytesIO(), {}))
        return status, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_cli_gateways_calls_and_registrations(self):
        self.gateways.states["backup"].probe_failed("no answer to OPTIONS")
        status, out, err = yield self.sosimple("gateways")
        self.assertEqual(status, 0, err)
        self.assertEqual({g["name"]: g["state"] for g in json.loads(out)["gateways"]}, {"carrier": "up", "backup": "down"})
        self.feed("MESSAGE", 2)
        status, out, err = yield self.sosimple("calls")
        self.assertEqual(status, 0, err)
        self.assertEqual(json.loads(out)["last_minute"]["by_method"], {"MESSAGE": {"404": 2}})
        # no registrar behind this site: the API says so and the command exits 4 with its words
        status, out, err = yield self.sosimple("registrations")
        self.assertEqual(status, 4)
        self.assertIn("no SIP registrar", err)

    @defer.inlineCallbacks
    def test_cli_registrations_prints_this_proxys_users(self):
        now = self.clock.seconds()
        self.bindings.replace("alice@example.com", [Binding("alice@example.com", "sip:alice@192.0.2.5:5060", now + 600, "c1", 1)])
        site = admin_site(None, {}, None, status=NodeStatus(self.clock), local=LocalRegistrations(self.clock, self.bindings))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        out, err = io.BytesIO(), io.StringIO()
        argv = ["--admin", f"http://127.0.0.1:{port.getHost().port}", "registrations"]
        status = yield defer.Deferred.fromCoroutine(cli.run(reactor, argv, out, err, io.BytesIO(), {}))
        self.assertEqual(status, 0, err.getvalue())
        view = json.loads(out.getvalue())
        self.assertEqual([r["aor"] for r in view["registrations"]], ["alice@example.com"])
        self.assertEqual(view["registrations"][0]["bindings"][0]["contact"], "sip:alice@192.0.2.5:5060")
        self.assertEqual(view["registrations"][0]["bindings"][0]["expires"], 600)
        # and the metrics count the same table
        families = {f.name: f for f in text_string_to_metric_families(self.views.metrics.render().decode())}
        self.assertEqual(families["sosimple_registrations"].samples[0].value, 1)
        self.assertEqual(families["sosimple_registered_contacts"].samples[0].value, 1)
