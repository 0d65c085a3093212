"""A small binary encoding of the overlay's messages, for the AMP bodies.

Fields are length-prefixed (a 4-byte length, then the bytes); integers of
any size (160-bit ids) are big-endian bytes; floats are IEEE doubles.  A
decoder that runs short, finds bytes left over, or reads a record that
breaks the format raises ``ValueError``; the AMP side turns that into an
error answer.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

from .messages import EntryId, FetchResult, FindResult, NodeState, Peer, Proof, SyncResult, Version
from .records import Record

_LEN = struct.Struct("!I")
_F64 = struct.Struct("!d")
#: a body may hold at most this many items in one list (a sanity bound)
MAX_ITEMS = 1_000_000


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def raw(self, data: bytes) -> _Writer:
        self.parts.append(_LEN.pack(len(data)))
        self.parts.append(data)
        return self

    def int(self, value: int) -> _Writer:
        if value < 0:
            raise ValueError("only non-negative integers travel")
        return self.raw(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    def str(self, value: str) -> _Writer:
        return self.raw(value.encode("utf-8"))

    def float(self, value: float) -> _Writer:
        self.parts.append(_F64.pack(value))
        return self

    def bool(self, value: bool) -> _Writer:
        self.parts.append(b"\x01" if value else b"\x00")
        return self

    def peer(self, peer: Peer | None) -> _Writer:
        if peer is None:
            return self.bool(False)
        return self.bool(True).int(peer.id).str(str(peer.address))

    def peers(self, peers: Sequence[Peer]) -> _Writer:
        self.int(len(peers))
        for p in peers:
            self.peer(p)
        return self

    def record(self, r: Record) -> _Writer:
        self.int(r.key).str(r.kind).str(r.entry).str(r.writer).raw(r.value).float(r.expires).int(r.seq)
        return self.raw(r.owner_key_id).raw(r.signature).bool(r.deleted).str(r.name)

    def records(self, records: Sequence[Record]) -> _Writer:
        self.int(len(records))
        for r in records:
            self.record(r)
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError("the body ends too soon")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def raw(self) -> bytes:
        (n,) = _LEN.unpack(self._take(4))
        return bytes(self._take(n))

    def int(self) -> int:
        return int.from_bytes(self.raw(), "big")

    def str(self) -> str:
        try:
            return self.raw().decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a text field is not UTF-8") from None

    def float(self) -> float:
        return _F64.unpack(self._take(8))[0]

    def bool(self) -> bool:
        b = bytes(self._take(1))
        if b not in (b"\x00", b"\x01"):
            raise ValueError("a flag is neither 0 nor 1")
        return b == b"\x01"

    def count(self) -> int:
        n = self.int()
        if n > MAX_ITEMS:
            raise ValueError(f"a list of {n} items is too long")
        return n

    def peer(self) -> Peer | None:
        if not self.bool():
            return None
        return Peer(self.int(), self.str())

    def some_peer(self) -> Peer:
        p = self.peer()
        if p is None:
            raise ValueError("a peer is missing")
        return p

    def peers(self) -> tuple[Peer, ...]:
        return tuple(self.some_peer() for _ in range(self.count()))

    def record(self) -> Record:
        key, kind, entry, writer, value = self.int(), self.str(), self.str(), self.str(), self.raw()
        expires, seq = self.float(), self.int()
        okid, sig, deleted = self.raw(), self.raw(), self.bool()
        return Record(key, kind, entry, writer, value, expires, seq, okid, sig, deleted, self.str())

    def records(self) -> tuple[Record, ...]:
        return tuple(self.record() for _ in range(self.count()))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("bytes left over after the body")


def _done(reader: _Reader, value):
    reader.end()
    return value


def record_size(r: Record) -> int:
    """About how many bytes a record takes encoded (for batching)."""
    return 84 + len(r.kind) + len(r.entry) + len(r.writer) + len(r.value) + len(r.owner_key_id) + len(r.signature) + len(r.name)


# -- the bodies, one pair per message


def encode_int(value: int) -> bytes:
    return _Writer().int(value).bytes()


def decode_int(data: bytes) -> int:
    r = _Reader(data)
    return _done(r, r.int())


def encode_hello(major: int, minor: int, peer: Peer | None) -> bytes:
    return _Writer().int(major).int(minor).peer(peer).bytes()


def decode_hello(data: bytes) -> tuple[int, int, Peer | None]:
    r = _Reader(data)
    return _done(r, (r.int(), r.int(), r.peer()))


def encode_peer(peer: Peer) -> bytes:
    return _Writer().peer(peer).bytes()


def decode_peer(data: bytes) -> Peer:
    r = _Reader(data)
    return _done(r, r.some_peer())


def encode_peers(peers: Sequence[Peer]) -> bytes:
    return _Writer().peers(peers).bytes()


def decode_peers(data: bytes) -> tuple[Peer, ...]:
    r = _Reader(data)
    return _done(r, r.peers())


def encode_state(state: NodeState) -> bytes:
    return _Writer().peer(state.peer).peer(state.predecessor).peers(state.successors).bytes()


def decode_state(data: bytes) -> NodeState:
    r = _Reader(data)
    return _done(r, NodeState(r.some_peer(), r.peer(), r.peers()))


def encode_find_result(res: FindResult) -> bytes:
    return _Writer().bool(res.done).peers(res.peers).peer(res.responder).peer(res.predecessor).bytes()


def decode_find_result(data: bytes) -> FindResult:
    r = _Reader(data)
    return _done(r, FindResult(r.bool(), r.peers(), r.some_peer(), r.peer()))


def encode_records(records: Sequence[Record]) -> bytes:
    return _Writer().records(records).bytes()


def decode_records(data: bytes) -> tuple[Record, ...]:
    r = _Reader(data)
    return _done(r, r.records())


def encode_fetch(key: int, kind: str | None) -> bytes:
    w = _Writer().int(key).bool(kind is not None)
    return w.str(kind).bytes() if kind is not None else w.bytes()


def decode_fetch(data: bytes) -> tuple[int, str | None]:
    r = _Reader(data)
    key = r.int()
    kind = r.str() if r.bool() else None
    return _done(r, (key, kind))


def encode_fetch_result(res: FetchResult) -> bytes:
    return _Writer().records(res.records).bool(res.authoritative).peer(res.responder).bytes()


def decode_fetch_result(data: bytes) -> FetchResult:
    r = _Reader(data)
    return _done(r, FetchResult(r.records(), r.bool(), r.some_peer()))


def encode_sync(lo: int, hi: int, versions: dict[EntryId, Version]) -> bytes:
    w = _Writer().int(lo).int(hi).int(len(versions))
    for (key, kind, entry), (seq, deleted, expires) in versions.items():
        w.int(key).str(kind).str(entry).int(seq).bool(deleted).float(expires)
    return w.bytes()


def decode_sync(data: bytes) -> tuple[int, int, dict[EntryId, Version]]:
    r = _Reader(data)
    lo, hi = r.int(), r.int()
    versions: dict[EntryId, Version] = {}
    for _ in range(r.count()):
        entry_id = (r.int(), r.str(), r.str())
        versions[entry_id] = (r.int(), r.bool(), r.float())
    return _done(r, (lo, hi, versions))


def encode_sync_result(res: SyncResult) -> bytes:
    w = _Writer().records(res.records).int(len(res.wanted))
    for key, kind, entry in res.wanted:
        w.int(key).str(kind).str(entry)
    return w.bytes()


def decode_sync_result(data: bytes) -> SyncResult:
    r = _Reader(data)
    records = r.records()
    wanted = tuple((r.int(), r.str(), r.str()) for _ in range(r.count()))
    return _done(r, SyncResult(records, wanted))


def encode_leave(peer: Peer, predecessor: Peer | None, successors: Iterable[Peer]) -> bytes:
    return _Writer().peer(peer).peer(predecessor).peers(tuple(successors)).bytes()


def decode_leave(data: bytes) -> tuple[Peer, Peer | None, tuple[Peer, ...]]:
    r = _Reader(data)
    return _done(r, (r.some_peer(), r.peer(), r.peers()))


def encode_proof(proof: Proof) -> bytes:
    return _Writer().raw(proof.public_key).str(proof.home).raw(proof.signature).bytes()


def decode_proof(data: bytes) -> Proof:
    r = _Reader(data)
    return _done(r, Proof(r.raw(), r.str(), r.raw()))
