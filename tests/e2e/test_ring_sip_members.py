"""Proxies of a CA ring recognise each other's SIP traffic (issue 11, "Nodes").

Three ``twistd`` proxies are members of one CA ring; each also speaks SIP
over TLS, and presents its node certificate when it connects to another.
Proxy B asks its users for passwords and trusts no address.  A phone of
proxy A (which trusts it) sends a MESSAGE from bob@example.com to
carol@other.test; A's route for other.test is B over TLS.  B takes A's
node certificate (for example.com) as A vouching for bob, and relays the
MESSAGE to other.test's UA without a challenge.  Proxy C's certificate is
for other.test only: the same MESSAGE through C gets what any foreign
domain gets, a 407 from B (bob@example.com must prove who he is).
"""

from __future__ import annotations

from pathlib import Path

from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.testing import ProxyProcess, free_port
from sosimple_proxy.testing.sip_requests import message_request, status_line, udp_final_response
from sosimple_proxy.testing.ua import AnsweringUA
from tests.certs import CA
from tests.overlay.test_ringtls import node_files


def proxy(
    workdir: Path, ring: CA, ring_ca: Path, site: dict, node_id: int, domains: list[str], overlay_port: int, boot: int | None,
    **extra,
) -> ProxyProcess:
    """A proxy in the CA ring (its node certificate names ``domains``), on UDP and TLS."""
    node_files(ring, str(workdir / "overlay"), node_id, domains)
    port, tls_port = free_port("both"), free_port("tcp")
    sections: dict[str, dict] = {
        "proxy": {"listen": f"udp:127.0.0.1:{port}, tls:127.0.0.1:{tls_port}", "domains": "example.com"},
        "tls": site,
        "location": {"order": "local overlay routes"},
        "overlay": {
            "listen": f"tcp:{overlay_port}:interface=127.0.0.1",
            "bootstrap": f"127.0.0.1:{boot}" if boot else "",
            "stabilize_interval": "0.3",
            "state_dir": "overlay",
            "ca": str(ring_ca),
        },
        "limits": {"allow": "127.0.0.0/8"},
    }
    for section, keys in extra.items():
        sections.setdefault(section, {}).update(keys)
    p = ProxyProcess(sections, port=port, workdir=workdir)
    p.tls_port = tls_port  # type: ignore[attr-defined]
    return p


def test_a_member_vouches_for_its_domain_and_a_member_for_another_gets_nothing(tmp_path):
    ring = CA("Ring CA")
    ring_ca = ring.write(tmp_path, "ring-ca")
    site_ca = CA("Site CA")
    site_pem = site_ca.write(tmp_path, "site-ca")
    cert, key = site_ca.issue(cn="example.com", dns=["example.com"], ips=["127.0.0.1"]).write(tmp_path, "sip")
    site = {"certificate": str(cert), "key": str(key), "ca": str(site_pem)}
    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("bob", "example.com", "secret").line() + "\n")
    users.chmod(0o600)
    ports = [free_port("tcp") for _ in range(3)]
    with AnsweringUA() as carol:
        b = proxy(
            tmp_path / "b", ring, ring_ca, site, 1 << 150, ["example.com"], ports[0], None,
            auth={"users_file": str(users), "trusted": ""},
            routes={"other.test": f"sip:127.0.0.1:{carol.port}"},
        )
        with b:
            to_b = {"other.test": f"sip:127.0.0.1:{b.tls_port};transport=tls"}  # type: ignore[attr-defined]
            trusted = {"trusted": "127.0.0.1"}  # its own phone
            a = proxy(tmp_path / "a", ring, ring_ca, site, 2 << 150, ["example.com"], ports[1], ports[0], auth=trusted, routes=to_b)
            c = proxy(tmp_path / "c", ring, ring_ca, site, 3 << 150, ["other.test"], ports[2], ports[0], auth=trusted, routes=to_b)
            with a, c:

                def send(through: ProxyProcess, text: str) -> str | None:
                    return status_line(
                        udp_final_response(
                            through.port, lambda p: message_request("carol@other.test", "bob@example.com", text, via_port=p), timeout=8
                        )
                    )

                assert send(a, "through a member for example.com") == "SIP/2.0 200 OK"
                assert carol.received("through a member for example.com")
                assert send(c, "through a member for other.test") == "SIP/2.0 407 Proxy Authentication Required"
                assert not carol.received("through a member for other.test")
