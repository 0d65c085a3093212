"""``[proxy] workers = N``: N processes share the SIP ports.

- :mod:`.hub`: the parent's end of the line to its workers (AMP over a Unix
  socket): bindings every worker must see, and ring lookups, since the
  proxy's one ring node lives in the parent;
- :mod:`.shared_bindings`: a worker's binding table kept equal to the others';
- :mod:`.remote_ring`: a ring as a worker sees it, through the hub;
- :mod:`.pool`: the parent starts the workers and restarts one that dies;
- :mod:`.shared_limits`: ``[limits]`` bans and per-source counts, summed
  and decided once in the parent;
- :mod:`.shared_nonces`: digest nonce-counts, each kept by its nonce's owner;
- :mod:`.shared_metrics`: the workers' SIP counts, summed in the parent
  (``/metrics``, ``GET /calls``);
- :mod:`.shared_presence`: each worker's presence agent on the parent's
  ring node.

The SIP side of it (branches that name their worker, responses handed to
their worker) is in :mod:`sosimple_proxy.sip.handoff`.
"""
