"""The admin page in a real browser, on a ring of real processes (issue 14).

Three storage peers run under ``twistd``; headless Chromium, driven over
the DevTools protocol (``sosimple_proxy.testing.chromium``), loads one
node's ``/ui/`` once and is then only watched: the SVG shows the three
nodes with this one highlighted; after another node is killed (SIGKILL),
the same page, never reloaded, shows two within 10 s.

A proxy with users shows them on ``/ui/registrations``: the table lists
them, the search box narrows it, and the lookup box asks the ring.

Screenshots are kept as test artifacts, under pytest's
temporary directory (``<basetemp>/test_page_draws_the_ring_and_f0/``,
``ring-3.png``, ``ring-2.png`` and ``registrations.png``; pytest keeps the last three runs) and
copied to ``tests/artifacts/`` (ignored by git).  A one-shot
``--dump-dom`` load checks the same page without the DevTools protocol.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sosimple_proxy.testing import PeerProcess, ProxyProcess, free_port, register_contact, wait_until
from sosimple_proxy.testing.ring import peer_ring
from sosimple_proxy.testing.chromium import CHROMIUM, MISSING, Chromium, dump_dom

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=MISSING)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
INTERVAL = 0.3
SETTINGS = {"stabilize_interval": INTERVAL, "replicas": 2, "successors": 4}

NODES_JS = "document.querySelectorAll('#ring circle.node').length"
SELF_JS = (
    "(() => { const s = document.querySelectorAll('#ring circle.node.self');"
    " return s.length === 1 ? s[0].dataset.id : null; })()"
)
DRAWN_JS = "JSON.stringify([...document.querySelectorAll('#ring circle.node')].map(c => c.dataset.address))"


def ring_view(peer: PeerProcess) -> dict:
    with urllib.request.urlopen(peer.admin_url + "/ring", timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def ring(tmp_path):
    with peer_ring(SETTINGS, tmp_path, 3) as started:
        yield started


def keep(path: Path) -> None:
    """Copy an artifact to ``tests/artifacts/`` too, where a person looks first."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)


def test_page_draws_the_ring_and_follows_a_crash(ring, tmp_path):
    viewer, other, victim = ring
    # every node knows both others: a settled ring of three
    wait_until(
        lambda: all(len(ring_view(p)["successors"]) == 2 and ring_view(p)["predecessor"] for p in ring),
        30,
        what="the ring of three to settle",
    )
    me = ring_view(viewer)
    url = viewer.admin_url + "/"  # the root redirects to /ui/

    with Chromium(window=(1000, 800)) as browser:
        browser.open(url)
        browser.wait_for(f"{NODES_JS} === 3", 20, what=lambda: f"drawn: {browser.evaluate(DRAWN_JS)}")
        assert browser.evaluate("location.pathname") == "/ui/"
        assert browser.evaluate(SELF_JS) == me["id"]
        drawn = set(json.loads(browser.evaluate(DRAWN_JS)))
        assert drawn == {me["address"], *(p["address"] for p in me["successors"])}
        # the range arcs of a whole ring, this node's facts beside it
        assert browser.evaluate("document.querySelectorAll('#ring path.arc').length") == 3
        assert browser.evaluate("document.getElementById('node-id').textContent") == me["id"]
        assert browser.evaluate("document.getElementById('node-version').textContent") not in ("", "–")
        # hovering shows the address and counts (the node's <title>)
        title = browser.evaluate("document.querySelector('#ring circle.node.self title').textContent")
        assert me["address"] in title and "records: 0" in title
        keep(browser.screenshot(tmp_path / "ring-3.png"))

        browser.evaluate("window.__marker = 'not reloaded'")
        victim.kill()
        # the same page, not reloaded, follows the ring within 10 s
        browser.wait_for(f"{NODES_JS} === 2", 10, what=lambda: f"drawn: {browser.evaluate(DRAWN_JS)}")
        assert browser.evaluate("window.__marker") == "not reloaded"
        assert browser.evaluate(SELF_JS) == me["id"]
        survivors = set(json.loads(browser.evaluate(DRAWN_JS)))
        assert survivors == drawn - {victim.overlay_address}
        keep(browser.screenshot(tmp_path / "ring-2.png"))

    # the one-shot way sees the same: the DOM after the page's script ran
    dom = dump_dom(viewer.admin_url + "/ui/", budget_ms=3000)
    assert dom.count('<circle class="node') == 2
    assert dom.count('<circle class="node self"') == 1


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


LOOKUP_JS = (
    "(() => { document.getElementById('aor').value = '%s';"
    " document.getElementById('lookup').requestSubmit(); return true; })()"
)
ROWS_JS = "JSON.stringify([...document.querySelectorAll('#local tr.binding')].map(r => r.dataset.aor))"


def test_registrations_page_lists_searches_and_looks_up(tmp_path):
    admin_port = free_port("tcp")
    config = {
        "proxy": {"domains": "example.com"},
        "overlay": {
            "listen": f"tcp:{free_port('tcp')}:interface=127.0.0.1",
            "state_dir": str(tmp_path / "overlay"),
            "stabilize_interval": INTERVAL,
        },
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
        "location": {"order": "local overlay"},
    }
    admin = f"http://127.0.0.1:{admin_port}"
    with ProxyProcess(config, workdir=tmp_path / "proxy") as proxy:
        users = ("alice", "bob", "carol")
        for i, user in enumerate(users):
            answer = register_contact(proxy.port, f"{user}@example.com", f"sip:{user}@127.0.0.1:{17000 + i}")
            assert answer == "SIP/2.0 200 OK", answer
        # the ring holds carol once the proxy has published her binding
        wait_until(lambda: _get(admin + "/registrations/carol@example.com") == 200, 10, what="carol in the ring")

        with Chromium(window=(1000, 800)) as browser:
            browser.open(admin + "/ui/registrations")
            browser.wait_for("document.querySelectorAll('#local tr.binding').length === 3", 15,
                             what=lambda: browser.evaluate(ROWS_JS))
            assert json.loads(browser.evaluate(ROWS_JS)) == [f"{u}@example.com" for u in users]
            cells = browser.evaluate("[...document.querySelectorAll('#local tr.binding')][1].innerText")
            assert "sip:bob@127.0.0.1:17001" in cells and "udp" in cells

            # the search box narrows the table as one types
            browser.evaluate(
                "(() => { const f = document.getElementById('filter'); f.value = 'BOB';"
                " f.dispatchEvent(new Event('input')); return true; })()"
            )
            assert json.loads(browser.evaluate(ROWS_JS)) == ["bob@example.com"]
            assert "1 of 3 AoRs" in browser.evaluate("document.getElementById('summary').textContent")

            # the lookup box asks the ring for any AoR: a miss, then carol
            browser.evaluate(LOOKUP_JS % "nobody@example.com")
            browser.wait_for("document.getElementById('lookup-result').innerText.includes('no binding')", 10)
            browser.evaluate(LOOKUP_JS % "carol@example.com")
            browser.wait_for("document.querySelectorAll('#ring-bindings tr.binding').length === 1", 10,
                             what=lambda: browser.evaluate("document.getElementById('lookup-result').innerText"))
            found = browser.evaluate("document.querySelector('#ring-bindings tr.binding').innerText")
            assert "sip:carol@127.0.0.1:17002" in found and f"127.0.0.1:{proxy.port}" in found
            keep(browser.screenshot(tmp_path / "registrations.png"))
