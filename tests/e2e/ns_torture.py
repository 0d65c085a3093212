"""Run inside a fresh network namespace (``unshare -n``): start the proxy,
send it every torture message over UDP, and write what came back as JSON.

The messages' Vias name documentation addresses (192.0.2.x, 2001:db8::);
in a namespace with only loopback nothing the proxy answers can leave the
machine.  Responses reach us because the proxy answers to the packet's
source address (RFC 3261 18.2.1 received, 18.2.2) at the Via's port, and we
listen on every such port.

usage: python ns_torture.py TORTURE_DIR OUT_JSON
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sosimple_proxy.testing import ProxyProcess, sip_options_ping  # noqa: E402

DOMAINS = "example.com example.org example.net company.com"


def main(root: str, out_path: str) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    manifest = json.load(open(os.path.join(root, "manifest.json")))
    results: dict[str, dict] = {}
    with ProxyProcess({"proxy": {"domains": DOMAINS}}) as proxy:
        ports = {5060, 5061}
        messages = {}
        for e in manifest:
            data = open(os.path.join(root, e.get("wire_file") or e.get("variant_file") or e["file"]), "rb").read()
            messages[e["name"]] = data
            for m in re.finditer(rb"(?im)^(?:via|v)\s*:[^\r\n]*?(?:\]|[\w.-]):(\d{2,5})", data):
                ports.add(int(m.group(1)))
            for m in re.finditer(rb"(?i)sips?:[^\s>;,]*?:(\d{2,5})\b", data):
                ports.add(int(m.group(1)))
        ports.discard(proxy.port)
        socks = []
        for p in sorted(ports):
            for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                s = socket.socket(fam, socket.SOCK_DGRAM)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((addr, p))
                    socks.append(s)
                except OSError:
                    s.close()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        socks.append(sender)

        def drain(wait: float) -> list[bytes]:
            got, end = [], time.time() + wait
            while time.time() < end:
                ready, _, _ = select.select(socks, [], [], max(0.0, end - time.time()))
                for s in ready:
                    try:
                        got.append(s.recvfrom(65535)[0])
                    except OSError:
                        pass
                if got and time.time() > end - wait + 0.5:
                    break
            return got

        for name, data in messages.items():
            drain(0.02)
            sender.sendto(data, ("127.0.0.1", proxy.port))
            cid = re.search(rb"(?im)^(?:call-id|i)\s*:\s*(\S+)", data)
            answers = []
            forwarded = False
            for g in drain(1.5):
                g_cid = re.search(rb"(?im)^(?:call-id|i)\s*:\s*(\S+)", g)
                if not g.startswith(b"SIP/2.0 ") and cid is not None and g_cid and g_cid.group(1) == cid.group(1):
                    forwarded = True  # the proxy passed it on: it accepted it
                    continue
                m = re.match(rb"SIP/2\.0 (\d{3}) ?([^\r\n]*)", g)
                g_cid = re.search(rb"(?im)^(?:call-id|i)\s*:\s*(\S+)", g)
                if m and (cid is None or (g_cid and g_cid.group(1) == cid.group(1))):
                    answers.append([int(m.group(1)), m.group(2).decode("utf-8", "replace")])
            alive = sip_options_ping("127.0.0.1", proxy.port, timeout=2.0)
            results[name] = {"answers": answers, "forwarded": forwarded, "alive": bool(alive and alive.startswith(b"SIP/2.0 200"))}
        results["_still_running"] = {"answers": [], "alive": proxy.running}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
