"""A headless baresip softphone registered with the proxy, driven over
its ``ctrl_tcp`` module (``shared/peers.md``, "baresip (headless)")."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import attrs

from sosimple_proxy.testing.managed import ManagedProcess
from sosimple_proxy.testing.ports import bound_by, free_port, is_address_in_use, port_is_free, reserve
from sosimple_proxy.testing.sip_requests import hostport

__all__ = ["BARESIP", "BARESIP_MODULE_PATH", "Baresip", "BaresipError", "SipTraceEntry", "baresip_port"]

BARESIP = shutil.which("baresip")
BARESIP_MODULE_PATH = "/usr/lib/baresip/modules"


class BaresipError(Exception):
    """baresip did not start, register, answer or quit; the message ends with its log tail."""


def baresip_port(host: str = "127.0.0.1") -> int:
    """A SIP port for baresip: free for UDP and TCP, with the next port free for
    TCP too (baresip listens for TLS on ``sip_listen`` + 1)."""
    for _ in range(100):
        port = free_port("both", host)
        if port < 65535 and port_is_free(port + 1, "tcp", host):
            reserve(port + 1, host)
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


class Baresip(ManagedProcess):
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

    ``transport`` (``udp``, ``tcp`` or ``tls``) goes into the outbound URI;
    over TLS ``ca`` (a PEM file) is baresip's ``sip_cafile``.  Debian 12's
    baresip 1.0 (libre) accepts any server certificate whatever its CA, so
    a TLS test with baresip shows encryption, not that it checked the proxy.  Audio
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
        ca: str | os.PathLike[str] | None = None,
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
        bind_retries: int = 3,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        self.user = user
        self.domain = domain
        self.transport = transport
        self.ca = ca
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

        self._settings = (device_name(user), list(extra_config), password, answermode, regint, account_params)
        self._contacts = list(contacts)
        self._chose = (sip_port is None, ctrl_port is None)
        self.bind_retries = bind_retries
        self.attempts = 0
        self._write_files()

    def _write_files(self) -> None:
        device, extra_config, password, answermode, regint, account_params = self._settings
        host = self.host
        self.sip_address = hostport(host, self.sip_port)
        self.proxy_address = hostport(self.proxy_host, self.proxy_port)
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
            f"ctrl_tcp_listen {hostport(host, self.ctrl_port)}",
            *([f"sip_cafile {self.ca}"] if self.ca is not None else []),
            *extra_config,
        ]
        outbound = f"sip:{self.proxy_address}" + (f";transport={self.transport}" if self.transport != "udp" else "")
        account = f'<sip:{self.user}@{self.domain}>;auth_pass={password};outbound="{outbound}";answermode={answermode}'
        account += f";regint={regint}" if self.register else ";regint=0"
        account += account_params
        self.config_text = "\n".join(config) + "\n"
        self.accounts_text = account + "\n"
        self.contacts_text = "".join(
            f"<{c}>\n" if not c.lstrip().startswith(("<", '"')) else f"{c}\n" for c in self._contacts
        )
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
        :class:`BaresipError` raised; a failure because a port it chose is
        in use is tried again on fresh ports (``bind_retries`` times)."""
        if self.process is not None:
            raise RuntimeError("already started")
        if self.binary is None:
            raise FileNotFoundError("baresip is not installed (Debian package baresip)")
        while True:
            try:
                return self._start_once()
            except BaresipError:
                lost_race = is_address_in_use(_strip_ansi(self.log_text()))
                if not (lost_race and any(self._chose) and self.attempts <= self.bind_retries):
                    raise
            self.process = None
            self.returncode = None
            self.events.clear()
            self._consumed.clear()
            if self._chose[0]:
                self.sip_port = baresip_port(self.host)
            if self._chose[1]:
                self.ctrl_port = free_port("tcp", self.host)
            self._write_files()

    def _start_once(self) -> Baresip:
        self.attempts += 1
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
        """Connect to ``ctrl_tcp`` once baresip itself holds the port (another
        program holding it would accept the connection as well)."""
        while True:
            p = self.process
            ours = p is None or p.poll() is not None or bound_by(p.pid, self.ctrl_port, "tcp")
            if not ours and is_address_in_use(_strip_ansi(self.log_text())):
                raise self._fail(f"could not bind control port {self.ctrl_port}: address in use")
            try:
                if ours:
                    self._sock = socket.create_connection((self.host, self.ctrl_port), timeout=1.0)
                    return
            except OSError:
                pass
            if p is not None and p.poll() is not None:
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


def device_name(user: str) -> str:
    """A virtual audio device of one's own, so two phones never share one."""
    return f"{user}-{secrets.token_hex(3)}"


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_TRACE_RE = re.compile(r"\x1b\[36;1m#\n(\w+) (\S+) -> (\S+)\n(.*?)\x1b\[;m", re.S)


def _strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)
