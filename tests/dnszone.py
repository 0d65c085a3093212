"""A real ``twisted.names`` authoritative server for a test zone, on loopback.

In-process (``serve_zone``, for trial tests on the running reactor) or as
a subprocess (``DNSServerProcess``, for end-to-end tests):

    python -m tests.dnszone PORT ZONE_JSON

where ZONE_JSON is ``{"origin": "other.test", "records": [[name, type,
{fields}], ...]}`` and fields are those of ``twisted.names.dns.Record_<type>``
(``ttl`` included), e.g. ``["_sip._udp.other.test", "SRV", {"priority": 10,
"weight": 0, "port": 5070, "target": "ka.other.test", "ttl": 60}]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from twisted.names import authority, common, dns, server

REPO_ROOT = Path(__file__).resolve().parent.parent


def record(type: str, **fields: Any) -> Any:
    """``record("SRV", priority=10, weight=0, port=5070, target="ka.other.test")``."""
    if type == "NAPTR":
        fields = {k: v.encode() if k in ("flags", "service", "regexp") and isinstance(v, str) else v for k, v in fields.items()}
    return getattr(dns, f"Record_{type}")(**fields)


class Zone(authority.FileAuthority):
    """A zone built in code; ``records`` may be changed while it serves.
    ``asked`` counts the questions it answered, by (name, type)."""

    def __init__(self, origin: str, records: Iterable[tuple[str, Any]] = ()) -> None:
        common.ResolverBase.__init__(self)
        self._cache = {}
        self.origin = origin
        soa = dns.Record_SOA(mname=f"ns.{origin}", rname=f"root.{origin}", serial=1, minimum=30, expire=300, ttl=30)
        self.soa = (dns.domainString(origin), soa)
        self.records: dict[bytes, list[Any]] = {}
        self.asked: dict[tuple[str, int], int] = {}
        self.add(origin, soa)
        for name, rec in records:
            self.add(name, rec)

    def add(self, name: str, rec: Any) -> None:
        self.records.setdefault(dns.domainString(name).lower(), []).append(rec)

    def remove(self, name: str, type: int | None = None) -> None:
        key = dns.domainString(name).lower()
        self.records[key] = [r for r in self.records.get(key, []) if type is not None and r.TYPE != type]

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any = None) -> Any:
        key = (dns.domainString(name).decode().lower(), type)
        self.asked[key] = self.asked.get(key, 0) + 1
        return super()._lookup(name, cls, type, timeout)


def zone_from_json(spec: dict[str, Any]) -> Zone:
    return Zone(spec["origin"], [(name, record(type, **fields)) for name, type, fields in spec["records"]])


def serve_zone(zone: Zone, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> tuple[Any, Any]:
    """Listen on UDP ``port`` (0: any) and TCP on the same port; the two ports."""
    factory = server.DNSServerFactory(authorities=[zone], verbose=0)
    factory.noisy = False
    udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=interface)
    tcp = reactor.listenTCP(udp.getHost().port, factory, interface=interface)
    return udp, tcp


class DNSServerProcess:
    """``python -m tests.dnszone`` in the background, ready when it says so."""

    def __init__(self, port: int, spec: dict[str, Any], startup_timeout: float = 15.0) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.dnszone", str(port), json.dumps(spec)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + startup_timeout
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "ready" not in line or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"DNS server did not start: {line}{self.process.stdout.read()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "DNSServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str]) -> None:
    from twisted.internet import reactor

    port, spec = int(argv[0]), json.loads(argv[1])
    serve_zone(zone_from_json(spec), reactor, port)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
