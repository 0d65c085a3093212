"""``[limits]`` bans mirrored into the kernel: an nftables set that drops a
banned source's packets before the proxy sees them.

Why: a banned source costs the proxy little per message (a dict lookup,
:mod:`~sosimple_proxy.sip.admission`), but not nothing: every datagram is
still a ``recvfrom`` and every connection an ``accept`` (and, for TLS, the
start of a handshake) on the one reactor thread.  At full speed from one
address that is enough to starve the users (issue 15: 30-45 % of their
requests failed during a flood from one namespace).  The kernel drops a
packet from a set of addresses for a fraction of that cost.

The shape, one table of the proxy's own (``inet sosimple_<where>``, see
:func:`table_name`), made at start and deleted at stop::

    table inet sosimple_10_0_0_1_5060 {
        counter dropped { }
        set banned4 { type ipv4_addr; flags timeout; }
        set banned6 { type ipv6_addr; flags timeout; }
        chain input {
            type filter hook prerouting priority -300; policy accept;
            ip saddr @banned4 meta l4proto { tcp, udp } th dport { 5060, 5061 } counter name "dropped" drop
            ip6 saddr @banned6 meta l4proto { tcp, udp } th dport { 5060, 5061 } counter name "dropped" drop
        }
    }

The chain hooks prerouting at the raw priority (-300), before connection
tracking, so a dropped packet does not even cost a conntrack entry.  Each
element carries its own timeout (what is left of the ban), so the kernel
lets the source back in on its own when the ban ends; an administrator's
unblock (``DELETE /limits/banned/{address}``, the button on the calls page)
deletes the element.

All I/O goes through an :class:`ICommandRunner` (a real one spawns ``nft -f -``
with the reactor's ``spawnProcess``; tests pass a fake that records the
text): the reactor is never blocked, and bans that arrive while ``nft``
runs are batched into its next run.  One ``nft -f`` batch is atomic, so a
batch that fails changes nothing; the first failure is logged (once) and
the mirror turns itself off.  The in-process ban stays in force whatever
the kernel does: the mirror only saves work.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
from typing import Any, Callable, Iterable, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

__all__ = [
    "ICommandRunner",
    "IBanMirror",
    "KernelBans",
    "ProcessRunner",
    "RunResult",
    "kernel_bans_unavailable",
    "parse_kernel_bans",
    "table_name",
]

# CAP_NET_ADMIN's bit in /proc/self/status CapEff (linux/capability.h).
CAP_NET_ADMIN = 12
# How often the kernel's drop counter is read while the table exists.
COUNTER_INTERVAL = 15.0
# Ceiling on queued commands while nft runs: a flood of spoofed sources must
# not grow the queue without end (the in-process bans still hold).
MAX_PENDING = 20_000


def parse_kernel_bans(raw: str) -> str:
    """``[limits] kernel_bans``: ``auto`` (when the proxy may and can), ``yes``
    (startup stops if it cannot), ``no``."""
    value = raw.strip().lower()
    if value not in ("auto", "yes", "no"):
        raise ValueError(f"{raw.strip()!r} is not one of auto, yes, no")
    return value


def _has_net_admin(status_path: str = "/proc/self/status") -> bool:
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def kernel_bans_unavailable(
    nft: str = "nft", which: Callable[[str], str | None] = shutil.which, net_admin: Callable[[], bool] = _has_net_admin
) -> str | None:
    """Why this process cannot keep an nftables set, or None if it can."""
    if not net_admin():
        return "the proxy is neither root nor holds CAP_NET_ADMIN"
    if which(nft) is None:
        return f"{nft!r} (nftables) is not installed"
    return None


def table_name(ports: Iterable[tuple[str, int]]) -> str:
    """``sosimple_<host>_<port>`` of the first listen address (``any`` for a
    wildcard): stable across restarts, so a table left by a crash is the one
    the next start replaces, and two proxies on one host (different
    addresses or ports) never share one."""
    for host, port in ports:
        word = re.sub(r"[^0-9A-Za-z]+", "_", host).strip("_") or "any"
        if host in ("0.0.0.0", "::", ""):
            word = "any"
        return f"sosimple_{word}_{port}"
    return f"sosimple_pid{os.getpid()}"


@attrs.frozen
class RunResult:
    """How a command ended."""

    code: int | None
    out: bytes = b""
    err: bytes = b""


class ICommandRunner(Interface):
    """Runs a program without blocking the reactor."""

    def run(argv: Sequence[str], stdin: bytes) -> defer.Deferred:
        """Run ``argv`` with ``stdin`` on its standard input; fires with a
        :class:`RunResult` (never fails: a program that cannot start ends
        with a code of None and the reason in ``err``)."""


class _Collect(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(RunResult(code, b"".join(self.out), b"".join(self.err)))


@implementer(ICommandRunner)
class ProcessRunner:
    """:class:`ICommandRunner` on a reactor's ``spawnProcess``."""

    def __init__(self, reactor: IReactorProcess) -> None:
        self.reactor = reactor

    def run(self, argv: Sequence[str], stdin: bytes) -> defer.Deferred:
        proto = _Collect(stdin)
        path = shutil.which(argv[0]) or argv[0]
        try:
            self.reactor.spawnProcess(proto, path, list(argv), env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        except Exception as e:  # not found, fork failed
            return defer.succeed(RunResult(None, b"", str(e).encode()))
        return proto.done


class IBanMirror(Interface):
    """What the limiter's owner tells a mirror of its bans (the limiter's
    ``on_ban``/``on_lift`` listeners)."""

    def banned(ban: Any) -> None:
        """A :class:`~sosimple_proxy.security.limits.Ban` was made."""

    def lifted(address: str, why: str) -> None:
        """A ban ended (``why``: ``expired`` or lifted early)."""

    def report() -> dict[str, object]:
        """What ``GET /limits`` shows of the mirror."""

    def idle() -> defer.Deferred:
        """Fires once the mirror has caught up with every ban and lift."""


def _family(address: str) -> tuple[str, str] | None:
    """(set name, address text) for an IP address, None for anything else.
    An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4
    peer) is IPv4 on the wire, so it goes into the IPv4 set."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "banned4", str(ip.ipv4_mapped)
        return "banned6", str(ip)
    return "banned4", str(ip)


@implementer(IBanMirror)
class KernelBans:
    """The nftables mirror of one limiter's bans.

    ``ports`` are the proxy's SIP ports (every transport: UDP, TCP and TLS
    are all dropped for a banned source), ``table`` the table's name.
    Call :meth:`start` before the first ban and :meth:`stop` at shutdown
    (the Deferred fires once the table is gone)."""

    def __init__(
        self,
        clock: IReactorTime,
        runner: ICommandRunner,
        table: str,
        ports: Iterable[int],
        nft: str = "nft",
        log: Logger | None = None,
        counter_interval: float = COUNTER_INTERVAL,
    ) -> None:
        self.clock = clock
        self.runner = runner
        self.table = table
        self.ports = sorted(set(int(p) for p in ports))
        self.nft = nft
        self.log = log or Logger()
        self.counter_interval = counter_interval
        #: "off" (not started), "starting", "on", "failed", "stopped"
        self.state = "off"
        self.failure: str | None = None
        #: packets the kernel dropped from banned sources (as last read)
        self.dropped_packets = 0
        #: elements added and deleted (commands sent, not confirmed)
        self.added = 0
        self.deleted = 0
        self._pending: list[str] = []
        self._running = False
        self._flush_call: IDelayedCall | None = None
        self._counter_call: IDelayedCall | None = None
        self._reading = False
        self._idle: list[defer.Deferred] = []
        # The table exists (the setup batch ran): stop, or a failure, deletes it.
        self._made = False

    # -- the nft text (pure; unit tests read it)

    def setup_commands(self) -> list[str]:
        """Replace any table of this name (a crash's leftover) with an
        empty one: ``add`` then ``delete`` cannot fail whether it existed."""
        t = f"inet {self.table}"
        ports = ", ".join(str(p) for p in self.ports)
        match = f"meta l4proto {{ tcp, udp }} th dport {{ {ports} }} counter name \"dropped\" drop"
        return [
            f"add table {t}",
            f"delete table {t}",
            f"add table {t}",
            f"add counter {t} dropped",
            f"add set {t} banned4 {{ type ipv4_addr; flags timeout; }}",
            f"add set {t} banned6 {{ type ipv6_addr; flags timeout; }}",
            f"add chain {t} input {{ type filter hook prerouting priority -300; policy accept; }}",
            f"add rule {t} input ip saddr @banned4 {match}",
            f"add rule {t} input ip6 saddr @banned6 {match}",
        ]

    def teardown_commands(self) -> list[str]:
        return [f"add table inet {self.table}", f"delete table inet {self.table}"]

    def ban_commands(self, address: str, seconds: float) -> list[str]:
        """Put ``address`` in its set for ``seconds``; an element already
        there (a ban made again before the kernel's copy ran out) gets the
        new timeout, since ``add`` alone would keep the old one.  The first
        ``add`` makes sure the ``delete`` has something to delete (a failed
        command would undo the whole batch)."""
        family = _family(address)
        if family is None:
            return []
        name, ip = family
        ms = max(1000, int(math.ceil(seconds * 1000)))
        where = f"element inet {self.table} {name}"
        return [f"add {where} {{ {ip} timeout 1s }}", f"delete {where} {{ {ip} }}", f"add {where} {{ {ip} timeout {ms}ms }}"]

    def unban_commands(self, address: str) -> list[str]:
        family = _family(address)
        if family is None:
            return []
        name, ip = family
        where = f"element inet {self.table} {name}"
        return [f"add {where} {{ {ip} timeout 1s }}", f"delete {where} {{ {ip} }}"]

    # -- life cycle

    def start(self) -> defer.Deferred:
        """Make the table; fires with whether it worked (a failure is logged
        and leaves the mirror off; the in-process bans are unaffected)."""
        self.state = "starting"
        self._pending[:0] = self.setup_commands()
        self._schedule()
        d = self.idle()
        d.addCallback(lambda _: self.state == "on")
        return d

    def stop(self) -> defer.Deferred:
        """Delete the table (and with it every element); fires when done."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._counter_call is not None and self._counter_call.active():
            self._counter_call.cancel()
        self._counter_call = None
        was = self.state
        self.state = "stopped"
        self._pending = []
        if was not in ("on", "starting") and not self._made:
            return defer.succeed(None)
        d = self.idle()
        d.addCallback(lambda _: self._teardown())
        return d

    def _teardown(self) -> defer.Deferred:
        self._made = False
        done = self.runner.run([self.nft, "-f", "-"], self._text(self.teardown_commands()))
        done.addCallback(self._torn_down)
        return done

    def _torn_down(self, result: RunResult) -> None:
        if result.code != 0:
            self.log.warn("kernel bans: could not delete nft table {table}: {err}", table=self.table,
                          err=_first_line(result.err))
        else:
            self.log.info("kernel bans: nft table {table} deleted", table=self.table)

    def idle(self) -> defer.Deferred:
        """Fires once every queued command has run (tests, stop)."""
        if not self._running and not self._pending:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        return d

    # -- the limiter's listeners

    def banned(self, ban: Any) -> None:
        if self.state not in ("on", "starting"):
            return
        seconds = float(ban.until) - self.clock.seconds()
        if seconds <= 0:
            return
        commands = self.ban_commands(ban.address, seconds)
        if commands:
            self.added += 1
            self._queue(commands)

    def lifted(self, address: str, why: str) -> None:
        """Only an early lift needs the kernel: an expired ban's element has
        timed out there already (it was added a moment after the ban)."""
        if self.state not in ("on", "starting") or why == "expired":
            return
        commands = self.unban_commands(address)
        if commands:
            self.deleted += 1
            self._queue(commands)

    def report(self) -> dict[str, object]:
        """``GET /limits``'s ``kernel`` object; asks for a fresh counter."""
        self.read_counter()
        return {"state": self.state, "table": self.table, "dropped_packets": self.dropped_packets,
                **({"failure": self.failure} if self.failure else {})}

    # -- running nft

    def _queue(self, commands: list[str]) -> None:
        if len(self._pending) + len(commands) > MAX_PENDING:
            return  # the in-process ban holds; the kernel catches up on the next ones
        self._pending.extend(commands)
        self._schedule()

    def _schedule(self) -> None:
        if self._running or (self._flush_call is not None and self._flush_call.active()):
            return
        # callLater(0): every ban made in this reactor turn goes in one batch.
        self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        if self._running or not self._pending:
            self._wake()
            return
        batch, self._pending = self._pending, []
        self._running = True
        d = self.runner.run([self.nft, "-f", "-"], self._text(batch))
        d.addCallback(self._ran, batch)
        d.addErrback(lambda f: self._ran(RunResult(None, b"", str(f.value).encode()), batch))

    def _ran(self, result: RunResult, batch: list[str]) -> None:
        self._running = False
        if self.state == "stopped":
            self._wake()
            return
        if result.code == 0:
            if self.state == "starting":
                self.state, self._made = "on", True
                self.log.info("kernel bans: banned sources are dropped by nft table inet {table} (ports {ports})",
                              table=self.table, ports=", ".join(map(str, self.ports)))
                self._counter_call = self.clock.callLater(self.counter_interval, self._tick)
        else:
            # Logged once: the mirror turns itself off, the process bans stay.
            self.failure = _first_line(result.err) or f"nft exited with {result.code}"
            self.log.warn("kernel bans: nft failed ({failure}); banned sources are dropped by the process only "
                          "from now on", failure=self.failure)
            self.state = "failed"
            self._pending = []
            if self._made:
                # The kernel must not keep a ban the process may lift: the
                # table goes (its elements with it), the process bans stay.
                self._running = True
                self._teardown().addBoth(self._teardown_done)
                return
        if self._pending and self.state in ("on", "starting"):
            self._schedule()
        else:
            self._wake()

    def _teardown_done(self, result: object) -> None:
        self._running = False
        self._wake()

    def _wake(self) -> None:
        if self._running or self._pending:
            return
        waiters, self._idle = self._idle, []
        for d in waiters:
            if not d.called:  # a waiter that gave up (a timeout) was cancelled
                d.callback(None)

    @staticmethod
    def _text(commands: Sequence[str]) -> bytes:
        return ("\n".join(commands) + "\n").encode()

    # -- the drop counter

    def _tick(self) -> None:
        self._counter_call = None
        if self.state != "on":
            return
        self.read_counter()
        self._counter_call = self.clock.callLater(self.counter_interval, self._tick)

    def read_counter(self) -> None:
        """Ask nft for the drop counter (at most one read at a time)."""
        if self.state != "on" or self._reading:
            return
        self._reading = True
        d = self.runner.run([self.nft, "-j", "list", "counter", "inet", self.table, "dropped"], b"")
        d.addCallback(self._counted)
        d.addBoth(self._read_done)

    def _read_done(self, result: object) -> None:
        self._reading = False

    def _counted(self, result: RunResult) -> None:
        if result.code != 0:
            return
        packets = counter_packets(result.out)
        if packets is not None:
            self.dropped_packets = packets


def counter_packets(json_text: bytes) -> int | None:
    """The packets of the first counter in ``nft -j list counter`` output."""
    try:
        doc = json.loads(json_text)
        for item in doc.get("nftables", []):
            if "counter" in item:
                return int(item["counter"]["packets"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def _first_line(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""
