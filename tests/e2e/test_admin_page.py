"""The admin page in a real browser, on a ring of real processes (issue 14).

Three storage peers run under ``twistd``; headless Chromium, driven over
the DevTools protocol (``sosimple_proxy.testing.chromium``), loads one
node's ``/ui/`` once and is then only watched: the SVG shows the three
nodes with this one highlighted; after another node is killed (SIGKILL),
the same page, never reloaded, shows two within 10 s.

Screenshots of both states are kept as test artifacts, under pytest's
temporary directory (``<basetemp>/test_page_draws_the_ring_and_f0/``,
``ring-3.png`` and ``ring-2.png``; pytest keeps the last three runs) and
copied to ``tests/artifacts/`` (ignored by git).  A one-shot
``--dump-dom`` load checks the same page without the DevTools protocol.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sosimple_proxy.testing import PeerProcess, wait_until
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
    started: list[PeerProcess] = []
    try:
        first = PeerProcess(overlay=SETTINGS, workdir=tmp_path / "n0")
        started.append(first)
        first.start()
        rest = [PeerProcess(bootstrap=[first.overlay_address], overlay=SETTINGS, workdir=tmp_path / f"n{i}") for i in (1, 2)]
        started += rest
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda p: p.start(), rest))
        yield started
    except BaseException:
        for p in started:
            print(p.log_tail(15))
        raise
    finally:
        for p in started:
            p.cleanup()


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
