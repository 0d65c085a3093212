"""[tls] at startup: the keys and their defaults, what a tls: listener
needs, bad files stopping startup with one line, the verify = no warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from sosimple_proxy.config import ConfigError, parse_config, tls_config
from sosimple_proxy.security.tls import INSECURE_WARNING, TLSConfig, TLSFileError
from sosimple_proxy.sip.address import ListenAddress
from sosimple_proxy.tls_contexts import build_tls
from tests.certs import CA

BASE = "[overlay]\nlisten =\n[admin]\nlisten =\n[location]\norder = local\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = CA("startup CA")
    ca.write(d)
    ca.issue(cn="example.com", dns=["example.com"]).write(d, "proxy")
    return d


def config(text: str):
    return parse_config(BASE + text, "site.ini")


def test_tls_defaults():
    t = tls_config(config(""))
    assert t == TLSConfig()
    assert t.verify is True and t.min_version == "1.2" and t.handshake_timeout == 10.0


def test_tls_values(pki):
    t = tls_config(config(
        f"[tls]\ncertificate = {pki}/proxy.pem\nkey = {pki}/proxy.key\nca = {pki}/ca.pem\n"
        "verify = no\nmin_version = 1.3\nhandshake_timeout = 2.5\n"
    ))
    assert (t.verify, t.min_version, t.handshake_timeout) == (False, "1.3", 2.5)
    assert t.serves


@pytest.mark.parametrize(
    "text, section, key, words",
    [
        ("[proxy]\nlisten = tls:127.0.0.1:5061\n", "proxy", "listen", "needs [tls] certificate and key, which are not set"),
        ("[proxy]\nlisten = tls:127.0.0.1:5061\n[tls]\ncertificate = a.pem\nkey = a.key\n", None, None, None),
        ("[tls]\ncertificate = a.pem\n", "tls", "key", "certificate and key go together"),
        ("[tls]\nmin_version = 1.1\n", "tls", "min_version", "not a TLS version we accept"),
        ("[tls]\nverify = maybe\n", "tls", "verify", "not yes or no"),
        ("[tls]\nhandshake_timeout = 0\n", "tls", "handshake_timeout", "positive"),
    ],
)
def test_tls_config_errors_name_section_and_key(text, section, key, words):
    if section is None:
        config(text)  # accepted: files are read when the contexts are built
        return
    with pytest.raises(ConfigError) as e:
        config(text)
    assert (e.value.section, e.value.key) == (section, key)
    assert words in str(e.value) and "\n" not in str(e.value)


TLS_LISTEN = [ListenAddress("tls", "127.0.0.1", 5061)]


def test_build_tls_reads_the_files(pki):
    t = TLSConfig(certificate=f"{pki}/proxy.pem", key=f"{pki}/proxy.key", ca=f"{pki}/ca.pem")
    contexts = build_tls(t, TLS_LISTEN)
    assert contexts.server is not None and contexts.client.verify
    assert build_tls(t, [ListenAddress("udp", "127.0.0.1", 5060)]).server is None
    assert contexts.stack_arguments()["tls_handshake_timeout"] == 10.0


@pytest.mark.parametrize(
    "change, key",
    [
        ({"certificate": "/nonexistent/proxy.pem"}, "certificate"),
        ({"key": "/nonexistent/proxy.key"}, "key"),
        ({"ca": "/nonexistent/ca.pem"}, "ca"),
    ],
)
def test_build_tls_names_the_bad_file(pki, change, key):
    values = {"certificate": f"{pki}/proxy.pem", "key": f"{pki}/proxy.key", "ca": f"{pki}/ca.pem", **change}
    with pytest.raises(TLSFileError) as e:
        build_tls(TLSConfig(**values), TLS_LISTEN)
    assert e.value.key == key and "no such file" in str(e.value)


def test_verify_no_is_warned_at_startup():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        build_tls(TLSConfig(verify=False), [])
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
    assert warned == [INSECURE_WARNING]


def test_a_bad_tls_file_stops_startup_with_one_line(pki):
    from sosimple_proxy import wiring as service

    cfg = config(f"[proxy]\nlisten = tls:127.0.0.1:0\n[tls]\ncertificate = {pki}/missing.pem\nkey = {pki}/proxy.key\n")
    with pytest.raises(SystemExit) as e:
        service.build_service(cfg, MemoryReactorClock())
    assert str(e.value) == f"site.ini: [tls] certificate: certificate {pki}/missing.pem: no such file"


def test_the_stack_gets_the_contexts(pki):
    from sosimple_proxy import wiring as service

    cfg = config(f"[proxy]\nlisten = tls:127.0.0.1:0\n[tls]\ncertificate = {pki}/proxy.pem\nkey = {pki}/proxy.key\n")
    top = service.build_service(cfg, MemoryReactorClock())
    stacks = [s for s in top if hasattr(s, "transport") and hasattr(s.transport, "tls")]
    assert stacks and stacks[0].transport.tls.server is not None
    assert any(getattr(s, "name", None) == "reloads" for s in top)


def test_tls_listen_addresses_ipv4_and_ipv6():
    cfg = config("[proxy]\nlisten = tls:127.0.0.1:5061, tls:[::1]:5061\n[tls]\ncertificate = a.pem\nkey = a.key\n")
    assert list(cfg.proxy["listen"]) == [ListenAddress("tls", "127.0.0.1", 5061), ListenAddress("tls", "::1", 5061)]
