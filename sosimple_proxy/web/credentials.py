"""Who may use the admin API: HTTP Digest (RFC 7616) always, Basic (RFC 7617) over TLS only.

The users are those of ``[admin] users_file`` (the ``[auth]`` file format:
``user:realm:md5-ha1:sha256-ha1``) in ``[admin] realm``.  Digest is
``security/digest.py``'s, with its self-validating nonces on a secret made
at startup (an admin's browser or script simply gets a new challenge after a
restart).  Basic sends the password itself, so it is accepted only on a TLS
connection, and checked by computing H(user:realm:password) and comparing
it with the file's SHA-256 HA1: the file never holds a clear password.

A wrong password and an unknown user give the same verdict and cost the same
work (an unknown user is compared with a dummy HA1), as in ``digest.py``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from typing import Iterable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sosimple_proxy.security.algorithms import DEFAULT_ALGORITHMS, Algorithm, ha1
from sosimple_proxy.security.authparams import quote
from sosimple_proxy.security.digest import DigestAuthenticator, Outcome, UserLookup, Verdict
from sosimple_proxy.security.nonces import DEFAULT_NONCE_TTL
from sosimple_proxy.security.users import UsersFileError

log = Logger()

DEFAULT_REALM = "sosimple-admin"


class AdminCredentials:
    """Checks one request's ``Authorization`` values; makes the 401's challenges."""

    def __init__(
        self,
        clock: IReactorTime,
        users: UserLookup,
        realm: str = DEFAULT_REALM,
        algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
        nonce_ttl: float = DEFAULT_NONCE_TTL,
        secret: bytes | None = None,
    ) -> None:
        self.realm = realm
        self._users = users
        self._digest = DigestAuthenticator(clock, users, secret or os.urandom(32), realm, algorithms, nonce_ttl)
        # an unknown Basic user is checked against this, so it costs what a known one costs
        self._dummy_ha1 = os.urandom(32).hex()

    def challenges(self, secure: bool, stale: bool = False) -> list[str]:
        """The ``WWW-Authenticate`` values of a 401: Digest (one per algorithm),
        and Basic when the connection is TLS."""
        values = self._digest.challenge(stale=stale)
        if secure:
            values.append(f"Basic realm={quote(self.realm)}, charset=\"UTF-8\"")
        return values

    def check(self, authorization: Iterable[str], method: str, uri: str, secure: bool) -> Verdict:
        """The verdict on a request's ``Authorization`` values (``security.digest.Verdict``:
        OK with the user, or why not; the reason is for the log only)."""
        self._reload()
        values = list(authorization)
        for value in values:
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() != "basic":
                continue
            if not secure:
                return Verdict(Outcome.NO_CREDENTIALS, reason="Basic credentials over plain HTTP are not accepted")
            return self._basic(rest.strip())
        return self._digest.verify_request(values, method, request_uri=uri)

    def _basic(self, token: str) -> Verdict:
        try:
            decoded = base64.b64decode(token.encode("ascii"), validate=True).decode("utf-8")
        except (UnicodeError, binascii.Error, ValueError):
            return Verdict(Outcome.MALFORMED, reason="Basic credentials that are not base64 of UTF-8 text")
        user, colon, password = decoded.partition(":")
        if not colon:
            return Verdict(Outcome.MALFORMED, reason="Basic credentials without a colon")
        entry = self._users.lookup(user, self.realm)
        expected = entry.sha256_ha1 if entry is not None else self._dummy_ha1
        given = ha1(Algorithm.SHA256, user, self.realm, password)
        if hmac.compare_digest(expected.encode("ascii"), given.encode("ascii")) and entry is not None:
            return Verdict(Outcome.OK, user=user, reason="authenticated with Basic over TLS")
        why = "wrong password" if entry is not None else "unknown user"
        return Verdict(Outcome.WRONG, reason=f"{why} for {user!r} (Basic)")

    def _reload(self) -> None:
        """Pick up ``sosimple passwd`` edits without a restart; a bad new file
        keeps the old table (``UsersFile.reload``) and is logged."""
        reload = getattr(self._users, "reload_if_changed", None)
        if reload is None:
            return
        try:
            reload()
        except UsersFileError as e:
            log.error("admin: the users file is bad, keeping the previous users: {why}", why=str(e))
