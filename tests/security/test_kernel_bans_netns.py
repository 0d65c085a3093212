"""``[limits] kernel_bans = yes`` for real: the proxy under twistd, as root,
in a network namespace this test makes, with nft.  A flooder at 127.0.0.2
is banned; from then on its datagrams are dropped by the kernel (the
proxy's own drop count stands still while the kernel's grows), its TCP
connections are never accepted, another source is served, the admin's
unblock lets it back in, and stopping the proxy deletes its table.

Needs root and nft (skips otherwise), like the lab.  Counts only: no
timed assertions; every wait is bounded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from sosimple_proxy.testing.proxy import ProxyProcess
from sosimple_proxy.testing.sip_requests import options_request, sip_options_ping, udp_exchange
from tests.lab.netlab import NamespacePool, lab_unavailable

PORT = 5060
ADMIN = 8080
TABLE = "sosimple_127_0_0_1_5060"
FLOODER, USER = "127.0.0.2", "127.0.0.3"


def ns_sh(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


class NsProxy(ProxyProcess):
    """The proxy in namespace ``ns`` (``ip netns exec``), probed from there."""

    def __init__(self, ns: str, pool: NamespacePool, config: dict, workdir: Path) -> None:
        self.ns, self.pool = ns, pool
        super().__init__(config, host="127.0.0.1", port=PORT, workdir=workdir)

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] + super().argv()

    def probe(self) -> bytes | None:
        return self.pool.run(sip_options_ping, "127.0.0.1", PORT, 0.5)

    def admin(self, method: str, path: str) -> tuple[int | None, Any]:
        def call() -> tuple[int | None, Any]:
            request = urllib.request.Request(f"http://127.0.0.1:{ADMIN}{path}", method=method)
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    body = r.read()
                    return r.status, json.loads(body) if body else None
            except urllib.error.HTTPError as e:
                return e.code, None
            except OSError:
                return None, None

        return self.pool.run(call)


@pytest.fixture
def netns(tmp_path: Path):
    why = lab_unavailable()
    if why:
        pytest.skip(why)
    ns = f"kb{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    pool = NamespacePool(ns, 2)
    try:
        ns_sh(ns, "ip", "link", "set", "lo", "up")
        yield ns, pool
    finally:
        pool.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def send_options(count: int, source: str) -> int:
    """``count`` OPTIONS from ``source`` as fast as the socket takes them."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        lport = s.getsockname()[1]
        for _ in range(count):
            try:
                s.sendto(options_request("127.0.0.1", PORT, source, lport), ("127.0.0.1", PORT))
                sent += 1
            except OSError:
                time.sleep(0.001)
    return sent


def answered(source: str) -> bool:
    return bool(udp_exchange(PORT, lambda lport: options_request("127.0.0.1", PORT, source, lport),
                             source=source, timeout=3.0))


def tcp_connects(source: str) -> bool:
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", PORT))
            return True
        except OSError:  # the SYN was dropped: a timeout
            return False


@pytest.mark.parametrize("workers", [1, 2])
def test_a_banned_source_is_dropped_by_the_kernel_and_let_back_in_by_unblock(netns, tmp_path: Path, workers: int) -> None:
    """With ``[proxy] workers`` the parent keeps the one table: a worker's
    ban reaches it, and so the kernel."""
    ns, pool = netns
    config = {
        "proxy": {"listen": f"udp:127.0.0.1:{PORT}, tcp:127.0.0.1:{PORT}", "domains": "localhost", "workers": str(workers)},
        "admin": {"listen": f"tcp:{ADMIN}:interface=127.0.0.1"},
        "limits": {"requests_per_second": "10", "burst": "20", "ban_seconds": "120", "kernel_bans": "yes"},
    }
    proxy = NsProxy(ns, pool, config, tmp_path / "proxy")
    proxy.start()
    try:
        # the table is made just after startup, without holding it up
        assert wait_for(lambda: "kernel bans: banned sources are dropped by nft table" in proxy.log_tail(200), 10)
        # The flood: over the rate, so the flooder is banned (with workers: by
        # one of them, then by the parent, which keeps the table).
        pool.run(send_options, 200, FLOODER)
        banned = lambda: [b["address"] for b in (proxy.admin("GET", "/limits")[1] or {}).get("banned", [])]  # noqa: E731
        assert wait_for(lambda: banned() == [FLOODER], 10), proxy.admin("GET", "/limits")
        in_set = lambda: FLOODER in ns_sh(ns, "nft", "list", "set", "inet", TABLE, "banned4").stdout  # noqa: E731
        assert wait_for(in_set, 10), ns_sh(ns, "nft", "list", "ruleset").stdout
        # Banned in the kernel: what it sends now never reaches the process.
        before = proxy.admin("GET", "/limits")[1]
        sent = pool.run(send_options, 500, FLOODER)
        assert not pool.run(tcp_connects, FLOODER), "a banned source's SYN is dropped"
        kernel = lambda: (proxy.admin("GET", "/limits")[1] or {}).get("kernel", {}).get("dropped_packets", 0) >= sent  # noqa: E731
        assert wait_for(kernel, 10), proxy.admin("GET", "/limits")
        after = proxy.admin("GET", "/limits")[1]
        print(f"\nkernel bans: {sent} datagrams sent while banned; dropped by the process "
              f"{after['dropped'] - before['dropped']}, by the kernel {after['kernel']['dropped_packets']}")
        # (with workers this is the parent's count; the kernel's count above is the proof)
        assert after["dropped"] == before["dropped"], "the process read none of them"
        assert after["kernel"]["state"] == "on"
        # Everyone else is served.
        assert pool.run(answered, USER)
        # The admin's unblock (the calls page's button) lifts the kernel's copy too.
        assert proxy.admin("DELETE", f"/limits/banned/{FLOODER}")[0] == 204
        assert not in_set()
        assert pool.run(answered, FLOODER)
        assert pool.run(tcp_connects, FLOODER)
    finally:
        proxy.stop()
    tables = ns_sh(ns, "nft", "list", "tables").stdout
    assert TABLE not in tables, "the table goes with the proxy"
    assert "kernel bans: nft table" in proxy.log_tail(200) and "deleted" in proxy.log_tail(200)
