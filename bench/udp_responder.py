"""The Python ceiling of the SIP load benchmark: a minimal Twisted UDP
responder that answers every request (but ACK) with a fixed 200 OK.

It copies only what a UAC needs to match the answer (Via, From, To with a
tag added, Call-ID, CSeq; its own Contact) by splitting header lines, parses nothing else
and keeps no state: any SIP server in Python on Twisted costs at least this
much per datagram.  4 MiB receive buffer, as the proxy asks for.

    python -m bench.udp_responder PORT [HOST]
"""

from __future__ import annotations

import socket
import sys

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

RCVBUF = 4 * 1024 * 1024
COPIED = (b"via:", b"v:", b"from:", b"f:", b"call-id:", b"i:", b"cseq:")
TO = (b"to:", b"t:")


class Responder(DatagramProtocol):
    contact = b""

    def startProtocol(self) -> None:
        host = self.transport.getHost()
        self.contact = b"Contact: <sip:%s:%d>" % (host.host.encode(), host.port)  # a 2xx to INVITE needs one
        sock = self.transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith((b"SIP/2.0 ", b"ACK ")):
            return
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        out = [b"SIP/2.0 200 OK"]
        for line in head[1:]:
            low = line[:9].lower()
            if low.startswith(COPIED):
                out.append(line)
            elif low.startswith(TO):
                out.append(line if b";tag=" in line else line + b";tag=resp")
        out.append(self.contact)
        out.append(b"Content-Length: 0\r\n\r\n")
        self.transport.write(b"\r\n".join(out), addr)


def main(argv: list[str]) -> None:
    port = int(argv[0])
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    reactor.listenUDP(port, Responder(), interface=host, maxPacketSize=65535)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
