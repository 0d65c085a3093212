"""``sosimple authorize`` and ``rebind``: what ``--key`` accepts, and the
request each makes (the ring's side is tests/e2e/test_signed_records_processes.py)."""

from __future__ import annotations

import argparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sosimple_proxy import cli
from sosimple_proxy.overlay.signing import fingerprint
from sosimple_proxy.security import nodecerts
from tests.certs import CA
from tests.test_cli_certs import _cli


def test_key_is_a_fingerprint_or_a_pem_file(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "node.key"
    path.write_bytes(nodecerts.key_pem(key))
    fp = fingerprint(key.public_key())
    assert cli.fingerprint_of(str(path)) == fp
    assert cli.fingerprint_of(fp.upper()) == fp
    # a certificate's key (a CA ring's node), by its sha256 fingerprint
    ca = CA("Ring CA")
    cert_path, _ = ca.issue(cn="node").write(tmp_path, "node")
    assert cli.fingerprint_of(str(cert_path)).startswith("sha256:")
    for bad in ("abc", "zz" * 32, "sha256:12"):
        with pytest.raises(cli.Failed) as e:
            cli.fingerprint_of(bad)
        assert e.value.status == cli.EXIT_USAGE
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a key")
    with pytest.raises(cli.Failed, match="not a key or certificate"):
        cli.fingerprint_of(str(junk))


def test_bad_keys_are_usage_errors_before_any_request():
    for verb in ("authorize", "rebind"):
        status, err = _cli(verb, "example.com", "--key", "nothex")
        assert status == cli.EXIT_USAGE and "neither a file nor a key fingerprint" in err


def test_the_requests(tmp_path):
    fp = "ab" * 32
    args = cli.parser().parse_args(["authorize", "example.com", "--key", fp, "--key", "cd" * 32])
    method, url, body = cli._request_for(args, "http://h:1", None)  # type: ignore[arg-type]
    assert (method, url, body) == ("POST", "http://h:1/authorize/example.com", f"{fp}\n{'cd' * 32}\n".encode())
    args = cli.parser().parse_args(["rebind", "alice@example.com", "--key", fp])
    assert cli._request_for(args, "http://h:1", None)[:2] == ("POST", "http://h:1/rebind/alice@example.com")  # type: ignore[arg-type]
    assert isinstance(args, argparse.Namespace) and args.ca_key is None
