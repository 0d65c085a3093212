"""A SIP UA that listens for TLS, for tests of outbound TLS.

It serves a certificate the test chose (right, for another domain, from an
unknown CA), answers every request 200 OK on the connection it came on, and
keeps what happened: the requests, and the handshakes that failed (a proxy
that refuses our certificate aborts the handshake).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading

from sosimple_proxy.testing.ua import answer_200

__all__ = ["TLSAnsweringUA"]


def _read_message(conn: ssl.SSLSocket, buf: bytearray) -> str | None:
    """One SIP message from a stream (framed by Content-Length), or None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
        buf[:] = buf.lstrip(b"\r\n")  # CRLF keep-alives between messages
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value.strip() or 0)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    buf[:] = rest[length:]
    return (head + b"\r\n\r\n" + rest[:length]).decode("utf-8", "replace")


class TLSAnsweringUA:
    """A TLS listener on a free port of ``host`` with ``certificate``/``key``
    (PEM paths) that answers every request 200 over the same connection.

    ``requests`` holds the request texts, ``handshake_errors`` why each
    failed handshake failed (as the ``ssl`` module says).  Served by daemon
    threads until :meth:`close`; usable as a context manager.
    """

    def __init__(self, certificate: str | os.PathLike[str], key: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(certificate), str(key))
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self.handshake_errors: list[str] = []
        self.connections = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5.0)
        self.connections += 1
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.handshake_errors.append(str(e) or type(e).__name__)
            raw.close()
            return
        buf = bytearray()
        try:
            while not self._stop:
                try:
                    text = _read_message(conn, buf)
                except socket.timeout:
                    continue
                if text is None:
                    return
                if text.startswith("SIP/2.0"):
                    continue
                self.requests.append(text)
                if not text.startswith("ACK "):
                    conn.sendall(answer_200(text).encode())
        except (ssl.SSLError, OSError):
            return
        finally:
            conn.close()

    def received(self, text: str) -> bool:
        """Whether a request containing ``text`` arrived."""
        return any(text in r for r in self.requests)

    def close(self) -> None:
        self._stop = True
        self._accepter.join(2)
        for t in self._threads:
            t.join(2)
        self.sock.close()

    def __enter__(self) -> TLSAnsweringUA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
