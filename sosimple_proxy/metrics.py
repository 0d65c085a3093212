"""``GET /metrics``: the process's state in the Prometheus text format.

Nothing here runs per message.  The hot path only adds to plain integers
(:mod:`sosimple_proxy.tally`, and counters the parts keep anyway); this
module's :class:`ProxyCollector` reads them, and the gauges' state (live
transactions, registrations, ring size, gateway states, bans), when
Prometheus scrapes.  It lives in a registry of its own per process (never
``prometheus_client``'s global one), built by the composition root, which
fills :class:`Sources` with the parts it built.

Every family is always written with its HELP and TYPE, samples or not, so
a dashboard finds it before the first call.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import attrs
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from sosimple_proxy.tally import Buckets, SipTally
from sosimple_proxy.web.views import gateway_state

PREFIX = "sosimple_"


@attrs.define
class Sources:
    """What the collector reads; each part None (or empty) when this
    process has none (a storage node has no SIP stack, a proxy may have no
    ring).  Filled in by the composition root as it builds the parts."""

    sip: SipTally | None = None
    #: the SIP stack (``transactions.server_count``/``client_count``,
    #: ``transport.tls.handshake_failures``)
    stack: Any = None
    #: the registrar's binding table (iterable of AoRs, ``lookup(aor)``)
    bindings: Any = None
    #: ring services by name (``node`` once joined)
    rings: Mapping[str, Any] = attrs.field(factory=dict)
    #: ring location providers by name (``cache_hits``, ``cache_misses``)
    ring_locators: Mapping[str, Any] = attrs.field(factory=dict)
    #: the RFC 3263 resolver's ``Lookups`` (``queries``, ``failures``)
    dns: Any = None
    #: the PSTN gateways (``GatewaySet``) and their prober (``pending``)
    gateways: Any = None
    prober: Any = None
    #: the [limits] limiter (``bans_total``, ``report()``)
    limits: Any = None
    #: wrong passwords ([auth]); a one-element list the wiring adds to
    auth_failures: list[int] = attrs.field(factory=lambda: [0])


class ProxyCollector:
    """A ``prometheus_client`` collector over :class:`Sources`."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        yield from self._sip(s)
        yield from self._rings(s)
        yield from self._edges(s)

    # -- SIP

    def _sip(self, s: Sources) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            PREFIX + "sip_requests", "SIP requests that began a server transaction, by method", labels=["method"]
        )
        responses = CounterMetricFamily(
            PREFIX + "sip_responses", "Final SIP responses sent by server transactions, by method and code",
            labels=["method", "code"],
        )
        durations = HistogramMetricFamily(
            PREFIX + "sip_transaction_seconds", "Server transaction time from request to final response, by method",
            labels=["method"],
        )
        setup = HistogramMetricFamily(PREFIX + "sip_call_setup_seconds", "INVITE received to 2xx sent (call setup time)")
        tally = s.sip
        if tally is not None:
            for method, n in sorted(tally.requests.items()):
                requests.add_metric([method], n)
            for (method, code), n in sorted(tally.responses.items()):
                responses.add_metric([method, str(code)], n)
            for method, buckets in sorted(tally.durations.items()):
                durations.add_metric([method], buckets.cumulative(), buckets.sum)
            setup.add_metric([], s.sip.setup.cumulative(), s.sip.setup.sum)
        else:
            setup.add_metric([], Buckets().cumulative(), 0.0)
        yield from (requests, responses, durations, setup)

        active = GaugeMetricFamily(
            PREFIX + "sip_active_transactions", "Live SIP transactions, server and client side", labels=["side"]
        )
        if s.stack is not None:
            layer = s.stack.transactions
            active.add_metric(["server"], layer.server_count)
            active.add_metric(["client"], layer.client_count)
        yield active

        aors = GaugeMetricFamily(PREFIX + "registrations", "Addresses of record registered with this proxy")
        contacts = GaugeMetricFamily(PREFIX + "registered_contacts", "Contacts bound to those addresses of record")
        if s.bindings is not None:
            table = s.bindings
            names = list(table)
            aors.add_metric([], len(names))
            contacts.add_metric([], sum(len(table.lookup(a)) for a in names))
        yield aors
        yield contacts

    # -- the rings

    def _rings(self, s: Sources) -> Iterator[Metric]:
        size = GaugeMetricFamily(PREFIX + "ring_size", "Ring members this node knows of, itself included", labels=["ring"])
        hops = HistogramMetricFamily(PREFIX + "ring_lookup_hops", "Hops of the ring lookups that succeeded", labels=["ring"])
        seconds = HistogramMetricFamily(PREFIX + "ring_lookup_seconds", "Time of the ring lookups that succeeded", labels=["ring"])
        failed = CounterMetricFamily(PREFIX + "ring_lookup_failures", "Ring lookups that failed", labels=["ring"])
        rpc = CounterMetricFamily(PREFIX + "ring_rpc_errors", "Ring RPC calls that failed or timed out", labels=["ring"])
        repairs = CounterMetricFamily(
            PREFIX + "ring_replica_repairs", "Records a replica sync pulled in or pushed out", labels=["ring"]
        )
        refused = CounterMetricFamily(
            PREFIX + "ring_tls_refusals", "Ring connections refused at the TLS handshake (a CA ring)", labels=["ring"]
        )
        for name, ring in sorted(s.rings.items()):
            tls = getattr(ring, "tls", None)
            if tls is not None:
                refused.add_metric([name], tls.refusals.count)
            node = getattr(ring, "node", None)
            if node is None:
                continue
            known = {p.address for p in node.table.known_peers()} | {node.address}
            size.add_metric([name], len(known))
            stats = node.lookups.stats
            hops.add_metric([name], stats.hops.cumulative(), stats.hops.sum)
            seconds.add_metric([name], stats.seconds.cumulative(), stats.seconds.sum)
            failed.add_metric([name], stats.failures)
            rpc.add_metric([name], node.calls.errors)
            repairs.add_metric([name], node.replication.repairs)
        yield from (size, hops, seconds, failed, rpc, repairs, refused)
        hits = CounterMetricFamily(PREFIX + "contact_cache_hits", "Ring locations answered from the contact cache", labels=["ring"])
        misses = CounterMetricFamily(PREFIX + "contact_cache_misses", "Ring locations the contact cache could not answer", labels=["ring"])
        for name, locator in sorted(s.ring_locators.items()):
            hits.add_metric([name], locator.cache_hits)
            misses.add_metric([name], locator.cache_misses)
        yield hits
        yield misses

    # -- DNS, gateways, bans, TLS, passwords

    def _edges(self, s: Sources) -> Iterator[Metric]:
        queries = CounterMetricFamily(PREFIX + "dns_queries", "DNS queries sent (not answered from the cache)")
        failures = CounterMetricFamily(PREFIX + "dns_failures", "DNS queries that timed out or failed (not 'no such name')")
        if s.dns is not None:
            queries.add_metric([], s.dns.queries)
            failures.add_metric([], s.dns.failures)
        yield queries
        yield failures

        states = GaugeMetricFamily(
            PREFIX + "gateway_state", "1 for each PSTN gateway's current state (up, down, probing)", labels=["gateway", "state"]
        )
        if s.gateways is not None:
            for g in s.gateways.gateways:
                now = gateway_state(g.name, s.gateways, s.prober)
                for state in ("up", "down", "probing"):
                    states.add_metric([g.name, state], 1 if state == now else 0)
        yield states

        bans = CounterMetricFamily(PREFIX + "bans", "Sources banned by [limits] (rate or wrong passwords)")
        banned = GaugeMetricFamily(PREFIX + "banned_sources", "Sources banned now")
        if s.limits is not None:
            bans.add_metric([], s.limits.bans_total)
            banned.add_metric([], len(s.limits.report()["banned"]))
        yield bans
        yield banned
        dropped = CounterMetricFamily(PREFIX + "banned_dropped", "Messages from banned sources dropped unparsed by the proxy")
        refused = CounterMetricFamily(PREFIX + "banned_refused_connections", "Connections from banned sources closed at once")
        kernel = CounterMetricFamily(
            PREFIX + "kernel_dropped_packets", "Packets from banned sources dropped by the kernel ([limits] kernel_bans; as last read)"
        )
        if s.limits is not None:
            dropped.add_metric([], getattr(s.limits, "dropped", 0))
            refused.add_metric([], getattr(s.limits, "refused", 0))
            mirror = getattr(s.limits, "mirror", None)
            if mirror is not None:
                kernel.add_metric([], mirror.dropped_packets)
        yield dropped
        yield refused
        yield kernel

        tls = CounterMetricFamily(
            PREFIX + "sip_tls_handshake_failures", "SIP over TLS connections closed before their handshake finished"
        )
        if s.stack is not None:
            tls.add_metric([], s.stack.transport.tls.handshake_failures)
        yield tls

        auth = CounterMetricFamily(PREFIX + "auth_failures", "Requests with wrong digest credentials")
        auth.add_metric([], s.auth_failures[0])
        yield auth


class Metrics:
    """The process's registry and what ``GET /metrics`` answers."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, sources: Sources | None = None) -> None:
        self.sources = sources if sources is not None else Sources()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProxyCollector(self.sources))  # type: ignore[arg-type]
        # the process's CPU, memory and open files (Linux /proc), in this registry too
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
