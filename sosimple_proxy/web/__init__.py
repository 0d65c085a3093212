"""The node's HTTP face: the admin JSON API (``admin``).

It sits above the overlay and knows nothing of SIP internals: it reads the
ring and its records through the overlay's public node API.
"""
