"""SIPp with the options that make it behave on loopback (``shared/peers.md``).

:func:`run_sipp` runs a scenario to the end, :func:`start_sipp` starts one
in the background (a UAS, usually) and returns once it holds its port.
Given ``local_port=0`` the helper picks the port, and picks another if SIPp
could not bind it (exit status 254: another program took it meanwhile).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import attrs

from sosimple_proxy.testing.ports import bound_by, free_port

__all__ = [
    "SIPP",
    "SIPP_BIND_FAILED",
    "SIPP_BUILTIN_SCENARIOS",
    "SIPP_OPTIONS_SCENARIO",
    "SIPP_OPTIONS_SCENARIO_TEMPLATE",
    "SippResult",
    "assert_sipp_ok",
    "SippProcess",
    "sipp_command",
    "start_sipp",
    "run_sipp",
]

SIPP_BIND_FAILED = 254  # SIPp's exit status when it cannot bind its port

# A scenario: a built-in name, an XML file, XML text, or a function of the
# local port giving one of those (for scenarios that name their own port).
Scenario = str | Callable[[int], str]

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


def assert_sipp_ok(*results: SippResult) -> None:
    """Every SIPp run succeeded; else the test fails showing all of them
    (a failed UAS often explains its UAC)."""
    if not all(r.ok for r in results):
        raise AssertionError("\n\n".join(str(r) for r in results))


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

    def __init__(self, cmd: list[str], timeout: float, workdir: Path, own_dir: bool, port: int | None = None) -> None:
        self.args = tuple(cmd)
        self.port = port
        self.timeout = timeout
        self.dir = workdir
        self._own_dir = own_dir
        self._out = workdir / f"sipp-{secrets.token_hex(4)}.out"
        self._err = self._out.with_suffix(".err")
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            # Files, not pipes: a chatty SIPp must never block on a full pipe.
            self.process = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def wait_bound(self, transport: str = "udp", timeout: float = 5.0) -> bool:
        """Wait until SIPp holds its port (True), or has exited (False).  After
        ``timeout`` it is assumed to be running as it should (True)."""
        assert self.port is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if bound_by(self.process.pid, self.port, transport) or time.monotonic() >= deadline:
                return True
            time.sleep(0.01)
        return False

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


def _option(args: Sequence[str], name: str) -> str | None:
    """The value after option ``name`` in a SIPp argument list, if any."""
    for i, a in enumerate(args[:-1]):
        if a == name:
            return args[i + 1]
    return None


def _transport(args: Sequence[str]) -> str:
    """``udp`` or ``tcp``, from SIPp's ``-t`` option (u1, un, t1, tn...)."""
    return "tcp" if (_option(args, "-t") or "u1").startswith(("t", "l")) else "udp"


def start_sipp(
    scenario: Scenario,
    *args: str,
    calls: int | None = 1,
    timeout: float = 30.0,
    local_ip: str = "127.0.0.1",
    buff_size: int = 4194304,
    workdir: str | os.PathLike[str] | None = None,
    local_port: int | None = None,
    bind_timeout: float = 5.0,
    bind_retries: int = 3,
) -> SippProcess:
    """Start SIPp without waiting for it to end (see :func:`run_sipp` for the
    arguments); once it holds its local port, when that port is known.

    ``local_port`` adds ``-p``; 0 lets the helper choose a free port, and
    choose again (up to ``bind_retries`` times) if SIPp cannot bind it.
    The port is the returned process's ``port`` (a port passed as ``-p`` in
    ``args`` counts too).  ``scenario`` may be a function of that port.
    Waiting for the bind replaces a "let it bind" sleep: a UAC may be started
    against a UAS as soon as this returns.
    """
    own = workdir is None
    where = Path(tempfile.mkdtemp(prefix="sipp-")) if own else Path(workdir)  # type: ignore[arg-type]
    chosen = local_port == 0
    attempts = 0
    while True:
        attempts += 1
        port = free_port(_transport(args), local_ip) if chosen else local_port
        extra = ["-p", str(port)] if port is not None else []
        if port is None and _option(args, "-p") is not None:
            port = int(_option(args, "-p"))  # type: ignore[arg-type]
        text = scenario(port if port is not None else 0) if callable(scenario) else scenario
        cmd = sipp_command(
            text, *extra, *args, calls=calls, timeout=timeout, local_ip=local_ip, buff_size=buff_size, workdir=where
        )
        sipp = SippProcess(cmd, timeout, where, own, port=port)
        if port is None or sipp.wait_bound(_transport(args), bind_timeout):
            return sipp
        if not (chosen and sipp.process.returncode == SIPP_BIND_FAILED and attempts <= bind_retries):
            return sipp  # its wait() reports how it ended


def run_sipp(
    scenario: Scenario,
    *args: str,
    calls: int | None = 1,
    timeout: float = 30.0,
    local_ip: str = "127.0.0.1",
    buff_size: int = 4194304,
    workdir: str | os.PathLike[str] | None = None,
    local_port: int | None = None,
) -> SippResult:
    """Run SIPp to the end and return its exit status and output.

    Adds what loopback tests need (``shared/peers.md``): ``-i 127.0.0.1``
    so Via/Contact/SDP name loopback, ``-buff_size 4194304``, ``-m calls``,
    ``-timeout`` with ``-timeout_error`` (the run ends at the timeout, with
    status 255, even with calls in progress) and ``-nostdin``; ``args`` follow, e.g. ``"127.0.0.1:5060"``,
    ``"-t", "t1"``, ``"-p", str(port)``.  SIPp is killed if it overruns its
    own timeout by 10 s.  ``local_port=0``: see :func:`start_sipp`.
    """
    return start_sipp(
        scenario,
        *args,
        calls=calls,
        timeout=timeout,
        local_ip=local_ip,
        buff_size=buff_size,
        workdir=workdir,
        local_port=local_port,
    ).wait()
