"""stunnel4 in client mode in front of a TCP-only SIP peer.

Debian's sipp is built without OpenSSL (``shared/peers.md``), so TLS load
and TLS scenarios run sipp over TCP into a local stunnel that opens TLS to
the proxy, verifying the proxy's certificate against the test's CA.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from sosimple_proxy.testing.polling import wait_until
from sosimple_proxy.testing.ports import free_port
from sosimple_proxy.testing.sip_requests import hostport

__all__ = ["STUNNEL", "Stunnel", "StunnelError"]

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


class StunnelError(Exception):
    """stunnel did not start; the message ends with its log tail."""


class Stunnel:
    """``stunnel`` accepting plain TCP on ``accept_port`` (free port of
    ``host`` by default) and connecting over TLS to ``connect_host:connect_port``.

    The peer's chain is checked against ``ca``; ``check_host`` (a DNS name)
    or ``check_ip`` (an address) is the name its certificate must carry.
    Runs in the foreground as a child; :meth:`stop` ends it.

        with Stunnel(proxy_tls_port, ca=ca_pem, check_ip="127.0.0.1") as tunnel:
            run_sipp(..., target=f"127.0.0.1:{tunnel.accept_port}", transport="t1")
    """

    def __init__(
        self,
        connect_port: int,
        *,
        ca: str | os.PathLike[str],
        connect_host: str = "127.0.0.1",
        check_host: str | None = None,
        check_ip: str | None = None,
        host: str = "127.0.0.1",
        accept_port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.accept_port = accept_port if accept_port is not None else free_port("tcp", host)
        self.binary = binary or STUNNEL
        self.startup_timeout = startup_timeout
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="stunnel-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "stunnel.log"
        self.process: subprocess.Popen[bytes] | None = None
        checks = [f"checkHost = {check_host}"] if check_host else []
        checks += [f"checkIP = {check_ip}"] if check_ip else []
        self.config_text = "\n".join(
            [
                "foreground = yes",
                "pid =",
                "debug = 5",
                f"output = {self.log_path}",
                "[sip]",
                "client = yes",
                f"accept = {hostport(host, self.accept_port)}",
                f"connect = {hostport(connect_host, connect_port)}",
                f"CAfile = {ca}",
                "verifyChain = yes",
                *checks,
                "",
            ]
        )
        (self.dir / "stunnel.conf").write_text(self.config_text, encoding="utf-8")

    def start(self) -> Stunnel:
        if self.binary is None:
            raise FileNotFoundError("stunnel is not installed (Debian package stunnel4)")
        self.process = subprocess.Popen(
            [self.binary, str(self.dir / "stunnel.conf")],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise StunnelError(f"stunnel exited with status {self.process.returncode}\n{self.log_tail()}")
            with socket.socket(family, socket.SOCK_STREAM) as s:
                return s.connect_ex((self.host, self.accept_port)) == 0

        try:
            wait_until(listening, self.startup_timeout, what=lambda: f"stunnel listening on {self.accept_port}\n{self.log_tail()}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_text().rstrip("\n")
        return f"--- stunnel ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Stunnel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
