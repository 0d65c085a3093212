"""The registration record's value: one binding as the ring stores it.

JSON, so that any node (and the admin API, which must not import SIP
internals) can read it: ``{"aor", "contact", "q", "expires", "path",
"proxy", "instance", "reg_id"}``, ``expires`` absolute (the ring's clock),
``path`` the Route values by which other proxies reach the UA (through
``proxy``, the proxy that holds its registration and connection).
"""

from __future__ import annotations

import json
from typing import Any, Sequence
from urllib.parse import unquote

KIND = "registration"


def encode(
    aor: str,
    contact: str,
    q: float,
    expires: float,
    path: Sequence[str],
    proxy: str | None,
    instance: str | None = None,
    reg_id: int | None = None,
) -> bytes:
    return json.dumps(
        {
            "aor": aor,
            "contact": contact,
            "q": q,
            "expires": expires,
            "path": list(path),
            "proxy": proxy,
            "instance": instance,
            "reg_id": reg_id,
        },
        separators=(",", ":"),
    ).encode()


def decode(value: bytes) -> dict[str, Any]:
    data = json.loads(value.decode("utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("contact"), str):
        raise ValueError("not a registration entry")
    return data


def canonical_aor(text: str) -> str:
    """``user@domain`` as the ring keys it: no scheme, the domain lower-cased,
    the user as registered, percent-decoded (site-ini.md, /registrations)."""
    text = text.strip()
    for scheme in ("sip:", "sips:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    user, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    return f"{unquote(user)}@{domain.lower()}"


def proxy_of(route: str | None) -> str | None:
    """``<sip:127.0.0.1:5060;lr>`` -> ``sip:127.0.0.1:5060``."""
    if not route:
        return None
    text = route.strip().lstrip("<").split(">", 1)[0]
    return text.split(";", 1)[0]
