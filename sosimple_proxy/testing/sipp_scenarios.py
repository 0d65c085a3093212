"""SIPp scenarios built from steps, and reading what SIPp saw.

Scenario XML written out whole in each test repeats the same requests and
answers with small changes; these steps write the common ones (send a
MESSAGE, expect a response, answer the last request) so that a scenario
reads as its steps::

    scenario("MESSAGE to an unknown user",
             send_message_step("sip:nobody@example.com", "hello"),
             expect_response(404))

SIPp strips each message line, so the steps write them unindented.
"""

from __future__ import annotations

import re

__all__ = [
    "SDP",
    "scenario",
    "send_message_step",
    "invite_step",
    "ack_non_2xx_step",
    "ack_bye_steps",
    "expect_response",
    "receive_request",
    "answer_step",
    "ere",
    "sent_messages",
]

# A minimal audio offer or answer (PCMU), with SIPp's own addresses.
SDP = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0
a=rtpmap:0 PCMU/8000
"""


def scenario(name: str, *steps: str) -> str:
    """A whole SIPp scenario named ``name`` of ``steps`` (XML pieces)."""
    return f'<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="{name}">\n' + "".join(steps) + "</scenario>\n"


def send_message_step(ruri: str, text: str, *, from_uri: str = "sip:sipp@example.com", max_forwards: int = 70) -> str:
    """Send a MESSAGE (``text/plain``) to ``ruri``, retransmitted over UDP."""
    return f"""  <send retrans="500">
    <![CDATA[
MESSAGE {ruri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: {max_forwards}
From: <{from_uri}>;tag=[pid]SIPpTag00[call_number]
To: <{ruri}>
Call-ID: [call_id]
CSeq: 1 MESSAGE
Content-Type: text/plain
Content-Length: [len]

{text}
    ]]>
  </send>
"""


def _flags(**flags: bool) -> str:
    return "".join(f' {name}="true"' for name, on in flags.items() if on)


def invite_step(ruri: str, *, from_uri: str = "sip:sipp@example.com") -> str:
    """Send an INVITE with an SDP offer to ``ruri``, retransmitted over UDP."""
    user = from_uri.split(":", 1)[1].split("@", 1)[0]
    return f"""  <send retrans="500">
    <![CDATA[
INVITE {ruri} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <{from_uri}>;tag=[pid]SIPpTag00[call_number]
To: <{ruri}>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:{user}@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

{SDP}
    ]]>
  </send>
"""


def ack_non_2xx_step(ruri: str, *, from_uri: str = "sip:sipp@example.com") -> str:
    """The ACK of a non-2xx final response: the INVITE's branch (its Via
    comes back in the response), To with the response's tag (RFC 3261 17.1.1.3)."""
    return f"""  <send>
    <![CDATA[
ACK {ruri} SIP/2.0
[last_Via:]
From: <{from_uri}>;tag=[pid]SIPpTag00[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""


def _in_dialog(method: str, cseq: int, ruri: str, from_uri: str, retrans: bool) -> str:
    user = from_uri.split(":", 1)[1].split("@", 1)[0]
    return f"""  <send{' retrans="500"' if retrans else ""}>
    <![CDATA[
{method} [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
[routes]
From: <{from_uri}>;tag=[pid]SIPpTag00[call_number]
To: <{ruri}>[peer_tag_param]
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:{user}@[local_ip]:[local_port];transport=[transport]>
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
"""


def ack_bye_steps(ruri: str, *, from_uri: str = "sip:sipp@example.com") -> str:
    """ACK a 2xx, then hang up with BYE and expect its 200: the Request-URI
    from the 2xx's Contact and the route set from its Record-Route (receive
    the 2xx with ``expect_response(200, rrs=True)``)."""
    return (
        _in_dialog("ACK", 1, ruri, from_uri, retrans=False)
        + '  <pause milliseconds="100"/>\n'
        + _in_dialog("BYE", 2, ruri, from_uri, retrans=True)
        + expect_response(200, crlf=True)
    )


def expect_response(status: int | str, *, optional: bool = False, crlf: bool = False, rrs: bool = False) -> str:
    """Wait for a response with ``status``; ``rrs`` keeps its Record-Route
    and Contact for the requests of the dialog (``[routes]``, ``[next_url]``)."""
    return f'  <recv response="{status}"{_flags(optional=optional, crlf=crlf, rrs=rrs)}/>\n'


def receive_request(method: str, *, crlf: bool = False) -> str:
    """Wait for a ``method`` request."""
    return f'  <recv request="{method}"{_flags(crlf=crlf)}/>\n'


def answer_step(
    status: str, *, sdp: bool = False, in_dialog: bool = False, record_route: bool = True, contact: bool = True
) -> str:
    """Answer the last request received with ``status`` (``"200 OK"``):
    its Via, From, To (with our tag unless ``in_dialog``: it has it already),
    Call-ID and CSeq copied, its Record-Route echoed, our Contact; with
    ``sdp`` an SDP answer, retransmitted until the ACK."""
    to_tag = "" if in_dialog else ";tag=[pid]SIPpTag01[call_number]"
    lines = ["[last_Via:]", "[last_From:]", f"[last_To:]{to_tag}", "[last_Call-ID:]", "[last_CSeq:]"]
    if record_route:
        lines.append("[last_Record-Route:]")
    if contact:
        lines.append("Contact: <sip:[local_ip]:[local_port];transport=[transport]>")
    if sdp:
        lines.append("Content-Type: application/sdp")
    lines.append("Content-Length: [len]")
    retrans = ' retrans="500"' if sdp else ""
    head = "\n".join(lines)
    return f"""  <send{retrans}>
    <![CDATA[
SIP/2.0 {status}
{head}

{SDP if sdp else ""}
    ]]>
  </send>
"""


def ere(text: str) -> str:
    """``text`` as a POSIX extended regexp (SIPp's), matching itself."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


def sent_messages(trace: str, method: str) -> list[str]:
    """The messages SIPp's ``-trace_msg`` log shows it sent whose first line starts with ``method``."""
    out = []
    for block in re.split(r"\n-{20,}[^\n]*\n", "\n" + trace):
        head, _, msg = block.partition("\n\n")
        if "message sent" in head and msg.lstrip().startswith(method + " "):
            out.append(msg.strip())
    return out
