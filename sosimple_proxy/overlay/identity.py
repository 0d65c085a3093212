"""A node's key pair, made on first start and kept under ``state_dir``.

The node's ring id is derived from the public key (see
:func:`.ids.node_id_from_public_key`), so a node cannot choose where it
sits, and a restarted node comes back to the same place.  Ed25519: small,
fast, and what the security work will sign records with.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILE = "node.key"


def load_or_create_key(state_dir: str) -> Ed25519PrivateKey:
    """The node's private key from ``state_dir/node.key``; made (mode 0600) if missing."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, KEY_FILE)
    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(path + ".tmp", path)
        return key
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PrivateKey) -> bytes:
    """The public key as DER SubjectPublicKeyInfo: what the node id is hashed from."""
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
