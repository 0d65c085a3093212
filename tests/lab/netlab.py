"""A lab of hosts: network namespaces joined by a bridge, one proxy each.

Layout (every name carries this process's id, so two labs never meet):

- a hub namespace holding the bridge ``br0``;
- ``nodes`` namespaces, each with a veth into the bridge and an address
  10.77.0.<i+1>/16, running one proxy (SIP on 5060, the ring on 7000, the
  admin API on its own loopback);
- ``user`` namespaces at 10.77.1.<k+1> where the simulated phones live,
  and one ``flooder`` at 10.77.2.1.

10.77.0.0/16 exists only inside these namespaces.  Loss between two
proxies is an nft ``numgen random`` drop rule in the receiving namespace.
Delay between two proxies is ``tc netem`` when the kernel has it (one
delay per node: netem delays a device's egress), else the userspace relay
of :mod:`tests.lab.delay_relay` (this machine's kernel has no netem): a TUN
per proxy namespace carrying 10.77.0.0/24, each packet held for its link's
one-way delay and handed on unchanged (source addresses kept).
:meth:`Lab.describe` says which.  A partition is an nft drop of the other
side's addresses.  Everything is made by :meth:`Lab.up` and removed by
:meth:`Lab.down` (also on a failed start).

Work inside a namespace (a socket, an HTTP call) runs on a thread that
entered it with ``setns(2)``: a socket belongs to the namespace it was
made in, whichever thread uses it later.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from sosimple_proxy.testing.proxy import ProxyProcess
from sosimple_proxy.testing.sip_requests import sip_options_ping

__all__ = ["Lab", "LabNode", "lab_unavailable"]

CLONE_NEWNET = 0x40000000
SIP_PORT = 5060
RING_PORT = 7000
ADMIN_PORT = 8080
_libc = ctypes.CDLL(None, use_errno=True)


def lab_unavailable() -> str | None:
    """Why a lab cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth, nft)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool!r} (iproute2, nftables), not installed"
    return None


def sh(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns``."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NamespacePool:
    """Threads that live in one namespace; :meth:`run` calls a function there."""

    def __init__(self, ns: str, workers: int = 4) -> None:
        self.ns = ns
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=ns, initializer=enter, initargs=(ns,))

    def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.pool.submit(fn, *args, **kw).result()

    def submit(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self.pool.submit(fn, *args, **kw)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class LabNode(ProxyProcess):
    """One proxy under twistd inside its namespace (``ip netns exec``)."""

    def __init__(self, lab: "Lab", index: int, config: dict, workdir: Path) -> None:
        self.lab = lab
        self.index = index
        self.ns = lab.node_ns(index)
        self.address = lab.node_address(index)
        self.pool = NamespacePool(self.ns, 4)
        super().__init__(config, host=self.address, port=SIP_PORT, workdir=workdir, startup_timeout=60.0)

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns] + super().argv()

    def probe(self) -> bytes | None:
        return self.pool.run(sip_options_ping, self.address, SIP_PORT, 0.5)

    def admin(self, path: str, timeout: float = 3.0) -> Any:
        """GET an admin API path on this node; the JSON, or None."""
        return self.admin_status(path, timeout)[1]

    def admin_status(self, path: str, timeout: float = 3.0) -> tuple[int | None, Any]:
        """GET an admin API path: (HTTP status or None if no answer, JSON or None)."""

        def get() -> tuple[int | None, Any]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}{path}", timeout=timeout) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, None
            except (OSError, ValueError):
                return None, None

        return self.pool.run(get)

    def admin_delete(self, path: str, timeout: float = 3.0) -> int | None:
        """DELETE an admin API path on this node; the status, or None."""

        def delete() -> int | None:
            try:
                with urllib.request.urlopen(urllib.request.Request(
                        f"http://127.0.0.1:{ADMIN_PORT}{path}", method="DELETE"), timeout=timeout) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
            except OSError:
                return None

        return self.pool.run(delete)

    def kill(self) -> None:
        """SIGKILL: a crash (the process group: ``ip netns exec`` and twistd)."""
        p = self.process
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        self.returncode = p.returncode if p is not None else None

    def restart(self) -> "LabNode":
        self.stop()
        self.process = None
        return self.start()  # type: ignore[return-value]

    def rss_mb(self) -> float:
        """Resident memory of the twistd process (the child of ``ip netns exec``)."""
        p = self.process
        if p is None or p.poll() is not None:
            return 0.0
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            return 0.0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Lab:
    """``nodes`` proxies in namespaces on one bridge, ``users`` namespaces
    for phones, one flooder namespace.  ``loss`` (0..1) and ``delay``
    (seconds, one way) ranges are drawn per proxy-to-proxy link with
    ``seed``.  ``delay_by``: ``auto`` (netem if the kernel has it, else the
    relay), ``netem``, ``relay`` or ``none``.  ``tag`` prefixes every
    namespace name (default: ``sl`` and this process's id)."""

    def __init__(
        self,
        nodes: int = 10,
        users: int = 2,
        *,
        loss: tuple[float, float] = (0.0, 0.02),
        delay: tuple[float, float] = (0.001, 0.050),
        seed: int = 1,
        overlay: dict | None = None,
        extra: dict | None = None,
        workdir: Path | None = None,
        tls: bool = True,
        tag: str | None = None,
        delay_by: str = "auto",
    ) -> None:
        if delay_by not in ("auto", "netem", "relay", "none"):
            raise ValueError(f"delay_by: {delay_by!r} is not auto, netem, relay or none")
        self.tag = tag or f"sl{os.getpid() % 100000}"
        self.delay_by = delay_by
        self.relay: subprocess.Popen | None = None
        self.relay_figures: dict | None = None
        self.n, self.n_users = nodes, users
        self.rng = random.Random(seed)
        self.loss_range, self.delay_range = loss, delay
        self.overlay = dict(overlay or {})
        self.extra = dict(extra or {})
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="sosimple-lab-"))
        self.namespaces: list[str] = []
        self.nodes: list[LabNode] = []
        self.user_pools: list[NamespacePool] = []
        self.flood_pool: NamespacePool | None = None
        self.links: dict[tuple[int, int], tuple[float, float]] = {}
        self.netem = False
        self.mounts: list[Path] = []
        self.notes: list[str] = []
        self.tls = tls
        self.certs: tuple[Path, Path] | None = None

    # -- names and addresses

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    def node_ns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def user_ns(self, k: int) -> str:
        return f"{self.tag}-u{k}"

    @property
    def flood_ns(self) -> str:
        return f"{self.tag}-fl"

    @staticmethod
    def node_address(i: int) -> str:
        return f"10.77.0.{i + 1}"

    @staticmethod
    def user_address(k: int) -> str:
        return f"10.77.1.{k + 1}"

    FLOOD_ADDRESS = "10.77.2.1"

    # -- life cycle

    def up(self, start: bool = True) -> "Lab":
        try:
            self._network()
            if start:
                self.start_nodes()
        except BaseException:
            self.down()
            raise
        return self

    def _add_ns(self, name: str, address: str | None, index: int) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        if address is None:
            return
        # veth: "e<index>" in the hub (on the bridge), "eth0" in the namespace
        hub_end = f"e{index}"
        sh("ip", "link", "add", hub_end, "netns", self.hub, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "link", "set", hub_end, "master", "br0", "up", ns=self.hub)
        sh("ip", "addr", "add", f"{address}/16", "dev", "eth0", ns=name)
        sh("ip", "link", "set", "eth0", "up", ns=name)

    def _network(self) -> None:
        if self.tls:
            from tests.certs import CA

            self.dir.mkdir(parents=True, exist_ok=True)
            ca = CA("sosimple lab CA")
            ips = [self.node_address(i) for i in range(self.n)]
            self.certs = ca.issue(cn="example.com", dns=["example.com", "localhost"], ips=ips).write(self.dir, "proxy")
        self._add_ns(self.hub, None, 0)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.hub)
        sh("ip", "link", "set", "br0", "up", ns=self.hub)
        for i in range(self.n):
            self._add_ns(self.node_ns(i), self.node_address(i), i)
        for k in range(self.n_users):
            self._add_ns(self.user_ns(k), self.user_address(k), 100 + k)
            self.user_pools.append(NamespacePool(self.user_ns(k), 16))
        self._add_ns(self.flood_ns, self.FLOOD_ADDRESS, 200)
        self.flood_pool = NamespacePool(self.flood_ns, 8)
        self.netem = self.delay_by in ("auto", "netem") and sh(
            "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms", ns=self.node_ns(0), check=False
        ).returncode == 0
        if self.delay_by == "netem" and not self.netem:
            raise RuntimeError("delay_by='netem': this kernel has no sch_netem (`tc qdisc add ... netem` fails)")
        if self.netem:
            sh("tc", "qdisc", "del", "dev", "eth0", "root", ns=self.node_ns(0), check=False)
        for i in range(self.n):
            sh("nft", "add table inet lab", ns=self.node_ns(i))
            sh("nft", "add chain inet lab input { type filter hook input priority 0 ; }", ns=self.node_ns(i))
            sh("nft", "add chain inet lab cut", ns=self.node_ns(i))  # partitions: emptied to heal
            sh("nft", "add rule inet lab input jump cut", ns=self.node_ns(i))
        self._links()

    def _links(self) -> None:
        """Loss (nft) and delay (netem, if any) per ordered pair of proxies."""
        lo, hi = self.loss_range
        dlo, dhi = self.delay_range
        for i in range(self.n):
            for j in range(self.n):
                if i == j:
                    continue
                loss, delay = self.rng.uniform(lo, hi), self.rng.uniform(dlo, dhi)
                self.links[(j, i)] = (loss, delay)
                per_10k = int(round(loss * 10000))
                if per_10k:
                    sh("nft", f"add rule inet lab input ip saddr {self.node_address(j)} "
                       f"numgen random mod 10000 < {per_10k} drop", ns=self.node_ns(i))
        if self.netem:
            # netem delays a device's egress: one delay per node (the mean of its links)
            for i in range(self.n):
                mean = sum(self.links[(i, j)][1] for j in range(self.n) if j != i) / max(1, self.n - 1)
                sh("tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{mean * 1000:.0f}ms", ns=self.node_ns(i))
            self.notes.append("delay: tc netem (per node, the mean of its links)")
        elif self.delay_by in ("auto", "relay") and self.n > 1:
            self._start_relay()
            delays = [d for _, d in self.links.values()]
            self.notes.append(
                f"delay: userspace relay (tests/lab/delay_relay.py; this kernel has no sch_netem): one-way "
                f"{dlo * 1000:g}-{dhi * 1000:g} ms per direction of each proxy-to-proxy link, mean "
                f"{sum(delays) / len(delays) * 1000:.1f} ms, packets unchanged (source addresses kept)")
        else:
            self.notes.append("delay: none applied" + ("" if self.delay_by == "none" else
                              " (this kernel has no sch_netem; `tc qdisc add ... netem` fails)"))
        self.notes.append(f"loss: nft numgen random drop per proxy-to-proxy link, {lo * 100:g}-{hi * 100:g} %")

    def _start_relay(self, timeout: float = 20.0) -> None:
        """The delay relay (a child process) and the routes over its TUNs."""
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "delay.json"
        config.write_text(json.dumps({
            "nodes": [[self.node_ns(i), self.node_address(i)] for i in range(self.n)],
            "delay": [[s, r, d] for (s, r), (_, d) in sorted(self.links.items())],
        }))
        self.relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("delay_relay.py")), str(config)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.relay.stdout is not None
        ready, _, _ = select.select([self.relay.stdout], [], [], timeout)
        line = self.relay.stdout.readline().strip() if ready else ""
        if line != "ready":
            self._stop_relay()
            raise RuntimeError(f"the delay relay did not start: {line!r} {self.relay_figures}")
        for i in range(self.n):
            ns = self.node_ns(i)
            sh("ip", "link", "set", "dly", "txqueuelen", "5000", "up", ns=ns)
            for conf in ("all", "dly"):
                sh("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0", ns=ns, check=False)
            sh("sysctl", "-qw", "net.ipv6.conf.dly.disable_ipv6=1", ns=ns, check=False)
            sh("ip", "route", "add", "10.77.0.0/24", "dev", "dly", "src", self.node_address(i), ns=ns)

    def _stop_relay(self) -> None:
        """End the relay; its figures (a JSON line) in ``relay_figures``."""
        relay, self.relay = self.relay, None
        if relay is None:
            return
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
        try:
            out, err = relay.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()
            out, err = relay.communicate()
        last = [line for line in out.splitlines() if line.startswith("{")]
        self.relay_figures = json.loads(last[-1]) if last else {"exit": relay.returncode, "stderr": err.strip()[-500:]}

    def describe(self) -> str:
        losses = [loss for loss, _ in self.links.values()]
        mean = sum(losses) / len(losses) * 100 if losses else 0
        return (f"lab: {self.n} proxies, {self.n_users} user namespaces, 1 flooder on one bridge (10.77.0.0/16); "
                f"mean link loss {mean:.2f} %; " + "; ".join(self.notes))

    def node_config(self, i: int) -> dict:
        addr = self.node_address(i)
        boot = " ".join(f"{self.node_address(b)}:{RING_PORT}" for b in range(min(3, self.n)) if b != i)
        config: dict[str, dict[str, object]] = {
            "proxy": {"listen": f"udp:{addr}:{SIP_PORT}, tcp:{addr}:{SIP_PORT}", "domains": "example.com"},
            "location": {"order": "local overlay"},
            "overlay": {
                "listen": f"tcp:{RING_PORT}:interface={addr}",
                "advertise": f"{addr}:{RING_PORT}",
                "bootstrap": boot,
                "stabilize_interval": "1",
                # links of up to 100 ms round trip and 2 % loss (a lost SYN
                # costs a second): half an interval per call is too short
                "rpc_timeout": "2",
                "state_dir": "overlay",
                # ten proxies of one organisation: each writes example.com
                "domain_writers": "any",
                **self.overlay,
            },
            "admin": {"listen": f"tcp:{ADMIN_PORT}:interface=127.0.0.1"},
            "limits": {"allow": "10.77.0.0/24", "requests_per_second": "200", "burst": "400", "ban_seconds": "120"},
        }
        if self.certs is not None:
            config["proxy"]["listen"] = f"{config['proxy']['listen']}, tls:{addr}:{SIP_PORT + 1}"
            config["tls"] = {"certificate": self.certs[0], "key": self.certs[1], "verify": "no"}
        for section, keys in self.extra.items():
            config.setdefault(section, {}).update(keys)
        return config

    def start_nodes(self) -> None:
        self.nodes = [LabNode(self, i, self.node_config(i), self.dir / f"n{i}") for i in range(self.n)]
        self.nodes[0].start()
        with ThreadPoolExecutor(self.n) as pool:
            list(pool.map(lambda p: p.start(), self.nodes[1:]))

    def down(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception:
                node.kill()
            node.pool.close()
        for pool in self.user_pools + ([self.flood_pool] if self.flood_pool else []):
            pool.close()
        if self.relay is not None:
            self._stop_relay()
            print(f"[lab] delay relay: {json.dumps(self.relay_figures)}", flush=True)
        for mount in self.mounts:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- faults

    def partition(self, side_a: Sequence[int], side_b: Sequence[int]) -> None:
        """Nothing passes between the two sides (both directions)."""
        for mine, theirs in ((side_a, side_b), (side_b, side_a)):
            others = ", ".join(self.node_address(j) for j in theirs)
            for i in mine:
                sh("nft", f"add rule inet lab cut ip saddr {{ {others} }} drop", ns=self.node_ns(i))

    def heal(self) -> None:
        for i in range(self.n):
            sh("nft", "flush chain inet lab cut", ns=self.node_ns(i))

    def small_disk(self, i: int, size: str = "16m") -> Path:
        """Node ``i``'s state directory on a tmpfs of ``size`` (mounted before it starts).

        Room for SQLite's write-ahead log, which grows to about 4 MB before
        its automatic checkpoint: on a 4 MB disk the log alone filled it
        again after the disk-full scenario freed its filler, and the node
        stayed full for the scenarios after it."""
        state = self.dir / f"n{i}" / "overlay"
        state.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(state)], check=True)
        self.mounts.append(state)
        return state

    @staticmethod
    def fill(directory: Path) -> int:
        """Fill a file system to the last byte; the bytes written."""
        written = 0
        block = b"\0" * 65536
        try:
            with open(directory / "filler", "wb") as f:
                while True:
                    f.write(block)
                    f.flush()
                    written += len(block)
        except OSError:
            pass
        # the last partial block
        try:
            with open(directory / "filler2", "wb") as f:
                while True:
                    f.write(b"\0" * 512)
                    f.flush()
                    written += 512
        except OSError:
            pass
        return written

    # -- looking at the ring

    def ring_views(self) -> dict[int, dict]:
        views = {}
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for node, view in zip(self.nodes, pool.map(lambda n: n.admin("/ring") if n.running else None, self.nodes)):
                if view is not None:
                    views[node.index] = view
        return views

    def rings(self) -> list[set[str]]:
        """The rings the live nodes form, following first successors from each."""
        views = self.ring_views()
        by_addr = {v["address"]: v for v in views.values()}
        cycles: list[set[str]] = []
        seen: set[str] = set()
        for start in by_addr:
            if start in seen:
                continue
            path, addr = [], start
            while addr in by_addr and addr not in path:
                path.append(addr)
                succ = by_addr[addr]["successors"]
                addr = succ[0]["address"] if succ else None
            seen.update(path)
            if addr in path:
                cycle = set(path[path.index(addr):])
                if cycle not in cycles:
                    cycles.append(cycle)
        return cycles

    def one_ring(self) -> bool:
        """Every live node is on one cycle of first successors."""
        live = {f"{n.address}:{RING_PORT}" for n in self.nodes if n.running}
        rings = self.rings()
        return len(rings) == 1 and rings[0] == live

    def rss(self) -> dict[int, float]:
        return {n.index: round(n.rss_mb(), 1) for n in self.nodes if n.running}


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> tuple[bool, float]:
    """(whether ``predicate`` came true within ``timeout``, seconds it took)."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return True, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0
        time.sleep(interval)


_ = threading  # threads are made by the pools
