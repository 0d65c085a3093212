"""A minimal user agent on a UDP port, for tests that need someone to answer.

It answers every request 200 OK (with a To tag) and keeps the requests,
so a test can check what reached it, through which proxy, with what body.
"""

from __future__ import annotations

import socket
import threading

__all__ = ["AnsweringUA", "answer_200"]

# Headers a response copies from its request (RFC 3261 8.2.6.2), long and compact forms.
_COPIED = ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")


def answer_200(request: str, to_tag: str = "ua") -> str:
    """A 200 OK for ``request`` (its text), with a To tag if it had none."""
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].strip().lower() in _COPIED]
    keep = [h + f";tag={to_tag}" if h.lower().startswith(("to:", "t:")) and "tag=" not in h else h for h in keep]
    return "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"


class AnsweringUA:
    """A UA on a free UDP port of ``host`` that answers every request 200 and
    keeps them in ``requests`` (texts), served by a daemon thread until
    :meth:`close`.  Usable as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            text = data.decode(errors="replace")
            if text.startswith("SIP/2.0"):
                continue
            self.requests.append(text)
            self.sock.sendto(answer_200(text).encode(), addr)

    def received(self, text: str) -> bool:
        """Whether a request containing ``text`` arrived."""
        return any(text in r for r in self.requests)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> AnsweringUA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
