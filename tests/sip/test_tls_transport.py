"""SIP over TLS in the transport layer: first in memory (two layers on fake
reactors joined by iosim, a Clock for the handshake deadline), then over
real sockets on 127.0.0.1 and [::1] with certificates from tests/certs.py."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor as global_reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.logger import LogLevel, globalLogPublisher
from twisted.test import iosim
from twisted.trial import unittest

from sosimple_proxy.security.tls import DEFAULT_HANDSHAKE_TIMEOUT, ClientTLS, ServerTLS
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.tls_transport import expected_domain, handshake_failure_reason
from sosimple_proxy.sip.transport import TransportError, TransportLayer
from tests.certs import CA
from tests.sip.test_transport import FakeReactor, RecordingSink, has_ipv6, message

OK = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


class Certs:
    """A CA, a stranger's CA, and server certificates in one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca, self.other_ca = CA("sosimple test CA"), CA("someone else's CA")
        self.ca_path = str(self.ca.write(directory))
        self.ca.issue(cn="example.com", dns=["example.com"], ips=["127.0.0.1", "::1"]).write(directory, "server")
        self.ca.issue(cn="other.test", dns=["other.test"]).write(directory, "other")
        self.other_ca.issue(cn="example.com", dns=["example.com"], ips=["127.0.0.1"]).write(directory, "stranger")

    def server(self, name: str = "server") -> ServerTLS:
        return ServerTLS(str(self.dir / f"{name}.pem"), str(self.dir / f"{name}.key"))

    def client(self, **kw: Any) -> ClientTLS:
        return ClientTLS(ca=self.ca_path, **kw)


def temporary_directory(case: unittest.SynchronousTestCase) -> Path:
    """A directory removed after the test (trial's mktemp writes under the cwd)."""
    path = Path(tempfile.mkdtemp(prefix="sip-tls-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


def captured_log(case: unittest.TestCase) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def texts(events: list[dict]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


# --- in memory


class InMemoryTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.certs = Certs(temporary_directory(self))

    def layers(self, server: str = "server", **client_kw: Any) -> tuple[TransportLayer, FakeReactor, TransportLayer, FakeReactor]:
        """A listening layer (tls:127.0.0.1:5061) and a connecting one, each on its own fake reactor."""
        rs, rc = FakeReactor(), FakeReactor()
        server_layer = TransportLayer(rs, [ListenAddress("tls", "127.0.0.1", 5061)], RecordingSink(), tls_server=self.certs.server(server))
        client_layer = TransportLayer(rc, [], RecordingSink(), tls_client=self.certs.client(**client_kw))
        for layer in (server_layer, client_layer):
            layer.startService()
        return server_layer, rs, client_layer, rc

    def join(self, rs: FakeReactor, rc: FakeReactor) -> iosim.IOPump:
        """Connect the client layer's pending connection to the server's listener."""
        server_factory = rs.tcpServers[0][1]
        client_factory = rc.tcpClients[-1][2]
        server_proto = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        client_proto = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5061))
        pump = iosim.connect(
            server_proto,
            iosim.FakeTransport(server_proto, True, IPv4Address("TCP", "127.0.0.1", 5061), IPv4Address("TCP", "127.0.0.1", 40000)),
            client_proto,
            iosim.FakeTransport(client_proto, False, IPv4Address("TCP", "127.0.0.1", 40000), IPv4Address("TCP", "127.0.0.1", 5061)),
            greet=False,
        )
        self.settle(pump, rs, rc)
        return pump

    @staticmethod
    def settle(pump: iosim.IOPump, *reactors: FakeReactor) -> None:
        for _ in range(10):
            for r in reactors:
                r.advance(0.01)  # TLS writes are aggregated on the clock
            pump.flush()

    def test_request_and_response_share_the_connection(self) -> None:
        server, rs, client, rc = self.layers()
        dest = Peer("tls", "127.0.0.1", 5061)
        sent = [client.send(message(cseq=1), dest), client.send(message(cseq=2), dest)]
        pump = self.join(rs, rc)
        for d in sent:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual([m[0] for m in server.sink.messages], [message(cseq=1), message(cseq=2)])  # type: ignore[attr-defined]
        data, source, local = server.sink.messages[0]  # type: ignore[attr-defined]
        self.assertEqual((source.transport, local), ("tls", ListenAddress("tls", "127.0.0.1", 5061)))
        self.assertIsNone(self.successResultOf(server.send(OK, source)))
        self.settle(pump, rs, rc)
        self.assertEqual(client.sink.messages[0][:2], (OK, dest))  # type: ignore[attr-defined]
        # The next request reuses the verified connection: no new connect.
        self.assertIsNone(self.successResultOf(client.send(message(cseq=3), dest)))
        self.settle(pump, rs, rc)
        self.assertEqual(len(rc.tcpClients), 1)
        self.assertEqual(len(server.sink.messages), 3)  # type: ignore[attr-defined]

    def test_unknown_ca_fails_the_queued_sends_with_the_reason(self) -> None:
        events = captured_log(self)
        server, rs, client, rc = self.layers(server="stranger")
        dest = Peer("tls", "127.0.0.1", 5061)
        d = client.send(message(), dest)
        self.assertNoResult(d)  # waits for the handshake, not for TCP
        self.join(rs, rc)
        error = self.failureResultOf(d, TransportError).value
        self.assertTrue(error.reason.startswith("unknown CA: certificate for example.com"), error.reason)
        self.assertEqual(server.sink.messages, [])  # type: ignore[attr-defined]
        self.assertEqual(client.connections(), [])
        warned = [t for e, t in zip(events, texts(events)) if e.get("log_level") == LogLevel.warn and "tls:" in t]
        self.assertEqual(len(warned), 1, warned)
        self.assertIn("expecting 127.0.0.1", warned[0])
        self.assertIn("unknown CA", warned[0])

    def test_another_domain_fails_with_the_reason(self) -> None:
        server, rs, client, rc = self.layers(server="other")
        d = client.send(message(), Peer("tls", "127.0.0.1", 5061, domain="example.com"))
        self.join(rs, rc)
        error = self.failureResultOf(d, TransportError).value
        self.assertEqual(error.reason, "certificate for other.test does not match example.com")

    def test_a_connection_is_reused_only_for_the_domain_it_proved(self) -> None:
        server, rs, client, rc = self.layers()
        first = Peer("tls", "127.0.0.1", 5061, domain="example.com")
        d1 = client.send(message(cseq=1), first)
        self.join(rs, rc)
        self.successResultOf(d1)
        # Same address, another expected domain: a new connection, verified anew.
        d2 = client.send(message(cseq=2), Peer("tls", "127.0.0.1", 5061, domain="other.test"))
        self.assertEqual(len(rc.tcpClients), 2)
        self.join(rs, rc)
        self.assertEqual(self.failureResultOf(d2, TransportError).value.reason, "certificate for example.com, 127.0.0.1, ::1 does not match other.test")

    def test_accepted_connection_offered_only_after_the_handshake(self) -> None:
        server, rs, _, _ = self.layers()
        proto = rs.tcpServers[0][1].buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
        proto.makeConnection(transport)
        self.assertEqual(server.connections(), [])
        self.assertFalse(server.has_connection(Peer("tls", "192.0.2.7", 40000)))

    def test_handshake_deadline_drops_a_silent_peer(self) -> None:
        server, rs, _, _ = self.layers()
        proto = rs.tcpServers[0][1].buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
        proto.makeConnection(transport)
        rs.advance(DEFAULT_HANDSHAKE_TIMEOUT - 0.5)
        self.assertFalse(transport.disconnecting)
        rs.advance(0.5)
        self.assertTrue(transport.disconnecting)

    def test_handshake_timeout_is_configurable(self) -> None:
        rs = FakeReactor()
        layer = TransportLayer(
            rs, [ListenAddress("tls", "127.0.0.1", 5061)], RecordingSink(), tls_server=self.certs.server(), tls_handshake_timeout=2
        )
        layer.startService()
        proto = rs.tcpServers[0][1].buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000), hostAddress=IPv4Address("TCP", "127.0.0.1", 5061))
        proto.makeConnection(transport)
        rs.advance(2)
        self.assertTrue(transport.disconnecting)

    def test_completed_handshake_cancels_the_deadline(self) -> None:
        server, rs, client, rc = self.layers()
        d = client.send(message(), Peer("tls", "127.0.0.1", 5061))
        pump = self.join(rs, rc)
        self.successResultOf(d)
        rs.advance(DEFAULT_HANDSHAKE_TIMEOUT * 3)
        rc.advance(DEFAULT_HANDSHAKE_TIMEOUT * 3)
        pump.flush()
        self.assertEqual(len(server.connections()), 1)
        self.assertEqual(len(client.connections()), 1)

    def test_no_outbound_tls_fails_the_send(self) -> None:
        rc = FakeReactor()
        layer = TransportLayer(rc, [], RecordingSink())
        layer.startService()
        error = self.failureResultOf(layer.send(message(), Peer("tls", "127.0.0.1", 5061)), TransportError).value
        self.assertEqual(error.reason, "TLS is not configured")

    def test_tls_listener_needs_a_certificate(self) -> None:
        layer = TransportLayer(FakeReactor(), [ListenAddress("tls", "127.0.0.1", 5061)], RecordingSink())
        self.assertRaises(ValueError, layer.startService)
        self.assertEqual(layer.listening(), [])

    def test_reload_tls_reloads_both_sides(self) -> None:
        server, _, client, _ = self.layers()
        self.assertTrue(server.reload_tls())
        self.assertTrue(client.reload_tls())
        (self.certs.dir / "server.key").write_text("not a key")
        self.assertFalse(server.reload_tls())


def test_expected_domain() -> None:
    assert expected_domain(Peer("tls", "192.0.2.1", 5061)) == "192.0.2.1"
    assert expected_domain(Peer("tls", "192.0.2.1", 5061, domain="example.com")) == "example.com"


def test_peer_domain_is_part_of_its_identity() -> None:
    assert Peer("tls", "192.0.2.1", 5061) != Peer("tls", "192.0.2.1", 5061, domain="example.com")
    assert str(Peer("tls", "192.0.2.1", 5061, domain="example.com")) == "tls:192.0.2.1:5061"


def test_handshake_failure_reason_is_one_line() -> None:
    from OpenSSL import SSL

    from sosimple_proxy.security.tls import CertificateMismatch

    assert handshake_failure_reason(CertificateMismatch("certificate for a does not match b")) == "certificate for a does not match b"
    err = SSL.Error([("SSL routines", "", "tlsv1 alert protocol version")])
    assert handshake_failure_reason(err) == "TLS handshake failed: tlsv1 alert protocol version"


# --- real sockets


class RealSocketTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.certs = Certs(temporary_directory(self))

    def layer(self, listen: list[str], **kw: Any) -> TransportLayer:
        addrs = []
        for a in listen:
            t, rest = a.split(":", 1)
            host, port = rest.rsplit(":", 1)
            addrs.append(ListenAddress(t, host.strip("[]"), int(port)))
        layer = TransportLayer(global_reactor, addrs, RecordingSink(), **kw)
        layer.startService()
        self.addCleanup(layer.stopService)
        return layer

    async def roundtrip(self, host: str) -> None:
        server = self.layer([f"tls:{host}:0"], tls_server=self.certs.server())
        client = self.layer([], tls_client=self.certs.client())
        bound = server.listening()[0]
        self.assertEqual((bound.transport, bound.host), ("tls", host.strip("[]")))
        dest = Peer("tls", bound.host, bound.port)
        await defer.gatherResults([client.send(message(cseq=1), dest), client.send(message(cseq=2), dest)])
        await server.sink.wait(2)  # type: ignore[attr-defined]
        _, source, local = server.sink.messages[0]  # type: ignore[attr-defined]
        self.assertEqual((source.transport, local), ("tls", bound))
        await server.send(OK, source)
        await client.sink.wait(1)  # type: ignore[attr-defined]
        self.assertEqual(client.sink.messages[0][1], dest)  # type: ignore[attr-defined]
        self.assertEqual(server.connections(), [source])

    def test_ipv4(self) -> defer.Deferred:
        return defer.ensureDeferred(self.roundtrip("127.0.0.1"))

    def test_ipv6(self) -> defer.Deferred:
        if not has_ipv6():
            raise unittest.SkipTest("no IPv6 loopback")
        return defer.ensureDeferred(self.roundtrip("[::1]"))

    def test_unknown_ca_is_a_transport_error(self) -> defer.Deferred:
        async def run() -> None:
            server = self.layer(["tls:127.0.0.1:0"], tls_server=self.certs.server("stranger"))
            client = self.layer([], tls_client=self.certs.client())
            dest = Peer("tls", "127.0.0.1", server.listening()[0].port)
            with self.assertRaises(TransportError) as caught:
                await client.send(message(), dest)
            self.assertIn("unknown CA", caught.exception.reason)
            self.assertEqual(server.sink.messages, [])  # type: ignore[attr-defined]

        return defer.ensureDeferred(run())

    def test_min_version_refuses_an_older_client(self) -> defer.Deferred:
        async def run() -> None:
            server = self.layer(
                ["tls:127.0.0.1:0"], tls_server=ServerTLS(str(self.certs.dir / "server.pem"), str(self.certs.dir / "server.key"), min_version="1.3")
            )
            old = self.certs.client()
            from OpenSSL import SSL

            old._context.set_max_proto_version(SSL.TLS1_2_VERSION)
            client = self.layer([], tls_client=old)
            with self.assertRaises(TransportError) as caught:
                await client.send(message(), Peer("tls", "127.0.0.1", server.listening()[0].port))
            self.assertIn("TLS handshake failed", caught.exception.reason)

        return defer.ensureDeferred(run())

    def test_reload_keeps_established_connections(self) -> defer.Deferred:
        """SIGHUP with a certificate from another CA: the open connection
        still carries messages, a new one gets the new certificate."""

        async def run() -> None:
            server = self.layer(["tls:127.0.0.1:0"], tls_server=self.certs.server())
            client = self.layer([], tls_client=self.certs.client())
            dest = Peer("tls", "127.0.0.1", server.listening()[0].port)
            await client.send(message(cseq=1), dest)
            await server.sink.wait(1)  # type: ignore[attr-defined]
            for suffix in ("pem", "key"):
                (self.certs.dir / f"server.{suffix}").write_bytes((self.certs.dir / f"stranger.{suffix}").read_bytes())
            self.assertTrue(server.reload_tls())
            await client.send(message(cseq=2), dest)
            await server.sink.wait(2)  # type: ignore[attr-defined]
            newcomer = self.layer([], tls_client=self.certs.client())
            with self.assertRaises(TransportError) as caught:
                await newcomer.send(message(cseq=3), dest)
            self.assertIn("unknown CA", caught.exception.reason)
            self.assertEqual(len(server.sink.messages), 2)  # type: ignore[attr-defined]

        return defer.ensureDeferred(run())

    def test_silent_peer_is_dropped_after_the_handshake_timeout(self) -> defer.Deferred:
        async def run() -> None:
            import socket

            server = self.layer(["tls:127.0.0.1:0"], tls_server=self.certs.server(), tls_handshake_timeout=0.3)
            sock = socket.create_connection(("127.0.0.1", server.listening()[0].port))
            self.addCleanup(sock.close)
            sock.settimeout(5)
            await task.deferLater(global_reactor, 0.6, lambda: None)
            # Closed by the server: recv sees EOF (or a reset).
            try:
                self.assertEqual(sock.recv(10), b"")
            except ConnectionResetError:
                pass

        return defer.ensureDeferred(run())


class SilentServerTests(unittest.SynchronousTestCase):
    def test_a_server_that_never_finishes_the_handshake_fails_the_send(self) -> None:
        certs = Certs(temporary_directory(self))
        rc = FakeReactor()
        client = TransportLayer(rc, [], RecordingSink(), tls_client=certs.client(), tls_handshake_timeout=5)
        client.startService()
        d = client.send(message(), Peer("tls", "127.0.0.1", 5061))
        proto = rc.tcpClients[-1][2].buildProtocol(IPv4Address("TCP", "127.0.0.1", 5061))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5061), hostAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)  # TCP is up; the ClientHello goes nowhere
        rc.advance(4.9)
        self.assertNoResult(d)
        rc.advance(0.1)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(d, TransportError).value.reason, "TLS handshake not finished in 5 s")
