"""SIGHUP re-reads ``[routes]`` and the ``[gateway:NAME]`` sections (issue
10): an administrator moves a route or a gateway without dropping calls,
and a broken site.ini on SIGHUP changes nothing."""

from __future__ import annotations

import os
import signal

from sosimple_proxy.testing import AnsweringUA, ProxyProcess, sip_request, udp_final_response, wait_until

DOMAIN = "example.com"


def message(ruri: str):  # noqa: ANN201
    def build(lport: int) -> str:
        return sip_request("MESSAGE", ruri, to=ruri, from_=f"alice@{DOMAIN}", via_port=lport,
                           headers=("Content-Type: text/plain",), body="hi")
    return build


def settings(route_port: int, gateway_port: int) -> dict:
    return {
        "proxy": {"domains": DOMAIN},
        "location": {"order": "local routes pstn"},
        "auth": {"trusted": "127.0.0.1"},
        "routes": {"other.test": f"sip:127.0.0.1:{route_port}"},
        "pstn": {"country_code": "1", "probe_interval": "0"},
        "gateway:gw": {"uri": f"sip:127.0.0.1:{gateway_port}", "prefixes": "+1"},
    }


def test_sighup_moves_routes_and_gateways_and_a_bad_file_changes_nothing(tmp_path):
    with AnsweringUA() as route1, AnsweringUA() as route2, AnsweringUA() as gw1, AnsweringUA() as gw2:
        proxy = ProxyProcess(settings(route1.port, gw1.port), workdir=tmp_path / "proxy")
        with proxy:
            def reached(ua: AnsweringUA, ruri: str, marker: str) -> bool:
                answer = udp_final_response(proxy.port, message(ruri))
                return answer is not None and answer.startswith("SIP/2.0 200") and ua.received(marker)

            assert reached(route1, "sip:x@other.test", "MESSAGE sip:x@other.test")
            assert reached(gw1, "tel:+15551234567", "+15551234567")

            # the admin edits site.ini: both move
            text = proxy.ini_path.read_text()
            edited = text.replace(f"127.0.0.1:{route1.port}", f"127.0.0.1:{route2.port}") \
                         .replace(f"127.0.0.1:{gw1.port}", f"127.0.0.1:{gw2.port}")
            proxy.ini_path.write_text(edited)
            os.kill(proxy.process.pid, signal.SIGHUP)
            wait_until(lambda: "SIGHUP: 1 routes, 1 gateways" in proxy.log_tail(200), 10, what="no reload logged")
            assert reached(route2, "sip:y@other.test", "MESSAGE sip:y@other.test")
            assert reached(gw2, "tel:+15557654321", "+15557654321")
            assert not route1.received("sip:y@other.test") and not gw1.received("+15557654321")

            # a broken file: the line says why, and the routes stay where they were
            proxy.ini_path.write_text(edited.replace("[routes]", "[routes]\nbroken.test = not a uri"))
            os.kill(proxy.process.pid, signal.SIGHUP)
            wait_until(lambda: "routes and gateways kept as they were" in proxy.log_tail(200), 10,
                       what="no refusal logged")
            assert reached(route2, "sip:z@other.test", "MESSAGE sip:z@other.test")
            assert proxy.process.poll() is None
