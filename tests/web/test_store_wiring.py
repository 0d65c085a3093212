"""The composition root puts the users' store on its own listener or on the admin one."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock

from sosimple_proxy.config import parse_config
from sosimple_proxy.security.users import UserEntry
from sosimple_proxy.web.store import StoreAPI
from sosimple_proxy.wiring import build_service

BASE = "[proxy]\nlisten =\ndomains = example.com\n[overlay]\nlisten =\n"


def _admin_root(top):
    admin = top.getServiceNamed("admin")
    return admin.factory.resource


def test_on_the_admin_listener_by_default(tmp_path):
    users = tmp_path / "users"
    users.write_text(UserEntry.from_password("alice", "example.com", "pw").line() + "\n")
    cfg = parse_config(
        BASE + f"[admin]\nlisten = tcp:0:interface=127.0.0.1\n[auth]\nusers_file = {users}\n"
        f"nonce_secret_file = {tmp_path / 'secret'}\n[store]\nmax_value = 10\nmax_names = 2\n"
    )
    top = build_service(cfg, MemoryReactorClock())
    store = _admin_root(top).store
    assert isinstance(store, StoreAPI)
    assert (store.max_value, store.max_names, store.domains) == (10, 2, frozenset({"example.com"}))
    assert store.credentials is not None and store.credentials.realm == "example.com"
    assert [s.name for s in top if s.name == "store"] == []


def test_on_its_own_listener_and_not_the_admin_one():
    cfg = parse_config(BASE + "[admin]\nlisten = tcp:0:interface=127.0.0.1\n[store]\nlisten = tcp:0:interface=127.0.0.1\n")
    top = build_service(cfg, MemoryReactorClock())
    own = top.getServiceNamed("store")
    assert isinstance(own.factory.resource, StoreAPI)
    assert own.factory.resource.credentials is None  # no users file: only signatures
    assert _admin_root(top).store is None


def test_no_listener_no_store():
    top = build_service(parse_config(BASE + "[admin]\nlisten =\n"), MemoryReactorClock())
    assert [s.name for s in top if s.name in ("store", "admin")] == []
