"""Reading and validating ``site.ini``.

The key names are an outside contract (``shared/site-ini.md``): admins and
scripts rely on them.  Every bad value raises :class:`ConfigError`, whose text
is one line naming the section, the key and the problem, so that startup can
stop before any port is bound.  Unknown sections and keys are only warned
about, so that a newer ``site.ini`` still starts an older proxy.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from typing import Callable

import attrs
from twisted.logger import Logger

from sosimple_proxy.location.dialplan import DialPlan, did_number
from sosimple_proxy.location.routes import route_uri
from sosimple_proxy.providers import LOCATION_PROVIDERS
from sosimple_proxy.security.algorithms import Algorithm, parse_algorithms
from sosimple_proxy.security.limits import LIMITS_SCHEMA, parse_networks
from sosimple_proxy.security.users import UsersFileError, read_users
from sosimple_proxy.sip.errors import ParseError
from sosimple_proxy.sip.uri import parse_uri
from sosimple_proxy.values import Schema
from sosimple_proxy.values import boolean as _bool
from sosimple_proxy.values import hostports as _hostports
from sosimple_proxy.values import integer as _int
from sosimple_proxy.values import number as _float
from sosimple_proxy.values import port as _port
from sosimple_proxy.values import words as _words
from sosimple_proxy.security.tls import TLS_SCHEMA, TLSConfig
from sosimple_proxy.sip.address import ListenAddress

log = Logger()

SIP_TRANSPORTS = ("udp", "tcp", "tls")


class ConfigError(Exception):
    """A bad site.ini value; ``str()`` is the one line shown to the admin."""

    def __init__(self, section: str, key: str | None, problem: str) -> None:
        self.section, self.key, self.problem = section, key, problem
        where = f"[{section}] {key}" if key else f"[{section}]"
        super().__init__(f"site.ini: {where}: {problem}")


# --- value parsers: each takes the raw string, returns a value or raises ValueError


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        word = raw.strip().lower()
        if word not in choices:
            raise ValueError(f"{raw.strip()!r} is not one of {', '.join(choices)}")
        return word

    return parse


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")


def _domain(word: str) -> str:
    if not _HOSTNAME.match(word):
        try:
            ipaddress.ip_address(word.strip("[]"))
        except ValueError:
            raise ValueError(f"{word!r} is not a domain name") from None
    return word.lower().rstrip(".")


def _domains(raw: str) -> tuple[str, ...]:
    return tuple(_domain(w) for w in _words(raw))


def parse_listen_address(item: str) -> ListenAddress:
    """``udp:127.0.0.1:5060`` or ``tcp:[::1]:5060``."""
    m = re.fullmatch(r"(?P<t>[A-Za-z]+):(?:\[(?P<v6>[^\]]+)\]|(?P<h>[^:\[\]]+)):(?P<p>[^:]*)", item)
    if not m:
        raise ValueError(f"{item!r} is not transport:host:port")
    transport = m["t"].lower()
    if transport not in SIP_TRANSPORTS:
        raise ValueError(f"{item!r}: transport {m['t']!r} is not one of {', '.join(SIP_TRANSPORTS)}")
    host = m["v6"] or m["h"]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{item!r}: {host!r} is not an IP address") from None
    if m["v6"] and addr.version != 6:
        raise ValueError(f"{item!r}: only IPv6 addresses go in brackets")
    if not m["v6"] and addr.version == 6:
        raise ValueError(f"{item!r}: an IPv6 address must be written in brackets")
    return ListenAddress(transport, str(addr), _port(m["p"], repr(item)))


# Listen transports we do not serve: SIP over TLS listens as tls:.
NOT_YET_TRANSPORTS = ("sips",)


def _listen(raw: str) -> tuple[ListenAddress, ...]:
    items = [i.strip() for i in raw.split(",") if i.strip()]
    for item in items:
        transport = item.split(":", 1)[0].lower()
        if transport in NOT_YET_TRANSPORTS:
            raise ValueError(f"{item!r}: {transport} listeners are not supported (SIP over TLS listens as tls:)")
    addrs = tuple(parse_listen_address(i) for i in items)
    seen: set[tuple[str, str, int]] = set()
    for a in addrs:
        if a.port != 0 and (a.transport, a.host, a.port) in seen:
            raise ValueError(f"{a} is listed twice")
        seen.add((a.transport, a.host, a.port))
    return addrs


def _text(raw: str) -> str:
    return raw.strip()


def _endpoint(raw: str) -> str:
    """A Twisted server endpoint string, or empty (no listener).

    Parsed (nothing is bound) so that a typo stops startup with one line
    instead of failing once other listeners are up.
    """
    text = raw.strip()
    if not text:
        return ""
    from twisted.internet.endpoints import serverFromString

    try:
        endpoint = serverFromString(object(), text)
    except Exception as e:
        raise ValueError(f"{text!r} is not a Twisted server endpoint string ({e})") from None
    port = getattr(endpoint, "_port", 0)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 0-65535")
    return text


def _hostport(raw: str) -> str:
    """One ``host:port`` (an advertised address), or empty."""
    text = raw.strip()
    if text and len(_hostports(text)) != 1:
        raise ValueError(f"{text!r} is one host:port, not a list")
    return text


def _bootstrap(raw: str) -> tuple:
    """``host:port`` list of members, or the one HTTPS URL of a ring's
    configuration document (overlay/configdoc.py), kept as a 1-tuple of str."""
    text = raw.strip()
    if "://" not in text:
        return _hostports(raw)
    from urllib.parse import urlsplit

    if len(text.split()) != 1:
        raise ValueError(f"{text!r}: a configuration document URL stands alone")
    url = urlsplit(text)
    if url.scheme.lower() != "https":
        raise ValueError(f"{text!r}: the configuration document is fetched over https only")
    try:
        url.port
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    if not url.hostname:
        raise ValueError(f"{text!r} names no host")
    return (text,)
def _trust(raw: str) -> str:
    """ca, tofu, or empty (decided by whether ca is set)."""
    word = raw.strip().lower()
    if word not in ("", "ca", "tofu"):
        raise ValueError(f"{raw.strip()!r} is not one of ca, tofu")
    return word


def _hex_id(raw: str) -> str:
    """A hex node id (tests only), or empty: derived from the node's key."""
    text = raw.strip()
    if text and not re.fullmatch(r"(0[xX])?[0-9a-fA-F]{1,40}", text):
        raise ValueError(f"{text!r} is not a hex id of at most 160 bits")
    return text


def _workers(raw: str) -> int:
    """``[proxy] workers``: a count of processes, or ``auto`` (one per core)."""
    text = raw.strip().lower()
    if text == "auto":
        return max(1, os.cpu_count() or 1)
    return _int(1, 64)(text)


# --- the schema: section -> key -> (parser, default raw value)

PROXY: Schema = {
    "listen": (_listen, "udp:127.0.0.1:5060, tcp:127.0.0.1:5060"),
    "domains": (_domains, "localhost"),
    "mode": (_choice("proxy", "redirect"), "proxy"),
    "record_route": (_bool, "yes"),
    "recurse_on_3xx": (_bool, "no"),
    "max_message_size": (_int(1024, 16 * 1024 * 1024), "65536"),
    "workers": (_workers, "1"),
}
SIP: Schema = {
    "t1": (_float(), "0.5"),
    "t2": (_float(), "4"),
    "t4": (_float(), "5"),
    "timer_c": (_float(), "180"),
    "udp_rcvbuf": (_int(0), "4194304"),
    "tcp_idle_timeout": (_float(), "600"),
    # A stream message begun must be complete within this (slow senders).
    "message_timeout": (_float(), "30"),
}
REGISTRAR: Schema = {
    "min_expires": (_int(0), "60"),
    "max_expires": (_int(1), "3600"),
    "default_expires": (_int(1), "3600"),
    "max_contacts": (_int(1), "10"),
}
LOCATION: Schema = {
    "order": (_words, "local overlay routes dns pstn"),
}
OVERLAY: Schema = {
    "listen": (_endpoint, "tcp:7000:interface=127.0.0.1"),
    "domains": (_domains, ""),
    "advertise": (_hostport, ""),
    "bootstrap": (_bootstrap, ""),
    "replicas": (_int(0, 16), "2"),
    "successors": (_int(1, 64), "8"),
    "stabilize_interval": (_float(), "5"),
    "state_dir": (_text, "var/overlay"),
    "key_scheme": (_choice("flat", "domain"), "flat"),
    "domain_bits": (_int(1, 128), "32"),
    "home_domain": (_text, ""),
    "node_id": (_hex_id, ""),
    # a CA ring (mutual TLS between members); empty ca = an open ring.
    # certificate and key default to node.pem and node.key in state_dir.
    "ca": (_text, ""),
    "certificate": (_text, ""),
    "key": (_text, ""),
    # the ring CA's private key, on a node that signs the ring's
    # configuration document as the CA; empty: signed by the node's own key
    "ca_key": (_text, ""),
    # how members vouch for each other: ca (the certificates) or tofu (an
    # open ring: ids derived from node keys, proved by a signed challenge);
    # empty: ca with a ca, else tofu (resolved in _cross_checks)
    "trust": (_trust, ""),
    # test rings only: members at ids they chose (warned at startup)
    "allow_chosen_ids": (_bool, "no"),
    # who may write a domain's registrations in an open ring: listed (the
    # keys of its domain record, trust on first use) or any member (test
    # rings); a CA ring always asks the certificate
    "domain_writers": (_choice("listed", "any"), "listed"),
    # issue 15: copies that must acknowledge a ring write (capped by
    # replicas + 1 and the live nodes); the REGISTER answer waits for it
    # at most write_timeout seconds, else 500 with Retry-After.
    "write_quorum": (_int(1, 17), "2"),
    "write_timeout": (_float(), "4"),
    "read_repair": (_bool, "yes"),
    # which of our registrar's bindings go into the ring with our Path:
    # always, or only those not reached directly (proxy/routing.py,
    # reached_directly: UDP from the Contact's own address, no NAT)
    "publish_path": (_choice("always", "needed"), "always"),
    # seconds one ring call may take; 0: half of stabilize_interval, at most 2
    # (a lookup gets four calls' worth)
    "rpc_timeout": (_float(0.0, strict=False), "0"),
}
# [tls]: the parsers live with the TLS code (security/tls.py); verify
# defaults to yes, min_version to 1.2.
TLS: Schema = dict(TLS_SCHEMA)


def _optional_bool(raw: str) -> bool | None:
    """yes/no, or empty: decided from other keys."""
    return None if not raw.strip() else _bool(raw)


def _algorithms(raw: str) -> tuple[Algorithm, ...]:
    algorithms = parse_algorithms(raw)
    if any(a.is_session for a in algorithms):
        raise ValueError("-sess algorithms are accepted but cannot be offered; list MD5 or SHA-256")
    return algorithms


def _realm(raw: str) -> str:
    text = raw.strip()
    if text and ('"' in text or "\\" in text or any(ord(c) < 32 for c in text)):
        raise ValueError(f"{text!r}: a realm may not contain quotes, backslashes or control characters")
    return text


AUTH: Schema = {
    # empty: yes when users_file is set, else no (resolved in _cross_checks)
    "required": (_optional_bool, ""),
    "users_file": (_text, ""),
    "algorithms": (_algorithms, "SHA-256 MD5"),
    # empty: the first of [proxy] domains (resolved in _cross_checks)
    "realm": (_realm, ""),
    "nonce_ttl": (_float(), "300"),
    "trusted": (parse_networks, ""),
    "nonce_secret_file": (_text, "var/nonce-secret"),
}
ADMIN: Schema = {
    "listen": (_endpoint, "tcp:8080:interface=127.0.0.1"),
    "max_name": (_int(1), "256"),
    "max_value": (_int(1), "1048576"),
    # HTTPS and credentials; a non-loopback listen needs all three (_check_admin)
    "certificate": (_text, ""),
    "key": (_text, ""),
    "users_file": (_text, ""),
    "realm": (_text, "sosimple-admin"),
}
STORE: Schema = {
    # empty: /store is served on the admin listener; a non-loopback one needs
    # certificate and key (HTTPS only, _check_store)
    "listen": (_endpoint, ""),
    "certificate": (_text, ""),
    "key": (_text, ""),
    "max_value": (_int(1, 16 * 1024 * 1024), "65536"),
    "max_names": (_int(1, 100_000), "100"),
}

# [metrics]: GET /metrics on the admin listener (Prometheus text format)
METRICS: Schema = {
    "enabled": (_bool, "yes"),
}
# [log]: twistd's log as text or JSON lines; sip_trace logs every message
# (credentials redacted)
LOG: Schema = {
    "format": (_choice("text", "json"), "text"),
    "sip_trace": (_bool, "no"),
}
PRESENCE: Schema = {
    # the presence agent (RFC 3856) for our users; no: SUBSCRIBE/PUBLISH
    # for presence are proxied to the phones like any event package
    "enabled": (_bool, "yes"),
    "max_subscriptions": (_int(0), "10000"),
    "min_expires": (_int(0), "60"),
    "max_expires": (_int(1), "3600"),
    "default_expires": (_int(1), "3600"),
    # the least time between two NOTIFYs of one subscription (seconds)
    "notify_interval": (_float(), "0.5"),
    # who may watch a user: the same domain, anyone, or the user's allow list
    "policy": (_choice("domain", "all", "list"), "domain"),
}


SCHEMAS: dict[str, Schema] = {
    "proxy": PROXY,
    "sip": SIP,
    "registrar": REGISTRAR,
    "location": LOCATION,
    "overlay": OVERLAY,
    "tls": TLS,
    "auth": AUTH,
    "admin": ADMIN,
    # Its parsers and defaults live with the limiter (security/limits.py).
    "limits": LIMITS_SCHEMA,
    "metrics": METRICS,
    "log": LOG,
    "store": STORE,
    "presence": PRESENCE,
}
PREFIXED: dict[str, Schema] = {"overlay:": OVERLAY}


def _schemas() -> tuple[dict[str, Schema], dict[str, Schema], tuple[str, ...]]:
    """Every section: ours, and those the location providers read (from
    their table), plus the free-form ones (a domain, a number per key)."""
    schemas, prefixed, free_form = dict(SCHEMAS), dict(PREFIXED), ()
    for provider in LOCATION_PROVIDERS.values():
        for name, schema in provider.sections.items():
            (prefixed if name.endswith(":") else schemas)[name] = schema
        free_form += provider.free_form
    return schemas, prefixed, free_form


class Section(dict):
    """The parsed values of one section, with attribute access."""

    name: str = ""

    def __getattr__(self, key: str) -> object:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


@attrs.define
class Config:
    """A validated site.ini: typed sections, plus the free-form ones raw."""

    path: str
    sections: dict[str, Section]
    warnings: list[str] = attrs.field(factory=list)

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def proxy(self) -> Section:
        return self.sections["proxy"]

    @property
    def sip(self) -> Section:
        return self.sections["sip"]

    def section(self, name: str) -> Section:
        return self.sections[name]

    def named(self, prefix: str) -> dict[str, Section]:
        """All ``[prefix:NAME]`` sections, by NAME."""
        return {n.split(":", 1)[1]: s for n, s in self.sections.items() if n.startswith(prefix + ":")}


def _parse_section(name: str, schema: Schema, raw: dict[str, str], warnings: list[str]) -> Section:
    section = Section()
    section.name = name
    for key, value in raw.items():
        if key not in schema:
            warnings.append(f"site.ini: [{name}] {key}: unknown key, ignored")
    for key, (parse, default) in schema.items():
        text = raw.get(key, default)
        try:
            section[key] = parse(text)
        except ValueError as e:
            raise ConfigError(name, key, str(e)) from None
    return section


def _cross_checks(cfg: Config) -> None:
    sip, reg, proxy = cfg.sections["sip"], cfg.sections["registrar"], cfg.sections["proxy"]

    for name, ring in cfg.named("overlay").items():
        # site-ini.md: [overlay:NAME] domains is required (whose users it holds)
        if ring["listen"] and not ring["domains"]:
            raise ConfigError(f"overlay:{name}", "domains", "required: the domains whose users this ring holds")
        if ring["state_dir"] == "var/overlay":
            ring["state_dir"] = f"var/overlay-{name}"
    for section, ring in [("overlay", cfg.sections["overlay"])] + [(f"overlay:{n}", r) for n, r in cfg.named("overlay").items()]:
        if ring["write_quorum"] > ring["replicas"] + 1:
            raise ConfigError(section, "write_quorum", f"{ring['write_quorum']} is above replicas + 1 ({ring['replicas'] + 1}): no write could ever be done")
        if not ring["ca"] and (ring["certificate"] or ring["key"]):
            cfg.warnings.append(f"site.ini: [{section}] certificate, key: ignored without ca (an open ring)")
        _check_trust(cfg, section, ring)
    for domain, value in cfg.sections.get("routes", {}).items():
        try:
            route_uri(value)
        except (ValueError, ParseError) as e:
            raise ConfigError("routes", domain, f"{value.strip()!r} is not a usable next hop: {e}") from None
    _check_did(cfg)
    for name, gateway in cfg.named("gateway").items():
        if not gateway["uri"]:
            raise ConfigError(f"gateway:{name}", "uri", "is required (e.g. sip:192.0.2.10:5060;transport=udp)")
    if sip["t2"] < sip["t1"]:
        raise ConfigError("sip", "t2", f"{sip['t2']:g} must not be below t1 ({sip['t1']:g})")
    if reg["min_expires"] > reg["max_expires"]:
        raise ConfigError("registrar", "min_expires", f"{reg['min_expires']} is above max_expires ({reg['max_expires']})")
    if not reg["min_expires"] <= reg["default_expires"] <= reg["max_expires"]:
        raise ConfigError("registrar", "default_expires", "must lie between min_expires and max_expires")
    pres = cfg.sections["presence"]
    if pres["min_expires"] > pres["max_expires"]:
        raise ConfigError("presence", "min_expires", f"{pres['min_expires']} is above max_expires ({pres['max_expires']})")
    if not pres["min_expires"] <= pres["default_expires"] <= pres["max_expires"]:
        raise ConfigError("presence", "default_expires", "must lie between min_expires and max_expires")
    _check_auth(cfg)
    _check_tls(cfg)
    if proxy["workers"] > 1:
        for a in proxy["listen"]:
            if a.port == 0:
                raise ConfigError("proxy", "listen", f"{a}: with workers > 1 every address needs its port (not 0)")


def _check_trust(cfg: Config, section: str, ring: Section) -> None:
    """[overlay] trust and allow_chosen_ids (issue 11): trust defaults to
    ca with a ca, else tofu; the two must not contradict ca, and a chosen
    node_id in an open ring needs allow_chosen_ids (members refuse it)."""
    if not ring["trust"]:
        ring["trust"] = "ca" if ring["ca"] else "tofu"
    if ring["trust"] == "ca" and not ring["ca"]:
        raise ConfigError(section, "trust", "ca needs ca (the ring's CA certificate)")
    if ring["trust"] == "tofu" and ring["ca"]:
        raise ConfigError(section, "trust", "tofu with a ca: in a CA ring the certificates place the nodes; remove ca or trust")
    if ring["trust"] == "tofu" and ring["node_id"] and not ring["allow_chosen_ids"]:
        raise ConfigError(
            section,
            "node_id",
            "an open ring derives node ids from node keys and its members refuse a chosen one; "
            "remove node_id, or set allow_chosen_ids = yes (test rings only)",
        )
    if ring["allow_chosen_ids"] and ring["listen"]:
        what = "ignored in a CA ring (the certificates place the nodes)" if ring["ca"] else (
            "WARNING: members may take any place in this ring, and the records there (test rings only)"
        )
        cfg.warnings.append(f"site.ini: [{section}] allow_chosen_ids = yes: {what}")


def _check_auth(cfg: Config) -> None:
    """[auth]: the defaults that depend on other keys, and a users file that
    can be read now (startup stops here, before any port is bound)."""
    auth, proxy = cfg.sections["auth"], cfg.sections["proxy"]
    if not auth["realm"]:
        auth["realm"] = proxy["domains"][0] if proxy["domains"] else "localhost"
    if auth["required"] is None:
        auth["required"] = bool(auth["users_file"])
    if auth["required"] and not auth["users_file"]:
        raise ConfigError("auth", "required", "yes needs [auth] users_file (the users to authenticate)")
    if auth["users_file"]:
        try:
            table = read_users(auth["users_file"])
        except UsersFileError as e:
            raise ConfigError("auth", "users_file", str(e)) from None
        if len(table) and auth["realm"] not in table.realms():
            cfg.warnings.append(
                f"site.ini: [auth] users_file: no user of realm {auth['realm']!r} in {auth['users_file']}"
                " (sosimple adduser --realm)"
            )


def _check_tls(cfg: Config) -> None:
    """[tls] certificate and key go together, and a tls: listener needs them."""
    tls = cfg.sections["tls"]
    if bool(tls["certificate"]) != bool(tls["key"]):
        missing = "key" if tls["certificate"] else "certificate"
        raise ConfigError("tls", missing, "certificate and key go together: set both or neither")
    missing = [k for k in ("certificate", "key") if not tls[k]]
    for a in cfg.proxy["listen"]:
        if a.transport == "tls" and missing:
            raise ConfigError("proxy", "listen", f"{a} needs [tls] {' and '.join(missing)}, which are not set")


def certificate_settings(cfg: Config) -> list[tuple[str, str]]:
    """(section, path) of every ``certificate`` key that is set, in the
    sections whose schema has one (``[tls]``, ``[admin]``, rings...): what
    ``sosimple check`` watches for expiry, whichever section adds one next."""
    schemas, prefixed, _ = _schemas()
    found = []
    for name, section in cfg.sections.items():
        schema = schemas.get(name) or next((s for p, s in prefixed.items() if name.startswith(p)), None)
        if schema is not None and "certificate" in schema and section.get("certificate"):
            found.append((name, str(section["certificate"])))
    return found


def tls_config(cfg: Config) -> TLSConfig:
    """The ``[tls]`` section as the TLS code takes it."""
    return TLSConfig(**cfg.sections["tls"])


def _check_admin(cfg: Config) -> None:
    """[admin]: secure by default (a non-loopback listener needs HTTPS and
    credentials) and files that can be read; the rules are web/listener.py's."""
    from sosimple_proxy.web.listener import AdminSetupError, check_admin_settings

    try:
        check_admin_settings(cfg.sections["admin"])
    except AdminSetupError as e:
        raise ConfigError("admin", e.key, e.problem) from None


def _check_store(cfg: Config) -> None:
    """[store]: its own listener is HTTPS off loopback; the rules are web/store.py's."""
    from sosimple_proxy.web.store import StoreSetupError, check_store_settings

    try:
        check_store_settings(cfg.sections["store"])
    except StoreSetupError as e:
        raise ConfigError("store", e.key, e.problem) from None


def _check_did(cfg: Config) -> None:
    """[did]: each key a number the dial plan reads, each value a SIP AoR."""

    plan = DialPlan(cfg.sections["pstn"]["country_code"], cfg.sections["pstn"]["local_patterns"])
    for number, aor in cfg.sections.get("did", {}).items():
        try:
            did_number(plan, number)
        except ValueError as e:
            raise ConfigError("did", number, str(e)) from None
        try:
            uri = parse_uri(aor.strip())
        except ParseError as e:
            raise ConfigError("did", number, f"{aor.strip()!r} is not a SIP URI ({e})") from None
        if not uri.is_sip or not uri.user:
            raise ConfigError("did", number, f"{aor.strip()!r} is not an address of record (sip:user@domain)")


def parse_config(text: str, path: str = "site.ini") -> Config:
    """Parse and validate site.ini text; raises ConfigError."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), strict=True, empty_lines_in_values=False
    )
    parser.optionxform = str.lower  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateOptionError as e:
        raise ConfigError(e.section, e.option, "is given twice") from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(e.section, None, "section is given twice") from None
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError("(top)", None, f"line {e.lineno}: a key before any [section] header") from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0] if e.errors else "?"
        raise ConfigError("(file)", None, f"line {lineno}: not a 'key = value' line") from None

    warnings: list[str] = []
    sections: dict[str, Section] = {}
    schemas, prefixed, free_form = _schemas()
    for name in parser.sections():
        raw = dict(parser.items(name))
        if name in schemas:
            continue
        prefix = next((p for p in prefixed if name.startswith(p) and len(name) > len(p)), None)
        if prefix:
            sections[name] = _parse_section(name, prefixed[prefix], raw, warnings)
        elif name in free_form:
            s = Section(raw)
            s.name = name
            sections[name] = s
        else:
            warnings.append(f"site.ini: [{name}]: unknown section, ignored")
    for name, schema in schemas.items():
        raw = dict(parser.items(name)) if parser.has_section(name) else {}
        sections[name] = _parse_section(name, schema, raw, warnings)
    for name in free_form:
        sections.setdefault(name, Section())
    cfg = Config(path=path, sections=sections, warnings=warnings)
    _cross_checks(cfg)
    _check_admin(cfg)
    _check_store(cfg)
    return cfg


def load_config(path: str) -> Config:
    """Read site.ini from disk; a missing or unreadable file is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("(file)", None, f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("(file)", None, f"{path} is not UTF-8 text") from None
    return parse_config(text, path)
