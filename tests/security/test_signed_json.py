"""The ring's configuration document: its signature and what a reader takes from it."""

from __future__ import annotations

import json

import pytest

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.overlay import configdoc
from sosimple_proxy.security import nodecerts, signed_json
from sosimple_proxy.wiring import read_startup_files
from tests.certs import CA, key_pem
from tests.overlay.test_ringtls import node_files

CONFIG = {"format": 1, "ring": "overlay", "replicas": 1, "successors": 3, "stabilize_interval": 0.5,
          "key_scheme": "flat", "domain_bits": 32, "ca": None, "bootstrap": ["127.0.0.1:7000", "[::1]:7001"]}


def roundtrip(envelope):
    return json.loads(json.dumps(envelope))


def test_signed_by_the_ca_itself():
    ca = CA()
    envelope = roundtrip(signed_json.sign(CONFIG, ca.key))
    assert envelope["signature"]["algorithm"] == "ecdsa-sha256" and "certificate" not in envelope["signature"]
    assert signed_json.verify(envelope, [ca.cert]) == CONFIG
    with pytest.raises(signed_json.SignatureError, match="bad signature"):
        signed_json.verify(envelope, [CA("another").cert])


def test_signed_by_a_node_the_ca_certified(tmp_path):
    ca = CA()
    cert_path, key_path = node_files(ca, str(tmp_path), 5)
    envelope = roundtrip(
        signed_json.sign(CONFIG, nodecerts.load_private_key(key_path), nodecerts.load_certificate(cert_path))
    )
    assert signed_json.verify(envelope, [ca.cert]) == CONFIG
    with pytest.raises(signed_json.SignatureError, match="not issued by the ring's CA"):
        signed_json.verify(envelope, [CA("another").cert])


@pytest.mark.parametrize(
    "tamper",
    [
        lambda e: e["config"].__setitem__("replicas", 0),
        lambda e: e["config"]["bootstrap"].append("192.0.2.1:7000"),
        lambda e: e["config"].__setitem__("extra", True),
        lambda e: e["signature"].__setitem__("value", e["signature"]["value"][:-4] + "AAA="),
    ],
)
def test_any_change_breaks_it(tamper):
    ca = CA()
    envelope = roundtrip(signed_json.sign(CONFIG, ca.key))
    tamper(envelope)
    with pytest.raises(signed_json.SignatureError):
        signed_json.verify(envelope, [ca.cert])


def test_unsigned_is_refused_in_a_ca_ring_and_taken_in_an_open_one():
    envelope = {"config": CONFIG, "signature": None}
    with pytest.raises(signed_json.SignatureError, match="not signed"):
        signed_json.verify(envelope, [CA().cert])
    assert signed_json.verify(envelope, None) == CONFIG
    with pytest.raises(signed_json.SignatureError, match="not a configuration document"):
        signed_json.verify({"nope": 1}, None)


def test_check_and_apply(tmp_path):
    ca = CA()
    ca_path = ca.write(tmp_path)
    body = json.dumps(signed_json.sign(CONFIG, ca.key)).encode()
    config = configdoc.check(body, str(ca_path))
    settings = configdoc.apply(config, {"replicas": 2, "successors": 8, "key_scheme": "flat", "listen": "tcp:0"})
    assert settings["replicas"] == 1 and settings["successors"] == 3 and settings["listen"] == "tcp:0"
    assert settings["bootstrap"] == (("127.0.0.1", 7000), ("::1", 7001))
    with pytest.raises(configdoc.DocumentError, match="not JSON"):
        configdoc.check(b"<html>", str(ca_path))
    with pytest.raises(configdoc.DocumentError, match="names no bootstrap node"):
        configdoc.apply(dict(CONFIG, bootstrap=[]), {})
    with pytest.raises(configdoc.DocumentError, match="bad value"):
        configdoc.apply(dict(CONFIG, key_scheme="weird"), {})


def test_serve_signs_with_the_ca_key_when_given(tmp_path):
    ca = CA()
    ca_path = ca.write(tmp_path)
    (tmp_path / "ca.key").write_bytes(key_pem(ca.key))
    node_files(ca, str(tmp_path / "state"), 9)

    class Tls:  # what serve reads of a RingTLS: the file names
        def __init__(self):
            self.ca, self.certificate, self.key = str(ca_path), str(tmp_path / "state/node.pem"), str(tmp_path / "state/node.key")

    settings = {"replicas": 1, "ca_key": str(tmp_path / "ca.key")}
    envelope = json.loads(configdoc.serve("overlay", settings, None, Tls()))
    assert "certificate" not in envelope["signature"] and envelope["config"]["ca"] == ca_path.read_text()
    assert signed_json.verify(envelope, [ca.cert])["replicas"] == 1
    envelope = json.loads(configdoc.serve("overlay", {"replicas": 1}, None, Tls()))
    assert "certificate" in envelope["signature"]
    assert json.loads(configdoc.serve("overlay", {}, None, None))["signature"] is None


def test_ca_key_startup_errors(tmp_path):
    ca = CA()
    ca_path = ca.write(tmp_path)
    node_files(ca, str(tmp_path / "state"), 9)
    (tmp_path / "other.key").write_bytes(key_pem(CA("other").key))
    base = f"[proxy]\nlisten =\n[overlay]\nstate_dir = {tmp_path / 'state'}\nca = {ca_path}\n"
    for line, words in (
        (f"ca_key = {tmp_path / 'missing.key'}", "no such file"),
        (f"ca_key = {tmp_path / 'other.key'}", "not the key of the CA in ca"),
    ):
        with pytest.raises(ConfigError) as e:
            read_startup_files(parse_config(base + line + "\n"))
        assert "[overlay] ca_key" in str(e.value) and words in str(e.value), str(e.value)
