"""SEARCH (RFC 3501 §6.4.4) and SORT (RFC 5256 §3) evaluated over the folder's index.

Flags, sizes, dates, UIDs and MODSEQs come from the session's view (the index rows); the
header fields searches and sorts compare (L{twistedmail.index.HEADER_FIELDS}: FROM, TO, CC,
BCC, SUBJECT, the Date: of SENTBEFORE/SENTON/SENTSINCE and of SORT DATE, HEADER on one of
them) come from the index's header cache, filled here at the first SEARCH or SORT that
needs a message's fields (and by APPEND), as Dovecot's C{dovecot.index.cache} is.  A message
file is opened only for BODY, TEXT, HEADER on another field, or a message not cached yet;
the keys of a conjunction run cheapest first (L{COST_INDEX} < L{COST_HEADER} <
L{COST_FILE}), so a text search reads only the messages the other keys left.

The cache holds the fields' raw lines (C{HEADER.FIELDS} form, RFC 3501 §6.4.5: SORT's keys
and SENT* dates are taken from them) and their text as SEARCH compares it
(L{field_haystacks}: RFC 2047 encoded-words decoded, addresses written out, case-folded),
computed by the same function for a cached field and for one read from the file, so an
answer does not depend on where the field came from.
Everything here is blocking and runs in a thread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from twisted.logger import Logger

from twistedmail.imap.message import (
    address_text,
    decode_header_text,
    header_end,
    header_fields,
    parse_addresses,
)
from twistedmail.imap.sort import HEADER_KEYS, Parsed, parse_key, sort_key_parsed
from twistedmail.index import HEADER_FIELDS, header_block
from twistedmail.maildir import UNKNOWN_MTIME, Folder, MessageEntry

log = Logger(namespace="twistedmail.imap.search")

COST_INDEX = 0
"""A key answered from the index row alone (flags, size, dates, UID, MODSEQ, \\Recent)."""
COST_HEADER = 1
"""A key answered from the header cache (a message not cached yet is read once)."""
COST_FILE = 2
"""A key that reads the message file (BODY, TEXT, HEADER on an uncached field)."""

Candidate = tuple[int, MessageEntry, bool]
"""(sequence number, entry, \\Recent in this session)."""


ADDRESS_FIELDS = frozenset({b"from", b"to", b"cc", b"bcc"})
"""The fields SEARCH FROM/TO/CC/BCC match as addresses (RFC 3501 §6.4.4)."""
DECODED_FIELDS = ADDRESS_FIELDS | {b"subject"}
"""The fields the cache also keeps decoded (the SEARCH keys FROM, TO, CC, BCC, SUBJECT);
the other L{HEADER_FIELDS} (HEADER searches on them, rare) are decoded from the cached raw
lines when asked."""

Haystack = tuple[str, "str | None"]
"""One field as SEARCH compares it: its decoded text, and (address fields) its addresses
written out or C{None} when it has none, both case-folded."""


def field_haystacks(name: bytes, text: bytes) -> Haystack:
    """One raw field (name, colon, value, folds) as SEARCH compares it (RFC 3501 §6.4.4):
    the value with RFC 2047 encoded-words decoded and folds removed
    (L{decode_header_text}); for an address field also its addresses with display names
    decoded (L{address_text}); both case-folded."""
    value = text.split(b":", 1)[1].strip()
    found = parse_addresses(value) if name in ADDRESS_FIELDS else []
    return (
        decode_header_text(value).casefold(),
        address_text(found).casefold() if found else None,
    )


def decode_fields(
    fields: Sequence[tuple[bytes, bytes]], names: Collection[bytes]
) -> dict[bytes, list[Haystack]]:
    """{name: [each field C{name} of C{fields} (L{header_fields} output), in order, as
    L{field_haystacks}]} for C{names}; a line without a colon is no field."""
    out: dict[bytes, list[Haystack]] = {}
    for name, text in fields:
        if name and name in names:
            out.setdefault(name, []).append(field_haystacks(name, text))
    return out


def cached_fields(raw: bytes) -> tuple[bytes, str]:
    """What the header cache keeps of a message (with CRLF line ends, as L{Folder.read}
    gives it): its L{HEADER_FIELDS} lines in order then the blank line (as
    L{select_headers} cuts them out: L{header_block}, which delivery keeps too), and the
    L{decode_fields} of L{DECODED_FIELDS} as JSON (L{decoded_text})."""
    block = header_block(raw)
    return block, decoded_text(block)


def decoded_text(block: bytes) -> str:
    """The L{decode_fields} of L{DECODED_FIELDS} in a cached header block, as JSON: what
    the cache keeps beside the block (a block kept at delivery has C{""} until the first
    SEARCH that needs it decodes it, here)."""
    decoded = decode_fields(header_fields(block), DECODED_FIELDS)
    return json.dumps({k.decode("ascii"): v for k, v in decoded.items()}, ensure_ascii=False)


_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')
"""What JSON writes escaped (with C{ensure_ascii=False}): a needle without these characters
appears verbatim in the cached JSON when it is in one of its strings."""


class Source:
    """What a search key may look at for one message: its cached header fields, or its
    whole file (read once, on demand; C{b""} when it is gone or unreadable, as before)."""

    __slots__ = ("_cached", "_decoded", "_entry", "_fields", "_filled", "_folder", "_raw")

    def __init__(
        self,
        folder: Folder,
        entry: MessageEntry,
        cached: tuple[bytes, str] | None,
        filled: list[tuple[int, str, bytes, str]],
    ) -> None:
        self._folder = folder
        self._entry = entry
        self._cached: bytes | None = None if cached is None else cached[0]
        self._decoded: str | None = None if cached is None else cached[1]
        self._filled = filled
        self._raw: bytes | None = None
        self._fields: dict[str, list[list[Any]]] | None = None

    def raw(self) -> bytes:
        """The whole message (CRLF line ends), or C{b""} when it cannot be read."""
        if self._raw is None:
            try:
                self._raw = self._folder.read(self._entry)
            except Exception:
                self._raw = b""
                return b""
            if self._cached is None:  # first read: fill the cache on the way
                self._cached, self._decoded = cached_fields(self._raw)
                self._filled.append(
                    (self._entry.uid, self._entry.base, self._cached, self._decoded)
                )
        return self._raw

    def header(self, name: bytes) -> bytes:
        """A header holding every field C{name} (lower case) of the message: the cached
        fields when C{name} is one of L{HEADER_FIELDS}, else the message's whole header."""
        if name not in HEADER_FIELDS:
            raw = self.raw()
            return raw[: header_end(raw)]  # the header alone: the body is not copied
        if self._cached is None:
            raw = self.raw()
            if self._cached is None:  # unreadable: no field, nothing cached
                return raw[: header_end(raw)]
        return self._cached

    def fields(self, name: bytes, needle: str = "") -> list[Haystack]:
        """Every field C{name} (lower case) of the message as L{field_haystacks}, in order:
        from the cache for one of L{HEADER_FIELDS}, else from the file.  With a C{needle}
        (case-folded) no cached field can contain, C{[]} at once (a substring test of the
        cached JSON, without parsing it)."""
        if name not in DECODED_FIELDS:
            return decode_fields(header_fields(self.header(name)), (name,)).get(name, [])
        if self._fields is None:
            block = self.header(name)
            if self._decoded == "":  # kept at delivery, not decoded yet: decode it once
                self._decoded = decoded_text(block)
                self._filled.append((self._entry.uid, self._entry.base, block, self._decoded))
            decoded = self._decoded
            if decoded is None:
                self._fields = {}
            else:
                if needle and needle not in decoded and not _JSON_ESCAPED.search(needle):
                    return []
                self._fields = json.loads(decoded)
        return [(t, a) for t, a in self._fields.get(name.decode("ascii"), [])]


Predicate = Callable[[Candidate, Source], bool]

_NO_SOURCE: Source = None  # type: ignore[assignment]
"""What a predicate of cost L{COST_INDEX} gets for a source: it never looks at one."""


def _cache(folder: Folder, cost: int) -> dict[int, tuple[str, bytes, str]]:
    if cost < COST_HEADER:
        return {}
    try:
        return folder.cached_headers()
    except Exception:
        log.failure("reading the header cache of {path}", path=str(folder.path))
        return {}


KEEP_BATCH = 500
"""Rows of the header cache written per index transaction: a first search of a big folder
does not hold the index's lock for the whole folder."""


def _keep(folder: Folder, filled: list[tuple[int, str, bytes, str]]) -> None:
    try:
        for start in range(0, len(filled), KEEP_BATCH):
            folder.cache_headers(filled[start : start + KEEP_BATCH])
    except Exception:  # only a cache: the next search reads those files again
        log.failure("filling the header cache of {path}", path=str(folder.path))


def run_search(
    folder: Folder, candidates: list[Candidate], predicate: Predicate, cost: int
) -> list[int]:
    """The sequence numbers of the C{candidates} that match C{predicate} (compiled by
    L{twistedmail.imap.searchkeys.compile_search}, whose C{cost} says what it looks at);
    headers read from files on the way are kept in the cache."""
    if cost < COST_HEADER:  # flags, sizes, dates, UIDs: the index rows answer alone
        return [c[0] for c in candidates if predicate(c, _NO_SOURCE)]
    cache = _cache(folder, cost)
    filled: list[tuple[int, str, bytes, str]] = []
    out = []
    for candidate in candidates:
        entry = candidate[1]
        hit = cache.get(entry.uid)
        cached = hit[1:] if hit is not None and hit[0] == entry.base else None
        if predicate(candidate, Source(folder, entry, cached, filled)):
            out.append(candidate[0])
    _keep(folder, filled)
    return out


def search_view(
    folder: Folder,
    view: Sequence[MessageEntry],
    recent: frozenset[int],
    gone: frozenset[int],
    predicate: Predicate,
    cost: int,
) -> list[int]:
    """L{run_search} over a session's view (its messages in sequence order, RFC 3501
    §2.3.1.2), without those expunged meanwhile (C{gone}); C{recent}: its \\Recent UIDs."""
    if cost < COST_HEADER:  # no candidate list to build: test each message as it comes
        out = []
        for i, e in enumerate(view):
            uid = e.uid
            if uid not in gone and predicate((i + 1, e, uid in recent), _NO_SOURCE):
                out.append(i + 1)
        return out
    candidates = [(i + 1, e, e.uid in recent) for i, e in enumerate(view) if e.uid not in gone]
    return run_search(folder, candidates, predicate, cost)


_COLUMNS = {
    b"DATE": ("dated", "date"),
    b"SUBJECT": ("subject",),
    b"FROM": ("sender",),
    b"TO": ("recipient",),
    b"CC": ("cc",),
}
"""The index's sort key columns (L{twistedmail.index.SORT_COLUMNS}) of each header key."""


def _from_columns(key: bytes, values: tuple[Any, ...]) -> Any:
    if key == b"DATE":
        return values[1] if values[0] else None
    return values[0]


def _to_columns(key: bytes, value: Any) -> tuple[Any, ...]:
    if key == b"DATE":
        return (0, None) if value is None else (1, value)
    return (value,)


def sort_entries(
    folder: Folder, entries: list[tuple[int, MessageEntry]], criteria: list[tuple[bytes, bool]]
) -> list[int]:
    """SORT (RFC 5256 §3): the sequence numbers of C{entries} in the order of C{criteria}
    (ties in sequence order).  Each header key is parsed once per message (L{parse_key}
    of its cached header fields, read from its file when not cached) and kept in the
    index, so a later SORT parses no Date:, subject or address again."""
    keys = tuple(dict.fromkeys(key for key, _ in criteria if key in HEADER_KEYS))
    columns = tuple(c for key in keys for c in _COLUMNS[key])
    kept: dict[int, tuple[Any, ...]] = {}
    if keys:
        try:
            kept = folder.cached_sortkeys(columns)
        except Exception:
            log.failure("reading the sort keys of {path}", path=str(folder.path))
    cache: dict[int, tuple[str, bytes, str]] | None = None
    filled: list[tuple[int, str, bytes, str]] = []
    parsed_now: list[tuple[Any, ...]] = []
    rows: list[tuple[int, MessageEntry, Parsed]] = []
    for seq, entry in entries:
        parsed: Parsed = {}
        if keys:
            hit = kept.get(entry.uid)
            if hit is not None and hit[0] == entry.base:
                at = 1
                for key in keys:
                    width = len(_COLUMNS[key])
                    values = hit[at : at + width]
                    at += width
                    if values[0] is None:  # not parsed yet: parse what is missing below
                        break
                    parsed[key] = _from_columns(key, values)
            if len(parsed) < len(keys):
                if cache is None:
                    cache = _cache(folder, COST_HEADER)
                found = cache.get(entry.uid)
                if found is not None and found[0] == entry.base:
                    header = found[1]
                else:
                    header = Source(folder, entry, None, filled).header(b"date")
                parsed = {key: parse_key(key, header) for key in keys}
                row: tuple[Any, ...] = (entry.uid, entry.base)
                for key in keys:
                    row += _to_columns(key, parsed[key])
                parsed_now.append(row)
        rows.append((seq, entry, parsed))
    # INTERNALDATE (RFC 5256 §3: ARRIVAL, and DATE of a message without a usable Date:)
    # of those a first sync indexed without it: L{Folder.dates}, once
    arrival = any(key == b"ARRIVAL" for key, _ in criteria)
    undated = [
        entry
        for _, entry, parsed in rows
        if entry.mtime == UNKNOWN_MTIME and (arrival or parsed.get(b"DATE", 0) is None)
    ]
    if undated:
        dates = folder.dates(undated)
        rows = [
            (seq, entry._replace(mtime=dates[entry.base]), parsed)
            if entry.mtime == UNKNOWN_MTIME and entry.base in dates
            else (seq, entry, parsed)
            for seq, entry, parsed in rows
        ]
    keyed = [(sort_key_parsed(criteria, seq, entry, parsed), seq) for seq, entry, parsed in rows]
    _keep(folder, filled)
    try:
        for start in range(0, len(parsed_now), KEEP_BATCH):
            folder.cache_sortkeys(columns, parsed_now[start : start + KEEP_BATCH])
    except Exception:  # only a cache: the next SORT parses them again
        log.failure("keeping the sort keys of {path}", path=str(folder.path))
    keyed.sort(key=lambda pair: pair[0])
    return [seq for _, seq in keyed]


def conjunction_order(parts: Sequence[tuple[Predicate, int]]) -> list[Predicate]:
    """The keys of a conjunction cheapest first (a stable sort: equal costs keep the
    client's order); the answer is the same in any order, the files read are fewer."""
    return [p for p, _ in sorted(parts, key=lambda part: part[1])]
