"""What the proxy's parts expect of each other, as zope interfaces.

The response context (16.6-16.10) and the core talk to the transaction
layer only through an :class:`IForwarder`, so a test can put a recording
object in its place.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Interface


class IForwarder(Interface):
    """Sends the copies of a request and what needs no transaction."""

    def send(request: Any, target: Any, inbound: Any, user: Any, source: Any = None) -> Any:
        """Build the per-target copy of ``request`` (16.6 steps 1-9) and
        start its client transaction with ``user`` as its
        ``IClientTransactionUser``.  Returns the ClientTransaction, a
        Deferred firing with it (name resolution), or a Response the branch
        gets instead (e.g. 503 when the target cannot be reached at all).
        ``source`` is the Peer the request came from (its connection is
        named in our Record-Route)."""

    def send_response_by_via(response: Any) -> None:
        """Send a response where its top Via says (a late 2xx, 16.7 step 9;
        a stray response, 18.2.2)."""

    def forward_stateless(request: Any) -> None:
        """Forward a request without a transaction (the ACK of a 2xx, 16.11)
        along its Route set, or to its Request-URI."""
