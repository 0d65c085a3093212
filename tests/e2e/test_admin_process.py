"""The admin API of a real proxy under twistd: HTTPS, credentials, secure by default."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

from sosimple_proxy.testing import ProxyProcess, free_port
from tests.web.guarded import PASSWORD, USER, write_files

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
SOSIMPLE = [sys.executable, "-c", "from sosimple_proxy.cli import main; main()"]


def _get(url: str, context: ssl.SSLContext | None, authorization: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_admin_answers_over_https_only_with_credentials(tmp_path):
    files = write_files(tmp_path)
    port = free_port("tcp")
    admin = {"listen": f"tcp:{port}:interface=127.0.0.1", **{k: files[k] for k in ("certificate", "key", "users_file")}}
    overlay = {"listen": f"tcp:{free_port('tcp')}:interface=127.0.0.1", "state_dir": str(tmp_path / "overlay")}
    context = ssl.create_default_context(cafile=files["ca"])
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    url = f"https://127.0.0.1:{port}"
    with ProxyProcess({"admin": admin, "overlay": overlay}) as proxy:
        deadline = time.monotonic() + 30
        while True:
            code, body = _get(url + "/ring", context, basic)
            if code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code == 200, (body, proxy.log_tail())
        assert "id" in json.loads(body)
        code, body = _get(url + "/ring", context)
        assert code == 401 and json.loads(body) == {"error": "authentication required"}
        code, _ = _get(url + "/ring", context, "Basic " + base64.b64encode(f"{USER}:wrong".encode()).decode())
        assert code == 401
        assert _get(url + "/health", context)[0] == 200
        # plain HTTP on the HTTPS port gets no answer from the API
        try:
            code, _ = _get(f"http://127.0.0.1:{port}/ring", None, basic)
        except (urllib.error.URLError, ConnectionError, OSError):
            code = None
        assert code is None or code >= 400
        # the sosimple command, as an operator types it
        env = {
            **proxy.environ(),
            "SOSIMPLE_ADMIN_USER": USER,
            "SOSIMPLE_ADMIN_PASSWORD": PASSWORD,
            "SOSIMPLE_CA": files["ca"],
        }
        result = subprocess.run(SOSIMPLE + ["--admin", url, "ring"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "id" in json.loads(result.stdout)


def test_a_public_admin_listener_without_tls_stops_startup(tmp_path):
    ini = tmp_path / "site.ini"
    port = free_port("both")
    ini.write_text(
        f"[proxy]\nlisten = udp:127.0.0.1:{port}\n[overlay]\nlisten =\n"
        f"[admin]\nlisten = tcp:{free_port('tcp')}\n"
    )
    result = subprocess.run(
        TWISTD + ["-n", "--pidfile=", "sosimple-proxy", "-c", str(ini)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [
        "site.ini: [admin] listen: a non-loopback admin listener needs [admin] certificate, key and users_file"
    ], lines
