"""Registrations in the ring: publisher and locator over real Chord nodes on
the simulated network (deterministic clock), including the contact cache."""

from __future__ import annotations

from twisted.internet.defer import succeed

from sosimple_proxy.location.bindings import Binding, BindingTable
from sosimple_proxy.location.interfaces import Found, Miss
from sosimple_proxy.location.ring import RingLocator, RingPublisher
from sosimple_proxy.overlay.ids import KeyScheme
from sosimple_proxy.overlay.simnet import SimCluster
from sosimple_proxy.sip.message import Response
from sosimple_proxy.sip.uri import parse_uri
from sosimple_proxy.testing.ring import run_until_answered, sim_ring


class Member:
    """What the proxy sees of an OverlayService: ``node``, ``keys``, ``ready``."""

    def __init__(self, node, m: int) -> None:
        self.node = node
        self.keys = KeyScheme("flat", m)
        self.ready = succeed(node)


def ring(n: int = 6, seed: int = 7) -> SimCluster:
    return sim_ring(n, seed, settle_rounds=5)


def is_example(uri) -> bool:
    return getattr(uri, "host", None) == "example.com"


def aor(uri) -> str:
    return f"{uri.user}@{uri.host}"


def publisher_and_locator(cluster, writer_index=0, reader_index=3, route="<sip:127.0.0.1:5060;lr>", watch_cache=True):
    nodes = list(cluster.joined())
    table = BindingTable(cluster.clock)
    RingPublisher(Member(nodes[writer_index], cluster.config.m), table, lambda b: route, cluster.clock)
    locator = RingLocator(
        "overlay",
        Member(nodes[reader_index], cluster.config.m),
        is_example,
        aor,
        lambda u: False,
        clock=cluster.clock,
        watch_cache=watch_cache,
    )
    return table, locator


def binding(contact: str, expires_in: float, now: float, instance: str | None = None) -> Binding:
    return Binding("alice@example.com", contact, now + expires_in, "cid", 1, instance=instance)


def test_a_registration_written_at_one_node_is_found_from_another_with_its_path():
    cluster = ring()
    table, locator = publisher_and_locator(cluster)
    now = cluster.clock.seconds()
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1:5060", 600, now)])
    cluster.run(2)
    got = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    assert isinstance(got, Found)
    (t,) = got.targets
    assert str(t.uri) == "sip:alice@10.0.0.1:5060"
    assert t.route == ("<sip:127.0.0.1:5060;lr>",)  # through alice's own proxy


def test_unknown_user_is_an_authoritative_miss_and_other_domains_not_mine():
    cluster = ring()
    _, locator = publisher_and_locator(cluster)
    assert isinstance(run_until_answered(cluster, locator.locate(parse_uri("sip:nobody@example.com"))), Miss)
    assert locator.locate(parse_uri("sip:nobody@other.test")).__class__.__name__ == "_NotMine"


def test_two_proxies_registering_one_aor_merge_and_a_removal_is_a_tombstone():
    cluster = ring()
    nodes = list(cluster.joined())
    m = cluster.config.m
    t1, t2 = BindingTable(cluster.clock), BindingTable(cluster.clock)
    RingPublisher(Member(nodes[0], m), t1, lambda b: "<sip:127.0.0.1:5060;lr>", cluster.clock)
    RingPublisher(Member(nodes[1], m), t2, lambda b: "<sip:127.0.0.2:5060;lr>", cluster.clock)
    locator = RingLocator("overlay", Member(nodes[4], m), is_example, aor, lambda u: False)
    now = cluster.clock.seconds()
    t1.replace("alice@example.com", [binding("sip:alice@10.0.0.1", 600, now)])
    t2.replace("alice@example.com", [binding("sip:alice@10.0.0.2", 600, now)])
    cluster.run(2)
    got = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    assert sorted(str(t.uri) for t in got.targets) == ["sip:alice@10.0.0.1", "sip:alice@10.0.0.2"]
    t1.replace("alice@example.com", [])  # de-registered at the first proxy
    cluster.run(2)
    got = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    assert [str(t.uri) for t in got.targets] == ["sip:alice@10.0.0.2"]


def test_bindings_expire_in_the_ring_too():
    cluster = ring()
    table, locator = publisher_and_locator(cluster)
    locator.cache_ttl = 0
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1", 30, cluster.clock.seconds())])
    cluster.run(2)
    assert isinstance(run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com"))), Found)
    cluster.run(40)
    assert isinstance(run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com"))), Miss)


def test_contact_cache_answers_without_the_ring_and_a_failed_target_is_looked_up_once_more():
    # without watching (the cache as the paper has it): stale until a target fails
    cluster = ring()
    table, locator = publisher_and_locator(cluster, watch_cache=False)
    now = cluster.clock.seconds()
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1", 600, now, instance="dev")])
    cluster.run(2)
    first = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    # from the cache: an answer at once, no Deferred
    cached = locator.locate(parse_uri("sip:alice@example.com"))
    assert isinstance(cached, Found) and cached.targets == first.targets
    # alice moved (re-registered with a new contact); the cache still says the old one
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.9", 600, cluster.clock.seconds(), instance="dev")])
    cluster.run(2)
    stale = locator.locate(parse_uri("sip:alice@example.com"))
    assert [str(t.uri) for t in stale.targets] == ["sip:alice@10.0.0.1"]
    # the stale target times out: one fresh lookup gives the new contact
    again = run_until_answered(cluster, locator.target_failed(stale.targets[0], Response(408)))
    assert [str(t.uri) for t in again] == ["sip:alice@10.0.0.9"]
    # once alice is gone from the ring, the second lookup says so (a Miss: 404)
    table.replace("alice@example.com", [])
    cluster.run(2)
    stale = locator.locate(parse_uri("sip:alice@example.com"))
    assert [str(t.uri) for t in stale.targets] == ["sip:alice@10.0.0.9"]  # still cached
    gone = run_until_answered(cluster, locator.target_failed(stale.targets[0], Response(408)))
    assert isinstance(gone, Miss)
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.9", 600, cluster.clock.seconds(), instance="dev")])
    cluster.run(2)
    again = list(run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com"))).targets)
    # a target from a fresh lookup earns no second lookup
    assert locator.target_failed(again[0], Response(408)) is None
    # a 486 is an answer, not a failure of the cache
    hit = locator.locate(parse_uri("sip:alice@example.com"))
    assert locator.target_failed(hit.targets[0], Response(486)) is None


def test_replicas_answer_when_the_responsible_node_is_dead():
    cluster = ring(8)
    key = KeyScheme("flat", cluster.config.m).key("alice@example.com")
    by_id = sorted(cluster.joined(), key=lambda n: n.id)
    responsible = next((n for n in by_id if n.id >= key), by_id[0])
    others = [n for n in cluster.joined() if n is not responsible]
    m = cluster.config.m
    table = BindingTable(cluster.clock)
    RingPublisher(Member(others[0], m), table, lambda b: None, cluster.clock)
    locator = RingLocator("overlay", Member(others[1], m), is_example, aor, lambda u: False)
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1", 600, cluster.clock.seconds())])
    cluster.run(3)
    assert responsible.store.get(key, "registration"), "the dying node held the registration"
    cluster.kill(responsible)
    got = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    assert isinstance(got, Found) and str(got.targets[0].uri) == "sip:alice@10.0.0.1"


def test_a_watched_contact_cache_follows_a_change_anywhere_in_the_ring_within_two_seconds():
    cluster = ring()
    table, locator = publisher_and_locator(cluster)
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.1", 600, cluster.clock.seconds(), instance="dev")])
    cluster.run(2)
    first = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    assert [str(t.uri) for t in first.targets] == ["sip:alice@10.0.0.1"]
    # alice re-registers elsewhere: the cached answer is updated, not stale
    table.replace("alice@example.com", [binding("sip:alice@10.0.0.9", 600, cluster.clock.seconds(), instance="dev")])
    cluster.clock.advance(2.0)
    cached = locator.locate(parse_uri("sip:alice@example.com"))
    assert isinstance(cached, Found)
    assert [str(t.uri) for t in cached.targets] == ["sip:alice@10.0.0.9"]
    # alice de-registers: the AoR leaves the cache and its watch ends
    table.replace("alice@example.com", [])
    cluster.clock.advance(2.0)
    assert "alice@example.com" not in locator.cache
    assert not locator._watches
    gone = run_until_answered(cluster, locator.locate(parse_uri("sip:alice@example.com")))
    assert isinstance(gone, Miss)
