"""The TLS helpers of sosimple_proxy.testing: the TLS answering UA with a
Python ssl client, and the files the linphonec, stunnel and baresip helpers write."""

from __future__ import annotations

import socket
import ssl

import pytest

from sosimple_proxy.testing import Baresip, Linphonec, Stunnel, TLSAnsweringUA, message_request, wait_until
from tests.certs import CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CA("helper CA")
    ca_pem = ca.write(d)
    cert, key = ca.issue(cn="peer.test", dns=["peer.test"], ips=["127.0.0.1"]).write(d, "peer")
    return ca_pem, cert, key


def test_tls_answering_ua_answers_on_the_connection(pki):
    ca_pem, cert, key = pki
    context = ssl.create_default_context(cafile=str(ca_pem))
    with TLSAnsweringUA(cert, key) as ua:
        with socket.create_connection(("127.0.0.1", ua.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="peer.test") as conn:
                request = message_request("bob@peer.test", "alice@example.com", "hi over tls", via_port=5070)
                conn.sendall(b"\r\n\r\n" + request.encode())  # a keep-alive first
                answer = conn.recv(65536).decode()
        assert answer.startswith("SIP/2.0 200 OK\r\n")
        assert ua.received("hi over tls")


def test_tls_answering_ua_records_a_refused_handshake(pki):
    _, cert, key = pki
    context = ssl.create_default_context()  # the system's CAs: ours is unknown
    with TLSAnsweringUA(cert, key) as ua:
        with socket.create_connection(("127.0.0.1", ua.port), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="peer.test")
        wait_until(lambda: ua.handshake_errors, 5, what="the failed handshake")
        assert ua.requests == []


def test_linphonec_tls_config(tmp_path, pki):
    ca_pem, _, _ = pki
    phone = Linphonec("carol", 5061, proxy_host="localhost", transport="tls", ca=ca_pem, workdir=tmp_path,
                      sip_port=6001)
    text = phone.config_text
    assert "sip_tls_port=6001" in text and "sip_port=0" in text and "sip_tcp_port=0" in text
    assert f"root_ca={ca_pem}" in text and "verify_server_cn=1" in text
    assert "reg_proxy=<sip:localhost:5061;transport=tls>" in text
    assert "reg_identity=sip:carol@example.com" in text
    with pytest.raises(ValueError):
        Linphonec("carol", 5061, transport="tls", workdir=tmp_path)  # TLS needs a CA


def test_stunnel_config(tmp_path, pki):
    ca_pem, _, _ = pki
    tunnel = Stunnel(5061, ca=ca_pem, check_ip="127.0.0.1", accept_port=7000, workdir=tmp_path)
    text = tunnel.config_text
    for line in ("client = yes", "accept = 127.0.0.1:7000", "connect = 127.0.0.1:5061", f"CAfile = {ca_pem}",
                 "verifyChain = yes", "checkIP = 127.0.0.1"):
        assert line in text.splitlines()


def test_baresip_over_tls_config(tmp_path, pki):
    ca_pem, _, _ = pki
    phone = Baresip("alice", 5061, transport="tls", ca=ca_pem, workdir=tmp_path, sip_port=6000, ctrl_port=6010)
    assert f"sip_cafile {ca_pem}" in phone.config_text.splitlines()
    assert 'outbound="sip:127.0.0.1:5061;transport=tls"' in phone.accounts_text
