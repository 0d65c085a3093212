"""Digest authentication for SIP (RFC 3261 section 22, RFC 7616, RFC 8760), without I/O.

The digest modules of security/ (none imports anything above security/):

- ``authparams``: the auth-param list parser and formatter (RFC 3261 25.1);
- ``algorithms``: MD5 and SHA-256 (and -sess) by their RFC 8760 names, HA1, response;
- ``users``: the users file: parse, look up, reload safely, edit atomically (0600);
- ``nonces``: self-validating HMAC nonces, the shared secret file, replay counts;
- ``digest`` (here): challenges and verification; ``DigestAuthenticator``.

``DigestAuthenticator`` is what the proxy holds, one per realm::

    auth = DigestAuthenticator(reactor, users_file, secret, realm="example.com")
    # no credentials for us: 401 (REGISTER) or 407 with one header value per algorithm
    for value in auth.challenge(stale=False):
        response.headers.add("WWW-Authenticate", value)   # Proxy-Authenticate for 407
    # credentials: every Authorization (or Proxy-Authorization) value of the request
    verdict = auth.verify_request(values, method="REGISTER")
    if verdict.outcome is Outcome.OK: ...verdict.user...

What the caller decides, from the verdict:

- ``OK``: authenticated as ``verdict.user`` (the caller checks that this user
  may register that AoR / use that From: RFC 3261 22 leaves policy to us).
- ``NO_CREDENTIALS``: nothing for our realm (none at all, or only credentials
  for other realms, which go on to the proxies they are for: RFC 3261 22.3):
  challenge; not an authentication failure.
- ``OTHER_REALM``: only from ``verify`` of one value whose realm is not
  ours (``verify_request`` skips such values and says NO_CREDENTIALS).
- ``STALE``: right password, old nonce (or one we can no longer vouch for):
  challenge with ``stale=True`` so the phone retries without asking its user.
- ``WRONG``: a wrong password, or a user we do not know.  The two are one
  outcome and cost the same work (an unknown user is checked against a
  dummy HA1), so answers and timing do not tell who exists.  Counts as a
  failure for ``[limits] auth_failures``.
- ``REPLAY``: right password, but a nonce-count already used: challenge
  again (a fresh nonce, not stale) and log; a phone that sends requests in
  parallel on one nonce may see this for the slower one and simply retries.
- ``BAD_NONCE``: a nonce we did not make (another realm's secret, a proxy
  restarted with a new generated secret, or a forgery): challenge again.
- ``MALFORMED``: 400 or a new challenge, as the caller likes; it never needs
  the users table, so it says nothing about who exists.

For the integrator: CANCEL and ACK are never challenged (RFC 3261 22.1:
they cannot be resubmitted), so the proxy must not call ``verify_request``
for them at all.  That matters for ACK in particular: the ACK for a 2xx
carries the INVITE's credentials (RFC 3261 13.2.2.4), nonce-count and all,
and verifying it would report a REPLAY.

Policy decisions made here:

- qop is required.  We always offer ``qop="auth"``; a response without qop
  (RFC 2069 compatibility) carries no nonce-count and no cnonce, so it could
  be replayed freely for the nonce's lifetime.  It is MALFORMED.
- Only ``qop=auth``: auth-int is never offered, so never accepted.
- The algorithms accepted are those configured (``[auth] algorithms``) and
  their ``-sess`` variants: an administrator who drops MD5 drops it for
  verification too.  No ``algorithm`` parameter means MD5 (RFC 7616 3.3).
- ``userhash`` and ``username*`` (RFC 7616 3.4, 3.4.4) are never offered;
  credentials using them are MALFORMED.
- The ``uri`` parameter is what HA2 covers.  Pass ``request_uri`` to also
  require it to equal the Request-URI as received (RFC 2617 3.2.2.5 asks a
  server to check); by default only the response is checked, as
  Kamailio does, because phones disagree about URI parameters there.
"""

from __future__ import annotations

import enum
import hmac
import os
from typing import Callable, Iterable, Protocol, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .algorithms import DEFAULT_ALGORITHMS, Algorithm, ha1, response
from .authparams import AuthHeader, MalformedCredentials, format_auth_header, parse_auth_header
from .nonces import DEFAULT_MAX_TRACKED, DEFAULT_NONCE_TTL, CountVerdict, NonceCounts, NonceIssuer, NonceState
from .users import UserEntry

# RFC 7616 3.4: the parameters a response MUST carry (qop, cnonce and nc
# because we always send qop; see the module docstring).
REQUIRED = ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
_NC_LENGTH = 8


class UserLookup(Protocol):
    """What the verifier needs from the users file (``users.UsersFile`` or ``UserTable``)."""

    def lookup(self, user: str, realm: str) -> UserEntry | None: ...


class CountKeeper(Protocol):
    """Where nonce-counts are kept: ``NonceCounts``, or one whose answer may
    come later (a Deferred) because another process keeps that nonce's
    counts ([proxy] workers)."""

    def accept(self, nonce: str, issued: float, nc: int) -> CountVerdict | Deferred: ...


class Outcome(enum.Enum):
    OK = "ok"
    NO_CREDENTIALS = "no credentials"
    OTHER_REALM = "other realm"
    STALE = "stale"
    WRONG = "wrong"
    REPLAY = "replay"
    BAD_NONCE = "bad nonce"
    MALFORMED = "malformed"


@attrs.frozen
class Verdict:
    """The outcome; ``user`` only when OK; ``reason`` is for the log, never for the wire
    (it may name the user, which the answer must not)."""

    outcome: Outcome
    user: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@attrs.frozen
class Credentials:
    """A parsed Digest response of one realm, its values unquoted."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: Algorithm
    qop: str
    nc: int
    nc_text: str
    cnonce: str
    opaque: str | None


def parse_credentials(value: str) -> Credentials:
    """An Authorization/Proxy-Authorization value -> Credentials; MalformedCredentials if bad."""
    header = parse_auth_header(value)
    if not header.is_digest():
        raise MalformedCredentials(f"the scheme is {header.scheme!r}, not Digest")
    return credentials_from(header)


def credentials_from(header: AuthHeader) -> Credentials:
    p = header.params
    missing = [name for name in REQUIRED if name not in p]
    if missing:
        raise MalformedCredentials(f"missing {', '.join(missing)}")
    if "username*" in p or p.get("userhash", "false").lower() != "false":
        raise MalformedCredentials("userhash and username* are not offered, so not accepted")
    try:
        algorithm = Algorithm.named(p.get("algorithm", "MD5"))
    except ValueError as e:
        raise MalformedCredentials(str(e)) from None
    qop = p["qop"].lower()
    if qop != "auth":
        raise MalformedCredentials(f"qop={p['qop']!r}; only auth is offered")
    nc_text = p["nc"]
    # RFC 7616 3.4: nc-value = 8LHEX
    if len(nc_text) != _NC_LENGTH or any(c not in "0123456789abcdefABCDEF" for c in nc_text):
        raise MalformedCredentials(f"nc={nc_text!r} is not 8 hex digits")
    response_text = p["response"]
    if len(response_text) != algorithm.hex_length or any(c not in "0123456789abcdefABCDEF" for c in response_text):
        raise MalformedCredentials(f"the response is not {algorithm.hex_length} hex digits for {algorithm.value}")
    if not p["cnonce"]:
        raise MalformedCredentials("the cnonce is empty")
    return Credentials(
        username=p["username"],
        realm=p["realm"],
        nonce=p["nonce"],
        uri=p["uri"],
        response=response_text.lower(),
        algorithm=algorithm,
        qop=qop,
        nc=int(nc_text, 16),
        nc_text=nc_text,
        cnonce=p["cnonce"],
        opaque=p.get("opaque"),
    )


def challenge_values(
    realm: str,
    nonce: str,
    opaque: str,
    algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
    stale: bool = False,
) -> list[str]:
    """One ``WWW-Authenticate``/``Proxy-Authenticate`` value per algorithm, in the
    order given (RFC 8760 2.3: in order of preference; 2.4: a client uses the
    topmost one whose algorithm it supports).  All share one nonce and opaque."""
    values = []
    for algorithm in algorithms:
        params: list[tuple[str, str, bool]] = [
            ("realm", realm, True),
            ("nonce", nonce, True),
            ("opaque", opaque, True),
            ("algorithm", algorithm.value, False),
            ("qop", "auth", True),  # RFC 7616 3.3: qop is a quoted list of tokens
        ]
        if stale:
            params.append(("stale", "true", False))
        values.append(format_auth_header("Digest", params))
    return values


class DigestAuthenticator:
    """Challenges and verifies for one realm.

    ``users`` is anything with ``lookup(user, realm)``, normally a
    ``users.UsersFile`` (which the caller reloads); ``secret`` the shared
    nonce secret (``nonces.load_or_create_secret``).  Time comes only from
    ``clock``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        users: UserLookup,
        secret: bytes,
        realm: str,
        algorithms: Sequence[Algorithm] = DEFAULT_ALGORITHMS,
        nonce_ttl: float = DEFAULT_NONCE_TTL,
        max_tracked_nonces: int = DEFAULT_MAX_TRACKED,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one algorithm must be offered")
        if any(a.is_session for a in algorithms):
            raise ValueError("-sess algorithms are accepted but not offered")
        self.realm = realm
        self.algorithms = tuple(algorithms)
        self._accepted = frozenset(a for a in Algorithm if a.base in self.algorithms)
        self._users = users
        self._nonces = NonceIssuer(clock, secret, realm, nonce_ttl)
        self._counts: CountKeeper = NonceCounts(clock, nonce_ttl, max_tracked_nonces)
        # Checked against when the user is unknown, so that an unknown user
        # costs what a wrong password costs (no enumeration by timing).
        self._dummy = UserEntry("", realm, os.urandom(16).hex(), os.urandom(32).hex())

    def share_nonce_state(self, counts: CountKeeper, random: Callable[[int], bytes]) -> None:
        """Keep nonce-counts in ``counts`` and draw our nonces' random bytes
        from ``random`` (``[proxy] workers``: the bytes name the worker that
        keeps the nonce's counts).  With such ``counts``, :meth:`verify` may
        answer with a Deferred."""
        self._counts = counts
        self._nonces._random = random

    def challenge(self, stale: bool = False) -> list[str]:
        """Fresh header values for a 401/407, one per configured algorithm."""
        nonce = self._nonces.make()
        return challenge_values(self.realm, nonce, os.urandom(12).hex(), self.algorithms, stale)

    def verify_request(self, values: Iterable[str], method: str, request_uri: str | None = None) -> Verdict | Deferred:
        """Verify a request's Authorization (or Proxy-Authorization) values.

        Only credentials for our realm are ours (RFC 3261 22.3: the others
        belong to proxies further on and go on untouched); if several are for
        our realm, the first decides.  A value that does not parse is
        MALFORMED only if it is a Digest one and nothing else is for us.
        ``values`` must be whole header values: Digest credentials contain
        commas, so a header must not be split on them."""
        malformed: Verdict | None = None
        others: list[str] = []
        for value in values:
            try:
                header = parse_auth_header(value)
            except MalformedCredentials as e:
                # another scheme's syntax (a token68 "Bearer x==") is not ours to judge
                if value.strip().lower().startswith("digest") and malformed is None:
                    malformed = Verdict(Outcome.MALFORMED, reason=str(e))
                continue
            if not header.is_digest():
                continue
            if header.params.get("realm") != self.realm:
                others.append(header.params.get("realm", "?"))
                continue
            return self.verify(value, method, request_uri, parsed=header)
        if malformed is not None:
            return malformed
        why = f"credentials only for other realms {others!r}" if others else "no Digest credentials for our realm"
        return Verdict(Outcome.NO_CREDENTIALS, reason=why)

    def verify(
        self, value: str, method: str, request_uri: str | None = None, parsed: AuthHeader | None = None
    ) -> Verdict | Deferred:
        """Verify one header value (see the module docstring for the outcomes);
        a Deferred of the Verdict only with a :meth:`share_nonce_state`
        keeper that answers later."""
        try:
            header = parsed if parsed is not None else parse_auth_header(value)
            if not header.is_digest():
                raise MalformedCredentials(f"the scheme is {header.scheme!r}, not Digest")
            creds = credentials_from(header)
        except MalformedCredentials as e:
            return Verdict(Outcome.MALFORMED, reason=str(e))
        if creds.realm != self.realm:
            return Verdict(Outcome.OTHER_REALM, reason=f"credentials for another realm {creds.realm!r}")
        if creds.algorithm not in self._accepted:
            return Verdict(Outcome.MALFORMED, reason=f"algorithm {creds.algorithm.value} is not offered")
        nonce = self._nonces.check(creds.nonce)
        if nonce.state is NonceState.FORGED:
            return Verdict(Outcome.BAD_NONCE, reason="a nonce we did not issue")

        entry = self._users.lookup(creds.username, creds.realm)
        known = entry is not None
        expected = response(
            creds.algorithm,
            (entry if entry is not None else self._dummy).ha1(creds.algorithm),
            creds.nonce,
            creds.nc_text,
            creds.cnonce,
            creds.qop,
            method,
            creds.uri,
        )
        # constant-time compare, so the answer's timing says nothing of the expected value
        matches = hmac.compare_digest(expected.encode("ascii"), creds.response.encode("ascii"))
        if not (matches and known):
            why = "wrong password" if known else "unknown user"
            return Verdict(Outcome.WRONG, reason=f"{why} for {creds.username!r}")
        if request_uri is not None and creds.uri != request_uri:
            return Verdict(Outcome.WRONG, reason=f"digest uri {creds.uri!r} is not the Request-URI {request_uri!r}")
        # RFC 2617 3.2.1: stale=true only when the digest was valid for the old nonce
        if nonce.state is NonceState.EXPIRED:
            return Verdict(Outcome.STALE, reason="the nonce has expired")
        counted = self._counts.accept(creds.nonce, nonce.issued, creds.nc)
        if isinstance(counted, Deferred):
            return counted.addCallback(self._counted, creds)
        return self._counted(counted, creds)

    @staticmethod
    def _counted(counted: CountVerdict, creds: Credentials) -> Verdict:
        if counted is CountVerdict.REPLAY:
            return Verdict(Outcome.REPLAY, reason=f"nonce-count {creds.nc_text} was already used")
        if counted is CountVerdict.FORGOTTEN:
            return Verdict(Outcome.STALE, reason="the nonce's count is not known here (forgotten under load, or from before a restart)")
        return Verdict(Outcome.OK, user=creds.username, reason=f"authenticated with {creds.algorithm.value}")


def answer_challenge(
    challenge: str,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The client's side: an Authorization value answering one challenge value.

    For tests, and for clients of our own (``sosimple store`` speaks digest
    to the admin API).  Raises MalformedCredentials for a challenge it
    cannot answer."""
    header = parse_auth_header(challenge)
    if not header.is_digest():
        raise MalformedCredentials(f"the scheme is {header.scheme!r}, not Digest")
    p = header.params
    for name in ("realm", "nonce"):
        if name not in p:
            raise MalformedCredentials(f"the challenge has no {name}")
    try:
        algorithm = Algorithm.named(p.get("algorithm", "MD5"))
    except ValueError as e:
        raise MalformedCredentials(str(e)) from None
    if "auth" not in [q.strip().lower() for q in p.get("qop", "").split(",")]:
        raise MalformedCredentials("the challenge does not offer qop=auth")
    cnonce = cnonce if cnonce is not None else os.urandom(12).hex()
    nc_text = f"{nc:08x}"
    stored = ha1(algorithm, username, p["realm"], password)
    params: list[tuple[str, str, bool]] = [
        ("username", username, True),
        ("realm", p["realm"], True),
        ("nonce", p["nonce"], True),
        ("uri", uri, True),
        ("response", response(algorithm, stored, p["nonce"], nc_text, cnonce, "auth", method, uri), True),
        ("algorithm", algorithm.value, False),
        ("cnonce", cnonce, True),
        ("qop", "auth", False),
        ("nc", nc_text, False),
    ]
    if "opaque" in p:
        params.append(("opaque", p["opaque"], True))
    return format_auth_header("Digest", params)
