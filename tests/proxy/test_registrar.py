"""Registrar rules of RFC 3261 section 10.3 (and RFC 3327, RFC 5626), with Clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sosimple_proxy.location.bindings import BindingTable
from sosimple_proxy.proxy.registrar import Registrar
from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.sip.address import ListenAddress
from sosimple_proxy.sip.parser import ParseError, parse_message

ADDRESSING = Addressing(["example.com"], [ListenAddress("udp", "127.0.0.1", 5060)])


def register(
    contacts: list[str] | None = None,
    *,
    expires: int | None = None,
    call_id: str = "reg-1@host",
    cseq: int = 1,
    to: str = "<sip:alice@example.com>",
    ruri: str = "sip:example.com",
    extra: str = "",
    validate: bool = True,
):
    lines = [
        f"REGISTER {ruri} SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-" + f"{call_id}-{cseq}".replace("@", "."),
        "Max-Forwards: 70",
        f"To: {to}",
        "From: <sip:alice@example.com>;tag=f1",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
    ]
    for c in contacts or []:
        lines.append(f"Contact: {c}")
    if expires is not None:
        lines.append(f"Expires: {expires}")
    if extra:
        lines.append(extra)
    lines += ["Content-Length: 0", "", ""]
    return parse_message("\r\n".join(lines).encode(), validate=validate)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def registrar(clock):
    table = BindingTable(clock)
    return Registrar(
        clock, table, min_expires=60, max_expires=3600, default_expires=1800, max_contacts=3, is_ours=ADDRESSING.is_ours
    )


def contacts_of(response):
    return response.headers.values("contact")


def test_register_adds_binding_and_lists_it_with_expiry(registrar, clock):
    r = registrar.handle(register(["<sip:alice@127.0.0.1:5070>"], expires=600))
    assert r.status == 200
    assert contacts_of(r) == ["<sip:alice@127.0.0.1:5070>;expires=600"]
    assert r.headers.get("date")
    assert r.to.tag, "a 200 to REGISTER carries a To tag"
    clock.advance(100)
    r = registrar.handle(register([], cseq=2))  # a query: no Contact
    assert contacts_of(r) == ["<sip:alice@127.0.0.1:5070>;expires=500"]


def test_default_and_contact_param_expires(registrar):
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>", "<sip:b@127.0.0.1:2>;expires=120"]))
    assert sorted(contacts_of(r)) == ["<sip:a@127.0.0.1:1>;expires=1800", "<sip:b@127.0.0.1:2>;expires=120"]


def test_too_brief_is_423_with_min_expires(registrar):
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=30))
    assert r.status == 423
    assert r.headers.get("min-expires") == "60"
    assert registrar.table.lookup("alice@example.com") == []


def test_too_long_is_clamped(registrar):
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=999999))
    assert contacts_of(r) == ["<sip:a@127.0.0.1:1>;expires=3600"]


def test_bindings_expire_on_time(registrar, clock):
    registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=60))
    clock.advance(59)
    assert len(registrar.table.lookup("alice@example.com")) == 1
    clock.advance(1)
    assert registrar.table.lookup("alice@example.com") == []


def test_refresh_and_remove(registrar, clock):
    registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=100))
    clock.advance(90)
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=100, cseq=2))
    assert contacts_of(r) == ["<sip:a@127.0.0.1:1>;expires=100"]
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=0, cseq=3))
    assert r.status == 200 and contacts_of(r) == []


def test_star_removes_all_only_with_expires_zero(registrar):
    registrar.handle(register(["<sip:a@127.0.0.1:1>", "<sip:b@127.0.0.1:2>"]))
    r = registrar.handle(register(["*"], cseq=2))
    assert r.status == 400
    # "*" beside another Contact: the parser refuses it (so the stack
    # answers 400), and the registrar does too if handed such a request.
    with pytest.raises(ParseError, match="only Contact"):
        register(["*", "<sip:a@127.0.0.1:1>"], expires=0, cseq=3)
    r = registrar.handle(register(["*", "<sip:a@127.0.0.1:1>"], expires=0, cseq=3, validate=False))
    assert r.status == 400
    r = registrar.handle(register(["*"], expires=0, cseq=4))
    assert r.status == 200 and contacts_of(r) == []


def test_older_cseq_same_call_id_does_not_overwrite(registrar):
    registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=600, cseq=5))
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=0, cseq=4))
    assert r.status >= 400
    assert len(registrar.table.lookup("alice@example.com")) == 1
    # another Call-ID may update regardless of CSeq
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=0, cseq=1, call_id="other@host"))
    assert r.status == 200 and contacts_of(r) == []


def test_q_values_order_lookup(registrar):
    registrar.handle(register(["<sip:low@127.0.0.1:1>;q=0.2", "<sip:high@127.0.0.1:2>;q=0.9"]))
    found = registrar.table.lookup("alice@example.com")
    assert [b.contact for b in found] == ["sip:high@127.0.0.1:2", "sip:low@127.0.0.1:1"]
    assert [b.q for b in found] == [0.9, 0.2]
    r = registrar.handle(register(["<sip:x@127.0.0.1:1>;q=1.5"], cseq=2))
    assert r.status == 400


def test_max_contacts(registrar):
    r = registrar.handle(register([f"<sip:c{i}@127.0.0.1:{i}>" for i in range(1, 5)]))
    assert r.status == 403
    assert registrar.table.lookup("alice@example.com") == []


def test_unknown_uri_param_kept(registrar):
    # RFC 4475 3.3.13 (cparam02): the binding keeps ;unknownparam
    r = registrar.handle(register(["<sip:+19725552222@gw1.example.net;unknownparam>"]))
    assert r.status == 200
    assert contacts_of(r) == ["<sip:+19725552222@gw1.example.net;unknownparam>;expires=1800"]


def test_path_is_stored_and_returned(registrar):
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], extra="Path: <sip:edge.example.com;lr>"))
    assert r.headers.values("path") == ["<sip:edge.example.com;lr>"]
    assert registrar.table.lookup("alice@example.com")[0].path == ("<sip:edge.example.com;lr>",)


def test_instance_id_replaces_own_binding(registrar):
    inst = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1'
    registrar.handle(register([f"<sip:a@127.0.0.1:1>;{inst}"], call_id="c1"))
    registrar.handle(register([f"<sip:a@127.0.0.1:9999>;{inst}"], call_id="c2"))
    found = registrar.table.lookup("alice@example.com")
    assert [b.contact for b in found] == ["sip:a@127.0.0.1:9999"]
    assert found[0].instance == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'


def test_foreign_domain_is_403(registrar):
    r = registrar.handle(register(["<sip:a@127.0.0.1:1>"], ruri="sip:other.test", to="<sip:alice@other.test>"))
    assert r.status == 403


def test_unparsable_contact_is_400_naming_it(registrar):
    r = registrar.handle(register(["<sip:a@127.0.0.1:1"], validate=False))
    assert r.status == 400
    assert "Contact" in r.reason


def test_aor_canonical_form(registrar):
    registrar.handle(register(["<sip:a@127.0.0.1:1>"], to="<sip:%61lice@EXAMPLE.com;user=phone>"))
    assert len(registrar.table.lookup("alice@example.com")) == 1


# --- issue 15: the 200 waits for the ring's write quorum


def waiting_registrar(clock, commit):
    table = BindingTable(clock)
    return Registrar(
        clock,
        table,
        min_expires=60,
        max_expires=3600,
        default_expires=1800,
        max_contacts=3,
        is_ours=ADDRESSING.is_ours,
        commit=commit,
        commit_timeout=4.0,
    )


def answered(d):
    got = []
    d.addCallback(got.append)
    return got


def test_the_200_waits_for_the_ring_write_to_be_done(clock):
    from twisted.internet.defer import Deferred

    pending = Deferred()
    asked = []
    registrar = waiting_registrar(clock, lambda aor: asked.append(aor) or pending)
    got = answered(registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=600)))
    assert asked == ["alice@example.com"] and got == []
    clock.advance(1)
    pending.callback(True)
    assert got[0].status == 200


def test_a_ring_write_not_done_in_time_is_a_500_with_retry_after(clock):
    from twisted.internet.defer import Deferred

    registrar = waiting_registrar(clock, lambda aor: Deferred())
    got = answered(registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=600)))
    clock.advance(3.9)
    assert got == []
    clock.advance(0.2)
    assert got[0].status == 500 and got[0].headers.get("retry-after") == "4"


def test_a_failed_ring_write_is_a_500_and_nothing_to_write_is_a_200_at_once(clock):
    from twisted.internet.defer import succeed

    failed = waiting_registrar(clock, lambda aor: succeed(False))
    got = answered(failed.handle(register(["<sip:a@127.0.0.1:1>"], expires=600)))
    assert got[0].status == 500
    quiet = waiting_registrar(clock, lambda aor: None)
    assert quiet.handle(register(["<sip:a@127.0.0.1:1>"], expires=600)).status == 200
    # a refused REGISTER never waits
    assert failed.handle(register(["<sip:a@127.0.0.1:1>"], expires=30)).status == 423


def test_a_retransmission_that_finds_its_own_bindings_gets_its_200_again(registrar, clock):
    """[proxy] workers: the REGISTER's retransmission may reach another
    worker than the one that applied it (or that one died before its 200);
    it is answered as its transaction would have been, not 400."""
    first = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=600, cseq=7))
    assert first.status == 200
    clock.advance(2)
    again = registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=600, cseq=7))
    assert again.status == 200 and contacts_of(again) == contacts_of(registrar.handle(register([], cseq=8)))
    assert registrar.table.lookup("alice@example.com")[0].registered_at == 0  # nothing changed
    # after 64*T1 it is no retransmission: the RFC's 400
    clock.advance(40)
    assert registrar.handle(register(["<sip:a@127.0.0.1:1>"], expires=600, cseq=7)).status == 400
