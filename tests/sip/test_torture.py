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
