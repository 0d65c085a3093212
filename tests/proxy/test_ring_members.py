"""A CA ring's members at the SIP edge (issue 11, "Nodes"): a request over
TLS with a member's node certificate counts as authenticated for From users
of the domains that certificate names, and for nobody else; an open ring's
membership grants nothing.

The certificates are real (made by a test CA and ``nodecerts``); the TLS
connection is the harness's (the wire records which certificate a peer
presented, as the transport layer reads it from its connection; the e2e
test runs real TLS)."""

from __future__ import annotations

import datetime

from cryptography import x509

from sosimple_proxy.security import nodecerts
from sosimple_proxy.security.ringmembers import RingMembers
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.message import Request, Response

from tests.certs import CA
from tests.proxy.harness import Harness, invite
from tests.proxy.test_auth import users_file

MEMBER = Peer("tls", "192.0.2.20", 40000)
TLS_LOCAL = ListenAddress("tls", "127.0.0.1", 5061)
FOREIGN = "sip:carol@other.test"


def node_cert(ca: CA, domains, node_id: int = 7, days: float = 30, now=None) -> x509.Certificate:
    key = nodecerts.generate_key()
    return nodecerts.sign_node(nodecerts.make_csr(key), ca.cert, ca.key, node_id, list(domains), days=days, now=now)


def test_ring_members_are_known_by_their_ca_dates_and_node_id(tmp_path):
    ring, rogue = CA("Ring CA"), CA("Rogue CA")
    members = RingMembers(str(ring.write(tmp_path)))
    assert members.domains(node_cert(ring, ["example.com", "example.org"])) == ("example.com", "example.org")
    assert members.domains(node_cert(rogue, ["example.com"])) is None
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=60)
    assert members.domains(node_cert(ring, ["example.com"], now=old)) is None  # expired
    assert members.domains(ring.issue("sip.example.com").cert) is None  # the CA's, but no node id
    assert members.domains(None) is None


def harness(tmp_path, ring_ca: str | None) -> Harness:
    path = users_file(tmp_path, ("alice", "secret"))
    overlay = f"[overlay]\nlisten = tcp:0:interface=127.0.0.1\nca = {ring_ca}\n" if ring_ca else ""
    return Harness(
        f"[auth]\nusers_file = {path}\ntrusted =\n[routes]\nother.test = sip:192.0.2.99:5060\n{overlay}",
        listening=[ListenAddress("udp", "127.0.0.1", 5060), TLS_LOCAL],
    )


_sent = iter(range(1, 1000))


def send(h: Harness, sender: str = "alice@example.com") -> list:
    n = next(_sent)
    text = invite(FOREIGN, branch=f"z9hG4bK-member-{n}", call_id=f"member-{n}@ring").replace("SIP/2.0/UDP 127.0.0.1:5070", "SIP/2.0/TLS 192.0.2.20:40000")
    text = text.replace("<sip:alice@example.com>;tag=a1", f"<sip:{sender}>;tag=a1")
    h.receive(text, MEMBER, TLS_LOCAL)
    return h.wire.take()


def outcome(sent: list) -> str:
    for m, dest in sent:
        if isinstance(m, Request) and m.method == "INVITE":
            return f"forwarded to {dest.host}"
    finals = [m.status for m, _ in sent if isinstance(m, Response) and m.status >= 200]
    return f"answered {finals}"


def test_a_member_for_our_domain_vouches_for_its_users(tmp_path):
    ring = CA("Ring CA")
    h = harness(tmp_path, str(ring.write(tmp_path)))
    h.wire.certificates[MEMBER] = node_cert(ring, ["example.com"])
    # no challenge, and the relay rule lets an authenticated user out
    assert outcome(send(h)) == "forwarded to 192.0.2.99"


def test_a_member_for_another_domain_gets_what_any_foreign_domain_gets(tmp_path):
    ring = CA("Ring CA")
    h = harness(tmp_path, str(ring.write(tmp_path)))
    h.wire.certificates[MEMBER] = node_cert(ring, ["other.test"])
    assert outcome(send(h)) == "answered [407]"  # From claims example.com: prove it
    assert outcome(send(h, "carol@other.test")) == "answered [403]"  # a stranger may not relay
    h.wire.certificates[MEMBER] = node_cert(ring, ["example.com"])
    assert outcome(send(h, "carol@other.test")) == "answered [403]"  # not a domain of ours


def test_no_certificate_or_another_cas_is_no_member(tmp_path):
    ring, rogue = CA("Ring CA"), CA("Rogue CA")
    h = harness(tmp_path, str(ring.write(tmp_path)))
    assert outcome(send(h)) == "answered [407]"
    h.wire.certificates[MEMBER] = node_cert(rogue, ["example.com"])
    assert outcome(send(h)) == "answered [407]"


def test_in_an_open_ring_membership_grants_nothing(tmp_path):
    ring = CA("Ring CA")
    h = harness(tmp_path, None)
    h.wire.certificates[MEMBER] = node_cert(ring, ["example.com"])
    assert outcome(send(h)) == "answered [407]"
