"""build_proxy and [presence]: the agent is built on a ring that can watch, and hooked into the chain."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from sosimple_proxy.config import parse_config
from sosimple_proxy.overlay.ids import KeyScheme
from sosimple_proxy.presence.agent import PresenceAgent
from sosimple_proxy.proxy.chain import Presence
from sosimple_proxy.wiring import build_proxy
from sosimple_proxy.workers.remote_ring import RemoteRing

BASE = "[proxy]\ndomains = example.com\nlisten = udp:127.0.0.1:5060\n[location]\norder = local overlay\n"


class NotYetJoined:
    """An OverlayService before it started: no node yet."""

    node = None
    keys = KeyScheme("flat", 160)

    def __init__(self) -> None:
        self.ready = Deferred()


def test_the_agent_is_built_and_hooked_into_the_chain_after_route_information():
    proxy = build_proxy(parse_config(BASE), Clock(), {"overlay": NotYetJoined()})
    assert isinstance(proxy.presence, PresenceAgent)
    names = [getattr(p, "name", "") for p in proxy.core.chain.processors]
    assert names.index("presence") == names.index("route information") + 1
    assert isinstance(proxy.core.chain.processors[names.index("presence")], Presence)


def test_no_agent_when_disabled_without_a_ring_or_in_a_worker():
    assert build_proxy(parse_config(BASE + "[presence]\nenabled = no\n"), Clock(), {"overlay": NotYetJoined()}).presence is None
    assert build_proxy(parse_config(BASE), Clock(), {}).presence is None
    worker_ring = RemoteRing("overlay", lambda: None)
    assert build_proxy(parse_config(BASE), Clock(), {"overlay": worker_ring}).presence is None


def test_a_worker_runs_the_agent_on_its_parents_ring_node():
    """Issue 12: with [proxy] workers the agent is served, through the parent."""
    from sosimple_proxy.workers.shared_presence import RemotePresenceRing

    worker_ring = RemoteRing("overlay", lambda: None)
    worker_ring.presence = RemotePresenceRing(lambda: None)
    agent = build_proxy(parse_config(BASE), Clock(), {"overlay": worker_ring}).presence
    assert isinstance(agent, PresenceAgent) and agent.ring is worker_ring.presence
