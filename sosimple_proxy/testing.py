"""Helpers for tests of sosimple-proxy, ours and our users'.

As ``treq.testing`` does for treq, this module holds what a test needs to
drive the proxy from outside:

- :func:`free_port` / :func:`free_ports`: loopback ports nobody listens on;
- :class:`ProxyProcess`: the proxy under ``twistd`` in a subprocess, with
  its own ``site.ini`` in a temporary directory, started once it answers
  an OPTIONS, stopped with SIGTERM then SIGKILL;
- :func:`run_sipp` / :func:`start_sipp`: SIPp with the options that make it
  behave on loopback (``shared/peers.md``).

Everything here is blocking and uses the standard library only (no
reactor), so it works from plain pytest tests and from trial tests alike.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import attrs

__all__ = [
    "free_port",
    "free_ports",
    "ProxyProcess",
    "ProxyStartError",
    "PeerProcess",
    "options_request",
    "sip_options_ping",
    "SIPP",
    "SIPP_BUILTIN_SCENARIOS",
    "SIPP_OPTIONS_SCENARIO",
    "SIPP_OPTIONS_SCENARIO_TEMPLATE",
    "SippResult",
    "SippProcess",
    "sipp_command",
    "start_sipp",
    "run_sipp",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

# Ports handed out by this process recently: the kernel may give the same
# ephemeral port twice in a row, and two helpers must not collide.
_given: set[tuple[str, int]] = set()


def _bind(kind: int, family: int, host: str, port: int) -> socket.socket | None:
    s = socket.socket(family, kind)
    try:
        s.bind((host, port))
        return s
    except OSError:
        s.close()
        return None


def free_port(transport: str = "udp", host: str = "127.0.0.1") -> int:
    """A port on ``host`` that is free right now for ``transport``.

    ``transport`` is ``udp``, ``tcp`` (or ``tls``), or ``both``: a port free
    for UDP and TCP at once, as the default ``site.ini`` listens on both with
    one number.  There is a window between this and the real bind; tests
    live with it (a clash shows as a clear "could not bind" error).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport = "tcp" if transport == "tls" else transport
    if transport not in ("udp", "tcp", "both"):
        raise ValueError(f"transport must be udp, tcp or both, not {transport!r}")
    for _ in range(200):
        first = _bind(socket.SOCK_STREAM if transport != "udp" else socket.SOCK_DGRAM, family, host, 0)
        if first is None:
            raise OSError(f"cannot bind anything on {host}")
        port = first.getsockname()[1]
        held = [first]
        try:
            if transport == "both":
                other = _bind(socket.SOCK_DGRAM, family, host, port)
                if other is None:
                    continue
                held.append(other)
            if (host, port) in _given:
                continue
            _given.add((host, port))
            return port
        finally:
            for s in held:
                s.close()
    raise OSError(f"no free {transport} port found on {host}")


def free_ports(n: int, transport: str = "udp", host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (see :func:`free_port`)."""
    return [free_port(transport, host) for _ in range(n)]


def options_request(host: str, port: int, via_host: str, via_port: int, transport: str = "UDP") -> bytes:
    """An OPTIONS addressed to the proxy itself (no user part), for probing."""
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    vhp = f"[{via_host}]:{via_port}" if ":" in via_host else f"{via_host}:{via_port}"
    tag = secrets.token_hex(6)
    return (
        f"OPTIONS sip:{hp} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {vhp};branch=z9hG4bK-{secrets.token_hex(8)};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:probe@{vhp}>;tag={tag}\r\n"
        f"To: <sip:{hp}>\r\n"
        f"Call-ID: probe-{tag}@{vhp}\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Accept: application/sdp\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def sip_options_ping(host: str, port: int, timeout: float = 1.0) -> bytes | None:
    """Send one OPTIONS over UDP; the response bytes, or None if none came."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.settimeout(timeout)
        s.sendto(options_request(host, port, host, s.getsockname()[1]), (host, port))
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = s.recv(65536)
            except (socket.timeout, ConnectionRefusedError):
                return None
            if data.startswith(b"SIP/2.0 "):
                return data
            if time.monotonic() >= deadline:
                return None


class ProxyStartError(Exception):
    """The proxy did not come up; the message ends with the tail of its logs."""


def _ini_text(sections: Mapping[str, Mapping[str, object]]) -> str:
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {v}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


class ProxyProcess:
    """The proxy under ``twistd -n`` as a subprocess, on free loopback ports.

    ``config`` is either a whole ``site.ini`` text, or sections that are
    merged over a default made for tests: SIP on one free port for UDP and
    TCP on 127.0.0.1, no overlay or admin listener, location ``local``.
    ``command`` replaces the twistd command line (its items are formatted
    with ``ini``, ``log``, ``host`` and ``port``), for testing this helper.

        with ProxyProcess({"proxy": {"domains": "example.com"}}) as proxy:
            run_sipp("uac", f"127.0.0.1:{proxy.port}", ...)
    """

    def __init__(
        self,
        config: str | Mapping[str, Mapping[str, object]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port("both", host)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sosimple-proxy-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ini_path = self.dir / "site.ini"
        self.log_path = self.dir / "twistd.log"
        self.output_path = self.dir / "output.txt"  # stdout and stderr: what comes before logging starts
        self._command = list(command) if command is not None else None
        self._env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_response: bytes | None = None
        self.returncode: int | None = None
        if isinstance(config, str):
            self.config_text = config
        else:
            self.config_text = _ini_text(self._merged(config or {}))
        self.ini_path.write_text(self.config_text, encoding="utf-8")

    def _merged(self, overrides: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
        hp = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        sections: dict[str, dict[str, object]] = {
            "proxy": {"listen": f"udp:{hp}, tcp:{hp}", "domains": "localhost"},
            "overlay": {"listen": ""},
            "admin": {"listen": ""},
            "location": {"order": "local"},
        }
        for name, keys in overrides.items():
            sections.setdefault(name, {}).update(keys)
        return sections

    @property
    def udp_address(self) -> tuple[str, int]:
        """Where the readiness OPTIONS goes: the first UDP listen address in the
        config if it can be read, else ``(host, port)``."""
        try:
            from sosimple_proxy.config import parse_config

            for a in parse_config(self.config_text, str(self.ini_path)).proxy["listen"]:
                if a.transport == "udp":
                    return a.host, a.port
        except Exception:
            pass
        return self.host, self.port

    def probe(self) -> bytes | None:
        """One readiness check: the answer, or None while the proxy is not ready."""
        host, port = self.udp_address
        return sip_options_ping(host, port, timeout=0.25)

    def probe_description(self) -> str:
        host, port = self.udp_address
        return f"OPTIONS on udp {host}:{port}"

    def argv(self) -> list[str]:
        if self._command is not None:
            fmt = {"ini": str(self.ini_path), "log": str(self.log_path), "host": self.host, "port": self.port}
            return [part.format(**fmt) for part in self._command]
        # `python -m twisted` is `twist`, which has no -n/--pidfile; this is twistd.
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "-l",
            str(self.log_path),
            "sosimple-proxy",
            "-c",
            str(self.ini_path),
        ]

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self._env)
        return env

    # -- life cycle

    def start(self) -> ProxyProcess:
        """Start, and return once the proxy answers an OPTIONS over UDP.

        Raises :class:`ProxyStartError` (with the log tail) if it exits or
        stays silent for ``startup_timeout`` seconds.
        """
        if self.process is not None:
            raise RuntimeError("already started")
        out = open(self.output_path, "wb")
        try:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=self.dir,
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run is not sent to it twice
            )
        finally:
            out.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            rc = self.process.poll()
            if rc is not None:
                self.returncode = rc
                raise ProxyStartError(
                    f"proxy exited with status {rc} before answering {self.probe_description()}\n{self.log_tail()}"
                )
            t0 = time.monotonic()
            answer = self.probe()
            if answer is None:
                # ICMP "port unreachable" makes a probe fail at once: do not
                # spin while the process is still importing.
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
            else:
                self.ready_response = answer
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ProxyStartError(
                    f"proxy did not answer {self.probe_description()} within {self.startup_timeout:g}s\n{self.log_tail()}"
                )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; the exit status.  Idempotent."""
        p = self.process
        if p is None:
            return self.returncode
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                p.wait()
        self.returncode = p.returncode
        return self.returncode

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        """Stop, and remove the temporary directory if this helper made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ProxyProcess:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the twistd log and of the process's own output."""
        parts = []
        for label, path in (("output", self.output_path), ("twistd.log", self.log_path)):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            if text.strip():
                tail = "\n".join(text.rstrip("\n").splitlines()[-lines:])
                parts.append(f"--- {label} ({path}) ---\n{tail}")
        return "\n".join(parts) or "(no output)"


class PeerProcess(ProxyProcess):
    """A ring member with no SIP (a storage peer) under ``twistd``.

    Listens for the overlay and the admin API on free loopback ports, keeps
    its state under ``overlay/`` in its directory, and counts as started
    once ``GET /health`` answers 200 (it has joined the ring).  ``bootstrap``
    is a list of ``host:port`` overlay addresses; ``overlay`` adds keys to
    ``[overlay]`` (``stabilize_interval``, ``replicas``...).

        first = PeerProcess(overlay={"stabilize_interval": 0.3}).start()
        second = PeerProcess(bootstrap=[first.overlay_address]).start()
        urllib.request.urlopen(second.admin_url + "/ring")

    ``restart()`` stops it (SIGTERM: it leaves the ring gracefully) and
    starts it again on the same ports and state directory.
    """

    def __init__(
        self,
        config: str | Mapping[str, Mapping[str, object]] | None = None,
        *,
        bootstrap: Sequence[str] = (),
        overlay: Mapping[str, object] | None = None,
        host: str = "127.0.0.1",
        overlay_port: int | None = None,
        admin_port: int | None = None,
        **kw: object,
    ) -> None:
        self.overlay_port = overlay_port if overlay_port is not None else free_port("tcp", host)
        self.admin_port = admin_port if admin_port is not None else free_port("tcp", host)
        self._bootstrap = list(bootstrap)
        self._overlay = dict(overlay or {})
        super().__init__(config, host=host, port=0, **kw)  # type: ignore[arg-type]

    def _merged(self, overrides: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
        iface = f"interface={self.host.replace(':', chr(92) + ':')}"
        sections: dict[str, dict[str, object]] = {
            "proxy": {"listen": "", "domains": "localhost"},
            "overlay": {
                "listen": f"tcp:{self.overlay_port}:{iface}",
                "bootstrap": " ".join(self._bootstrap),
                "state_dir": "overlay",
                **self._overlay,
            },
            "admin": {"listen": f"tcp:{self.admin_port}:{iface}"},
            "location": {"order": "local"},
        }
        for name, keys in overrides.items():
            sections.setdefault(name, {}).update(keys)
        return sections

    @property
    def overlay_address(self) -> str:
        """``host:port`` of the overlay listener, for another peer's ``bootstrap``."""
        return f"[{self.host}]:{self.overlay_port}" if ":" in self.host else f"{self.host}:{self.overlay_port}"

    @property
    def admin_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.admin_port}"

    def probe(self) -> bytes | None:
        import http.client

        conn = http.client.HTTPConnection(self.host, self.admin_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = response.read()
            return body if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def probe_description(self) -> str:
        return f"GET {self.admin_url}/health with 200"

    def kill(self) -> None:
        """SIGKILL: a crash, nothing handed over."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.returncode = self.process.returncode if self.process is not None else None

    def restart(self) -> PeerProcess:
        """Stop, then start again on the same ports and state directory."""
        self.stop()
        self.process = None
        return self.start()  # type: ignore[return-value]


# --- SIPp

SIPP = shutil.which("sipp")
SIPP_BUILTIN_SCENARIOS = frozenset(
    {"uac", "uas", "regexp", "3pcc-C-A", "3pcc-C-B", "3pcc-A", "3pcc-B", "branchc", "branchs", "uac_pcap"}
)

# One OPTIONS to the proxy itself (no user part), expecting ``expected`` (200
# by default: format the text with ``expected=...`` for another status).
SIPP_OPTIONS_SCENARIO_TEMPLATE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="OPTIONS to the proxy">
  <send retrans="500">
    <![CDATA[
OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 OPTIONS
Max-Forwards: 70
Accept: application/sdp
Content-Length: 0

    ]]>
  </send>
  <recv response="{expected}"/>
</scenario>
"""
SIPP_OPTIONS_SCENARIO = SIPP_OPTIONS_SCENARIO_TEMPLATE.format(expected=200)


@attrs.frozen
class SippResult:
    """How a SIPp run ended: exit status 0 only if every call succeeded,
    1 if one failed, 255 when its ``-timeout`` ended it (run_sipp passes
    ``-timeout_error``; without it SIPp says 97), 254 if it could not bind;
    -9 if we had to kill it."""

    returncode: int
    stdout: str
    stderr: str
    args: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def __str__(self) -> str:
        return f"sipp exit {self.returncode}: {' '.join(self.args)}\n--- stderr ---\n{self.stderr[-3000:]}"


def sipp_command(
    scenario: str,
    *args: str,
    calls: int | None = 1,
    timeout: float = 30.0,
    local_ip: str = "127.0.0.1",
    buff_size: int = 4194304,
    workdir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The SIPp command line: ``scenario`` is a built-in name (``uac``,
    ``uas``...), a path to an XML file, or XML text (written to ``workdir``)."""
    if SIPP is None:
        raise FileNotFoundError("sipp is not installed (Debian package sip-tester)")
    if scenario in SIPP_BUILTIN_SCENARIOS:
        chosen = ["-sn", scenario]
    elif scenario.lstrip().startswith("<"):
        where = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sipp-"))
        path = where / f"scenario-{secrets.token_hex(4)}.xml"
        path.write_text(scenario, encoding="utf-8")
        chosen = ["-sf", str(path)]
    elif os.path.exists(scenario):
        chosen = ["-sf", str(scenario)]
    else:
        raise ValueError(f"{scenario!r} is neither a built-in SIPp scenario, an XML file nor XML text")
    cmd = [SIPP, *chosen, "-i", local_ip, "-buff_size", str(buff_size), "-nostdin"]
    if calls is not None:
        cmd += ["-m", str(calls)]
    # -timeout_error: without it SIPp waits for calls in progress after its
    # -timeout (a retransmitting UAC runs on), and an idle UAS exits 97.
    cmd += ["-timeout", f"{max(1, int(round(timeout)))}s", "-timeout_error"]
    return cmd + list(args)


class SippProcess:
    """A SIPp started in the background (a UAS, usually); :meth:`wait` for it."""

    def __init__(self, cmd: list[str], timeout: float, workdir: Path, own_dir: bool) -> None:
        self.args = tuple(cmd)
        self.timeout = timeout
        self.dir = workdir
        self._own_dir = own_dir
        self._out = workdir / f"sipp-{secrets.token_hex(4)}.out"
        self._err = self._out.with_suffix(".err")
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            # Files, not pipes: a chatty SIPp must never block on a full pipe.
            self.process = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def wait(self, grace: float = 10.0) -> SippResult:
        """Wait for it to end by itself (its own ``-timeout`` plus ``grace``), else kill it."""
        try:
            rc = self.process.wait(self.timeout + grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            rc = -9
        return self._result(rc)

    def kill(self) -> SippResult:
        if self.process.poll() is None:
            self.process.kill()
        return self._result(self.process.wait())

    def _result(self, rc: int) -> SippResult:
        read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""  # noqa: E731
        result = SippResult(rc, read(self._out), read(self._err), self.args)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return result


def start_sipp(
    scenario: str,
    *args: str,
    calls: int | None = 1,
    timeout: float = 30.0,
    local_ip: str = "127.0.0.1",
    buff_size: int = 4194304,
    workdir: str | os.PathLike[str] | None = None,
) -> SippProcess:
    """Start SIPp without waiting (see :func:`run_sipp` for the arguments)."""
    own = workdir is None
    where = Path(tempfile.mkdtemp(prefix="sipp-")) if own else Path(workdir)  # type: ignore[arg-type]
    cmd = sipp_command(
        scenario, *args, calls=calls, timeout=timeout, local_ip=local_ip, buff_size=buff_size, workdir=where
    )
    return SippProcess(cmd, timeout, where, own)


def run_sipp(
    scenario: str,
    *args: str,
    calls: int | None = 1,
    timeout: float = 30.0,
    local_ip: str = "127.0.0.1",
    buff_size: int = 4194304,
    workdir: str | os.PathLike[str] | None = None,
) -> SippResult:
    """Run SIPp to the end and return its exit status and output.

    Adds what loopback tests need (``shared/peers.md``): ``-i 127.0.0.1``
    so Via/Contact/SDP name loopback, ``-buff_size 4194304``, ``-m calls``,
    ``-timeout`` with ``-timeout_error`` (the run ends at the timeout, with
    status 255, even with calls in progress) and ``-nostdin``; ``args`` follow, e.g. ``"127.0.0.1:5060"``,
    ``"-t", "t1"``, ``"-p", str(port)``.  SIPp is killed if it overruns its
    own timeout by 10 s.
    """
    return start_sipp(
        scenario, *args, calls=calls, timeout=timeout, local_ip=local_ip, buff_size=buff_size, workdir=workdir
    ).wait()


# --- baresip

import json  # noqa: E402
import re  # noqa: E402

BARESIP = shutil.which("baresip")
BARESIP_MODULE_PATH = "/usr/lib/baresip/modules"

__all__ += ["BARESIP", "Baresip", "BaresipError", "SipTraceEntry", "baresip_port"]


class BaresipError(Exception):
    """baresip did not start, register, answer or quit; the message ends with its log tail."""


def baresip_port(host: str = "127.0.0.1") -> int:
    """A SIP port for baresip: free for UDP and TCP, with the next port free for
    TCP too (baresip listens for TLS on ``sip_listen`` + 1)."""
    for _ in range(100):
        port = free_port("both", host)
        if port < 65535:
            s = _bind(socket.SOCK_STREAM, socket.AF_INET6 if ":" in host else socket.AF_INET, host, port + 1)
            if s is not None:
                s.close()
                _given.add((host, port + 1))
                return port
    raise OSError(f"no free port pair for baresip on {host}")


@attrs.frozen
class SipTraceEntry:
    """One SIP message of baresip's ``-s`` trace.  ``incoming`` is true for
    what baresip received (see :meth:`Baresip.sip_trace`)."""

    transport: str
    src: str
    dst: str
    text: str
    incoming: bool

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].rstrip("\r")

    @property
    def method(self) -> str | None:
        """The request method, or None for a response."""
        word = self.first_line.split(" ", 1)[0]
        return None if word == "SIP/2.0" else word

    @property
    def status(self) -> int | None:
        parts = self.first_line.split(" ", 2)
        return int(parts[1]) if parts[0] == "SIP/2.0" and len(parts) > 1 and parts[1].isdigit() else None

    @property
    def cseq_method(self) -> str | None:
        for line in self.text.splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "cseq":
                return value.split()[-1] if value.split() else None
        return None

    @property
    def body(self) -> str:
        for sep in ("\r\n\r\n", "\n\n"):
            if sep in self.text:
                return self.text.split(sep, 1)[1]
        return ""


class Baresip:
    """A headless baresip (``shared/peers.md``) registered with a proxy,
    driven over its ``ctrl_tcp`` module.

    The config, accounts and contacts files are written to a temporary
    directory; baresip runs as ``baresip -f DIR -s`` (with the SIP trace)
    with stdin from /dev/null and its output in ``DIR/baresip.log``.
    :meth:`start` returns once the log shows the registration's ``200 OK``;
    :meth:`stop` sends ``quit`` (baresip unregisters) and kills it after
    ``stop_timeout``.

        with ProxyProcess({"proxy": {"domains": "example.com"}}) as proxy, \\
             Baresip("bob", proxy.port) as bob, \\
             Baresip("alice", proxy.port, contacts=["sip:bob@example.com"]) as alice:
            alice.dial("sip:bob@example.com")
            alice.wait_event("CALL_ESTABLISHED")
            bob.wait_event("CALL_ESTABLISHED")

    ``transport`` (``udp`` or ``tcp``) goes into the outbound URI.  Audio
    comes from ``ausine`` and goes to an ``aubridge`` device nobody reads:
    signalling is real, media is a sine wave.  Every wait is bounded and
    raises :class:`BaresipError` with the log tail.
    """

    def __init__(
        self,
        user: str,
        proxy_port: int,
        *,
        proxy_host: str = "127.0.0.1",
        domain: str = "example.com",
        transport: str = "udp",
        contacts: Sequence[str] = (),
        answermode: str = "auto",
        password: str = "x",
        regint: int = 600,
        account_params: str = "",
        extra_config: Sequence[str] = (),
        host: str = "127.0.0.1",
        sip_port: int | None = None,
        ctrl_port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        register: bool = True,
        startup_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        binary: str | None = None,
    ) -> None:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, not {transport!r}")
        self.user = user
        self.domain = domain
        self.transport = transport
        self.host = host
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.sip_port = sip_port if sip_port is not None else baresip_port(host)
        self.ctrl_port = ctrl_port if ctrl_port is not None else free_port("tcp", host)
        self.register = register
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.binary = binary or BARESIP
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"baresip-{user}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "baresip.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.events: list[dict] = []
        self._consumed: set[int] = set()
        self._responses: dict[str, dict] = {}
        self._sock: socket.socket | None = None
        self._buf = b""
        self._tokens = 0

        def hp(h: str, p: int) -> str:
            return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

        self.sip_address = hp(host, self.sip_port)
        self.proxy_address = hp(proxy_host, proxy_port)
        device = f"{user}-{secrets.token_hex(3)}"
        config = [
            f"sip_listen {self.sip_address}",
            f"net_interface {host}",  # "lo" does not work; without it baresip advertises eth0
            "audio_source ausine,440",
            "ausrc_srate 48000",  # ausine: 48 kHz, 2 channels only
            "ausrc_channels 2",
            "auplay_srate 48000",
            f"audio_player aubridge,{device}",
            f"audio_alert aubridge,{device}",
            f"module_path {BARESIP_MODULE_PATH}",
            "module g711.so",
            "module ausine.so",
            "module aubridge.so",
            "module_tmp account.so",
            "module_app contact.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {hp(host, self.ctrl_port)}",
            *extra_config,
        ]
        outbound = f"sip:{self.proxy_address}" + (";transport=tcp" if transport == "tcp" else "")
        account = f'<sip:{user}@{domain}>;auth_pass={password};outbound="{outbound}";answermode={answermode}'
        account += f";regint={regint}" if register else ";regint=0"
        account += account_params
        self.config_text = "\n".join(config) + "\n"
        self.accounts_text = account + "\n"
        self.contacts_text = "".join(f"<{c}>\n" if not c.lstrip().startswith(("<", '"')) else f"{c}\n" for c in contacts)
        (self.dir / "config").write_text(self.config_text, encoding="utf-8")
        (self.dir / "accounts").write_text(self.accounts_text, encoding="utf-8")
        (self.dir / "contacts").write_text(self.contacts_text, encoding="utf-8")

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    # -- life cycle

    def start(self) -> Baresip:
        """Start baresip; return once registered (if ``register``) and the
        control connection is up.  On failure it is stopped and
        :class:`BaresipError` raised."""
        if self.process is not None:
            raise RuntimeError("already started")
        if self.binary is None:
            raise FileNotFoundError("baresip is not installed (Debian package baresip)")
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [self.binary, "-f", str(self.dir), "-s"],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            if self.register:
                self.wait_registered(max(0.0, deadline - time.monotonic()))
            self._connect(deadline)
        except BaseException:
            self.kill()  # nothing to unregister: no quit, no waiting
            raise
        return self

    def stop(self) -> int | None:
        """``quit`` over the control connection, then SIGKILL after
        ``stop_timeout``; the exit status.  Idempotent; never raises for a
        baresip that is already gone."""
        p = self.process
        if p is None:
            return self.returncode
        if p.poll() is None:
            try:
                if self._sock is None:
                    self._connect(time.monotonic() + 1.0)
                self._send("quit")
            except (OSError, BaresipError):
                pass
            try:
                p.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._close()
        self.returncode = p.returncode
        return self.returncode

    def kill(self) -> None:
        """SIGKILL: gone without unregistering."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()
        self.returncode = self.process.returncode if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        """Stop, and remove the directory if this helper made it."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Baresip:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- the log

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        text = _strip_ansi(self.log_text()).rstrip("\n")
        return f"--- baresip {self.user} ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _fail(self, what: str) -> BaresipError:
        rc = self.process.poll() if self.process is not None else None
        state = f" (baresip exited with status {rc})" if rc is not None else ""
        return BaresipError(f"baresip {self.user}: {what}{state}\n{self.log_tail()}")

    def wait_log(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first match of the regular expression ``pattern`` in the log
        (colour codes removed) from character ``start`` on, waiting up to ``timeout``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(_strip_ansi(self.log_text()), start)
            if m is not None:
                return m
            if self.process is not None and self.process.poll() is not None:
                raise self._fail(f"exited before the log showed {pattern!r}")
            if time.monotonic() >= deadline:
                raise self._fail(f"the log did not show {pattern!r} within {timeout:g}s")
            time.sleep(0.05)

    def registrations(self) -> list[tuple[int, str, int | None]]:
        """Every registration answer in the log, in order: ``(status, reason,
        bindings)``, e.g. ``(200, "OK", 1)``; bindings is None for a failure."""
        ok = re.compile(
            rf"^{re.escape(self.user)}@{re.escape(self.domain)}: \{{\d+/\w+/v[46]\}} (\d{{3}}) (.*?) \(.*?\) \[(\d+) bindings?\]",
            re.M,
        )
        bad = re.compile(
            rf"^reg: sip:{re.escape(self.user)}@{re.escape(self.domain)}: (?:(\d{{3}}) )?(.*?)(?: \(.*\))?$", re.M
        )
        found: list[tuple[int, tuple[int, str, int | None]]] = []
        text = _strip_ansi(self.log_text())
        for m in ok.finditer(text):
            found.append((m.start(), (int(m.group(1)), m.group(2), int(m.group(3)))))
        for m in bad.finditer(text):
            found.append((m.start(), (int(m.group(1) or 0), m.group(2).strip(), None)))
        return [r for _, r in sorted(found)]

    def wait_registered(self, timeout: float = 15.0) -> tuple[int, str, int | None]:
        """Wait for the first registration answer: the ``(200, "OK", n)`` of
        :meth:`registrations`; a failure raises at once."""
        deadline = time.monotonic() + timeout
        while True:
            regs = self.registrations()
            if regs:
                if regs[0][0] // 100 == 2 and regs[0][2] is not None:
                    return regs[0]
                raise self._fail(f"registration failed: {regs[0][0]} {regs[0][1]}")
            if self.process is not None and self.process.poll() is not None:
                raise self._fail("exited before registering")
            if time.monotonic() >= deadline:
                raise self._fail(f"not registered within {timeout:g}s")
            time.sleep(0.05)

    def sip_trace(self) -> list[SipTraceEntry]:
        """The SIP messages of the ``-s`` trace.  A message counts as received
        when it comes from the outbound proxy or goes to our ``sip_listen``
        address (over TCP, baresip's end of a connection is an ephemeral port)."""
        entries = []
        text = self.log_text()
        for m in _TRACE_RE.finditer(text):
            transport, src, dst, body = m.groups()
            incoming = dst != self.proxy_address and (src == self.proxy_address or dst == self.sip_address)
            entries.append(SipTraceEntry(transport, src, dst, body, incoming))
        return entries

    def received(self, method: str | None = None) -> list[SipTraceEntry]:
        """Requests received (all of them, or those of one method)."""
        return [e for e in self.sip_trace() if e.incoming and e.method is not None and method in (None, e.method)]

    def wait_received(self, method: str, contains: str = "", timeout: float = 15.0) -> SipTraceEntry:
        """The first received ``method`` request whose text contains ``contains``."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.received(method):
                if contains in e.text:
                    return e
            if time.monotonic() >= deadline:
                raise self._fail(f"no {method} containing {contains!r} received within {timeout:g}s")
            time.sleep(0.05)

    # -- ctrl_tcp

    def _connect(self, deadline: float) -> None:
        while True:
            try:
                self._sock = socket.create_connection((self.host, self.ctrl_port), timeout=1.0)
                return
            except OSError:
                if self.process is not None and self.process.poll() is not None:
                    raise self._fail("exited before its control port answered")
                if time.monotonic() >= deadline:
                    raise self._fail(f"control port {self.ctrl_port} did not answer")
                time.sleep(0.05)

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _send(self, command: str, params: str = "") -> str:
        if self._sock is None:
            raise BaresipError(f"baresip {self.user}: not connected")
        self._tokens += 1
        token = f"t{self._tokens}"
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._sock.sendall(b"%d:%s," % (len(data), data))
        return token

    def _read(self, deadline: float) -> bool:
        """Read what is there (until ``deadline``) and file the netstrings; False on timeout."""
        assert self._sock is not None
        self._sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self._sock.recv(65536)
        except socket.timeout:
            return False
        if not chunk:
            self._close()
            raise self._fail("closed the control connection")
        self._buf += chunk
        while True:
            colon = self._buf.find(b":")
            if colon < 0:
                break
            length = int(self._buf[:colon])
            end = colon + 1 + length
            if len(self._buf) < end + 1:
                break
            message = json.loads(self._buf[colon + 1 : end])
            self._buf = self._buf[end + 1 :]
            if message.get("event"):
                self.events.append(message)
            elif message.get("response"):
                self._responses[str(message.get("token"))] = message
        return True

    def command(self, command: str, params: str = "", timeout: float = 15.0) -> dict:
        """Send one ``ctrl_tcp`` command and return its response
        (``{"response": true, "ok": ..., "data": ...}``)."""
        token = self._send(command, params)
        deadline = time.monotonic() + timeout
        while token not in self._responses:
            if time.monotonic() >= deadline:
                raise self._fail(f"no answer to {command} {params} within {timeout:g}s")
            self._read(deadline)
        return self._responses.pop(token)

    def _checked(self, command: str, params: str = "", timeout: float = 15.0) -> dict:
        r = self.command(command, params, timeout)
        if not r.get("ok"):
            raise self._fail(f"{command} {params} failed: {r.get('data')!r}")
        return r

    def dial(self, uri: str, timeout: float = 15.0) -> dict:
        return self._checked("dial", uri, timeout)

    def hangup(self, timeout: float = 15.0) -> dict:
        return self._checked("hangup", "", timeout)

    def accept(self, timeout: float = 15.0) -> dict:
        return self._checked("accept", "", timeout)

    def message(self, text: str, timeout: float = 15.0) -> dict:
        """Send ``text`` as a MESSAGE to the current contact (the first line of
        ``contacts``; ``contact_next`` moves on)."""
        return self._checked("message", text, timeout)

    def wait_event(self, type: str, timeout: float = 15.0, **fields: str) -> dict:
        """The first event of ``type`` (with the given field values, e.g.
        ``direction="incoming"``) not returned before, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if i not in self._consumed and e.get("type") == type and all(e.get(k) == v for k, v in fields.items()):
                    self._consumed.add(i)
                    return e
            if self._sock is None:
                raise self._fail(f"no control connection while waiting for {type}")
            if time.monotonic() >= deadline:
                got = [e.get("type") for e in self.events]
                raise self._fail(f"no {type} event within {timeout:g}s (events so far: {got})")
            self._read(deadline)


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_TRACE_RE = re.compile(r"\x1b\[36;1m#\n(\w+) (\S+) -> (\S+)\n(.*?)\x1b\[;m", re.S)


def _strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)
