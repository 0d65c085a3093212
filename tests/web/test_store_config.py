"""``[store]`` in site.ini: defaults, bad values, and a public listener only over HTTPS."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sosimple_proxy.config import ConfigError, parse_config
from sosimple_proxy.testing import free_port
from tests.web.guarded import write_files

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def _store(**keys: str) -> str:
    return "[store]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


def test_defaults():
    store = parse_config("").section("store")
    assert (store["listen"], store["certificate"], store["key"]) == ("", "", "")
    assert (store["max_value"], store["max_names"]) == (65536, 100)


@pytest.mark.parametrize(
    "keys, key, problem",
    [
        ({"max_value": "0"}, "max_value", "below the minimum"),
        ({"max_names": "many"}, "max_names", "not an integer"),
        ({"listen": "tcp:8443:interfase=127.0.0.1"}, "listen", "not a Twisted server endpoint string"),
        ({"listen": "tcp:8443"}, "listen", "a non-loopback store listener needs [store] certificate and key (HTTPS only)"),
        ({"listen": "tcp:8443:interface=0.0.0.0"}, "listen", "needs [store] certificate and key"),
        ({"listen": "tcp:8443:interface=127.0.0.1", "certificate": "c.pem"}, "key", "certificate and key go together"),
        ({"certificate": "c.pem", "key": "k.pem"}, "certificate", "only for [store] listen"),
        ({"listen": "tcp:8443", "certificate": "/nonexistent.pem", "key": "/nonexistent.key"}, "certificate", ""),
    ],
)
def test_bad_values_are_one_line_naming_the_key(keys, key, problem):
    with pytest.raises(ConfigError) as e:
        parse_config(_store(**keys))
    assert (e.value.section, e.value.key) == ("store", key)
    assert problem in e.value.problem
    assert "\n" not in str(e.value) and str(e.value).startswith(f"site.ini: [store] {key}: ")


def test_a_public_listener_with_a_certificate_and_a_loopback_one_without(tmp_path):
    files = write_files(tmp_path)
    cfg = parse_config(_store(listen="tcp:8443", certificate=files["certificate"], key=files["key"]))
    assert cfg.section("store")["listen"] == "tcp:8443"
    assert parse_config(_store(listen="tcp:8443:interface=127.0.0.1")).section("store")["listen"]


def test_startup_refuses_a_public_plain_http_store_with_one_line(tmp_path):
    ini = tmp_path / "site.ini"
    ini.write_text(
        f"[proxy]\nlisten = udp:127.0.0.1:{free_port('both')}\n[overlay]\nlisten =\n[admin]\nlisten =\n"
        f"[store]\nlisten = tcp:{free_port('tcp')}\n"
    )
    result = subprocess.run(
        TWISTD + ["-n", "--pidfile=", "sosimple-proxy", "-c", str(ini)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [
        "site.ini: [store] listen: a non-loopback store listener needs [store] certificate and key (HTTPS only)"
    ], lines
