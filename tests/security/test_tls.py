"""TLS contexts: real handshakes between pyOpenSSL connections on memory BIOs
(no sockets, deterministic), and once through Twisted's TLS protocol."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from sosimple_proxy.security.tls import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    INSECURE_WARNING,
    TLSConfig,
    TLSConfigError,
    parse_tls,
    CertificateMismatch,
    ClientTLS,
    HandshakeDeadline,
    ServerTLS,
    TLSFileError,
    TLSVerificationError,
    UntrustedCertificate,
    insecure_warning,
    parse_min_version,
    sip_domain_identities,
    verify_sip_domain,
)
from tests.certs import CA


class HandshakeFailed(Exception):
    def __init__(self, side: str, error: SSL.Error) -> None:
        self.side, self.error = side, error
        super().__init__(f"{side}: {error}")


def pump(client: SSL.Connection, server: SSL.Connection, rounds: int = 20) -> None:
    """Run a handshake, then a ping both ways, moving bytes between the two
    memory BIOs until nothing moves.  HandshakeFailed names the side."""
    done = {"client": False, "server": False}

    def step(name: str, conn: SSL.Connection) -> None:
        if done[name]:
            return
        try:
            conn.do_handshake()
            done[name] = True
        except SSL.WantReadError:
            pass
        except SSL.Error as e:
            raise HandshakeFailed(name, e) from None

    def move(src: SSL.Connection, dst: SSL.Connection) -> bool:
        try:
            data = src.bio_read(1 << 16)
        except SSL.WantReadError:
            return False
        dst.bio_write(data)
        return True

    for _ in range(rounds):
        step("client", client)
        moved = move(client, server)
        step("server", server)
        moved = move(server, client) or moved
        if all(done.values()) and not moved:
            break
    # TLS 1.3: the server checks a client certificate after the client is
    # done, so only an exchange shows whether both really accepted.
    for name, a, b in (("client", client, server), ("server", server, client)):
        try:
            a.send(b"ping from " + name.encode())
            move(a, b)
            assert b.recv(100) == b"ping from " + name.encode()
            move(b, a)
        except SSL.Error as e:
            raise HandshakeFailed("server" if name == "client" else "client", e) from None


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("sosimple test CA")


@pytest.fixture(scope="module")
def other_ca() -> CA:
    return CA("someone else's CA")


@pytest.fixture
def files(tmp_path: Path, ca: CA):
    """tmp_path with ca.pem and a server certificate for example.com."""
    ca.write(tmp_path)
    ca.issue(cn="example.com", sip_uris=["sip:example.com"], dns=["example.com"]).write(tmp_path, "server")
    return tmp_path


def server_for(directory: Path, name: str = "server", **kw) -> ServerTLS:
    return ServerTLS(str(directory / f"{name}.pem"), str(directory / f"{name}.key"), **kw)


def client_for(directory: Path, **kw) -> ClientTLS:
    return ClientTLS(ca=str(directory / "ca.pem"), **kw)


def attempt(server: ServerTLS, client: ClientTLS, domain: str) -> list[TLSVerificationError]:
    """A handshake to ``domain``; the verification errors it reported
    (raises HandshakeFailed when they made it fail)."""
    errors: list[TLSVerificationError] = []
    pump(client.connection(domain, on_failure=errors.append), server.connection())
    return errors


def refused(server: ServerTLS, client: ClientTLS, domain: str) -> TLSVerificationError:
    errors: list[TLSVerificationError] = []
    with pytest.raises(HandshakeFailed) as failed:
        pump(client.connection(domain, on_failure=errors.append), server.connection())
    assert failed.value.side == "client"
    assert len(errors) == 1
    return errors[0]


def issued(directory: Path, ca: CA, name: str = "peer", **names) -> ServerTLS:
    ca.issue(**names).write(directory, name)
    return server_for(directory, name)


# --- outbound verification


def test_handshake_with_the_right_domain(files):
    assert attempt(server_for(files), client_for(files), "example.com") == []
    assert attempt(server_for(files), client_for(files), "EXAMPLE.com.") == []


def test_another_domain_is_refused_with_a_reason(files, ca):
    server = issued(files, ca, dns=["other.test"])
    error = refused(server, client_for(files), "example.com")
    assert isinstance(error, CertificateMismatch)
    assert error.reason == "certificate for other.test does not match example.com"


def test_wildcard_san_is_refused(files, ca):
    server = issued(files, ca, dns=["*.example.com"])
    error = refused(server, client_for(files), "sip.example.com")
    assert error.reason.startswith("certificate for *.example.com does not match sip.example.com")
    assert "RFC 5922 7.2" in error.reason


def test_unknown_ca_is_refused(files, other_ca):
    server = issued(files, other_ca, sip_uris=["sip:example.com"])
    error = refused(server, client_for(files), "example.com")
    assert isinstance(error, UntrustedCertificate)
    assert error.reason == "unknown CA: certificate for example.com is issued by \"someone else's CA\", not by a CA we trust"


def test_expired_certificate_is_refused(files, ca):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    server = issued(files, ca, sip_uris=["sip:example.com"], not_before=past, days=2)
    assert refused(server, client_for(files), "example.com").reason == "certificate has expired: certificate for example.com"


def test_san_uri_preferred_over_san_dns(files, ca):
    server = issued(files, ca, sip_uris=["sip:a.test"], dns=["b.test"])
    assert attempt(server, client_for(files), "a.test") == []
    error = refused(server, client_for(files), "b.test")
    assert error.reason.startswith("certificate for a.test does not match b.test")
    assert "precedence" in error.reason


def test_chain_in_the_certificate_file(files, ca):
    intermediate = CA("intermediate", parent=ca)
    server = issued(files, intermediate, dns=["example.com"])
    assert attempt(server, client_for(files), "example.com") == []


def test_verify_no_accepts_anything(files, other_ca):
    server = issued(files, other_ca, dns=["other.test"])
    assert attempt(server, ClientTLS(verify=False), "example.com") == []
    assert insecure_warning() == INSECURE_WARNING and "labs" in INSECURE_WARNING


def test_no_ca_means_the_system_trust_store(files):
    error = refused(server_for(files), ClientTLS(ca=None), "example.com")
    assert error.reason.startswith("unknown CA: certificate for example.com")


# --- RFC 5922 section 7.1 rules, without a handshake


@pytest.mark.parametrize(
    "names, domain, ok",
    [
        (dict(sip_uris=["sip:a.test"]), "a.test", True),
        (dict(sip_uris=["SIP:A.Test:5061;transport=tls"]), "a.test", True),
        (dict(sip_uris=["sips:a.test"], dns=["b.test"]), "a.test", False),  # not a sip URI: ignored
        (dict(sip_uris=["sips:a.test"], dns=["b.test"]), "b.test", True),
        (dict(sip_uris=["sip:alice@a.test"], dns=["b.test"]), "a.test", False),  # a user, not a domain
        (dict(sip_uris=["sip:alice@a.test"], dns=["b.test"]), "b.test", True),
        (dict(sip_uris=["sip:*.a.test"]), "x.a.test", False),
        (dict(dns=["a.test", "b.test"]), "b.test", True),
        (dict(dns=["a.test"]), "sub.a.test", False),
        (dict(cn="c.test"), "c.test", True),  # no SAN at all: the CN
        (dict(cn="c.test", dns=["d.test"]), "c.test", False),  # a SAN: never the CN
        (dict(cn="*.c.test"), "x.c.test", False),
        (dict(ips=["192.0.2.5"]), "192.0.2.5", True),
        (dict(sip_uris=["sip:[2001:db8::1]:5061"]), "2001:db8::1", True),
        (dict(dns=["192.0.2.5"]), "192.0.2.6", False),
    ],
)
def test_sip_domain_rules(ca, names, domain, ok):
    cert = ca.issue(**names).cert
    if ok:
        verify_sip_domain(cert, domain)
    else:
        with pytest.raises(CertificateMismatch):
            verify_sip_domain(cert, domain)


def test_identities_say_where_they_came_from(ca):
    assert sip_domain_identities(ca.issue(sip_uris=["sip:a.test"], dns=["b.test"]).cert) == ("uri", ("a.test",))
    assert sip_domain_identities(ca.issue(cn="x", dns=["b.test"]).cert) == ("dns", ("b.test",))
    assert sip_domain_identities(ca.issue(cn="c.test").cert) == ("cn", ("c.test",))


# --- protocol versions


def legacy_client(max_version: int) -> SSL.Connection:
    """A client that offers nothing newer than ``max_version``."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_VERSION)
    ctx.set_max_proto_version(max_version)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    ctx.set_verify(SSL.VERIFY_NONE)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    return conn


def test_tls_1_1_refused_when_minimum_is_1_2(files):
    with pytest.raises(HandshakeFailed):
        pump(legacy_client(SSL.TLS1_1_VERSION), server_for(files).connection())
    pump(legacy_client(SSL.TLS1_2_VERSION), server_for(files).connection())


def test_tls_1_2_refused_when_minimum_is_1_3(files):
    with pytest.raises(HandshakeFailed):
        pump(legacy_client(SSL.TLS1_2_VERSION), server_for(files, min_version="1.3").connection())
    client = client_for(files).connection("example.com")
    server = server_for(files, min_version="1.3").connection()
    pump(client, server)
    assert client.get_protocol_version_name() == "TLSv1.3"


@pytest.mark.parametrize("raw, value", [("1.2", "1.2"), (" 1.3 ", "1.3"), ("TLSv1.3", "1.3")])
def test_min_version_parsed(raw, value):
    assert parse_min_version(raw) == value


@pytest.mark.parametrize("raw", ["1.1", "1.0", "SSLv3", "", "2"])
def test_bad_min_version(raw):
    with pytest.raises(ValueError, match="is not a TLS version we accept"):
        parse_min_version(raw)


# --- files and reload


def test_bad_files_at_startup(tmp_path, ca, other_ca):
    ca.issue(dns=["a.test"]).write(tmp_path, "a")
    other_ca.issue(dns=["b.test"]).write(tmp_path, "b")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(TLSFileError, match="no such file") as caught:
        ServerTLS(str(tmp_path / "missing.pem"), str(tmp_path / "a.key"))
    assert caught.value.key == "certificate"
    with pytest.raises(TLSFileError, match="not a usable PEM certificate"):
        ServerTLS(str(tmp_path / "junk.pem"), str(tmp_path / "a.key"))
    with pytest.raises(TLSFileError, match="does not belong to certificate") as caught:
        ServerTLS(str(tmp_path / "a.pem"), str(tmp_path / "b.key"))
    assert caught.value.key == "key"
    with pytest.raises(TLSFileError, match="CA bundle") as caught:
        ClientTLS(ca=str(tmp_path / "junk.pem"))
    assert caught.value.key == "ca"


def test_reload_serves_the_new_certificate_to_new_connections(files, ca):
    events: list[dict] = []
    server = ServerTLS(str(files / "server.pem"), str(files / "server.key"), log=Logger(observer=events.append))
    client = client_for(files)
    before_c, before_s = client.connection("example.com"), server.connection()
    pump(before_c, before_s)

    ca.issue(sip_uris=["sip:example.com", "sip:new.example.com"]).write(files, "server")
    assert server.reload() is True
    assert attempt(server, client, "new.example.com") == []
    # the connection made before the reload carries on
    before_c.send(b"still here")
    before_s.bio_write(before_c.bio_read(1 << 16))
    assert before_s.recv(100) == b"still here"

    (files / "server.pem").write_text("garbage")
    assert server.reload() is False
    assert "keeping the current certificate" in events[-1]["log_format"]
    assert "not a usable PEM certificate" in events[-1]["why"]
    assert attempt(server, client, "new.example.com") == []  # still the good one


# --- mutual TLS


def test_mutual_tls(files, ca, other_ca):
    ca.issue(sip_uris=["sip:ring.test"]).write(files, "member")
    other_ca.issue(sip_uris=["sip:ring.test"]).write(files, "stranger")
    events: list[dict] = []
    server = server_for(files, client_ca=str(files / "ca.pem"), log=Logger(observer=events.append))

    def member(name: str | None) -> ClientTLS:
        if name is None:
            return client_for(files)
        return client_for(files, certificate=str(files / f"{name}.pem"), key=str(files / f"{name}.key"))

    assert attempt(server, member("member"), "example.com") == []
    for who in ("stranger", None):
        with pytest.raises(HandshakeFailed):
            pump(member(who).connection("example.com"), server.connection())
    assert [e["why"] for e in events] == ["unknown CA: certificate for ring.test is issued by \"someone else's CA\", not by a CA we trust"]


# --- through Twisted's TLS protocol


class Recorder(Protocol):
    def __init__(self) -> None:
        self.lost = None
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


def twisted_connection(server: ServerTLS, creator) -> tuple[Recorder, Recorder]:
    """Connect through TLSMemoryBIOProtocol on iosim's fake transports; the
    client writes a greeting once connected."""
    clock, server_app, client_app = Clock(), Recorder(), Recorder()
    server_proto = TLSMemoryBIOFactory(server, False, Factory.forProtocol(lambda: server_app), clock).buildProtocol(None)
    client_proto = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: client_app), clock).buildProtocol(None)
    _, _, pumper = iosim.connectedServerAndClient(lambda: server_proto, lambda: client_proto, greet=True, clock=clock)
    if client_app.lost is None:
        client_app.transport.write(b"hello over tls")
    for _ in range(5):
        clock.advance(1)  # TLS writes are aggregated on the clock
        pumper.flush()
    return server_app, client_app


def test_twisted_client_connection_succeeds(files):
    server_app, client_app = twisted_connection(server_for(files), client_for(files).for_domain("example.com"))
    assert server_app.data == b"hello over tls"
    assert client_app.lost is None


def test_twisted_client_sees_the_reason(files, ca):
    server = issued(files, ca, dns=["other.test"])
    server_app, client_app = twisted_connection(server, client_for(files).for_domain("example.com"))
    assert server_app.data == b""
    assert client_app.lost is not None
    assert client_app.lost.check(CertificateMismatch)
    assert client_app.lost.value.reason == "certificate for other.test does not match example.com"


def test_for_domain_refuses_a_non_domain(files):
    with pytest.raises(ValueError):
        client_for(files).for_domain("not a domain!")


# --- handshake deadline


def test_handshake_deadline_aborts_a_silent_peer():
    clock, aborted = Clock(), []
    deadline = HandshakeDeadline(clock, 10, lambda: aborted.append(True), peer="192.0.2.1")
    clock.advance(9.9)
    assert aborted == [] and not deadline.expired
    clock.advance(0.1)
    assert aborted == [True] and deadline.expired
    deadline.cancel()  # from connectionLost: harmless after expiry


def test_handshake_deadline_cancelled_by_completion():
    clock, aborted = Clock(), []
    deadline = HandshakeDeadline(clock, 10, lambda: aborted.append(True))
    clock.advance(5)
    deadline.completed()
    clock.advance(60)
    assert aborted == [] and clock.getDelayedCalls() == []


def test_handshake_deadline_with_twisted_tls(files):
    """How a transport uses it: a peer that opens a TLS connection and never
    sends a ClientHello is aborted when the deadline passes."""
    clock, app = Clock(), Recorder()
    proto = TLSMemoryBIOFactory(server_for(files), False, Factory.forProtocol(lambda: app), clock).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    HandshakeDeadline(clock, DEFAULT_HANDSHAKE_TIMEOUT, proto.abortConnection, peer="192.0.2.1")
    clock.advance(DEFAULT_HANDSHAKE_TIMEOUT)
    assert transport.disconnecting


# --- [tls] configuration


def test_tls_defaults():
    config = parse_tls({})
    assert config == TLSConfig()
    assert (config.verify, config.min_version, config.handshake_timeout, config.serves) == (True, "1.2", 10.0, False)


def test_tls_values():
    config = parse_tls({"certificate": " tls/c.pem ", "key": "tls/k.pem", "verify": "no", "min_version": "1.3", "handshake_timeout": "2.5"})
    assert (config.certificate, config.key, config.verify, config.min_version, config.handshake_timeout) == ("tls/c.pem", "tls/k.pem", False, "1.3", 2.5)
    assert config.serves


@pytest.mark.parametrize(
    "raw, key, problem",
    [
        ({"verify": "maybe"}, "verify", "'maybe' is not yes or no"),
        ({"min_version": "1.1"}, "min_version", "'1.1' is not a TLS version"),
        ({"handshake_timeout": "0"}, "handshake_timeout", "must be a positive number"),
        ({"certificate": "c.pem"}, "key", "set both or neither"),
        ({"key": "k.pem"}, "certificate", "set both or neither"),
    ],
)
def test_tls_bad_values(raw, key, problem):
    with pytest.raises(TLSConfigError) as caught:
        parse_tls(raw)
    assert caught.value.key == key and problem in caught.value.problem
    assert str(caught.value).startswith(f"[tls] {key}: ")


def test_from_config(files):
    config = parse_tls({"certificate": str(files / "server.pem"), "key": str(files / "server.key"), "ca": str(files / "ca.pem")})
    assert attempt(ServerTLS.from_config(config), ClientTLS.from_config(config), "example.com") == []
