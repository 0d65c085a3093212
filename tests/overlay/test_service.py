"""The ring as a Twisted service: key pair, SQLite store, AMP listener, restart."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.identity import load_or_create_key, public_key_bytes
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.service import OverlayService, key_scheme, node_config, node_id
from sosimple_proxy.testing.polling import until, until_quiet
from sosimple_proxy.testing.ring import overlay_settings, ring_settled


# A fast ring: these tests wait for it to settle.
settings = functools.partial(overlay_settings, stabilize_interval=0.1)


def test_settings_map_onto_the_node():
    cfg = node_config(settings("x", replicas=3, successors=9, stabilize_interval=2.5))
    assert (cfg.replicas, cfg.successors, cfg.stabilize_interval) == (3, 9, 2.5)
    assert key_scheme(settings("x", key_scheme="domain", domain_bits=16)).key("a@b.c") == ids.domain_key("a", "b.c", 160, 16)
    assert node_id(settings("x", node_id="ff"), b"pub") == 255
    homed = node_id(settings("x", key_scheme="domain", home_domain="example.com"), b"pub")
    lo, hi = ids.KeyScheme("domain").domain_region("example.com")
    assert lo <= homed <= hi
    assert node_id(settings("x"), b"pub") == ids.flat_key(b"pub")


def test_key_pair_is_made_once_and_kept(tmp_path):
    d = str(tmp_path / "state")
    k1 = load_or_create_key(d)
    assert oct(os.stat(os.path.join(d, "node.key")).st_mode & 0o777) == "0o600"
    k2 = load_or_create_key(d)
    assert public_key_bytes(k1) == public_key_bytes(k2)
    assert public_key_bytes(load_or_create_key(str(tmp_path / "other"))) != public_key_bytes(k1)


class ServiceTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_two_services_share_records_and_a_restart_keeps_them(self):
        base = tempfile.mkdtemp(prefix="overlay-service-")
        self.addCleanup(shutil.rmtree, base, True)
        first = OverlayService(reactor, settings(os.path.join(base, "a")))
        first.startService()
        a = yield first.ready
        host, port = a.address.rsplit(":", 1)
        second = OverlayService(reactor, settings(os.path.join(base, "b"), bootstrap=[(host, int(port))]))
        second.startService()
        b = yield second.ready
        # a write during the join window lands where the writer's view says;
        # the ring repairs that within a few rounds, but here we want the
        # ring settled first
        yield until(lambda: ring_settled([a, b]), 20, what="a ring of two to settle")
        key = first.keys.key("alice@example.com")
        # a's guard signs what it writes: the ring holds the signed version
        rec = first.guard.signer.sign(Record(key, "blob", "", "t", b"hello", reactor.seconds() + 600, 1))
        yield a.put(rec)
        got = yield b.get(key)
        self.assertEqual(got, [rec])
        # replication reaches b (it is among the key's replicas in a ring of two)
        yield until(lambda: b.store.get(key), 10, what="the replica at b")
        self.assertEqual(b.store.get(key), [rec])
        old_id = b.id
        yield second.stopService()  # leaves: hands its range over, keeps its copy
        got = yield a.get(key)
        self.assertEqual(got, [rec])
        again = OverlayService(reactor, settings(os.path.join(base, "b"), bootstrap=[(host, int(port))]))
        again.startService()
        b2 = yield again.ready
        self.assertEqual(b2.id, old_id)  # same key pair, same place
        self.assertEqual(b2.store.get(key), [rec])  # its SQLite copy came back
        got = yield b2.get(key)
        self.assertEqual(got, [rec])
        yield again.stopService()
        yield first.stopService()
        yield until_quiet(1.0)


def test_rpc_timeout_is_derived_unless_set() -> None:
    """[overlay] rpc_timeout (the lab's slow, lossy links with a short
    stabilize_interval): 0 keeps half an interval, at most 2 s."""
    from sosimple_proxy.overlay.service import node_config

    derived = node_config({"stabilize_interval": 1.0, "rpc_timeout": 0.0})
    assert (derived.rpc_timeout, derived.lookup_timeout) == (0.5, 2.0)
    set_ = node_config({"stabilize_interval": 1.0, "rpc_timeout": 2.0})
    assert (set_.rpc_timeout, set_.lookup_timeout) == (2.0, 8.0)
