"""SEARCH keys (RFC 3501 §6.4.4 C{search-key}) compiled into a predicate over the session's
view: what each key compares, its cost (L{twistedmail.imap.search.COST_INDEX},
C{COST_HEADER}, C{COST_FILE}) so a conjunction runs its cheapest keys first, MODSEQ
(RFC 7162 §3.1.5), and SEARCH of one flag key answered from the view's file names in one
pass.  L{twistedmail.imap.search} evaluates the predicate over the folder's index.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

from twisted.mail import imap4

from twistedmail.imap.grammar import MAX_MODSEQ, MAX_NUMBER, in_set, parse_sequence_set
from twistedmail.imap.message import (
    decode_header_text,
    header_value,
    parse_search_date,
    split_message,
)
from twistedmail.imap.search import (
    COST_FILE,
    COST_HEADER,
    COST_INDEX,
    Candidate,
    Predicate,
    Source,
    conjunction_order,
)
from twistedmail.index import HEADER_FIELDS
from twistedmail.maildir import UNKNOWN_MTIME, MessageEntry


class SearchError(Exception):
    """A SEARCH key that cannot be parsed (answered BAD, RFC 3501 §6.4.4)."""


MAX_SEARCH_DEPTH = 100
"""How deep SEARCH keys may nest (NOT, OR, parentheses); deeper is a L{SearchError}, so a
client cannot exhaust the parser's or the matcher's recursion."""


FLAG_KEYS = {
    b"ANSWERED": ("R", True),
    b"DELETED": ("T", True),
    b"DRAFT": ("D", True),
    b"FLAGGED": ("F", True),
    b"SEEN": ("S", True),
    b"UNANSWERED": ("R", False),
    b"UNDELETED": ("T", False),
    b"UNDRAFT": ("D", False),
    b"UNFLAGGED": ("F", False),
    b"UNSEEN": ("S", False),
}
_HEADER_KEYS = {b"BCC", b"CC", b"FROM", b"SUBJECT", b"TO"}


def flag_search(
    view: list[MessageEntry], gone: frozenset[int], letter: str, want: bool
) -> list[int]:
    """The sequence numbers of the messages of C{view} (not C{gone}) whose info carries
    C{letter} (C{want}) or not: SEARCH of one flag key (RFC 3501 §6.4.4)."""
    if want:
        found = [n for n, e in enumerate(view, 1) if letter in e.filename.partition(":2,")[2]]
    else:
        found = [n for n, e in enumerate(view, 1) if letter not in e.filename.partition(":2,")[2]]
    if gone:
        found = [n for n in found if view[n - 1].uid not in gone]
    return found


def _day(mtime: float) -> tuple[int, int, int] | None:
    """The UTC day of INTERNALDATE (RFC 3501 §6.4.4 BEFORE/ON/SINCE); C{None} (no match)
    when it is still unknown (L{UNKNOWN_MTIME}: the file was gone when it was asked)."""
    if mtime == UNKNOWN_MTIME:
        return None
    t = time.gmtime(mtime)
    return t.tm_year, t.tm_mon, t.tm_mday


def _sent_day(raw: bytes) -> tuple[int, int, int] | None:
    """The day of the Date: header as written, in the sender's own time zone (RFC 3501
    §6.4.4 SENTBEFORE/SENTON/SENTSINCE: "disregarding time and timezone"; Dovecot compares
    the same way): C{Sun, 25 Mar 2007 00:30:00 +0200} is 25 March, not the 24th in UTC.
    C{None} (no match) without a parsable Date:."""
    value = header_value(split_message(raw)[0], b"date")
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value.decode("ascii", "replace"))
    if parsed is None or not 1 <= parsed[1] <= 12 or not 1 <= parsed[2] <= 31:
        return None
    return parsed[0], parsed[1], parsed[2]


def compile_search(
    tokens: list[Any],
    last_seq: int,
    last_uid: int,
    keywords: dict[str, str] | None = None,
    used: set[bytes] | None = None,
) -> tuple[Predicate, int]:
    """Turn parsed SEARCH keys (Twisted's C{parseNestedParens} output) into a predicate
    C{(candidate, source) -> bool} (L{twistedmail.imap.search.Source}); also its cost, what
    it looks at (C{search.COST_INDEX}, C{COST_HEADER} or C{COST_FILE}).  C{keywords}
    is the folder's {letter: name} map for KEYWORD/UNKEYWORD (names case-insensitive);
    C{used}, when given, receives the keys seen (SEARCH MODSEQ changes the response,
    RFC 7162 §3.1.5).

    @raise SearchError: unknown key, missing argument or bad date/number.
    """
    level = [COST_INDEX]  # the cost of what is being compiled
    depth = 0

    def need(cost: int) -> None:
        level[0] = max(level[0], cost)

    def costed() -> tuple[Predicate, int]:
        """One key and its own cost (a conjunction runs its cheapest keys first)."""
        outer, level[0] = level[0], COST_INDEX
        try:
            predicate = one()
            return predicate, level[0]
        finally:
            level[0] = max(outer, level[0])

    def take() -> Any:
        if not tokens:
            raise SearchError("missing search argument")
        return tokens.pop(0)

    def text_arg() -> bytes:
        value = take()
        if not isinstance(value, bytes):
            raise SearchError("string expected")
        return value.lower()

    def number() -> int:
        value = take()
        if not isinstance(value, bytes) or not value.isdigit() or int(value) > MAX_NUMBER:
            raise SearchError("number expected")
        return int(value)

    def date() -> tuple[int, int, int]:
        value = take()
        parsed = parse_search_date(value) if isinstance(value, bytes) else None
        if parsed is None:
            raise SearchError("bad date")
        return parsed

    def seqset(value: bytes) -> imap4.MessageSet | None:
        try:
            return parse_sequence_set(value)
        except ValueError:
            return None

    def one() -> Predicate:
        nonlocal depth
        depth += 1
        if depth > MAX_SEARCH_DEPTH:
            raise SearchError("search keys nested too deeply")
        try:
            return key_test()
        finally:
            depth -= 1

    def key_test() -> Predicate:
        token = take()
        if isinstance(token, list):
            return conjunction(list(token))
        if not isinstance(token, bytes):  # NIL parses to None (found by the fuzz test)
            raise SearchError("search key expected")
        key = token.upper()
        if used is not None:
            used.add(key)
        if key == b"ALL":
            return lambda c, r: True
        if key in FLAG_KEYS:
            letter, want = FLAG_KEYS[key]
            return lambda c, r: (letter in c[1].flags) == want
        if key == b"RECENT":
            return lambda c, r: c[2]
        if key == b"OLD":
            return lambda c, r: not c[2]
        if key == b"NEW":
            return lambda c, r: c[2] and "S" not in c[1].flags
        if key in (b"KEYWORD", b"UNKEYWORD"):
            # RFC 3501 §6.4.4: a keyword the folder never had matches no message
            name = take()
            if not isinstance(name, bytes):
                raise SearchError("keyword expected")
            wanted = name.decode("ascii", "replace").lower()
            found = next((c for c, n in (keywords or {}).items() if n.lower() == wanted), None)
            want = key == b"KEYWORD"
            if found is None:
                return lambda c, r: not want
            return lambda c, r: (found in c[1].flags) == want
        if key == b"MODSEQ":
            # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer; our
            # MODSEQ is per message, so the entry name and type are ignored (as required)
            value = take()
            if isinstance(value, bytes) and not value.isdigit():
                entry_type = take()
                if not isinstance(entry_type, bytes) or entry_type.lower() not in (
                    b"all",
                    b"priv",
                    b"shared",
                ):
                    raise SearchError("bad MODSEQ entry type")
                value = take()
            if not isinstance(value, bytes) or not value.isdigit() or int(value) > MAX_MODSEQ:
                raise SearchError("bad MODSEQ value")  # (RFC 7162 §7 mod-sequence-valzer)
            floor = int(value)
            return lambda c, r: c[1].modseq >= floor
        if key == b"LARGER":
            n = number()
            return lambda c, r: c[1].size > n
        if key == b"SMALLER":
            n = number()
            return lambda c, r: c[1].size < n
        if key in (b"BEFORE", b"ON", b"SINCE"):
            d = date()
            return _date_test(key, d, lambda c, r: _day(c[1].mtime))
        if key in (b"SENTBEFORE", b"SENTON", b"SENTSINCE"):
            d = date()
            need(COST_HEADER)
            return _date_test(key[4:], d, lambda c, s: _sent_day(s.header(b"date")))
        if key in _HEADER_KEYS:
            return header_test(key.lower(), text_arg(), addresses=key != b"SUBJECT")
        if key == b"HEADER":
            name = take()
            if not isinstance(name, bytes):
                raise SearchError("header name expected")
            return header_test(name.lower(), text_arg())
        if key in (b"BODY", b"TEXT"):
            needle = text_arg()
            need(COST_FILE)
            if key == b"TEXT":
                return text_test(needle)
            return lambda c, s: needle in split_message(s.raw())[1].lower()
        if key == b"NOT":
            inner = one()
            return lambda c, r: not inner(c, r)
        if key == b"OR":
            left, right = one(), one()
            return lambda c, r: left(c, r) or right(c, r)
        if key == b"UID":
            value = take()
            uids = seqset(value) if isinstance(value, bytes) else None
            if uids is None:
                raise SearchError("bad UID set")
            return lambda c, r: in_set(uids, c[1].uid, last_uid)
        seqs = seqset(token)
        if seqs is not None:
            return lambda c, r: in_set(seqs, c[0], last_seq)
        raise SearchError("unknown search key")

    def header_test(name: bytes, needle: bytes, addresses: bool = False) -> Predicate:
        """RFC 3501 §6.4.4: a substring of the field's decoded text (RFC 2047 encoded-words
        decoded, folds removed), case-folded; an address field (FROM, TO, CC, BCC) as its
        addresses written out, display names decoded (L{address_text}); an empty string
        matches every message that has the field.  The needle is UTF-8 (CHARSET UTF-8 or
        US-ASCII, checked by the command)."""
        need(COST_HEADER if name in HEADER_FIELDS else COST_FILE)
        if not name:
            return lambda c, s: False
        wanted = needle.decode("utf-8", "replace").casefold()

        def test(c: Candidate, s: Source) -> bool:
            # each field C{name} as (decoded text, its addresses written out or None), both
            # case-folded (L{search.field_haystacks}); a line without a colon is no field
            for text, found in s.fields(name, wanted):
                if not wanted:
                    return True
                haystack = found if addresses and found is not None else text
                if wanted in haystack:
                    return True
            return False

        return test

    def text_test(needle: bytes) -> Predicate:
        """TEXT (RFC 3501 §6.4.4): the header as the header keys see it (encoded-words
        decoded, case-folded), or the body as stored."""
        wanted = needle.decode("utf-8", "replace").casefold()

        def test(c: Candidate, s: Source) -> bool:
            header, body = split_message(s.raw())
            return needle in body.lower() or wanted in decode_header_text(header).casefold()

        return test

    def conjunction(items: list[Any]) -> Predicate:
        nonlocal tokens
        saved, tokens = tokens, items
        costs = []
        while tokens:
            costs.append(costed())
        tokens = saved
        if not costs:
            raise SearchError("empty search")
        parts = conjunction_order(costs)
        if len(parts) == 1:  # (the whole query, most often: no wrapper per message)
            return parts[0]
        if len(parts) == 2:
            first, second = parts
            return lambda c, s: first(c, s) and second(c, s)
        return lambda c, s: all(p(c, s) for p in parts)

    predicate = conjunction(tokens)
    return predicate, level[0]


def _date_test(
    key: bytes, day: tuple[int, int, int], get: Callable[[Candidate, Source], Any]
) -> Predicate:
    def test(c: Candidate, s: Source) -> bool:
        value = get(c, s)
        if value is None:
            return False
        if key == b"BEFORE":
            return bool(value < day)
        if key == b"ON":
            return bool(value == day)
        return bool(value >= day)

    return test
