"""Mutual TLS for a CA ring: who may talk to us, and whom we reached.

In a ring with ``[overlay] ca`` every AMP connection is TLS with a node
certificate from that CA on both sides (``security/nodecerts.py``: the CA
writes the node's ring id into the certificate).  The listening side
requires a client certificate; the calling side checks the server's chain
and, when it knows whom it meant to reach (a peer from its tables), that the
certificate is that node's.  A connection that fails the handshake never
reaches the node, so a node without a valid certificate cannot join, store
or answer lookups.

Refusals are logged once per peer host and reason (a refused node retries
every stabilize round; the log should say why once, not fill up), with
the reason in one line.  After the handshake, :meth:`RingTLS.certified_id`
gives the id in the peer's certificate, which the AMP protocol compares
with the id the peer claims in its messages.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable, Mapping

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sosimple_proxy.security import nodecerts
from sosimple_proxy.security.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MIN_VERSION,
    TLSFileError,
    TLSVerificationError,
    chain_error_reason,
    client_context,
    server_context,
)

from . import ids

log = Logger()

CERT_FILE = "node.pem"
KEY_FILE = "node.key"


class RingSetupError(ValueError):
    """A CA ring that cannot start; ``key`` names the ``[overlay]`` key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


class Refusals:
    """Log each refusal once per (peer, reason): the first time says why,
    repeats (a refused node retries every round) say nothing."""

    LIMIT = 4096

    def __init__(self, log: Logger = log) -> None:
        self._log = log
        self._seen: set[tuple[str, str]] = set()
        #: every refusal, logged or not (the metrics' TLS handshake failures)
        self.count = 0

    def refused(self, direction: str, peer: str, reason: str) -> bool:
        """Note one; whether it was logged (the first of its kind)."""
        self.count += 1
        if (peer, reason) in self._seen:
            return False
        if len(self._seen) >= self.LIMIT:  # many strangers: start over rather than grow
            self._seen.clear()
        self._seen.add((peer, reason))
        self._log.warn(
            "overlay: refused a ring connection {direction} {peer}: {reason}",
            direction=direction,
            peer=peer,
            reason=reason,
        )
        return True


class _NodeVerifier:
    """OpenSSL's verify callback for one connection: the chain from the
    ring's CA, a node id in the leaf, and (if given) the expected id."""

    def __init__(self, expected: int | None, bits: int, on_failure: Callable[[TLSVerificationError], object] | None = None) -> None:
        self.expected, self.bits, self.on_failure = expected, bits, on_failure
        self.error: TLSVerificationError | None = None

    def __call__(self, conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if self.error is not None:
            return False
        try:
            crypto = cert.to_cryptography()
            if not ok:
                return self._fail(chain_error_reason(errno, crypto))
            if depth == 0:
                try:
                    got = nodecerts.node_id_of(crypto, self.bits)
                except nodecerts.NodeCertError as e:
                    return self._fail(str(e))
                if self.expected is not None and got != self.expected:
                    want = nodecerts.format_id(self.expected, self.bits)
                    return self._fail(f"the certificate is for node {nodecerts.format_id(got, self.bits)}, not {want}")
        except Exception:  # an exception escaping an OpenSSL callback is lost
            log.failure("overlay: while verifying a node certificate")
            return self._fail("internal error while verifying the certificate")
        return True

    def _fail(self, reason: str) -> bool:
        self.error = TLSVerificationError(reason)
        if self.on_failure is not None:
            self.on_failure(self.error)
        return False


def failure_reason(reason: Failure | BaseException) -> str:
    """One line for why a handshake failed."""
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, TLSVerificationError):
        return error.reason
    if isinstance(error, SSL.Error):
        try:
            detail = "; ".join(str(e[2]) for e in error.args[0])
        except (IndexError, TypeError):
            detail = ""
        if "wrong version number" in detail or "record layer failure" in detail:
            return f"no TLS handshake, plain bytes ({detail}): a node of an open ring?"
        if "peer did not return a certificate" in detail:
            return f"no client certificate ({detail})"
        return f"TLS handshake failed: {detail or error}"
    return str(error) or error.__class__.__name__


class _RingServerProtocol(TLSMemoryBIOProtocol):
    """The listening side of one connection: notes why a handshake failed,
    and drops a peer that has not finished it in time (one that connects
    and says nothing would otherwise hold the connection for ever)."""

    verifier: _NodeVerifier | None = None
    peer_host = "?"
    _deadline: Any = None

    def makeConnection(self, transport: Any) -> None:
        peer = transport.getPeer()
        self.peer_host = str(getattr(peer, "host", peer))
        clock = self.factory.clock
        if clock is not None:
            self._deadline = clock.callLater(self.factory.handshake_timeout, self._too_slow)
        super().makeConnection(transport)

    def _too_slow(self) -> None:
        self._deadline = None
        if not getattr(self.wrappedProtocol, "handshake_done", False):
            self.factory.refusals.refused("from", self.peer_host, f"no TLS handshake within {self.factory.handshake_timeout:g} s")
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        # the AMP protocol inside hears handshakeCompleted (IHandshakeListener)
        if not getattr(self.wrappedProtocol, "handshake_done", False):
            error = self.verifier.error if self.verifier is not None else None
            # the TLS error, when there was one, is kept in _reason: what the
            # wrapped protocol will be told (the transport's reason is a
            # clean close)
            tls_reason = getattr(self, "_reason", None) or reason
            if error is not None or tls_reason.check(SSL.Error):
                self.factory.refusals.refused("from", self.peer_host, failure_reason(error or tls_reason))
        super().connectionLost(reason)


class _RingServerFactory(TLSMemoryBIOFactory):
    protocol = _RingServerProtocol

    def __init__(self, creator: Any, wrapped: Any, refusals: Refusals, clock: Any, handshake_timeout: float) -> None:
        super().__init__(creator, False, wrapped)
        self.refusals, self.clock, self.handshake_timeout = refusals, clock, handshake_timeout


@implementer(IOpenSSLServerConnectionCreator)
class _ServerCreator:
    def __init__(self, tls: RingTLS, bits: int) -> None:
        self.tls, self.bits = tls, bits

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self.tls._server, None)  # the current one (reload)
        verifier = _NodeVerifier(None, self.bits)
        if isinstance(tlsProtocol, _RingServerProtocol):
            tlsProtocol.verifier = verifier
        conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE, verifier)
        conn.set_app_data(tlsProtocol)
        return conn


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, context: SSL.Context, expected: int | None, bits: int) -> None:
        self.context, self.expected, self.bits = context, expected, bits

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        def fail(error: TLSVerificationError) -> None:
            tlsProtocol.failVerification(Failure(error))

        conn = SSL.Connection(self.context, None)
        conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _NodeVerifier(self.expected, self.bits, fail))
        conn.set_connect_state()
        conn.set_app_data(tlsProtocol)
        return conn


class RingTLS:
    """Our node certificate, the ring's CA, and the contexts made from them.

    Built at startup (the files are read now: a bad one raises
    :class:`RingSetupError` naming its key).  ``node_id`` and ``domains``
    are what the CA wrote into our certificate.
    """

    def __init__(
        self,
        ca: str,
        certificate: str,
        key: str,
        m: int = ids.DEFAULT_BITS,
        min_version: str = DEFAULT_MIN_VERSION,
        log: Logger = log,
        now: datetime.datetime | None = None,
    ) -> None:
        self.ca, self.certificate, self.key, self.m = ca, certificate, key, m
        self.min_version, self._log = min_version, log
        self.refusals = Refusals(log)
        self._load(now)

    def _load(self, now: datetime.datetime | None = None) -> None:
        ca, certificate, key, m, min_version, log = self.ca, self.certificate, self.key, self.m, self.min_version, self._log
        try:
            self._server = server_context(certificate, key, min_version, client_ca=ca, log=log)
            self._client = client_context(ca, min_version, True, certificate, key)
        except TLSFileError as e:
            raise RingSetupError(e.key, e.problem) from None
        cert = _first_certificate(certificate)
        try:
            self.node_id = nodecerts.node_id_of(cert, m)
        except nodecerts.NodeCertError as e:
            raise RingSetupError("certificate", f"{certificate}: {e}; issue it with sosimple sign --node-id") from None
        self.domains = nodecerts.domains_of(cert)
        moment = now or datetime.datetime.now(datetime.timezone.utc)
        if cert.not_valid_after_utc < moment:
            raise RingSetupError("certificate", f"{certificate} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        if not _issued_by_ca(cert, certificate, ca):
            raise RingSetupError("certificate", f"{certificate} is not issued by the ring's CA ({ca})")

    def server_factory(
        self, wrapped: Any, clock: Any = None, handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    ) -> TLSMemoryBIOFactory:
        """Wrap the AMP listener's factory: mutual TLS, refusals logged; with
        ``clock``, a handshake not done in ``handshake_timeout`` s is dropped."""
        return _RingServerFactory(_ServerCreator(self, self.m), wrapped, self.refusals, clock, handshake_timeout)

    def reload(self) -> bool:
        """Re-read the CA, certificate and key (SIGHUP): new connections use
        them, open ones keep theirs.  A bad file, or a certificate for
        another node id (a node cannot move while running), keeps the old."""
        old = (self._server, self._client, self.node_id, self.domains)
        try:
            self._load()
            if self.node_id != old[2]:
                raise RingSetupError("certificate", f"{self.certificate} is for another node id; restart to move the node")
        except RingSetupError as e:
            self._server, self._client, self.node_id, self.domains = old
            self._log.error("overlay: ring certificate reload failed, keeping the current one: {why}", why=str(e))
            return False
        self._log.info("overlay: reloaded ring certificate {path}", path=self.certificate)
        return True

    def client_creator(self, expected: int | None = None) -> IOpenSSLClientConnectionCreator:
        """For ``wrapClientTLS``: the server must be a node of our CA (and
        node ``expected``, when the caller knows whom it is calling)."""
        return _ClientCreator(self._client, expected, self.m)

    def certified_id(self, transport: Any) -> int | None:
        """The node id in the peer's certificate on an established
        connection (None before the handshake, or without TLS)."""
        get = getattr(transport, "getPeerCertificate", None)
        cert = get() if get is not None else None
        if cert is None:
            return None
        try:
            return nodecerts.node_id_of(cert.to_cryptography(), self.m)
        except nodecerts.NodeCertError:
            return None


def _first_certificate(path: str) -> x509.Certificate:
    try:
        return nodecerts.load_certificate(path)
    except nodecerts.NodeCertError as e:
        raise RingSetupError("certificate", str(e)) from None


def _issued_by_ca(cert: x509.Certificate, certificate: str, ca: str) -> bool:
    """Signed by a certificate of the CA bundle or by the next one in our
    own file (an intermediate, whose chain the handshake checks)."""
    issuers: list[x509.Certificate] = []
    for path in (ca, certificate):
        try:
            with open(path, "rb") as f:
                issuers += x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError):
            continue
    return any(nodecerts.issued_by(cert, issuer) for issuer in issuers if issuer != cert)


def ring_tls(settings: Mapping[str, Any], m: int = ids.DEFAULT_BITS, log: Logger = log) -> RingTLS | None:
    """The ring's TLS from ``[overlay]`` settings: None for an open ring
    (no ``ca``).  ``certificate`` and ``key`` default to ``node.pem`` and
    ``node.key`` in ``state_dir``; a ``node_id`` that differs from the
    certificate's is an error (in a CA ring the CA places the node)."""
    ca = str(settings.get("ca", "") or "")
    if not ca:
        return None
    state_dir = str(settings.get("state_dir", "var/overlay"))
    certificate = str(settings.get("certificate", "") or "") or os.path.join(state_dir, CERT_FILE)
    key = str(settings.get("key", "") or "") or os.path.join(state_dir, KEY_FILE)
    tls = RingTLS(ca, certificate, key, m, log=log)
    explicit = str(settings.get("node_id", "") or "")
    if explicit and ids.parse_node_id(explicit, m) != tls.node_id:
        raise RingSetupError(
            "node_id",
            f"{explicit} differs from the id in {certificate} ({nodecerts.format_id(tls.node_id, m)}): "
            "in a CA ring the certificate places the node; remove node_id",
        )
    return tls


__all__ = ["RingTLS", "RingSetupError", "Refusals", "ring_tls", "failure_reason"]
