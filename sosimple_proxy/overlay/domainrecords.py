"""Names records are written under, and the domain record of an open ring.

A record that belongs to someone carries the name its key was made from:
``alice@example.com`` (her registrations, her public key, her presence),
``alice@example.com/notes`` (something stored for her), or
``domain:example.com`` (the domain record).  The part before the first
``/`` is the AoR; its domain is what entitles a writer.

The *domain record* (kind ``domain``, single-valued) lists the node keys
that may write a domain's registrations, by fingerprint (see
:func:`.signing.fingerprint`).  In an open ring the first node that writes
for a domain publishes it listing itself (trust on first use);
``sosimple authorize`` adds a key and ``sosimple rebind`` replaces the
list, each signed by a key already listed (or, in a CA ring, by the CA).
It lives ``DOMAIN_TTL`` and the listed nodes that write for the domain
renew it, so a domain whose every key is lost is free again once it
expires.
"""

from __future__ import annotations

import json
from typing import Sequence

import attrs

from .records import register_kind
from .signing import CredentialError, fingerprint, load_public_key

#: the kind of a domain record
KIND = "domain"
#: the kind of a user's public key record, under her AoR
PUBLICKEY = "publickey"
#: kinds bound to their user's key once she has one (besides named blobs)
USER_KINDS = frozenset({"presence", "blob"})
#: what the users' store keeps for her (``userdata.py``): written by a node
#: of her domain that authenticated her, or signed by her own key
STORE_KIND = "userdata"
# Every node that judges these records must know their kinds, whether or not
# it serves the users' store itself (a storage-only peer holds them too).
register_kind(STORE_KIND, dictionary=True)
register_kind(PUBLICKEY, dictionary=False)

#: a domain record lives this long unless renewed (seconds)
DOMAIN_TTL = 7 * 24 * 3600.0
#: a user's public key record lives this long (seconds)
USER_KEY_TTL = 365 * 24 * 3600.0
_PREFIX = "domain:"


def domain_name(domain: str) -> str:
    """The name (and so the key) of ``domain``'s record."""
    return _PREFIX + domain.strip().lower().rstrip(".")


@attrs.frozen
class Named:
    """What a record's name says: an AoR and its domain, or a domain record's domain."""

    aor: str | None
    domain: str | None


def parse_name(name: str) -> Named:
    """``alice@example.com[/path]`` -> her AoR and domain; ``domain:d`` -> d."""
    if name.startswith(_PREFIX):
        return Named(None, name[len(_PREFIX):] or None)
    aor = name.split("/", 1)[0]
    user, at, domain = aor.rpartition("@")
    if not at or not user or not domain:
        return Named(None, None)
    return Named(aor, domain.lower())


@attrs.frozen
class DomainKeys:
    """A domain record's content: the domain, the fingerprints that may write it."""

    domain: str
    keys: tuple[str, ...]

    def allows(self, fp: str) -> bool:
        return fp in self.keys


def encode(domain: str, keys: Sequence[str]) -> bytes:
    return json.dumps({"domain": domain.lower(), "keys": list(dict.fromkeys(keys))}, separators=(",", ":")).encode()


def decode(value: bytes) -> DomainKeys:
    """The content of a domain record's value; ``ValueError`` if it is not one."""
    try:
        data = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("a domain record is JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("domain"), str) or not isinstance(data.get("keys"), list):
        raise ValueError("a domain record holds a domain and a list of keys")
    if not all(isinstance(k, str) for k in data["keys"]):
        raise ValueError("a domain record's keys are fingerprints (text)")
    return DomainKeys(data["domain"], tuple(data["keys"]))


def user_key_fingerprint(value: bytes) -> str:
    """The fingerprint of the key a ``publickey`` record holds (a PEM, or
    the hex of a raw Ed25519 key); ``ValueError`` if it holds none."""
    try:
        return fingerprint(load_public_key(value))
    except (CredentialError, ValueError, TypeError) as e:
        raise ValueError(f"not a public key: {e}") from None
