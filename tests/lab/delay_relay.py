"""Link delay for the lab without ``tc netem``: a userspace relay.

This machine's kernel has no ``sch_netem``, so the lab delays the traffic
between its proxies itself.  One process (this module,
``python -m tests.lab.delay_relay CONFIG``) makes a TUN device ``dly`` in
every proxy's namespace; the lab then routes the proxies' own subnet
(``10.77.0.0/24``) over it, with the node's address as source.  Every IP
packet a proxy sends to another proxy (SIP over UDP, TCP and TLS, the
ring's AMP over TCP: everything) is read here from the sender's TUN, held
for the link's one-way delay and written unchanged into the receiver's TUN,
whose kernel takes it as arriving on its ``dly``.

Why TUN, not a relay of sockets: a packet crosses unchanged, so the
receiver sees the sender's own source address and port (a Via's
``received``/``rport``, ``[limits]`` per source, the ring's view of who
called), TCP stays end to end, and the nft loss and partition rules in the
receiver's input hook apply as before.  Nothing of the proxies' setup
changes: they bind the same addresses.  What it does not delay: phones and
the flooder, which reach the proxies over the bridge (only proxy-to-proxy
links are drawn).  Without ``TUNSETOFFLOAD`` a TUN gets whole, checksummed
packets (no TSO, no partial checksums), so writing them on is all it takes.

One delay per ordered pair of proxies (sender, receiver): the packets of a
link keep their order, and a round trip between two proxies takes the sum
of the two directions.  Bounded: at most ``MAX_HELD`` packets are held
(beyond that they are dropped and counted), and the process ends when its
parent does or on SIGTERM, printing one JSON line of figures.  Its TUN
devices (and the routes over them) go with it: traffic then takes the
bridge again, undelayed.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import os
import select
import signal
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
DEVICE = "dly"
MAX_HELD = 50_000


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(ns: str, name: str = DEVICE) -> int:
    """A TUN device ``name`` in namespace ``ns`` (made by TUNSETIFF in it);
    it lives as long as the returned descriptor."""
    enter(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Relay:
    """Holds each packet for its link's delay, then hands it to the receiver's TUN."""

    def __init__(self, fds: list[int], addresses: list[str], delay: dict[tuple[int, int], float]) -> None:
        self.fds = fds
        self.index = {fd: i for i, fd in enumerate(fds)}
        self.by_address = {socket.inet_aton(a): i for i, a in enumerate(addresses)}
        self.delay = delay
        self.held: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.stats = {"relayed": 0, "dropped_full": 0, "dropped_unknown": 0, "write_errors": 0}
        self.late: list[float] = []  # how late packets left (a sample), in seconds
        self.running = True

    def _read(self, fd: int, now: float) -> None:
        i = self.index[fd]
        for _ in range(256):
            try:
                packet = os.read(fd, 65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(packet) < 20 or packet[0] >> 4 != 4:
                continue  # not IPv4 (an IPv6 router solicitation): not ours to carry
            j = self.by_address.get(packet[16:20])
            if j is None or j == i:
                self.stats["dropped_unknown"] += 1
                continue
            if len(self.held) >= MAX_HELD:
                self.stats["dropped_full"] += 1
                continue
            self.seq += 1
            heapq.heappush(self.held, (now + self.delay[(i, j)], self.seq, j, packet))

    def _release(self, now: float) -> None:
        held = self.held
        while held and held[0][0] <= now:
            due, seq, j, packet = heapq.heappop(held)
            if seq % 16 == 0 and len(self.late) < 100_000:
                self.late.append(now - due)
            try:
                os.write(self.fds[j], packet)
                self.stats["relayed"] += 1
            except OSError:
                self.stats["write_errors"] += 1

    def run(self, parent: int) -> None:
        poll = select.epoll()
        for fd in self.fds:
            poll.register(fd, select.EPOLLIN)
        check_parent = time.monotonic() + 1.0
        while self.running:
            now = time.monotonic()
            timeout = min(1.0, max(0.0, self.held[0][0] - now)) if self.held else 1.0
            try:
                events = poll.poll(timeout)
            except InterruptedError:
                continue
            now = time.monotonic()
            for fd, _ in events:
                self._read(fd, now)
            self._release(time.monotonic())
            if now > check_parent:
                check_parent = now + 1.0
                if os.getppid() != parent:
                    break  # the lab went away without us: so do the devices

    def figures(self) -> dict:
        late = sorted(self.late)

        def pct(p: float) -> float | None:
            return round(late[min(len(late) - 1, int(p * len(late)))] * 1000, 2) if late else None

        return {**self.stats, "held_at_exit": len(self.held), "late_ms_p50": pct(0.5), "late_ms_p99": pct(0.99),
                "late_ms_max": round(late[-1] * 1000, 2) if late else None}


def main(argv: list[str]) -> int:
    """``CONFIG``: a JSON file ``{"nodes": [[namespace, address], ...],
    "delay": [[sender, receiver, seconds], ...]}``.  Prints ``ready`` once
    every TUN exists, and its figures (one JSON line) when it ends."""
    with open(argv[0]) as f:
        config = json.load(f)
    parent = os.getppid()
    nodes = config["nodes"]
    fds = [open_tun(ns) for ns, _ in nodes]
    delay = {(int(a), int(b)): float(s) for a, b, s in config["delay"]}
    relay = Relay(fds, [addr for _, addr in nodes], delay)

    def stop(signum: int, frame: object) -> None:
        relay.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    relay.run(parent)
    print(json.dumps(relay.figures()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
