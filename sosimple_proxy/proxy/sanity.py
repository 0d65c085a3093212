"""Request validation, RFC 3261 section 16.3 (steps 2, 3 and 5).

Syntax (step 1) is the parser's job; loop detection (step 4) and
Proxy-Authorization (step 6) come with forwarding and authentication.
"""

from __future__ import annotations

from typing import Any, Collection

from sosimple_proxy.sip.message import Request, Response, make_response

SCHEMES = ("sip", "sips", "tel")


def check_request(request: Request, addressing: Any, proxy_supported: Collection[str]) -> Response | None:
    """A response that refuses the request, or None when it may go on."""
    uri = request.ruri
    # 16.3 step 2: "If the Request-URI has a URI whose scheme is not
    # understood by the proxy, the proxy SHOULD reject the request with a
    # 416 (Unsupported URI Scheme) response."
    if getattr(uri, "scheme", None) not in SCHEMES:
        return make_response(request, 416, "Unsupported URI Scheme")
    # 16.3 step 3: "If the request does not contain a Max-Forwards header
    # field, this check is passed.  If the request contains a Max-Forwards
    # header field with a field value greater than zero, the check is
    # passed.  If the request contains a Max-Forwards header field with a
    # field value of zero (0), the element MUST NOT forward the request.  If
    # the request was for OPTIONS, the element MAY act as the final
    # recipient and respond per Section 11.  Otherwise, the element MUST
    # return a 483 (Too many hops) response."
    raw = request.headers.get("max-forwards")
    if raw is not None and raw.strip().lstrip("0") == "":
        if not (request.method == "OPTIONS" and addressing.is_self(uri)):
            return make_response(request, 483, "Too Many Hops")
    # 16.3 step 5: "If the request contains a Proxy-Require header field ...
    # with one or more option-tags this element does not understand, the
    # element MUST return a 420 (Bad Extension) response.  The response MUST
    # include an Unsupported ... header field listing those option-tags."
    tags = [t.strip() for t in request.headers.values("proxy-require") if t.strip()]
    missing = [t for t in tags if t.lower() not in proxy_supported]
    if missing:
        return make_response(request, 420, "Bad Extension", extra=[("Unsupported", ", ".join(missing))])
    return None
