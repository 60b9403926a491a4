"""The message lists a process keeps per folder, shared by its sessions: a SELECT of an
unchanged folder reads no index row, a changed one only the rows changed since the
snapshot's HIGHESTMODSEQ (RFC 7162 §3.1.1), and the keyword maps of the folders."""

from __future__ import annotations

import bisect
import collections
import functools
import threading
from collections.abc import Iterable, Mapping, MutableSequence, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from twistedmail.index import (
    FolderIndex,
    Stamps,
)
from twistedmail.maildir.names import UNKNOWN_MTIME, UNKNOWN_SIZE


class MessageEntry(NamedTuple):
    """One message of a folder as of the last scan: an index row as it comes out of SQLite
    (a tuple, so a 100,000-message SELECT makes no per-message objects beyond the rows
    themselves: L{Folder.scan}).

    @ivar uid: IMAP UID (RFC 3501 §2.3.1.1).
    @ivar base: the Maildir unique name without info (stable: the POP3 UIDL, RFC 1939 §7).
    @ivar filename: the current file name in C{cur/} (base + C{:2,} + flags).
    @ivar size: octets, as stored (CRLF line ends), or L{UNKNOWN_SIZE} until measured.
    @ivar mtime: seconds since the epoch: the IMAP INTERNALDATE, or L{UNKNOWN_MTIME} until
        read (L{Folder.dates}).
    @ivar modseq: the MODSEQ of its last change (RFC 7162 §3.1.1).
    """

    uid: int
    base: str
    filename: str
    size: int
    mtime: float
    modseq: int = 0

    @property
    def flags(self) -> str:
        return self.filename.partition(":2,")[2]  # (L{split_name}, inline: SEARCH calls it)


@attrs.frozen
class ScanResult:
    """A folder's messages in UID order (all of them, or with L{full} false only those
    changed since the MODSEQ asked for), its UID state, its C{\\Recent} UIDs, its
    HIGHESTMODSEQ, the UIDs expunged since that MODSEQ, and the index floor (see
    L{twistedmail.index.FolderIndex.floor})."""

    uidvalidity: int
    uidnext: int
    messages: tuple[MessageEntry, ...]
    recent: frozenset[int]
    highestmodseq: int = 0
    expunged: tuple[int, ...] = ()
    full: bool = True
    floor: int = 0
    unsaved: tuple[MessageEntry, ...] = ()
    """With C{provisional}: messages that have no UID yet because the disk is full (uid 0)."""


_entry = functools.partial(tuple.__new__, MessageEntry)
"""A L{MessageEntry} of an index row of its six fields: C{MessageEntry._make} without its
Python frame and length check per message (100,000 of them at a big folder's first scan)."""


SNAPSHOT_LOG = 1024
"""Changes (a row's new MODSEQ, an expunge) a snapshot remembers, for the delta scans of
sessions a few changes behind (L{_Snapshot.delta})."""


@attrs.frozen(slots=False)  # (a dict for the cached_property)
class _Snapshot:
    """A folder's message list as of one state of its index: UIDVALIDITY, the index floor
    and HIGHESTMODSEQ name the state (every change to a row gives it a MODSEQ above the
    HIGHESTMODSEQ before; every removal leaves a tombstone with one).

    Once kept by a scan, also what the folder looked like on disk then: the L{Stamps} of
    C{new/}, C{cur/} and C{dovecot-uidlist} the index was in step with, when they were
    read (C{verified_ns}), UIDNEXT, the inode of the index file, and the UIDs still
    C{\\Recent} and unclaimed (L{Folder._unchanged}).  C{log} holds (MODSEQ, UID, expunged)
    of every change after MODSEQ C{log_from}, in MODSEQ order (an expunge found by a scan
    carries the HIGHESTMODSEQ of that scan, at or above its own).
    """

    uidvalidity: int
    floor: int
    highestmodseq: int
    messages: tuple[MessageEntry, ...]
    uidnext: int = 0
    stamps: Stamps | None = None
    verified_ns: int = 0
    index_ino: int = 0
    recent: frozenset[int] = frozenset()
    log_from: int = attrs.field(
        default=attrs.Factory(lambda self: self.highestmodseq, takes_self=True)
    )
    log: tuple[tuple[int, int, bool], ...] = ()

    @functools.cached_property
    def filenames(self) -> frozenset[str]:
        """The names of the messages in C{cur/}."""
        return frozenset(e.filename for e in self.messages)

    def then(
        self, highest: int, rows: list[tuple[Any, ...]], gone: list[tuple[int, int]]
    ) -> _Snapshot:
        """The index's state after a change: C{rows} (each with its new MODSEQ) replaced or
        inserted, the UIDs of C{gone} ((UID, MODSEQ) pairs) removed, HIGHESTMODSEQ now
        C{highest}; logged."""
        messages = _patched(self.messages, rows, [uid for uid, _ in gone])
        changes = sorted(
            [(row[5], row[0], False) for row in rows] + [(m, u, True) for u, m in gone]
        )
        log, log_from = self.log + tuple(changes), self.log_from
        if len(log) > SNAPSHOT_LOG:
            log_from, log = log[-SNAPSHOT_LOG - 1][0], log[-SNAPSHOT_LOG:]
        return _Snapshot(
            self.uidvalidity, self.floor, highest, messages, log_from=log_from, log=log
        )

    def delta(self, since: int) -> tuple[tuple[MessageEntry, ...], tuple[int, ...]] | None:
        """(the messages of MODSEQ above C{since} in UID order, the UIDs expunged after it),
        what the index answers (RFC 7162 §3.1.4.1, §3.2.5.2), when the log reaches back to
        C{since}; else C{None}."""
        if not self.log_from <= since <= self.highestmodseq:
            return None
        changed: set[int] = set()
        gone: set[int] = set()
        for modseq, uid, expunged in reversed(self.log):
            if modseq <= since:
                break
            (gone if expunged else changed).add(uid)
        rows = []
        messages = self.messages
        for uid in sorted(changed):
            i = bisect.bisect_left(messages, uid, key=_uid)
            if i < len(messages) and messages[i].uid == uid and messages[i].modseq > since:
                rows.append(messages[i])
        return tuple(rows), tuple(sorted(gone))


SNAPSHOT_MESSAGES = 400_000
"""Messages the process keeps in folder snapshots (L{_Snapshots}), the folders used last."""


class _Snapshots:
    """The message lists of the folders scanned last, shared by every session of the
    process (entries are immutable tuples): a SELECT of a folder whose index did not change
    since the last scan makes no row at all, one that changed reads only the rows changed
    and the UIDs expunged since (RFC 7162 §3.1.4.1 semantics, on the index), instead of the
    whole folder (what Dovecot gets from its memory-mapped index)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: collections.OrderedDict[Path, _Snapshot] = collections.OrderedDict()

    def messages(self, path: Path, index: FolderIndex) -> _Snapshot:
        """The folder's messages now (under its lock, in the index's transaction)."""
        with self._lock:
            old = self._kept.get(path)
        uidvalidity, floor, highest = index.uidvalidity, index.floor, index.highestmodseq
        if old is not None and (old.uidvalidity, old.floor) == (uidvalidity, floor):
            if old.highestmodseq == highest:
                return old
            if old.highestmodseq < highest:
                changed = index.messages(old.highestmodseq)
                gone = index.expunged_since(old.highestmodseq)
                return old.then(highest, changed, [(uid, highest) for uid in gone])
        rows = tuple(map(_entry, index.messages()))
        return _Snapshot(uidvalidity, floor, highest, rows)

    def get(self, path: Path) -> _Snapshot | None:
        with self._lock:
            return self._kept.get(path)

    def advanced(
        self,
        path: Path,
        index: FolderIndex,
        since: int,
        changed: tuple[MessageEntry, ...],
        gone: tuple[int, ...],
    ) -> _Snapshot | None:
        """The kept snapshot brought to the index's state by a delta scan (C{changed}: the
        rows of MODSEQ above C{since}, C{gone}: the UIDs expunged after it), when the delta
        covers what it lacks; else C{None} (the next full scan makes one)."""
        with self._lock:
            old = self._kept.get(path)
        uidvalidity, floor, highest = index.uidvalidity, index.floor, index.highestmodseq
        if old is None or (old.uidvalidity, old.floor) != (uidvalidity, floor):
            return None
        if old.highestmodseq == highest:
            return old
        if old.highestmodseq != since:
            return None
        rows = [tuple(e) for e in changed]
        return old.then(highest, rows, [(uid, highest) for uid in gone])

    def verified(
        self, path: Path, snapshot: _Snapshot, stamps: Stamps, when: int, recent: frozenset[int]
    ) -> None:
        """C{snapshot} (still the kept one) was found in step with the folder's directories
        as they were at C{when}, with these stamps; C{recent} are still unclaimed."""
        with self._lock:
            if self._kept.get(path) is snapshot:
                now = attrs.evolve(snapshot, stamps=stamps, verified_ns=when, recent=recent)
                if "filenames" in snapshot.__dict__:
                    now.__dict__["filenames"] = snapshot.filenames
                self._kept[path] = now

    def known(self, path: Path, field: str, entries: list[MessageEntry]) -> dict[str, Any]:
        """The C{size}s or C{mtime}s (L{LEARNED_FIELDS}) the kept snapshot knows ({base:
        value}) of C{entries}, which did not."""
        with self._lock:
            kept = self._kept.get(path)
        if kept is None:
            return {}
        at_field, unknown = LEARNED_FIELDS[field]
        messages, out = kept.messages, {}
        at = positions(messages, [e.uid for e in entries])
        for entry in entries:
            i = at.get(entry.uid)
            if i is not None and messages[i].base == entry.base:
                value = messages[i][at_field]
                if value != unknown:
                    out[entry.base] = value
        return out

    def learned(self, path: Path, field: str, values: Mapping[str, Any], uids: list[int]) -> None:
        """Put the C{size}s or C{mtime}s just learned ({base: value}, of the messages
        C{uids}) in the kept snapshot, in place of its unknown ones (no MODSEQ: the message
        did not change)."""
        with self._lock:
            kept = self._kept.get(path)
            if kept is None:
                return
            messages = list(kept.messages)
            if fill_learned(messages, field, values, positions(messages, uids).values()):
                now = attrs.evolve(kept, messages=tuple(messages))
                if "filenames" in kept.__dict__:
                    now.__dict__["filenames"] = kept.filenames
                self._kept[path] = now

    def keep(self, path: Path, snapshot: _Snapshot) -> None:
        with self._lock:
            self._kept[path] = snapshot
            self._kept.move_to_end(path)
            total = sum(len(s.messages) for s in self._kept.values())
            while total > SNAPSHOT_MESSAGES and len(self._kept) > 1:
                _, dropped = self._kept.popitem(last=False)
                total -= len(dropped.messages)

    def forget(self, path: Path | None = None) -> None:
        """Drop the snapshot of C{path} (of every folder with C{None})."""
        with self._lock:
            if path is None:
                self._kept.clear()
            else:
                self._kept.pop(path, None)


_snapshots = _Snapshots()

KEYWORD_MAPS = 10_000
"""Folders whose keyword map the process keeps (L{Folder.keywords}); all dropped when full."""
_keyword_maps: dict[Path, tuple[tuple[int, int, int], int, dict[str, str]]] = {}


def _patched(
    messages: tuple[MessageEntry, ...],
    changed: list[tuple[int, str, str, int, float, int]] | list[tuple[Any, ...]],
    gone: list[int],
) -> tuple[MessageEntry, ...]:
    """C{messages} (in UID order) with the C{changed} rows replaced or inserted and the
    UIDs C{gone} removed."""
    out = list(messages)
    for uid in sorted(gone, reverse=True):
        i = bisect.bisect_left(out, uid, key=_uid)
        if i < len(out) and out[i].uid == uid:
            del out[i]
    for row in changed:
        entry = MessageEntry._make(row)
        i = bisect.bisect_left(out, entry.uid, key=_uid)
        if i < len(out) and out[i].uid == entry.uid:
            out[i] = entry
        else:
            out.insert(i, entry)
    return tuple(out)


def positions(messages: Sequence[MessageEntry], uids: list[int]) -> dict[int, int]:
    """{uid: index in C{messages}} (in UID order) of those of C{uids} found there: by
    bisection for a few, by one pass for many (a bisection calls its key ~17 times)."""
    if len(uids) * 20 > len(messages):
        wanted = set(uids)
        return {e.uid: i for i, e in enumerate(messages) if e.uid in wanted}
    out = {}
    for uid in uids:
        i = index_of(messages, uid)
        if i is not None:
            out[uid] = i
    return out


def index_of(messages: Sequence[MessageEntry], uid: int) -> int | None:
    """The index of message C{uid} in C{messages} (in UID order), by bisection, or C{None}."""
    i = bisect.bisect_left(messages, uid, key=_uid)
    return i if i < len(messages) and messages[i].uid == uid else None


LEARNED_FIELDS: dict[str, tuple[int, Any]] = {
    "size": (MessageEntry._fields.index("size"), UNKNOWN_SIZE),
    "mtime": (MessageEntry._fields.index("mtime"), UNKNOWN_MTIME),
}
"""The fields of a L{MessageEntry} that may be unknown at indexing (their position, the
value that says so), learned when first asked: L{Folder.sizes}, L{Folder.dates}."""


def fill_learned(
    entries: MutableSequence[MessageEntry],
    field: str,
    values: Mapping[str, Any],
    at: Iterable[int] | None = None,
) -> bool:
    """Give each of C{entries} (those at the indices C{at}; every one without) whose
    C{field} (L{LEARNED_FIELDS}) is unknown its value from C{values} ({base: value}:
    L{Folder.sizes}, L{Folder.dates}), in place; whether one changed.  The one way a
    measured size or a date read reaches the process's snapshot, a session's view and
    the messages of a command."""
    changed = False
    i_field, unknown = LEARNED_FIELDS[field]
    for i in range(len(entries)) if at is None else at:
        entry = entries[i]
        if entry[i_field] == unknown and entry.base in values:
            entries[i] = entry._replace(**{field: values[entry.base]})
            changed = True
    return changed


def _uid(entry: MessageEntry) -> int:
    return entry.uid
