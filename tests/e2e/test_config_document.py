"""The ring's configuration document between real twistd members of a CA ring.

Member A serves ``GET /.well-known/sosimple-config`` over HTTPS (its admin
certificate and its node certificate both from the test CA), open without
credentials although its admin API is guarded.  Node B is given only the
document's URL and the CA: it fetches the document with treq, checks its
signature against its own ``[overlay] ca``, takes the ring's parameters
(replicas 1, successors 3, not its defaults) and joins.  Node C gets the
same document with one value changed, served by the test: it refuses it
with one line and never joins.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sosimple_proxy.testing import PeerProcess
from tests.certs import CA
from tests.e2e.test_ca_ring_processes import Stranger, evenly
from tests.overlay.test_ringtls import node_files
from tests.web.guarded import write_files

STABILIZE = 0.3


class HttpsPeer(PeerProcess):
    """A member whose admin API speaks HTTPS (checked against ``cafile``)."""

    def __init__(self, *args, cafile: str, **kw) -> None:
        self.context = ssl.create_default_context(cafile=cafile)
        super().__init__(*args, **kw)

    @property
    def admin_url(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}"

    def probe(self) -> bytes | None:
        try:
            with urllib.request.urlopen(self.admin_url + "/health", context=self.context, timeout=1) as r:
                return r.read() if r.status == 200 else None
        except OSError:
            return None


def get_json(url: str, context: ssl.SSLContext | None = None) -> dict:
    with urllib.request.urlopen(url, context=context, timeout=10) as r:
        return json.loads(r.read())


def wait_for(predicate, timeout: float = 20.0, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class TamperedServer:
    """Serves one fixed body at the document's path over HTTPS."""

    def __init__(self, body: bytes, cert: Path, key: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/.well-known/sosimple-config"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "TamperedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def ring_a(tmp_path):
    ca = CA("Ring CA")
    ca_path = ca.write(tmp_path)
    admin_cert, admin_key = ca.issue(ips=["127.0.0.1"]).write(tmp_path, "admin")
    (tmp_path / "users").mkdir()
    files = write_files(tmp_path / "users")  # the API is guarded; the document stays open
    node_files(ca, str(tmp_path / "a" / "overlay"), evenly(0, 2))
    overlay = {"ca": str(ca_path), "replicas": 1, "successors": 3, "stabilize_interval": STABILIZE}
    admin = {"certificate": str(admin_cert), "key": str(admin_key), "users_file": files["users_file"]}
    a = HttpsPeer({"admin": admin}, overlay=overlay, workdir=tmp_path / "a", cafile=str(ca_path))
    with a:
        yield {"a": a, "ca": ca, "ca_path": ca_path, "dir": tmp_path, "cert": admin_cert, "key": admin_key}


def test_a_node_joins_from_the_signed_document_and_refuses_a_tampered_one(ring_a):
    a, ca_path, d = ring_a["a"], ring_a["ca_path"], ring_a["dir"]
    url = a.admin_url + "/.well-known/sosimple-config"
    document = get_json(url, a.context)  # no credentials: open
    config = document["config"]
    assert config["replicas"] == 1 and config["successors"] == 3 and config["stabilize_interval"] == STABILIZE
    assert config["ca"] == ca_path.read_text() and config["key_scheme"] == "flat"
    assert a.overlay_address in config["bootstrap"]
    assert document["signature"]["algorithm"] == "ed25519" and "BEGIN CERTIFICATE" in document["signature"]["certificate"]
    with pytest.raises(urllib.error.HTTPError) as guarded:
        get_json(a.admin_url + "/ring", a.context)
    assert guarded.value.code == 401

    node_files(ring_a["ca"], str(d / "b" / "overlay"), evenly(1, 2))
    with PeerProcess(bootstrap=[url], overlay={"ca": str(ca_path)}, workdir=d / "b") as b:
        ring = get_json(b.admin_url + "/ring")
        assert ring["successors"][0]["address"] == a.overlay_address
        log = b._log_since_start()
        assert "configuration of ring 'overlay' from " + url in log
        assert "replicas 1, successors 3" in log
        # the parameters came from the document: B lists A once in its 3 successors' worth
        joined = wait_for(lambda: (get_json(b.admin_url + "/ring").get("predecessor") or {}).get("address") == a.overlay_address)
        assert joined

    tampered = json.loads(json.dumps(document))
    tampered["config"]["replicas"] = 0
    node_files(ring_a["ca"], str(d / "c" / "overlay"), evenly(1, 4))
    with TamperedServer(json.dumps(tampered).encode(), ring_a["cert"], ring_a["key"]) as server:
        with Stranger(bootstrap=[server.url], overlay={"ca": str(ca_path)}, workdir=d / "c") as c:
            line = wait_for(lambda: [l for l in c._log_since_start().splitlines() if "refused the configuration document" in l])
            assert len(line) == 1, c.log_tail()
            assert server.url in line[0] and "bad signature" in line[0]
            assert "Traceback" not in c._log_since_start()
            with pytest.raises(urllib.error.HTTPError) as health:
                urllib.request.urlopen(c.admin_url + "/health", timeout=5)
            assert health.value.code == 503
