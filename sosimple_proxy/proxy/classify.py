"""What kind of request this is, decided once (after 16.4 route processing).

The processors of the chain read the :class:`Kind` instead of looking at
Route and To themselves.
"""

from __future__ import annotations

import enum

from sosimple_proxy.proxy.addressing import Addressing
from sosimple_proxy.sip.message import Request


class Kind(enum.Enum):
    """How the next hop of a request is decided."""

    # A To tag and a Route set: the dialog's route set leads (12.2, 16.4).
    IN_DIALOG = "in-dialog"
    # No To tag, a Route set (an outbound proxy's route, a Path): it leads.
    PRELOADED = "preloaded"
    # No Route left and the Request-URI names this proxy itself.
    TO_PROXY = "to-proxy"
    # No Route left: the Request-URI decides (location, or a flow of ours);
    # out of dialog, or a dialog whose route set ended at us.
    LOCATE = "locate"

    @property
    def routed(self) -> bool:
        """The Route set, not the Request-URI, says where the request goes."""
        return self in (Kind.IN_DIALOG, Kind.PRELOADED)


def has_to_tag(request: Request) -> bool:
    to = request.headers.get("to") or ""
    return ";tag=" in to.replace(" ", "").lower()


def classify(request: Request, addressing: Addressing) -> Kind:
    """The request's :class:`Kind`; call it after our own Route entries are
    removed (:func:`~sosimple_proxy.proxy.routing.preprocess_routes`)."""
    if "route" in request.headers:
        return Kind.IN_DIALOG if has_to_tag(request) else Kind.PRELOADED
    if addressing.is_self(request.ruri):
        return Kind.TO_PROXY
    return Kind.LOCATE
