"""[overlay] ca, certificate, key at startup: one line naming the key for a bad
file or a node_id the certificate contradicts; an open ring as before."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from sosimple_proxy.config import parse_config
from sosimple_proxy.security import nodecerts
from sosimple_proxy.wiring import build_service
from tests.certs import CA
from tests.overlay.test_ringtls import node_files

NODE = 0xAB << 150
BASE = "[proxy]\nlisten =\n[admin]\nlisten =\n[location]\norder = local\n"


@pytest.fixture
def pki(tmp_path):
    ca = CA("Ring CA")
    ca.write(tmp_path)
    node_files(ca, str(tmp_path / "state"), NODE)
    node_files(ca, str(tmp_path / "named"), NODE + 1)
    return tmp_path


def build(text: str):
    return build_service(parse_config(BASE + text, "site.ini"), MemoryReactorClock())


def test_a_ca_ring_takes_its_id_from_the_certificate(pki):
    top = build(f"[overlay]\nlisten = tcp:0\nca = {pki}/ca.pem\nstate_dir = {pki}/state\n")
    assert top.overlay.tls.node_id == NODE and top.overlay.tls.domains == ("example.com",)
    top = build(
        f"[overlay]\nlisten = tcp:0\nstate_dir = {pki}/open\n"
        f"[overlay:b]\nlisten = tcp:0\ndomains = b.test\nca = {pki}/ca.pem\n"
        f"certificate = {pki}/named/node.pem\nkey = {pki}/named/node.key\n"
    )
    assert top.overlay.tls is None  # an open ring, as before
    assert top.rings["overlay:b"].tls.node_id == NODE + 1


@pytest.mark.parametrize(
    "extra, section, key, words",
    [
        ("ca = {pki}/nope.pem\nstate_dir = {pki}/state\n", "overlay", "ca", "no such file"),
        ("ca = {pki}/ca.pem\nstate_dir = {pki}/empty\n", "overlay", "certificate", "no such file"),
        ("ca = {pki}/ca.pem\nstate_dir = {pki}/state\nkey = {pki}/named/node.key\n", "overlay", "key", "does not belong"),
        ("ca = {pki}/ca.pem\nstate_dir = {pki}/state\nnode_id = 1234\n", "overlay", "node_id", "differs from the id in"),
        ("ca = {pki}/state/node.pem\nstate_dir = {pki}/state\n", "overlay", "certificate", "not issued by the ring's CA"),
    ],
)
def test_bad_ring_files_stop_startup_with_one_line(pki, extra, section, key, words):
    with pytest.raises(SystemExit) as e:
        build("[overlay]\nlisten = tcp:0\n" + extra.format(pki=pki))
    line = str(e.value.code)
    assert line.startswith(f"site.ini: [{section}] {key}: ") and words in line and "\n" not in line, line


def test_a_named_ring_names_its_section(pki):
    with pytest.raises(SystemExit) as e:
        build(f"[overlay]\nlisten =\n[overlay:b]\nlisten = tcp:0\ndomains = b.test\nca = {pki}/ca.pem\nstate_dir = {pki}/none\n")
    assert str(e.value.code).startswith("site.ini: [overlay:b] certificate: ")


def test_certificate_without_ca_is_warned_about(pki):
    cfg = parse_config(BASE + f"[overlay]\nlisten = tcp:0\ncertificate = {pki}/state/node.pem\n", "site.ini")
    assert any("ignored without ca" in w for w in cfg.warnings)
    assert nodecerts.NODE_URN == "urn:sosimple:node:"


def test_sosimple_check_reads_the_ring_files(pki):
    import io

    from sosimple_proxy.site_check import run_check

    ini = pki / "site.ini"
    ini.write_text(BASE + f"[overlay]\nlisten = tcp:0\nca = {pki}/ca.pem\nstate_dir = {pki}/empty\n")
    out, err = io.StringIO(), io.StringIO()
    assert run_check(str(ini), out, err, prefix="sosimple: ") == 1
    assert "[overlay] certificate: " in err.getvalue() and "no such file" in err.getvalue()
    ini.write_text(BASE + f"[overlay]\nlisten = tcp:0\nca = {pki}/ca.pem\nstate_dir = {pki}/state\n")
    out, err = io.StringIO(), io.StringIO()
    assert run_check(str(ini), out, err, prefix="sosimple: ") == 0, err.getvalue()
