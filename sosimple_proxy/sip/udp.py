"""SIP over UDP: one datagram is one message.

The socket details live here: a port that reads the kernel's ICMP error
queue (IP_RECVERR), the receive buffer size, and the protocol that turns
each datagram into a message, a keep-alive or a STUN answer.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sosimple_proxy.sip.address import ListenAddress, Peer
from sosimple_proxy.sip.stun import is_stun, stun_binding_response

if TYPE_CHECKING:  # pragma: no cover
    from sosimple_proxy.sip.transport import TransportLayer

__all__ = ["UDPPort", "Datagrams", "set_rcvbuf", "cut_head", "UDP_READ_SIZE", "ICMP_ERRNOS"]

log = Logger()

# Linux: SO_RCVBUFFORCE lets root go past net.core.rmem_max (not in `socket`).
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
# Big enough that the kernel never truncates a datagram: anything over
# max_message_size must be seen whole to be recognised as too large.
UDP_READ_SIZE = 65536

# What an ICMP error on a UDP socket turns into (RFC 1122 3.2.2.1).
ICMP_ERRNOS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN))

# recvfrom errors that only mean "nothing more now" (as Twisted's doRead).
_READ_IGNORE = frozenset((errno.EAGAIN, errno.EINTR, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE))

# Linux socket options and flags that Python does not name everywhere.
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)


@implementer(IHalfCloseableDescriptor)
class UDPPort(udp.Port):
    """A UDP port that reads its socket's error queue (IP_RECVERR).

    With IP_RECVERR an ICMP "port unreachable" for a datagram we sent is
    queued on the socket, and poll reports POLLERR without POLLIN.  The
    reactor takes that for the end of input: it stops reading and calls
    :meth:`readConnectionLost` (we are "half-closeable" for that reason
    only), where the queue is read and reading resumes.  When a datagram
    arrives too, the queue is read first in :meth:`doRead`.
    """

    recverr = False

    def enable_recverr(self) -> None:
        family6 = self.socket.family == socket.AF_INET6
        try:
            if family6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                self.socket.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            self.recverr = True
        except OSError as e:
            log.info("UDP error queue unavailable ({e}): ICMP errors will not be noticed", e=e)

    def doRead(self) -> None:
        """Every datagram waiting (up to ``maxThroughput`` bytes) in one
        wake-up, as Twisted's does, but the error queue is read only when
        the kernel says an ICMP error is pending (recvfrom fails with it),
        not with a failing system call on every wake-up."""
        recv = self.socket.recvfrom
        size = self.maxPacketSize
        deliver = self.protocol.datagramReceived
        v6 = self.addressFamily == socket.AF_INET6
        read = errors = 0
        while read < self.maxThroughput and errors < 256:
            try:
                data, addr = recv(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in ICMP_ERRNOS:
                    errors += 1
                    if self.recverr:
                        self.read_errors()
                    continue  # the error was reported by this call; data may follow
                if e.errno in _READ_IGNORE:
                    return
                raise
            read += len(data)
            if v6:
                addr = addr[:2]  # no flow info or scope id
            try:
                deliver(data, addr)
            except BaseException:
                log.failure("datagram handling failed")

    def readConnectionLost(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.read_errors()
        self.startReading()

    def read_errors(self) -> None:
        """Report every queued ICMP error to the protocol (at most 256 a call)."""
        for _ in range(256):
            try:
                _data, ancdata, _flags, addr = self.socket.recvmsg(1, 1024, _MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            code = 0
            for _level, _type, cdata in ancdata:
                if len(cdata) >= 4:
                    code = int.from_bytes(cdata[:4], sys.byteorder)  # sock_extended_err.ee_errno
            if addr:
                try:
                    self.protocol.unreachable(addr, os.strerror(code) if code else "unreachable")
                except Exception:
                    log.failure("UDP error report failed")


def _ignore(failure: Failure) -> None:
    """For sends nobody waits on: send() has logged the error already."""


def cut_head(data: bytes, limit: int) -> bytes:
    """The header section of an oversized message, for building a 513."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = data.find(sep, 0, limit)
        if end >= 0:
            return data[: end + len(sep)]
    part = data[:limit]
    nl = part.rfind(b"\n")
    return part[: nl + 1] if nl >= 0 else part


def set_rcvbuf(sock: socket.socket, wanted: int) -> int:
    """Ask for a ``wanted``-byte receive buffer; return what the kernel granted.

    Linux caps SO_RCVBUF at net.core.rmem_max and reports double the
    usable size; root may go past the cap with SO_RCVBUFFORCE.
    """
    linux = sys.platform.startswith("linux")

    def granted() -> int:
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return got // 2 if linux else got

    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    except OSError as e:
        log.warn("SO_RCVBUF {wanted} refused: {err}", wanted=wanted, err=e)
    got = granted()
    if got < wanted and linux and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
            got = granted()
        except OSError as e:
            log.warn("SO_RCVBUFFORCE {wanted} refused: {err}", wanted=wanted, err=e)
    return got


class Datagrams(DatagramProtocol):
    """One UDP socket: each datagram is one message."""

    noisy = False

    def __init__(self, layer: TransportLayer, local: ListenAddress) -> None:
        self.layer = layer
        self.local = local
        # Peers seen recently: a frozen attrs instance per datagram is a
        # measurable cost at tens of thousands of messages a second.
        self._peers: dict[Any, Peer] = {}

    def unreachable(self, addr: Any, reason: str) -> None:
        self.layer._unreachable(Peer("udp", addr[0], addr[1]), reason)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        source = self._peers.get(addr)
        if source is None:
            if len(self._peers) >= 8192:
                self._peers.clear()
            source = self._peers[addr] = Peer("udp", addr[0], addr[1])
        layer = self.layer
        if len(data) > layer.max_message_size:
            limits = layer.limits
            if limits is not None and limits.is_banned(source.host):
                return  # silence, and no log line per datagram
            log.info("{source}: datagram of {n} bytes over the limit", source=source, n=len(data))
            answer = layer._sinkFramingError(
                cut_head(data, layer.max_message_size), 513, "Message Too Large", source
            )
            if answer:
                layer.send(answer, source, self.local).addErrback(_ignore)
            return
        if data[:1] in (b"\r", b"\n", b"", b"\0") and not data.strip(b"\r\n\t \0"):
            # A CRLF keep-alive some UAs send over UDP: nothing to answer.
            log.debug("{source}: empty keep-alive datagram dropped", source=source)
            return
        if is_stun(data):
            # STUN (RFC 5389: first two bits zero), the RFC 5626 UDP keep-alive:
            # answer a Binding request with the address we see.
            answer = stun_binding_response(data, source.host, source.port)
            if answer is None:
                log.debug("{source}: non-SIP binary datagram dropped", source=source)
            else:
                layer.send(answer, source, self.local).addErrback(_ignore)
            return
        try:
            layer.sink.messageReceived(data, source, self.local)
        except Exception:
            log.failure("message sink failed on a datagram from {source}", source=source)
