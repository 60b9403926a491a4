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


Parsed = tuple["float | None", str, str, str, str]
"""A message's header sort keys parsed once (kept in the index's cache): the Date: in UTC
seconds (C{None}: missing or bad), the base subject, and the first mailbox of From, To, Cc
(before the i;ascii-casemap)."""

_PARSED_AT = {b"SUBJECT": 1, b"FROM": 2, b"TO": 3, b"CC": 4}


def parse_keys(header: bytes) -> Parsed:
    """The L{Parsed} sort keys of a header (or of the header cache's fields)."""
    return (
        parse_date(header_value(header, b"date")),
        base_subject(header_value(header, b"subject")),
        first_mailbox(header_value(header, b"from")),
        first_mailbox(header_value(header, b"to")),
        first_mailbox(header_value(header, b"cc")),
    )


def sort_key_parsed(
    criteria: Sequence[tuple[bytes, bool]], seq: int, entry: MessageEntry, parsed: Parsed
) -> tuple[Any, ...]:
    """L{sort_key} from keys parsed before (L{parse_keys})."""
    parts: list[Any] = []
    for key, reverse in criteria:
        value: Any
        if key == b"ARRIVAL":
            value = entry.mtime
        elif key == b"SIZE":
            value = entry.size
        elif key == b"DATE":
            value = entry.mtime if parsed[0] is None else parsed[0]
        else:  # SUBJECT, CC, FROM, TO
            value = casemap(parsed[_PARSED_AT[key]])  # type: ignore[arg-type]
        parts.append(_Reversed(value) if reverse else value)
    parts.append(seq)
    return tuple(parts)


def sort_key(
    criteria: Sequence[tuple[bytes, bool]], seq: int, entry: MessageEntry, header: bytes
) -> tuple[Any, ...]:
    """A key for C{sorted}: each criterion in turn (C{REVERSE} negated or inverted), then
    the sequence number (RFC 5256 §3: ties keep sequence order)."""
    return sort_key_parsed(criteria, seq, entry, parse_keys(header))


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
