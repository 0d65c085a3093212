"""The users file: parsing with line numbers, editing atomically with mode 0600, safe reloads."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from sosimple_proxy.security import users
from sosimple_proxy.security.algorithms import Algorithm, ha1
from sosimple_proxy.security.users import UserEntry, UserExists, UserNotFound, UsersFile, UsersFileError

ALICE = UserEntry.from_password("alice", "example.com", "wonderland")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_entry_holds_both_ha1s():
    assert ALICE.md5_ha1 == ha1(Algorithm.MD5, "alice", "example.com", "wonderland")
    assert ALICE.sha256_ha1 == ha1(Algorithm.SHA256, "alice", "example.com", "wonderland")
    assert len(ALICE.md5_ha1) == 32 and len(ALICE.sha256_ha1) == 64
    assert ALICE.ha1(Algorithm.MD5_SESS) == ALICE.md5_ha1
    assert "wonderland" not in ALICE.line()


def test_parse_comments_blank_lines_and_lookup():
    text = f"# our users\n\n   \n{ALICE.line()}\n  # indented comment\n{ALICE.line().replace('example.com', 'other.org', 1)}\n"
    table = users.parse_users(text)
    assert len(table) == 2
    assert table.lookup("alice", "example.com") == ALICE
    assert table.lookup("alice", "other.org").realm == "other.org"
    assert table.lookup("Alice", "example.com") is None
    assert table.lookup("alice", "nowhere") is None
    assert table.realms() == {"example.com", "other.org"}


def test_upper_case_hex_is_accepted_and_normalised():
    line = f"bob:example.com:{ALICE.md5_ha1.upper()}:{ALICE.sha256_ha1.upper()}"
    assert users.parse_users(line).lookup("bob", "example.com").md5_ha1 == ALICE.md5_ha1


@pytest.mark.parametrize(
    "bad, words",
    [
        ("alice:example.com:secret", "found 3 field"),
        ("alice:example.com:wonderland:wonderland", "MD5 HA1 must be 32 hex digits"),
        (f"alice:example.com:{ALICE.md5_ha1}:{ALICE.md5_ha1}", "SHA-256 HA1 must be 64"),
        (f"alice:example.com:{'z' * 32}:{ALICE.sha256_ha1}", "MD5 HA1"),
        (f"alice:example.com:5060:{ALICE.md5_ha1}:{ALICE.sha256_ha1}", "found 5 field"),
        (f":example.com:{ALICE.md5_ha1}:{ALICE.sha256_ha1}", "user is empty"),
        (f"alice::{ALICE.md5_ha1}:{ALICE.sha256_ha1}", "realm is empty"),
        (ALICE.line(), "already on line 2"),
    ],
)
def test_a_bad_line_is_named_by_number(bad, words):
    text = f"# header\n{ALICE.line()}\n\n{bad}\n"
    with pytest.raises(UsersFileError) as e:
        users.parse_users(text, "var/users")
    assert str(e.value).startswith("var/users:4: ")
    assert words in str(e.value)


def test_add_change_delete(tmp_path):
    path = str(tmp_path / "sub" / "users")
    users.add_user(path, "alice", "example.com", "wonderland")
    assert mode(path) == 0o600
    users.add_user(path, "bob", "example.com", "builder")
    with pytest.raises(UserExists):
        users.add_user(path, "alice", "example.com", "again")
    table = users.read_users(path)
    assert table.lookup("alice", "example.com") == ALICE
    users.set_password(path, "alice", "example.com", "looking-glass")
    assert users.read_users(path).lookup("alice", "example.com") == UserEntry.from_password(
        "alice", "example.com", "looking-glass"
    )
    users.delete_user(path, "alice", "example.com")
    table = users.read_users(path)
    assert table.lookup("alice", "example.com") is None and table.lookup("bob", "example.com") is not None
    with pytest.raises(UserNotFound):
        users.delete_user(path, "alice", "example.com")
    with pytest.raises(UserNotFound):
        users.set_password(path, "alice", "example.com", "x")
    assert mode(path) == 0o600
    assert sorted(os.listdir(tmp_path / "sub")) == ["users"]  # no temporary or lock file left


def test_editing_keeps_comments_and_other_lines_and_fixes_the_mode(tmp_path):
    path = tmp_path / "users"
    bob = UserEntry.from_password("bob", "example.com", "builder")
    path.write_text(f"# managed by hand too\n{ALICE.line()}\n\n# bob below\n{bob.line()}\n")
    os.chmod(path, 0o644)
    users.set_password(str(path), "alice", "example.com", "new")
    lines = path.read_text().splitlines()
    assert lines[0] == "# managed by hand too" and lines[2:4] == ["", "# bob below"] and lines[4] == bob.line()
    assert mode(path) == 0o600


def test_editing_a_broken_file_changes_nothing(tmp_path):
    path = tmp_path / "users"
    text = f"{ALICE.line()}\nbroken line\n"
    path.write_text(text)
    with pytest.raises(UsersFileError, match=":2: "):
        users.add_user(str(path), "bob", "example.com", "builder")
    assert path.read_text() == text


def test_missing_file_for_passwd_and_deluser_is_not_found(tmp_path):
    with pytest.raises(UserNotFound, match="no such file"):
        users.set_password(str(tmp_path / "none"), "alice", "example.com", "x")
    with pytest.raises(UserNotFound):
        users.delete_user(str(tmp_path / "none"), "alice", "example.com")


@pytest.mark.parametrize("user", ["a:b", "line\nbreak", "#comment", " padded", ""])
def test_names_that_cannot_be_stored_are_refused(tmp_path, user):
    with pytest.raises(ValueError):
        users.add_user(str(tmp_path / "users"), user, "example.com", "pw")
    assert not (tmp_path / "users").exists()


def test_unicode_names_and_passwords(tmp_path):
    path = str(tmp_path / "users")
    users.add_user(path, "jörg", "example.com", "pässwörd")
    entry = users.read_users(path).lookup("jörg", "example.com")
    assert entry.md5_ha1 == ha1(Algorithm.MD5, "jörg", "example.com", "pässwörd")


def test_concurrent_editors_lose_nothing(tmp_path):
    path = str(tmp_path / "users")
    errors = []

    def add(i):
        try:
            users.add_user(path, f"user{i}", "example.com", "pw")
        except Exception as e:  # pragma: no cover - the failure is reported below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(users.read_users(path)) == 8


def test_reload_keeps_the_old_table_when_the_new_file_is_bad(tmp_path):
    path = tmp_path / "users"
    path.write_text(ALICE.line() + "\n")
    f = UsersFile(str(path))
    assert f.lookup("alice", "example.com") == ALICE
    old = f.table
    path.write_text(ALICE.line() + "\nalice:example.com:oops\n")
    with pytest.raises(UsersFileError, match=r"users:2: expected user:realm"):
        f.reload()
    assert f.table is old and f.lookup("alice", "example.com") == ALICE
    path.unlink()
    with pytest.raises(UsersFileError, match="cannot read"):
        f.reload()
    assert f.table is old
    users.add_user(str(path), "bob", "example.com", "builder")
    f.reload()
    assert f.lookup("alice", "example.com") is None and f.lookup("bob", "example.com") is not None


def test_reload_if_changed_sees_another_proxys_edit(tmp_path):
    path = str(tmp_path / "users")
    users.add_user(path, "alice", "example.com", "wonderland")
    mine, theirs = UsersFile(path), UsersFile(path)
    assert mine.reload_if_changed() is False
    users.set_password(path, "alice", "example.com", "changed")  # a new inode: atomic replace
    assert mine.reload_if_changed() is True
    assert mine.lookup("alice", "example.com") != theirs.lookup("alice", "example.com")
    assert mine.reload_if_changed() is False


def test_a_file_that_is_not_utf8_or_missing_stops_startup(tmp_path):
    path = tmp_path / "users"
    path.write_bytes(ALICE.line().encode() + b"\n\xff\xfe:x\n")
    with pytest.raises(UsersFileError, match="users:2: not UTF-8"):
        UsersFile(str(path))
    with pytest.raises(UsersFileError, match="cannot read"):
        UsersFile(str(tmp_path / "missing"))
