"""The chain runner: what each kind of step does, and a CANCEL that arrives
while a step waits."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail

from sosimple_proxy.proxy.chain import CONTINUE, TAKEN, Chain, Job, PendingLookup
from sosimple_proxy.sip.message import Response, make_response
from sosimple_proxy.sip.parser import parse_message
from tests.proxy.harness import invite


class Txn:
    """A server transaction's place: records what is answered."""

    def __init__(self) -> None:
        self.data: object = None
        self.answers: list[Response] = []

    def respond(self, response: Response) -> bool:
        self.answers.append(response)
        return True


def request():
    return parse_message(invite().replace("\n", "\r\n").encode())


def run(*processors):
    txn = Txn()
    Chain(processors).run(request(), txn)  # type: ignore[arg-type]
    return txn


def answer(status):
    return lambda job: make_response(job.request, status, "Test")


def never(job):
    raise AssertionError("a processor after the chain stopped was called")


def test_continue_then_a_response_stops_the_chain():
    seen = []
    txn = run(lambda job: seen.append(job) or CONTINUE, lambda job: None, answer(486), never)
    assert [r.status for r in txn.answers] == [486]
    assert isinstance(seen[0], Job)


def test_taken_stops_the_chain_without_an_answer():
    txn = run(lambda job: TAKEN, never)
    assert txn.answers == []


def test_no_processor_answering_is_a_500():
    txn = run(lambda job: CONTINUE)
    assert [r.status for r in txn.answers] == [500]


def test_a_deferred_step_waits_and_its_result_is_a_step():
    d: Deferred = Deferred()
    txn = run(lambda job: d, answer(404))
    assert txn.answers == [] and isinstance(txn.data, PendingLookup)
    d.callback(CONTINUE)
    assert [r.status for r in txn.answers] == [404]
    assert txn.data is None


def test_a_deferred_may_fire_with_a_response_or_taken():
    d: Deferred = Deferred()
    txn = run(lambda job: d, never)
    d.callback(Response(480, "Later"))
    assert [r.status for r in txn.answers] == [480]
    d2: Deferred = Deferred()
    txn = run(lambda job: d2, never)
    d2.callback(TAKEN)
    assert txn.answers == []


def test_a_failing_deferred_is_answered_500_naming_the_step():
    class Lookup:
        name = "location lookup"

        def __call__(self, job):
            return fail(RuntimeError("ring on fire"))

    txn = run(Lookup(), never)
    (r,) = txn.answers
    assert r.status == 500 and "location lookup" in r.reason


def test_cancel_while_waiting_ends_the_invite_487_and_the_chain_stops():
    d: Deferred = Deferred()
    txn = run(lambda job: d, never)
    pending = txn.data
    assert isinstance(pending, PendingLookup)
    pending.cancel()
    d.callback(CONTINUE)
    assert [r.status for r in txn.answers] == [487]


def test_cancel_while_waiting_then_the_wait_fails_is_487_too():
    d: Deferred = Deferred()
    txn = run(lambda job: d, never)
    txn.data.cancel()  # type: ignore[attr-defined]
    d.errback(RuntimeError("lookup failed"))
    assert [r.status for r in txn.answers] == [487]
