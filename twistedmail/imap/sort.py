"""SORT (RFC 5256 §3): sort keys of one message and the base subject (§2.1).

Pure functions over the raw header bytes and the Maildir entry; L{MaildirMailbox.sort}
runs them in a thread after the search.  Strings compare with the C{i;ascii-casemap}
collation (RFC 5256 §3, RFC 4790 §9.2: ASCII letters upper-cased, then octet order).
"""

from __future__ import annotations

import calendar
import email.utils
import re
from collections.abc import Sequence
from typing import Any

from twistedmail.imap.message import decode_header_text as decode_words
from twistedmail.imap.message import header_value, parse_addresses
from twistedmail.maildir import MessageEntry

SORT_KEYS = {b"ARRIVAL", b"CC", b"DATE", b"FROM", b"SIZE", b"SUBJECT", b"TO"}
"""RFC 5256 §3 sort keys (each may follow C{REVERSE})."""


class SortError(Exception):
    """Bad sort criteria (answered BAD, RFC 5256 §3)."""


def parse_criteria(items: Sequence[Any]) -> list[tuple[bytes, bool]]:
    """C{(REVERSE DATE SUBJECT)} -> C{[(b"DATE", True), (b"SUBJECT", False)]}.

    @raise SortError: empty list, unknown key, or C{REVERSE} not followed by a key.
    """
    out: list[tuple[bytes, bool]] = []
    reverse = False
    for item in items:
        if not isinstance(item, bytes):
            raise SortError("sort key expected")
        key = item.upper()
        if key == b"REVERSE" and not reverse:
            reverse = True
            continue
        if key not in SORT_KEYS:
            raise SortError("unknown sort key")
        out.append((key, reverse))
        reverse = False
    if not out or reverse:
        raise SortError("sort key expected")
    return out


def casemap(text: str) -> bytes:
    """The i;ascii-casemap comparison form: UTF-8 octets with a-z upper-cased only."""
    return text.encode("utf-8", "surrogateescape").translate(_UPPER)


_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


_TRAILER = re.compile(r"(\(fwd\)| )\Z", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\] *"
_LEADER = re.compile(r"\A((" + _BLOB + r")*(re|fwd?) *(" + _BLOB + r")?:| )", re.IGNORECASE)
_BLOB_PREFIX = re.compile(r"\A" + _BLOB)
_FWD_HDR = re.compile(r"\A\[fwd:", re.IGNORECASE)


def base_subject(value: bytes | None) -> str:
    """The base subject of RFC 5256 §2.1 (C{"Re: [list] Fwd: hello (fwd)"} -> C{"hello"}),
    used by the SUBJECT sort key."""
    if value is None:
        return ""
    # (1) decode (RFC 2047, L{decode_header_text}), whitespace runs (tabs, folds) to one space
    text = re.sub(r"[ \t\r\n]+", " ", decode_words(value))
    while True:
        # (2) trailers: "(fwd)" and spaces
        while (m := _TRAILER.search(text)) is not None:
            text = text[: m.start()]
        while True:
            before = text
            # (3) leaders: blobs then "re:"/"fw:"/"fwd:", or a space
            while (m := _LEADER.match(text)) is not None and m.end() > 0:
                text = text[m.end() :]
            # (4) a leading blob, unless it is all that is left
            m = _BLOB_PREFIX.match(text)
            if m is not None and text[m.end() :]:
                text = text[m.end() :]
            if text == before:  # (5) until nothing more matches
                break
        # (6) "[fwd: ... ]" wrapper: unwrap and start again from (2)
        if _FWD_HDR.match(text) and text.endswith("]"):
            text = text[5:-1]
            continue
        return text


_SIMPLE_ADDRESS = re.compile(
    r'\s*(?:[^<>",;()\\:]*<)?'  # an optional plain display name and "<"
    r'([^\s<>@",;()\\:\[\]]+)@[^\s<>@",;()\\]+>?\s*\Z'  # local@domain, ">"
)


def first_mailbox(value: bytes | None) -> str:
    """addr-mailbox (the local part) of the first address of a From/To/Cc field
    (RFC 5256 §3 CC, FROM, TO), the group name for a group; C{""} when there is none."""
    if value is None:
        return ""
    text = value.decode("utf-8", "surrogateescape")
    simple = _SIMPLE_ADDRESS.match(text)
    if simple is not None:  # "local@domain" or "Name <local@domain>": no full parse
        return simple.group(1)
    found = parse_addresses(value)
    # a group's start marker is its first address, the group name its mailbox (RFC 3501
    # §7.4.2), as Dovecot sorts it (imaptest sort-addresses)
    mailbox = found[0].mailbox if found else None
    return mailbox.decode("utf-8", "surrogateescape") if mailbox else ""


def sent_date(value: bytes | None, internal: float) -> float:
    """The Date: field in UTC seconds; the INTERNALDATE when it is missing or bad
    (RFC 5256 §3 DATE)."""
    parsed = parse_date(value)
    return internal if parsed is None else parsed


def parse_date(value: bytes | None) -> float | None:
    """The Date: field in UTC seconds, or C{None} when it is missing or bad."""
    if value is not None:
        parsed = email.utils.parsedate_tz(value.decode("ascii", "replace"))
        if parsed is not None:
            try:
                return calendar.timegm(parsed[:9]) - (parsed[9] or 0)
            except (OverflowError, ValueError):
                pass
    return None


Parsed = dict[bytes, Any]
"""A message's header sort keys parsed (L{parse_key}), by sort key (C{b"DATE"}: UTC seconds
or C{None}; C{b"SUBJECT"}: the base subject; C{b"FROM"}, C{b"TO"}, C{b"CC"}: the first
mailbox, before the i;ascii-casemap): what the index keeps, so a SORT parses each once."""

HEADER_KEYS = (b"DATE", b"SUBJECT", b"FROM", b"TO", b"CC")
"""The sort keys read from the header (the others come from the index row)."""


def parse_key(key: bytes, header: bytes) -> Any:
    """The L{Parsed} value of one of L{HEADER_KEYS} from a header (or the header cache's
    fields)."""
    if key == b"DATE":
        return parse_date(header_value(header, b"date"))
    if key == b"SUBJECT":
        return base_subject(header_value(header, b"subject"))
    return first_mailbox(header_value(header, key.lower()))


def sort_key_parsed(
    criteria: Sequence[tuple[bytes, bool]], seq: int, entry: MessageEntry, parsed: Parsed
) -> tuple[Any, ...]:
    """L{sort_key} from keys parsed before (L{parse_key}, one per header key used)."""
    parts: list[Any] = []
    for key, reverse in criteria:
        value: Any
        if key == b"ARRIVAL":
            value = entry.mtime
        elif key == b"SIZE":
            value = entry.size
        elif key == b"DATE":
            value = parsed[key]
            if value is None:
                value = entry.mtime
        else:  # SUBJECT, CC, FROM, TO
            value = casemap(parsed[key])
        parts.append(_Reversed(value) if reverse else value)
    parts.append(seq)
    return tuple(parts)


def sort_key(
    criteria: Sequence[tuple[bytes, bool]], seq: int, entry: MessageEntry, header: bytes
) -> tuple[Any, ...]:
    """A key for C{sorted}: each criterion in turn (C{REVERSE} negated or inverted), then
    the sequence number (RFC 5256 §3: ties keep sequence order)."""
    parsed = {key: parse_key(key, header) for key, _ in criteria if key in HEADER_KEYS}
    return sort_key_parsed(criteria, seq, entry, parsed)


class _Reversed:
    """Inverts the order of one sort key (C{REVERSE}, RFC 5256 §3)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)
