"""The overlay: a Chord ring with a replicated record store.

It knows nothing of SIP: it stores typed records under integer keys on a
ring of ``2**m`` identifiers.  The modules, one concern each:

- ``ids``: ring arithmetic and how names and nodes get their identifiers;
- ``records``: the record format and its merge rules;
- ``store``: where a node keeps records (memory, SQLite);
- ``interfaces`` and ``messages``: what nodes say to each other;
- ``node``: the Chord logic itself, with no I/O of its own;
- ``simclock`` and ``simnet``: a deterministic network for tests.
"""
