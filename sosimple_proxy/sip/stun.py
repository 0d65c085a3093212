"""STUN Binding responses (RFC 5389) on the SIP UDP port.

RFC 5626 section 4.4.2: a UA keeps its UDP flow alive with STUN, and an edge
proxy answers on its SIP port.  Pure bytes in, bytes out.
"""

from __future__ import annotations

import ipaddress

__all__ = ["stun_binding_response", "is_stun"]

_STUN_COOKIE = 0x2112A442


def stun_binding_response(request: bytes, host: str, port: int) -> bytes | None:
    """A STUN Binding success response (RFC 5389) to ``request`` telling the
    client it is seen at ``host``:``port``, or None if it is no Binding request.

    RFC 5626 section 4.4.2: a UA keeps its UDP flow alive with STUN, and an
    edge proxy answers on its SIP port; XOR-MAPPED-ADDRESS is all it needs.
    """
    if len(request) < 20 or request[0:2] != b"\x00\x01":
        return None
    length = int.from_bytes(request[2:4], "big")
    if length % 4 or len(request) != 20 + length or int.from_bytes(request[4:8], "big") != _STUN_COOKIE:
        return None
    txid = request[8:20]
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        family, xaddr = 1, (int(ip) ^ _STUN_COOKIE).to_bytes(4, "big")
    else:
        mask = int.from_bytes(request[4:20], "big")  # cookie + transaction id
        family, xaddr = 2, (int(ip) ^ mask).to_bytes(16, "big")
    value = bytes([0, family]) + (port ^ (_STUN_COOKIE >> 16)).to_bytes(2, "big") + xaddr
    attr = (0x0020).to_bytes(2, "big") + len(value).to_bytes(2, "big") + value
    return b"\x01\x01" + len(attr).to_bytes(2, "big") + request[4:8] + txid + attr


def is_stun(datagram: bytes) -> bool:
    """STUN messages start with two zero bits (RFC 5389 6); SIP never does."""
    return datagram[0] < 0x04
