"""Presence for our users (RFC 3856, 6665, 3903, 3863), between the proxy and location.

- ``pidf``: the documents; ``winfo``: who watches a presentity (presence.winfo); ``dialog``: a subscription's dialog and its NOTIFY;
- ``ring``: publications and subscriptions as ring records;
- ``agent``: SUBSCRIBE, PUBLISH, and the NOTIFYs that follow a presentity's
  records through ``watch(key)``.
"""
