"""Self-validating nonces, the secret they are keyed by, and nonce-count replay tracking.

A nonce is ``base64url(issued || random || tag)`` with ``issued`` the
issuing time (8 bytes, whole seconds), ``random`` 8 random bytes and
``tag`` the first 16 bytes of HMAC-SHA-256(secret, realm NUL issued
random): binding the realm means a nonce of one realm is no good in another
even where the secret is shared.  Any proxy holding the secret (``[auth] nonce_secret_file``)
tells its own nonces from forged ones, and their age, without keeping
state, so a phone may send its next request through another proxy of the
realm.  43 characters, all of them token characters.

Replay (``NonceCounts``) is the one piece of state, and it is local: a
nonce-count is accepted once per process.  Two proxies sharing a secret do
not share their counts, so a captured request could be replayed once at
each of the others within ``nonce_ttl``; that is the price of stateless
nonces, and the reason to keep ``nonce_ttl`` short.  The ``[proxy]
workers`` of one proxy do share them: each nonce has one owner worker,
which keeps its counts (:mod:`sosimple_proxy.workers.shared_nonces`).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import struct
import tempfile
from collections import OrderedDict
from typing import Callable

import attrs
from twisted.internet.interfaces import IReactorTime

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
DEFAULT_NONCE_TTL = 300.0
# A proxy of the realm whose clock runs ahead issues nonces "from the future";
# up to this many seconds of that is taken as clock skew, beyond it as stale.
MAX_CLOCK_SKEW = 30.0
DEFAULT_MAX_TRACKED = 100_000

_RANDOM_BYTES = 8
_TAG_BYTES = 16
_NONCE_BYTES = 8 + _RANDOM_BYTES + _TAG_BYTES
_NONCE_CHARS = (_NONCE_BYTES * 8 + 5) // 6  # unpadded base64url: 43
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class SecretFileError(Exception):
    """A nonce secret file that cannot be read or made; the message names it."""


def load_or_create_secret(path: str) -> bytes:
    """The realm's nonce secret: read from ``path`` (hex text, as ``openssl rand
    -hex 32`` prints it) or, when there is no file, 32 random bytes written
    there with mode 0600.  Two proxies starting together on a fresh shared
    directory agree: the file is linked into place only if absent, and the
    loser reads the winner's."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    tmp = None
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, os.urandom(SECRET_BYTES).hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made it first
        except FileExistsError:
            pass
    except OSError as e:
        raise SecretFileError(f"{path}: cannot create the nonce secret: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    try:
        return _read_secret(path)
    except FileNotFoundError:
        raise SecretFileError(f"{path}: vanished while being created") from None


def _read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "not ASCII hex text"
        raise SecretFileError(f"{path}: cannot read the nonce secret: {why}") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise SecretFileError(f"{path}: the nonce secret must be hex digits") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretFileError(f"{path}: the nonce secret is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed")
    return secret


def nonce_random(nonce: str) -> bytes:
    """The random bytes of a nonce in :class:`NonceIssuer`'s format (not
    checked: only for a nonce :meth:`NonceIssuer.check` has accepted)."""
    raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    return raw[8 : 8 + _RANDOM_BYTES]


class NonceState(enum.Enum):
    FRESH = "fresh"
    EXPIRED = "expired"  # ours, but too old (or too far ahead): answer stale=true
    FORGED = "forged"  # not ours: not made with our secret for this realm, or not a nonce at all


@attrs.frozen
class NonceCheck:
    state: NonceState
    issued: float = 0.0


class NonceIssuer:
    """Makes and checks the nonces of one realm; time from the injected clock."""

    def __init__(
        self,
        clock: IReactorTime,
        secret: bytes,
        realm: str,
        ttl: float = DEFAULT_NONCE_TTL,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a nonce secret needs at least {MIN_SECRET_BYTES} bytes")
        if not ttl > 0:
            raise ValueError("the nonce TTL must be positive")
        self._clock = clock
        self._secret = secret
        self._realm = realm.encode("utf-8")
        self.ttl = ttl
        self._random = random

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, self._realm + b"\x00" + body, hashlib.sha256).digest()[:_TAG_BYTES]

    def make(self) -> str:
        issued = max(0, int(self._clock.seconds()))
        body = struct.pack(">Q", issued) + self._random(_RANDOM_BYTES)
        return base64.urlsafe_b64encode(body + self._tag(body)).rstrip(b"=").decode("ascii")

    def check(self, nonce: str) -> NonceCheck:
        # Strict: b64decode would skip stray characters, and unused low bits
        # would let several spellings name one nonce (replay counts are kept
        # per spelling), so only the exact text make() produces is accepted.
        if len(nonce) != _NONCE_CHARS or not _B64URL.issuperset(nonce):
            return NonceCheck(NonceState.FORGED)
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != nonce:
            return NonceCheck(NonceState.FORGED)
        body, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(body)):
            return NonceCheck(NonceState.FORGED)
        (issued,) = struct.unpack(">Q", body[:8])
        now = self._clock.seconds()
        if issued > now + MAX_CLOCK_SKEW or now - issued > self.ttl:
            return NonceCheck(NonceState.EXPIRED, float(issued))
        return NonceCheck(NonceState.FRESH, float(issued))


class CountVerdict(enum.Enum):
    ACCEPTED = "accepted"
    REPLAY = "replay"  # nc not above the last accepted one for this nonce
    FORGOTTEN = "forgotten"  # evicted under memory pressure: ask for a new nonce (stale)


class NonceCounts:
    """The highest nonce-count accepted per nonce, so that a captured request
    cannot be played again (RFC 7616 3.4: "the server can detect request
    replays by maintaining its own copy of this count").

    Memory is bounded twice: an entry lives only as long as its nonce (issued
    + ttl), and at most ``max_entries`` are kept.  Dropping a live entry would
    let its nonce be replayed, so eviction raises a floor instead: any nonce
    issued no later than an evicted one, and not in the table, is answered
    ``FORGOTTEN`` (the caller says stale=true and the phone takes a new nonce).

    Record a count only after the response was verified, so that nobody can
    burn a victim's counts with bogus requests.
    """

    def __init__(self, clock: IReactorTime, ttl: float = DEFAULT_NONCE_TTL, max_entries: int = DEFAULT_MAX_TRACKED) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        # nonce -> (last nc, issued); in order of first use
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._floor = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    def accept(self, nonce: str, issued: float, nc: int) -> CountVerdict:
        """Accept ``nc`` for ``nonce`` (issued at ``issued``) if it is above the last one."""
        self._expire()
        entry = self._entries.get(nonce)
        if entry is None:
            if issued <= self._floor:
                return CountVerdict.FORGOTTEN
            self._entries[nonce] = (nc, issued)
            self._evict()
            return CountVerdict.ACCEPTED
        last, _ = entry
        if nc <= last:
            return CountVerdict.REPLAY
        self._entries[nonce] = (nc, issued)
        return CountVerdict.ACCEPTED

    def forget_before(self, issued: float) -> None:
        """Answer ``FORGOTTEN`` for any nonce issued up to ``issued`` that is
        not in the table: a process that starts again knows none of its
        predecessor's counts, so it must not take their nonces as new."""
        self._floor = max(self._floor, issued)

    def _expire(self) -> None:
        # Entries are in order of first use, which is nearly the order of issue:
        # dropping expired ones from the front keeps the table small without a scan.
        oldest = self._clock.seconds() - self._ttl - MAX_CLOCK_SKEW
        while self._entries:
            nonce, (_, issued) = next(iter(self._entries.items()))
            if issued >= oldest:
                break
            del self._entries[nonce]

    def _evict(self) -> None:
        while len(self._entries) > self._max:
            _, (_, issued) = self._entries.popitem(last=False)
            self._floor = max(self._floor, issued)
