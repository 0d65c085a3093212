"""The proxy, or a storage-only ring member, under ``twistd`` in a subprocess.

Each runs with its own ``site.ini`` in a temporary directory on free
loopback ports, counts as started once it answers (an OPTIONS, or
``GET /health``), and is stopped with SIGTERM then SIGKILL.  When it was
given ports it chose itself and it could not bind one (another program took
it in the meantime), :meth:`ProxyProcess.start` tries again on fresh ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from sosimple_proxy.testing.managed import ManagedProcess
from sosimple_proxy.testing.ports import free_port, is_address_in_use
from sosimple_proxy.testing.sip_requests import hostport, sip_options_ping

__all__ = ["REPO_ROOT", "ProxyProcess", "ProxyStartError", "PeerProcess"]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

class ProxyStartError(Exception):
    """The proxy did not come up; the message ends with the tail of its logs.

    ``address_in_use`` says it could not bind an address (it lost a race
    for a port, or the test gave it one that is taken)."""

    def __init__(self, message: str, *, address_in_use: bool = False) -> None:
        super().__init__(message)
        self.address_in_use = address_in_use


def _ini_text(sections: Mapping[str, Mapping[str, object]]) -> str:
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {v}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


class ProxyProcess(ManagedProcess):
    """The proxy under ``twistd -n`` as a subprocess, on free loopback ports.

    ``config`` is either a whole ``site.ini`` text, or sections that are
    merged over a default made for tests: SIP on one free port for UDP and
    TCP on 127.0.0.1, no overlay or admin listener, location ``local``.
    ``command`` replaces the twistd command line (its items are formatted
    with ``ini``, ``log``, ``host`` and ``port``), for testing this helper.

    With ``port`` left to the helper and ``config`` given as sections, a
    start that fails because an address is in use (another program bound
    the port since it was chosen) is tried again on fresh ports, up to
    ``bind_retries`` times.

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
        bind_retries: int = 3,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port("both", host)
        # Only ports this helper chose (and wrote into the config) can change.
        self._may_rechoose = port is None and not isinstance(config, str)
        self.bind_retries = bind_retries
        self.attempts = 0  # starts tried, retries included
        self._log_start = 0
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
        self._config = config
        self._write_config()

    def _write_config(self) -> None:
        if isinstance(self._config, str):
            self.config_text = self._config
        else:
            self.config_text = _ini_text(self._merged(self._config or {}))
        self.ini_path.write_text(self.config_text, encoding="utf-8")

    def _choose_ports(self) -> None:
        """Fresh ports in place of those the helper chose (after a lost race)."""
        self.port = free_port("both", self.host)

    def _merged(self, overrides: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
        hp = hostport(self.host, self.port)
        sections: dict[str, dict[str, object]] = {
            "proxy": {"listen": f"udp:{hp}, tcp:{hp}", "domains": "localhost"},
            "overlay": {"listen": ""},
            "admin": {"listen": ""},
            "location": {"order": "local"},
            # A test run as root must not change the host's firewall unless
            # it says so ([limits] kernel_bans: auto would, yes does).
            "limits": {"kernel_bans": "no"},
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
        stays silent for ``startup_timeout`` seconds.  An exit because an
        address is in use is retried on fresh ports (see the class).
        """
        if self.process is not None:
            raise RuntimeError("already started")
        first_start = self.attempts == 0
        while True:
            try:
                return self._start_once()
            except ProxyStartError as e:
                lost_race = e.address_in_use
                retries_left = self.attempts <= self.bind_retries
                if not (lost_race and first_start and self._may_rechoose and retries_left):
                    raise
            self.process = None
            self.returncode = None
            for path in (self.log_path, self.output_path):
                path.unlink(missing_ok=True)
            self._choose_ports()
            self._write_config()

    def _start_once(self) -> ProxyProcess:
        self.attempts += 1
        # a restart appends to the log: only what this start writes counts
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
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
                    f"proxy exited with status {rc} before answering {self.probe_description()}\n{self.log_tail()}",
                    address_in_use=is_address_in_use(self._log_since_start()),
                )
            if is_address_in_use(self._log_since_start()):
                # a listener that is not SIP (overlay, admin) only logs it
                self.stop()
                raise ProxyStartError(
                    f"proxy could not bind an address in use\n{self.log_tail()}", address_in_use=True
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

    def _log_since_start(self) -> str:
        """The process's output and what the twistd log gained since this start."""
        texts = []
        for path, offset in ((self.output_path, 0), (self.log_path, self._log_start)):
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    texts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(texts)

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
        self._chose = (overlay_port is None, admin_port is None)
        self._may_rechoose = any(self._chose) and not isinstance(config, str)

    def _choose_ports(self) -> None:
        if self._chose[0]:
            self.overlay_port = free_port("tcp", self.host)
        if self._chose[1]:
            self.admin_port = free_port("tcp", self.host)

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
        return hostport(self.host, self.overlay_port)

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

