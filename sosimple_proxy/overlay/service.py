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
id is the one the CA wrote into its certificate.  An open ring
(``trust = tofu``) gives the node an :class:`~.admission.OpenRingTrust`:
its id follows from its key, and peers prove theirs before it takes them
in (any id, with ``allow_chosen_ids``, for test rings).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from . import configdoc, ids
from .admission import NodeSigner, OpenRingTrust, check_proof
from .amp import AMPRPC, OverlayServerFactory
from .errors import NotRunning
from .ringtls import Refusals, RingTLS
from .identity import load_or_create_key, public_key_bytes
from .node import ChordNode
from .recordguard import RecordGuard, guard_for
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
        rpc_timeout=float(settings.get("rpc_timeout", 0) or 0),
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


class TrustSetupError(ValueError):
    """An open ring's settings that contradict each other; ``key`` names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


def trust_mode(settings: Mapping[str, Any]) -> str:
    """``trust``, or its default: ``ca`` with a ``ca``, else ``tofu``."""
    mode = str(settings.get("trust", "") or "")
    return mode or ("ca" if settings.get("ca") else "tofu")


def check_trust(settings: Mapping[str, Any]) -> str:
    """The ring's trust, or :class:`TrustSetupError` when the keys say two things."""
    mode, ca = trust_mode(settings), str(settings.get("ca", "") or "")
    if mode not in ("ca", "tofu"):
        raise TrustSetupError("trust", f"{mode!r} is neither ca nor tofu")
    if mode == "ca" and not ca:
        raise TrustSetupError("trust", "ca needs [overlay] ca (the ring's CA certificate)")
    if mode == "tofu" and ca:
        raise TrustSetupError("trust", "tofu with a ca: in a CA ring the certificates place the nodes; remove ca or trust")
    if mode == "tofu" and settings.get("node_id") and not settings.get("allow_chosen_ids"):
        raise TrustSetupError(
            "node_id",
            "an open ring derives node ids from node keys and its members refuse a chosen one; "
            "remove node_id, or set allow_chosen_ids = yes (test rings only)",
        )
    return mode


CHOSEN_IDS_WARNING = (
    "overlay {name}: allow_chosen_ids = yes: this node takes members at ids they chose, so any node "
    "can take any place in the ring and the records there; for test rings only"
)


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
        #: signs this node's records and checks others' (made at start)
        self.guard: RecordGuard | None = None
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
        if failure.check(configdoc.DocumentError):
            # one line: the administrator fixes the URL or the CA, not the code
            log.error(
                "overlay {name}: refused the configuration document {url}: {why}",
                name=self.name,
                url=self.settings.get("bootstrap", ("?",))[0],
                why=failure.getErrorMessage(),
            )
        elif failure.check(NotRunning) and not self.running:
            # stopped while still joining: an ordinary shutdown, not an error
            log.info("overlay {name}: stopped before it joined the ring", name=self.name)
        else:
            log.failure("overlay {name}: could not start", failure, name=self.name)
        self.ready.errback(failure)

    @defer.inlineCallbacks
    def _configure(self):
        """``[overlay] bootstrap`` as a configuration document's URL: fetch
        it, check its signature against our ``ca``, take its parameters."""
        boot = tuple(self.settings.get("bootstrap", ()) or ())
        if len(boot) != 1 or not isinstance(boot[0], str):
            return None
        url = boot[0]
        tls = self.tls
        config = yield configdoc.fetch(self.reactor, url, tls.ca if tls is not None else None)
        self.settings = configdoc.apply(config, self.settings)
        self.keys = key_scheme(self.settings, self.m)
        log.info(
            "overlay {name}: configuration of ring {ring!r} from {url}{signed}: replicas {r}, successors {s}",
            name=self.name,
            ring=config.get("ring"),
            url=url,
            signed=" (signature checked against our CA)" if tls is not None else "",
            r=self.settings.get("replicas"),
            s=self.settings.get("successors"),
        )
        return None

    def config_document(self) -> bytes:
        """``GET /.well-known/sosimple-config``: this ring's document."""
        return configdoc.serve(self.name, self.settings, self.node, self.tls)

    @defer.inlineCallbacks
    def _start(self):
        yield self._configure()
        settings = self.settings
        state_dir = str(settings.get("state_dir", "var/overlay"))
        tls = self.tls
        if tls is not None:
            nid = tls.node_id  # the CA placed us
            os.makedirs(state_dir, exist_ok=True)
            trust = None
        else:
            check_trust(settings)
            key = load_or_create_key(state_dir)
            nid = node_id(settings, public_key_bytes(key), self.m)
            home = str(settings.get("home_domain", "") or "") if settings.get("key_scheme", "flat") == "domain" else ""
            chosen = bool(settings.get("allow_chosen_ids"))
            if chosen:
                log.warn(CHOSEN_IDS_WARNING, name=self.name)
            trust = OpenRingTrust(NodeSigner(key, home), chosen, int(settings.get("domain_bits", 32)))
        self.guard = guard_for(settings, tls, state_dir, self.keys, self.reactor)
        self._store = SQLiteRecordStore(os.path.join(state_dir), self.reactor.seconds, self.guard.check_stored)
        if tls is not None:
            self._factory = OverlayServerFactory(certified=tls.certified_id, refusals=tls.refusals)
            listening: Any = tls.server_factory(self._factory, self.reactor)
        else:
            # an open ring: each connection is bound to the node its signed
            # claim proves (Notify and Leave are checked against it)
            claims = functools.partial(
                check_proof, m=self.m, domain_bits=trust.domain_bits, allow_chosen_ids=trust.allow_chosen_ids
            )
            self._factory = listening = OverlayServerFactory(refusals=Refusals(log), claims=claims)
        self._port = yield serverFromString(self.reactor, str(settings["listen"])).listen(listening)
        host = self._port.getHost()
        address = str(settings.get("advertise", "") or "") or _hostport(host.host, host.port)
        self._rpc = AMPRPC(
            self.reactor,
            tls=tls,
            expected_id=self._expected_id if tls is not None else None,
            signer=trust.signer if trust is not None else None,
        )
        self.node = ChordNode(
            nid,
            address,
            self._rpc,
            self.reactor,
            self._store,
            node_config(settings, self.m),
            writer=ids.format_id(nid, self.m),
            trust=trust,
            guard=self.guard,
        )
        self._rpc.local = self.node.peer
        self._factory.node = self.node
        bootstrap = [_hostport(h, p) for h, p in settings.get("bootstrap", ())]
        log.info(
            "overlay {name}: node {id} at {address}{tls}, {how}",
            name=self.name,
            id=ids.format_id(nid, self.m),
            address=address,
            tls=f" (mutual TLS, CA {tls.ca})" if tls is not None else " (open ring: peers prove their keys)",
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
