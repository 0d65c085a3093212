"""The authentication step of the chain: who sent this request?

It runs after sanity and loop detection and before anything acts on the
request, and marks the request's :class:`~sosimple_proxy.proxy.chain.Job`:

- ``Trust.TRUSTED``: its source is in ``[auth] trusted`` (gateways, the
  other proxies of our organisation).  Never challenged.
- ``Trust.USER``: one of our users, authenticated by digest (RFC 3261
  section 22, RFC 7616, RFC 8760), with ``job.user`` their name.
- ``Trust.USER`` as well: a request from a member of our CA ring (its
  node certificate on the TLS connection, see
  :mod:`sosimple_proxy.security.ringmembers`) whose From is a user of one
  of our domains that the certificate names: that proxy authenticated it.
  A member for another domain is nobody special; in an open ring
  membership grants nothing here (list the proxies in ``[auth] trusted``).
- ``Trust.STRANGER``: anybody else.  Strangers may still call our users
  (that is how other domains reach us); the relay rule
  (:mod:`sosimple_proxy.proxy.relay`) keeps them from anything else.

Who is challenged (with ``[auth] required``): a REGISTER for our domains
with 401 and ``WWW-Authenticate``, any other request whose From claims one
of our domains with 407 and ``Proxy-Authenticate`` (RFC 3261 22.2, 22.3).
Never challenged: CANCEL and ACK, in-dialog requests whose top Route is our
own stamped Record-Route (:mod:`sosimple_proxy.proxy.dialog_stamp`), and
emergency calls from our domains.

No user enumeration: the challenge depends only on the method and the
From's domain, never on whether the user exists; a wrong password and an
unknown user are one outcome (``security.digest`` checks an unknown user
against a dummy HA1 so that both cost the same).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Sequence
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from sosimple_proxy.proxy.chain import CONTINUE, Job, Step, Trust
from sosimple_proxy.proxy.dialog_stamp import DialogStamp
from sosimple_proxy.proxy.path_stamp import PathStamp
from sosimple_proxy.security.authparams import MalformedCredentials, parse_auth_header
from sosimple_proxy.security.digest import DigestAuthenticator, Outcome, Verdict
from sosimple_proxy.sip import headers as H
from sosimple_proxy.sip.message import Request, Response, make_response

log = Logger()

# RFC 3323 section 4.1.1.3: "sip:anonymous@anonymous.invalid", the From of
# a user who asked for privacy.  An authenticated user may send it.
ANONYMOUS_HOST = "anonymous.invalid"
ASSERTED = "P-Asserted-Identity"
# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved )
_USER_SAFE = "-_.!~*'()&=+$,;?/"
# RFC 3325 section 9.2: a UA's wish for the identity we assert; consumed here.
PREFERRED = "P-Preferred-Identity"


class TrustedSources:
    """``[auth] trusted``: addresses and networks never challenged."""

    def __init__(self, networks: Sequence[Any] = ()) -> None:
        self.networks = tuple(networks)

    def __contains__(self, host: object) -> bool:
        if not self.networks or not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in n for n in self.networks)


def challenge_response(
    request: Request, digest: DigestAuthenticator, stale: bool = False, proxy: bool | None = None
) -> Response:
    """401 (REGISTER: we are its registrar) or 407 (anything else: we are a
    proxy), one challenge value per configured algorithm, in order (RFC 8760
    2.3: "in order of preference")."""
    proxy = request.method != "REGISTER" if proxy is None else proxy
    status, reason, header = (407, "Proxy Authentication Required", "Proxy-Authenticate") if proxy else (
        401,
        "Unauthorized",
        "WWW-Authenticate",
    )
    return make_response(request, status, reason, extra=[(header, v) for v in digest.challenge(stale=stale)])


def _is_self(uri: Any, is_ours: Callable[[Any], bool]) -> bool:
    return not getattr(uri, "user", None) and bool(is_ours(uri))


def _user_of(uri: Any) -> str:
    return H.unescape(uri.user) if getattr(uri, "user", None) else ""


class Authenticate:
    """The chain's authentication processor (see the module docstring)."""

    name = "authenticate"

    def __init__(
        self,
        *,
        is_ours: Callable[[Any], bool],
        our_domain: Callable[[Any], bool],
        primary_domain: str,
        trusted: TrustedSources,
        stamp: DialogStamp,
        digest: DigestAuthenticator | None,
        required: bool,
        is_emergency: Callable[[Request], bool] = lambda request: False,
        on_auth_failure: Callable[[str], Any] | None = None,
        members: Callable[[Any], Sequence[str] | None] | None = None,
        path_stamp: PathStamp | None = None,
    ) -> None:
        # is_ours: a Request-URI for us (our domains and our own addresses);
        # our_domain: a From/To of our users ([proxy] domains and every ring's).
        self.is_ours = is_ours
        self.our_domain = our_domain
        self.primary_domain = primary_domain
        self.trusted = trusted
        self.stamp = stamp
        # our Path entries in the ring: read before 16.4 removes them
        self.path_stamp = path_stamp
        self.digest = digest
        self.required = required and digest is not None
        self.is_emergency = is_emergency
        self.on_auth_failure = on_auth_failure
        # members(source): the domains a CA ring member's certificate names
        # (None: the source is no member)
        self.members = members

    def __call__(self, job: Job) -> Step:
        request = job.request
        proxy_credentials: list[str] = []
        if self.digest is not None and request.method != "REGISTER":
            proxy_credentials = request.headers.get_all("proxy-authorization")
            if proxy_credentials:
                # RFC 3261 22.3: a proxy may consume the credentials of its own
                # realm; ours go no further, whatever we make of them (a phone
                # repeating them on a BYE, an ACK, a stale retry).
                self._remove_our_credentials(request)
        return self._mark(job, proxy_credentials)

    def _mark(self, job: Job, proxy_credentials: list[str]) -> Step:
        request = job.request
        job.stamped = self.stamp.verify(request, self.is_ours)
        if self.path_stamp is not None:
            job.path_stamped = self.path_stamp.verify(request, self.is_ours)
        if job.txn.source.host in self.trusted:
            job.trust = Trust.TRUSTED
            return CONTINUE
        # RFC 3325 section 5: an identity asserted by a node outside our
        # trust domain means nothing; we assert our users' ourselves.
        request.headers.remove(ASSERTED)
        request.headers.remove(PREFERRED)
        if self.members is not None and request.method != "REGISTER" and self._vouched(job):
            return CONTINUE
        # RFC 3261 22.1: "the CANCEL and ACK requests [...] cannot be
        # challenged (they cannot be resubmitted): CANCEL and ACK requests
        # MUST be accepted by a UAS [proxy] if the request they apply to was."
        if request.method in ("CANCEL", "ACK"):
            return CONTINUE
        if self.digest is None:
            return CONTINUE
        register = request.method == "REGISTER"
        try:
            claims_ours = self.is_ours(request.ruri) if register else self.our_domain(request.from_.uri)
        except Exception:
            return CONTINUE  # sanity has let it through; nothing here to check
        if job.stamped and not register:
            return CONTINUE  # in-dialog, along a route set we stamped
        if request.method == "OPTIONS" and _is_self(request.ruri, self.is_ours):
            return CONTINUE  # a keep-alive to the proxy itself, answered with our capabilities
        values = request.headers.get_all("authorization") if register else proxy_credentials
        verdict = self.digest.verify_request(values, request.method)
        if isinstance(verdict, Deferred):
            # [proxy] workers: another worker keeps this nonce's counts
            return verdict.addCallback(lambda v: self._decide(job, v, register, claims_ours))
        return self._decide(job, verdict, register, claims_ours)

    def _decide(self, job: Job, verdict: Verdict, register: bool, claims_ours: bool) -> Step:
        request = job.request
        assert self.digest is not None
        if verdict.ok:
            return self._authenticated(job, verdict.user or "", register)
        if not register and claims_ours and self.is_emergency(request):
            # An emergency call is never held up by a challenge, whatever its
            # credentials say; the relay rule lets it reach the gateways.
            log.info("emergency call {uri}: not challenged ({reason})", uri=request.uri, reason=verdict.reason)
            return CONTINUE
        if verdict.outcome is Outcome.NO_CREDENTIALS:
            if not (claims_ours and self.required):
                return CONTINUE  # a stranger; the relay rule decides where it may go
            return challenge_response(request, self.digest)
        source = job.txn.source.host
        log.info(
            "authentication of {method} from {source} failed: {reason}",
            method=request.method,
            source=source,
            reason=verdict.reason,
        )
        if verdict.outcome is Outcome.WRONG and self.on_auth_failure is not None:
            self.on_auth_failure(source)
        # Credentials for our realm that failed: challenge again (STALE with
        # stale=true, so the phone retries without asking its user).
        return challenge_response(request, self.digest, stale=verdict.outcome is Outcome.STALE)

    def _authenticated(self, job: Job, user: str, register: bool) -> Step:
        request = job.request
        if register:
            aor = request.to.uri
            if _user_of(aor) != user:
                # RFC 3261 10.3 step 3: the registrar decides whether the
                # authenticated user may modify this AoR; ours: only their own.
                log.info("{user} may not register {aor}", user=user, aor=str(aor))
                return make_response(request, 403, "Forbidden: you may only register your own address")
        else:
            sender = request.from_.uri
            host = (getattr(sender, "host", None) or "").lower()
            if host != ANONYMOUS_HOST and not (_user_of(sender) == user and self.our_domain(sender)):
                log.info("{user} may not send as {sender}", user=user, sender=str(sender))
                return make_response(request, 403, "Forbidden: the From is not your address")
            domain = host if host != ANONYMOUS_HOST and self.our_domain(sender) else self.primary_domain
            # RFC 3325: whom we vouch for; it only leaves toward trusted
            # peers and gateways (the forwarder's branch policy).
            request.headers.add(ASSERTED, f"<sip:{quote(user, safe=_USER_SAFE)}@{domain}>")
        job.trust = Trust.USER
        job.user = user
        return CONTINUE

    def _vouched(self, job: Job) -> bool:
        """A ring member vouches for a user of ours in a domain its
        certificate names: authenticated (by that member) as that user."""
        assert self.members is not None
        domains = self.members(job.txn.source)
        if not domains:
            return False
        request = job.request
        try:
            sender = request.from_.uri
        except Exception:
            return False
        host = (getattr(sender, "host", None) or "").lower().rstrip(".")
        user = _user_of(sender)
        if not user or host not in {d.lower() for d in domains} or not self.our_domain(sender):
            return False
        request.headers.add(ASSERTED, f"<sip:{quote(user, safe=_USER_SAFE)}@{host}>")
        job.trust = Trust.USER
        job.user = user
        log.debug("{user}@{host}: vouched for by a ring member at {source}", user=user, host=host, source=job.txn.source)
        return True

    def _remove_our_credentials(self, request: Request) -> None:
        assert self.digest is not None
        remove_credentials(request, self.digest.realm)


def remove_credentials(request: Request, realm: str) -> None:
    """Consume the Proxy-Authorization values of ``realm``, keep the others.

    RFC 3261 22.3: "a Proxy-Authorization header field value MUST NOT be
    consumed by any proxy whose realm does not match the 'realm' parameter
    specified in that value" -- and ours are of no use further on.
    """
    values = request.headers.get_all("proxy-authorization")
    if not values:
        return
    keep = []
    for value in values:
        try:
            ours = parse_auth_header(value).params.get("realm") == realm
        except MalformedCredentials:
            ours = False
        if not ours:
            keep.append(value)
    if len(keep) != len(values):
        request.headers.remove("proxy-authorization")
        for value in keep:
            request.headers.add("Proxy-Authorization", value)
