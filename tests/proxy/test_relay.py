"""The relay rule in the whole proxy core (issue 10, "No open relay, no toll
fraud"): every provider of the chain and preloaded Routes, with and
without a users file; stamped dialogs; emergency numbers; [pstn] callers.

Strangers send from 192.0.2.x; 127.0.0.1 (where the harness registers
phones from) is trusted unless a test says otherwise.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from twisted.internet import defer

from sosimple_proxy.location.rfc3263 import Destination
from sosimple_proxy.security.digest import answer_challenge
from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.sip.address import Peer
from sosimple_proxy.sip.message import Request, Response

from tests.proxy.harness import Harness, invite

STRANGER = Peer("udp", "192.0.2.66", 5070)
GW = Peer("udp", "127.0.0.1", 5081)
OTHER = Peer("udp", "127.0.0.1", 5090)
BOB = "sip:bob@127.0.0.5:6001"

PSTN = (
    "[pstn]\ncountry_code = 1\nlocal_patterns = ^(911)$ => +\\1\nprobe_interval = 0\n"
    "emergency = 911 112\n{callers}"
    "[gateway:gw]\nuri = sip:127.0.0.1:5081\n"
    "[routes]\nother.test = sip:127.0.0.1:5090\n"
    "[did]\n+15550001111 = sip:someone@other.test\n"
    "[location]\norder = local routes dns pstn\n"
)


class Zone:
    """An RFC 3263 resolver that knows one domain."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolve(self, uri):  # noqa: ANN001
        self.asked.append(uri.host)
        return defer.succeed([Destination("udp", "127.0.0.1", 5095)])


def users(tmp_path: Path) -> str:
    path = tmp_path / "users"
    path.write_text(UserEntry.from_password("alice", "example.com", "secret").line() + "\n"
                    + UserEntry.from_password("carol", "example.com", "pw").line() + "\n")
    return str(path)


def relay_harness(tmp_path: Path | None = None, callers: str = "", trusted: str = "127.0.0.1",
                  required: str = "") -> Harness:
    auth = f"[auth]\ntrusted = {trusted}\n"
    if tmp_path is not None:
        auth += f"users_file = {users(tmp_path)}\n"
    if required:
        auth += f"required = {required}\n"
    return Harness(PSTN.format(callers=f"callers = {callers}\n" if callers else "") + auth, rfc3263=Zone())


def forwarded(h: Harness, sent=None) -> list[tuple[Request, Peer]]:
    return h.sent_requests(h.wire.take() if sent is None else sent)


def final(sent) -> Response:
    finals = [m for m, _ in sent if isinstance(m, Response) and m.status >= 200]
    assert len(finals) == 1, sent
    return finals[0]


def from_stranger(uri: str, sender: str = "sip:x@other.test", **kw) -> str:
    return invite(uri, **kw).replace("sip:alice@example.com", sender)


ELSEWHERE = [
    pytest.param("tel:+15551234567", id="pstn"),
    pytest.param("sip:+15551234567@example.com;user=phone", id="pstn-sip"),
    pytest.param("sip:x@other.test", id="routes"),
    pytest.param("sip:x@dns.example.net", id="dns"),
    pytest.param("sip:x@192.0.2.99:5060", id="ip-literal"),
    pytest.param("sip:+15550001111@example.com;user=phone", id="did-maps-out"),
]


@pytest.mark.parametrize("uri", ELSEWHERE)
def test_a_stranger_reaches_no_other_next_hop_403(uri):
    h = relay_harness()
    h.receive(from_stranger(uri), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == []
    answer = final(sent)
    assert answer.status == 403 and answer.reason.startswith("Relaying Denied")


@pytest.mark.parametrize("uri", ELSEWHERE)
def test_with_users_a_from_of_ours_is_challenged_407_instead(tmp_path, uri):
    h = relay_harness(tmp_path, required="no")
    h.receive(invite(uri), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 407


def test_a_preloaded_route_to_a_gateway_with_a_made_up_to_tag_is_refused():
    h = relay_harness()
    h.receive(from_stranger("sip:+15551234567@127.0.0.1:5081", to_tag="madeup",
                            extra="Route: <sip:127.0.0.1:5081;lr>\n"), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 403
    # the same without a To tag (Kind.PRELOADED), and through our own address first
    h.receive(from_stranger("sip:+15551234567@127.0.0.1:5081", branch="z9hG4bK-2",
                            extra="Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5081;lr>\n"), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 403


def test_a_forged_stamp_is_no_stamp():
    h = relay_harness()
    h.receive(from_stranger("sip:x@192.0.2.99", method="BYE", to_tag="t",
                            extra=f"Route: <sip:127.0.0.1:5060;lr;sst={'0' * 32}>\n"), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 403


def test_a_stranger_reaches_our_users_and_the_dialog_both_ways():
    h = relay_harness()
    h.register("bob", BOB)
    h.receive(from_stranger("sip:bob@example.com", extra="Contact: <sip:x@192.0.2.66:5070>\n")
              .replace("Contact: <sip:alice@127.0.0.1:5070>\n", ""), STRANGER)
    (inv, _), = forwarded(h)
    assert inv.uri == BOB
    (rr,) = inv.headers.get_all("record-route")
    h.answer(inv, 200, to_tag="bobtag")
    h.wire.take()
    # the caller's BYE: our stamped Record-Route on top
    h.receive(
        f"BYE {BOB} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.66:5070;branch=z9hG4bK-bye1;rport\nMax-Forwards: 70\n"
        "From: <sip:x@other.test>;tag=a1\nTo: <sip:bob@example.com>;tag=bobtag\nCall-ID: call-1@caller\n"
        f"CSeq: 2 BYE\nRoute: {rr}\nContent-Length: 0\n\n",
        STRANGER,
    )
    (bye, dest), = forwarded(h)
    assert bye.uri == BOB
    # the callee's BYE back to the foreign caller: tags swapped
    h.receive(
        "BYE sip:x@192.0.2.66:5070 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.5:6001;branch=z9hG4bK-bye2;rport\n"
        "Max-Forwards: 70\nFrom: <sip:bob@example.com>;tag=bobtag\nTo: <sip:x@other.test>;tag=a1\n"
        f"Call-ID: call-1@caller\nCSeq: 1 BYE\nRoute: {rr}\nContent-Length: 0\n\n",
        Peer("udp", "127.0.0.5", 6001),
    )
    (back, dest), = forwarded(h)
    assert back.uri == "sip:x@192.0.2.66:5070" and dest == Peer("udp", "192.0.2.66", 5070)
    # the same BYE in another dialog: the stamp does not match
    h.receive(
        "BYE sip:x@192.0.2.66:5070 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.5:6001;branch=z9hG4bK-bye3;rport\n"
        "Max-Forwards: 70\nFrom: <sip:bob@example.com>;tag=bobtag\nTo: <sip:x@other.test>;tag=a1\n"
        f"Call-ID: another-call\nCSeq: 1 BYE\nRoute: {rr}\nContent-Length: 0\n\n",
        Peer("udp", "127.0.0.5", 6001),
    )
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 403


def test_a_stray_2xx_ack_follows_only_stamped_routes():
    h = relay_harness()
    h.receive(from_stranger("sip:+15551234567@127.0.0.1:5081", method="ACK", to_tag="t",
                            extra="Route: <sip:127.0.0.1:5081;lr>\n"), STRANGER)
    assert forwarded(h) == []
    h.receive(from_stranger("sip:+15551234567@127.0.0.1:5081", method="ACK", to_tag="t", branch="z9hG4bK-a2",
                            extra="Route: <sip:127.0.0.1:5081;lr>\n"), Peer("udp", "127.0.0.1", 5070))
    assert [r.method for r, _ in forwarded(h)] == ["ACK"]


def test_a_2xx_ack_leaves_without_our_realms_credentials(tmp_path):
    """RFC 3261 22.3: our realm's Proxy-Authorization stops here on the ACK
    of a 2xx as on the INVITE it repeats; another realm's goes on."""
    h = relay_harness(tmp_path)
    realm = h.proxy.core.ack_gate.realm
    assert realm
    ours = f'Digest username="alice", realm="{realm}", nonce="n", uri="sip:x@other.test", response="00"'
    theirs = 'Digest username="alice", realm="carrier.test", nonce="m", uri="sip:x@other.test", response="11"'
    h.receive(invite("sip:x@other.test", method="ACK", to_tag="t", branch="z9hG4bK-ack-pa",
                     extra=f"Proxy-Authorization: {ours}\nProxy-Authorization: {theirs}\n"),
              Peer("udp", "127.0.0.1", 5070))
    (ack, _), = forwarded(h)
    assert ack.method == "ACK"
    assert ack.headers.get_all("proxy-authorization") == [theirs]


def test_an_emergency_number_from_our_domain_reaches_the_gateway_without_credentials(tmp_path):
    h = relay_harness(tmp_path)
    h.receive(invite("sip:911@example.com"), STRANGER)
    (inv, dest), = forwarded(h)
    assert dest == GW and "911" in inv.uri
    # from a foreign domain it is a stranger's call to the PSTN
    h.receive(from_stranger("sip:911@example.com", branch="z9hG4bK-e2", call_id="e2"), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 403


_calls = itertools.count()


def _authenticated_invite(h: Harness, uri: str, user: str, password: str) -> list:
    sender = f"sip:{user}@example.com"
    n = next(_calls)
    h.receive(invite(uri, branch=f"z9hG4bK-{n}", call_id=f"a{n}").replace("sip:alice@example.com", sender), STRANGER)
    challenge = final(h.wire.take())
    assert challenge.status == 407
    value = answer_challenge(challenge.headers.get("proxy-authenticate"), user, password, "INVITE", uri)
    h.receive(invite(uri, branch=f"z9hG4bK-{n}b", call_id=f"a{n}", cseq=2, extra=f"Proxy-Authorization: {value}\n")
              .replace("sip:alice@example.com", sender), STRANGER)
    return h.wire.take()


def test_an_authenticated_user_reaches_the_gateway_with_an_asserted_identity(tmp_path):
    h = relay_harness(tmp_path)
    sent = _authenticated_invite(h, "tel:+15551234567", "alice", "secret")
    (inv, dest), = forwarded(h, sent)
    assert dest == GW
    assert inv.headers.get_all("p-asserted-identity") == ["<sip:alice@example.com>"]
    assert "proxy-authorization" not in inv.headers


def test_an_authenticated_user_relays_to_other_domains(tmp_path):
    h = relay_harness(tmp_path)
    sent = _authenticated_invite(h, "sip:x@other.test", "alice", "secret")
    (inv, dest), = forwarded(h, sent)
    # 127.0.0.1 is trusted here: the identity is asserted to it
    assert dest == OTHER and inv.headers.get_all("p-asserted-identity") == ["<sip:alice@example.com>"]
    sent = _authenticated_invite(h, "sip:x@192.0.2.99:5060", "alice", "secret")
    (inv, dest), = forwarded(h, sent)
    assert dest.host == "192.0.2.99" and "p-asserted-identity" not in inv.headers  # not a trusted peer


def test_callers_trusted_refuses_our_users(tmp_path):
    h = relay_harness(tmp_path, callers="trusted")
    sent = _authenticated_invite(h, "tel:+15551234567", "alice", "secret")
    assert forwarded(h, sent) == [] and final(sent).status == 403
    h.receive(invite("tel:+15551234567", branch="z9hG4bK-t"), Peer("udp", "127.0.0.1", 5070))
    assert [d for _, d in forwarded(h)] == [GW]


def test_callers_as_a_list_of_users(tmp_path):
    h = relay_harness(tmp_path, callers="carol")
    sent = _authenticated_invite(h, "tel:+15551234567", "alice", "secret")
    assert forwarded(h, sent) == [] and final(sent).status == 403
    sent = _authenticated_invite(h, "tel:+15551234567", "carol", "pw")
    assert [d for _, d in forwarded(h, sent)] == [GW]


def test_trusted_sources_relay_anywhere():
    h = relay_harness()
    for n, uri in enumerate(("sip:x@other.test", "tel:+15551234567")):
        h.receive(invite(uri, branch=f"z9hG4bK-{n}", call_id=f"t{n}"), Peer("udp", "127.0.0.1", 5070))
        assert len(forwarded(h)) == 1


def test_asserted_identity_of_strangers_is_removed():
    h = relay_harness()
    h.register("bob", BOB)
    h.receive(from_stranger("sip:bob@example.com", extra="P-Asserted-Identity: <sip:911@example.com>\n"), STRANGER)
    (inv, _), = forwarded(h)
    assert "p-asserted-identity" not in inv.headers


def test_a_request_along_a_path_to_a_contact_of_our_user_passes():
    """Another proxy of the ring routes to our user through us (their Path):
    the Request-URI is the registered contact, the To our user's AoR."""
    h = relay_harness()
    h.register("bob", BOB)
    h.receive(from_stranger(BOB).replace(f"To: <{BOB}>", "To: <sip:bob@example.com>"), STRANGER)
    (inv, _), = forwarded(h)
    assert inv.uri == BOB


def test_a_preloaded_route_to_a_gateway_obeys_pstn_callers(tmp_path):
    h = relay_harness(tmp_path, callers="trusted")
    sent = _authenticated_invite(h, "sip:+15551234567@127.0.0.1:5081", "alice", "secret")
    assert forwarded(h, sent) == [] and final(sent).status == 403  # the Request-URI names the gateway
    h2 = relay_harness(tmp_path, callers="trusted")
    n = next(_calls)
    uri = "sip:x@192.0.2.99"
    route = "Route: <sip:127.0.0.1:5081;lr>\n"
    h2.receive(invite(uri, branch=f"z9hG4bK-{n}", call_id=f"a{n}", extra=route), STRANGER)
    challenge = final(h2.wire.take())
    value = answer_challenge(challenge.headers.get("proxy-authenticate"), "alice", "secret", "INVITE", uri)
    h2.receive(invite(uri, branch=f"z9hG4bK-{n}b", call_id=f"a{n}", cseq=2,
                      extra=f"{route}Proxy-Authorization: {value}\n"), STRANGER)
    sent = h2.wire.take()
    assert forwarded(h2, sent) == [] and final(sent).status == 403


def test_an_emergency_call_with_wrong_credentials_is_not_held_up(tmp_path):
    h = relay_harness(tmp_path)
    bad = ('Digest username="alice", realm="example.com", nonce="x", uri="sip:911@example.com", '
           f'response="{"0" * 64}", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"')
    h.receive(invite("sip:911@example.com", extra=f"Proxy-Authorization: {bad}\n"), STRANGER)
    (inv, dest), = forwarded(h)
    assert dest == GW


def test_dialog_stamp_unit():
    from sosimple_proxy.proxy.dialog_stamp import DialogStamp
    from sosimple_proxy.sip.parser import parse_message

    stamp = DialogStamp(b"k" * 32)
    other = DialogStamp(b"j" * 32)
    value = stamp.value("cid", "ftag")
    assert len(value) == 32 and value != other.value("cid", "ftag") and value != stamp.value("cid", "x")

    def bye(route: str, ruri: str = "sip:x@192.0.2.1") -> Request:
        return parse_message(
            (f"BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nFrom: <sip:b@x>;tag=ttag\r\n"
             f"To: <sip:a@y>;tag=ftag\r\nCall-ID: cid\r\nCSeq: 1 BYE\r\n{route}Content-Length: 0\r\n\r\n").encode())

    ours = lambda uri: uri.host == "127.0.0.1"  # noqa: E731
    assert stamp.verify(bye(f"Route: <sip:127.0.0.1;lr;sst={value}>\r\n"), ours)  # the callee's side: To tag
    assert not stamp.verify(bye(f"Route: <sip:192.0.2.9;lr;sst={value}>\r\n"), ours)  # not our address
    assert not other.verify(bye(f"Route: <sip:127.0.0.1;lr;sst={value}>\r\n"), ours)  # another secret
    assert not stamp.verify(bye(""), ours)
    # a strict router put our Record-Route URI in the Request-URI
    assert stamp.verify(bye("Route: <sip:x@192.0.2.1>\r\n", ruri=f"sip:127.0.0.1;lr;sst={value}"), ours)


def test_a_path_request_whose_to_is_not_the_aor_still_reaches_the_contact():
    """Another proxy retargeted (a DID, a ring lookup by our IP) before
    routing to our user: the To is not the AoR, the Request-URI is the contact."""
    h = relay_harness()
    h.register("bob", BOB)
    h.receive(from_stranger(BOB).replace(f"To: <{BOB}>", "To: <sip:+14125550100@127.0.0.1:5061>"), STRANGER)
    (inv, _), = forwarded(h)
    assert inv.uri == BOB
    h.answer(inv, 200)
    h.advance(3700)  # the binding expired: the contact is nobody's now
    h.wire.take()
    h.receive(from_stranger(BOB, branch="z9hG4bK-x2", call_id="x2"), STRANGER)
    sent = h.wire.take()
    assert forwarded(h, sent) == [] and final(sent).status == 403


def test_a_request_along_our_stamped_path_reaches_the_contact_after_a_restart():
    """Issue 15: the ring keeps a registration with the Path we published
    (``;pst=``) while we restarted and lost our bindings from memory; another
    proxy routes a request to the contact along it: it goes through.  A
    forged stamp, a stamp for another contact, an expired one, or no stamp
    at all get 403 as before."""
    from sosimple_proxy.location.bindings import Binding
    from sosimple_proxy.proxy import routing

    h = relay_harness()
    auth = next(p for p in h.core.chain.processors if getattr(p, "name", "") == "authenticate")
    before = Binding("bob@example.com", BOB, h.clock.seconds() + 600, "c", 1)  # what we held before the restart
    path = routing.self_route(h.wire.listening(), before, auth.path_stamp.value)
    assert ";pst=" in path

    def along(route: str, uri: str = BOB, n: str = "1"):
        h.receive(from_stranger(uri, branch=f"z9hG4bK-p{n}", call_id=f"p{n}", extra=f"Route: {route}\n")
                  .replace(f"To: <{uri}>", "To: <sip:bob@example.com>"), STRANGER)
        return h.wire.take()

    sent = along(path)
    (inv, dest), = forwarded(h, sent)
    assert inv.uri == BOB and (dest.host, dest.port) == ("127.0.0.5", 6001)
    assert "route" not in inv.headers  # our own entry was removed (RFC 3261 16.4)
    mac = path.split(";pst=", 1)[1].rstrip(">")
    forged = path.replace(mac, mac.split(".")[0] + "." + "0" * 32)
    for n, (route, uri) in enumerate([(forged, BOB), (path, "sip:eve@192.0.2.99:5060"),
                                      ("<sip:127.0.0.1:5060;lr>", BOB)], 2):
        sent = along(route, uri, str(n))
        assert forwarded(h, sent) == [] and final(sent).status == 403, route
    h.advance(601)
    h.wire.take()
    sent = along(path, BOB, "9")
    assert forwarded(h, sent) == [] and final(sent).status == 403  # the binding it was made for has expired
