"""Handing SIP traffic to the worker process it belongs to.

With ``[proxy] workers = N`` every worker binds the same ports
(SO_REUSEPORT) and the kernel spreads datagrams and connections over them
by their addresses.  A phone's requests, retransmissions and CANCELs come
from one address (or one connection) and so reach one worker, which owns
their server transactions.  Three things cross workers, over Unix datagram
sockets in the parent's private directory:

- ``M``: a message for another worker.  The response to a request that
  worker *i* sent comes from the next hop's address and may reach worker
  *j*; the branch names *i* (:mod:`.worker_tag`), so *j* passes it on, with
  the address it came from and the port it came in on.  A CANCEL that
  matches no INVITE here goes round the workers until one has it (or all
  have said no: the last one answers 481).
- ``O``: bytes to send over another worker's connection.  A phone
  registered over TCP or TLS is reachable only over its own connection,
  which one worker holds; the others send through it.
- ``C``/``X``: a worker opened or lost a connection to a peer (the others
  keep a map), and ``H``: a (re)started worker asks the others to tell it
  the connections they hold.
"""

from __future__ import annotations

import os
import re
from collections import deque
from typing import Any, Callable

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from sosimple_proxy.sip import worker_tag
from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.interfaces import IMessageSink

__all__ = ["Handoff", "response_owner", "encode", "decode", "socket_path"]

log = Logger()

# The first Via of a message (the top one: we prepend ours) and its branch.
_TOP_BRANCH = re.compile(rb"\n(?:via|v)[ \t]*:[^\r\n]*?;[ \t]*branch[ \t]*=[ \t]*([^;,\s]+)", re.IGNORECASE)
# placeholders in packets that carry no address (H, C, X, O name no local port)
_NO_LOCAL = ListenAddress("udp", "0.0.0.0", 0)
_NO_PEER = Peer("udp", "0.0.0.0", 0)

# A worker's inbox holds few datagrams (Linux: net.unix.max_dgram_qlen, 10 by
# default); past that a send fails with EAGAIN, which Twisted's port.write
# drops without a word.  On a loaded machine a worker waits for the CPU long
# enough for 10 responses to queue up for it, and each one lost cost a
# retransmission (or, from a UA that does not answer it again, the call).
# What does not fit waits here and is sent again every RETRY_INTERVAL
# seconds, in order, for at most MAX_WAIT seconds (T1: by then the sender
# retransmits anyway), at most MAX_BACKLOG packets.
RETRY_INTERVAL = 0.002
MAX_WAIT = 0.5
MAX_BACKLOG = 1000


def response_owner(data: bytes) -> int | None:
    """The worker whose branch tops this response's Vias, or None."""
    end = data.find(b"\r\n\r\n")
    m = _TOP_BRANCH.search(data, 0, end if end >= 0 else len(data))
    if m is None:
        return None
    return worker_tag.owner(m.group(1).decode("ascii", "replace"))


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"w{index}.sock")


def encode(data: bytes, source: Peer, local: ListenAddress, kind: str = "M", hops: int = 0) -> bytes:
    head = f"{kind} {source.transport} {source.host} {source.port} {local.transport} {local.host} {local.port} {hops}\n"
    return head.encode("ascii") + data


def decode(packet: bytes) -> tuple[bytes, Peer, ListenAddress]:
    """(data, peer, local) of an ``M`` packet; raises ValueError for
    anything that is not :func:`encode`'s."""
    _kind, data, peer, local, _hops = decode_any(packet)
    return data, peer, local


def decode_any(packet: bytes) -> tuple[str, bytes, Peer, ListenAddress, int]:
    head, sep, data = packet.partition(b"\n")
    if not sep:
        raise ValueError("no header")
    kind, st, sh, sp, lt, lh, lp, hops = head.decode("ascii").split(" ")
    return kind, data, Peer(st, sh, int(sp)), ListenAddress(lt, lh, int(lp)), int(hops)


class _Inbox(DatagramProtocol):
    noisy = False

    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff

    def datagramReceived(self, packet: bytes, addr: Any) -> None:
        try:
            kind, data, peer, local, hops = decode_any(packet)
        except (ValueError, UnicodeDecodeError) as e:
            log.info("handoff: unreadable datagram dropped ({why})", why=e)
            return
        try:
            self.handoff.received(kind, data, peer, local, hops)
        except Exception:
            log.failure("handoff: a {kind} packet failed", kind=kind)


class Handoff:
    """Worker ``index`` of ``count``: its inbox at ``socket_path(directory,
    index)``, messages from it fed to ``sink`` (the stack).

    ``send_stream(data, peer)`` sends over a connection of ours (the
    transport layer's); ``streams()`` lists the peers we hold connections to.
    """

    def __init__(
        self,
        reactor: Any,
        index: int,
        count: int,
        directory: str,
        sink: IMessageSink,
        send_stream: Callable[[bytes, Peer], object] | None = None,
        streams: Callable[[], list[Peer]] = list,
    ) -> None:
        self.reactor = reactor
        self.index = index
        self.count = count
        self.directory = directory
        self.sink = sink
        self.send_stream = send_stream
        self.streams = streams
        self.port: Any = None
        self.remote_streams: dict[Peer, int] = {}  # peer -> the worker holding a connection to it
        self.hops = 0  # of the CANCEL being handled (set while the inbox feeds the sink)
        self._backlog: deque[tuple[int, bytes, float]] = deque()  # (owner, packet, since) waiting for room
        self._retry: Any = None

    def start(self) -> None:
        path = socket_path(self.directory, self.index)
        try:
            os.unlink(path)  # our predecessor's, if this worker was restarted
        except FileNotFoundError:
            pass
        self.port = self.reactor.listenUNIXDatagram(path, _Inbox(self), maxPacketSize=70000)
        self.hello()

    def hello(self) -> None:
        """Ask the other workers which connections they hold (a restarted
        worker knows none)."""
        self._broadcast(encode(b"", _NO_PEER, _NO_LOCAL, "H", self.index))

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._backlog.clear()
        if self.port is not None:
            self.port.stopListening()
            self.port = None

    def _write(self, owner: int, packet: bytes) -> bool:
        if self.port is None:
            return False
        if self._backlog:  # behind what already waits, in order
            return self._wait(owner, packet)
        try:
            if not self._send(owner, packet):
                return self._wait(owner, packet)
        except OSError as e:
            # That worker is restarting: lost like a datagram on the wire;
            # retransmissions (or its hello) make up for it.
            log.debug("handoff to worker {owner} failed: {why}", owner=owner, why=e)
            return False
        return True

    def _send(self, owner: int, packet: bytes) -> bool:
        """One send; False if that worker's inbox is full (EAGAIN)."""
        sock = getattr(self.port, "socket", None)
        if sock is None:
            self.port.write(packet, socket_path(self.directory, owner))
            return True
        try:
            sock.sendto(packet, socket_path(self.directory, owner))  # not port.write: it drops on EAGAIN
        except BlockingIOError:
            return False
        return True

    def _wait(self, owner: int, packet: bytes) -> bool:
        if len(self._backlog) >= MAX_BACKLOG:
            log.debug("handoff to worker {owner}: {n} packets wait already; dropped", owner=owner, n=MAX_BACKLOG)
            return False
        self._backlog.append((owner, packet, self.reactor.seconds()))
        if self._retry is None:
            self._retry = self.reactor.callLater(RETRY_INTERVAL, self._drain)
        return True

    def _drain(self) -> None:
        """Send what waits, oldest first, until an inbox is full again."""
        self._retry = None
        now = self.reactor.seconds()
        while self._backlog and self.port is not None:
            owner, packet, since = self._backlog[0]
            if now - since > MAX_WAIT:
                self._backlog.popleft()
                log.debug("handoff to worker {owner}: no room for {wait:.3f} s; dropped", owner=owner, wait=now - since)
                continue
            try:
                if not self._send(owner, packet):
                    self._retry = self.reactor.callLater(RETRY_INTERVAL, self._drain)
                    return
            except OSError as e:
                log.debug("handoff to worker {owner} failed: {why}", owner=owner, why=e)
            self._backlog.popleft()

    def _broadcast(self, packet: bytes) -> None:
        for other in range(self.count):
            if other != self.index:
                self._write(other, packet)

    # -- inbound

    def received(self, kind: str, data: bytes, peer: Peer, local: ListenAddress, hops: int) -> None:
        if kind == "M":
            self.hops = hops
            try:
                self.sink.messageReceived(data, peer, local)
            finally:
                self.hops = 0
        elif kind == "O":
            if self.send_stream is not None and peer in self.streams():
                self.send_stream(data, peer)
            else:
                log.debug("handoff: no connection to {peer} here any more; dropped", peer=peer)
        elif kind == "C":
            self.remote_streams[peer] = hops  # hops carries the holder's index
        elif kind == "X":
            if self.remote_streams.get(peer) == hops:
                del self.remote_streams[peer]
        elif kind == "H":
            for mine in self.streams():
                self._write(hops, encode(b"", mine, _NO_LOCAL, "C", self.index))

    # -- the stack asks

    def elsewhere(self, data: bytes, source: Peer, local: ListenAddress) -> bool:
        """Pass a response on if another worker owns it; True if it did."""
        if not data.startswith(b"SIP/2.0 "):
            return False
        owner = response_owner(data)
        if owner is None or owner == self.index or owner >= self.count or self.port is None:
            return False
        self._write(owner, encode(data, source, local))
        return True

    def pass_cancel(self, data: bytes, source: Peer, local: ListenAddress) -> bool:
        """A CANCEL that matches nothing here: on to the next worker, unless
        every other one has seen it (then it is ours to answer)."""
        if self.hops >= self.count - 1 or self.port is None:
            return False
        nxt = (self.index + 1) % self.count
        return self._write(nxt, encode(data, source, local, "M", self.hops + 1))

    # -- the transport layer asks and tells

    def holder(self, peer: Peer) -> int | None:
        """Which other worker holds a connection to ``peer``, if any."""
        return self.remote_streams.get(peer)

    def send_via(self, owner: int, data: bytes, peer: Peer) -> bool:
        return self._write(owner, encode(data, peer, _NO_LOCAL, "O"))

    def stream_opened(self, peer: Peer) -> None:
        self._broadcast(encode(b"", peer, _NO_LOCAL, "C", self.index))

    def stream_closed(self, peer: Peer) -> None:
        self._broadcast(encode(b"", peer, _NO_LOCAL, "X", self.index))
