"""``sosimple check SITE.INI``: startup's validation without binding, and
the certificates' expiry dates."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import pytest
from twisted.internet import defer, reactor

from sosimple_proxy import cli
from sosimple_proxy.config import ConfigError, certificate_settings, parse_config
from sosimple_proxy.site_check import check_site, run_check
from tests.certs import CA

BASE = "[overlay]\nlisten =\n[location]\norder = local\n"
NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("check CA")


def write_cert(ca: CA, d: Path, name: str, days: float, started_days_ago: float = 1) -> tuple[Path, Path]:
    start = NOW - datetime.timedelta(days=started_days_ago)
    return ca.issue(cn="example.com", dns=["example.com"], days=days, not_before=start).write(d, name)


def ini(tmp_path: Path, text: str, admin: str = "[admin]\nlisten =\n") -> str:
    path = tmp_path / "site.ini"
    path.write_text(BASE + admin + text)
    return str(path)


def run(path: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_check(path, out, err)
    return status, out.getvalue(), err.getvalue()


def test_a_good_config_is_ok(tmp_path):
    assert run(ini(tmp_path, "[proxy]\nlisten = udp:127.0.0.1:5060\n")) == (0, "ok\n", "")


def test_the_shipped_config_is_ok():
    status, out, err = run(str(Path(__file__).parent.parent / "conf" / "site.ini"))
    assert (status, err) == (0, "")
    assert out.startswith(("ok", "warning: "))


def test_a_bad_value_is_the_one_line_startup_prints(tmp_path):
    status, out, err = run(ini(tmp_path, "[proxy]\nlisten = udp:127.0.0.1:notaport\n"))
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("site.ini: [proxy] listen: ")


def test_a_missing_file_named_by_tls_is_an_error(tmp_path):
    status, _, err = run(ini(tmp_path, "[proxy]\nlisten = tls:127.0.0.1:5061\n[tls]\ncertificate = no.pem\nkey = no.key\n"))
    assert status == 1
    assert err == "site.ini: [tls] certificate: certificate no.pem: no such file\n"


def test_warnings_are_printed_instead_of_ok(tmp_path):
    status, out, _ = run(ini(tmp_path, "[proxy]\nlisten = udp:127.0.0.1:5060\nshiny = yes\n[tls]\nverify = no\n"))
    assert status == 0
    lines = out.splitlines()
    assert "warning: site.ini: [proxy] shiny: unknown key, ignored" in lines
    assert any("[tls] verify = no" in line for line in lines)
    assert "ok" not in lines


def test_a_certificate_expiring_soon_is_a_warning_naming_key_and_date(tmp_path, ca):
    cert, key = write_cert(ca, tmp_path, "soon", days=11)
    status, out, err = run(ini(tmp_path, f"[proxy]\nlisten = tls:127.0.0.1:5061\n[tls]\ncertificate = {cert}\nkey = {key}\n"))
    end = (NOW + datetime.timedelta(days=10)).date().isoformat()
    assert (status, err) == (0, "")
    assert out == f"warning: site.ini: [tls] certificate: certificate {cert} expires on {end}, in 9 full days\n"


def test_a_certificate_valid_for_long_is_ok(tmp_path, ca):
    cert, key = write_cert(ca, tmp_path, "long", days=90)
    assert run(ini(tmp_path, f"[proxy]\nlisten = tls:127.0.0.1:5061\n[tls]\ncertificate = {cert}\nkey = {key}\n")) == (0, "ok\n", "")


def test_an_expired_admin_certificate_is_an_error(tmp_path, ca):
    cert, key = write_cert(ca, tmp_path, "old", days=3, started_days_ago=10)
    admin = f"[admin]\nlisten = tcp:0:interface=127.0.0.1\ncertificate = {cert}\nkey = {key}\n"
    status, out, err = run(ini(tmp_path, "[proxy]\nlisten =\n", admin=admin))
    end = (NOW - datetime.timedelta(days=7)).date().isoformat()
    assert (status, out) == (1, "")
    assert err == f"site.ini: [admin] certificate: certificate {cert} expired on {end}\n"


def test_a_certificate_startup_does_not_read_is_still_watched(tmp_path, ca):
    # [tls] on an overlay-only peer (no SIP): startup reads none of its files
    cert, key = write_cert(ca, tmp_path, "idle", days=5)
    status, out, _ = run(ini(tmp_path, f"[proxy]\nlisten =\n[tls]\ncertificate = {cert}\nkey = {key}\n"))
    assert status == 0 and "[tls] certificate" in out and "expires on" in out
    status, out, _ = run(ini(tmp_path, "[proxy]\nlisten =\n[tls]\ncertificate = gone.pem\nkey = gone.key\n"))
    assert status == 0 and out == "warning: site.ini: [tls] certificate: gone.pem: cannot read (No such file or directory)\n"


def test_every_section_with_a_certificate_key_is_watched(tmp_path):
    cfg = parse_config(BASE + "[admin]\nlisten =\n[tls]\ncertificate = a.pem\nkey = a.key\n")
    assert certificate_settings(cfg) == [("tls", "a.pem")]
    overlay = parse_config(BASE + "[admin]\nlisten =\n").section("overlay")
    if "certificate" in overlay:  # once the ring's TLS adds [overlay] certificate
        cfg = parse_config("[overlay]\nlisten =\ncertificate = ring.pem\n[admin]\nlisten =\n")
        assert ("overlay", "ring.pem") in certificate_settings(cfg)


def test_check_site_raises_the_config_error(tmp_path):
    with pytest.raises(ConfigError):
        check_site(str(tmp_path / "absent.ini"))


@pytest.mark.parametrize("text, status, stream, words", [
    ("[proxy]\nlisten = udp:127.0.0.1:5060\n", 0, "out", "ok\n"),
    ("[proxy]\nlisten = udp:127.0.0.1:x\n", 1, "err", "sosimple: site.ini: [proxy] listen: "),
])
def test_sosimple_check(tmp_path, text, status, stream, words):
    out, err = io.BytesIO(), io.StringIO()
    d = defer.Deferred.fromCoroutine(cli.run(reactor, ["check", ini(tmp_path, text)], out, err, io.BytesIO(), {}))
    result = []
    d.addBoth(result.append)  # check never waits on the reactor: the coroutine is done
    assert result == [status]
    got = out.getvalue().decode() if stream == "out" else err.getvalue()
    assert got.startswith(words)
    if status:
        assert err.getvalue().count("\n") == 1
