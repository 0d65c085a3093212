"""Loopback ports for tests that cannot race the kernel or each other.

A port found by binding port 0 and releasing it comes from the kernel's
ephemeral range, where any program's next outgoing socket may take it before
the program under test binds it (sipp then exits 254, twistd says "Address
already in use").  So ports come from below that range
(``/proc/sys/net/ipv4/ip_local_port_range``), which the kernel never hands
out by itself, and each test process takes its own block of that range
(chosen from the pytest-xdist worker name or the pid), so parallel runs
start far apart.  Each port is still checked free before it is handed out;
the process helpers retry with fresh ports when a start loses a race anyway.
"""

from __future__ import annotations

import os
import socket
import zlib
from pathlib import Path

__all__ = [
    "PortRange",
    "ephemeral_start",
    "reserve",
    "free_port",
    "free_ports",
    "port_range",
    "port_is_free",
    "bound_by",
    "is_address_in_use",
]

# Below this start the kernel's ephemeral range leaves too little room.
_MIN_PRIVATE = 1024
_LOWEST = 20000  # below this baresip and others pick RTP ports of their own
_BLOCK = 500  # ports in one process's block

# Ports handed out by this process: the same number must never go to two helpers.
_given: set[tuple[str, int]] = set()


def ephemeral_start(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port the kernel hands out by itself (32768 when unknown)."""
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class PortRange:
    """This process's block of ports below the ephemeral range, walked in turn.

    ``key`` names the process (an xdist worker such as ``gw3``, or the pid):
    two processes with different keys usually get different blocks; when
    they do not, the check that a port is free (and the helpers' retries)
    keep them apart.
    """

    def __init__(self, low: int, high: int, key: str) -> None:
        if high - low < _BLOCK:
            raise ValueError(f"no room for a block of ports in [{low}, {high})")
        self.low, self.high = low, high
        blocks = (high - low) // _BLOCK
        self.block = zlib.crc32(key.encode()) % blocks
        self._next = low + self.block * _BLOCK

    def candidates(self):
        """Every port of the range once, starting at this process's block."""
        span = self.high - self.low
        start = self._next - self.low
        for i in range(span):
            port = self.low + (start + i) % span
            self._next = self.low + (start + i + 1) % span
            yield port


# (key, range) of this process; a forked child (another pid) makes its own.
_range: tuple[str, PortRange | None] | None = None


def _process_key() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER") or str(os.getpid())


def port_range() -> PortRange | None:
    """This process's :class:`PortRange`, or None if the kernel leaves no
    private range (ports then come from the kernel, as with port 0)."""
    global _range
    key = _process_key()
    if _range is None or _range[0] != key:
        high = ephemeral_start()
        low = max(_MIN_PRIVATE, min(_LOWEST, high - 4 * _BLOCK))
        try:
            _range = (key, PortRange(low, high, key))
        except ValueError:
            _range = (key, None)
    return _range[1]


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _kinds(transport: str) -> list[int]:
    transport = "tcp" if transport == "tls" else transport
    kinds = {"udp": [socket.SOCK_DGRAM], "tcp": [socket.SOCK_STREAM], "both": [socket.SOCK_DGRAM, socket.SOCK_STREAM]}
    if transport not in kinds:
        raise ValueError(f"transport must be udp, tcp or both, not {transport!r}")
    return kinds[transport]


def port_is_free(port: int, transport: str = "udp", host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` right now for ``transport``
    (``udp``, ``tcp``/``tls`` or ``both``)."""
    held = []
    try:
        for kind in _kinds(transport):
            s = socket.socket(_family(host), kind)
            held.append(s)
            try:
                s.bind((host, port))
            except OSError:
                return False
        return True
    finally:
        for s in held:
            s.close()


def _kernel_port(transport: str, host: str) -> int:
    """A port from the kernel (bind to 0), for machines with no private range."""
    for _ in range(200):
        with socket.socket(_family(host), _kinds(transport)[-1]) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if (host, port) not in _given and port_is_free(port, transport, host):
            return port
    raise OSError(f"no free {transport} port found on {host}")


def free_port(transport: str = "udp", host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free right now for ``transport``.

    ``transport`` is ``udp``, ``tcp`` (or ``tls``), or ``both``: a port free
    for UDP and TCP at once, as the default ``site.ini`` listens on both with
    one number.  The port is below the kernel's ephemeral range and never
    handed out twice by this process; another program that binds it first
    shows as "address in use", which the process helpers retry.
    """
    _kinds(transport)  # validate first
    r = port_range()
    if r is None:
        port = _kernel_port(transport, host)
    else:
        for port in r.candidates():
            if (host, port) not in _given and port_is_free(port, transport, host):
                break
        else:
            raise OSError(f"no free {transport} port in [{r.low}, {r.high}) on {host}")
    _given.add((host, port))
    return port


def free_ports(n: int, transport: str = "udp", host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (see :func:`free_port`)."""
    return [free_port(transport, host) for _ in range(n)]


def reserve(port: int, host: str = "127.0.0.1") -> None:
    """Never hand out ``port`` again in this process (it was taken another way)."""
    _given.add((host, port))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def bound_by(pid: int, port: int, transport: str = "udp") -> bool:
    """Whether process ``pid`` holds a socket bound to local ``port``.
    Linux only: reads ``/proc``.  Unlike trying to bind the
    port ourselves, this tells the program under test from any other that
    may have taken the port."""
    inodes = _socket_inodes(pid)
    if not inodes:
        return False
    files = ["udp", "udp6"] if transport == "udp" else ["tcp", "tcp6"]
    for name in files:
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, inode = fields[1], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
                return True
    return False


def is_address_in_use(text: str) -> bool:
    """Whether a program's output says it could not bind an address in use."""
    lowered = text.lower()
    return "address already in use" in lowered or "errno 98" in lowered or "eaddrinuse" in lowered
