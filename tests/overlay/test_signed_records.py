"""Signed records on a simulated ring (issue 11, "Records").

Every node of these rings has a :class:`RecordGuard` with its own Ed25519
key (an open ring) or a node certificate (a CA ring, for the pure
entitlement checks): what it writes is signed, and what it is handed or
reads is checked before it is kept or used.
"""

from __future__ import annotations

import datetime
import sqlite3

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.logger import Logger

from sosimple_proxy.overlay import domainrecords as dr
from sosimple_proxy.overlay import ids
from sosimple_proxy.overlay.entitlement import Authority, entitled
from sosimple_proxy.overlay.recordguard import RecordGuard, Refused
from sosimple_proxy.overlay.records import Record
from sosimple_proxy.overlay.signing import SignatureCheck, Signer, credential, fingerprint
from sosimple_proxy.overlay.simnet import SimCluster
from sosimple_proxy.overlay.store import SQLiteRecordStore
from sosimple_proxy.overlay.tuning import NodeConfig
from sosimple_proxy.security import nodecerts
from tests.certs import CA

M = 16
KEYS = ids.KeyScheme("flat", M)
ALICE = "alice@example.com"


class Events:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.log = Logger(observer=self.events.append)

    def refusals(self) -> list[dict]:
        return [e for e in self.events if "refused records" in e.get("log_format", "")]


def open_ring(n: int = 8, seed: int = 3, **authority):
    """A settled open ring of ``n`` guarded nodes; (cluster, events)."""
    events = Events()

    def guard(address):
        return RecordGuard(Authority(KEYS, **authority), Signer(Ed25519PrivateKey.generate()), c.clock, log=events.log)

    c = SimCluster(seed, NodeConfig(m=M, stabilize_interval=1.0, successors=4, replicas=2), guards=guard)
    c.grow(n, per_round=4)
    c.settle()
    return c, events


def registration(node, aor: str, contact: str, name: str | None = None) -> Record:
    key = KEYS.key(aor)
    value = b'{"aor":"%s","contact":"%s"}' % (aor.encode(), contact.encode())
    return Record(key, "registration", f"{node.writer}/{contact}", node.writer, value, node.clock.seconds() + 3600,
                  node.next_seq(), name=aor if name is None else name)


def held(c, key, kind="registration"):
    """What each of the key's true replica set holds: {node id: [entries]}."""
    nodes = c.by_id()
    return {nid: sorted(r.entry for r in nodes[nid].store.get(key, kind)) for nid in c.true_replica_set(key)}


# --- signatures -----------------------------------------------------------------


def test_a_signed_record_verifies_and_any_change_breaks_it():
    signer = Signer(Ed25519PrivateKey.generate())
    rec = signer.sign(Record(7, "blob", "", "w", b"value", 1e9, 1, name="x"))
    check = SignatureCheck()
    cred, why = check.check(rec)
    assert why is None and cred.fingerprint == signer.fingerprint and len(rec.owner_key_id) == 32
    for field, value in [("value", b"other"), ("seq", 2), ("expires", 2e9), ("name", "y"), ("writer", "v"), ("deleted", False)]:
        if field == "deleted":
            changed = attrs.evolve(rec, value=b"", deleted=True)
        else:
            changed = attrs.evolve(rec, **{field: value})
        assert check.check(changed)[1] == "a bad signature", field
    # another key's credential in place of the signer's
    other = Signer(Ed25519PrivateKey.generate())
    assert check.check(attrs.evolve(rec, owner_key_id=other.credential))[1] == "a bad signature"
    assert check.check(attrs.evolve(rec, signature=b""))[1] == "the record is not signed"
    assert "names no writer key" in check.check(Record(7, "blob", "", "w", b"v", 1e9, 1))[1]


def test_each_version_is_verified_once():
    signer = Signer(Ed25519PrivateKey.generate())
    check = SignatureCheck()
    recs = [signer.sign(Record(k, "blob", "", "w", b"v", 1e9, 1)) for k in range(20)]
    for _ in range(5):
        assert all(check.check(r)[1] is None for r in recs)
    bad = attrs.evolve(recs[0], value=b"evil")
    for _ in range(5):
        assert check.check(bad)[1] == "a bad signature"
    assert check.checked == 21


def test_a_ca_ring_record_carries_the_node_certificate(tmp_path):
    ca = CA("Ring CA")
    key = nodecerts.generate_key()
    cert = nodecerts.sign_node(nodecerts.make_csr(key), ca.cert, ca.key, 5, ["example.com"])
    signer = Signer(key, cert)
    rec = signer.sign(Record(7, "blob", "", "w", b"value", 1e9, 1))
    cred, why = SignatureCheck().check(rec)
    assert why is None and cred.certificate == cert
    assert cred.fingerprint == fingerprint(key.public_key())


# --- entitlement, the pure rules --------------------------------------------------


class Ctx:
    def __init__(self, domains=None, users=None, current=None, replica=True):
        self.domains, self.users, self._current, self.replica = domains or {}, users or {}, current or {}, replica

    def domain_keys(self, domain):
        return self.domains.get(domain)

    def user_key(self, aor):
        return self.users.get(aor)

    def current(self, entry_id):
        return self._current.get(entry_id)


def _reg(signer, aor=ALICE, name=None):
    rec = Record(KEYS.key(aor), "registration", "w/sip:x", "w", b"{}", 1e9, 1, name=aor if name is None else name)
    return signer.sign(rec)


def _check(rec, authority, ctx=None, now=None):
    cred = credential(rec.owner_key_id)
    return entitled(rec, cred, authority, ctx or Ctx(), now or datetime.datetime.now(datetime.timezone.utc).timestamp())


def test_ca_ring_a_node_writes_only_the_domains_its_certificate_names():
    ca = CA("Ring CA")
    auth = Authority(KEYS, (ca.cert,))

    def node(domains, days=30.0, now=None):
        key = nodecerts.generate_key()
        return Signer(key, nodecerts.sign_node(nodecerts.make_csr(key), ca.cert, ca.key, 9, domains, days=days, now=now))

    ours, rogue = node(["example.com"]), node(["other.test"])
    assert _check(_reg(ours), auth) is None
    assert _check(_reg(rogue), auth) == "its certificate does not name example.com"
    assert _check(_reg(rogue, "bob@other.test"), auth) is None
    # a key record under her AoR, too
    pk = rogue.sign(Record(KEYS.key(ALICE), "publickey", "", "w", b"00" * 32, 1e9, 1, name=ALICE))
    assert _check(pk, auth) == "its certificate does not name example.com"
    # an expired certificate, one from another CA, a bare key
    old = node(["example.com"], days=1, now=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3))
    assert _check(_reg(old), auth).startswith("an expired certificate")
    other_ca = CA("Other CA")
    k = nodecerts.generate_key()
    foreign = Signer(k, nodecerts.sign_node(nodecerts.make_csr(k), other_ca.cert, other_ca.key, 9, ["example.com"]))
    assert _check(_reg(foreign), auth) == "a certificate not issued by the ring's CA"
    assert _check(_reg(Signer(Ed25519PrivateKey.generate())), auth) == "no node certificate (a CA ring)"
    # a name that is not the key's
    assert "is not the key of its name" in _check(_reg(ours, name="bob@example.com"), auth)
    # the CA itself may write anything (rebind of a user's key)
    assert _check(_reg(Signer(ca.key, ca.cert)), auth) is None
    ca_pk = Signer(ca.key, ca.cert).sign(Record(KEYS.key(ALICE), "publickey", "", "ca", b"00" * 32, 1e9, 1, name=ALICE))
    assert _check(ca_pk, auth) is None


def test_open_ring_rules_for_domains_users_and_their_records():
    auth = Authority(KEYS)
    a, b, user = (Signer(Ed25519PrivateKey.generate()) for _ in range(3))
    listed = Ctx({"example.com": dr.DomainKeys("example.com", (a.fingerprint,))})
    assert _check(_reg(a), auth) == "example.com has no domain record"
    assert _check(_reg(a), auth, listed) is None
    assert "not listed" in _check(_reg(b), auth, listed)
    assert _check(_reg(b), Authority(KEYS, any_domain=True)) is None
    # the first domain record lists its signer; later ones need a listed key
    name = dr.domain_name("example.com")

    def domain_record(signer, keys):
        return signer.sign(Record(KEYS.key(name), "domain", "", "w", dr.encode("example.com", keys), 1e9, 2, name=name))

    assert _check(domain_record(a, [a.fingerprint]), auth) is None
    assert _check(domain_record(b, [a.fingerprint]), auth) == "a domain record must list the key that signs it"
    current = domain_record(a, [a.fingerprint])
    held = Ctx(current={current.entry_id: current})
    assert _check(domain_record(a, [a.fingerprint, b.fingerprint]), auth, held) is None
    assert "not listed" in _check(domain_record(b, [b.fingerprint]), auth, held)
    # a user's key binds her presence and named blobs
    presence = lambda s: s.sign(Record(KEYS.key(ALICE), "presence", "", "w", b"open", 1e9, 1, name=ALICE))  # noqa: E731
    blob = lambda s: s.sign(Record(KEYS.key(ALICE + "/notes"), "blob", "", "w", b"x", 1e9, 1, name=ALICE + "/notes"))  # noqa: E731
    hers = Ctx({"example.com": dr.DomainKeys("example.com", (a.fingerprint,))}, {ALICE: user.fingerprint})
    assert _check(presence(user), auth, hers) is None and _check(blob(user), auth, hers) is None
    assert _check(presence(a), auth, hers) == f"not the key of {ALICE}"
    assert _check(blob(b), auth, hers) == f"not the key of {ALICE}"
    # before she has a key, her domain's nodes write for her
    assert _check(presence(a), auth, listed) is None and "not listed" in _check(presence(b), auth, listed)
    # her key record: a node of her domain, or her current key (she rotates it)
    pk = lambda s, v: s.sign(Record(KEYS.key(ALICE), "publickey", "", "w", v, 1e9, 1, name=ALICE))  # noqa: E731
    new_key = Ed25519PrivateKey.generate().public_key()
    assert _check(pk(a, fingerprint(new_key).encode()), auth, hers) is None
    assert _check(pk(user, fingerprint(new_key).encode()), auth, hers) is None
    assert "not listed" in _check(pk(b, fingerprint(new_key).encode()), auth, hers)
    # unnamed records: any node
    assert _check(b.sign(Record(99, "blob", "", "w", b"x", 1e9, 1)), auth) is None


# --- on the ring ------------------------------------------------------------------


def test_open_ring_first_writer_lists_itself_and_others_are_refused_on_every_replica():
    c, events = open_ring()
    a, b, other = c.joined()[:3]
    key = KEYS.key(ALICE)
    assert c.wait(a.put(registration(a, ALICE, "sip:alice@10.0.0.1"))) == 3
    domain = c.wait(a.guard.domain_record("example.com"))
    assert dr.decode(domain.value).keys == (a.guard.signer.fingerprint,)
    assert all(h == [f"{a.writer}/sip:alice@10.0.0.1"] for h in held(c, key).values())
    # b is not listed: its writes of her AoR are refused everywhere
    for i in range(5):
        c.wait(b.put(registration(b, ALICE, f"sip:evil{i}@10.6.6.6")))
    c.run(5)  # syncs too
    assert all(h == [f"{a.writer}/sip:alice@10.0.0.1"] for h in held(c, key).values())
    assert all(len(c.wait(n.get(key, "registration"))) == 1 for n in c.joined())
    # logged once per replica (writer, reason), not once per record
    lines = events.refusals()
    assert lines and all(e["key"] == b.guard.signer.fingerprint for e in lines)
    assert len(lines) <= 3 + 1, [e["log_format"] for e in lines]
    assert sum(n.guard.refusals.get("its key is not listed in the domain record of example.com", 0) for n in c.joined()) >= 15
    # b cannot rewrite the domain record either
    with pytest.raises(Refused):
        c.wait(b.guard.change_domain("example.com", add=[b.guard.signer.fingerprint]))
    forged = b.guard.signer.sign(
        Record(domain.key, "domain", "", b.writer, dr.encode("example.com", [b.guard.signer.fingerprint]),
               domain.expires, domain.seq + 10, name=domain.name)
    )
    c.wait(b.put(forged))
    assert dr.decode(c.wait(other.guard.domain_record("example.com")).value).keys == (a.guard.signer.fingerprint,)
    # authorize b: then both bindings are kept
    c.wait(a.guard.change_domain("example.com", add=[b.guard.signer.fingerprint]))
    b.guard._known.clear()
    for n in c.joined():
        n.guard._known.clear()
    c.wait(b.put(registration(b, ALICE, "sip:alice@10.0.0.2")))
    c.run(3)
    want = sorted([f"{a.writer}/sip:alice@10.0.0.1", f"{b.writer}/sip:alice@10.0.0.2"])
    assert all(h == want for h in held(c, key).values())
    assert [r.entry for r in c.wait(other.get(key, "registration"))] == want
    # rebind to a new key (c's): a is no longer listed
    newcomer = c.joined()[3]
    c.wait(a.guard.change_domain("example.com", replace=[newcomer.guard.signer.fingerprint]))
    for n in c.joined():
        n.guard._known.clear()
    c.wait(a.put(registration(a, "carol@example.com", "sip:carol@10.0.0.3")))
    c.wait(newcomer.put(registration(newcomer, "dave@example.com", "sip:dave@10.0.0.4")))
    c.run(3)
    assert c.wait(other.get(KEYS.key("carol@example.com"), "registration")) == []
    assert len(c.wait(other.get(KEYS.key("dave@example.com"), "registration"))) == 1
    with pytest.raises(Refused):
        c.wait(a.guard.change_domain("example.com", add=[a.guard.signer.fingerprint]))


def test_a_users_key_binds_her_presence_on_the_ring():
    c, _ = open_ring(seed=5)
    a, b = c.joined()[:2]
    c.wait(a.put(registration(a, ALICE, "sip:alice@10.0.0.1")))  # a claims example.com
    user = Signer(Ed25519PrivateKey.generate())
    key = KEYS.key(ALICE)
    c.wait(a.put(Record(key, "publickey", "", a.writer, user.fingerprint.encode(), 1e9, a.next_seq(), name=ALICE)))
    # a rogue node's key record under her AoR is refused
    c.wait(b.put(Record(key, "publickey", "", b.writer, b.guard.signer.fingerprint.encode(), 1e9, 10**15, name=ALICE)))
    assert c.wait(b.get(key, "publickey"))[0].value == user.fingerprint.encode()
    # her presence, signed by her key, is kept; the node's own is refused now
    c.wait(a.put(user.sign(Record(key, "presence", "", "alice", b"online", 1e9, 5, name=ALICE))))
    c.wait(a.put(Record(key, "presence", "", a.writer, b"forged", 1e9, 6, name=ALICE)))
    c.run(2)
    assert [r.value for r in c.wait(b.get(key, "presence"))] == [b"online"]


def test_a_reader_drops_a_forged_record_a_replica_serves():
    c, _ = open_ring(seed=7)
    a = c.joined()[0]
    c.wait(a.put(registration(a, ALICE, "sip:alice@10.0.0.1")))
    c.run(2)  # a holder keeps a record once its check (a ring read) passed, after it acknowledged
    key = KEYS.key(ALICE)
    nodes = c.by_id()
    # every holder's copy is edited in place (a lying replica, or a bad disk)
    for nid in c.true_replica_set(key):
        store = nodes[nid].store
        (rec,) = store.get(key, "registration")
        store._by_key[key][("registration", rec.entry)] = attrs.evolve(rec, value=b'{"contact":"sip:evil@10.6.6.6"}')
    reader = next(n for n in c.joined() if n.id not in c.true_replica_set(key))
    assert c.wait(reader.get(key, "registration")) == []


def test_a_record_edited_on_disk_is_dropped_at_load(tmp_path):
    signer = Signer(Ed25519PrivateKey.generate())
    guard = RecordGuard(Authority(KEYS), signer, type("C", (), {"seconds": staticmethod(lambda: 100.0)})())
    store = SQLiteRecordStore(str(tmp_path), lambda: 100.0, guard.check_stored)
    good = signer.sign(Record(1, "blob", "", "w", b"good", 1e9, 1))
    other = signer.sign(Record(2, "blob", "", "w", b"kept", 1e9, 1))
    store.put_many([good, other])
    store.close()
    db = sqlite3.connect(str(tmp_path / SQLiteRecordStore.FILENAME))
    with db:
        db.execute("UPDATE records SET value = ? WHERE value = ?", (b"evil", b"good"))
    db.close()
    again = SQLiteRecordStore(str(tmp_path), lambda: 100.0, guard.check_stored)
    assert again.get(1) == [] and again.get(2) == [other]
    again.close()
    # and it is gone from the disk, not just from memory
    db = sqlite3.connect(str(tmp_path / SQLiteRecordStore.FILENAME))
    assert db.execute("SELECT count(*) FROM records").fetchone() == (1,)
    db.close()


def test_a_forged_record_on_one_replica_does_not_spread_by_sync():
    c, events = open_ring(seed=11)
    a = c.joined()[0]
    c.wait(a.put(registration(a, ALICE, "sip:alice@10.0.0.1")))
    key = KEYS.key(ALICE)
    nodes = c.by_id()
    first, *others = c.true_replica_set(key)
    # an entry nobody signed appears in one holder's store (a bad disk, a bad peer)
    (rec,) = nodes[first].store.get(key, "registration")
    forged = attrs.evolve(rec, entry=f"{a.writer}/sip:evil@10.6.6.6", value=b'{"contact":"sip:evil@10.6.6.6"}')
    nodes[first].store.put(forged)
    c.run(6)  # several sync rounds, both ways
    for nid in others:
        assert [r.entry for r in nodes[nid].store.get(key, "registration")] == [rec.entry]
    # handed over by the holder's sync (a "store" of what the others lack), refused there
    assert any(e.get("why") == "a bad signature" for e in events.refusals())


def test_the_users_store_records_need_her_domain_or_her_key():
    auth = Authority(KEYS)
    a, b, user = (Signer(Ed25519PrivateKey.generate()) for _ in range(3))
    ctx = Ctx({"example.com": dr.DomainKeys("example.com", (a.fingerprint,))}, {ALICE: user.fingerprint})
    data = lambda s, name=ALICE: s.sign(Record(KEYS.key(name), "userdata", "friends", "w", b"x", 1e9, 1, name=name))  # noqa: E731
    assert _check(data(a), auth, ctx) is None and _check(data(user), auth, ctx) is None
    assert "not listed" in _check(data(b), auth, ctx)
    unnamed = b.sign(Record(KEYS.key(ALICE), "userdata", "friends", "w", b"x", 1e9, 1))
    assert _check(unnamed, auth, ctx) == "the users' store's records must be named by their AoR"
