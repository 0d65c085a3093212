"""Requests are classified once, after 16.4 route processing."""

from __future__ import annotations

import pytest

from sosimple_proxy.proxy.chain import RouteInformation
from sosimple_proxy.proxy.chain import Kind
from sosimple_proxy.proxy.chain import Job
from sosimple_proxy.sip.parser import parse_message
from tests.proxy.harness import Harness, invite


@pytest.mark.parametrize(
    "uri, to_tag, route, kind",
    [
        ("sip:bob@127.0.0.1:6001", "b1", "<sip:127.0.0.9:5090;lr>", Kind.IN_DIALOG),
        ("sip:bob@example.com", None, "<sip:127.0.0.9:5090;lr>", Kind.PRELOADED),
        ("sip:127.0.0.1:5060", None, None, Kind.TO_PROXY),
        ("sip:example.com", None, None, Kind.TO_PROXY),
        ("sip:bob@example.com", None, None, Kind.LOCATE),
        ("sip:carol@other.test", None, None, Kind.LOCATE),
        # our own Route entry is removed first: nothing is left to follow
        ("sip:bob@example.com", None, "<sip:127.0.0.1:5060;lr>", Kind.LOCATE),
        # a dialog whose route set ended at us: its remote target is located
        ("sip:bob@127.0.0.1:6001", "b1", "<sip:127.0.0.1:5060;lr>", Kind.LOCATE),
    ],
)
def test_route_information_classifies_the_request(uri, to_tag, route, kind):
    h = Harness()
    extra = f"Route: {route}\n" if route else ""
    text = invite(uri, method="OPTIONS" if kind is Kind.TO_PROXY else "INVITE", extra=extra, to_tag=to_tag)
    job = Job(parse_message(text.replace("\n", "\r\n").encode()), None)  # type: ignore[arg-type]
    RouteInformation(h.core.addressing)(job)
    assert job.kind is kind
    assert job.kind.routed == (kind in (Kind.IN_DIALOG, Kind.PRELOADED))
