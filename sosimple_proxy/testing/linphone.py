"""linphonec (Debian package ``linphone-cli``), headless, as a second real
softphone: liblinphone's SIP stack (belle-sip) is not baresip's, it speaks
TLS with full certificate checks, and it answers SHA-256 digest challenges.

It reads commands on stdin, one a line (``chat URI TEXT``, ``call URI``,
``terminate``, ``quit``), prints what happens on stdout and logs its SIP
traffic at ``-d 6`` into a debug log; both files are in the helper's
directory (``shared/peers.md`` has the loopback settings that matter).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sosimple_proxy.testing.managed import ManagedProcess
from sosimple_proxy.testing.ports import free_port
from sosimple_proxy.testing.sip_requests import hostport

__all__ = ["LINPHONEC", "Linphonec", "LinphonecError"]

LINPHONEC = shutil.which("linphonec")

# In the debug log when an account's registration changes state.
_REGISTERED = re.compile(r"moving from state \[LinphoneRegistrationProgress\] to \[LinphoneRegistration(Ok|Failed)\]")


class LinphonecError(Exception):
    """linphonec did not start, register or do what it was told; the message
    ends with its output and log tails."""


class Linphonec(ManagedProcess):
    """A headless linphonec registered as ``user@domain`` through the proxy
    at ``proxy_host:proxy_port`` over ``transport`` (``udp``, ``tcp`` or ``tls``).

    Over TLS it checks the proxy's certificate against ``ca`` and the name
    ``proxy_host``; belle-sip's mbedtls does not read IP-address
    subjectAltNames, so give a DNS name the certificate carries
    (``localhost`` for a proxy on loopback) and put it in the proxy's
    ``[proxy] domains`` so the proxy knows the Route as its own.
    ``password`` (with ``realm``) answers digest challenges; ``auto_answer``
    runs linphonec with ``-a``.

        with Linphonec("carol", tls_port, transport="tls", ca=ca_pem, proxy_host="localhost") as carol:
            carol.chat("sip:alice@example.com", "hello")
            carol.wait_output(r"Message received from sip:alice@example.com: hi")
    """

    def __init__(
        self,
        user: str,
        proxy_port: int,
        *,
        proxy_host: str = "127.0.0.1",
        domain: str = "example.com",
        transport: str = "udp",
        ca: str | os.PathLike[str] | None = None,
        password: str | None = None,
        realm: str | None = None,
        auto_answer: bool = True,
        host: str = "127.0.0.1",
        sip_port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        binary: str | None = None,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        if transport == "tls" and ca is None:
            raise ValueError("TLS needs ca (the PEM the proxy's certificate is checked against)")
        self.user, self.domain, self.transport = user, domain, transport
        self.host = host
        self.sip_port = sip_port if sip_port is not None else free_port("tcp" if transport != "udp" else "udp", host)
        self.startup_timeout, self.stop_timeout = startup_timeout, stop_timeout
        self.auto_answer = auto_answer
        self.binary = binary or LINPHONEC
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"linphonec-{user}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "linphonerc"
        self.out_path = self.dir / "linphonec.out"
        self.log_path = self.dir / "linphonec.log"
        self.process: subprocess.Popen[bytes] | None = None
        proxy = f"sip:{hostport(proxy_host, proxy_port)};transport={transport}"
        ports = {"udp": 0, "tcp": 0, "tls": 0}  # 0: no listening point of that kind
        ports[transport] = self.sip_port
        rtp = free_port("udp", host)
        lines = [
            "[sip]",
            f"bind_address={host}",
            f"sip_port={ports['udp']}",
            f"sip_tcp_port={ports['tcp']}",
            f"sip_tls_port={ports['tls']}",
            "default_proxy=0",
            "register_only_when_network_is_up=0",
        ]
        if ca is not None:
            lines += [f"root_ca={ca}", "verify_server_certs=1", "verify_server_cn=1"]
        lines += [
            "[rtp]",
            f"bind_address={host}",
            f"audio_rtp_port={rtp}",
            "[net]",
            "firewall_policy=0",
            "[video]",
            "capture=0",
            "display=0",
            "enabled=0",
            "[sound]",
            "echocancellation=0",
            "[storage]",
            f"uri={self.dir / 'storage.db'}",
            "[proxy_0]",
            f"reg_proxy=<{proxy}>",
            f"reg_route=<{proxy};lr>",
            f"reg_identity=sip:{user}@{domain}",
            "reg_expires=600",
            "reg_sendregister=1",
            "publish=0",
            "dial_escape_plus=0",
        ]
        if password is not None:
            lines += ["[auth_info_0]", f"username={user}", f"passwd={password}", f"domain={domain}"]
            if realm:
                lines.append(f"realm={realm}")
        self.config_text = "\n".join(lines) + "\n"
        self.config_path.write_text(self.config_text, encoding="utf-8")

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    # -- life cycle

    def start(self) -> Linphonec:
        """Start linphonec; return once its registration is answered 200."""
        if self.process is not None:
            raise RuntimeError("already started")
        if self.binary is None:
            raise FileNotFoundError("linphonec is not installed (Debian package linphone-cli)")
        argv = [self.binary, "-c", str(self.config_path), "-d", "6", "-l", str(self.log_path)]
        if self.auto_answer:
            argv.append("-a")
        with open(self.out_path, "wb") as out:
            self.process = subprocess.Popen(
                argv, cwd=self.dir, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "HOME": str(self.dir)},
            )
        try:
            self.wait_registered(self.startup_timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_registered(self, timeout: float = 20.0) -> None:
        m = self._wait(lambda: _REGISTERED.search(self.log_text()), timeout, "a registration answer")
        if m.group(1) != "Ok":
            raise self._fail("registration failed")

    def stop(self) -> int | None:
        """``quit`` (linphonec unregisters), then SIGKILL after ``stop_timeout``."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            try:
                self.command("quit")
            except (OSError, LinphonecError):
                pass
            try:
                p.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdin is not None:
            try:
                p.stdin.close()
            except OSError:
                pass
        return p.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


    # -- commands

    def command(self, line: str) -> None:
        p = self.process
        if p is None or p.poll() is not None or p.stdin is None:
            raise self._fail(f"not running, cannot send {line!r}")
        p.stdin.write(line.encode() + b"\n")
        p.stdin.flush()

    def chat(self, uri: str, text: str) -> None:
        """Send ``text`` to ``uri`` as a MESSAGE; :meth:`wait_delivered` waits for its 200."""
        self.command(f"chat {uri} {text}")

    def wait_delivered(self, count: int = 1, timeout: float = 15.0) -> None:
        """Wait until ``count`` of our messages were answered 2xx."""
        rx = re.compile(r"Chat message \S+ of chat room .* moving from InProgress to Delivered")
        self._wait(lambda: len(rx.findall(self.log_text())) >= count or None, timeout, f"{count} messages delivered")

    def call(self, uri: str) -> None:
        self.command(f"call {uri}")

    def terminate(self) -> None:
        self.command("terminate")

    # -- output

    def output(self) -> str:
        try:
            return self.out_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first match of ``pattern`` in linphonec's stdout, waiting up to ``timeout``."""
        rx = re.compile(pattern)
        return self._wait(lambda: rx.search(self.output()), timeout, repr(pattern))

    def _wait(self, probe, timeout: float, what: str):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise self._fail(f"exited before {what}")
            if time.monotonic() >= deadline:
                raise self._fail(f"no {what} within {timeout:g}s")
            time.sleep(0.05)

    def _fail(self, what: str) -> LinphonecError:
        out = "\n".join(self.output().splitlines()[-20:])
        sip = "\n".join(line for line in self.log_text().splitlines() if "belle-sip" in line or "liblinphone" in line)
        sip = "\n".join(sip.splitlines()[-30:])
        return LinphonecError(
            f"linphonec {self.user}: {what}\n--- stdout ({self.out_path}) ---\n{out}\n--- log ({self.log_path}) ---\n{sip}"
        )
