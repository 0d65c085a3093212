"""``/metrics`` reads a real ring member: its size, its lookups, its
configuration document served from the same service."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.trial import unittest

from sosimple_proxy.metrics import Metrics, Sources
from sosimple_proxy.overlay.service import OverlayService


def samples(metrics: Metrics) -> dict:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


class RingMetricsTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_ring_size_lookups_and_document(self):
        base = tempfile.mkdtemp(prefix="metrics-ring-")
        self.addCleanup(shutil.rmtree, base, True)
        settings = {"listen": "tcp:0:interface=127.0.0.1", "bootstrap": (), "replicas": 1, "successors": 4,
                    "stabilize_interval": 0.2, "state_dir": os.path.join(base, "node")}
        svc = OverlayService(reactor, settings)
        svc.startService()
        self.addCleanup(svc.stopService)
        node = yield svc.ready
        metrics = Metrics(Sources(rings={"overlay": svc}))
        before = samples(metrics)
        ring = (("ring", "overlay"),)
        self.assertEqual(before[("sosimple_ring_size", ring)], 1)
        looked = before[("sosimple_ring_lookup_hops_count", ring)]
        for key in (1, 2, 3):
            yield node.lookup(key)
        after = samples(metrics)
        self.assertEqual(after[("sosimple_ring_lookup_hops_count", ring)], looked + 3)
        self.assertEqual(after[("sosimple_ring_lookup_seconds_count", ring)], looked + 3)
        self.assertEqual(after[("sosimple_ring_lookup_failures_total", ring)], 0)
        document = json.loads(svc.config_document())
        self.assertIsNone(document["signature"])  # an open ring
        self.assertEqual(document["config"]["bootstrap"], [node.address])
        self.assertEqual(document["config"]["replicas"], 1)
