"""A handoff to a worker whose inbox is full waits instead of being lost.

A Unix datagram socket queues few datagrams (Linux: net.unix.max_dgram_qlen,
10 by default); past that sendto() fails with EAGAIN, and Twisted's
``port.write`` drops the datagram silently.  Real sockets here (a worker's
inbox that nobody reads for a while), a fake clock for the retries.
"""

from __future__ import annotations

import socket

from twisted.internet.task import Clock

from sosimple_proxy.sip import handoff
from sosimple_proxy.sip.address import ListenAddress, Peer

SRC, LOCAL = Peer("udp", "127.0.0.1", 5070), ListenAddress("udp", "127.0.0.1", 5060)


def response(n: int) -> bytes:
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsp{n}.a.w1;rport=5060\r\n"
            f"Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKcaller{n}\r\nCSeq: {n} MESSAGE\r\n\r\n").encode()


class _Port:
    """What Handoff uses of Twisted's Unix datagram port: its socket."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setblocking(False)

    def stopListening(self) -> None:
        self.socket.close()


def setup(tmp_path):
    inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # worker 1's, not read for now
    inbox.bind(handoff.socket_path(str(tmp_path), 1))
    inbox.setblocking(False)
    clock = Clock()
    h = handoff.Handoff(clock, 0, 2, str(tmp_path), sink=None)  # type: ignore[arg-type]
    h.port = _Port()
    return h, inbox, clock


def read_all(inbox: socket.socket) -> list[int]:
    got = []
    while True:
        try:
            packet = inbox.recv(70000)
        except BlockingIOError:
            return got
        _kind, data, _peer, _local, _hops = handoff.decode_any(packet)
        got.append(int(data.split(b"CSeq: ")[1].split(b" ")[0]))


def test_responses_beyond_a_full_inbox_wait_and_arrive_in_order(tmp_path):
    h, inbox, clock = setup(tmp_path)
    n = 200  # well past any inbox's queue
    assert all(h.elsewhere(response(i), SRC, LOCAL) for i in range(n))
    assert h._backlog, "the inbox took every packet: nothing was tested"
    got = read_all(inbox)
    for _ in range(n):
        if not h._backlog:
            break
        clock.advance(handoff.RETRY_INTERVAL)
        got += read_all(inbox)
    assert got == list(range(n)) and not h._backlog
    h.stop()
    inbox.close()


def test_what_waits_longer_than_max_wait_is_dropped(tmp_path):
    h, inbox, clock = setup(tmp_path)
    for i in range(200):
        h.elsewhere(response(i), SRC, LOCAL)
    queued = len(read_all(inbox))
    assert h._backlog
    clock.advance(handoff.MAX_WAIT + handoff.RETRY_INTERVAL)  # nobody read meanwhile
    assert not h._backlog
    assert read_all(inbox) == [] and queued < 200
    h.stop()
    inbox.close()
