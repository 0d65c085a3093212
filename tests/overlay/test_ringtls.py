"""A CA ring in one process: mutual TLS between members, node ids from
certificates, and what a node without a valid certificate gets (nothing)."""

from __future__ import annotations

import datetime
import functools
import os
import shutil
import tempfile

import pytest
from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.trial import unittest

from sosimple_proxy.overlay import amp as overlay_amp
from sosimple_proxy.overlay.amp import AMPRPC, WrongIdentity
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.ringtls import RingSetupError, RingTLS, ring_tls
from sosimple_proxy.overlay.service import OverlayService
from sosimple_proxy.security import nodecerts
from sosimple_proxy.security.tls import TLSVerificationError
from sosimple_proxy.testing.polling import until
from sosimple_proxy.testing.ring import overlay_settings, ring_settled
from tests.certs import CA

settings = functools.partial(overlay_settings, stabilize_interval=0.1)

IDS = [0x1000 << 140, 0x5000 << 140, 0xA000 << 140]


def node_files(ca: CA, directory: str, node_id: int, domains=("example.com",), days: float = 30, now=None) -> tuple[str, str]:
    """``node.pem`` and ``node.key`` in ``directory``, issued by ``ca``."""
    os.makedirs(directory, exist_ok=True)
    key = nodecerts.generate_key()
    cert = nodecerts.sign_node(nodecerts.make_csr(key), ca.cert, ca.key, node_id, list(domains), days=days, now=now)
    cert_path, key_path = os.path.join(directory, "node.pem"), os.path.join(directory, "node.key")
    with open(cert_path, "wb") as f:
        f.write(nodecerts.pem(cert))
    nodecerts.write_private(key_path, nodecerts.key_pem(key))
    return cert_path, key_path


class Events:
    """A Logger whose events a test can read."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.log = Logger(observer=self.events.append)

    def refusals(self) -> list[dict]:
        return [e for e in self.events if "refused a ring connection" in e.get("log_format", "")]


# --- startup checks -------------------------------------------------------------


def test_an_open_ring_has_no_tls(tmp_path):
    assert ring_tls(settings(str(tmp_path))) is None


def test_the_node_id_comes_from_the_certificate(tmp_path):
    ca = CA()
    state = str(tmp_path / "state")
    node_files(ca, state, IDS[1], ("example.com", "b.test"))
    tls = ring_tls(settings(state, ca=str(ca.write(tmp_path))))
    assert tls.node_id == IDS[1] and tls.domains == ("example.com", "b.test")
    # the same id written in site.ini is fine; another one stops startup
    assert ring_tls(settings(state, ca=str(tmp_path / "ca.pem"), node_id=format(IDS[1], "x"))).node_id == IDS[1]
    with pytest.raises(RingSetupError) as e:
        ring_tls(settings(state, ca=str(tmp_path / "ca.pem"), node_id="abc"))
    assert e.value.key == "node_id" and "differs from the id in" in e.value.problem


@pytest.mark.parametrize("problem", ["missing", "other-ca", "no-id", "expired", "wrong-key"])
def test_bad_node_files_name_their_key(tmp_path, problem):
    ca = CA()
    ca_path = str(ca.write(tmp_path))
    state = str(tmp_path / "state")
    cert_path, key_path = node_files(ca, state, IDS[0])
    want_key, want = "certificate", ""
    if problem == "missing":
        os.remove(cert_path)
        want = "no such file"
    elif problem == "other-ca":
        node_files(CA("Another CA"), state, IDS[0])
        want = "not issued by the ring's CA"
    elif problem == "no-id":
        leaf = ca.issue(cn="example.com", sip_uris=["sip:example.com"])
        leaf.write(tmp_path / "state", "node")
        want = "names no node id"
    elif problem == "expired":
        node_files(ca, state, IDS[0], days=1, now=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3))
        want = "expired on"
    elif problem == "wrong-key":
        nodecerts.write_private(key_path, nodecerts.key_pem(nodecerts.generate_key()))
        want_key, want = "key", "does not belong"
    with pytest.raises(RingSetupError) as e:
        ring_tls(settings(state, ca=ca_path))
    assert e.value.key == want_key and want in e.value.problem, e.value.problem
    assert "\n" not in str(e.value)


# --- a ring over mutual TLS -------------------------------------------------------


class CARingTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="ca-ring-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.ca = CA("Ring CA")
        self.ca_path = str(self.ca.write(self.base))
        self.services: list[OverlayService] = []

    @defer.inlineCallbacks
    def tearDown(self):
        yield defer.gatherResults([s.stopService() for s in self.services if s.running])
        # a node stopped while joining has a retry pause pending: let it pass
        yield task_sleep(0.3)

    def tls(self, name: str, node_id: int, ca: CA | None = None, events: Events | None = None) -> RingTLS:
        state = os.path.join(self.base, name)
        cert, key = node_files(ca or self.ca, state, node_id)
        trusts = self.ca_path
        if ca is not None:
            # a stranger that trusts the ring's CA (and its own, to start):
            # the members, not the stranger, refuse the handshake
            trusts = os.path.join(state, "trusts.pem")
            with open(trusts, "wb") as f:
                f.write(self.ca.pem + ca.pem)
        return RingTLS(trusts, cert, key, log=(events or Events()).log)

    def start(self, name: str, tls: RingTLS | None, bootstrap=()) -> OverlayService:
        service = OverlayService(reactor, settings(os.path.join(self.base, name), bootstrap=bootstrap), tls=tls)
        service.startService()
        self.services.append(service)
        return service

    @staticmethod
    def hostport(node) -> tuple[str, int]:
        host, port = node.address.rsplit(":", 1)
        return host, int(port)

    @defer.inlineCallbacks
    def test_members_share_records_over_mutual_tls_and_a_stranger_cannot_join(self):
        events = Events()
        first = self.start("a", self.tls("a", IDS[0], events=events))
        a = yield first.ready
        self.assertEqual(a.id, IDS[0])  # the CA placed it
        boot = [self.hostport(a)]
        b = yield self.start("b", self.tls("b", IDS[1]), boot).ready
        c = yield self.start("c", self.tls("c", IDS[2]), boot).ready
        yield until(lambda: ring_settled([a, b, c]), 20, what="a CA ring of three to settle")
        key = first.keys.key("alice@example.com")
        rec = Record(key, "blob", "", "t", b"hello", reactor.seconds() + 600, 1)
        yield b.put(rec)
        got = yield c.get(key)
        # it comes back as b wrote it, signed with b's node certificate
        self.assertEqual([(r.value, r.seq) for r in got], [(rec.value, rec.seq)])
        self.assertEqual(got[0].owner_key_id, b.guard.signer.credential)
        # every pooled connection is TLS with the peer's node certificate
        for service in self.services:
            for proto in service._rpc._open.values():
                self.assertIsNotNone(proto.certified_id())
                self.assertEqual(proto.certified_id(), proto.remote.id)

        # a node whose certificate is from another CA, and one with no TLS
        # at all, keep trying to join and never get in
        rogue = self.start("rogue", self.tls("rogue", 0x7000 << 140, ca=CA("Rogue CA")), boot)
        plain = self.start("plain", None, boot)
        yield until(lambda: len(events.refusals()) >= 2, 10, what="a's refusals of both strangers")
        yield task_sleep(1.0)  # several more join attempts each
        self.assertFalse(rogue.ready.called or plain.ready.called)
        for node in (a, b, c):
            self.assertEqual({p.address for p in node.table.known_peers()}, {n.address for n in (a, b, c) if n is not node})
        reasons = [e["reason"] for e in events.refusals()]
        self.assertEqual(len(reasons), 2, reasons)  # once each, not once per attempt
        self.assertTrue(any("unknown CA" in r and "Rogue CA" in r for r in reasons), reasons)
        self.assertTrue(any(r.startswith("no TLS handshake") for r in reasons), reasons)
        # the rogue's own reads cannot reach the ring
        rogue_node = rogue.node
        self.assertFalse(rogue_node.joined)

    @defer.inlineCallbacks
    def test_a_server_whose_certificate_is_not_the_expected_node_is_refused(self):
        a = yield self.start("a", self.tls("a", IDS[0])).ready
        events = Events()
        client_tls = self.tls("client", IDS[1], events=events)
        rpc = AMPRPC(reactor, Peer(IDS[1], "127.0.0.1:1"), tls=client_tls, expected_id=lambda address: IDS[2])
        self.addCleanup(rpc.close)
        with self.assertRaises(TLSVerificationError) as e:
            yield rpc.state(a.address)
        self.assertIn(f"for node {IDS[0]:040x}, not {IDS[2]:040x}", e.exception.reason)
        self.assertEqual(len(events.refusals()), 1)
        # expecting the right id (or none) works
        rpc.expected_id = lambda address: IDS[0]
        state = yield rpc.state(a.address)
        self.assertEqual(state.peer.id, IDS[0])

    @defer.inlineCallbacks
    def test_a_peer_claiming_another_id_than_its_certificate_is_refused(self):
        events = Events()
        a = yield self.start("a", self.tls("a", IDS[0], events=events)).ready
        liar = AMPRPC(reactor, Peer(IDS[2], "127.0.0.1:1"), tls=self.tls("liar", IDS[1]))
        self.addCleanup(liar.close)
        with self.assertRaises(WrongIdentity):
            yield liar.state(a.address)  # its Hello names node IDS[2]
        # a Hello without a claim passes, but a Notify naming another node does not
        honest = AMPRPC(reactor, None, tls=self.tls("honest", IDS[1]))
        self.addCleanup(honest.close)
        yield honest.state(a.address)
        with self.assertRaises(WrongIdentity):
            yield honest.notify(a.address, Peer(IDS[2], "127.0.0.1:2"))
        self.assertIsNone(a.table.predecessor)
        state = yield honest.notify(a.address, Peer(IDS[1], "127.0.0.1:2"))
        self.assertEqual(state.predecessor, Peer(IDS[1], "127.0.0.1:2"))
        self.assertTrue(any("claims to be node" in e["reason"] for e in events.refusals()))
        yield until(lambda: a.table.predecessor is None, 10, what="a to drop its unreachable predecessor")
        yield task_sleep(0.5)


def task_sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


def test_the_amp_module_names_its_new_error():
    assert "WrongIdentity" in overlay_amp.__all__


class SilentPeerTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_peer_that_never_starts_the_handshake_is_dropped(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol

        from sosimple_proxy.overlay.amp import OverlayServerFactory

        base = tempfile.mkdtemp(prefix="ca-ring-")
        self.addCleanup(shutil.rmtree, base, True)
        ca = CA()
        cert, key = node_files(ca, os.path.join(base, "a"), IDS[0])
        events = Events()
        tls = RingTLS(str(ca.write(base)), cert, key, log=events.log)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            tls.server_factory(OverlayServerFactory(), reactor, handshake_timeout=0.3)
        )
        self.addCleanup(port.stopListening)
        lost = defer.Deferred()

        class Silent(Protocol):
            def connectionLost(self, reason):
                lost.callback(None)

        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(Factory.forProtocol(Silent))
        yield lost  # the member hung up on it
        self.assertEqual([e["reason"] for e in events.refusals()], ["no TLS handshake within 0.3 s"])


def test_sighup_reloads_the_ring_certificate_but_never_moves_the_node(tmp_path):
    ca = CA("Ring CA")
    ca_path = str(ca.write(tmp_path))
    d = str(tmp_path / "n")
    cert, key = node_files(ca, d, 0x42, ["example.com"])
    events = Events()
    tls = RingTLS(ca_path, cert, key, log=events.log)
    before = tls._server
    node_files(ca, d, 0x42, ["example.com", "example.org"])  # renewed, one more domain
    assert tls.reload() is True
    assert tls._server is not before and tls.domains == ("example.com", "example.org")
    node_files(ca, d, 0x43)  # another place: not while running
    assert tls.reload() is False
    assert (tls.node_id, tls.domains) == (0x42, ("example.com", "example.org"))
    with open(cert, "w") as f:
        f.write("not a certificate")
    assert tls.reload() is False and tls.node_id == 0x42
    assert sum("reload failed" in e["log_format"] for e in events.events) == 2
