"""A CANCEL that arrives while the INVITE is still being located (the
pending lookup, RFC 3261 16.10), through the whole proxy."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from sosimple_proxy.location.interfaces import Found, ILocator, Target
from sosimple_proxy.proxy.context import ResponseContext
from sosimple_proxy.proxy.chain import PendingLookup
from sosimple_proxy.sip.uri import parse_uri
from tests.proxy.harness import Harness, invite


@implementer(ILocator)
class Slow:
    """A provider whose answers come when the test says (a ring lookup)."""

    name = "slow"

    def __init__(self) -> None:
        self.asked: list[Deferred] = []

    def locate(self, uri):
        d: Deferred = Deferred()
        self.asked.append(d)
        return d


def slow_harness() -> tuple[Harness, Slow]:
    h = Harness()
    slow = Slow()
    h.proxy.location.providers.insert(0, slow)
    return h, slow


def cancel() -> str:
    return invite(method="CANCEL")


def found() -> Found:
    return Found((Target(parse_uri("sip:bob@127.0.0.1:6001"), source="slow"),), "slow")


def the_invite(h: Harness):
    return next(t for t in h.layer._server.values() if t.request.method == "INVITE")


def test_cancel_during_the_lookup_answers_200_and_the_invite_487_without_forwarding():
    h, slow = slow_harness()
    h.receive(invite())
    assert isinstance(the_invite(h).data, PendingLookup)
    h.receive(cancel())
    sent = h.wire.take()
    assert [(r.status, r.cseq.method) for r, _ in h.sent_responses(sent)] == [(200, "CANCEL")]
    assert the_invite(h).data.cancelled
    slow.asked[0].callback(found())
    sent = h.wire.take()
    assert h.sent_requests(sent, "INVITE") == []
    assert [(r.status, r.cseq.method) for r, _ in h.sent_responses(sent)] == [(487, "INVITE")]


def test_cancel_after_the_lookup_cancels_the_response_context():
    h, slow = slow_harness()
    h.receive(invite())
    slow.asked[0].callback(found())
    assert isinstance(the_invite(h).data, ResponseContext)
    (forwarded, _), = h.sent_requests(h.wire.take(), "INVITE")
    h.answer(forwarded, 180)
    h.wire.take()
    h.receive(cancel())
    sent = h.wire.take()
    assert [r.status for r, _ in h.sent_responses(sent)] == [200]
    assert len(h.sent_requests(sent, "CANCEL")) == 1  # the branch is cancelled downstream
