"""The ring as a Twisted service: one node, its AMP listener and its store.

Built from the ``[overlay]`` (or ``[overlay:NAME]``) settings as
``sosimple_proxy.config`` parses them (a mapping; this module does not
import the config module).  Starting binds ``listen``, makes or loads the
node's key pair and SQLite store under ``state_dir``, and joins through
``bootstrap`` (or starts a ring); stopping leaves gracefully (the range is
handed to the successor, the local copy kept) and closes everything.

A CA ring (``[overlay] ca``) is given its :class:`~.ringtls.RingTLS` by the
composition root, which reads the files before any port is bound: the
listener and every outgoing connection are then mutual TLS, and the node's
id is the one the CA wrote into its certificate.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from . import ids
from .amp import AMPRPC, OverlayServerFactory
from .errors import NotRunning
from .ringtls import RingTLS
from .identity import load_or_create_key, public_key_bytes
from .node import ChordNode
from .store import SQLiteRecordStore
from .tuning import NodeConfig

log = Logger()


def node_config(settings: Mapping[str, Any], m: int = ids.DEFAULT_BITS) -> NodeConfig:
    """The node's tuning from ``[overlay]`` settings."""
    return NodeConfig(
        m=m,
        successors=int(settings.get("successors", 8)),
        replicas=int(settings.get("replicas", 2)),
        stabilize_interval=float(settings.get("stabilize_interval", 5.0)),
        write_quorum=int(settings.get("write_quorum", 2)),
        read_repair=bool(settings.get("read_repair", True)),
    )


def key_scheme(settings: Mapping[str, Any], m: int = ids.DEFAULT_BITS) -> ids.KeyScheme:
    """How names become keys, from ``key_scheme`` and ``domain_bits``."""
    return ids.KeyScheme(str(settings.get("key_scheme", "flat")), m, int(settings.get("domain_bits", 32)))


def node_id(settings: Mapping[str, Any], public_key: bytes, m: int = ids.DEFAULT_BITS) -> int:
    """``node_id`` if set (tests), else from the public key (and ``home_domain``)."""
    explicit = str(settings.get("node_id", "") or "")
    if explicit:
        return ids.parse_node_id(explicit, m)
    home = str(settings.get("home_domain", "") or "")
    if home and settings.get("key_scheme", "flat") == "domain":
        return ids.node_id_from_public_key(public_key, m, home, int(settings.get("domain_bits", 32)))
    return ids.node_id_from_public_key(public_key, m)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class OverlayService(Service):
    """One ring member.  ``ready`` fires with the node once it has joined."""

    def __init__(
        self,
        reactor: Any,
        settings: Mapping[str, Any],
        name: str = "overlay",
        m: int = ids.DEFAULT_BITS,
        tls: RingTLS | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.tls = tls
        self.setName(name)
        self.m = m
        self.keys = key_scheme(settings, m)
        self.node: ChordNode | None = None
        self.ready: defer.Deferred = defer.Deferred()
        self._port: Any = None
        self._factory: OverlayServerFactory | None = None
        self._rpc: AMPRPC | None = None
        self._store: SQLiteRecordStore | None = None

    def startService(self) -> None:
        super().startService()
        d = self._start()
        d.addCallbacks(self.ready.callback, self._start_failed)

    def _start_failed(self, failure: Any) -> None:
        if failure.check(NotRunning) and not self.running:
            # stopped while still joining: an ordinary shutdown, not an error
            log.info("overlay {name}: stopped before it joined the ring", name=self.name)
        else:
            log.failure("overlay {name}: could not start", failure, name=self.name)
        self.ready.errback(failure)

    @defer.inlineCallbacks
    def _start(self):
        settings = self.settings
        state_dir = str(settings.get("state_dir", "var/overlay"))
        tls = self.tls
        if tls is not None:
            nid = tls.node_id  # the CA placed us
            os.makedirs(state_dir, exist_ok=True)
        else:
            nid = node_id(settings, public_key_bytes(load_or_create_key(state_dir)), self.m)
        self._store = SQLiteRecordStore(os.path.join(state_dir), self.reactor.seconds)
        if tls is not None:
            self._factory = OverlayServerFactory(certified=tls.certified_id, refusals=tls.refusals)
            listening: Any = tls.server_factory(self._factory, self.reactor)
        else:
            self._factory = listening = OverlayServerFactory()
        self._port = yield serverFromString(self.reactor, str(settings["listen"])).listen(listening)
        host = self._port.getHost()
        address = str(settings.get("advertise", "") or "") or _hostport(host.host, host.port)
        self._rpc = AMPRPC(self.reactor, tls=tls, expected_id=self._expected_id if tls is not None else None)
        self.node = ChordNode(
            nid, address, self._rpc, self.reactor, self._store, node_config(settings, self.m), writer=ids.format_id(nid, self.m)
        )
        self._rpc.local = self.node.peer
        self._factory.node = self.node
        bootstrap = [_hostport(h, p) for h, p in settings.get("bootstrap", ())]
        log.info(
            "overlay {name}: node {id} at {address}{tls}, {how}",
            name=self.name,
            id=ids.format_id(nid, self.m),
            address=address,
            tls=f" (mutual TLS, CA {tls.ca})" if tls is not None else "",
            how=f"joining through {', '.join(bootstrap)}" if bootstrap else "starting a new ring",
        )
        yield self.node.start(bootstrap)
        return self.node

    def _expected_id(self, address: Any) -> int | None:
        """The id our tables give the node at ``address`` (None: unknown,
        e.g. a bootstrap address), which its certificate must carry."""
        node = self.node
        if node is None:
            return None
        for peer in node.table.known_peers():
            if peer.address == address:
                return peer.id
        return None

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        node = self.node
        if node is not None and node.joined:
            try:
                yield node.leave()
            except Exception:
                log.failure("overlay {name}: leaving failed", name=self.name)
        elif node is not None:
            node.stop()
        if self._rpc is not None:
            self._rpc.close()
        if self._factory is not None:
            self._factory.close_all()
        if self._port is not None:
            yield self._port.stopListening()
        if self._store is not None:
            self._store.close()
        return None
