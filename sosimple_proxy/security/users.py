"""The users file (``[auth] users_file``): who may authenticate, never a clear password.

One line per user::

    # comments and blank lines are kept
    alice:example.com:<md5 HA1, 32 hex>:<sha-256 HA1, 64 hex>

HA1 = H(user:realm:password) (RFC 7616 3.4.2), so the file lets nobody
log in elsewhere with the same password, but it is still a password
equivalent for this realm: it is written with mode 0600.

Several proxies may share one file: they only read it, and ``UsersFile``
re-reads it on demand (``reload``; ``reload_if_changed`` for a cheap
periodic check), keeping the table it had when the new text is bad.  The
editing functions (``add_user``, ``set_password``, ``delete_user``, used
by ``sosimple adduser``/``passwd``/``deluser``) change one line and keep
every other line as it was, replace the file atomically (a reader sees the
old file or the new one, never half of one) and serialise concurrent
editors with a lock on the file's directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import string
import tempfile
from contextlib import contextmanager
from typing import Iterator, Mapping

import attrs

from .algorithms import Algorithm, ha1

FILE_MODE = 0o600
_HEX = frozenset(string.hexdigits)
_FORBIDDEN_NAME_CHARS = frozenset(":\r\n\x00")


class UsersFileError(Exception):
    """A users file that cannot be used; the message names the file and line."""


class UserExists(UsersFileError):
    """``add_user`` for a (user, realm) the file already has."""


class UserNotFound(UsersFileError):
    """``set_password``/``delete_user`` for a (user, realm) the file lacks."""


@attrs.frozen
class UserEntry:
    """One user of one realm and the HA1 of their password for each algorithm."""

    user: str
    realm: str
    md5_ha1: str
    sha256_ha1: str

    @classmethod
    def from_password(cls, user: str, realm: str, password: str) -> "UserEntry":
        check_name("user", user)
        check_name("realm", realm)
        return cls(user, realm, ha1(Algorithm.MD5, user, realm, password), ha1(Algorithm.SHA256, user, realm, password))

    def ha1(self, algorithm: Algorithm) -> str:
        return self.md5_ha1 if algorithm.base is Algorithm.MD5 else self.sha256_ha1

    def line(self) -> str:
        return f"{self.user}:{self.realm}:{self.md5_ha1}:{self.sha256_ha1}"


def check_name(what: str, name: str) -> None:
    """A user or realm must fit in one field of the file; ValueError otherwise."""
    if not name:
        raise ValueError(f"the {what} is empty")
    bad = _FORBIDDEN_NAME_CHARS.intersection(name)
    if bad:
        raise ValueError(f"the {what} {name!r} contains {', '.join(sorted(map(repr, bad)))}")
    if what == "user" and name.lstrip().startswith("#"):
        raise ValueError(f"the user {name!r} would read as a comment")
    if name != name.strip():
        raise ValueError(f"the {what} {name!r} starts or ends with a space")


def parse_line(line: str) -> UserEntry | None:
    """One line -> its entry, or None for a comment or a blank line; ValueError if bad."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    fields = text.split(":")
    if len(fields) != 4:
        raise ValueError(f"expected user:realm:md5-ha1:sha256-ha1, found {len(fields)} field(s)")
    user, realm, md5, sha256 = fields
    check_name("user", user)
    check_name("realm", realm)
    for name, value, length in (("MD5", md5, 32), ("SHA-256", sha256, 64)):
        if len(value) != length or not _HEX.issuperset(value):
            raise ValueError(f"the {name} HA1 must be {length} hex digits (never a clear password)")
    return UserEntry(user, realm, md5.lower(), sha256.lower())


class UserTable:
    """The users of one reading of the file, looked up by (user, realm)."""

    def __init__(self, entries: Mapping[tuple[str, str], UserEntry] | None = None) -> None:
        self._entries: dict[tuple[str, str], UserEntry] = dict(entries or {})

    def lookup(self, user: str, realm: str) -> UserEntry | None:
        return self._entries.get((user, realm))

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[UserEntry]:
        return iter(self._entries.values())

    def realms(self) -> frozenset[str]:
        return frozenset(realm for _, realm in self._entries)


def parse_users(text: str, source: str = "users file") -> UserTable:
    """The whole file's text -> a table; UsersFileError naming ``source:line`` if bad."""
    entries: dict[tuple[str, str], UserEntry] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = parse_line(line)
        except ValueError as e:
            raise UsersFileError(f"{source}:{number}: {e}") from None
        if entry is None:
            continue
        key = (entry.user, entry.realm)
        if key in entries:
            raise UsersFileError(
                f"{source}:{number}: {entry.user}@{entry.realm} is already on line {first_seen[key]}"
            )
        entries[key] = entry
        first_seen[key] = number
    return UserTable(entries)


def read_users(path: str) -> UserTable:
    """Read and parse the file at ``path``; UsersFileError (one line) if it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsersFileError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsersFileError(f"{path}:{line}: not UTF-8") from None
    return parse_users(text, path)


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class UsersFile:
    """The users file a proxy reads: the current table, and re-reading it safely."""

    def __init__(self, path: str) -> None:
        """Read ``path`` now; UsersFileError if it cannot be used (startup should stop)."""
        self.path = path
        self._signature = _signature(path)
        self.table = read_users(path)

    def lookup(self, user: str, realm: str) -> UserEntry | None:
        return self.table.lookup(user, realm)

    def reload(self) -> None:
        """Read the file again (SIGHUP).  If the new text is bad, the old table
        stays in force and UsersFileError says why: a typo made while editing
        must not lock every user out."""
        signature = _signature(self.path)
        table = read_users(self.path)
        self.table = table
        self._signature = signature

    def reload_if_changed(self) -> bool:
        """``reload`` only if the file was replaced or modified since the last
        reading (another proxy's ``sosimple passwd`` on a shared file); whether
        it re-read.  Raises UsersFileError as ``reload`` does."""
        if _signature(self.path) == self._signature:
            return False
        self.reload()
        return True


# --- editing (the sosimple command) ---------------------------------------


@contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive lock for one read-modify-write.  Taken on the directory
    (the file itself is replaced, so a lock on it would guard a dead inode),
    which leaves no lock file behind."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_lines(path: str, missing_ok: bool) -> list[str]:
    """The file's lines (validated as a whole first, so we never rewrite a broken file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if missing_ok:
            return []
        raise UserNotFound(f"{path}: no such file") from None
    except OSError as e:
        raise UsersFileError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsersFileError(f"{path}:{line}: not UTF-8") from None
    parse_users(text, path)
    return text.splitlines()


def write_atomically(path: str, lines: list[str]) -> None:
    """Replace ``path`` with ``lines``: a temporary file with mode 0600 in the same
    directory, flushed to disk, then renamed over the old one (atomic on POSIX)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600 already; say it where it matters
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            fd = -1
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:  # pragma: no cover - some filesystems refuse fsync on a directory
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EACCES):
            raise


def _index(lines: list[str], user: str, realm: str) -> int | None:
    for i, line in enumerate(lines):
        entry = parse_line(line)
        if entry is not None and (entry.user, entry.realm) == (user, realm):
            return i
    return None


def add_user(path: str, user: str, realm: str, password: str) -> None:
    """Add a user (creating the file if needed); UserExists if already there."""
    entry = UserEntry.from_password(user, realm, password)
    with _locked(path):
        lines = _read_lines(path, missing_ok=True)
        if _index(lines, user, realm) is not None:
            raise UserExists(f"{user}@{realm} is already in {path}")
        write_atomically(path, lines + [entry.line()])


def set_password(path: str, user: str, realm: str, password: str) -> None:
    """Change a user's password; UserNotFound if the file lacks them."""
    entry = UserEntry.from_password(user, realm, password)
    with _locked(path):
        lines = _read_lines(path, missing_ok=False)
        i = _index(lines, user, realm)
        if i is None:
            raise UserNotFound(f"no user {user}@{realm} in {path}")
        lines[i] = entry.line()
        write_atomically(path, lines)


def delete_user(path: str, user: str, realm: str) -> None:
    """Remove a user; UserNotFound if the file lacks them."""
    with _locked(path):
        lines = _read_lines(path, missing_ok=False)
        i = _index(lines, user, realm)
        if i is None:
            raise UserNotFound(f"no user {user}@{realm} in {path}")
        del lines[i]
        write_atomically(path, lines)
