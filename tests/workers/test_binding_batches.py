"""Bindings shared between workers in batches (issue 12, speed): a worker's
changes go to the parent at most every ``BATCH_INTERVAL`` seconds, the first
after a quiet spell at once; a batch stays under AMP's 64 KiB value; the
parent passes a batch on to the other workers as it came."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient

from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.workers import hub as hub_module
from sosimple_proxy.workers.hub import Hub, WorkerLink
from sosimple_proxy.workers.protocol import MAX_BATCH_BYTES, Hello, batch_from_json, batches


def binding(aor: str, port: int, cseq: int = 1) -> Binding:
    return Binding(aor, f"sip:{aor.split('@')[0]}@10.0.0.1:{port}", 1e12, f"cid-{port}", cseq,
                   path=("<sip:edge;lr>",), received="udp:10.0.0.1:5070", registered_at=7.0)


def test_a_batch_survives_json_and_keeps_every_field():
    changes = [("a@x", [binding("a@x", 1), binding("a@x", 2)]), ("b@x", []), ("c@x", [binding("c@x", 3)])]
    (text,) = batches(changes)
    assert batch_from_json(text) == changes


def test_many_aors_are_split_into_batches_under_the_amp_limit():
    changes = [(f"user{i:05d}@example.com", [binding(f"user{i:05d}@example.com", 5000 + i)]) for i in range(2000)]
    texts = list(batches(changes))
    assert len(texts) > 1 and all(len(t.encode()) <= MAX_BATCH_BYTES for t in texts)
    assert [c for t in texts for c in batch_from_json(t)] == changes
    assert list(batches([])) == []


def two_workers(clock: Clock):
    parent = BindingTable(clock)
    hub = Hub(parent, {})
    tables, links, pumps = [], [], []
    for index in range(2):
        table = BindingTable(clock)
        link, _server, pump = connectedServerAndClient(lambda: hub.buildProtocol(None),
                                                       lambda t=table: WorkerLink(t, lambda: None, clock))
        link.callRemote(Hello, index=index)
        pump.flush()
        tables.append(table)
        links.append(link)
        pumps.append(pump)

    def flush() -> None:
        for pump in pumps + pumps:  # worker -> parent, then parent -> the other worker
            pump.flush()

    return parent, tables, links, flush


def test_the_first_change_goes_at_once_and_later_ones_wait_for_the_interval():
    clock = Clock()
    parent, (mine, other), (link, _), flush = two_workers(clock)
    mine.replace("a@x", [binding("a@x", 1)])
    clock.advance(0)  # the end of the reactor's turn
    flush()
    assert other.lookup("a@x") and parent.lookup("a@x")
    # under load: the next changes wait for the interval, the latest of an AoR wins
    mine.replace("b@x", [binding("b@x", 2)])
    mine.replace("b@x", [binding("b@x", 3, cseq=2)])
    mine.replace("c@x", [binding("c@x", 4)])
    clock.advance(hub_module.BATCH_INTERVAL / 2)
    flush()
    assert not other.lookup("b@x") and not other.lookup("c@x")
    clock.advance(hub_module.BATCH_INTERVAL / 2)
    flush()
    assert [b.cseq for b in other.lookup("b@x")] == [2] and other.lookup("c@x")
    assert [b.cseq for b in parent.lookup("b@x")] == [2]
    # a removal travels too; and flush() sends what waits, at once (a worker that stops)
    mine.replace("a@x", [])
    link.flush()
    flush()
    assert not other.lookup("a@x") and not parent.lookup("a@x")


def test_a_batch_from_one_worker_is_not_sent_back_to_it():
    clock = Clock()
    parent, (mine, other), _links, flush = two_workers(clock)
    other.listeners.append(lambda aor, b: seen.append(("other", aor)))
    mine.listeners.append(lambda aor, b: seen.append(("mine", aor)))
    seen: list[tuple[str, str]] = []
    mine.replace("a@x", [binding("a@x", 1)])
    clock.advance(0)
    flush()
    assert seen == [("mine", "a@x"), ("other", "a@x")]
