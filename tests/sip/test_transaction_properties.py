"""Property tests: random event orders never break the transaction invariants."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sosimple_proxy.sip.client_transaction import make_ack
from sosimple_proxy.sip.transaction_state import ACCEPTED, PROCEEDING, TERMINATED
from sosimple_proxy.testing.transaction import NEXT, NEXT_TCP, UA, UA_TCP, copy, make_layer, request, response

STATUSES = [100, 180, 183, 200, 202, 404, 486, 503, 603]

client_event = st.one_of(
    st.tuples(st.just("response"), st.sampled_from(STATUSES), st.sampled_from(["a", "b"])),
    st.tuples(st.just("advance"), st.floats(min_value=0, max_value=20)),
    st.tuples(st.just("fail"), st.booleans()),
    st.tuples(st.just("cancel")),
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "OPTIONS"]),
    tcp=st.booleans(),
    events=st.lists(client_event, max_size=25),
)
def test_client_transaction_invariants(method, tcp, events):
    layer, clock, wire, tu = make_layer()
    req = request(method, transport="TCP" if tcp else "UDP")
    txn = layer.send_request(req, NEXT_TCP if tcp else NEXT)
    saw_provisional = False
    for ev in events:
        if ev[0] == "response":
            _, status, tag = ev
            if method != "INVITE" and status == 202:
                status = 200
            layer.receive(response(req, status, to_tag=tag), NEXT_TCP if tcp else NEXT)
        elif ev[0] == "advance":
            clock.advance(ev[1])
        elif ev[0] == "fail":
            wire.fail_all = ev[1]
        else:
            txn.cancel()
        if txn.state is TERMINATED:
            assert layer._client.get(txn.key) is not txn
        saw_provisional = saw_provisional or any(r.status < 200 for r, t in tu.responses if t is txn)
    wire.fail_all = False
    clock.advance(0)
    clock.advance(1000)
    mine = [r.status for r, t in tu.responses if t is txn]
    finals = [s for s in mine if s >= 200]
    non2xx = [s for s in finals if s >= 300]
    # At most one non-2xx final reaches the TU, never after a 2xx.
    assert len(non2xx) <= 1
    if non2xx and any(s < 300 for s in finals):
        assert finals.index(non2xx[0]) < min(i for i, s in enumerate(finals) if s < 300) or False
    if method != "INVITE":
        # A non-INVITE transaction always ends with exactly one final response.
        assert len(finals) == 1
        assert txn.state is TERMINATED and layer.client_count <= 1
    elif not saw_provisional:
        assert finals, "an INVITE without provisional must time out (Timer B)"
    if txn.state is not PROCEEDING:
        assert txn.state is TERMINATED and txn.key not in layer._client
        # Everything of this transaction is gone; only a CANCEL may linger.
    if txn.state is TERMINATED and txn.cancel_transaction is None:
        assert clock.getDelayedCalls() == []
    # No provisional after a final reaches the TU.
    if finals:
        first_final = next(i for i, s in enumerate(mine) if s >= 200)
        assert all(s >= 200 for s in mine[first_final:])
    # Every send went to the transaction's destination.
    assert all(d == txn.dest for _, _, d, _ in wire.sent)


server_event = st.one_of(
    st.tuples(st.just("respond"), st.sampled_from(STATUSES)),
    st.tuples(st.just("retransmit")),
    st.tuples(st.just("ack")),
    st.tuples(st.just("advance"), st.floats(min_value=0, max_value=20)),
    st.tuples(st.just("fail"), st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "REGISTER"]),
    tcp=st.booleans(),
    trying=st.sampled_from([None, 0, 0.2]),
    events=st.lists(server_event, max_size=25),
)
def test_server_transaction_invariants(method, tcp, trying, events):
    layer, clock, wire, tu = make_layer(trying_delay=trying)
    src = UA_TCP if tcp else UA
    req = request(method, transport="TCP" if tcp else "UDP")
    layer.receive(copy(req), src)
    got, txn = tu.requests[0]
    final = None
    for ev in events:
        if ev[0] == "respond":
            status = ev[1]
            ok = txn.respond(response(got, status, to_tag="srv"))
            if ok and status >= 200 and final is None:
                final = status
            if final is not None and ok and status >= 200:
                # Only 2xx may follow a final, and only on an INVITE's 2xx.
                assert status == final or (method == "INVITE" and 200 <= final < 300 and status < 300)
        elif ev[0] == "retransmit":
            layer.receive(copy(req), src)
        elif ev[0] == "ack" and method == "INVITE":
            layer.receive(make_ack(req, response(req, final or 486, to_tag="srv")), src)
        elif ev[0] == "advance":
            clock.advance(ev[1])
        elif ev[0] == "fail":
            wire.fail_all = ev[1]
        if txn.state is TERMINATED:
            assert layer._server.get(txn.key) is not txn
    # The TU saw the request once: retransmissions never reach it while the
    # transaction lives.
    assert sum(1 for r, t in tu.requests if t is txn) == 1
    # Everything sent is a response, to the source (or its TCP fallback).
    for _, data, dest, _ in wire.sent:
        assert data.startswith(b"SIP/2.0 ")
        assert dest.host == src.host
    # After a final, the transaction ends by itself.
    wire.fail_all = False
    clock.advance(0)
    clock.advance(1000)
    if final is not None:
        assert txn.state is TERMINATED and layer._server.get(txn.key) is not txn
        assert clock.getDelayedCalls() == []
    elif method == "INVITE" and not tu.failures:
        assert txn.state is not TERMINATED  # an INVITE waits for the TU (Timer C is the proxy's)
    else:
        assert txn.state is TERMINATED  # an unanswered non-INVITE is forgotten after 64*T1 + T4
    assert txn.state is not ACCEPTED
