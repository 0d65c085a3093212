"""The auth-param lists of ``Authorization`` and ``WWW-Authenticate`` values.

Our own small parser for RFC 3261 section 25.1 (``credentials``,
``challenge``) and RFC 7616 section 3.3/3.4, written out because a
regular expression over a list that holds quoted commas and escapes is
where digest parsers usually go wrong::

    credentials   = "Digest" LWS dig-resp *(COMMA dig-resp)
    dig-resp      = token EQUAL ( token / quoted-string )
    quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
    quoted-pair   = "\\" (%x00-09 / %x0B-0C / %x0E-7F)

Tolerances, on purpose: spaces and tabs around ``,`` and ``=``; empty list
elements (``a=1,,b=2``, as HTTP's ``#rule`` asks recipients to accept);
the scheme name in any case.  Refused (``MalformedCredentials``): a
parameter given twice (case-insensitively: RFC 7616 3.4 names are
case-insensitive), a value that is neither a token nor a quoted string,
an unterminated quote, a control character.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import attrs

# RFC 3261 section 25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*"
#                                   / "_" / "+" / "`" / "'" / "~")
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_SPACE = " \t"


class MalformedCredentials(ValueError):
    """A header value that is not a well-formed auth-param list; the message says where."""


@attrs.frozen
class AuthHeader:
    """One parsed header value: the scheme (as sent) and its parameters.

    ``params`` maps lower-cased names to unquoted values; ``quoted`` holds
    the (lower-cased) names whose value came as a quoted string, for the
    few checks that care.
    """

    scheme: str
    params: Mapping[str, str]
    quoted: frozenset[str] = frozenset()

    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"


def is_token(text: str) -> bool:
    return bool(text) and all(c in _TOKEN_CHARS for c in text)


def parse_auth_header(value: str) -> AuthHeader:
    """``Digest a=b, c="d"`` -> AuthHeader; raises MalformedCredentials."""
    text = value.strip(_SPACE + "\r\n")
    end = 0
    while end < len(text) and text[end] in _TOKEN_CHARS:
        end += 1
    scheme = text[:end]
    if not scheme:
        raise MalformedCredentials("no authentication scheme")
    if end < len(text) and text[end] not in _SPACE:
        raise MalformedCredentials(f"the scheme {scheme!r} is not followed by a space")
    params, quoted = parse_auth_params(text[end:])
    return AuthHeader(scheme, params, quoted)


def parse_auth_params(text: str) -> tuple[dict[str, str], frozenset[str]]:
    """``a=b, c="d,\\"e"`` -> ({"a": "b", "c": 'd,"e'}, {"c"}); raises MalformedCredentials."""
    params: dict[str, str] = {}
    quoted: set[str] = set()
    i, n = 0, len(text)

    def skip_space(i: int) -> int:
        while i < n and text[i] in _SPACE:
            i += 1
        return i

    while True:
        i = skip_space(i)
        # empty list elements are allowed (RFC 7230 section 7)
        while i < n and text[i] == ",":
            i = skip_space(i + 1)
        if i >= n:
            break
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise MalformedCredentials(f"expected a parameter name at offset {start}, found {text[start]!r}")
        i = skip_space(i)
        if i >= n or text[i] != "=":
            raise MalformedCredentials(f"the parameter {name!r} has no '=' and value")
        i = skip_space(i + 1)
        if i < n and text[i] == '"':
            val, i = _quoted_string(text, i)
            quoted.add(name)
        else:
            start = i
            while i < n and text[i] in _TOKEN_CHARS:
                i += 1
            val = text[start:i]
            if not val:
                raise MalformedCredentials(f"the parameter {name!r} has no value (a token or a quoted string)")
        if name in params:
            raise MalformedCredentials(f"the parameter {name!r} is given twice")
        params[name] = val
        i = skip_space(i)
        if i < n and text[i] != ",":
            raise MalformedCredentials(f"expected ',' after the parameter {name!r}, found {text[i]!r}")
    return params, frozenset(quoted)


def _quoted_string(text: str, i: int) -> tuple[str, int]:
    """The unescaped value of the quoted string opening at ``text[i]``, and the offset after it."""
    out: list[str] = []
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            # RFC 3261 25.1: quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F): not CR or LF
            if i + 1 >= n:
                break
            escaped = text[i + 1]
            if escaped in "\r\n" or ord(escaped) > 0x7F:
                raise MalformedCredentials(f"bad escape '\\{escaped}' in a quoted string")
            out.append(escaped)
            i += 2
            continue
        if (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            raise MalformedCredentials("a control character in a quoted string")
        out.append(c)
        i += 1
    raise MalformedCredentials("a quoted string is not closed")


def quote(value: str) -> str:
    """``value`` as a quoted-string: backslash and double quote escaped (RFC 3261 25.1)."""
    if any(c in "\r\n" or ((ord(c) < 0x20 and c != "\t") or c == "\x7f") for c in value):
        raise ValueError(f"{value!r} cannot be sent in a quoted string")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_auth_header(scheme: str, params: Iterable[tuple[str, str, bool]]) -> str:
    """``Digest a="b", c=d`` from (name, value, quote it?) triples, in order."""
    parts = []
    for name, value, quoted in params:
        if quoted:
            parts.append(f"{name}={quote(value)}")
        else:
            if not is_token(value):
                raise ValueError(f"{value!r} is not a token; the parameter {name!r} must be quoted")
            parts.append(f"{name}={value}")
    return f"{scheme} " + ", ".join(parts)
