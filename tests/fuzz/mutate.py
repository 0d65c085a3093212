"""A small, seeded mutator (libFuzzer's simplest moves plus SIP-shaped
splices), for the suite's short fuzz passes and the live fuzzer."""

from __future__ import annotations

import random
from pathlib import Path

TORTURE = Path(__file__).resolve().parent.parent / "data" / "torture"

_TOKENS = [b"\r\n", b"\r\n\r\n", b"\n", b" ", b":", b";", b",", b"<", b">", b"%", b"\x00", b"\"", b"\\", b"[", b"]"]
_SPLICES = [
    b"Content-Length: 99999999999999999999",
    b"Content-Length: -1",
    b"Via: SIP/2.0/UDP [::1",
    b"Via: SIP/2.0/TCP 127.0.0.1:1;rport;received=",
    b"sip:",
    b"sips:[",
    b"tag=",
    b";branch=z9hG4bK",
    b"\r\n\t",
    b"CSeq: 4294967296 INVITE",
    b"Max-Forwards: 0",
    b"Route: <sip:127.0.0.1;lr>",
    b"=?utf-8?",
    b"\xff\xfe",
]


def torture_messages() -> list[bytes]:
    """Every torture message as bytes (the CRLF wire forms included)."""
    return [p.read_bytes() for p in sorted(TORTURE.rglob("*.dat"))]


def mutate(data: bytes, rng: random.Random, max_ops: int = 6) -> bytes:
    """``data`` with 1..``max_ops`` random edits: bit flips, byte inserts,
    erased runs, duplicated runs, SIP tokens and header fragments spliced in."""
    b = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and b:
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 3 and b:
            n = rng.randint(1, 32)
            b[pos:pos] = b[pos : pos + n] * rng.randint(1, 4)
        elif op == 4:
            b[pos:pos] = rng.choice(_TOKENS)
        elif op == 5:
            b[pos:pos] = rng.choice(_SPLICES)
        elif b:
            # swap two lines: headers out of order, the start line moved
            lines = bytes(b).split(b"\r\n")
            if len(lines) > 2:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                b = bytearray(b"\r\n".join(lines))
    return bytes(b)
