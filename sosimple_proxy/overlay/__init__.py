"""The overlay: a Chord ring with a replicated record store.

It knows nothing of SIP: it stores typed records under integer keys on a
ring of ``2**m`` identifiers.  The modules, one concern each:

- ``ids``: ring arithmetic and how names and nodes get their identifiers;
- ``records``: the record format and its merge rules;
- ``store``: where a node keeps records (memory, SQLite);
- ``interfaces`` and ``messages``: what nodes say to each other (and the
  narrow surfaces between the parts of one node);
- ``node``: a ring member, the facade over the parts below, with no I/O of
  its own; ``tuning`` (its ``NodeConfig``) and ``errors`` (what it fails with);
- ``routing``: the routing table (successors, predecessor, fingers, suspects);
- ``calls``: calls to peers with the node's timeouts; ``jobs``: its
  background work, one job of a kind at a time;
- ``lookup``: the iterative lookup of a key's successor;
- ``replication``: records at a key's successor and replicas, syncs, repair;
- ``maintenance``: stabilize, notify, fix-fingers, check-predecessor rounds;
- ``wire`` and ``amp``: the messages' encoding and the AMP protocol;
- ``identity`` and ``service``: a node's key pair, and the node as a
  Twisted service (listener, SQLite store, join and leave);
- ``simclock`` and ``simnet``: a deterministic network for tests.

Using a node (see :class:`.node.ChordNode`)::

    node = ChordNode(node_id, "127.0.0.1:7000", rpc, reactor, store, NodeConfig())
    yield node.start(["127.0.0.1:7001"])        # [] starts a new ring
    key = KeyScheme().key("alice@example.com")
    yield node.put(Record(key, "blob", "", node.writer, b"...", expires, seq))
    records = yield node.get(key)                # [] is an authoritative miss
    yield node.remove(key, "blob")               # True if there was one
    result = yield node.lookup(key)              # .responsible, .successors
    yield node.leave()

or, from site.ini settings, ``OverlayService(reactor, cfg.section("overlay"))``
whose ``ready`` Deferred fires with the node.
"""
