"""``/ui/calls`` in headless Chromium, on a real proxy under twistd.

sipp's MESSAGEs to nobody are answered 404, a flood from 127.0.0.2 gets
that source banned, and a gateway on a closed port fails its OPTIONS
probes: the page shows the minute by method and answer, the ban with an
Unblock button that lifts it (the API then lists nobody), and the gateway
as down (or still probing).  The screenshot is kept as an artifact.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from sosimple_proxy.testing import ProxyProcess, free_port
from sosimple_proxy.testing.chromium import CHROMIUM, MISSING, Chromium
from sosimple_proxy.testing.sipp import run_sipp
from sosimple_proxy.testing.sipp_scenarios import expect_response, scenario, send_message_step
from tests.e2e.test_admin_page import keep
from tests.e2e.test_limits import Flooder

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=MISSING)

CALLS = 5
RATE = 20

ROWS_JS = "JSON.stringify([...document.querySelectorAll('#methods tr.method')].map(r => r.dataset.method))"
BANS_JS = "JSON.stringify([...document.querySelectorAll('#banned tr.ban')].map(r => r.dataset.address))"
GATEWAY_JS = "(() => { const s = document.querySelector('#gateways tr.gateway .state'); return s ? s.textContent : null; })()"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_calls_page_shows_the_minute_bans_and_gateways(tmp_path):
    admin_port, gateway_port = free_port("tcp"), free_port("udp")
    config = {
        "proxy": {"domains": "localhost"},
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
        "location": {"order": "local pstn"},
        "limits": {"requests_per_second": RATE, "burst": RATE, "ban_seconds": 300},
        "pstn": {"country_code": "1", "probe_interval": "1"},
        "gateway:carrier": {"uri": f"sip:127.0.0.1:{gateway_port}", "prefixes": "+1"},
    }
    admin = f"http://127.0.0.1:{admin_port}"
    with ProxyProcess(config, workdir=tmp_path / "proxy") as proxy:
        unknown = scenario("MESSAGE to nobody", send_message_step("sip:nobody@localhost", "hi", from_uri="sip:sipp@localhost"), expect_response(404))
        result = run_sipp(unknown, f"127.0.0.1:{proxy.port}", "-r", "5", calls=CALLS, timeout=30, workdir=tmp_path)
        assert result.ok, f"{result}\n{proxy.log_tail()}"
        flooder = Flooder("127.0.0.2", ("127.0.0.1", proxy.port))
        for _ in range(3 * RATE):
            flooder.send()
        flooder.drain(1.0)
        assert [b["address"] for b in get(admin + "/limits")["banned"]] == ["127.0.0.2"]

        with Chromium(window=(1000, 1100)) as browser:
            browser.open(admin + "/ui/calls")
            browser.wait_for(f"{BANS_JS} === '[\"127.0.0.2\"]'", 15, what=lambda: browser.evaluate(BANS_JS))
            browser.wait_for(f"{ROWS_JS}.includes('MESSAGE')", 15, what=lambda: browser.evaluate(ROWS_JS))
            answers = browser.evaluate("document.querySelector('#methods tr[data-method=MESSAGE] td:nth-child(2)').textContent")
            assert answers == f"404 × {CALLS}"
            assert browser.evaluate(GATEWAY_JS) in ("down", "probing")
            keep(browser.screenshot(tmp_path / "calls.png"))
            browser.evaluate("document.querySelector('#banned tr.ban button.unblock').click(), true")
            browser.wait_for(f"{BANS_JS} === '[]'", 10, what=lambda: browser.evaluate(BANS_JS))
        assert get(admin + "/limits")["banned"] == []
        gateways = get(admin + "/gateways")["gateways"]
        assert [(g["name"], g["state"]) for g in gateways][0][0] == "carrier"
        assert gateways[0]["state"] in ("down", "probing")
