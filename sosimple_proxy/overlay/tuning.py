"""How one node is tuned; every part of the node reads its figures from here."""

from __future__ import annotations

import attrs

from . import ids


@attrs.define
class NodeConfig:
    """Tuning of one node; site.ini's ``[overlay]`` keys map onto the first ones."""

    m: int = ids.DEFAULT_BITS
    successors: int = 8
    replicas: int = 2
    stabilize_interval: float = 5.0
    #: each round waits ``interval * (1 +- jitter)``, so nodes do not beat in step
    jitter: float = 0.25
    #: per call; default: half an interval, at most 2 s
    rpc_timeout: float = 0.0
    #: a whole lookup, retries included; default: four calls' worth
    lookup_timeout: float = 0.0
    #: a full sync with the replicas every so many rounds (besides on changes)
    sync_every: int = 4
    #: how long a peer that failed a call is kept out of our tables
    suspect_time: float = 0.0
    #: next-hop candidates a ``find`` answer carries
    candidates: int = 3
    #: copies that must acknowledge a write (capped by replicas + 1 and live nodes)
    write_quorum: int = 2
    #: a read that meets replicas with different versions repairs the stale
    #: ones (site.ini's default is yes; off here so simulations count only
    #: what they ask for)
    read_repair: bool = False

    def __attrs_post_init__(self) -> None:
        if self.successors < 1:
            raise ValueError("a node needs a successor list of at least one")
        if self.replicas >= self.successors + 1:
            # replicas live on successors: the list must reach them
            self.successors = self.replicas + 1
        if self.rpc_timeout <= 0:
            self.rpc_timeout = min(2.0, self.stabilize_interval / 2)
        if self.lookup_timeout <= 0:
            self.lookup_timeout = 4 * self.rpc_timeout
        if self.suspect_time <= 0:
            self.suspect_time = 2 * self.stabilize_interval
