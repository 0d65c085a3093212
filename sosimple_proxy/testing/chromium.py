"""Headless Chromium for tests of the admin pages (Debian package ``chromium``).

Two ways to drive it, both with nothing but the standard library:

- :func:`dump_dom` and :func:`screenshot`: one page load each
  (``--dump-dom``/``--screenshot`` after ``--virtual-time-budget`` ms of the
  page's own timers), for a look at what a page shows once;
- :class:`Chromium`: one browser kept open and driven over the DevTools
  protocol on a pipe (``--remote-debugging-pipe``: NUL-separated JSON on the
  browser's fds 3 and 4, as Puppeteer's pipe transport does, so no
  websocket client is needed); a test loads a page once, changes the world
  and watches the page update itself, as an administrator's browser would.

The browser runs as root with ``--no-sandbox`` (``make test`` runs as root),
in a fresh profile, and resolves no host name but loopback: a page that
tried to load anything from elsewhere would fail, not reach the Internet.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["CHROMIUM", "Chromium", "ChromiumError", "chromium_args", "dump_dom", "screenshot"]

CHROMIUM = shutil.which("chromium")

#: why a test skips without it (a skip that ``SOSIMPLE_REQUIRE_PEERS=1`` turns into a failure)
MISSING = "chromium is not installed (Debian package chromium)"


class ChromiumError(Exception):
    """The browser failed, or did not answer in time."""


def chromium_args(profile: str | os.PathLike[str], window: tuple[int, int] = (1000, 800)) -> list[str]:
    """The flags every run here uses: headless, no sandbox, no GPU, a
    throw-away profile, no background traffic, loopback names only."""
    if CHROMIUM is None:
        raise FileNotFoundError(MISSING)
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
        f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}",
    ]


def _once(extra: list[str], url: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        args = [*chromium_args(profile), *extra, url]
        try:
            done = subprocess.run(args, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ChromiumError(f"chromium did not finish within {timeout} s") from e
    if done.returncode != 0:
        raise ChromiumError(f"chromium exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
    return done


def dump_dom(url: str, budget_ms: int = 8000, timeout: float = 60) -> str:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time."""
    return _once([f"--virtual-time-budget={budget_ms}", "--dump-dom"], url, timeout).stdout.decode("utf-8")


def screenshot(url: str, path: str | os.PathLike[str], budget_ms: int = 8000, timeout: float = 60) -> Path:
    """A PNG of the page (1000x800) after ``budget_ms`` of virtual time."""
    path = Path(path).resolve()
    _once([f"--virtual-time-budget={budget_ms}", f"--screenshot={path}"], url, timeout)
    return path


class Chromium:
    """One headless browser with one page, driven over the DevTools pipe.

        with Chromium() as browser:
            browser.open("http://127.0.0.1:8080/ui/")
            browser.wait_for("document.querySelectorAll('circle.node').length === 3", 20)
            browser.screenshot(tmp_path / "ring.png")
    """

    def __init__(self, window: tuple[int, int] = (1000, 800), timeout: float = 30) -> None:
        self.window = window
        self.timeout = timeout
        self._next = 0
        self._buffer = b""
        self._session: str | None = None
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Chromium":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        # the browser reads commands on its fd 3 and writes answers on its fd 4
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [*chromium_args(self._profile, self.window), "--remote-debugging-pipe", "about:blank"]
        # bash, not sh: dash takes no fd numbers above 9 in a redirection
        r, w = to_browser_r, from_browser_w
        shell = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self._stderr = open(Path(self._profile) / "stderr.log", "wb")
        self._process = subprocess.Popen(
            ["/bin/bash", "-c", shell, *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            start_new_session=True,  # its own group: a stuck browser is killed with all its children
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next((t for t in targets if t["type"] == "page"), None)
        target = page["targetId"] if page else self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        # the page's viewport is the window size asked for (headless windows have no frame)
        width, height = self.window
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    # ----------------------------------------------------------- protocol

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its answer (events on the way are dropped)."""
        if self._process is None:
            raise ChromiumError("the browser is not running")
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode("utf-8") + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") != self._next:
                continue
            if "error" in answer:
                raise ChromiumError(f"{method}: {answer['error']}")
            return answer.get("result", {})  # type: ignore[no-any-return]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"chromium did not answer within {self.timeout} s; {self.log_tail()}")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ChromiumError(f"chromium closed the pipe; {self.log_tail()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)  # type: ignore[no-any-return]

    # ------------------------------------------------------------ the page

    def open(self, url: str) -> None:
        """Load ``url`` in the page (returns once navigation started)."""
        result = self.call("Page.navigate", session=True, url=url)
        if result.get("errorText"):
            raise ChromiumError(f"loading {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(
        self, expression: str, timeout: float, every: float = 0.25, what: str | Callable[[], str] = ""
    ) -> Any:
        """Poll ``expression`` until it is truthy; its value.  Fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                detail = what() if callable(what) else what
                raise ChromiumError(f"after {timeout} s still not true: {expression} {detail}".rstrip())
            time.sleep(every)

    def screenshot(self, path: str | os.PathLike[str]) -> Path:
        """A PNG of the whole page as it is now (the window's width, as tall as the page)."""
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": self.window[0], "height": max(self.window[1], size["height"]), "scale": 1}
        data = self.call(
            "Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True, clip=clip
        )["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (Path(self._profile) / "stderr.log").read_text(errors="replace")
        except OSError:
            return ""
        return "chromium said: " + " | ".join(text.strip().splitlines()[-lines:])

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                self._process = process
                self.call("Browser.close")
            except (ChromiumError, OSError):
                pass
            finally:
                self._process = None
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)
