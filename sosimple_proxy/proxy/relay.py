"""The relay rule: no open relay, no toll fraud.

It runs once location has said where a request would go (so no provider,
and no Route header the sender wrote, can bypass it):

- A request from outside ``[auth] trusted``, not authenticated as one of
  our users, may only reach our own users: targets from ``local`` or a ring
  (providers of our domains), a connection one of our users registered
  over, a contact one of our users registered (another proxy of the ring
  routing through us along a Path, or along a Path entry we published and
  stamped for that contact, :mod:`sosimple_proxy.proxy.path_stamp`), or an
  in-dialog route set we stamped ourselves
  (:mod:`sosimple_proxy.proxy.dialog_stamp`).  That is how other domains
  call us.
- Every other next hop (another domain through ``routes`` or DNS, a PSTN
  gateway, a DID that maps out, a Route the sender preloaded, a dialog we
  did not stamp) is refused ``403 Relaying Denied``, or challenged 407 when
  the From claims one of our domains and we have users to authenticate.
- The PSTN gateways: ``[pstn] callers`` says who may reach them at all
  (``authenticated``: our users and trusted sources; ``trusted``: trusted
  sources only; or a list of users, plus trusted sources).  Emergency
  numbers (``[pstn] emergency``) go through without a challenge when the
  From is one of our domains or the source is trusted.

The rule holds with or without a users file: without one nobody outside
``trusted`` relays at all.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from twisted.logger import Logger

from sosimple_proxy.location.interfaces import Found
from sosimple_proxy.proxy import routing
from sosimple_proxy.proxy.authenticate import challenge_response, remove_credentials
from sosimple_proxy.proxy.chain import CONTINUE, Job, Kind, Step, Trust
from sosimple_proxy.proxy.path_stamp import contact_key
from sosimple_proxy.security.digest import DigestAuthenticator
from sosimple_proxy.sip.message import Request, Response, make_response
from sosimple_proxy.sip.uri import is_ip, parse_uri

log = Logger()

# Providers whose targets are our own users (our domains, our rings).
LOCAL_PROVIDERS = ("local", "overlay")
PSTN = "pstn"
_VISUAL = re.compile(r"[\s().\-]")


class EmergencyNumbers:
    """``[pstn] emergency``: numbers as dialled (``911``, ``112``), matched
    against the Request-URI's user part (or a tel: number) with visual
    separators removed."""

    def __init__(self, numbers: Sequence[str] = ()) -> None:
        self.numbers = frozenset(numbers)

    def __call__(self, request: Request) -> bool:
        if not self.numbers:
            return False
        try:
            uri = request.ruri
        except Exception:
            return False
        if getattr(uri, "scheme", None) not in ("sip", "sips", "tel") or not uri.user:
            return False
        dialled = _VISUAL.sub("", uri.user.split(";", 1)[0])
        return dialled in self.numbers


class PstnCallers:
    """``[pstn] callers``: ``authenticated``, ``trusted``, or user names."""

    def __init__(self, words: Sequence[str] = ("authenticated",)) -> None:
        self.kind = words[0] if words and words[0] in ("authenticated", "trusted") else "users"
        self.users = frozenset(words) if self.kind == "users" else frozenset()

    def allows(self, job: Job) -> bool:
        if job.trust is Trust.TRUSTED:
            return True
        if job.trust is not Trust.USER or self.kind == "trusted":
            return False
        return self.kind == "authenticated" or job.user in self.users


def is_local_provider(name: str) -> bool:
    return name in LOCAL_PROVIDERS or name.startswith("overlay:")


class Relay:
    """The chain's relay rule (see the module docstring)."""

    name = "relay rule"

    def __init__(
        self,
        *,
        is_ours: Callable[[Any], bool],
        our_domain: Callable[[Any], bool],
        holds_contact: Callable[[Any], bool],
        has_connection: Callable[[Any], bool],
        digest: DigestAuthenticator | None,
        callers: PstnCallers,
        is_emergency: Callable[[Request], bool],
        is_gateway: Callable[[Any], bool] = lambda uri: False,
    ) -> None:
        # holds_contact(uri): a contact of a live binding of ours (ContactIndex)
        self.is_ours = is_ours
        self.our_domain = our_domain
        self.holds_contact = holds_contact
        self.has_connection = has_connection
        self.digest = digest
        self.callers = callers
        self.is_emergency = is_emergency
        # is_gateway(uri): the URI names one of our gateways (host and port)
        self.is_gateway = is_gateway

    def __call__(self, job: Job) -> Step:
        request = job.request
        if job.kind is Kind.TO_PROXY:
            return CONTINUE
        located = job.located
        if not job.kind.routed and isinstance(located, Found) and _provider(located) == PSTN:
            return self._pstn(job)
        if not job.stamped and self.is_gateway(self._next_hop(job)):
            # a gateway named by a preloaded Route or the Request-URI itself:
            # the same rule as when location chose it ([pstn] callers)
            return self._pstn(job)
        if job.trust is not Trust.STRANGER:
            return CONTINUE
        where = self._elsewhere(job)
        if where is None:
            return CONTINUE
        return self._refuse(job, where)

    # -- the gateways

    def _pstn(self, job: Job) -> Step:
        request = job.request
        if self.is_emergency(request) and (job.trust is not Trust.STRANGER or self._from_ours(request)):
            log.info("emergency call to {uri} from {source}", uri=request.uri, source=job.txn.source.host)
            return CONTINUE
        if self.callers.allows(job):
            return CONTINUE
        if job.trust is Trust.USER:
            log.info("{user} may not call the PSTN ([pstn] callers)", user=job.user)
            return make_response(request, 403, "Forbidden: you may not call the PSTN")
        return self._refuse(job, "a PSTN gateway")

    @staticmethod
    def _next_hop(job: Job) -> Any:
        request = job.request
        try:
            routes = request.routes
            return routes[0].uri if routes else request.ruri
        except Exception:
            return None

    # -- everything else

    def _elsewhere(self, job: Job) -> str | None:
        """What the request would reach that is not one of our users, or None."""
        request = job.request
        if job.stamped:
            return None  # a dialog route set we stamped ourselves
        if job.kind is Kind.PRELOADED:
            return "a preloaded Route"
        if job.kind is Kind.IN_DIALOG:
            return "a route set we did not record"
        if request.flow is not None:
            peer = routing.parse_flow(request.flow)
            if peer is not None and self.has_connection(peer):
                return None  # one of our users' own connection
            if job.path_stamped:
                return None  # the flow our stamped Path names (it may be gone: the forwarder says so)
            return None if self._registered_contact(request) else "a flow we do not hold"
        located = job.located
        if isinstance(located, Found):
            provider = _provider(located)
            if is_local_provider(provider):
                return None
            return f"another domain ({provider})"
        if located is not None and not isinstance(located, Found) and hasattr(located, "status"):
            return None  # a Miss: answered 404/480, nowhere to go
        uri = request.ruri
        if self.is_ours(uri) or not getattr(uri, "is_sip", False) or not is_ip(uri.host or ""):
            return None  # nothing serves it: Forward answers 404
        if self._registered_contact(request):
            return None  # a contact of one of our users (a Path through us)
        if job.path_stamped:
            # a contact the ring holds for one of our users, along the Path we
            # published and stamped for it (we may have restarted since)
            return None
        return "an address not of our users"

    def _registered_contact(self, request: Request) -> bool:
        """The Request-URI is a contact our registrar holds (a request another
        proxy of the ring routes to one of our users along their Path)."""
        try:
            return bool(self.holds_contact(request.ruri))
        except Exception:
            return False

    def _from_ours(self, request: Request) -> bool:
        try:
            return bool(self.our_domain(request.from_.uri))
        except Exception:
            return False

    def _refuse(self, job: Job, where: str) -> Response:
        request = job.request
        log.info(
            "relaying denied: {method} {uri} from {source} would reach {where}",
            method=request.method,
            uri=request.uri,
            source=job.txn.source.host,
            where=where,
        )
        if self.digest is not None and request.method != "REGISTER" and self._from_ours(request):
            return challenge_response(request, self.digest)
        return make_response(request, 403, "Relaying Denied")


def _provider(found: Found) -> str:
    if found.provider:
        return found.provider
    return found.targets[0].source if found.targets else ""


class ContactIndex:
    """The contacts of our live bindings, kept up to date as a listener of
    the binding table, so that the relay rule asks in O(1) whether a
    Request-URI is one of our users' contacts (a Path through us)."""

    def __init__(self, lookup: Callable[[str], Sequence[Any]]) -> None:
        self._lookup = lookup  # aor -> live bindings (BindingTable.lookup)
        self._aors: dict[tuple[str, str, str, int], set[str]] = {}
        self._keys: dict[str, set[tuple[str, str, str, int]]] = {}
        # aor -> its contacts as last indexed: a refresh (same contacts,
        # new expiry) then costs a comparison, not a parse per contact.
        self._contacts: dict[str, tuple[str, ...]] = {}

    def changed(self, aor: str, bindings: Sequence[Any]) -> None:
        contacts = tuple(sorted(binding.contact for binding in bindings))
        if contacts and self._contacts.get(aor) == contacts:
            return
        self._contacts.pop(aor, None)
        for key in self._keys.pop(aor, set()):
            owners = self._aors.get(key)
            if owners is not None:
                owners.discard(aor)
                if not owners:
                    del self._aors[key]
        keys = set()
        for binding in bindings:
            try:
                keys.add(contact_key(parse_uri(binding.contact)))
            except Exception:
                continue
        if keys:
            self._keys[aor] = keys
            self._contacts[aor] = contacts
            for key in keys:
                self._aors.setdefault(key, set()).add(aor)

    def __call__(self, uri: Any) -> bool:
        key = contact_key(uri)
        for aor in list(self._aors.get(key, ())):
            # expiry is the table's business: ask it whether the binding lives
            if any(_same(binding.contact, key) for binding in self._lookup(aor)):
                return True
        return False


def _same(contact: str, key: tuple[str, str, str, int]) -> bool:
    try:
        return contact_key(parse_uri(contact)) == key
    except Exception:
        return False


class AckGate:
    """The relay rule for the ACK of a 2xx, which is its own transaction and
    never goes through the chain (RFC 3261 16.11: the core forwards it).  It
    cannot be challenged (22.1), so it may only follow a dialog we stamped,
    come from a trusted source, or go to one of our users."""

    def __init__(self, relay: Relay, trusted: Any, stamp: Any, realm: str | None = None) -> None:
        self.relay = relay
        self.trusted = trusted
        self.stamp = stamp
        self.realm = realm  # our digest realm: credentials of it stop here

    def consume_credentials(self, ack: Request) -> None:
        """The ACK of a 2xx repeats the INVITE's Proxy-Authorization (22.1);
        ours go no further than they do on the INVITE."""
        if self.realm is not None:
            remove_credentials(ack, self.realm)

    def stamped(self, ack: Request) -> bool:
        """Asked before our own Route entries are removed."""
        return bool(self.stamp.verify(ack, self.relay.is_ours))

    def allows(self, ack: Request, source: Any, kind: Kind, stamped: bool) -> bool:
        if stamped or source.host in self.trusted:
            return True
        if kind.routed:
            return False
        if ack.flow is not None:
            peer = routing.parse_flow(ack.flow)
            return (peer is not None and self.relay.has_connection(peer)) or self.relay._registered_contact(ack)
        return bool(self.relay.is_ours(ack.ruri)) or self.relay._registered_contact(ack)
