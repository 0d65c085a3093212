"""TLS for SIP: server contexts with reload, client contexts that check the
peer's SIP domain the RFC 5922 way, and a handshake deadline.

pyOpenSSL ``SSL.Context`` objects are built directly (not through
``CertificateOptions``) because we need three things it makes awkward: a
minimum protocol version taken from ``site.ini``, swapping the certificate
on SIGHUP for new connections only, and client-certificate verification
against a CA (mutual TLS, for the ring).

Both sides are Twisted connection creators, so they plug into
``TLSMemoryBIOFactory``, ``wrapClientTLS`` and ``SSL4ServerEndpoint`` /
``SSL4ClientEndpoint``:

    server = ServerTLS("tls/cert.pem", "tls/key.pem", min_version="1.2")
    SSL4ServerEndpoint(reactor, 5061, server, interface="127.0.0.1")
    server.reload()                     # on SIGHUP

    client = ClientTLS(ca="tls/ca.pem")
    wrapClientTLS(client.for_domain("example.com"), TCP4ClientEndpoint(...))

A verification failure reaches the protocol's ``connectionLost`` as a
:class:`TLSVerificationError` whose ``reason`` is one readable line
("certificate for other.test does not match example.com", "unknown CA"), so
the proxy logs it and fails the branch over like a transport error.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Callable, Mapping

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from service_identity import CertificateError
from service_identity.hazmat import DNS_ID, DNSPattern
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer
from sosimple_proxy.values import boolean

log = Logger()

# [tls] min_version -> OpenSSL's protocol version.  TLS 1.0 and 1.1 are
# deprecated (RFC 8996) and not offered at all.
MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
DEFAULT_MIN_VERSION = "1.2"
# Seconds a TLS connection has to finish its handshake (see HandshakeDeadline).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

INSECURE_WARNING = (
    "[tls] verify = no: outbound TLS accepts any certificate from anyone, so a "
    "man in the middle can read and change the signalling; for labs only"
)


def insecure_warning() -> str:
    """The line to log at startup when ``[tls] verify = no``."""
    return INSECURE_WARNING


def parse_min_version(raw: str) -> str:
    """``[tls] min_version``: ``1.2`` or ``1.3`` (``TLSv1.2`` spellings too)."""
    text = raw.strip().lower().removeprefix("tlsv").removeprefix("tls")
    if text not in MIN_VERSIONS:
        raise ValueError(f"{raw.strip()!r} is not a TLS version we accept ({', '.join(MIN_VERSIONS)})")
    return text


def _parse_path(raw: str) -> str:
    return raw.strip()


def _parse_timeout(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"{raw.strip()!r} is not a number") from None
    if not (0 < value < float("inf")):
        raise ValueError(f"{raw.strip()} must be a positive number of seconds")
    return value


@attrs.frozen
class TLSConfig:
    """The ``[tls]`` section.  Paths are as written (relative to twistd's
    rundir); the files are read when contexts are built."""

    certificate: str = ""  # PEM, leaf first, a chain may follow
    key: str = ""  # PEM private key of the certificate
    ca: str = ""  # PEM bundle outbound TLS trusts; empty = the system's store
    verify: bool = True  # no: labs only, warned at startup
    min_version: str = DEFAULT_MIN_VERSION
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT

    @property
    def serves(self) -> bool:
        """Whether ``tls:`` listeners can be served (certificate and key given)."""
        return bool(self.certificate and self.key)


TLS_SCHEMA: dict[str, tuple[Callable[[str], object], str]] = {
    "certificate": (_parse_path, ""),
    "key": (_parse_path, ""),
    "ca": (_parse_path, ""),
    "verify": (boolean, "yes"),
    "min_version": (parse_min_version, DEFAULT_MIN_VERSION),
    "handshake_timeout": (_parse_timeout, f"{DEFAULT_HANDSHAKE_TIMEOUT:g}"),
}


class TLSConfigError(ValueError):
    """A bad ``[tls]`` value; ``key`` and ``problem`` for config.py's line."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"[tls] {key}: {problem}")


def parse_tls(raw: Mapping[str, str]) -> TLSConfig:
    """Parse the raw ``[tls]`` strings (missing keys take defaults).  The
    files are not read here: build :class:`ServerTLS`/:class:`ClientTLS`
    at startup to find bad files (:class:`TLSFileError` names the key)."""
    values: dict[str, object] = {}
    for key, (parse, default) in TLS_SCHEMA.items():
        try:
            values[key] = parse(raw.get(key, default))
        except ValueError as e:
            raise TLSConfigError(key, str(e)) from None
    if bool(values["certificate"]) != bool(values["key"]):
        missing = "key" if values["certificate"] else "certificate"
        raise TLSConfigError(missing, "certificate and key go together: set both or neither")
    return TLSConfig(**values)  # type: ignore[arg-type]


# --- errors -------------------------------------------------------------


class TLSFileError(ValueError):
    """A certificate, key or CA file that cannot be used; ``str()`` says
    which file and why, in one line, and ``key`` names the ``[tls]`` key
    (``certificate``, ``key`` or ``ca``) for config.py's message."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(problem)


class TLSVerificationError(Exception):
    """The peer's certificate was refused; ``reason`` is one readable line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UntrustedCertificate(TLSVerificationError):
    """The chain does not lead to a CA in ``[tls] ca`` (or is expired...)."""


class CertificateMismatch(TLSVerificationError):
    """The certificate is trusted but names another SIP domain."""


# --- RFC 5922 section 7.1: the SIP domain identities of a certificate ----------


def _sip_uri_host(uri: str) -> str | None:
    """The hostpart of a ``sip:`` URI without user part, else None.

    RFC 5922 7.1: a URI whose scheme is not "sip" MUST NOT be accepted as a
    SIP domain identity, nor one with a userpart (it names a user, not a
    domain).  Scheme comparison is case-insensitive.
    """
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme.lower() != "sip" or "@" in rest:
        return None
    for stop in ";?":
        rest = rest.split(stop, 1)[0]
    if rest.startswith("["):  # sip:[2001:db8::1]:5061
        host = rest[1 : rest.find("]")] if "]" in rest else ""
    else:
        host = rest.split(":", 1)[0]
    return host or None


def sip_domain_identities(cert: x509.Certificate) -> tuple[str, tuple[str, ...]]:
    """Which names of ``cert`` identify a SIP domain, and where they came
    from: ``("uri", ...)``, ``("dns", ...)`` or ``("cn", ...)``.

    RFC 5922 section 7.1: sip URIs in subjectAltName first; DNS names (and
    IP addresses) "if and only if" no sip URI identity is found; the CN only
    when there is no subjectAltName at all.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return "cn", tuple(str(a.value) for a in cns)
    uris = tuple(h for h in (_sip_uri_host(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)) if h)
    if uris:
        return "uri", uris
    names = tuple(san.get_values_for_type(x509.DNSName))
    return "dns", names + tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))


def _matches(identity: str, domain: str) -> bool:
    """One identity against the expected domain, exactly (no wildcards)."""
    # RFC 5922 7.2: "Implementations MUST match the values in their
    # entirety: Implementations MUST NOT match suffixes" and "MUST NOT match
    # any form of wildcard, such as a leading "." or "*." with any other DNS
    # label or sequence of labels".
    if "*" in identity or identity.startswith("."):
        return False
    try:
        wanted_ip = ipaddress.ip_address(domain.strip("[]"))
    except ValueError:
        wanted_ip = None
    if wanted_ip is not None:
        try:
            return ipaddress.ip_address(identity.strip("[]")) == wanted_ip
        except ValueError:
            return False
    try:
        # service_identity does the case folding and IDNA; with the '*'
        # refused above its DNS match is exact.
        return DNS_ID(domain).verify(DNSPattern.from_bytes(identity.encode("idna")))
    except (ValueError, CertificateError, UnicodeError):
        return False


def check_domain(domain: str) -> str:
    """The expected SIP domain, normalised; ValueError if it is no
    hostname or IP address."""
    text = domain.strip().rstrip(".")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    DNS_ID(text)  # raises ValueError for what is no hostname
    return text.lower()


def verify_sip_domain(cert: x509.Certificate, domain: str) -> None:
    """Raise :class:`CertificateMismatch` unless ``cert`` identifies the SIP
    domain ``domain`` (RFC 5922 section 7)."""
    domain = check_domain(domain)
    kind, identities = sip_domain_identities(cert)
    if any(_matches(identity, domain) for identity in identities):
        return
    named = ", ".join(identities) if identities else "no SIP domain"
    reason = f"certificate for {named} does not match {domain}"
    if any(_wildcard_would_match(i, domain) for i in identities):
        reason += " (wildcards are not accepted for SIP domains, RFC 5922 7.2)"
    elif kind == "uri" and any(_matches(name, domain) for name in _dns_names(cert)):
        reason += " (its sip URIs take precedence over its DNS names, RFC 5922 7.1)"
    raise CertificateMismatch(reason)


def _wildcard_would_match(pattern: str, domain: str) -> bool:
    head, _, tail = pattern.partition(".")
    return head == "*" and domain.lower().partition(".")[2] == tail.lower()


def _dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


# --- verify callback errors ---------------------------------------------------

_CODES = SSL.X509VerificationCodes
_UNKNOWN_CA = {
    _CODES.ERR_UNABLE_TO_GET_ISSUER_CERT,
    _CODES.ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
    _CODES.ERR_SELF_SIGNED_CERT_IN_CHAIN,
    _CODES.ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
    _CODES.ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    _CODES.ERR_CERT_UNTRUSTED,
}
_READABLE = {
    _CODES.ERR_CERT_HAS_EXPIRED: "certificate has expired",
    _CODES.ERR_CERT_NOT_YET_VALID: "certificate is not yet valid",
    _CODES.ERR_CERT_SIGNATURE_FAILURE: "certificate signature is invalid",
    _CODES.ERR_INVALID_CA: "an issuer in the chain is not a CA",
    _CODES.ERR_INVALID_PURPOSE: "certificate is not meant for this purpose",
    _CODES.ERR_CERT_CHAIN_TOO_LONG: "certificate chain is too long",
}


def _described(cert: x509.Certificate) -> str:
    """A certificate as a log line names it: its SIP identities, else its subject."""
    identities = sip_domain_identities(cert)[1]
    if identities:
        return "certificate for " + ", ".join(identities)
    return f"certificate {cert.subject.rfc4514_string() or '(no subject)'}"


def _issuer(cert: x509.Certificate) -> str:
    cns = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else cert.issuer.rfc4514_string()


def chain_error_reason(errno: int, cert: x509.Certificate) -> str:
    """One line for an OpenSSL verify error on ``cert``."""
    if errno in _UNKNOWN_CA:
        return f"unknown CA: {_described(cert)} is issued by {_issuer(cert)!r}, not by a CA we trust"
    what = _READABLE.get(errno, f"certificate verify error {errno}")
    return f"{what}: {_described(cert)}"


# --- contexts -----------------------------------------------------------------


def _readable(path: str, what: str, key: str) -> None:
    if not path:
        raise TLSFileError(key, f"no {what} file given")
    if not os.path.isfile(path):
        raise TLSFileError(key, f"{what} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise TLSFileError(key, f"{what} {path}: not readable")


def _detail(error: SSL.Error) -> str:
    try:
        return "; ".join(str(e[2]) for e in error.args[0]) or str(error)
    except (IndexError, TypeError):
        return str(error)


def _base_context(min_version: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(MIN_VERSIONS[parse_min_version(min_version)])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    return ctx


def _load_identity(ctx: SSL.Context, certificate: str, key: str) -> None:
    """Our certificate (a chain after the leaf is allowed) and its key."""
    _readable(certificate, "certificate", "certificate")
    _readable(key, "key", "key")
    try:
        ctx.use_certificate_chain_file(certificate)
    except SSL.Error as e:
        raise TLSFileError("certificate", f"certificate {certificate}: not a usable PEM certificate ({_detail(e)})") from None
    try:
        ctx.use_privatekey_file(key)
    except SSL.Error as e:
        if "mismatch" in _detail(e):
            raise TLSFileError("key", f"key {key} does not belong to certificate {certificate}") from None
        raise TLSFileError("key", f"key {key}: not a usable PEM private key ({_detail(e)})") from None
    try:
        ctx.check_privatekey()
    except SSL.Error:
        raise TLSFileError("key", f"key {key} does not belong to certificate {certificate}") from None


def _load_ca(ctx: SSL.Context, ca: str) -> None:
    _readable(ca, "CA bundle", "ca")
    try:
        ctx.load_verify_locations(ca)
    except SSL.Error as e:
        raise TLSFileError("ca", f"CA bundle {ca}: no usable PEM certificates ({_detail(e)})") from None


def server_context(
    certificate: str,
    key: str,
    min_version: str = DEFAULT_MIN_VERSION,
    client_ca: str | None = None,
    log: Logger = log,
    ask_certificate: bool = False,
) -> SSL.Context:
    """A server context for ``tls:`` listeners.  With ``client_ca`` every
    client must present a certificate from that CA (mutual TLS); a refused
    one is logged with the reason.  With ``ask_certificate`` a client may
    present any certificate, or none: the handshake proves it holds the key,
    and whoever reads it checks what it is (a CA ring's members,
    :mod:`.ringmembers`)."""
    ctx = _base_context(min_version)
    _load_identity(ctx, certificate, key)
    if ask_certificate and not client_ca:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, lambda conn, cert, errno, depth, ok: True)
        ctx.set_session_id(b"sosimple-proxy")
    if client_ca:
        _load_ca(ctx, client_ca)
        try:
            ctx.load_client_ca(client_ca.encode())
        except SSL.Error as e:
            raise TLSFileError("ca", f"CA bundle {client_ca}: {_detail(e)}") from None
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE, _client_verifier(log))
        # Resumed sessions need an id context once clients are verified.
        ctx.set_session_id(b"sosimple-proxy")
    return ctx


def _client_verifier(log: Logger) -> Callable[[SSL.Connection, object, int, int, int], bool]:
    """Chain checks are OpenSSL's; this only says why a client was refused."""

    def verify(conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            try:
                why = chain_error_reason(errno, cert.to_cryptography())  # type: ignore[attr-defined]
            except Exception:
                why = f"certificate verify error {errno}"
            log.info("tls: refused a client certificate: {why}", why=why)
        return bool(ok)

    return verify


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The server side of ``tls:`` listeners, reloadable.

    :meth:`reload` builds a new context from the same files; connections
    made afterwards use it, while open ones keep the context they were made
    with (an ``SSL.Connection`` holds its own reference), so calls carry on.
    A bad file at startup raises :class:`TLSFileError`; at reload it is
    logged and the old context stays.
    """

    def __init__(
        self,
        certificate: str,
        key: str,
        min_version: str = DEFAULT_MIN_VERSION,
        client_ca: str | None = None,
        log: Logger = log,
        ask_certificate: bool = False,
    ) -> None:
        self.certificate, self.key, self.min_version, self.client_ca = certificate, key, min_version, client_ca
        self.ask_certificate = ask_certificate
        self._log = log
        self._context = server_context(certificate, key, min_version, client_ca, log, ask_certificate)

    @classmethod
    def from_config(cls, config: TLSConfig, client_ca: str | None = None, log: Logger = log) -> ServerTLS:
        """The ``tls:`` listeners' side of ``[tls]``."""
        return cls(config.certificate, config.key, config.min_version, client_ca, log)

    def reload(self) -> bool:
        """Re-read the files (SIGHUP); whether the new ones are in use."""
        try:
            context = server_context(
                self.certificate, self.key, self.min_version, self.client_ca, self._log, self.ask_certificate
            )
        except TLSFileError as e:
            self._log.error("tls: reload failed, keeping the current certificate: {why}", why=str(e))
            return False
        self._context = context
        self._log.info("tls: reloaded certificate {path}", path=self.certificate)
        return True

    def getContext(self) -> SSL.Context:
        """The current context (old-style Twisted context factory API)."""
        return self._context

    def connection(self) -> SSL.Connection:
        """A server-side connection on memory BIOs, with the current context."""
        conn = SSL.Connection(self._context, None)
        conn.set_accept_state()
        return conn

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self._context, None)
        conn.set_app_data(tlsProtocol)
        return conn


def client_context(
    ca: str | None = None,
    min_version: str = DEFAULT_MIN_VERSION,
    verify: bool = True,
    certificate: str | None = None,
    key: str | None = None,
) -> SSL.Context:
    """A client context: the peer's chain is checked against ``ca`` (per
    connection, see :class:`ClientTLS`), or against the system's trust
    store when ``ca`` is empty (other domains with public certificates);
    ``certificate``/``key`` are ours for mutual TLS."""
    ctx = _base_context(min_version)
    if verify:
        if ca:
            _load_ca(ctx, ca)
        else:
            ctx.set_default_verify_paths()
    if certificate or key:
        _load_identity(ctx, certificate or "", key or "")
    return ctx


class _Verifier:
    """The per-connection verify callback: chain errors and the SIP domain,
    each turned into one :class:`TLSVerificationError` for ``on_failure``."""

    def __init__(self, domain: str, on_failure: Callable[[TLSVerificationError], object] | None) -> None:
        self.domain = domain
        self.on_failure = on_failure
        self.error: TLSVerificationError | None = None

    def __call__(self, conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
        if self.error is not None:
            return False
        try:
            crypto_cert = cert.to_cryptography()  # type: ignore[attr-defined]
            if not ok:
                self._fail(UntrustedCertificate(chain_error_reason(errno, crypto_cert)))
                return False
            if depth == 0:
                verify_sip_domain(crypto_cert, self.domain)
        except TLSVerificationError as e:
            self._fail(e)
            return False
        except Exception:  # an exception escaping an OpenSSL callback is lost
            log.failure("tls: while verifying a certificate")
            self._fail(TLSVerificationError("internal error while verifying the certificate"))
            return False
        return True

    def _fail(self, error: TLSVerificationError) -> None:
        self.error = error
        if self.on_failure is not None:
            self.on_failure(error)


@implementer(IOpenSSLClientConnectionCreator)
class DomainCreator:
    """Connections to one expected SIP domain (what ``wrapClientTLS`` and
    ``SSL4ClientEndpoint`` take).  Made by :meth:`ClientTLS.for_domain`."""

    def __init__(self, client: ClientTLS, domain: str) -> None:
        self.client, self.domain = client, domain

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        def fail(error: TLSVerificationError) -> None:
            tlsProtocol.failVerification(Failure(error))  # type: ignore[attr-defined]

        conn = self.client.connection(self.domain, on_failure=fail)
        conn.set_app_data(tlsProtocol)
        return conn


class ClientTLS:
    """Outbound TLS from ``[tls] ca``, ``min_version`` and ``verify``.

    One context for all outbound connections; each connection checks its
    own expected domain: the SIP domain of the Request-URI or Route that
    chose the hop (RFC 5922 section 7), not the host name DNS gave us.
    """

    def __init__(
        self,
        ca: str | None = None,
        min_version: str = DEFAULT_MIN_VERSION,
        verify: bool = True,
        certificate: str | None = None,
        key: str | None = None,
        log: Logger = log,
    ) -> None:
        self.ca, self.min_version, self.verify = ca, min_version, verify
        self.certificate, self.key = certificate, key
        self._log = log
        self._context = client_context(ca, min_version, verify, certificate, key)

    @classmethod
    def from_config(cls, config: TLSConfig, log: Logger = log) -> ClientTLS:
        """Outbound TLS from ``[tls]``; our certificate (if any) is offered
        to servers that ask for one."""
        return cls(config.ca or None, config.min_version, config.verify, config.certificate or None, config.key or None, log)

    def reload(self) -> bool:
        """Re-read the CA bundle (and our own certificate) on SIGHUP."""
        try:
            context = client_context(self.ca, self.min_version, self.verify, self.certificate, self.key)
        except TLSFileError as e:
            self._log.error("tls: reload failed, keeping the current CA bundle: {why}", why=str(e))
            return False
        self._context = context
        return True

    def for_domain(self, domain: str) -> DomainCreator:
        """The connection creator for a hop that must be ``domain``."""
        return DomainCreator(self, check_domain(domain))

    def connection(
        self, domain: str, on_failure: Callable[[TLSVerificationError], object] | None = None
    ) -> SSL.Connection:
        """A client-side connection on memory BIOs expecting ``domain``;
        ``on_failure`` hears why verification failed, if it does."""
        domain = check_domain(domain)
        conn = SSL.Connection(self._context, None)
        if not _is_ip(domain):
            conn.set_tlsext_host_name(domain.encode("idna"))
        if self.verify:
            verifier = _Verifier(domain, on_failure)
            conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verifier)
        else:
            conn.set_verify(SSL.VERIFY_NONE)
        conn.set_connect_state()
        return conn


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- handshake deadline -----------------------------------------------------------


class HandshakeDeadline:
    """Abort a connection whose TLS handshake has not finished in time, so a
    peer that connects and says nothing (or trickles) does not hold a slot.

    The transport makes one per accepted connection and calls
    :meth:`completed` from its ``IHandshakeListener.handshakeCompleted`` and
    :meth:`cancel` from ``connectionLost``:

        self._deadline = HandshakeDeadline(clock, 10, self.transport.abortConnection)
    """

    def __init__(
        self,
        clock: IReactorTime,
        seconds: float = DEFAULT_HANDSHAKE_TIMEOUT,
        abort: Callable[[], object] = lambda: None,
        peer: str = "",
        log: Logger = log,
    ) -> None:
        self.expired = False
        self._abort, self._peer, self._log, self._seconds = abort, peer, log, seconds
        self._call: IDelayedCall | None = clock.callLater(seconds, self._expire)

    def completed(self) -> None:
        """The handshake finished: no deadline any more."""
        self.cancel()

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expire(self) -> None:
        self._call = None
        self.expired = True
        self._log.info("tls: handshake with {peer} not finished in {seconds:g} s; closing", peer=self._peer or "a peer", seconds=self._seconds)
        self._abort()

