"""``sosimple keygen`` and ``sosimple sign``: a CA ring's node certificates, offline."""

from __future__ import annotations

import io
import os
import subprocess

from cryptography import x509

from sosimple_proxy import cli
from sosimple_proxy.security import nodecerts
from sosimple_proxy.overlay.ringtls import ring_tls
from tests.certs import CA, key_pem
from tests.test_cli import SOSIMPLE

NODE = "00c0ffee" + "0" * 31 + "1"


def _cli(*argv: str) -> tuple[int, str]:
    """(status, stderr) of a command run in-process; these verbs never wait on the reactor."""
    out, err = io.BytesIO(), io.StringIO()
    coro = cli.run(None, list(argv), out, err, io.BytesIO(), {})
    try:
        coro.send(None)
    except StopIteration as stop:
        status = stop.value
    else:  # pragma: no cover
        raise AssertionError("a certificate command waited on the network")
    assert out.getvalue() == b""
    if status:
        assert len(err.getvalue().splitlines()) == 1 and err.getvalue().startswith("sosimple: "), err.getvalue()
    return status, err.getvalue()


def _ca(tmp_path) -> tuple[str, str]:
    ca = CA("Ring CA")
    ca.write(tmp_path)
    (tmp_path / "ca.key").write_bytes(key_pem(ca.key))
    return str(tmp_path / "ca.pem"), str(tmp_path / "ca.key")


def test_keygen_then_sign_makes_a_certificate_a_node_starts_with(tmp_path):
    ca_cert, ca_key = _ca(tmp_path)
    state = tmp_path / "state"
    assert _cli("keygen", "--out", str(state)) == (0, "")
    assert os.stat(state / "node.key").st_mode & 0o777 == 0o600
    csr = x509.load_pem_x509_csr((state / "node.csr").read_bytes())
    assert csr.is_signature_valid
    out = str(state / "node.pem")
    argv = ["sign", "--ca-cert", ca_cert, "--ca-key", ca_key, "--csr", str(state / "node.csr")]
    assert _cli(*argv, "--node-id", NODE, "--domains", "example.com,b.test", "--out", out, "--days", "30") == (0, "")
    cert = nodecerts.load_certificate(out)
    assert nodecerts.node_id_of(cert) == int(NODE, 16)
    assert nodecerts.domains_of(cert) == ("example.com", "b.test")
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30
    assert cert.public_key() == nodecerts.load_private_key(str(state / "node.key")).public_key()
    # the defaults of [overlay] certificate and key: a node starts with these files
    tls = ring_tls({"ca": ca_cert, "state_dir": str(state)})
    assert tls.node_id == int(NODE, 16)
    # keygen again keeps the key (the node's identity) and makes a new request
    key_before = (state / "node.key").read_bytes()
    assert _cli("keygen", "--out", str(state))[0] == 0
    assert (state / "node.key").read_bytes() == key_before


def test_sign_failures_are_one_line_with_their_status(tmp_path):
    ca_cert, ca_key = _ca(tmp_path)
    assert _cli("keygen", "--out", str(tmp_path))[0] == 0
    csr = str(tmp_path / "node.csr")
    base = ["sign", "--ca-cert", ca_cert, "--ca-key", ca_key, "--csr", csr, "--out", str(tmp_path / "n.pem")]
    other = CA("Other")
    (tmp_path / "other.key").write_bytes(key_pem(other.key))
    cases = [
        (base + ["--node-id", "xyz", "--domains", "a.test"], 2, "not a hex node id"),
        (base + ["--node-id", "1" * 41, "--domains", "a.test"], 2, "more than 160 bits"),
        (base + ["--node-id", "ff", "--domains", "bad domain!"], 2, "not a domain name"),
        (base + ["--node-id", "ff"], 2, "required: --domains"),
        (["sign", "--ca-cert", ca_cert, "--ca-key", str(tmp_path / "other.key"), "--csr", csr, "--out", "x", "--node-id", "1", "--domains", ""], 4, "does not belong"),
        (["sign", "--ca-cert", ca_cert, "--ca-key", ca_key, "--csr", str(tmp_path / "nope.csr"), "--out", "x", "--node-id", "1", "--domains", ""], 4, "no such file"),
        (["sign", "--ca-cert", csr, "--ca-key", ca_key, "--csr", csr, "--out", "x", "--node-id", "1", "--domains", ""], 4, "not a PEM certificate"),
        (["keygen"], 2, "required: --out"),
    ]
    for argv, status, words in cases:
        got, err = _cli(*argv)
        assert got == status and words in err, (argv, err)
    assert not (tmp_path / "n.pem").exists()


def test_the_console_script_signs_offline(tmp_path):
    ca_cert, ca_key = _ca(tmp_path)
    env = dict(os.environ, SOSIMPLE_ADMIN="http://127.0.0.1:9")  # never used
    run = lambda argv: subprocess.run(SOSIMPLE + argv, env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    result = run(["keygen", "--out", str(tmp_path / "n")])
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    result = run(
        ["sign", "--ca-cert", ca_cert, "--ca-key", ca_key, "--csr", str(tmp_path / "n" / "node.csr"),
         "--node-id", NODE, "--domains", "example.com", "--out", str(tmp_path / "n" / "node.pem")]
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert nodecerts.node_id_of(nodecerts.load_certificate(str(tmp_path / "n" / "node.pem"))) == int(NODE, 16)
