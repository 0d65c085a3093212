"""Every RFC 4475 / RFC 5118 message of the corpus as a test case.

Valid messages parse, validate, and round-trip (serialize, parse again) to
an equivalent message: same start line, same header values in order, same
body.  Invalid ones raise ParseError, with the partial request that lets the
stack answer 400 -- our documented choice where RFC 4475 lets a liberal
element accept (ltgtruri, lwsstart, escruri, regbadct, baddn): we reject,
which `checks/torture_live.py` accepts ({400, "processed"}).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sosimple_proxy.sip.message import Request, Response
from sosimple_proxy.sip.parser import ParseError, parse_message

# Every test here runs with the pure-Python parser and with the compiled one.
pytestmark = pytest.mark.usefixtures("parser_impl")

ROOT = Path(__file__).parent.parent / "data" / "torture"
MANIFEST = json.loads((ROOT / "manifest.json").read_text())

# name -> words the ParseError text must contain (our reason phrase).
REJECT = {
    "badinv01": "Via",
    "ncl": "Content-Length -999 is negative",
    "scalarlg": "CSeq number",
    "ltgtruri": "<>",
    "lwsstart": "white space",
    "escruri": "Request-URI must not contain headers",
    "regbadct": "Contact",
    "baddn": "empty line",
    "mismatch01": "CSeq method INVITE does not match request method OPTIONS",
    "bigcode": "status code",
    "insuf": "missing To, From, Call-ID",
    "mcl01": "conflicting Content-Length",
}


def load(entry: dict) -> bytes:
    return (ROOT / entry.get("wire_file", entry["file"])).read_bytes()


def header_values(msg) -> list[tuple[str, str]]:
    return [(k, v) for k, _n, v in msg.headers._fields if k != "content-length"]


def assert_round_trip(msg) -> None:
    again = parse_message(msg.serialize())
    assert again.start_line() == msg.start_line()
    assert header_values(again) == header_values(msg)
    assert again.body == msg.body


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_torture(entry: dict) -> None:
    data = load(entry)
    if entry["valid"]:
        msg = parse_message(data)
        assert isinstance(msg, Request if entry["kind"] == "request" else Response)
        assert_round_trip(msg)
        # Every structured view a proxy reads works on a valid message.
        msg.top_via, msg.vias, msg.cseq, msg.from_, msg.to, msg.call_id
        if isinstance(msg, Request):
            msg.ruri, msg.max_forwards, msg.routes, msg.contacts
    else:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        err = info.value
        assert REJECT[entry["name"]] in str(err)
        assert err.is_request == (entry["kind"] == "request")
        if err.is_request:
            # Enough to answer 400 with make_response.
            assert isinstance(err.partial, Request)
            assert err.partial.headers.get("via") is not None
            assert err.status == 400


def test_manifest_is_complete() -> None:
    invalid = {e["name"] for e in MANIFEST if not e["valid"]}
    assert invalid == set(REJECT)


def test_baddn_variant_rejects_unquoted_display_name() -> None:
    data = (ROOT / "rfc4475" / "variants" / "baddn.crlf-terminated.dat").read_bytes()
    with pytest.raises(ParseError, match="display name 'Bell, Alexander' must be"):
        parse_message(data)
    # Structurally it parses; only validation rejects it.
    msg = parse_message(data, validate=False)
    assert msg.method == "OPTIONS"


# -- the rest of RFC 4475 and RFC 5118, written from the RFCs' text -------
#
# Not bit-exact copies: rewritten from the RFCs' descriptions and listings
# (Content-Length computed here), to check that the parser follows the
# grammar and not the files above.  ``None`` = must parse and validate;
# a string = must raise ParseError containing it.

SDP = (
    b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\n"
    b"t=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
)


def wire(*lines: str | bytes, body: bytes = b"", length: int | None = None) -> bytes:
    out = b"".join((ln.encode("utf-8") if isinstance(ln, str) else ln) + b"\r\n" for ln in lines)
    if length is not None or body:
        out += b"Content-Length: %d\r\n" % (len(body) if length is None else length)
    return out + b"\r\n" + body


EXTRA: dict[str, tuple[bytes, str | None]] = {
    # 3.1.1.2: an unusual but valid method, URI, display name with escaped
    # control characters, UTF-8 values.
    "intmeth": (
        wire(
            "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
            ":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
            "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
            b'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>',
            "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.",
            "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
            "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
            "Max-Forwards: 255",
            "extensionHeader-!.%*+_`'~: \ufeff大停電",
            "Content-Length: 0",
        ),
        None,
    ),
    # 3.1.1.4: escaped NULs in URIs.
    "escnull": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "To: sip:null-%00-null@example.com",
            "From: sip:null-%00-null@example.com;tag=839923423",
            "Max-Forwards: 70",
            "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
            "CSeq: 14398234 REGISTER",
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
            "Contact: <sip:%00@host5.example.com>",
            "Contact: <sip:%00%00@host5.example.com>",
            "L:0",
        ),
        None,
    ),
    # 3.1.1.6: no LWS between display name and <.
    "lwsdisp": (
        wire(
            "OPTIONS sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: caller<sip:caller@example.com>;tag=323",
            "Max-Forwards: 70",
            "Call-ID: lwsdisp.1234abcd@funky.example.com",
            "CSeq: 60 OPTIONS",
            "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
            "l: 0",
        ),
        None,
    ),
    # 3.1.1.8: two requests in one datagram: the bytes after Content-Length go.
    "dblreq": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "To: sip:j.user@example.com",
            "From: sip:j.user@example.com;tag=43251j3j324",
            "Max-Forwards: 8",
            "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
            "Contact: sip:j.user@host.example.com",
            "CSeq: 8 REGISTER",
            "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
            "Content-Length: 0",
        )
        + wire(
            "INVITE sip:joe@example.com SIP/2.0",
            "t: sip:joe@example.com",
            "From: sip:caller@example.net;tag=141334",
            "Max-Forwards: 8",
            "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
            "CSeq: 8 INVITE",
            "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
            "Content-Type: application/sdp",
            body=SDP,
        ),
        None,
    ),
    # 3.1.1.10: unknown transports in Via.
    "transports": (
        wire(
            "OPTIONS sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: <sip:caller@example.com>;tag=323",
            "Max-Forwards: 70",
            "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
            "Accept: application/sdp",
            "CSeq: 60 OPTIONS",
            "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
            "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
            "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
            "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
            "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
            "l: 0",
        ),
        None,
    ),
    # 3.1.1.12: UTF-8 reason phrase.
    "unreason": (
        wire(
            "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
            "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
            "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
            "CSeq: 35 INVITE",
            "From: sip:user@example.com;tag=11141343",
            "To: sip:user@example.edu;tag=2229",
            "Content-Type: application/sdp",
            "Contact: <sip:user@host198.example.com>",
            body=SDP,
        ),
        None,
    ),
    # 3.1.2.2: Content-Length larger than the body.
    "clerr": (
        wire(
            "INVITE sip:user@example.com SIP/2.0",
            "Max-Forwards: 80",
            "To: sip:j.user@example.com",
            "From: sip:caller@example.net;tag=93942939o2",
            "Contact: <sip:caller@hungry.example.net>",
            "Call-ID: clerr.0ha0isndaksdjweiafasdk3",
            "CSeq: 8 INVITE",
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523",
            "Content-Type: application/sdp",
            body=SDP,
            length=9999,
        ),
        "Content-Length 9999 exceeds",
    ),
    # 3.1.2.4: overlarge scalars in a request.
    "scalar02": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
            "To: <sip:user@example.com>",
            "From: <sip:user@example.com>;tag=239232jh3",
            "CSeq: 36893488147419103232 REGISTER",
            "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
            "Max-Forwards: 300",
            "Expires: 1000000000000000000000000000000000000000",
            "Contact: <sip:user@host129.example.com>;expires=280297596632815",
            "Content-Length: 0",
        ),
        "CSeq number 36893488147419103232 is too large",
    ),
    # 3.1.2.6: unterminated quoted string in a display name.
    "quotbal": (
        wire(
            "INVITE sip:user@example.com SIP/2.0",
            'To: "Mr. J. User <sip:j.user@example.com>',
            "From: sip:caller@example.net;tag=93334",
            "Max-Forwards: 10",
            "Call-ID: quotbal.aksdj",
            "Contact: <sip:caller@host59.example.net>",
            "CSeq: 8 INVITE",
            "Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234",
            "Content-Type: application/sdp",
            body=SDP,
        ),
        "To: unterminated quoted display name",
    ),
    # 3.1.2.8: SP inside the Request-URI.
    "lwsruri": (
        wire(
            "INVITE sip:user@example.com; lr SIP/2.0",
            "To: sip:user@example.com;tag=3xfe-9921883-z9f",
            "From: sip:caller@example.net;tag=231413434",
            "Max-Forwards: 5",
            "Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423",
            "CSeq: 2130706432 INVITE",
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395",
            "Contact: <sip:caller1@host.example.net>",
            "Content-Type: application/sdp",
            body=SDP,
        ),
        "white space inside the Request-URI",
    ),
    # 3.1.2.10: trailing white space after the SIP-Version.
    "trws": (
        wire(
            "OPTIONS sip:remote-target@example.com SIP/2.0  ",
            "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093",
            "To: <sip:remote-target@example.com>",
            "From: <sip:local-resource@example.com>;tag=329429089",
            "Call-ID: trws.oicu34958239neffasdhr2345r",
            "Accept: application/sdp",
            "CSeq: 238923 OPTIONS",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ),
        "Request-Line has extra white space",
    ),
    # 3.1.2.14: spaces inside <> of an addr-spec (we reject, RFC allows it).
    "badaspec": (
        wire(
            "OPTIONS sip:user@example.org SIP/2.0",
            "Via: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234",
            "Max-Forwards: 70",
            'From: "Bell, Alexander" <sip:a.g.bell@example.com>;tag=433423',
            'To: "Watson, Thomas" < sip:t.watson@example.org >',
            "Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3",
            "Accept: application/sdp",
            "CSeq: 3923239 OPTIONS",
            "l: 0",
        ),
        "To: ' sip:t.watson@example.org ' is not an absolute URI",
    ),
    # 3.1.2.16: unknown protocol version (505).
    "badvers": (
        wire(
            "OPTIONS sip:t.watson@example.org SIP/7.0",
            "Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw",
            "Max-Forwards:     70",
            "From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe",
            "To:      T. Watson <sip:t.watson@example.org>",
            "Call-ID: badvers.31417@c.example.com",
            "CSeq:    1 OPTIONS",
            "l: 0",
        ),
        "SIP version SIP/7.0 is not supported",
    ),
    # 3.1.2.18: unknown method and a CSeq method that does not match it.
    "mismatch02": (
        wire(
            "NEWMETHOD sip:user@example.com SIP/2.0",
            "To: sip:j.user@example.com",
            "From: sip:caller@example.net;tag=34525",
            "Max-Forwards: 6",
            "Call-ID: mismatch02.dj0234sxdfl3",
            "CSeq: 8 INVITE",
            "Contact: <sip:caller@host.example.net>",
            "Via: SIP/2.0/UDP host.example.net;branch=z9hG4bKkdjuw",
            "Content-Type: application/sdp",
            body=SDP,
        ),
        "CSeq method INVITE does not match request method NEWMETHOD",
    ),
    # 3.3.2: unknown scheme in the Request-URI: parses (the proxy answers 416).
    "unkscm": (
        wire(
            "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:caller@example.net;tag=384",
            "Max-Forwards: 3",
            "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
            "CSeq: 3923423 OPTIONS",
            "Via: SIP/2.0/TCP host9.example.net;branch=z9hG4bKkdjuw39234",
            "Content-Length: 0",
        ),
        None,
    ),
    # 3.3.4: unknown schemes in To, From and Contact: they parse.
    "unksm2": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "To: isbn:2983792873",
            "From: <http://www.example.com>;tag=3234233",
            "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
            "CSeq: 234902 REGISTER",
            "Max-Forwards: 70",
            "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
            "Contact: <name:John_Smith>",
            "l: 0",
        ),
        None,
    ),
    # 3.3.8: several values in single-value headers.
    "multi01": (
        wire(
            "INVITE sip:user@company.com SIP/2.0",
            "Contact: <sip:caller@host25.example.net>",
            "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
            "Max-Forwards: 70",
            "CSeq: 5 INVITE",
            "Call-ID: multi01.98asdh@192.0.2.1",
            "CSeq: 59 INVITE",
            "Call-ID: multi01.98asdh@192.0.2.2",
            "From: sip:caller@example.com;tag=3413415",
            "To: sip:user@example.com",
            "To: sip:other@example.net",
            "From: sip:caller@example.net;tag=2923420123",
            "Content-Type: application/sdp",
            "Contact: <sip:caller@host36.example.net>",
            "Max-Forwards: 5",
            body=SDP,
        ),
        "more than one",
    ),
    # 3.3.10: an addr-spec Contact: ';unknownparam' is a Contact parameter.
    "cparam01": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
            "Max-Forwards: 70",
            "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe",
            "To: sip:watson@example.com",
            "Call-ID: cparam01.70710@saturn.example.com",
            "CSeq: 2 REGISTER",
            "Contact: sip:+19725552222@gw1.example.net;unknownparam",
            "l: 0",
        ),
        None,
    ),
    # 3.3.12: a Contact URI with an escaped header, properly in <>.
    "regescrt": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=8",
            "Max-Forwards: 70",
            "Call-ID: regescrt.k345asrl3fdbv@192.0.2.1",
            "CSeq: 14398234 REGISTER",
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
            "M: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
            "L:0",
        ),
        None,
    ),
    # 3.3.14 (invut): unknown Content-Type: parses (a UAS answers 415).
    "invut": (
        wire(
            "INVITE sip:user@example.com SIP/2.0",
            "Contact: <sip:caller@host5.example.net>",
            "To: sip:j.user@example.com",
            "From: sip:caller@example.net;tag=8392034",
            "Max-Forwards: 70",
            "Call-ID: invut.0ha0isndaksdjadsfij34n23d",
            "CSeq: 235448 INVITE",
            "Via: SIP/2.0/UDP somehost.example.com;branch=z9hG4bKkdjuw",
            "Content-Type: application/unknownformat",
            body=b'<audio>\r\n <pcmu port="443"/>\r\n</audio>\r\n',
        ),
        None,
    ),
    # 3.4.1: an RFC 2543 INVITE: no branch, no From tag, no Max-Forwards,
    # no Content-Length (a datagram: the body is the rest of it).
    "inv2543": (
        b"INVITE sip:UserB@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP iftgw.example.com\r\n"
        b"From: <sip:+13035551111@ift.client.example.net;user=phone>\r\n"
        b"Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>\r\n"
        b"To: sip:+16505552222@ss1.example.net;user=phone\r\n"
        b"Call-ID: inv2543.1717@ift.client.example.com\r\n"
        b"CSeq: 56 INVITE\r\n"
        b"Content-Type: application/sdp\r\n"
        b"\r\n" + SDP,
        None,
    ),
    # RFC 5118 4.2: an unbracketed IPv6 address in the Request-URI.
    "ipv6-bad": (
        wire(
            "REGISTER sip:2001:db8::10 SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=81x2",
            "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
            "Call-ID: SSG9559905523997077@hlau_4100",
            "Max-Forwards: 70",
            'Contact: "Caller" <sip:caller@[2001:db8::1]>',
            "CSeq: 98176 REGISTER",
            "Content-Length: 0",
        ),
        "must be enclosed in [ ]",
    ),
    # RFC 5118 4.3: [2001:db8::10:5070] is an address, not a port.
    "port-ambiguous": (
        wire(
            "REGISTER sip:[2001:db8::10:5070] SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=81x2",
            "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111",
            "Call-ID: SSG9559905523997077@hlau_4100",
            'Contact: "Caller" <sip:caller@[2001:db8::1]>',
            "Max-Forwards: 70",
            "CSeq: 98176 REGISTER",
            "Content-Length: 0",
        ),
        None,
    ),
    # RFC 5118 4.5: received with delimiters: accepted too.
    "via-received-param-with-delim": (
        wire(
            "OPTIONS sip:[2001:db8::10] SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=81x2",
            "Via: SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3",
            "Call-ID: SSG95523997077@hlau_4100",
            "Max-Forwards: 70",
            'Contact: "Caller" <sip:caller@[2001:db8::9:1]>',
            "CSeq: 921 OPTIONS",
            "Content-Length: 0",
        ),
        None,
    ),
    # RFC 5118 4.7: IPv4 and IPv6 Vias mixed.
    "mult-ip-in-header": (
        wire(
            "BYE sip:user@host.example.net SIP/2.0",
            "Via: SIP/2.0/UDP [2001:db8::9:255];branch=z9hG4bKas3-111;received=2001:db8::9:255",
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKjhja8781hjuaij65144",
            "Via: SIP/2.0/TCP [2001:db8::9:255]:5060;branch=z9hG4bKjhja8781hjuaij65144;received=[2001:db8::9:255]",
            "Call-ID: 997077@lau_4100",
            "Max-Forwards: 70",
            "CSeq: 89187 BYE",
            "To: sip:user@example.net;tag=9817--94",
            "From: sip:user@example.com;tag=81x2",
            "Content-Length: 0",
        ),
        None,
    ),
    # RFC 5118 4.9: IPv4-mapped IPv6 addresses.
    "ipv4-mapped-ipv6": (
        wire(
            "INVITE sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:user@east.example.com;tag=81x2",
            "Via: SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19",
            "Via: SIP/2.0/UDP [::ffff:192.0.2.2]:10820;branch=z9hG4bKas3-111",
            "Call-ID: SSG9559905523997077@hlau_4100",
            "Contact: \"T. desk phone\" <sip:ted@[::ffff:192.0.2.2]:10820>",
            "CSeq: 612 INVITE",
            "Max-Forwards: 70",
            "Content-Type: application/sdp",
            body=b"v=0\r\no=assistant 971731711378798081 0 IN IP6 ::ffff:192.0.2.2\r\ns=Call me soon, please!\r\n"
            b"c=IN IP6 ::ffff:192.0.2.2\r\nt=3338481189 3370017201\r\nm=audio 6000 RTP/AVP 2\r\n",
        ),
        None,
    ),
    # RFC 5118 4.10: three colons: not an IPv6 address.
    "ipv6-bug-abnf-3-colons": (
        wire(
            "OPTIONS sip:user@[2001:db8:::192.0.2.1] SIP/2.0",
            "To: sip:user@[2001:db8:::192.0.2.1]",
            "From: sip:user@example.com;tag=810x2",
            "Via: SIP/2.0/UDP lab1.east.example.com;branch=z9hG4bKas3-111",
            "Call-ID: G9559905523997077@hlau_4100",
            "CSeq: 689 OPTIONS",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ),
        "Request-URI: invalid IPv6 address '2001:db8:::192.0.2.1'",
    ),
    # Via with an unbracketed IPv6 sent-by (RFC 5118 4.5: must be bracketed).
    "via-sent-by-no-brackets": (
        wire(
            "OPTIONS sip:[2001:db8::10] SIP/2.0",
            "To: sip:user@example.com",
            "From: sip:user@example.com;tag=81x2",
            "Via: SIP/2.0/UDP 2001:db8::9:1;branch=z9hG4bKas3",
            "Call-ID: SSG95523997077@hlau_4100",
            "Max-Forwards: 70",
            "CSeq: 921 OPTIONS",
            "Content-Length: 0",
        ),
        "Via: IPv6 address '2001:db8::9:1' must be enclosed in [ ]",
    ),
    # Quoted strings with escapes and commas in a list header.
    "quoted-commas": (
        wire(
            "REGISTER sip:example.com SIP/2.0",
            "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKq1",
            'To: "a \\"quoted\\", name" <sip:user@example.com>',
            "From: <sip:user@example.com>;tag=1",
            "Call-ID: q1@h",
            "CSeq: 1 REGISTER",
            'Contact: "x, y" <sip:a@h1.example.com>;q=0.5, "z\\\\" <sip:b@[2001:db8::10]:5070>;expires=60, sip:c@h3',
            "l: 0",
        ),
        None,
    ),
}


@pytest.mark.parametrize("name", list(EXTRA))
def test_extra(name: str) -> None:
    data, expect = EXTRA[name]
    if expect is None:
        msg = parse_message(data)
        assert_round_trip(msg)
        msg.top_via, msg.vias, msg.cseq, msg.from_, msg.to, msg.contacts
        if isinstance(msg, Request):
            msg.ruri, msg.routes, msg.record_routes
    else:
        with pytest.raises(ParseError) as info:
            parse_message(data)
        assert expect in str(info.value)
        if info.value.is_request:
            assert info.value.partial is not None


def test_extra_details() -> None:
    m = parse_message(EXTRA["intmeth"][0])
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.from_.tag == "_token~1'+`*%!-."
    m = parse_message(EXTRA["dblreq"][0])
    assert m.method == "REGISTER" and m.body == b""
    m = parse_message(EXTRA["transports"][0])
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    m = parse_message(EXTRA["unreason"][0])
    assert m.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"
    m = parse_message(EXTRA["cparam01"][0])
    c = m.contacts[0]
    assert "unknownparam" in c.params and not c.uri.params
    m = parse_message(EXTRA["regescrt"][0])
    assert m.contacts[0].uri.headers == [("Route", "%3Csip:sip.example.com%3E")]
    m = parse_message(EXTRA["inv2543"][0])
    assert m.max_forwards is None and m.top_via.branch is None and m.from_.tag is None
    assert m.body == SDP
    assert m.to.params == {"user": "phone"} and not m.to.uri.params
    m = parse_message(EXTRA["port-ambiguous"][0])
    assert m.ruri.host == "2001:db8::10:5070" and m.ruri.port is None
    m = parse_message(EXTRA["via-received-param-with-delim"][0])
    assert m.top_via.received == "2001:db8::9:255"
    m = parse_message(EXTRA["quoted-commas"][0])
    assert [c.uri.host for c in m.contacts] == ["h1.example.com", "2001:db8::10", "h3"]
    assert m.contacts[0].display == "x, y" and m.contacts[1].display == "z\\"
    assert m.to.display == 'a "quoted", name'
    m = parse_message(EXTRA["escnull"][0])
    assert [c.uri.user for c in m.contacts] == ["%00", "%00%00"]
    m = parse_message(EXTRA["unkscm"][0])
    assert m.ruri.scheme == "nobodyknowsthisscheme" and m.ruri.opaque == "totallyopaquecontent"
    with pytest.raises(ParseError) as info:
        parse_message(EXTRA["badvers"][0])
    assert info.value.status == 505
