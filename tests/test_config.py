"""site.ini parsing: defaults, every kind of bad value, warnings."""

import pytest

from sosimple_proxy.config import ConfigError, load_config, parse_config
from sosimple_proxy.sip.address import ListenAddress


def test_defaults_follow_the_contract():
    cfg = parse_config("")
    assert cfg.proxy["listen"] == (ListenAddress("udp", "127.0.0.1", 5060), ListenAddress("tcp", "127.0.0.1", 5060))
    assert cfg.proxy["domains"] == ("localhost",)
    assert cfg.proxy["mode"] == "proxy"
    assert cfg.proxy["record_route"] is True
    assert cfg.proxy["recurse_on_3xx"] is False
    assert cfg.proxy["max_message_size"] == 65536
    assert (cfg.sip["t1"], cfg.sip["t2"], cfg.sip["t4"], cfg.sip["timer_c"]) == (0.5, 4.0, 5.0, 180.0)
    assert cfg.sip["udp_rcvbuf"] == 4194304
    assert cfg.sip["tcp_idle_timeout"] == 600.0
    assert cfg.section("location")["order"] == ("local", "overlay", "routes", "dns", "pstn")
    assert cfg.warnings == []


def test_shipped_site_ini_is_valid_and_warns_about_nothing():
    cfg = load_config("conf/site.ini")
    assert cfg.warnings == []
    assert cfg.proxy["domains"] == ("localhost",)


def test_ipv6_listen_and_domain_lists():
    cfg = parse_config("[proxy]\nlisten = udp:[::1]:5062, tcp:[::1]:0\ndomains = Example.COM, b.test  c.test\n")
    assert cfg.proxy["listen"] == (ListenAddress("udp", "::1", 5062), ListenAddress("tcp", "::1", 0))
    assert str(cfg.proxy["listen"][0]) == "udp:[::1]:5062"
    assert cfg.proxy["domains"] == ("example.com", "b.test", "c.test")


@pytest.mark.parametrize(
    "text, section, key, words",
    [
        ("[proxy]\nlisten = udp:127.0.0.1:notaport\n", "proxy", "listen", "not a port number"),
        ("[proxy]\nlisten = udp:127.0.0.1:70000\n", "proxy", "listen", "out of range"),
        ("[proxy]\nlisten = sctp:127.0.0.1:5060\n", "proxy", "listen", "transport"),
        ("[proxy]\nlisten = udp:::1:5060\n", "proxy", "listen", "transport:host:port"),
        ("[proxy]\nlisten = udp:not-an-ip:5060\n", "proxy", "listen", "not an IP address"),
        ("[proxy]\nlisten = udp:127.0.0.1:5060, udp:127.0.0.1:5060\n", "proxy", "listen", "listed twice"),
        ("[proxy]\nlisten = tls:127.0.0.1:5061\n", "proxy", "listen", "needs [tls] certificate and key, which are not set"),
        ("[proxy]\nlisten = udp:127.0.0.1:5060, sips:127.0.0.1:5061\n", "proxy", "listen", "sips listeners are not supported (SIP over TLS listens as tls:)"),
        ("[auth]\nrequired = yes\n", "auth", "required", "needs [auth] users_file"),
        ("[auth]\nusers_file = /nonexistent/users\n", "auth", "users_file", "cannot read"),
        ("[auth]\nalgorithms = SHA-512\n", "auth", "algorithms", "unknown digest algorithm"),
        ("[auth]\nalgorithms = MD5-sess\n", "auth", "algorithms", "cannot be offered"),
        ("[auth]\nnonce_ttl = 0\n", "auth", "nonce_ttl", "greater than 0"),
        ("[auth]\ntrusted = 10.0.0.0/33\n", "auth", "trusted", "not an IP address or network"),
        ("[pstn]\nemergency = 911 help\n", "pstn", "emergency", "not a number"),
        ("[pstn]\ncallers = trusted alice\n", "pstn", "callers", "stands alone"),
        ("[proxy]\ndomains = bad_domain!\n", "proxy", "domains", "not a domain name"),
        ("[proxy]\nmode = relay\n", "proxy", "mode", "not one of proxy, redirect"),
        ("[proxy]\nrecord_route = maybe\n", "proxy", "record_route", "not yes or no"),
        ("[proxy]\nmax_message_size = 12\n", "proxy", "max_message_size", "below the minimum"),
        ("[proxy]\nmax_message_size = big\n", "proxy", "max_message_size", "not an integer"),
        ("[sip]\nt1 = 0\n", "sip", "t1", "greater than 0"),
        ("[sip]\nt1 = nan\n", "sip", "t1", "not a finite number"),
        ("[sip]\nt2 = 0.1\n", "sip", "t2", "must not be below t1"),
        ("[sip]\nudp_rcvbuf = -1\n", "sip", "udp_rcvbuf", "below the minimum"),
        ("[registrar]\nmin_expires = 7200\n", "registrar", "min_expires", "above max_expires"),
        ("[overlay]\nbootstrap = 127.0.0.1\n", "overlay", "bootstrap", "not host:port"),
        ("[overlay]\nkey_scheme = tree\n", "overlay", "key_scheme", "not one of flat, domain"),
        ("[overlay]\ndomain_writers = anyone\n", "overlay", "domain_writers", "not one of listed, any"),
        ("[overlay]\nlisten = tcp:notaport\n", "overlay", "listen", "not a Twisted server endpoint string"),
        ("[overlay]\nlisten = 7000\n", "overlay", "listen", "not a Twisted server endpoint string"),
        ("[overlay]\nlisten = tcp:99999\n", "overlay", "listen", "out of range"),
        ("[overlay]\nadvertise = 127.0.0.1:1 127.0.0.1:2\n", "overlay", "advertise", "not a list"),
        ("[overlay]\nadvertise = 127.0.0.1\n", "overlay", "advertise", "not host:port"),
        ("[overlay]\nnode_id = xyz\n", "overlay", "node_id", "not a hex id"),
        ("[overlay]\nwrite_quorum = 4\n", "overlay", "write_quorum", "above replicas + 1 (3)"),
        ("[overlay]\nreplicas = 0\nwrite_quorum = 2\n", "overlay", "write_quorum", "above replicas + 1 (1)"),
        ("[overlay]\nwrite_quorum = 0\n", "overlay", "write_quorum", "below the minimum"),
        ("[overlay]\nwrite_timeout = 0\n", "overlay", "write_timeout", "greater than 0"),
        ("[overlay]\nread_repair = maybe\n", "overlay", "read_repair", "yes"),
        ("[overlay]\npublish_path = sometimes\n", "overlay", "publish_path", "not one of always, needed"),
        ("[overlay]\nrpc_timeout = -1\n", "overlay", "rpc_timeout", "greater than 0"),
        ("[admin]\nlisten = tcp:8080:interfase=127.0.0.1\n", "admin", "listen", "not a Twisted server endpoint string"),
        ("[admin]\nmax_value = 0\n", "admin", "max_value", "below the minimum"),
        ("[gateway:a]\npriority = high\n", "gateway:a", "priority", "not an integer"),
        ("[proxy]\nlisten = udp:127.0.0.1:5060\nlisten = tcp:127.0.0.1:5060\n", "proxy", "listen", "given twice"),
        ("[sip]\nmessage_timeout = 0\n", "sip", "message_timeout", "greater than 0"),
        ("[limits]\nrequests_per_second = fast\n", "limits", "requests_per_second", "not a number"),
        ("[limits]\nburst = 0\n", "limits", "burst", "below the minimum of 1"),
        ("[limits]\nban_seconds = -1\n", "limits", "ban_seconds", "must not be negative"),
        ("[limits]\nallow = 10.0.0.0/8 intranet\n", "limits", "allow", "'intranet' is not an IP address"),
        ("[limits]\nmax_transactions = 1.5\n", "limits", "max_transactions", "not an integer"),
        ("[limits]\nkernel_bans = maybe\n", "limits", "kernel_bans", "not one of auto, yes, no"),
        ("[limits]\nconnections_per_second = -2\n", "limits", "connections_per_second", "must not be negative"),
    ],
)
def test_bad_values_name_section_key_and_problem(text, section, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    err = info.value
    assert (err.section, err.key) == (section, key)
    line = str(err)
    assert "\n" not in line
    assert line.startswith(f"site.ini: [{section}] {key}: ")
    assert words in line


def test_broken_file_structure_is_one_line():
    with pytest.raises(ConfigError) as info:
        parse_config("listen = x\n[proxy]\n")
    assert "before any [section]" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config("[proxy]\nthis line has no equals sign\n")
    assert "line 2" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.ini"))
    assert "cannot read" in str(info.value)


def test_unknown_sections_and_keys_warn_but_do_not_stop():
    cfg = parse_config("[proxy]\ncolour = blue\n[future]\nx = 1\n[routes]\nother.test = sip:127.0.0.1:5070\n")
    assert "site.ini: [proxy] colour: unknown key, ignored" in cfg.warnings
    assert "site.ini: [future]: unknown section, ignored" in cfg.warnings
    assert cfg.section("routes")["other.test"] == "sip:127.0.0.1:5070"


def test_named_sections():
    cfg = parse_config("[overlay:corp]\nlisten = tcp:7001\ndomains = corp.test\n[gateway:a]\nuri = sip:127.0.0.1:5080\n")
    assert cfg.named("overlay")["corp"]["domains"] == ("corp.test",)
    assert cfg.named("gateway")["a"]["uri"] == "sip:127.0.0.1:5080"


def test_overlay_and_admin_listeners_are_endpoint_strings_or_empty():
    cfg = parse_config("[overlay]\nlisten = tcp:0:interface=127.0.0.1\nadvertise = [::1]:7000\nnode_id = 0xff\nallow_chosen_ids = yes\n[admin]\nlisten =\n")
    assert cfg.section("overlay")["listen"] == "tcp:0:interface=127.0.0.1"
    assert cfg.section("overlay")["advertise"] == "[::1]:7000"
    assert cfg.section("admin")["listen"] == ""
    defaults = parse_config("")
    assert defaults.section("overlay")["listen"] == "tcp:7000:interface=127.0.0.1"
    assert defaults.section("admin")["listen"] == "tcp:8080:interface=127.0.0.1"
    assert (defaults.section("admin")["max_name"], defaults.section("admin")["max_value"]) == (256, 1048576)


def test_named_ring_needs_domains_and_gets_its_own_state_dir():
    with pytest.raises(ConfigError) as e:
        parse_config("[overlay:corp]\nlisten = tcp:7100:interface=127.0.0.1\n", "x.ini")
    assert "[overlay:corp] domains" in str(e.value)
    cfg = parse_config("[overlay:corp]\nlisten = tcp:7100:interface=127.0.0.1\ndomains = corp.test\n", "x.ini")
    assert cfg.named("overlay")["corp"]["state_dir"] == "var/overlay-corp"


def test_limits_defaults_and_values():
    import ipaddress

    from sosimple_proxy.security.limits import LimitsConfig

    cfg = parse_config("")
    assert cfg.sip["message_timeout"] == 30.0
    assert LimitsConfig(**cfg.section("limits")) == LimitsConfig()
    cfg = parse_config("[limits]\nrequests_per_second = 0\nallow = 127.0.0.0/8, ::1\nmax_connections = 0\n")
    limits = cfg.section("limits")
    assert limits["requests_per_second"] == 0.0 and limits["max_connections"] == 0
    assert limits["allow"] == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def test_shipped_site_ini_turns_limits_on():
    from sosimple_proxy.security.limits import LimitsConfig

    cfg = load_config("conf/site.ini")
    limits = LimitsConfig(**cfg.section("limits"))
    assert limits.requests_per_second > 0 and limits.ban_seconds > 0 and limits.allow == ()
    assert cfg.sip["message_timeout"] == 30.0


def test_auth_defaults_follow_the_contract(tmp_path):
    from sosimple_proxy.security.algorithms import Algorithm
    from sosimple_proxy.security.users import UserEntry

    auth = parse_config("[proxy]\ndomains = b.test c.test\n").section("auth")
    assert auth["users_file"] == "" and auth["required"] is False
    assert auth["realm"] == "b.test"
    assert auth["algorithms"] == (Algorithm.SHA256, Algorithm.MD5)
    assert auth["nonce_ttl"] == 300.0 and auth["trusted"] == ()
    assert auth["nonce_secret_file"] == "var/nonce-secret"
    pstn = parse_config("").section("pstn")
    assert pstn["callers"] == ("authenticated",) and pstn["emergency"] == ()

    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("alice", "b.test", "pw").line() + "\n")
    cfg = parse_config(f"[proxy]\ndomains = b.test\n[auth]\nusers_file = {users}\n")
    assert cfg.section("auth")["required"] is True and cfg.warnings == []
    assert parse_config(f"[auth]\nusers_file = {users}\nrequired = no\n").section("auth")["required"] is False
    # users of another realm only: a warning, not an error
    cfg = parse_config(f"[proxy]\ndomains = other.test\n[auth]\nusers_file = {users}\n")
    assert any("no user of realm 'other.test'" in w for w in cfg.warnings)


def test_a_bad_users_file_names_its_line(tmp_path):
    users = tmp_path / "users"
    users.write_text("alice:b.test:password\n")
    with pytest.raises(ConfigError) as e:
        parse_config(f"[auth]\nusers_file = {users}\n")
    assert str(e.value).startswith("site.ini: [auth] users_file: ") and ":1:" in str(e.value)


# --- [admin]: secure by default (HTTPS and credentials off loopback)


@pytest.fixture
def admin_files(tmp_path):
    from tests.web.guarded import write_files

    return write_files(tmp_path)


def _admin(listen: str, **keys: str) -> str:
    return "[admin]\n" + f"listen = {listen}\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


@pytest.mark.parametrize("listen", ["tcp:8443", "tcp:8443:interface=0.0.0.0", "tcp6:8443", "tcp:8443:interface=192.0.2.1"])
def test_a_non_loopback_admin_listener_needs_tls_and_users(listen, admin_files):
    needs = "site.ini: [admin] listen: a non-loopback admin listener needs [admin] certificate, key and users_file"
    for keys in ({}, {"certificate": admin_files["certificate"], "key": admin_files["key"]}, {"users_file": admin_files["users_file"]}):
        with pytest.raises(ConfigError) as e:
            parse_config(_admin(listen, **keys))
        assert str(e.value) == needs
        assert len(str(e.value).splitlines()) == 1
    keys = {k: admin_files[k] for k in ("certificate", "key", "users_file")}
    cfg = parse_config(_admin(listen, **keys))
    assert cfg.section("admin")["users_file"] == admin_files["users_file"]
    assert cfg.section("admin")["realm"] == "sosimple-admin"


@pytest.mark.parametrize("listen", ["tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.2", r"tcp6:8080:interface=\:\:1", ""])
def test_a_loopback_admin_listener_may_go_without(listen):
    cfg = parse_config(_admin(listen))
    assert (cfg.section("admin")["certificate"], cfg.section("admin")["users_file"]) == ("", "")


@pytest.mark.parametrize(
    "keys, key, words",
    [
        ({"certificate": "/nonexistent/admin.pem", "key": "KEY"}, "certificate", "no such file"),
        ({"certificate": "CERT", "key": "/nonexistent/admin.key"}, "key", "no such file"),
        ({"certificate": "CERT"}, "key", "set both or neither"),
        ({"certificate": "KEY", "key": "KEY"}, "certificate", "not a usable PEM certificate"),
        ({"users_file": "/nonexistent/users"}, "users_file", "cannot read"),
        ({"users_file": "USERS", "realm": "other-realm"}, "users_file", "no user of realm 'other-realm'"),
        ({"users_file": "CERT"}, "users_file", "expected user:realm"),
    ],
)
def test_bad_admin_files_stop_startup_naming_the_key(admin_files, keys, key, words):
    names = {"CERT": admin_files["certificate"], "KEY": admin_files["key"], "USERS": admin_files["users_file"]}
    text = _admin("tcp:8443:interface=127.0.0.1", **{k: names.get(v, v) for k, v in keys.items()})
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    message = str(e.value)
    assert message.startswith(f"site.ini: [admin] {key}: "), message
    assert words in message and len(message.splitlines()) == 1


def test_an_ssl_endpoint_with_an_admin_certificate_is_refused(admin_files):
    keys = {k: admin_files[k] for k in ("certificate", "key", "users_file")}
    text = _admin(f"ssl:8443:privateKey={admin_files['key']}:certKey={admin_files['certificate']}", **keys)
    with pytest.raises(ConfigError, match=r"\[admin\] listen: use a tcp: endpoint"):
        parse_config(text)


@pytest.mark.parametrize(
    "text, key, words",
    [
        ("[overlay]\ntrust = maybe\n", "trust", "not one of ca, tofu"),
        ("[overlay]\ntrust = ca\n", "trust", "ca needs ca"),
        ("[overlay]\nca = ring-ca.pem\ntrust = tofu\n", "trust", "tofu with a ca"),
        ("[overlay]\nnode_id = ff\n", "node_id", "allow_chosen_ids = yes"),
        ("[overlay]\nallow_chosen_ids = perhaps\n", "allow_chosen_ids", ""),
    ],
)
def test_ring_trust_that_contradicts_itself_stops_startup(text, key, words):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert (info.value.section, info.value.key) == ("overlay", key)
    assert words in str(info.value)


def test_ring_trust_defaults_from_ca_and_chosen_ids_are_warned():
    assert parse_config("").section("overlay")["trust"] == "tofu"
    assert parse_config("[overlay]\nca = ring-ca.pem\n").section("overlay")["trust"] == "ca"
    cfg = parse_config("[overlay]\nnode_id = ff\nallow_chosen_ids = yes\n")
    assert cfg.section("overlay")["allow_chosen_ids"] is True
    assert any("allow_chosen_ids = yes: WARNING" in w for w in cfg.warnings)
    with pytest.raises(ConfigError) as info:  # a named ring too
        parse_config("[overlay:corp]\nlisten = tcp:7001\ndomains = corp.test\ntrust = ca\n")
    assert (info.value.section, info.value.key) == ("overlay:corp", "trust")
