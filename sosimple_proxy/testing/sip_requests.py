"""SIP requests as text, and one request/response exchange over UDP.

End-to-end tests talk to the proxy the way a phone does, with a few
hand-written requests (REGISTER, MESSAGE, OPTIONS) from a fresh UDP socket.
The builders here write the headers RFC 3261 requires (Via with a fresh
branch and ``rport``, Max-Forwards, From with a tag, To, Call-ID, CSeq,
Content-Length) so that a test only says what matters to it.
"""

from __future__ import annotations

import secrets
import socket
import time
from typing import Callable, Sequence

__all__ = [
    "hostport",
    "sip_request",
    "options_request",
    "register_request",
    "message_request",
    "udp_exchange",
    "udp_final_response",
    "status_line",
    "sip_options_ping",
    "register_contact",
    "send_message",
]

# A request, or a function of the local port it is sent from (for the Via).
RequestSource = str | bytes | Callable[[int], "str | bytes"]


def hostport(host: str, port: int) -> str:
    """``host:port``, with brackets for an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _uri(aor: str) -> str:
    return aor if aor.startswith(("sip:", "sips:", "tel:")) else f"sip:{aor}"


def sip_request(
    method: str,
    ruri: str,
    *,
    to: str,
    from_: str,
    via_port: int,
    via_host: str = "127.0.0.1",
    transport: str = "UDP",
    call_id: str | None = None,
    cseq: int = 1,
    headers: Sequence[str] = (),
    body: str = "",
    tag: str | None = None,
    max_forwards: int = 70,
) -> str:
    """One request's text (CRLF line ends).  ``to`` and ``from_`` are AoRs
    (``alice@example.com`` or a URI); ``headers`` are extra lines such as
    ``"Contact: <sip:alice@127.0.0.1:5070>"``."""
    tag = tag or secrets.token_hex(4)
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {hostport(via_host, via_port)};branch=z9hG4bK-{secrets.token_hex(8)};rport",
        f"Max-Forwards: {max_forwards}",
        f"From: <{_uri(from_)}>;tag={tag}",
        f"To: <{_uri(to)}>",
        f"Call-ID: {call_id or secrets.token_hex(8)}@{via_host}",
        f"CSeq: {cseq} {method}",
        *headers,
        f"Content-Length: {len(body.encode())}",
    ]
    return "\r\n".join(lines) + "\r\n\r\n" + body


def options_request(host: str, port: int, via_host: str, via_port: int, transport: str = "UDP") -> bytes:
    """An OPTIONS addressed to the proxy itself (no user part), for probing."""
    hp, vhp = hostport(host, port), hostport(via_host, via_port)
    return sip_request(
        "OPTIONS",
        f"sip:{hp}",
        to=f"sip:{hp}",
        from_=f"sip:probe@{vhp}",
        via_port=via_port,
        via_host=via_host,
        transport=transport,
        call_id=f"probe-{secrets.token_hex(6)}",
        headers=["Accept: application/sdp"],
    ).encode()


def register_request(
    aor: str, contact: str | None, *, via_port: int, expires: int | None = 600, via_host: str = "127.0.0.1"
) -> str:
    """A REGISTER of ``aor`` (``user@domain``) binding ``contact`` (a URI,
    ``*``, or None for a query of the bindings)."""
    domain = aor.rsplit("@", 1)[-1]
    headers = []
    if contact is not None:
        headers.append(f"Contact: {contact}" if contact == "*" else f"Contact: <{contact}>")
    if expires is not None:
        headers.append(f"Expires: {expires}")
    return sip_request("REGISTER", f"sip:{domain}", to=aor, from_=aor, via_port=via_port, via_host=via_host, headers=headers)


def message_request(to: str, from_: str, text: str, *, via_port: int, via_host: str = "127.0.0.1") -> str:
    """A MESSAGE (``text/plain``) to the AoR ``to``, which is also its Request-URI."""
    return sip_request(
        "MESSAGE",
        _uri(to),
        to=to,
        from_=from_,
        via_port=via_port,
        via_host=via_host,
        headers=["Content-Type: text/plain"],
        body=text,
    )


def status_line(response: str | bytes | None) -> str | None:
    """The first line of a response (None stays None)."""
    if response is None:
        return None
    if isinstance(response, bytes):
        response = response.decode("utf-8", "replace")
    return response.split("\r\n", 1)[0]


def udp_exchange(
    port: int,
    request: RequestSource,
    *,
    host: str = "127.0.0.1",
    timeout: float = 3.0,
    retransmit: bool = True,
    source: str | None = None,
) -> list[str]:
    """Send one request from a fresh UDP socket; every response up to the
    first final one, in order (empty if nothing came within ``timeout``).

    ``request`` may be a function of the local port, to name it in the Via.
    Until a response arrives the request is retransmitted as RFC 3261's
    Timer A says (T1 = 0.5 s, doubling), since a datagram may be lost.
    ``source`` is the address to send from (another loopback address plays
    another host), ``host`` by default.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((source or host, 0))
        data = request(s.getsockname()[1]) if callable(request) else request
        raw = data.encode() if isinstance(data, str) else data
        answers: list[str] = []
        deadline = time.monotonic() + timeout
        interval = 0.5
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return answers
            if not answers and now >= next_send:
                s.sendto(raw, (host, port))
                next_send = now + interval if retransmit else deadline
                interval = min(interval * 2, 4.0)
            s.settimeout(max(0.01, min(deadline, next_send if not answers else deadline) - now))
            try:
                got = s.recv(65536).decode("utf-8", "replace")
            except socket.timeout:
                continue
            except ConnectionRefusedError:  # ICMP port unreachable: nobody listens
                return answers
            if not got.startswith("SIP/2.0 "):
                continue
            answers.append(got)
            if not got.startswith("SIP/2.0 1"):
                return answers


def udp_final_response(port: int, request: RequestSource, **kw: object) -> str | None:
    """The final response to one request (see :func:`udp_exchange`), or None."""
    answers = udp_exchange(port, request, **kw)  # type: ignore[arg-type]
    if answers and not answers[-1].startswith("SIP/2.0 1"):
        return answers[-1]
    return None


def sip_options_ping(host: str, port: int, timeout: float = 1.0) -> bytes | None:
    """Send one OPTIONS over UDP; the response bytes, or None if none came."""
    answers = udp_exchange(
        port, lambda lport: options_request(host, port, host, lport), host=host, timeout=timeout, retransmit=False
    )
    return answers[0].encode() if answers else None


def register_contact(
    proxy_port: int, aor: str, contact: str | None, *, expires: int | None = 600, host: str = "127.0.0.1", timeout: float = 3.0
) -> str | None:
    """REGISTER ``aor`` at ``contact`` with the registrar at ``host:proxy_port``;
    the final status line (``"SIP/2.0 200 OK"``), or None if none came."""
    return status_line(
        udp_final_response(
            proxy_port,
            lambda lport: register_request(aor, contact, via_port=lport, expires=expires, via_host=host),
            host=host,
            timeout=timeout,
        )
    )


def send_message(
    proxy_port: int, to: str, from_: str, text: str, *, host: str = "127.0.0.1", timeout: float = 3.0
) -> str | None:
    """A MESSAGE through the proxy at ``host:proxy_port``; the final status line, or None."""
    return status_line(
        udp_final_response(
            proxy_port, lambda lport: message_request(to, from_, text, via_port=lport, via_host=host), host=host, timeout=timeout
        )
    )
