"""The lab's link delay without netem (tests/lab/delay_relay.py): three
proxy namespaces, no proxies; a TCP handshake and a UDP echo between two of
them take at least the two directions' configured delays, and the receiver
sees the sender's own address.  Needs root (skips otherwise).

The lower bound is exact (the relay never lets a packet go early); the
upper bound only guards against a relay that holds packets far too long
(a loaded machine adds scheduling delay, so it is generous)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.lab.netlab import Lab, NamespacePool, lab_unavailable, sh

SLACK = 0.25  # seconds a loaded two-core machine may add to a round trip


@pytest.fixture(scope="module")
def lab():
    why = lab_unavailable()
    if why:
        pytest.skip(why)
    lab = Lab(3, users=0, loss=(0.0, 0.0), delay=(0.001, 0.050), seed=7, tls=False, tag=f"dl{os.getpid() % 100000}",
              delay_by="relay")
    lab.up(start=False)
    pools = [NamespacePool(lab.node_ns(i), 2) for i in range(3)]
    try:
        yield lab, pools
    finally:
        for p in pools:
            p.close()
        lab.down()


def tcp_rtt(lab: Lab, pools: list[NamespacePool], a: int, b: int, port: int) -> tuple[float, str]:
    """The quickest of five TCP handshakes a -> b, and the address b saw."""
    listener = pools[b].run(lambda: socket.create_server((lab.node_address(b), port)))
    seen = []
    try:
        def connect() -> float:
            t0 = time.monotonic()
            s = socket.create_connection((lab.node_address(b), port), timeout=5)
            took = time.monotonic() - t0
            s.close()
            return took

        times = []
        for _ in range(5):
            times.append(pools[a].run(connect))
            conn, peer = listener.accept()
            seen.append(peer[0])
            conn.close()
    finally:
        listener.close()
    return min(times), seen[0]


def udp_rtt(lab: Lab, pools: list[NamespacePool], a: int, b: int, port: int) -> tuple[float, str]:
    """The quickest of five UDP echoes a -> b -> a, and the address b saw."""
    server = pools[b].run(lambda: _udp(lab.node_address(b), port))
    client = pools[a].run(lambda: _udp(lab.node_address(a), 0))
    seen = []
    try:
        times = []
        for k in range(5):
            t0 = time.monotonic()
            client.sendto(b"ping %d" % k, (lab.node_address(b), port))
            data, peer = server.recvfrom(100)
            seen.append(peer[0])
            server.sendto(data, peer)
            client.recvfrom(100)
            times.append(time.monotonic() - t0)
    finally:
        server.close()
        client.close()
    return min(times), seen[0]


def _udp(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(5)
    return s


def test_the_relay_delays_each_link_by_its_configured_delay(lab) -> None:
    lab, pools = lab
    assert "userspace relay" in lab.describe()
    for a, b, port in ((0, 1, 7100), (2, 0, 7101)):
        want = lab.links[(a, b)][1] + lab.links[(b, a)][1]
        tcp, tcp_peer = tcp_rtt(lab, pools, a, b, port)
        udp, udp_peer = udp_rtt(lab, pools, a, b, port)
        print(f"[lab] link n{a}<->n{b}: configured round trip {want * 1000:.1f} ms; "
              f"measured TCP handshake {tcp * 1000:.1f} ms, UDP echo {udp * 1000:.1f} ms")
        assert tcp_peer == udp_peer == lab.node_address(a), "the receiver sees the sender's own address"
        assert want <= tcp < want + SLACK and want <= udp < want + SLACK


def test_only_proxy_links_cross_the_relay_and_it_goes_with_the_lab(lab) -> None:
    lab, _ = lab
    route = sh("ip", "route", "get", lab.node_address(1), ns=lab.node_ns(0)).stdout
    assert "dev dly" in route and f"src {lab.node_address(0)}" in route
    assert "dev eth0" in sh("ip", "route", "get", lab.user_address(0), ns=lab.node_ns(0)).stdout
    relay = lab.relay
    assert relay is not None and relay.poll() is None
    lab._stop_relay()
    assert relay.poll() is not None and lab.relay_figures["relayed"] > 0
    # its TUNs (and the routes over them) went with it: the bridge carries on
    assert "dev eth0" in sh("ip", "route", "get", lab.node_address(1), ns=lab.node_ns(0)).stdout
