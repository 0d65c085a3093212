"""Who may enter a node's tables in an open ring: peers that proved their key.

In an open ring (``[overlay] trust = tofu``) only its key vouches for a
node: its id is derived from its public key
(:func:`.ids.node_id_from_public_key`), so a node that wants a place must
hold a key that hashes there.  Before this node puts a peer in its successor
list, predecessor or fingers, it sends the peer's address a fresh random
challenge; the node there answers with its public key, its home domain and
an Ed25519 signature over the challenge, its id and its address.  The peer
is admitted when the signature verifies and the id is the one its key
gives (any id with ``allow_chosen_ids``, for test rings).

Signing the address as well as the id stops a relay: a node that wants
another's place cannot pass our challenge on to it, since that node only
signs its own address.  A notify (a node saying "I may be your
predecessor") waits for the answer; a peer heard of second hand is
challenged in the background and enters the tables at a later round.

Refusals are logged once per address and reason, and a refused peer is not
asked again for ``hold`` seconds; at most ``max_pending`` challenges run at
once, so a liar listing thousands of addresses cannot make us call them all.
"""

from __future__ import annotations

import os
from typing import Callable, Hashable

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import ids
from .interfaces import IPeerCalls
from .messages import Peer, Proof

log = Logger()

#: what a proof signs starts with this, so the signature is good for nothing else
CONTEXT = b"sosimple ring admission v1\x00"
NONCE_BYTES = 32


def proof_message(nonce: bytes, node_id: int, address: Hashable) -> bytes:
    """The bytes a node signs to answer ``nonce`` for its id and address."""
    ident = node_id.to_bytes((node_id.bit_length() + 7) // 8 or 1, "big")
    where = str(address).encode("utf-8")
    return b"".join((CONTEXT, len(nonce).to_bytes(2, "big"), nonce, len(ident).to_bytes(2, "big"), ident, where))


class NodeSigner:
    """Our own side: the node key, and the proofs made with it."""

    def __init__(self, key: Ed25519PrivateKey, home: str = "") -> None:
        self.key = key
        self.home = home
        self.public_key = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def node_id(self, m: int = ids.DEFAULT_BITS, domain_bits: int = 32) -> int:
        """The id this key entitles us to."""
        return ids.node_id_from_public_key(self.public_key, m, self.home or None, domain_bits)

    def prove(self, nonce: bytes, me: Peer) -> Proof:
        if not 16 <= len(nonce) <= 64:
            raise ValueError(f"a challenge of {len(nonce)} bytes (16 to 64 expected)")
        return Proof(self.public_key, self.home, self.key.sign(proof_message(nonce, me.id, me.address)))


def check_proof(
    proof: Proof, peer: Peer, nonce: bytes, m: int = ids.DEFAULT_BITS, domain_bits: int = 32, allow_chosen_ids: bool = False
) -> str | None:
    """Why ``proof`` does not admit ``peer`` (None: it does)."""
    try:
        public = serialization.load_der_public_key(proof.public_key)
    except (ValueError, TypeError):
        return "its public key does not parse"
    if not isinstance(public, Ed25519PublicKey):
        return "its public key is not Ed25519"
    try:
        public.verify(proof.signature, proof_message(nonce, peer.id, peer.address))
    except InvalidSignature:
        return "its signature over our challenge (its id and address) does not verify"
    if allow_chosen_ids:
        return None
    try:
        want = ids.node_id_from_public_key(proof.public_key, m, proof.home or None, domain_bits)
    except ValueError as e:
        return f"no id follows from its key: {e}"
    if want != peer.id:
        return f"its id is not the one its public key gives ({ids.format_id(want, m)}), and chosen ids are not allowed"
    return None


@attrs.frozen
class OpenRingTrust:
    """How a node of an open ring proves itself and admits others."""

    signer: NodeSigner
    allow_chosen_ids: bool = False
    domain_bits: int = 32
    #: fresh challenges (``os.urandom``; a seeded source in simulations)
    random_bytes: Callable[[int], bytes] = os.urandom
    max_pending: int = 32


#: failures that say the peer is unreachable now, not that it failed the proof
_UNREACHABLE = (defer.TimeoutError, defer.CancelledError, error.ConnectError, error.ConnectionLost, error.ConnectionDone)


class PeerGate:
    """Which peers have proved their place to this node.

    :meth:`status` answers at once (True: proved, False: refused lately,
    None: not known yet, a challenge started); :meth:`verify` waits for
    the answer.
    """

    LIMIT = 65536

    def __init__(
        self,
        me: Peer,
        calls: IPeerCalls,
        clock: IReactorTime,
        trust: OpenRingTrust,
        m: int = ids.DEFAULT_BITS,
        hold: float = 10.0,
        log: Logger = log,
        on_proved: Callable[[Peer], object] | None = None,
    ) -> None:
        self.me, self.calls, self.clock, self.trust, self.m, self.hold = me, calls, clock, trust, m, hold
        self.on_proved = on_proved
        self._log = log
        self._proved: dict[tuple[int, Hashable], bytes] = {}
        self._refused: dict[tuple[int, Hashable], float] = {}
        self._said: set[tuple[Hashable, str]] = set()
        self._pending: dict[tuple[int, Hashable], list[defer.Deferred]] = {}
        self.challenges = 0

    def status(self, peer: Peer) -> bool | None:
        """Proved (True), refused (False), or unknown (None: challenged now)."""
        known = self._known(peer)
        if known is None and len(self._pending) < self.trust.max_pending:
            self._challenge(peer)
        return known

    def _known(self, peer: Peer) -> bool | None:
        if peer.address == self.me.address and peer.id == self.me.id:
            return True
        key = (peer.id, peer.address)
        if key in self._proved:
            return True
        until = self._refused.get(key)
        if until is not None:
            if until > self.clock.seconds():
                return False
            del self._refused[key]
        return None

    def refused(self, peer: Peer) -> bool:
        """Whether ``peer`` failed its proof lately (not merely unanswered)."""
        return self._known(peer) is False

    def public_key(self, peer: Peer) -> bytes | None:
        """The key ``peer`` proved (None: not proved)."""
        return self._proved.get((peer.id, peer.address))

    def verify(self, peer: Peer) -> defer.Deferred:
        """Deferred[bool]: whether ``peer`` is admitted (challenging it if need be)."""
        known = self._known(peer)
        if known is not None:
            return defer.succeed(known)
        key = (peer.id, peer.address)
        waiters = self._pending.get(key)
        if waiters is None and len(self._pending) >= self.trust.max_pending:
            return defer.succeed(False)  # too many at once: it asks again next round
        mine: defer.Deferred = defer.Deferred()
        if waiters is not None:
            waiters.append(mine)
        else:
            # The waiter is in the list before the call starts: a call that
            # fails at once (a peer known to be down) settles the list
            # synchronously, and a waiter added after that never fired (a
            # node joining through it waited forever).
            self._pending[key] = [mine]
            self._start(peer, key)
        return mine

    def _challenge(self, peer: Peer) -> None:
        key = (peer.id, peer.address)
        if key not in self._pending:
            self._pending[key] = []
            self._start(peer, key)

    def _start(self, peer: Peer, key: tuple[int, Hashable]) -> None:
        nonce = self.trust.random_bytes(NONCE_BYTES)
        self.challenges += 1
        d = self.calls.call(peer.address, "prove", nonce)
        d.addCallbacks(self._answered, self._failed, (peer, nonce), None, (peer,))
        d.addBoth(self._settle, key)

    def _answered(self, proof: Proof, peer: Peer, nonce: bytes) -> bool:
        reason = check_proof(proof, peer, nonce, self.m, self.trust.domain_bits, self.trust.allow_chosen_ids)
        if reason is None:
            if len(self._proved) >= self.LIMIT:
                self._proved.clear()
            self._proved[(peer.id, peer.address)] = proof.public_key
            if self.on_proved is not None:
                self.on_proved(peer)
            return True
        self._refuse(peer, reason)
        return False

    def _failed(self, failure: Failure, peer: Peer) -> bool:
        if failure.check(*_UNREACHABLE):
            return False  # not refused: asked again when next heard of
        self._refuse(peer, f"it did not answer our challenge ({failure.getErrorMessage() or failure.type.__name__})")
        return False

    def _refuse(self, peer: Peer, reason: str) -> None:
        if len(self._refused) >= self.LIMIT:
            self._refused.clear()
        self._refused[(peer.id, peer.address)] = self.clock.seconds() + self.hold
        if (peer.address, reason) in self._said:
            return
        if len(self._said) >= self.LIMIT:
            self._said.clear()
        self._said.add((peer.address, reason))
        self._log.warn(
            "overlay: refused node {id} at {address}: {reason}",
            id=ids.format_id(peer.id, self.m),
            address=peer.address,
            reason=reason,
        )

    def _settle(self, result: object, key: tuple[int, Hashable]) -> None:
        ok = result is True
        for d in self._pending.pop(key, []):
            if not d.called:
                d.callback(ok)
        return None


__all__ = ["CONTEXT", "NodeSigner", "OpenRingTrust", "PeerGate", "check_proof", "proof_message"]
