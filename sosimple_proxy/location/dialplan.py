"""The dial plan: which Request-URIs are phone numbers, and their E.164 form.

Pure logic, no I/O (``site-ini.md``, ``[pstn]``).  A Request-URI is a phone
number when it is

- a ``tel:`` URI (RFC 3966), global (``tel:+15551234567``) or local
  (``tel:5551234``, with or without ``phone-context``);
- a ``sip:``/``sips:`` URI with ``user=phone`` (RFC 3261 19.1.1);
- a ``sip:``/``sips:`` URI whose user part is a global number
  (``sip:+15551234567@example.com``: a ``+`` then digits is never a user
  name a person chose), or matches one of the local dialling patterns
  (``sip:5551234@example.com`` with ``^([2-9][0-9]{6})$ => +1412\\1``).

Normalisation to E.164 (``+`` and digits): a global number keeps its digits
(visual separators ``-.()`` dropped); a local one is rewritten by the first
local pattern that matches it whole, else gets ``+<country_code>`` in front;
a ``tel:`` local number whose ``phone-context`` is a global prefix is put
behind that prefix (RFC 3966 5.1.5).  A number that cannot be normalised is
still a number (``tel:`` and ``user=phone`` say so), just not a routable one.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import attrs

from sosimple_proxy.sip.uri import unescape

_VISUAL = re.compile(r"[\-.()]")
_GLOBAL = re.compile(r"\+[0-9]{1,15}")
_DIGITS = re.compile(r"[0-9]{1,30}")
_GROUP_REF = re.compile(r"\\(?:([0-9]{1,2})|g<([^>]*)>)")


@attrs.frozen
class LocalPattern:
    """``REGEX => REPLACEMENT``: a local dialling pattern and its E.164 form."""

    regex: "re.Pattern[str]"
    replacement: str

    def apply(self, dialled: str) -> str | None:
        m = self.regex.fullmatch(dialled)
        if m is None:
            return None
        return m.expand(self.replacement)

    def __str__(self) -> str:
        return f"{self.regex.pattern} => {self.replacement}"


def parse_local_pattern(text: str) -> LocalPattern:
    """One ``REGEX => REPLACEMENT`` line; ValueError says what is wrong."""
    regex_text, arrow, replacement = text.partition("=>")
    regex_text, replacement = regex_text.strip(), replacement.strip()
    if not arrow or not regex_text or not replacement:
        raise ValueError(f"{text.strip()!r} is not 'REGEX => REPLACEMENT'")
    try:
        regex = re.compile(regex_text)
    except re.error as e:
        raise ValueError(f"{regex_text!r} is not a regular expression ({e})") from None
    for m in _GROUP_REF.finditer(replacement):
        number, name = m.group(1), m.group(2)
        ok = (int(number) <= regex.groups) if number is not None else (
            name in regex.groupindex or (name.isdigit() and int(name) <= regex.groups)
        )
        if not ok:
            raise ValueError(f"{replacement!r} refers to group {m.group(0)!r} that {regex_text!r} does not have")
    literal = _GROUP_REF.sub("", replacement)
    if not re.fullmatch(r"\+?[0-9]*", literal) or not (replacement.startswith("+") or replacement.startswith("\\")):
        raise ValueError(f"{replacement!r} is not an E.164 number (+ and digits, with \\1 group references)")
    return LocalPattern(regex, replacement)


def parse_local_patterns(text: str) -> tuple[LocalPattern, ...]:
    """``[pstn] local_patterns``: one pattern a line (blank lines ignored)."""
    return tuple(parse_local_pattern(line) for line in text.splitlines() if line.strip())


def parse_country_code(text: str) -> str:
    """``[pstn] country_code``: 1 to 3 digits, a leading ``+`` allowed; or empty."""
    code = text.strip().lstrip("+")
    if code and not re.fullmatch(r"[1-9][0-9]{0,2}", code):
        raise ValueError(f"{text.strip()!r} is not a country calling code (1 to 3 digits)")
    return code


def _clean(number: str) -> str:
    """The number as written, escapes decoded, visual separators dropped."""
    return _VISUAL.sub("", unescape(number)).strip()


class DialPlan:
    """Recognises phone numbers among Request-URIs and normalises them."""

    def __init__(self, country_code: str = "", local_patterns: Sequence[LocalPattern] = ()) -> None:
        self.country_code = country_code.lstrip("+")
        self.local_patterns = tuple(local_patterns)

    # -- numbers as strings

    def normalise(self, dialled: str) -> str | None:
        """``+`` and digits, or None when this plan cannot make E.164 of it."""
        number = _clean(dialled)
        if number.startswith("+"):
            return number if _GLOBAL.fullmatch(number) else None
        for pattern in self.local_patterns:
            result = pattern.apply(number)
            if result is not None:
                result = _clean(result)
                return result if _GLOBAL.fullmatch(result) else None
        if self.country_code and _DIGITS.fullmatch(number):
            result = "+" + self.country_code + number
            return result if _GLOBAL.fullmatch(result) else None
        return None

    def is_local_pattern(self, dialled: str) -> bool:
        number = _clean(dialled)
        return any(p.regex.fullmatch(number) for p in self.local_patterns)

    # -- Request-URIs

    def is_number(self, uri: Any) -> bool:
        """Is this Request-URI a phone number (whether routable or not)?"""
        scheme = getattr(uri, "scheme", None)
        if scheme == "tel":
            return True
        if scheme not in ("sip", "sips") or not uri.user:
            return False
        if (uri.params.get("user") or "").lower() == "phone":
            return True
        user = _clean(uri.user)
        return bool(_GLOBAL.fullmatch(user)) or self.is_local_pattern(user)

    def number(self, uri: Any) -> str | None:
        """The E.164 number a Request-URI dials, or None (not a number, or
        not one this plan can normalise)."""
        if not self.is_number(uri):
            return None
        return self.dialled(uri)

    def dialled(self, uri: Any) -> str | None:
        """The E.164 form of the user part of ``uri`` read as a number,
        whether or not the URI says it is one (a gateway's inbound call to
        ``sip:4125550100@our-address``)."""
        scheme = getattr(uri, "scheme", None)
        if scheme == "tel":
            subscriber = uri.user or ""
            context = uri.params.get("phone-context")
        elif scheme in ("sip", "sips") and uri.user:
            # A user=phone user part is a telephone-subscriber: the number,
            # then its own ;params (RFC 3261 19.1.6).
            subscriber, _, params = uri.user.partition(";")
            context = None
            for item in params.split(";"):
                name, _, value = item.partition("=")
                if name.lower() == "phone-context":
                    context = value
        else:
            return None
        number = _clean(subscriber)
        if not number.startswith("+") and context and unescape(context).startswith("+"):
            prefix = _clean(context)
            if _DIGITS.fullmatch(number) and _GLOBAL.fullmatch(prefix + number):
                return prefix + number
        return self.normalise(number)


class DidTable:
    """``[did]``: numbers we own, each mapped to the AoR it rings.

    Keys are normalised with the dial plan, so ``+1 412 555 0100``,
    ``14125550100`` (with ``country_code`` empty: written with ``+``) and a
    local form matching a pattern all name the same DID.
    """

    def __init__(self, plan: DialPlan, entries: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self.plan = plan
        self.table: dict[str, str] = {}
        items = entries.items() if isinstance(entries, Mapping) else entries
        for key, aor in items:
            number = did_number(plan, key)
            self.table[number] = aor.strip()

    def __len__(self) -> int:
        return len(self.table)

    def lookup(self, uri: Any, ours: bool = True) -> str | None:
        """The AoR for a Request-URI dialling one of our DIDs, else None.

        ``ours`` says whether a sip: URI's host is one of our domains or
        addresses: a number at a foreign host is not one of our DIDs.  A tel:
        URI, or our own sip: URI whose user part reads as a number
        (gateways do not all add ``user=phone``), is looked up.
        """
        if not self.table:
            return None
        scheme = getattr(uri, "scheme", None)
        if scheme == "tel":
            number = self.plan.dialled(uri)
        elif scheme in ("sip", "sips") and ours and uri.user:
            number = self.plan.dialled(uri)
        else:
            return None
        return self.table.get(number) if number else None


def did_number(plan: DialPlan, key: str) -> str:
    """A ``[did]`` key as E.164; ValueError when the plan cannot read it."""
    number = plan.normalise(key)
    if number is None:
        raise ValueError(
            f"{key.strip()!r} is not a phone number this dial plan can read "
            "(write it as +E.164, or set [pstn] country_code)"
        )
    return number
