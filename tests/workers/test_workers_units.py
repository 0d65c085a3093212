"""The pieces of ``[proxy] workers`` that need no processes: branch tags,
the handoff's framing and choice, shared bindings, the hub's relay, the
config key."""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.sip import handoff, worker_tag
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.via import new_branch
from sosimple_proxy.workers.hub import Hub, WorkerLink
from sosimple_proxy.workers.protocol import Hello, bindings_from_json, bindings_to_json
from sosimple_proxy.workers.shared_bindings import SharedBindings


@pytest.fixture
def worker_one():
    worker_tag.set_worker(1)
    yield
    worker_tag.set_worker(None)


def test_branches_name_their_worker_only_in_a_worker(worker_one):
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and worker_tag.owner(branch) == 1
    worker_tag.set_worker(None)
    assert worker_tag.owner(new_branch()) is None


def response(branch: str) -> bytes:
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport=5060\r\n"
            "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKcaller.w0\r\nCSeq: 1 MESSAGE\r\n\r\n").encode()


def test_the_owner_of_a_response_is_read_from_its_top_via_only():
    assert handoff.response_owner(response("z9hG4bKsp0011.aabb.w3")) == 3
    assert handoff.response_owner(response("z9hG4bKsp0011.aabb")) is None  # the caller's .w0 below does not count
    compact = b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx.w2\r\n\r\n"
    assert handoff.response_owner(compact) == 2


def test_framing_keeps_the_source_and_the_local_address():
    source, local = Peer("udp", "192.0.2.7", 5070), ListenAddress("udp", "127.0.0.1", 5060)
    data, s, l = handoff.decode(handoff.encode(b"SIP/2.0 200 OK\r\n\r\n", source, local))
    assert (data, s, l) == (b"SIP/2.0 200 OK\r\n\r\n", source, local)
    with pytest.raises(ValueError):
        handoff.decode(b"no header at all")


class Port:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str]] = []

    def write(self, data: bytes, path: str) -> None:
        self.sent.append((data, path))


def test_only_another_workers_responses_are_passed_on(tmp_path):
    h = handoff.Handoff(Clock(), 0, 2, str(tmp_path), sink=None)  # type: ignore[arg-type]
    h.port = Port()
    src, local = Peer("udp", "127.0.0.1", 5070), ListenAddress("udp", "127.0.0.1", 5060)
    assert not h.elsewhere(response("z9hG4bKsp1.a.w0"), src, local)  # ours
    assert not h.elsewhere(response("z9hG4bKsp1.a.w7"), src, local)  # no such worker
    assert not h.elsewhere(b"MESSAGE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK.w1\r\n\r\n", src, local)
    assert h.elsewhere(response("z9hG4bKsp1.a.w1"), src, local)
    (packet, path), = h.port.sent
    assert path == os.path.join(str(tmp_path), "w1.sock") and handoff.decode(packet)[1] == src
    # over a stream too: a response on our connection to another worker's request
    assert h.elsewhere(response("z9hG4bKsp1.a.w1"), Peer("tcp", "127.0.0.1", 5070), local)


class Sink:
    def __init__(self) -> None:
        self.got: list = []

    def messageReceived(self, data, source, local):  # noqa: ANN001
        self.got.append((data, source, local))


def test_workers_learn_each_others_connections_and_send_through_them(tmp_path):
    """C/X/H/O between two Handoffs wired back to back (no sockets)."""
    peer = Peer("tcp", "192.0.2.9", 40000)
    sent_on_own: list = []
    own = [peer]
    a = handoff.Handoff(Clock(), 0, 2, str(tmp_path), Sink(), send_stream=lambda d, p: sent_on_own.append((d, p)),
                        streams=lambda: list(own))
    b = handoff.Handoff(Clock(), 1, 2, str(tmp_path), Sink())
    a.port, b.port = Port(), Port()

    def deliver(src: handoff.Handoff, dst: handoff.Handoff) -> None:
        for packet, _ in src.port.sent:
            dst.received(*handoff.decode_any(packet))
        src.port.sent.clear()

    a.stream_opened(peer)
    deliver(a, b)
    assert b.holder(peer) == 0
    assert b.send_via(0, b"MESSAGE ...", peer)
    deliver(b, a)
    assert sent_on_own == [(b"MESSAGE ...", peer)]
    a.stream_closed(peer)
    deliver(a, b)
    assert b.holder(peer) is None
    # a restarted worker says hello and hears of the connections the others hold
    b.hello()
    deliver(b, a)
    deliver(a, b)
    assert b.holder(peer) == 0


def test_a_cancel_goes_round_the_workers_once(tmp_path):
    src, local = Peer("udp", "127.0.0.1", 5070), ListenAddress("udp", "127.0.0.1", 5060)
    h = handoff.Handoff(Clock(), 1, 3, str(tmp_path), Sink())
    h.port = Port()
    assert h.pass_cancel(b"CANCEL ...", src, local)
    (packet, path), = h.port.sent
    assert path.endswith("w2.sock") and handoff.decode_any(packet)[4] == 1
    h.hops = 2  # the two others have seen it: answer here
    assert not h.pass_cancel(b"CANCEL ...", src, local)


def test_an_ack_matching_nothing_goes_round_unless_it_is_a_dialogs():
    src, local = Peer("udp", "127.0.0.1", 5070), ListenAddress("udp", "127.0.0.1", 5060)
    h = handoff.Handoff(Clock(), 0, 2, str(tmp_path_dir := "/nonexistent"), Sink())
    h.port = Port()
    assert h.pass_ack(object(), b"ACK ...", src, local)  # a non-2xx's ACK may be worker 1's
    (packet, path), = h.port.sent
    assert path == tmp_path_dir + "/w1.sock" and handoff.decode_any(packet)[4] == 1
    h.in_dialog = lambda ack: True  # a 2xx's ACK (our stamp): routed here
    assert not h.pass_ack(object(), b"ACK ...", src, local) and len(h.port.sent) == 1
    h.in_dialog, h.hops = (lambda ack: False), 1  # back from the round: ours to route
    assert not h.pass_ack(object(), b"ACK ...", src, local)


def binding(aor: str, contact: str) -> Binding:
    return Binding(aor, contact, 1e12, "cid", 1, path=("<sip:p;lr>",), received="udp:127.0.0.1:5070")


def test_bindings_survive_json():
    bindings = [binding("a@x", "sip:a@h:1"), binding("a@x", "sip:a@h:2")]
    assert bindings_from_json(bindings_to_json(bindings)) == bindings


def test_shared_bindings_send_local_changes_and_apply_remote_ones_silently():
    table, sent = BindingTable(Clock()), []
    shared = SharedBindings(table, lambda aor, b, removed: sent.append((aor, b, removed)))
    one = binding("a@x", "sip:a@h:1")
    table.replace("a@x", [one])
    assert sent == [("a@x", [one], [])]
    shared.apply("b@x", [binding("b@x", "sip:b@h:1")])
    assert len(sent) == 1 and table.lookup("b@x")
    two = binding("a@x", "sip:a@h:2")
    table.replace("a@x", [two])  # only the delta goes: one new, one gone
    assert sent[-1] == ("a@x", [two], [one])


def hub_and_workers(count: int, parent_table: BindingTable | None = None):
    hub = Hub(parent_table if parent_table is not None else BindingTable(Clock()), {})
    tables, pumps = [], []
    for index in range(count):
        table = BindingTable(Clock())
        client, server, pump = connectedServerAndClient(lambda: hub.buildProtocol(None),
                                                        lambda t=table: WorkerLink(t, lambda: None))
        client.callRemote(Hello, index=index)
        pump.flush()
        tables.append(table)
        pumps.append(pump)
    return hub, tables, pumps


def test_two_workers_registering_one_aor_at_once_both_keep_their_binding():
    """Issue 12: REGISTERs for one AoR at two workers before either hears
    of the other's: every table ends with both bindings (a whole set sent
    each way would have overwritten one of them)."""
    hub, tables, pumps = hub_and_workers(2)
    tables[0].replace("a@x", [binding("a@x", "sip:a@h:1")])
    tables[1].replace("a@x", [binding("a@x", "sip:a@h:2")])
    for pump in pumps + pumps:
        pump.flush()
    for table in (hub.table, *tables):
        assert sorted(b.contact for b in table.lookup("a@x")) == ["sip:a@h:1", "sip:a@h:2"]


def test_the_newer_registration_of_one_binding_wins_in_every_order():
    hub, tables, pumps = hub_and_workers(2)
    old = binding("a@x", "sip:a@h:1")
    new = Binding("a@x", "sip:a@h:1", 2e12, "cid", 2, registered_at=5.0)
    tables[0].replace("a@x", [new])
    tables[1].replace("a@x", [old])
    for pump in pumps + pumps:
        pump.flush()
    for table in (hub.table, *tables):
        assert table.lookup("a@x") == [new]
    # an older copy's removal (an expiry swept late) leaves the renewal
    SharedBindings(hub.table, lambda *a: None).apply("a@x", [], [old])
    assert hub.table.lookup("a@x") == [new]


def test_the_hub_gives_a_new_worker_every_binding_and_relays_changes_to_the_others():
    parent_table = BindingTable(Clock())
    parent_table.replace("old@x", [binding("old@x", "sip:old@h:1")])
    hub = Hub(parent_table, {})
    tables, pumps = [], []
    for index in range(2):
        table = BindingTable(Clock())
        client, server, pump = connectedServerAndClient(lambda: hub.buildProtocol(None),
                                                        lambda t=table: WorkerLink(t, lambda: None))
        answers = []
        client.callRemote(Hello, index=index).addCallback(answers.append)
        pump.flush()
        assert answers == [{"bindings": 1}] and table.lookup("old@x")
        tables.append(table)
        pumps.append(pump)
    tables[0].replace("new@x", [binding("new@x", "sip:new@h:1")])
    for pump in pumps + pumps:  # worker -> hub, then hub -> the other worker
        pump.flush()
    assert tables[1].lookup("new@x") and parent_table.lookup("new@x")
    tables[1].replace("new@x", [])
    for pump in pumps + pumps:  # worker -> hub, then hub -> the other worker
        pump.flush()
    assert not tables[0].lookup("new@x") and not parent_table.lookup("new@x")


def test_the_workers_key():
    base = "[proxy]\nlisten = udp:127.0.0.1:5060\n"
    assert parse_config(base).proxy["workers"] == 1
    assert parse_config(base + "workers = auto\n").proxy["workers"] == max(1, os.cpu_count() or 1)
    with pytest.raises(ConfigError, match=r"\[proxy\] workers: 0 is below the minimum of 1"):
        parse_config(base + "workers = 0\n")
    with pytest.raises(ConfigError, match=r"\[proxy\] listen: .*needs its port"):
        parse_config("[proxy]\nlisten = udp:127.0.0.1:0\nworkers = 2\n")


def test_a_workers_register_answer_waits_for_the_parents_ring_write():
    """Issue 12 + 15: the parent writes the rings; a worker's 200 waits for
    its word over the hub, and a write that failed is a 500 with Retry-After."""
    from twisted.internet import defer

    from sosimple_proxy.proxy.registrar import Registrar
    from sosimple_proxy.workers.remote_ring import remote_commit
    from tests.proxy.test_registrar import ADDRESSING, register

    clock = Clock()
    hub, tables, pumps = hub_and_workers(1)
    writes: dict[str, defer.Deferred] = {}

    def commit(aor: str):
        # like ring_commit: the delta is in the parent's table already
        assert hub.table.lookup(aor), "the commit overtook the bindings"
        return writes.setdefault(aor, defer.Deferred())

    hub.commit = commit
    link = list(hub.lines.values())[0]
    registrar = Registrar(clock, tables[0], min_expires=60, max_expires=3600, default_expires=1800, max_contacts=3,
                          is_ours=ADDRESSING.is_ours, commit=remote_commit(lambda: pumps[0].client),
                          commit_timeout=4.0)
    assert link.index == 0
    answers = []
    registrar.handle(register(["<sip:alice@127.0.0.1:5070>"])).addCallback(answers.append)
    pumps[0].flush()
    assert answers == [] and "alice@example.com" in writes  # waiting for the quorum
    writes.pop("alice@example.com").callback(True)
    pumps[0].flush()
    assert answers[0].status == 200
    registrar.handle(register(["<sip:alice@127.0.0.1:5071>"], cseq=2)).addCallback(answers.append)
    pumps[0].flush()
    writes.pop("alice@example.com").callback(False)
    pumps[0].flush()
    assert answers[1].status == 500 and answers[1].headers.get("retry-after") == "4"
    # no line to the parent: never a 200 the ring may not have
    no_line = Registrar(clock, BindingTable(clock), min_expires=60, max_expires=3600, default_expires=1800,
                        max_contacts=3, is_ours=ADDRESSING.is_ours, commit=remote_commit(lambda: None))
    no_line.handle(register(["<sip:alice@127.0.0.1:5072>"])).addCallback(answers.append)
    assert answers[2].status == 500


def test_each_worker_enforces_its_share_of_the_proxys_caps():
    from sosimple_proxy.security.limits import LimitsConfig
    from sosimple_proxy.workers.shared_limits import worker_share

    config = LimitsConfig(max_connections=1024, max_connections_per_source=5, max_transactions=0, burst=7)
    share = worker_share(config, 2)
    assert (share.max_connections, share.max_connections_per_source, share.max_transactions) == (512, 3, 0)
    assert share.burst == 7  # rates are summed in the parent, not divided
    assert worker_share(config, 1) == config


class _Txn:
    def __init__(self, method: str, host: str) -> None:
        from types import SimpleNamespace

        self.request = SimpleNamespace(method=method)
        self.source = SimpleNamespace(host=host)
        self.terminated = False


def test_the_parent_sums_the_workers_sip_counts_for_metrics_and_calls():
    """Issue 12: /metrics' SIP families and GET /calls in the parent show
    every worker's transactions (each reports its increments and gauges)."""
    from types import SimpleNamespace

    from sosimple_proxy.metrics import Metrics, Sources
    from sosimple_proxy.web.views import Views, calls_report
    from sosimple_proxy.workers.shared_metrics import MergedTally, MetricsReporter, ReportingTally, WorkersStack

    clock = Clock()
    clock.advance(1000)
    hub, tables, pumps = hub_and_workers(2)
    merged = hub.metrics = MergedTally(clock)
    reporters, pending = [], []
    for index in range(2):
        tally = ReportingTally(clock)
        layer = SimpleNamespace(server_count=3 + index, client_count=1)
        stack = SimpleNamespace(transactions=layer, transport=SimpleNamespace(tls=SimpleNamespace(handshake_failures=index)))
        sources = Sources(sip=tally, stack=stack)
        reporter = MetricsReporter(clock, sources, lambda p=pumps[index]: p.client)
        reporter.startService()
        reporters.append(reporter)
        for n in range(4):
            txn = _Txn("OPTIONS", f"127.0.0.{index + 1}")
            tally.request(txn)
            tally.final(txn, 200)
        invite = _Txn("INVITE", "127.0.0.9")
        tally.request(invite)  # still ringing
        pending.append(invite)
    clock.advance(1.0)
    for pump in pumps:
        pump.flush()
    text = Metrics(Sources(sip=merged, stack=WorkersStack(merged))).render().decode()
    assert 'sosimple_sip_requests_total{method="OPTIONS"} 8.0' in text
    assert 'sosimple_sip_responses_total{code="200",method="OPTIONS"} 8.0' in text
    assert 'sosimple_sip_active_transactions{side="server"} 7.0' in text
    assert "sosimple_sip_tls_handshake_failures_total 1.0" in text
    body = calls_report(Views(sip=merged, stack=WorkersStack(merged)), clock.seconds())
    assert body["last_minute"]["by_method"] == {"OPTIONS": {"200": 8}}
    assert body["current"]["calls_setting_up"] == 2 and body["current"]["server_transactions"] == 7
    assert {s["address"]: s["requests"] for s in body["top_sources"]} == {"127.0.0.1": 4, "127.0.0.2": 4, "127.0.0.9": 2}
    # counts are sent once: the next report adds only what is new
    reporters[0].sources.sip.final(pending[0], 486)
    clock.advance(1.0)
    for pump in pumps:
        pump.flush()
    assert merged.responses == {("OPTIONS", 200): 8, ("INVITE", 486): 1}
    assert merged.requests == {"OPTIONS": 8, "INVITE": 2}
    # a worker's line lost: its gauges go, its counts stay
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    hub.lines[0].connectionLost(Failure(ConnectionDone()))
    assert merged.pending() == {"INVITE": 1} and merged.requests["OPTIONS"] == 8
    for reporter in reporters:
        reporter.stopService()


def test_big_values_cross_the_hub_in_pieces():
    from sosimple_proxy.workers.protocol import BigBytes

    arg, strings = BigBytes(), {}
    value = bytes(range(256)) * 700  # 179200 bytes: three AMP values
    arg.toBox(b"records", strings, {"records": value}, None)
    assert sorted(strings) == [b"records", b"records.2", b"records.3"]
    assert all(len(v) <= 0xFFFF for v in strings.values())
    out: dict = {}
    arg.fromBox(b"records", strings, out, None)
    assert out["records"] == value
    arg.toBox(b"empty", strings, {"empty": b""}, None)
    arg.fromBox(b"empty", strings, out, None)
    assert out["empty"] == b""


class _FakePresenceRing:
    """What the parent's responders use of a PresenceRing (a real one needs a joined node)."""

    writer = "parent-node"

    def __init__(self) -> None:
        self.callbacks: dict[int, object] = {}

    def watch(self, name, callback):
        ring = self
        key = len(self.callbacks)
        self.callbacks[key] = callback
        callback([])  # a node's watch calls back at once

        class W:
            def cancel(self):
                ring.callbacks.pop(key, None)

        return W()


def test_a_workers_presence_watch_lives_in_the_parent_and_ends_with_its_line():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from sosimple_proxy.workers.shared_presence import RemotePresenceRing

    hub, tables, pumps = hub_and_workers(1)
    ring = hub.presence = _FakePresenceRing()
    remote = RemotePresenceRing(lambda: pumps[0].client)
    pumps[0].client.presence = remote
    remote.startService()
    pumps[0].flush()
    assert remote.writer == "parent-node"
    heard = []
    watch = remote.watch("bob@example.com", heard.append)
    pumps[0].flush()
    assert heard == [[]] and len(ring.callbacks) == 1
    watch.cancel()
    pumps[0].flush()
    assert ring.callbacks == {}
    remote.watch("bob@example.com", heard.append)
    pumps[0].flush()
    assert len(ring.callbacks) == 1
    hub.lines[0].connectionLost(Failure(ConnectionDone()))
    assert ring.callbacks == {}  # the worker is gone: so is its watch


def test_a_worker_is_built_with_its_shares_presence_and_the_rings_commit(tmp_path):
    """build_worker (nothing started): the caps divided among the workers,
    the presence agent on the parent's ring, the REGISTER's wait for the
    parent's ring write, the counts reported to the parent."""
    from sosimple_proxy.presence.agent import PresenceAgent
    from sosimple_proxy.proxy.chain import Presence
    from sosimple_proxy.wiring import build_worker
    from sosimple_proxy.workers.parent import write_secret
    from sosimple_proxy.workers.shared_metrics import MetricsReporter
    from sosimple_proxy.workers.shared_presence import RemotePresenceRing

    write_secret(str(tmp_path), b"s" * 32)
    cfg = parse_config(
        "[proxy]\nlisten = udp:127.0.0.1:5060\ndomains = example.com\nworkers = 3\n"
        "[location]\norder = local overlay\n[overlay]\nlisten = tcp:7001:interface=127.0.0.1\n"
        "[presence]\nmax_subscriptions = 10\n[limits]\nmax_transactions = 100\n"
    )
    try:
        top = build_worker(cfg, Clock(), 1, 3, str(tmp_path))
    finally:
        worker_tag.set_worker(None)
    assert isinstance(top.presence, RemotePresenceRing)
    assert top.limits.config.max_transactions == 34
    stack = next(c for c in top if hasattr(c, "transactions"))
    processors = stack.tu.chain.processors
    agent = next(p for p in processors if isinstance(p, Presence)).agent
    assert isinstance(agent, PresenceAgent) and agent.ring is top.presence
    assert agent.settings.max_subscriptions == 4
    assert stack.tu.registrar.commit is not None and stack.tu.registrar.commit_timeout == 4.0
    assert any(isinstance(c, MetricsReporter) for c in top)


def test_with_batches_a_commit_goes_after_the_batch_that_carries_its_delta():
    """Batched deltas (a WorkerLink with a clock): the Commit of a REGISTER
    waits for the batch, so the parent has the AoR's delta (and its ring
    write under way) before it answers."""
    from twisted.internet import defer

    from sosimple_proxy.workers.remote_ring import remote_commit

    clock = Clock()
    hub = Hub(BindingTable(Clock()), {})
    table = BindingTable(Clock())
    client, server, pump = connectedServerAndClient(lambda: hub.buildProtocol(None),
                                                    lambda: WorkerLink(table, lambda: None, clock))
    client.callRemote(Hello, index=0)
    pump.flush()
    seen = []

    def commit(aor):
        seen.append(bool(hub.table.lookup(aor)))
        return defer.succeed(True)

    hub.commit = commit
    clock.advance(1)
    table.replace("a@x", [binding("a@x", "sip:a@h:1")])  # the first change goes at the end of the turn
    table.replace("a@x", [binding("a@x", "sip:a@h:1"), binding("a@x", "sip:a@h:2")])
    answers = []
    remote_commit(lambda: client)("a@x").addCallback(answers.append)
    pump.flush()
    assert answers == [] and seen == []  # nothing sent before the batch
    clock.advance(0.02)
    pump.flush()
    assert seen == [True] and answers == [True]
    assert sorted(b.contact for b in hub.table.lookup("a@x")) == ["sip:a@h:1", "sip:a@h:2"]
