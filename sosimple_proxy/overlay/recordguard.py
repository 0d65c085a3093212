"""A node's guard over records: it signs what the node writes and checks
what it is given before it stores, serves or uses it.

:class:`.replication.Replicator` calls :meth:`RecordGuard.prepare` on a
write (the node's own unsigned records get signed; in an open ring the
first write for a domain publishes the domain record first) and
:meth:`RecordGuard.accept` on every record that comes in: stored by another
node, handed over in a sync, or read back by a lookup.  A record is refused
for a bad signature, an expired (or foreign) certificate, or a writer not
entitled to it (:mod:`.entitlement`); each refusal is logged once per writer
and reason, not once per record.  :meth:`RecordGuard.check_stored` checks
what a restarted node loads from disk.

The context a check needs (a domain's record, a user's key) comes from the
node's own store when it holds it, else from the ring, remembered for
``context_ttl`` seconds (a miss for ``miss_ttl``).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from cryptography import x509
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from sosimple_proxy.security import nodecerts

from . import domainrecords as dr
from .entitlement import Authority, IContext, entitled, needs
from .identity import load_or_create_key
from .records import EntryId, Record, newer
from .signing import SignatureCheck, Signer

log = Logger()

#: checked first, so later records of the same batch see them
_ORDER = {dr.KIND: 0, dr.PUBLICKEY: 1}
_UNKNOWN = object()


class Refused(Exception):
    """A domain operation this node may not do."""


@implementer(IContext)
class _Context:
    def __init__(self, guard: RecordGuard, replica: bool, domains: dict[str, Any], users: dict[str, Any]) -> None:
        self.guard, self.replica, self.domains, self.users = guard, replica, domains, users

    def domain_keys(self, domain: str) -> dr.DomainKeys | None:
        found = self.domains.get(domain, _UNKNOWN)
        if found is _UNKNOWN:
            found = self.guard.known_domain(domain)
        if found is _UNKNOWN:
            raise LookupError(f"cannot read the domain record of {domain} now")
        return found

    def user_key(self, aor: str) -> str | None:
        found = self.users.get(aor, _UNKNOWN)
        if found is _UNKNOWN:
            found = self.guard.known_user(aor)
        if found is _UNKNOWN:
            raise LookupError(f"cannot read the public key of {aor} now")
        return found

    def current(self, entry_id: EntryId) -> Record | None:
        if not self.replica or self.guard.node is None:
            return None
        r = self.guard.node.store.entry(entry_id)
        return r if r is not None and not r.deleted else None


class RecordGuard:
    """Signing and checking for one node; :meth:`attach` gives it the node."""

    LOGGED_LIMIT = 4096
    #: domains and users whose records are remembered at most
    KNOWN_LIMIT = 100_000

    def __init__(
        self,
        authority: Authority,
        signer: Signer | None,
        clock: Any,
        wall: Any = None,
        context_ttl: float = 30.0,
        miss_ttl: float = 2.0,
        log: Logger = log,
    ) -> None:
        self.authority = authority
        self.signer = signer
        self.clock = clock
        #: seconds since the epoch, for certificate dates (the clock may be simulated)
        self.wall = wall or clock.seconds
        self.context_ttl = context_ttl
        self.miss_ttl = miss_ttl
        self.log = log
        self.signatures = SignatureCheck()
        self.node: Any = None
        self._known: dict[tuple[str, str], tuple[float, Any]] = {}
        self._claimed: dict[str, float] = {}
        self._learning: set[tuple[str, str]] = set()
        self._logged: set[tuple[str, str]] = set()
        #: how many records were refused, by reason
        self.refusals: dict[str, int] = {}

    def attach(self, node: Any) -> None:
        self.node = node

    # ---------------------------------------------------------------- writing

    @defer.inlineCallbacks
    def prepare(self, batch: Sequence[Record]):
        """Deferred[tuple[Record, ...]]: ``batch`` with our unsigned records signed."""
        if self.signer is None or all(r.signature for r in batch):
            return tuple(batch)
        if not self.authority.ca_ring and not self.authority.any_domain:
            bound = {"registration", dr.PUBLICKEY, dr.STORE_KIND, *dr.USER_KINDS}
            domains = {dr.parse_name(r.name).domain for r in batch if not r.signature and r.kind in bound}
            for domain in sorted(domains - {None}):
                yield self._claim(domain)
        out = []
        for r in batch:
            if not r.signature:
                r = self.signer.sign(r)
                self.signatures.remember(r)
            out.append(r)
        return tuple(out)

    @defer.inlineCallbacks
    def _claim(self, domain: str):
        """Before our first registration for ``domain`` (open ring): its domain
        record, published listing us if it has none, renewed when half used."""
        now = self.clock.seconds()
        if self._claimed.get(domain, 0) > now:
            return None
        try:
            current = yield self.domain_record(domain)
            fp = self.signer.fingerprint
            if current is None:
                yield self.publish_domain(domain, [fp])
                self.log.info("overlay: published the domain record of {domain}, listing this node", domain=domain)
            else:
                listed = dr.decode(current.value)
                if not listed.allows(fp):
                    self._log_once(
                        ("claim", domain),
                        "overlay: this node's key is not listed for {domain}: its registrations there will be "
                        "refused; on a listed node run: sosimple authorize {domain} --key {fp}",
                        domain=domain, fp=fp,
                    )
                    self._claimed[domain] = now + self.context_ttl
                    return None
                if current.expires - now < dr.DOMAIN_TTL / 2:
                    yield self.publish_domain(domain, listed.keys, current)
        except Exception as e:
            # the write would be refused for want of a domain record: fail it,
            # so that the writer tries again (the ring may still be settling)
            self.log.info("overlay: could not check the domain record of {domain}: {why}", domain=domain, why=str(e))
            raise
        self._claimed[domain] = now + self.context_ttl
        return None

    @defer.inlineCallbacks
    def domain_record(self, domain: str):
        """Deferred[Record | None]: the live domain record the ring holds."""
        node = self.node
        records = yield node.get(self.authority.keys.key(dr.domain_name(domain)), dr.KIND)
        return records[0] if records else None

    @defer.inlineCallbacks
    def publish_domain(self, domain: str, keys: Iterable[str], current: Record | None = None):
        """Deferred[Record]: write ``domain``'s record listing ``keys``, signed by us."""
        node = self.node
        name = dr.domain_name(domain)
        record = Record(
            self.authority.keys.key(name), dr.KIND, "", node.writer, dr.encode(domain, list(keys)),
            self.clock.seconds() + dr.DOMAIN_TTL, node.next_seq(current.seq if current is not None else 0), name=name,
        )
        yield node.put(record)
        self._known[("domain", domain)] = (self.clock.seconds() + self.context_ttl, dr.decode(record.value))
        return record

    @defer.inlineCallbacks
    def change_domain(self, domain: str, add: Sequence[str] = (), replace: Sequence[str] | None = None):
        """Deferred[Record]: ``sosimple authorize`` (``add``) and ``rebind``
        (``replace``), signed by this node, which must be listed (a CA ring:
        its certificate must name the domain)."""
        current = yield self.domain_record(domain)
        fp = self.signer.fingerprint
        if current is not None:
            keys = list(dr.decode(current.value).keys)
            if fp not in keys:
                raise Refused(f"this node's key {fp} is not listed for {domain}")
        elif self.authority.ca_ring:
            raise Refused(f"{domain} has no domain record: in a CA ring only the CA publishes the first")
        else:
            keys = [fp]
        keys = list(replace) if replace is not None else keys + [k for k in add if k not in keys]
        if not keys:
            raise Refused("a domain record lists at least one key")
        record = yield self.publish_domain(domain, keys, current)
        self._claimed.pop(domain, None)
        return record

    # --------------------------------------------------------------- checking

    def check_stored(self, record: Record) -> str | None:
        """Why a record loaded from disk cannot be kept (None: it can): its
        signature, its certificate's dates and its name (the ring is not up
        yet to ask about domains)."""
        cred, why = self.signatures.check(record)
        if why is not None or cred is None:
            return why
        if record.name and self.authority.keys.key(record.name) != record.key:
            return f"its key is not the key of its name {record.name!r}"
        if cred.certificate is not None and cred.certificate.not_valid_after_utc.timestamp() < self.wall():
            return "an expired certificate"
        return None

    @defer.inlineCallbacks
    def accept(self, records: Iterable[Record], origin: str = "store"):
        """Deferred[list[Record]]: those of ``records`` that may be kept
        (``origin`` "store" or "sync": we are a replica) or used ("fetch")."""
        replica = origin != "fetch"
        store = self.node.store if self.node is not None else None
        out: list[Record] = []
        todo: list[tuple[Record, Any]] = []
        for r in records:
            held = store.entry(r.entry_id) if store is not None else None
            if held is not None and (held == r or (replica and not newer(r, held))):
                if held == r:
                    out.append(r)  # verified when it came in
                continue
            cred, why = self.signatures.check(r)
            if why is not None:
                self._refuse(r, cred, why, origin)
                continue
            todo.append((r, cred))
        if not todo:
            return out
        todo.sort(key=lambda rc: _ORDER.get(rc[0].kind, 2))
        domains: set[str] = set()
        aors: set[str] = set()
        for r, _ in todo:
            n = needs(r, self.authority, replica)
            domains |= n.domains
            aors |= n.aors
        yield self._learn(domains, aors)
        in_batch_domains: dict[str, Any] = {}
        in_batch_users: dict[str, Any] = {}
        now = self.wall()
        for r, cred in todo:
            context = _Context(self, replica, in_batch_domains, in_batch_users)
            try:
                why = entitled(r, cred, self.authority, context, now)
            except LookupError as e:
                why = str(e)
            if why is not None:
                self._refuse(r, cred, why, origin)
                continue
            out.append(r)
            self._learned_from(r, in_batch_domains, in_batch_users)
        return out

    def _learned_from(self, r: Record, domains: dict[str, Any], users: dict[str, Any]) -> None:
        named = dr.parse_name(r.name)
        until = self.clock.seconds() + self.context_ttl
        try:
            if r.kind == dr.KIND and named.domain:
                value = None if r.deleted else dr.decode(r.value)
                domains[named.domain] = value
                self._known[("domain", named.domain)] = (until, value)
            elif r.kind == dr.PUBLICKEY and named.aor:
                value = None if r.deleted else dr.user_key_fingerprint(r.value)
                users[named.aor] = value
                self._known[("user", named.aor)] = (until, value)
        except ValueError:
            pass

    # ---------------------------------------------------------------- context

    def _local(self, key: int, kind: str) -> Any:
        """Our live copy; None when we vouch for the key and hold none (a
        real miss, no need to ask); ``_UNKNOWN`` when only the ring can tell."""
        node = self.node
        if node is None:
            return _UNKNOWN
        held = node.store.get(key, kind)
        if held:
            return held[0]
        return None if node.authoritative(key) else _UNKNOWN

    def _cached(self, what: tuple[str, str]) -> Any:
        hit = self._known.get(what)
        if hit is None or hit[0] <= self.clock.seconds():
            return _UNKNOWN
        return hit[1]

    def known_domain(self, domain: str) -> Any:
        """The domain's record as far as we know it without asking (``_UNKNOWN``: ask)."""
        local = self._local(self.authority.keys.key(dr.domain_name(domain)), dr.KIND)
        if local is None:
            return None
        if local is not _UNKNOWN:
            try:
                return dr.decode(local.value)
            except ValueError:
                return None
        return self._cached(("domain", domain))

    def known_user(self, aor: str) -> Any:
        local = self._local(self.authority.keys.key(aor), dr.PUBLICKEY)
        if local is None:
            return None
        if local is not _UNKNOWN:
            try:
                return dr.user_key_fingerprint(local.value)
            except ValueError:
                return None
        return self._cached(("user", aor))

    @defer.inlineCallbacks
    def _learn(self, domains: set[str], aors: set[str]):
        """Read from the ring what we do not hold or remember."""
        wanted = [("domain", d, dr.domain_name(d), dr.KIND) for d in sorted(domains) if self.known_domain(d) is _UNKNOWN]
        wanted += [("user", a, a, dr.PUBLICKEY) for a in sorted(aors) if self.known_user(a) is _UNKNOWN]
        # one read per subject at a time: a read's own check must not start it again
        wanted = [w for w in wanted if (w[0], w[1]) not in self._learning]
        if not wanted or self.node is None:
            return None
        self._learning.update((w[0], w[1]) for w in wanted)
        calls = [self.node.get(self.authority.keys.key(name), kind) for _, _, name, kind in wanted]
        try:
            results = yield defer.DeferredList(calls, consumeErrors=True)
        finally:
            self._learning.difference_update((w[0], w[1]) for w in wanted)
        now = self.clock.seconds()
        for (what, subject, _, _), (ok, found) in zip(wanted, results):
            if not ok:
                continue  # unknown: the check says it cannot tell now
            value: Any = None
            if found:
                try:
                    value = dr.decode(found[0].value) if what == "domain" else dr.user_key_fingerprint(found[0].value)
                except ValueError:
                    value = None
            if len(self._known) >= self.KNOWN_LIMIT:
                self._known.clear()
            self._known[(what, subject)] = (now + (self.context_ttl if found else self.miss_ttl), value)
        return None

    # ---------------------------------------------------------------- logging

    def _refuse(self, record: Record, cred: Any, why: str, origin: str) -> None:
        self.refusals[why] = self.refusals.get(why, 0) + 1
        who = cred.fingerprint if cred is not None else record.writer
        self._log_once(
            (who, why),
            "overlay: refused records from writer {writer} (key {key}) on {origin}, e.g. {kind} {name}: {why}",
            writer=record.writer, key=who, origin=origin, kind=record.kind, name=record.name or format(record.key, "x"), why=why,
        )

    def _log_once(self, what: tuple[str, str], fmt: str, **fields: Any) -> None:
        if what in self._logged:
            return
        if len(self._logged) >= self.LOGGED_LIMIT:
            self._logged.clear()
        self._logged.add(what)
        self.log.warn(fmt, **fields)


def guard_for(
    settings: Any, tls: Any, state_dir: str, keys: Any, clock: Any, log: Logger = log
) -> RecordGuard:
    """The guard of a node built from ``[overlay]`` settings: a CA ring signs
    with the node's TLS key and certificate and trusts its CA; an open ring
    signs with ``state_dir/node.key``."""
    any_domain = str(settings.get("domain_writers", "listed") or "listed") == "any"
    if tls is not None:
        with open(tls.ca, "rb") as f:
            roots = tuple(x509.load_pem_x509_certificates(f.read()))
        signer = Signer(nodecerts.load_private_key(tls.key), nodecerts.load_certificate(tls.certificate))
        authority = Authority(keys, roots, any_domain)
    else:
        signer = Signer(load_or_create_key(state_dir))
        authority = Authority(keys, (), any_domain)
    return RecordGuard(authority, signer, clock, log=log)
