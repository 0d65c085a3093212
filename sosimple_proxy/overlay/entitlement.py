"""Who may write a record: the rules every replica and reader applies.

:func:`entitled` decides for one record whose signature already verified
(:mod:`.signing`), given the ring's roots (:class:`Authority`) and what the
ring holds about the record's owner (an :class:`IContext`: the domain
record, the user's public key, the version this replica holds).  It is
pure, so the replicas, the readers, and another service (a user's store
API) apply the very same rules:

- a record's ``name`` must be what its key was made from;
- a *node* is a writer with a certificate from the ring's CA, valid now (a
  CA ring), or a raw Ed25519 key (an open ring); the CA's own certificate
  may write anything;
- a registration of ``user@d`` needs a node entitled to ``d``: in a CA
  ring its certificate names ``d`` (moving a domain there is the CA's
  certificates' business); in an open ring ``d``'s domain record lists its
  key;
- a domain record needs a key its current version lists (a replica that
  holds none: the first writer, listed in it, in an open ring; the CA in a
  CA ring);
- a user's public key (``publickey`` under her AoR) needs a node entitled
  to her domain, or her current key; once she has one, her presence and
  her named blobs (``alice@example.com/...``) need her key;
- what the users' store keeps for her (``userdata``) needs a node entitled
  to her domain (it authenticated her) or her own key;
- anything else (an unnamed blob) needs any node.
"""

from __future__ import annotations

import datetime
from typing import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from zope.interface import Attribute, Interface

from sosimple_proxy.security import nodecerts

from . import domainrecords as dr
from .ids import KeyScheme
from .records import EntryId, Record
from .signing import Credential


class IContext(Interface):
    """What the ring holds about a record's owner, as the checker knows it."""

    replica = Attribute("True on a node about to store the record; False on a reader")

    def domain_keys(domain: str):
        """The domain's record (:class:`.domainrecords.DomainKeys`), None if it has none.

        Raises ``LookupError`` when it cannot be known now."""

    def user_key(aor: str):
        """The fingerprint of the AoR's current public key, None if none."""

    def current(entry_id: EntryId):
        """The live version this replica holds of the entry (None: none, or a reader)."""


@attrs.frozen
class Authority:
    """The ring's roots: how names become keys, the CA (a CA ring), and
    whether an open ring lets any node write any domain (``domain_writers = any``)."""

    keys: KeyScheme
    ca: tuple[x509.Certificate, ...] = ()
    any_domain: bool = False

    @property
    def ca_ring(self) -> bool:
        return bool(self.ca)


@attrs.frozen
class Needs:
    """The context a check will ask for."""

    domains: frozenset[str] = frozenset()
    aors: frozenset[str] = frozenset()


def needs(record: Record, authority: Authority, replica: bool = True) -> Needs:
    """Which domain records and user keys :func:`entitled` will consult."""
    named = dr.parse_name(record.name)
    if named.aor is None or named.domain is None:
        return Needs()
    user_bound = record.kind in dr.USER_KINDS or record.kind == dr.STORE_KIND or (record.kind == dr.PUBLICKEY and replica)
    aors = frozenset({named.aor}) if user_bound else frozenset()
    # a CA ring's certificates say who writes a domain: no domain record to read
    domains = frozenset() if authority.any_domain or authority.ca_ring else frozenset({named.domain})
    return Needs(domains, aors)


def _issued_by_any(cert: x509.Certificate, roots: Sequence[x509.Certificate]) -> bool:
    for root in roots:
        try:
            cert.verify_directly_issued_by(root)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


class _Writer:
    """What a credential makes its holder, in this ring."""

    def __init__(self, cred: Credential, authority: Authority, now: float) -> None:
        self.cred = cred
        self.fp = cred.fingerprint
        self.is_ca = False
        self.domains: tuple[str, ...] = ()
        self.node_problem: str | None = None
        cert = cred.certificate
        if cert is None:
            if authority.ca_ring:
                self.node_problem = "no node certificate (a CA ring)"
            return
        if not authority.ca_ring:
            self.node_problem = "a certificate in an open ring"
            return
        moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        if cert.not_valid_after_utc < moment:
            self.node_problem = f"an expired certificate (since {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
            return
        if cert.not_valid_before_utc > moment:
            self.node_problem = "a certificate not valid yet"
            return
        if any(cert == root for root in authority.ca):
            self.is_ca = True
            return
        if not _issued_by_any(cert, authority.ca):
            self.node_problem = "a certificate not issued by the ring's CA"
            return
        self.domains = nodecerts.domains_of(cert)


def entitled(record: Record, cred: Credential, authority: Authority, context: IContext, now: float) -> str | None:
    """None if the writer of ``record`` (credential ``cred``) may write it; else why not."""
    w = _Writer(cred, authority, now)
    if record.name and authority.keys.key(record.name) != record.key:
        return f"its key is not the key of its name {record.name!r}"
    named = dr.parse_name(record.name) if record.name else dr.Named(None, None)
    if w.is_ca:
        return None
    kind = record.kind
    if kind == dr.KIND:
        return _domain_record(record, w, authority, context, named)
    if kind == "registration":
        if named.aor is None or named.domain is None:
            return "a registration must be named by its AoR"
        return _domain_writer(named.domain, w, authority, context)
    if kind == dr.PUBLICKEY:
        if named.aor is None or named.domain is None or "/" in record.name:
            return "a public key must be named by its AoR"
        if not context.replica and w.cred.certificate is None and authority.ca_ring:
            return None  # a reader cannot tell her old key from the record itself: her replicas checked it
        if context.replica and context.user_key(named.aor) == w.fp:
            return None  # she replaces her own key
        why = _domain_writer(named.domain, w, authority, context)
        if why is not None and not context.replica and w.cred.certificate is None and w.node_problem is None:
            # an open ring's reader: a raw key that is no node of her domain
            # may be her own (a rotation); her replicas checked it against
            # the key they held
            return None
        return why
    if kind == dr.STORE_KIND:
        if named.aor is None or named.domain is None:
            return "the users' store's records must be named by their AoR"
        if context.user_key(named.aor) == w.fp:
            return None
        return _domain_writer(named.domain, w, authority, context)
    if kind in dr.USER_KINDS and named.aor is not None and named.domain is not None:
        theirs = context.user_key(named.aor)
        if theirs is not None:
            return None if w.fp == theirs else f"not the key of {named.aor}"
        return _domain_writer(named.domain, w, authority, context)
    if kind == "presence":
        return "presence must be named by its AoR"
    return w.node_problem


def _domain_writer(domain: str, w: _Writer, authority: Authority, context: IContext) -> str | None:
    if w.node_problem is not None:
        return w.node_problem
    if authority.ca_ring:
        # the CA's signature on the certificate is the entitlement, checked
        # locally: a replica never waits on a ring read to store
        return None if domain in w.domains else f"its certificate does not name {domain}"
    if authority.any_domain:
        return None
    listed = context.domain_keys(domain)
    if listed is None:
        return f"{domain} has no domain record"
    return None if listed.allows(w.fp) else f"its key is not listed in the domain record of {domain}"


def _domain_record(record: Record, w: _Writer, authority: Authority, context: IContext, named: dr.Named) -> str | None:
    if named.aor is not None or not named.domain:
        return "a domain record must be named domain:DOMAIN"
    mine: dr.DomainKeys | None = None
    if not record.deleted:
        try:
            mine = dr.decode(record.value)
        except ValueError as e:
            return str(e)
        if mine.domain != named.domain:
            return f"a domain record for {mine.domain} named for {named.domain}"
    if w.node_problem is not None:
        return w.node_problem
    current = context.current(record.entry_id)
    if current is not None and not current.deleted:
        try:
            listed = dr.decode(current.value)
        except ValueError:
            listed = None
        if listed is not None:
            return None if listed.allows(w.fp) else f"its key is not listed in the domain record of {named.domain}"
    # no version to compare with: a replica's first, or a reader's
    if authority.ca_ring and context.replica:
        return f"only the CA publishes the first domain record of {named.domain} in a CA ring"
    if mine is None or not mine.allows(w.fp):
        return "a domain record must list the key that signs it"
    return None
