"""Listening sockets several worker processes share (SO_REUSEPORT).

``[proxy] workers = N`` runs N processes that each bind every SIP listen
address; with SO_REUSEPORT set before ``bind()`` the kernel accepts all of
them and spreads datagrams and new connections over them by a hash of the
addresses, so one phone keeps reaching one worker.  The option must be set
on the socket before it is bound, which Twisted's endpoints do not offer:
these ports set it in ``createInternetSocket``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp

from sosimple_proxy.sip.udp import UDPPort

__all__ = ["ReusePortUDP", "ReusePortTCP", "reuse_port"]


def reuse_port(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


class ReusePortUDP(UDPPort):
    def createInternetSocket(self) -> Any:
        return reuse_port(super().createInternetSocket())


class ReusePortTCP(tcp.Port):
    def createInternetSocket(self) -> Any:
        return reuse_port(super().createInternetSocket())
