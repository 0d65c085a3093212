"""Handing a datagram to the worker process it belongs to.

With ``[proxy] workers = N`` every worker binds the same UDP ports
(SO_REUSEPORT) and the kernel spreads datagrams over them by their
addresses.  A phone's requests, retransmissions and CANCELs come from one
address and so reach one worker, which owns their server transactions; but
the response to a request that worker *i* sent comes from the next hop's
address and may reach worker *j*.  The branch says whose it is
(:mod:`.worker_tag`): *j* passes the datagram to *i* over a Unix datagram
socket, with the address it came from and the port it came in on, and *i*
handles it as if the kernel had given it to *i*.

Stream transports need none of this: a response comes back on the
connection the request left by, which its worker owns.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sosimple_proxy.sip import worker_tag
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.interfaces import IMessageSink

__all__ = ["Handoff", "response_owner", "encode", "decode", "socket_path"]

log = Logger()

# The first Via of a message (the top one: we prepend ours) and its branch.
_TOP_BRANCH = re.compile(rb"\n(?:via|v)[ \t]*:[^\r\n]*?;[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)", re.IGNORECASE)


def response_owner(data: bytes) -> int | None:
    """The worker whose branch tops this response's Vias, or None."""
    m = _TOP_BRANCH.search(data, 0, data.find(b"\r\n\r\n") if b"\r\n\r\n" in data else len(data))
    if m is None:
        return None
    return worker_tag.owner(m.group(1).decode("ascii", "replace"))


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"w{index}.sock")


def encode(data: bytes, source: Peer, local: ListenAddress) -> bytes:
    head = f"{source.transport} {source.host} {source.port} {local.transport} {local.host} {local.port}\n"
    return head.encode("ascii") + data


def decode(packet: bytes) -> tuple[bytes, Peer, ListenAddress]:
    """Raises ValueError for anything that is not :func:`encode`'s."""
    head, sep, data = packet.partition(b"\n")
    if not sep:
        raise ValueError("no header")
    st, sh, sp, lt, lh, lp = head.decode("ascii").split(" ")
    return data, Peer(st, sh, int(sp)), ListenAddress(lt, lh, int(lp))


class _Inbox(DatagramProtocol):
    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff

    def datagramReceived(self, packet: bytes, addr: Any) -> None:
        try:
            data, source, local = decode(packet)
        except (ValueError, UnicodeDecodeError) as e:
            log.info("handoff: unreadable datagram dropped ({why})", why=e)
            return
        self.handoff.handed += 1
        self.handoff.sink.messageReceived(data, source, local)


class Handoff:
    """Worker ``index`` of ``count``: its inbox at ``socket_path(directory,
    index)``, messages from it fed to ``sink`` (the stack)."""

    def __init__(self, reactor: Any, index: int, count: int, directory: str, sink: IMessageSink) -> None:
        self.reactor = reactor
        self.index = index
        self.count = count
        self.directory = directory
        self.sink = sink
        self.port: Any = None
        self.passed = 0  # datagrams given to other workers
        self.handed = 0  # datagrams other workers gave us

    def start(self) -> None:
        path = socket_path(self.directory, self.index)
        try:
            os.unlink(path)  # our predecessor's, if this worker was restarted
        except FileNotFoundError:
            pass
        self.port = self.reactor.listenUNIXDatagram(path, _Inbox(self), maxPacketSize=70000)

    def stop(self) -> None:
        if self.port is not None:
            self.port.stopListening()
            self.port = None

    def elsewhere(self, data: bytes, source: Peer, local: ListenAddress) -> bool:
        """Pass ``data`` on if another worker owns it; True if it did."""
        if source.transport != "udp" or not data.startswith(b"SIP/2.0 "):
            return False
        owner = response_owner(data)
        if owner is None or owner == self.index or owner >= self.count or self.port is None:
            return False
        try:
            self.port.write(encode(data, source, local), socket_path(self.directory, owner))
        except OSError as e:
            # That worker is restarting: the response is lost like a datagram
            # on the wire, and its sender's retransmission tries again.
            log.debug("handoff to worker {owner} failed: {why}", owner=owner, why=e)
            return True
        self.passed += 1
        return True
