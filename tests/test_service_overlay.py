"""build_service wires the ring and the admin API from site.ini."""

from __future__ import annotations

from twisted.internet import reactor

from sosimple_proxy.config import parse_config
from sosimple_proxy.overlay.service import OverlayService
from sosimple_proxy.wiring import build_service


def test_storage_peer_runs_overlay_and_admin_without_sip(tmp_path):
    cfg = parse_config(
        "[proxy]\nlisten =\n"
        f"[overlay]\nlisten = tcp:0:interface=127.0.0.1\nstate_dir = {tmp_path}/ov\nreplicas = 1\n"
        "[admin]\nlisten = tcp:0:interface=127.0.0.1\n"
    )
    top = build_service(cfg, reactor)
    assert isinstance(top.overlay, OverlayService)
    assert top.overlay.settings["replicas"] == 1
    assert {s.name for s in top} == {"overlay", "admin"}
    assert top.getServiceNamed("overlay") is top.overlay


def test_no_overlay_and_no_admin_when_their_listen_is_empty():
    cfg = parse_config("[proxy]\nlisten =\n[overlay]\nlisten =\n[admin]\nlisten =\n")
    top = build_service(cfg, reactor)
    assert top.overlay is None
    assert list(top) == []


def test_admin_without_overlay_is_served():
    cfg = parse_config("[proxy]\nlisten =\n[overlay]\nlisten =\n[admin]\nlisten = tcp:0:interface=127.0.0.1\n")
    top = build_service(cfg, reactor)
    assert top.overlay is None
    assert [s.name for s in top] == ["admin"]
