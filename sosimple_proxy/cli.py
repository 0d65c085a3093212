"""The ``sosimple`` command: the admin HTTP API from a shell.

    sosimple [--admin URL] [--user NAME] [--ca FILE] ring | put NAME [FILE|-] [--ttl S] | get NAME
             | delete NAME | lookup AOR
    sosimple adduser|passwd USER [--realm R] [--file F] [--password-stdin]
    sosimple deluser USER [--realm R] [--file F]
    sosimple keygen --out DIR
    sosimple sign --ca-cert F --ca-key F --csr F --node-id HEX --domains D,D --out F [--days N]
    sosimple check SITE.INI
    sosimple store put AOR NAME [FILE|-] | get AOR NAME | delete AOR NAME | list AOR
             [--store URL] [--login USER] [--key F]

The contract (``shared/site-ini.md``, "The sosimple command"): ``ring`` and
``lookup`` print JSON, ``get`` the raw bytes, ``put`` and ``delete`` nothing.
A failure is one line on stderr and an exit status that scripts can test:

- 1: not found (the API answered 404);
- 2: usage (bad arguments, a bad ``--admin`` URL, an unreadable FILE);
- 3: the API could not be reached (refused, no such host, no answer in time);
- 4: any other error answer, with the server's message.

``adduser``, ``passwd`` and ``deluser`` edit the users file
(``[auth] users_file``) and never touch the network: ``passwd`` and
``deluser`` of a user the file lacks exit 1, like a 404; ``adduser`` of
one it has, or a file that cannot be parsed or written, exits 4.
``check SITE.INI`` stays off the network too: ``ok`` or the warnings and
status 0, or the line that would stop startup and status 1.

``keygen`` and ``sign`` are a CA ring's certificates, offline too:
``keygen`` writes a node key (``node.key``, mode 0600; an existing one is
kept) and a certificate request (``node.csr``) into DIR; ``sign``, run by
the ring's CA, issues the node certificate carrying the node's ring id and
the SIP domains it may write for (``security/nodecerts.py``).  A bad
``--node-id`` or ``--domains`` is a usage error (2); a file that cannot be
read or written, or a CA key that is not the CA certificate's, exits 4.

A guarded admin API (``[admin] users_file``) takes ``--user`` (or
``$SOSIMPLE_ADMIN_USER``) with the password from ``$SOSIMPLE_ADMIN_PASSWORD``
(asked on the terminal when unset): over https the command sends Basic
credentials at once, over plain http it answers the server's Digest
challenge (a password never crosses the network in clear).  ``--ca FILE``
(or ``$SOSIMPLE_CA``) is the PEM bundle an https admin URL's certificate is
checked against, instead of the system's trusted CAs.

``store`` verbs are the users' own data (``/store/{aor}/...`` on the
store listener, ``--store`` or ``$SOSIMPLE_STORE``, else the admin URL):
the user is the AoR's user part (or ``--login``), the password ``$SOSIMPLE_PASSWORD`` or
asked on the terminal, sent as HTTP Digest after the server's challenge
(never in clear, whatever the scheme); with ``--key F`` (an Ed25519 private
key, PEM) the request is signed (``Sosimple-Sig``) instead.  ``get`` prints
the bytes, ``list`` the JSON ``{"aor", "names"}``; a refusal (401, 403) exits 4.

A traceback never reaches the user: anything unexpected is still one line
(status 4).  ``lookup`` asks ``GET /registrations/{aor}`` and prints what
the API gives; nodes whose build does not serve registrations yet answer
501, which is status 4 with their message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import IO, Any, Callable, NoReturn, Sequence
from urllib.parse import quote, urlsplit

DEFAULT_ADMIN = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
DEFAULT_USERS_FILE = "var/users"
DEFAULT_REALM = "localhost"
USER_COMMANDS = ("adduser", "passwd", "deluser")
CERT_COMMANDS = ("keygen", "sign")

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_ERROR = 4


class Failed(Exception):
    """Ends the command: the exit status and the one line for stderr."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # one line, whatever the server said


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and status 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        raise Failed(EXIT_USAGE, f"{message} (see sosimple --help)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line; ``--admin`` and ``--timeout`` go before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"the node's admin API (default: $SOSIMPLE_ADMIN, then {DEFAULT_ADMIN})",
    )
    common.add_argument(
        "--user",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="admin user of a guarded API (default: $SOSIMPLE_ADMIN_USER); password from $SOSIMPLE_ADMIN_PASSWORD",
    )
    common.add_argument(
        "--ca",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="PEM CA bundle to check an https admin URL against (default: $SOSIMPLE_CA, then the system's)",
    )
    common.add_argument(
        "--timeout",
        metavar="S",
        type=_positive,
        default=argparse.SUPPRESS,
        help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT:g})",
    )
    top = _Parser(
        prog="sosimple",
        description="Talk to a sosimple-proxy node's admin API, edit the users file (adduser, passwd, deluser), "
        "or check a site.ini (check).",
        parents=[common],
        epilog="Exit status: 0 ok, 1 not found, 2 usage, 3 cannot connect, 4 other error.",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("ring", parents=[common], help="this node's view of the ring (JSON)")
    put = commands.add_parser("put", parents=[common], help="store FILE (or stdin) under NAME")
    put.add_argument("name", metavar="NAME")
    put.add_argument("file", metavar="FILE", nargs="?", default="-", help="'-' or omitted: standard input")
    put.add_argument("--ttl", metavar="S", type=_positive, default=None, help="lifetime in seconds (server default 3600)")
    get = commands.add_parser("get", parents=[common], help="print the bytes stored under NAME")
    get.add_argument("name", metavar="NAME")
    delete = commands.add_parser("delete", parents=[common], help="remove the record NAME")
    delete.add_argument("name", metavar="NAME")
    lookup = commands.add_parser("lookup", parents=[common], help="what the ring holds for an AoR (JSON)")
    lookup.add_argument("name", metavar="AOR", help="user@domain")
    _user_commands(commands)
    _cert_commands(commands)
    _store_commands(commands, common)
    check = commands.add_parser(
        "check",
        help="validate a site.ini as startup would, without binding anything",
        description="Validate SITE.INI and the files it names as startup would, without binding a port; "
        "print ok or the warnings (certificates expiring within 30 days among them) and exit 0, "
        "or the one line that would stop startup and exit 1.",
    )
    check.add_argument("site_ini", metavar="SITE.INI")
    return top


def _store_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """store put|get|delete|list: a user's own data, with the user's password or key."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="the store listener (default: $SOSIMPLE_STORE, then the admin URL)",
    )
    options.add_argument(
        "--login",
        metavar="USER",
        default=None,
        help="the digest user name (default: the AoR's user part)",
    )
    options.add_argument(
        "--key",
        metavar="F",
        default=None,
        help="sign with this Ed25519 private key (PEM), bound to the AoR, instead of a password",
    )
    store = commands.add_parser(
        "store",
        parents=[common],
        help="a user's own data in the ring (password from $SOSIMPLE_PASSWORD or asked)",
        description="Read and write a user's own data (/store/{aor}/{name}) as that user.",
    )
    verbs = store.add_subparsers(dest="store_command", metavar="VERB", required=True)
    for verb, text in (
        ("put", "store FILE (or stdin) under NAME"),
        ("get", "print the bytes stored under NAME"),
        ("delete", "remove NAME"),
        ("list", "the AoR's names (JSON)"),
    ):
        sub = verbs.add_parser(verb, parents=[common, options], help=text)
        sub.add_argument("aor", metavar="AOR", help="user@domain")
        if verb != "list":
            sub.add_argument("name", metavar="NAME")
        if verb == "put":
            sub.add_argument("file", metavar="FILE", nargs="?", default="-", help="'-' or omitted: standard input")


def _cert_commands(commands: Any) -> None:
    """keygen, sign: a CA ring's node certificates, no network."""
    keygen = commands.add_parser(
        "keygen",
        help="make a node key and a certificate request (CA ring)",
        description="Write DIR/node.key (mode 0600; an existing one is kept) and DIR/node.csr; never touches the network.",
    )
    keygen.add_argument("--out", metavar="DIR", required=True, help="where to write node.key and node.csr")
    sign = commands.add_parser(
        "sign",
        help="issue a node certificate (the ring's CA)",
        description="Issue a node certificate carrying the node id and its SIP domains; never touches the network.",
    )
    sign.add_argument("--ca-cert", metavar="F", required=True, help="the ring's CA certificate (PEM)")
    sign.add_argument("--ca-key", metavar="F", required=True, help="the CA's private key (PEM)")
    sign.add_argument("--csr", metavar="F", required=True, help="the node's request (from sosimple keygen)")
    sign.add_argument("--node-id", metavar="HEX", required=True, help="the node's place on the ring, hex (up to 160 bits)")
    sign.add_argument("--domains", metavar="D,D", required=True, help="SIP domains the node may write for, comma-separated (may be empty)")
    sign.add_argument("--out", metavar="F", required=True, help="where to write the certificate (PEM)")
    sign.add_argument("--days", metavar="N", type=_positive, default=365.0, help="validity in days (default 365)")


def _user_commands(commands: Any) -> None:
    """adduser, passwd, deluser: local edits of the users file, no --admin."""
    helps = {
        "adduser": "add a user to the users file (asks for the password twice)",
        "passwd": "change a user's password in the users file",
        "deluser": "remove a user from the users file",
    }
    for name in USER_COMMANDS:
        sub = commands.add_parser(name, help=helps[name], description=helps[name] + "; never touches the network.")
        sub.add_argument("name", metavar="USER", help="the digest user name (usually the user part of the AoR)")
        sub.add_argument(
            "--realm",
            metavar="R",
            default=DEFAULT_REALM,
            help=f"the digest realm; must be [auth] realm of site.ini (default: {DEFAULT_REALM})",
        )
        sub.add_argument(
            "--file",
            metavar="F",
            default=None,
            help=f"the users file (default: $SOSIMPLE_USERS_FILE, then {DEFAULT_USERS_FILE})",
        )
        if name != "deluser":
            sub.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from the first line of standard input instead of asking",
            )


def admin_url(given: str | None, environ: dict[str, str] | os._Environ[str]) -> str:
    """The API's base URL: ``--admin``, else ``$SOSIMPLE_ADMIN``, else the default; checked."""
    url = given if given is not None else (environ.get("SOSIMPLE_ADMIN") or DEFAULT_ADMIN)
    where = "--admin" if given is not None else ("$SOSIMPLE_ADMIN" if environ.get("SOSIMPLE_ADMIN") else "the default")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a bad port
    except ValueError as e:
        raise Failed(EXIT_USAGE, f"{where}: {url!r} is not a URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Failed(EXIT_USAGE, f"{where}: {url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise Failed(EXIT_USAGE, f"{where}: {url!r} must not have a query or fragment")
    return url.rstrip("/")


def https_policy(ca_path: str) -> Any:
    """A ``BrowserLikePolicyForHTTPS`` that trusts only the CAs in ``ca_path``
    (host names and IP addresses are still checked); Failed (usage) if the
    file has no certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from twisted.internet.ssl import Certificate, trustRootFromCertificates
    from twisted.web.client import BrowserLikePolicyForHTTPS

    try:
        with open(ca_path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise Failed(EXIT_USAGE, f"--ca: cannot read {ca_path}: {e.strerror or e}") from None
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise Failed(EXIT_USAGE, f"--ca: {ca_path} holds no PEM certificate") from None
    roots = [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certs]
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(roots))


def _credentials(
    args: argparse.Namespace, environ: dict[str, str], getpass: Callable[[str], str] | None
) -> tuple[str, str] | None:
    """(user, password) for a guarded admin API, or None without a user."""
    user = getattr(args, "user", None) or environ.get("SOSIMPLE_ADMIN_USER") or ""
    if not user:
        return None
    password = environ.get("SOSIMPLE_ADMIN_PASSWORD")
    if password is None:
        try:
            password = (getpass or _terminal_getpass)(f"Admin password for {user}: ")
        except EOFError:
            raise Failed(EXIT_USAGE, "no admin password given (set $SOSIMPLE_ADMIN_PASSWORD)") from None
    return user, password


def _digest_authorization(response: Any, credentials: tuple[str, str], method: str, url: str) -> str | None:
    """An ``Authorization`` answering the first Digest challenge of a 401 we
    can answer, or None when it offers none."""
    from .security.authparams import MalformedCredentials
    from .security.digest import answer_challenge

    parts = urlsplit(url)
    uri = parts.path + (f"?{parts.query}" if parts.query else "")
    for raw in response.headers.getRawHeaders(b"www-authenticate", []):
        value = raw.decode("latin-1")
        if not value.strip().lower().startswith("digest"):
            continue
        try:
            return answer_challenge(value, credentials[0], credentials[1], method, uri)
        except MalformedCredentials:
            continue
    return None


def _read_body(path: str, stdin: IO[bytes]) -> bytes:
    if path == "-":
        return stdin.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Failed(EXIT_USAGE, f"cannot read {path}: {e.strerror or e}") from None


def _request_for(args: argparse.Namespace, base: str, stdin: IO[bytes]) -> tuple[str, str, bytes | None]:
    """(method, URL, body) of the one call a command makes."""
    if args.command == "ring":
        return "GET", base + "/ring", None
    name = args.name
    if not name:
        raise Failed(EXIT_USAGE, f"{args.command}: the name is empty")
    quoted = quote(name, safe="@")
    if args.command == "put":
        body = _read_body(args.file, stdin)
        url = base + "/records/" + quoted
        if args.ttl is not None:
            url += f"?ttl={args.ttl:g}"
        return "PUT", url, body
    if args.command == "get":
        return "GET", base + "/records/" + quoted, None
    if args.command == "delete":
        return "DELETE", base + "/records/" + quoted, None
    if args.command == "lookup":
        return "GET", base + "/registrations/" + quoted, None
    raise Failed(EXIT_USAGE, f"unknown command {args.command!r}")


def _server_message(body: bytes, code: int, phrase: bytes | None) -> str:
    try:
        message = json.loads(body)["error"]
        if isinstance(message, str) and message:
            return message
    except Exception:
        pass
    return (phrase or b"").decode("latin-1") or f"status {code}"


def _connection_error(failure_or_exc: BaseException, url: str, timeout: float) -> Failed | None:
    """A one-line Failed for errors that mean "could not talk to the API"."""
    from twisted.internet import defer, error
    from twisted.web import _newclient

    e = failure_or_exc
    where = urlsplit(url)
    site = f"{where.scheme}://{where.netloc}"
    if isinstance(e, (defer.CancelledError, defer.TimeoutError, error.TimeoutError)):
        return Failed(EXIT_CONNECTION, f"no answer from {site} within {timeout:g} s")
    if isinstance(e, error.ConnectionRefusedError):
        return Failed(EXIT_CONNECTION, f"cannot connect to {site}: connection refused")
    if isinstance(e, error.DNSLookupError):
        return Failed(EXIT_CONNECTION, f"cannot connect to {site}: no such host")
    if isinstance(e, (error.ConnectError, OSError)):
        return Failed(EXIT_CONNECTION, f"cannot connect to {site}: {e.__class__.__name__} {e}".strip())
    if isinstance(e, (_newclient.ResponseNeverReceived, _newclient.RequestTransmissionFailed, _newclient.ResponseFailed)):
        reasons = getattr(e, "reasons", None) or []
        inner = reasons[0].value if reasons else None
        if isinstance(inner, (defer.CancelledError, error.TimeoutError)):
            return Failed(EXIT_CONNECTION, f"no answer from {site} within {timeout:g} s")
        from OpenSSL import SSL

        if isinstance(inner, SSL.Error):
            return Failed(EXIT_CONNECTION, f"TLS with {site} failed ({_ssl_detail(inner)}; is --ca right?)")
        why = inner.__class__.__name__ if inner is not None else "connection lost"
        return Failed(EXIT_CONNECTION, f"the connection to {site} failed ({why})")
    return None


def _ssl_detail(error: Exception) -> str:
    try:
        return "; ".join(str(e[2]) for e in error.args[0]) or "handshake failed"
    except (IndexError, TypeError):
        return str(error) or "handshake failed"


async def run(
    reactor: Any,
    argv: Sequence[str],
    stdout: IO[bytes],
    stderr: IO[str],
    stdin: IO[bytes] | None = None,
    environ: dict[str, str] | None = None,
    getpass: Callable[[str], str] | None = None,
) -> int:
    """Run one command; the exit status.  Never raises (but for KeyboardInterrupt).

    ``getpass`` asks for a password (default: ``getpass.getpass`` on the terminal)."""
    try:
        env = environ if environ is not None else dict(os.environ)
        args = parser().parse_args(list(argv))
        if args.command in USER_COMMANDS:
            return _edit_users(args, stdin if stdin is not None else sys.stdin.buffer, env, getpass)
        if args.command in CERT_COMMANDS:
            return _certificates(args)
        if args.command == "check":
            return _check(args.site_ini, stdout, stderr)
        return await _run(reactor, args, stdout, stdin, env, getpass)
    except Failed as f:
        stderr.write(f"sosimple: {f.message}\n")
        return f.status
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    except BrokenPipeError:
        # the reader went away (``sosimple get x | head``): nothing to report
        _silence(stdout)
        return 0
    except Exception as e:
        stderr.write(f"sosimple: unexpected error: {e.__class__.__name__}: {' '.join(str(e).split())}\n")
        return EXIT_ERROR


async def _run(
    reactor: Any,
    args: argparse.Namespace,
    stdout: IO[bytes],
    stdin: IO[bytes] | None,
    environ: dict[str, str],
    getpass: Callable[[str], str] | None = None,
) -> int:
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    if args.command == "store":
        return await _store(reactor, args, stdout, stdin if stdin is not None else sys.stdin.buffer, environ, getpass)
    base = admin_url(getattr(args, "admin", None), environ)
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    secure = urlsplit(base).scheme == "https"
    ca = getattr(args, "ca", None) or environ.get("SOSIMPLE_CA") or ""
    agent_options: dict[str, Any] = {"contextFactory": https_policy(ca)} if ca and secure else {}
    method, url, body = _request_for(args, base, stdin if stdin is not None else sys.stdin.buffer)
    credentials = _credentials(args, environ, getpass)
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool, **agent_options))
    try:
        # Basic only inside TLS; over plain http, Digest after the 401
        basic = credentials if secure else None
        response = await client.request(method, url, data=body, timeout=timeout, auth=basic)
        content = await treq.content(response)
        if response.code == 401 and credentials is not None and not secure:
            authorization = _digest_authorization(response, credentials, method, url)
            if authorization is not None:
                headers = {"Authorization": [authorization]}
                response = await client.request(method, url, data=body, timeout=timeout, headers=headers)
                content = await treq.content(response)
    except Exception as e:
        failed = _connection_error(e, url, timeout)
        if failed is None:
            raise
        raise failed from None
    code = response.code
    if code == 404:
        raise Failed(EXIT_NOT_FOUND, _server_message(content, code, response.phrase))
    if not 200 <= code < 300:
        raise Failed(EXIT_ERROR, f"{code}: {_server_message(content, code, response.phrase)}")
    if args.command in ("ring", "lookup"):
        try:
            value = json.loads(content)
        except ValueError:
            raise Failed(EXIT_ERROR, f"the server's answer is not JSON ({len(content)} bytes)") from None
        stdout.write(json.dumps(value, indent=2).encode("utf-8") + b"\n")
    elif args.command == "get":
        stdout.write(content)
    stdout.flush()
    return 0


async def _store(
    reactor: Any,
    args: argparse.Namespace,
    stdout: IO[bytes],
    stdin: IO[bytes],
    environ: dict[str, str],
    getpass: Callable[[str], str] | None,
) -> int:
    """``store put|get|delete|list``: one request as the AoR's user (digest
    after the 401) or signed with ``--key``; raises Failed with the status."""
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    from .location.regrecord import canonical_aor

    given = args.store or environ.get("SOSIMPLE_STORE") or getattr(args, "admin", None)
    base = admin_url(given, environ)
    aor = canonical_aor(args.aor)
    user, at, domain = aor.rpartition("@")
    if not (at and user and domain):
        raise Failed(EXIT_USAGE, f"store: {args.aor!r} is not an address of record (user@domain)")
    verb = args.store_command
    name = getattr(args, "name", None)
    if name is not None and not name:
        raise Failed(EXIT_USAGE, "store: the name is empty")
    path = "/store/" + quote(aor, safe="@")
    if name is not None:
        path += "/" + quote(name, safe="")
    url = base + path
    method = {"put": "PUT", "get": "GET", "delete": "DELETE", "list": "GET"}[verb]
    body = _read_body(args.file, stdin) if verb == "put" else None
    signer = _store_signer(args.key) if args.key else None
    password = None if signer is not None else _store_password(aor, environ, getpass)
    timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
    ca = getattr(args, "ca", None) or environ.get("SOSIMPLE_CA") or ""
    secure = urlsplit(base).scheme == "https"
    agent_options: dict[str, Any] = {"contextFactory": https_policy(ca)} if ca and secure else {}
    client = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False), **agent_options))
    try:
        headers = {}
        if signer is not None:
            from urllib.parse import unquote

            from .security.usersig import sign

            signed_path = unquote(urlsplit(url).path, errors="strict")
            headers["Authorization"] = [sign(signer, method, signed_path, body or b"")]
        response = await client.request(method, url, data=body, timeout=timeout, headers=headers)
        content = await treq.content(response)
        if response.code == 401 and password is not None:
            login = args.login or user
            authorization = _digest_authorization(response, (login, password), method, url)
            if authorization is not None:
                headers = {"Authorization": [authorization]}
                response = await client.request(method, url, data=body, timeout=timeout, headers=headers)
                content = await treq.content(response)
    except Exception as e:
        failed = _connection_error(e, url, timeout)
        if failed is None:
            raise
        raise failed from None
    code = response.code
    if code == 404:
        raise Failed(EXIT_NOT_FOUND, _server_message(content, code, response.phrase))
    if not 200 <= code < 300:
        raise Failed(EXIT_ERROR, f"{code}: {_server_message(content, code, response.phrase)}")
    if verb == "get":
        stdout.write(content)
    elif verb == "list":
        try:
            value = json.loads(content)
        except ValueError:
            raise Failed(EXIT_ERROR, f"the server's answer is not JSON ({len(content)} bytes)") from None
        stdout.write(json.dumps(value, indent=2).encode("utf-8") + b"\n")
    stdout.flush()
    return 0


def _store_password(aor: str, environ: dict[str, str], getpass: Callable[[str], str] | None) -> str:
    """``$SOSIMPLE_PASSWORD``, else asked on the terminal."""
    password = environ.get("SOSIMPLE_PASSWORD")
    if password is None:
        try:
            password = (getpass or _terminal_getpass)(f"Password for {aor}: ")
        except EOFError:
            raise Failed(EXIT_USAGE, "no password given (set $SOSIMPLE_PASSWORD)") from None
        except Failed:
            raise Failed(EXIT_USAGE, "no terminal to ask for the password on (set $SOSIMPLE_PASSWORD)") from None
    return password


def _store_signer(path: str) -> Any:
    """The Ed25519 private key in ``path`` (PEM); Failed (usage) otherwise."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as f:
            key = load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise Failed(EXIT_USAGE, f"--key: cannot read {path}: {e.strerror or e}") from None
    except (ValueError, TypeError):
        raise Failed(EXIT_USAGE, f"--key: {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise Failed(EXIT_USAGE, f"--key: {path} is not an Ed25519 key")
    return key


def _check(path: str, stdout: IO[bytes], stderr: IO[str]) -> int:
    """``check SITE.INI``: the same check as ``twistd sosimple-proxy --check``."""
    import io

    from .site_check import run_check

    out = io.StringIO()
    status = run_check(path, out, stderr, prefix="sosimple: ")
    stdout.write(out.getvalue().encode("utf-8"))
    stdout.flush()
    return status


def _edit_users(
    args: argparse.Namespace, stdin: IO[bytes], environ: dict[str, str], getpass: Callable[[str], str] | None
) -> int:
    """adduser / passwd / deluser; raises Failed with the exit status."""
    from .security import users

    path = args.file if args.file is not None else (environ.get("SOSIMPLE_USERS_FILE") or DEFAULT_USERS_FILE)
    if not path:
        raise Failed(EXIT_USAGE, f"{args.command}: the users file name is empty")
    user, realm = args.name, args.realm
    for what, value in (("user", user), ("realm", realm)):
        try:
            users.check_name(what, value)
        except ValueError as e:
            raise Failed(EXIT_USAGE, f"{args.command}: {e}") from None
    try:
        if args.command == "deluser":
            users.delete_user(path, user, realm)
            return 0
        # say "exists" or "not found" before asking for a password in vain
        known = users.read_users(path).lookup(user, realm) if os.path.exists(path) else None
        if args.command == "adduser" and known is not None:
            raise users.UserExists(f"{user}@{realm} is already in {path} (sosimple passwd changes a password)")
        if args.command == "passwd" and known is None:
            raise users.UserNotFound(f"no user {user}@{realm} in {path}")
        password = _new_password(args, user, realm, stdin, getpass)
        if args.command == "adduser":
            users.add_user(path, user, realm, password)
        else:
            users.set_password(path, user, realm, password)
    except users.UserNotFound as e:
        raise Failed(EXIT_NOT_FOUND, str(e)) from None
    except users.UsersFileError as e:
        raise Failed(EXIT_ERROR, str(e)) from None
    except OSError as e:
        raise Failed(EXIT_ERROR, f"{path}: cannot write: {e.strerror or e}") from None
    return 0


def _certificates(args: argparse.Namespace) -> int:
    """keygen / sign; raises Failed with the exit status."""
    from .security import nodecerts

    try:
        if args.command == "keygen":
            os.makedirs(args.out, exist_ok=True)
            key_path, csr_path = os.path.join(args.out, "node.key"), os.path.join(args.out, "node.csr")
            if os.path.exists(key_path):
                key = nodecerts.load_private_key(key_path)  # the node keeps its key (and open-ring id)
            else:
                key = nodecerts.generate_key()
                nodecerts.write_private(key_path, nodecerts.key_pem(key))
            with open(csr_path, "wb") as f:
                f.write(nodecerts.pem(nodecerts.make_csr(key)))  # type: ignore[arg-type]
            return 0
        try:
            node_id = nodecerts.parse_id(args.node_id)
            domains = nodecerts.parse_domains(args.domains)
        except nodecerts.NodeCertError as e:
            raise Failed(EXIT_USAGE, f"sign: {e}") from None
        cert = nodecerts.sign_node(
            nodecerts.load_csr(args.csr),
            nodecerts.load_certificate(args.ca_cert, "CA certificate"),
            nodecerts.load_private_key(args.ca_key, "CA key"),
            node_id,
            domains,
            days=args.days,
        )
        with open(args.out, "wb") as f:
            f.write(nodecerts.pem(cert))
    except nodecerts.NodeCertError as e:
        raise Failed(EXIT_ERROR, f"{args.command}: {e}") from None
    except OSError as e:
        raise Failed(EXIT_ERROR, f"{args.command}: {e.filename or args.out}: {e.strerror or e}") from None
    return 0


def _new_password(
    args: argparse.Namespace, user: str, realm: str, stdin: IO[bytes], getpass: Callable[[str], str] | None
) -> str:
    """From the first line of stdin (--password-stdin), or asked twice."""
    if args.password_stdin:
        line = stdin.readline()
        try:
            password = (line.decode("utf-8") if isinstance(line, bytes) else line).rstrip("\r\n")
        except UnicodeDecodeError:
            raise Failed(EXIT_USAGE, "the password on standard input is not UTF-8") from None
    else:
        if getpass is None:
            getpass = _terminal_getpass
        try:
            password = getpass(f"Password for {user}@{realm}: ")
            again = getpass("Again: ")
        except EOFError:
            raise Failed(EXIT_USAGE, "no password given (use --password-stdin to read it from a pipe)") from None
        if password != again:
            raise Failed(EXIT_USAGE, "the passwords do not match")
    if not password:
        raise Failed(EXIT_USAGE, "the password is empty")
    return password


def _terminal_getpass(prompt: str) -> str:
    """getpass on the controlling terminal, or a usage error when there is none
    (getpass would read stdin with an echo warning: more than one line)."""
    import getpass

    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise Failed(EXIT_USAGE, "no terminal to ask for the password on (use --password-stdin)") from None
    return getpass.getpass(prompt)


def _silence(stream: IO[bytes]) -> None:
    """Point a dead stdout at /dev/null so the interpreter's last flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: runs one command under the reactor and exits with its status."""
    from twisted.internet import task

    args = list(sys.argv[1:] if argv is None else argv)

    async def _main(reactor: Any) -> None:
        status = await run(reactor, args, sys.stdout.buffer, sys.stderr)
        if status:
            raise SystemExit(status)

    task.react(_main)


if __name__ == "__main__":
    main()
