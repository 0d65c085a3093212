"""An open ring's admission: a node proves the key its id is derived from
(a signed fresh challenge) before others put it in their tables."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.logger import Logger

from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.admission import NodeSigner, OpenRingTrust, check_proof
from sosimple_proxy.overlay.messages import Peer
from sosimple_proxy.overlay.routing import RoutingTable, Suspects
from sosimple_proxy.overlay.simnet import SimCluster
from sosimple_proxy.overlay.tuning import NodeConfig

NONCE = bytes(range(32))


def signer(seed: int, home: str = "") -> NodeSigner:
    return NodeSigner(Ed25519PrivateKey.from_private_bytes(random.Random(seed).randbytes(32)), home)


def test_a_proof_of_the_key_the_id_comes_from_admits():
    s = signer(1)
    me = Peer(s.node_id(), "10.0.0.1:7000")
    assert check_proof(s.prove(NONCE, me), me, NONCE) is None


def test_an_id_the_key_does_not_give_is_refused_unless_chosen_ids_are_allowed():
    s = signer(1)
    chosen = Peer(12345, "10.0.0.1:7000")
    proof = s.prove(NONCE, chosen)  # a good signature, but not its place
    assert "not the one its public key gives" in check_proof(proof, chosen, NONCE)
    assert check_proof(proof, chosen, NONCE, allow_chosen_ids=True) is None


def test_a_home_domain_id_is_checked_with_the_domain():
    s = signer(2, "example.com")
    me = Peer(s.node_id(domain_bits=16), "h:1")
    lo, hi = ids.KeyScheme("domain", domain_bits=16).domain_region("example.com")
    assert lo <= me.id <= hi
    assert check_proof(s.prove(NONCE, me), me, NONCE, domain_bits=16) is None


def test_a_stale_nonce_another_key_or_a_relayed_answer_is_refused():
    s, other = signer(1), signer(3)
    me = Peer(s.node_id(), "10.0.0.1:7000")
    assert "does not verify" in check_proof(s.prove(bytes(32), me), me, NONCE)  # not our challenge
    forged = s.prove(NONCE, me)
    forged = type(forged)(other.public_key, "", forged.signature)
    assert check_proof(forged, me, NONCE) is not None
    # an attacker at another address relays our challenge to the node whose
    # place it wants: that node signs its own address, not the attacker's
    relayed = s.prove(NONCE, me)
    assert "does not verify" in check_proof(relayed, Peer(me.id, "10.6.6.6:7000"), NONCE)


def test_a_challenge_of_a_silly_size_is_not_signed():
    s = signer(1)
    with pytest.raises(ValueError):
        s.prove(b"x", Peer(1, "a"))


def table(admit) -> RoutingTable:
    return RoutingTable(Peer(0, "me"), 8, 4, 2, Suspects(lambda: 0.0, 10.0), None, admit)


def test_a_table_takes_only_proved_peers_and_keeps_its_list_a_prefix():
    status = {10: True, 20: None, 30: True, 40: False}
    t = table(lambda p: status[p.id])
    peers = [Peer(i, f"n{i}") for i in (10, 20, 30, 40)]
    t.set_successors(peers)
    assert [p.id for p in t.successors] == [10]  # stops at 20, not proved yet
    status[20] = True
    t.set_successors(peers)
    assert [p.id for p in t.successors] == [10, 20, 30]  # 40 refused: skipped
    status[25] = None
    t.set_successors([peers[0], Peer(25, "n25"), *peers[1:]])
    assert [p.id for p in t.successors] == [10, 20, 30]  # an unproved newcomer: what was proved is kept
    t.set_predecessor(peers[3])
    t.set_finger(5, peers[3])
    assert t.predecessor is None and t.fingers == {}
    t.set_predecessor(peers[2])
    assert t.predecessor == peers[2]


def proof_cluster(seed: int = 7, **kw) -> SimCluster:
    return SimCluster(seed, NodeConfig(m=32, successors=4, replicas=2, stabilize_interval=1.0), proofs=True, **kw)


def in_tables(node, nid: int) -> bool:
    peers = [*node.successors, *node.finger_peers()]
    if node.predecessor is not None:
        peers.append(node.predecessor)
    return any(p.id == nid for p in peers)


def test_a_simulated_open_ring_of_proved_nodes_settles():
    c = proof_cluster()
    c.grow(64, per_round=8)
    # a peer offered before it proved itself is taken as soon as it has:
    # the ring settles a few rounds behind an open ring's (not one round
    # per entry of the successor lists)
    c.settle(max_rounds=4)  # deterministic (seeded): 2 rounds here, 5 without taking offers again
    for n in c.joined():
        assert n.id == n.trust.signer.node_id(32)  # every id comes from its key
        assert n.gate.challenges > 0
        assert all(n.gate.public_key(p) is not None for p in n.successors)
    # and the ring works: a record stored is read back from elsewhere
    rec = c.make_record()
    assert c.wait(c.joined()[0].put(rec)) >= 1
    assert c.wait(c.joined()[-1].get(rec.key)) == [rec]


def test_a_node_at_a_chosen_id_never_enters_a_table_and_is_logged_once():
    c = proof_cluster()
    c.grow(8, per_round=4)
    c.settle(max_rounds=60)
    events: list[dict] = []
    for n in c.joined():
        n.gate._log = Logger(observer=events.append)
    honest = {n.address for n in c.joined()}
    target = c.joined()[3].id + 1  # right after a member: it would take its range
    rogue = c.add_node(node_id=target)  # it has a key, but not one that gives this id
    c.run(15)
    for n in c.nodes.values():
        if n.address in honest:
            assert not in_tables(n, target), n
    refusals = [e for e in events if "refused node" in e["log_format"] and e["address"] == rogue.address]
    assert refusals and "not the one its public key gives" in refusals[0]["reason"]
    by_node = [e["log_logger"] for e in refusals]
    assert len(refusals) == len(set(map(id, by_node)))  # once per member, not once per round


def test_allow_chosen_ids_admits_a_chosen_id_that_proves_its_key():
    c = proof_cluster(allow_chosen_ids=True)
    c.grow(6, per_round=3)
    c.settle(max_rounds=60)
    chosen = c.joined()[2].id + 1
    c.add_node(node_id=chosen)
    c.run(5)
    c.settle(max_rounds=60)
    assert any(in_tables(n, chosen) for n in c.joined() if n.id != chosen)


def test_a_node_without_a_key_is_refused():
    c = proof_cluster()
    c.grow(6, per_round=3)
    c.settle(max_rounds=60)
    members = list(c.joined())
    keyless = c.add_node(node_id=members[1].id + 1, trust=None)
    keyless.trust = keyless.gate = None  # an old node: it answers no challenge
    keyless.table.admit = None
    c.run(15)
    for n in members:
        assert not in_tables(n, keyless.id)
        assert n.gate._known(keyless.peer) in (False, None)


def test_a_relay_of_the_victims_proof_is_refused():
    c = proof_cluster()
    c.grow(6, per_round=3)
    c.settle(max_rounds=60)
    members = list(c.joined())
    victim = members[2]
    events: list[dict] = []
    for n in members:
        n.gate._log = Logger(observer=events.append)
    # a rogue at its own address, right before the victim, hands every
    # challenge to the victim to sign
    rogue = c.add_node(node_id=(victim.id - 1) % (1 << 32))
    rogue.remote_prove = victim.remote_prove  # type: ignore[method-assign]
    c.run(15)
    for n in members:
        assert not in_tables(n, rogue.id)
    reasons = {e["reason"] for e in events if e.get("address") == rogue.address}
    assert reasons == {"its signature over our challenge (its id and address) does not verify"}


# -- over AMP, as a process runs it (OverlayService, trust = tofu by default)

import functools  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.trial import unittest  # noqa: E402

from sosimple_proxy.overlay.service import OverlayService, TrustSetupError, check_trust  # noqa: E402
from sosimple_proxy.testing.polling import until, until_quiet  # noqa: E402
from sosimple_proxy.testing.ring import overlay_settings, ring_settled  # noqa: E402

fast = functools.partial(overlay_settings, stabilize_interval=0.1)


def test_a_service_with_a_chosen_id_in_an_open_ring_needs_allow_chosen_ids():
    with pytest.raises(TrustSetupError) as info:
        check_trust(fast("x", node_id="ff"))
    assert info.value.key == "node_id"
    assert check_trust(fast("x", node_id="ff", allow_chosen_ids=True)) == "tofu"
    with pytest.raises(TrustSetupError):
        check_trust(fast("x", trust="ca"))


class OpenRingOverAMPTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.base = tempfile.mkdtemp(prefix="overlay-admission-")
        self.addCleanup(shutil.rmtree, self.base, True)
        self.services: list[OverlayService] = []

    @defer.inlineCallbacks
    def tearDown(self):
        for s in reversed(self.services):
            if s.running:
                yield s.stopService()
        yield until_quiet(1.0)

    @defer.inlineCallbacks
    def start(self, name: str, bootstrap=(), **extra):
        svc = OverlayService(reactor, fast(os.path.join(self.base, name), bootstrap, **extra))
        self.services.append(svc)
        svc.startService()
        node = yield svc.ready
        return node

    @defer.inlineCallbacks
    def test_members_prove_their_keys_and_a_chosen_id_is_kept_out(self):
        a = yield self.start("a")
        host, port = a.address.rsplit(":", 1)
        boot = [(host, int(port))]
        b = yield self.start("b", boot)
        c = yield self.start("c", boot)
        yield until(lambda: ring_settled([a, b, c]), 20, what="an open ring of three to settle")
        for n in (a, b, c):
            self.assertEqual(n.id, n.trust.signer.node_id())  # its place is its key's
            for p in n.successors:
                self.assertIsNotNone(n.gate.public_key(p))  # proved over AMP
        # a node that chose its place (right after b, to take b's range):
        # it has a key and signs with it, but its id is not its key's; its
        # connections are refused at the claim, so it never even joins
        events: list[dict] = []
        for svc in self.services:
            svc._factory.refusals._log = Logger(observer=events.append)
        chosen = ids.format_id((b.id + 1) % (1 << 160))
        rogue = OverlayService(
            reactor, fast(os.path.join(self.base, "rogue"), boot, node_id=chosen, allow_chosen_ids=True)
        )
        self.services.append(rogue)
        rogue.ready.addErrback(lambda f: None)  # stopped before it joined
        rogue.startService()
        yield until(lambda: events, 10, what="a refusal")
        yield task.deferLater(reactor, 1.0, lambda: None)  # ten rounds: it keeps trying
        self.assertFalse(rogue.ready.called)
        for n in (a, b, c):
            self.assertFalse(in_tables(n, int(chosen, 16)))
        self.assertIn("not the one its public key gives", events[0]["reason"])
        self.assertEqual(len({(e["peer"], e["reason"]) for e in events}), len(events))  # once each

    @defer.inlineCallbacks
    def test_a_leave_or_notify_naming_another_node_is_refused_on_the_connection(self):
        from sosimple_proxy.overlay.amp import AMPRPC, WrongIdentity

        a = yield self.start("a")
        host, port = a.address.rsplit(":", 1)
        b = yield self.start("b", [(host, int(port))])
        yield until(lambda: ring_settled([a, b]), 20, what="an open ring of two to settle")
        # a process without b's key says "b leaves" (and "b may be your
        # predecessor"): the connection proved no node, or another one
        for signer in (None, signer_of(99)):
            rpc = AMPRPC(reactor, local=Peer(signer.node_id() if signer else 1, "127.0.0.1:9"), signer=signer)
            try:
                with self.assertRaises(WrongIdentity):
                    yield rpc.leave(a.address, b.peer, None, ())
                with self.assertRaises(WrongIdentity):
                    yield rpc.notify(a.address, b.peer)
            finally:
                rpc.close()
        self.assertEqual(a.successors[0], b.peer)
        self.assertEqual(a.predecessor, b.peer)


def signer_of(seed: int) -> NodeSigner:
    return signer(seed)


def test_a_challenge_that_fails_at_once_still_answers_its_waiter():
    """A call to a peer known to be down fails synchronously; the waiter of
    ``verify`` must still hear "no" (a node joining through that peer once
    waited forever, stuck "joining the ring" while its ring formed)."""
    from twisted.internet import defer, error, task

    from sosimple_proxy.overlay.admission import PeerGate

    class DownCalls:
        def __init__(self):
            self.asked = 0

        def call(self, address, name, *args):
            self.asked += 1
            return defer.fail(error.ConnectionRefusedError())

    me = signer(1)
    calls = DownCalls()
    gate = PeerGate(Peer(1, "10.0.0.1:7000"), calls, task.Clock(), OpenRingTrust(me))
    peer = Peer(12345, "10.0.0.2:7000")
    answers = []
    gate.verify(peer).addCallback(answers.append)
    assert answers == [False] and calls.asked == 1
    gate.verify(peer).addCallback(answers.append)  # asked again: a new challenge, answered too
    assert answers == [False, False] and calls.asked == 2
