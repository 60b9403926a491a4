"""The per-folder index: what IMAP needs to know about a Maildir folder without opening or
listing its message files (DESIGN §4 "IMAP is fast"), and the mod-sequences of CONDSTORE and
QRESYNC (RFC 7162 §3.1.1, §3.2.10).

One SQLite file per folder, C{twistedmail.index} in the folder's directory (Dovecot ignores
files it does not know).  It holds, per message: UID, Maildir base name, current file name
(so the flags), size, internal date (the file's mtime), MODSEQ, and the cached ENVELOPE and
BODYSTRUCTURE/BODY responses (opaque bytes filled in by IMAP on first FETCH); per folder:
UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, the expunged UIDs with the MODSEQ of their expunge
(QRESYNC's VANISHED, RFC 7162 §3.2.5.2), and the stamps of C{new/}, C{cur/} and
C{dovecot-uidlist} as of the last full sync.  A second table caches, per message, the header
fields SEARCH and SORT look at (L{HEADER_FIELDS}: the raw field lines, and their decoded,
case-folded text as SEARCH compares it: L{FolderIndex.headers}),
filled at delivery (L{remember_arrival}: the header block kept by Maildir base name until
the scan that gives the message its UID adopts it), at APPEND and at the first SEARCH or SORT
that needs them, as Dovecot's C{dovecot.index.cache} does, so those never open message files
again; a third keeps each message's SORT keys parsed once (L{SORT_COLUMNS}).

Commits are not synced (Dovecot's C{mail_fsync = optimized}): the index is a write-ahead log
database with C{synchronous = NORMAL}, and each process keeps its last few connections open
(L{POOL_SIZE}) so that closing one does not checkpoint (SQLite syncs there).  What must be
durable before an OK is the Maildir (message files, their names, C{dovecot-uidlist}), which
L{twistedmail.maildir} syncs; a crash may lose the index's last commits, never its
consistency, and the stamps then tell the next scan to sync it again.

C{dovecot-uidlist} stays the source of truth for UIDs (so a mailbox still moves to and from
Dovecot); the index is a cache that L{twistedmail.maildir.Folder} rebuilds from the Maildir
when it is missing or unreadable.  A rebuilt index starts its mod-sequences above any the old
one can have given out (milliseconds since the epoch), so HIGHESTMODSEQ never goes backwards
for a client (RFC 7162 §3.1.2.1); its L{FolderIndex.floor} tells QRESYNC that expunges before
it are unknown.

On a full disk (or a read-only one) the index must not stop anyone reading or deleting mail:
a write SQLite refuses (C{SQLITE_FULL}, I/O error, read-only) turns the open index into an
in-memory copy of what is on disk plus this transaction's writes, used for this one
operation and then dropped (L{FolderIndex.degraded}); the next operation tries the disk again.

Everything here is blocking and runs under the folder lock of L{twistedmail.maildir.Folder}
(which is what makes MODSEQ monotonic across processes), in a thread.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

log = Logger(namespace="twistedmail.index")

INDEX_FILE = "twistedmail.index"
SCHEMA_VERSION = 1
CACHE_VERSION = 2
"""Version of what the index derives from message content.  1: ENVELOPE without RFC 5322
groups (RFC 3501 §7.4.2) and sizes of files with bare LF line ends as stored.  An index of
another version keeps its rows (UIDs, MODSEQs) but drops the cached FETCH parts and sets
L{FolderIndex.stale_sizes} until the folder has measured its sizes again
(L{FolderIndex.sizes_measured})."""
HEADER_FIELDS = (
    b"from",
    b"to",
    b"cc",
    b"bcc",
    b"subject",
    b"date",
    b"message-id",
    b"in-reply-to",
    b"references",
    b"list-id",
)
"""The header fields the header cache keeps (lower-case names): those SEARCH (RFC 3501
§6.4.4 FROM, TO, CC, BCC, SUBJECT, SENT*, HEADER name) and SORT (RFC 5256 §3) use."""
HEADERS_VERSION = 1
"""Version of the header cache's content (which fields, how they are cut out); an index with
another one drops its cached headers (they are read again on the next SEARCH)."""
DIRTY_NS = 2_000_000_000
"""A directory changed less than this long (ns) before the sync that recorded its mtime is
listed again next time: a change in the same mtime tick would otherwise go unseen (Dovecot's
"dirty" rule for Maildir directories)."""

_FORGET_RENDERED = "UPDATE messages SET envelope = NULL, bodystructure = NULL, body = NULL"
"""Drops FETCH data rendered by an older L{CACHE_VERSION}: rendered again on the next FETCH."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime REAL NOT NULL,
    modseq INTEGER NOT NULL,
    envelope BLOB,
    bodystructure BLOB,
    body BLOB
);
CREATE INDEX IF NOT EXISTS messages_modseq ON messages (modseq);
CREATE TABLE IF NOT EXISTS expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (modseq);
CREATE TABLE IF NOT EXISTS recent (uid INTEGER PRIMARY KEY);
"""
_HEADERS_TABLE = """
CREATE TABLE IF NOT EXISTS headers (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL,
    fields BLOB NOT NULL,
    decoded TEXT NOT NULL
)
"""
_SCHEMA += _HEADERS_TABLE + ";\n"
_SCHEMA += """
CREATE TABLE IF NOT EXISTS sortkeys (
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL,
    dated INTEGER,
    date REAL,
    subject TEXT,
    sender TEXT,
    recipient TEXT,
    cc TEXT
);
CREATE TABLE IF NOT EXISTS arriving (
    base TEXT PRIMARY KEY,
    fields BLOB NOT NULL,
    stamp REAL NOT NULL
);
"""
LEARNED: dict[str, Any] = {"size": -1, "mtime": float("-inf")}
"""The columns of a message row that may be unknown when it is indexed, and the value that
says so (L{twistedmail.maildir.UNKNOWN_SIZE}, C{UNKNOWN_MTIME}): learned when a consumer
first asks (L{FolderIndex.set_learned}, L{read_learned})."""
ARRIVING_MAX_AGE = 3600.0
"""Seconds a header block kept at delivery (L{remember_arrival}) waits for its message to be
indexed; one older whose message never was (removed by POP3 or by hand first) is dropped."""
ARRIVAL_BUSY_TIMEOUT = 0.05
"""Seconds a delivery waits for the index's lock to keep a header block: the cache is not
worth holding up a delivery for (the first SEARCH reads that message's file instead)."""


@attrs.frozen
class Stamps:
    """What says whether the folder changed on disk since the last full sync: the mtimes
    (ns) of C{new/} and C{cur/}, and mtime, size and inode of C{dovecot-uidlist}."""

    new_ns: int
    cur_ns: int
    uidlist_ns: int
    uidlist_size: int
    uidlist_ino: int


@attrs.frozen
class IndexedMessage:
    """One message row: UID, base name, file name in C{cur/}, size (octets), mtime (s),
    MODSEQ (RFC 7162 §3.1.1)."""

    uid: int
    base: str
    filename: str
    size: int
    mtime: float
    modseq: int


@attrs.frozen
class CachedParts:
    """The cached FETCH data of one message, as sent on the wire inside its parentheses
    (RFC 3501 §7.4.2); C{None} when not cached yet."""

    envelope: bytes | None
    bodystructure: bytes | None
    body: bytes | None


_CANNOT_WRITE = {8, 10, 13, 14}  # SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN


_BUSY = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED

BUSY_TIMEOUT = 5.0
"""Seconds a connection waits for another's lock on the index (SQLite's busy timeout)."""

BULK_ROWS = 5000
"""Rows above which L{FolderIndex.insert_many} gives SQLite a page cache for the batch
(400 bytes a row, at most 512 MiB: a row and its two index entries take about 250)."""


def busy(error: BaseException) -> bool:
    """Whether C{error} is SQLite giving up waiting for another connection's lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in _BUSY


def cannot_write(error: BaseException) -> bool:
    """Whether C{error} is SQLite failing to write (full disk, I/O error, read-only), as
    opposed to a corrupt file."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in _CANNOT_WRITE


class FolderIndex:
    """An open index of one folder; use as a context manager (commits on success).

    @param directory: the folder's directory (the one holding C{cur/}).
    @ivar degraded: the disk refused a write: this instance works on an in-memory copy that
        is dropped at the end (see the module docstring).
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / INDEX_FILE
        self.created = False
        self.stale_sizes = False
        self.degraded = False
        self._writes: list[tuple[str, Any, bool]] = []
        self.db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        existed = self.path.exists()
        try:
            db = self._open_checked()
        except sqlite3.DatabaseError as e:
            if cannot_write(e):
                return self._in_memory(None, existed)
            if busy(e):
                # another connection holds the index longer than BUSY_TIMEOUT: not corrupt,
                # and deleting it would pull the file from under that connection
                raise

            # corrupt or foreign: the index is only a cache, rebuild it from the Maildir
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(self.path) + suffix)
            existed = False
            db = self._open_checked()
        self.created = not existed or self._get(db, "version") is None
        if self.created:
            try:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('cache_version', ?)", (CACHE_VERSION,)
                )
            except sqlite3.Error as e:
                if not cannot_write(e):
                    raise
                return self._in_memory(db, existed)
        elif (self._get(db, "cache_version") or 1) != CACHE_VERSION:
            # rendered by older code: render again on the next FETCH
            self.stale_sizes = True
            try:
                db.execute(_FORGET_RENDERED)
            except sqlite3.Error as e:
                if not cannot_write(e):
                    raise
                memory = self._in_memory(db, existed)
                memory.execute(_FORGET_RENDERED)
                return memory
        if self._get(db, "headers_version") != HEADERS_VERSION:
            # an index from before the header cache (its table just created), or another
            # version of it: start the cache afresh; UIDs and MODSEQs are kept
            with contextlib.suppress(sqlite3.Error):
                db.execute("DROP TABLE IF EXISTS headers")
                db.execute(_HEADERS_TABLE)
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('headers_version', ?)", (HEADERS_VERSION,)
                )
        return db

    def sizes_measured(self) -> None:
        """The folder measured every size again (L{stale_sizes}): the index is current."""
        self.put("cache_version", CACHE_VERSION)
        self.stale_sizes = False

    def _in_memory(self, disk: sqlite3.Connection | None, existed: bool) -> sqlite3.Connection:
        """An in-memory copy of the index on disk (when readable), in a transaction, with
        this instance's writes so far replayed: the disk refused a write."""
        if not self.degraded:
            log.warn("index {path} not writable (disk full?): kept in memory", path=str(self.path))
        self.degraded = True
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        copied = False
        if disk is not None:
            with contextlib.suppress(sqlite3.Error):
                disk.execute("ROLLBACK")
        try:
            source = disk or sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                if existed:
                    source.backup(memory)
                    copied = self._get(memory, "version") == SCHEMA_VERSION
            finally:
                source.close()
        except sqlite3.Error:
            copied = False
        if not copied:
            memory.executescript(_SCHEMA)
            memory.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (SCHEMA_VERSION,))
            memory.execute(
                "INSERT OR REPLACE INTO meta VALUES ('cache_version', ?)", (CACHE_VERSION,)
            )
            self.created = True
        memory.execute("BEGIN")
        for sql, args, many in self._writes:
            (memory.executemany if many else memory.execute)(sql, args)
        return memory

    def _write(self, sql: str, args: Any = (), many: bool = False) -> None:
        """One write of this transaction; on a disk that refuses it, go on in memory."""
        if not many:
            args = tuple(args)
        else:
            args = list(args)
        self._writes.append((sql, args, many))
        if self.degraded:
            (self.db.executemany if many else self.db.execute)(sql, args)
            return
        try:
            (self.db.executemany if many else self.db.execute)(sql, args)
        except sqlite3.Error as e:
            if not cannot_write(e):
                raise
            self.db = self._in_memory(self.db, True)

    def _open_checked(self) -> sqlite3.Connection:
        pooled = _pool.take(self.path)
        if pooled is not None:
            try:
                pooled.execute("BEGIN IMMEDIATE")
            except BaseException:
                pooled.close()
                raise
            return pooled
        db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            _lazy(db)
            db.executescript(_SCHEMA)
            version = self._get(db, "version")
            if version is not None and version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError("index schema version %d" % version)
            os.chmod(self.path, 0o600)
        except BaseException:
            db.close()
            raise
        db.execute("BEGIN IMMEDIATE")
        return db

    @staticmethod
    def _get(db: sqlite3.Connection, key: str) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def __enter__(self) -> FolderIndex:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        kept = False
        try:
            try:
                self.db.execute("COMMIT" if kind is None else "ROLLBACK")
                kept = not self.degraded
            except sqlite3.Error as e:
                if kind is not None or not cannot_write(e):
                    raise
                self.db = self._in_memory(self.db, True)  # nothing kept: dropped below
        finally:
            if kept:
                _pool.give(self.path, self.db)
            else:
                self.db.close()

    # folder values

    def get(self, key: str, default: int = 0) -> int:
        value = self._get(self.db, key)
        return default if value is None else value

    def put(self, key: str, value: int) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def uidvalidity(self) -> int:
        return self.get("uidvalidity")

    @property
    def uidnext(self) -> int:
        return self.get("uidnext", 1)

    @property
    def highestmodseq(self) -> int:
        """HIGHESTMODSEQ (RFC 7162 §3.1.2.1): the largest MODSEQ given out in the folder."""
        return self.get("highestmodseq", 1)

    @property
    def floor(self) -> int:
        """The HIGHESTMODSEQ the index was (re)built at: expunges before it are not known."""
        return self.get("floor", 1)

    def start(self, highestmodseq: int) -> None:
        """Initialise a new index's mod-sequence counter (and its floor)."""
        self.put("highestmodseq", highestmodseq)
        self.put("floor", highestmodseq)

    def next_modseq(self) -> int:
        """A new MODSEQ, larger than every one given out before (RFC 7162 §3.1.1)."""
        value = self.highestmodseq + 1
        self.put("highestmodseq", value)
        return value

    def reset(self, uidvalidity: int) -> None:
        """A new UIDVALIDITY: every row and tombstone belongs to the old one."""
        self._write("DELETE FROM messages")
        self._write("DELETE FROM headers")
        self._write("DELETE FROM sortkeys")
        self._write("DELETE FROM expunged")
        if self.uidvalidity:  # (not at the first sync: APPEND may have marked one recent)
            self._write("DELETE FROM recent")
        self.put("uidvalidity", uidvalidity)
        self.put("floor", self.highestmodseq)

    # stamps

    def stamps(self) -> Stamps | None:
        values = [self._get(self.db, f.name) for f in attrs.fields(Stamps)]
        if any(v is None for v in values):
            return None
        return Stamps(*values)  # type: ignore[arg-type]

    def clean(self, current: Stamps) -> bool:
        """Whether a full sync is not needed: nothing changed the directories or the UID
        list since the last one, which was not within L{DIRTY_NS} of their mtimes."""
        if self.stamps() != current:
            return False
        synced = self.get("synced_ns")
        return synced - max(current.new_ns, current.cur_ns, current.uidlist_ns) >= DIRTY_NS

    def record(self, current: Stamps, synced_ns: int) -> None:
        for key, value in attrs.asdict(current).items():
            self.put(key, value)
        self.put("synced_ns", synced_ns)

    def forget_stamps(self) -> None:
        self._write("DELETE FROM meta WHERE key = 'synced_ns'")

    # messages

    def known(self) -> dict[str, IndexedMessage]:
        """Every indexed message by base name."""
        rows = self.db.execute("SELECT uid, base, filename, size, mtime, modseq FROM messages")
        return {row[1]: IndexedMessage(*row) for row in rows}

    def add_recent(self, uids: Iterable[int]) -> None:
        """Mark C{uids} \\Recent (RFC 3501 §2.3.2) until a session claims them."""
        self._write("INSERT OR IGNORE INTO recent VALUES (?)", [(u,) for u in uids], many=True)

    def recent(self, claim: bool = False) -> list[int]:
        """The indexed messages no session has claimed as \\Recent yet; with C{claim}, the
        caller takes them (no other session will see them as recent)."""
        rows = self.db.execute("SELECT uid FROM recent JOIN messages USING (uid) ORDER BY uid")
        uids = [row[0] for row in rows]
        if claim:
            self._write("DELETE FROM recent WHERE uid IN (SELECT uid FROM messages)")
        return uids

    def messages(self, since: int | None = None) -> list[tuple[int, str, str, int, float, int]]:
        """The messages in UID order as (uid, base, filename, size, mtime, modseq) rows (the
        fields of L{IndexedMessage}, left as tuples: a big folder has many); with C{since},
        only those whose MODSEQ is larger."""
        sql = "SELECT uid, base, filename, size, mtime, modseq FROM messages"
        args: tuple[int, ...] = ()
        if since is not None:
            sql += " WHERE modseq > ?"
            args = (since,)
        return self.db.execute(sql + " ORDER BY uid", args).fetchall()

    def modseqs(self, uids: Iterable[int]) -> dict[int, int]:
        out = {}
        for uid in uids:
            row = self.db.execute("SELECT modseq FROM messages WHERE uid = ?", (uid,)).fetchone()
            if row is not None:
                out[uid] = int(row[0])
        return out

    def insert(self, entry: IndexedMessage) -> None:
        self.insert_many([attrs.astuple(entry)])

    def insert_many(self, rows: list[tuple[int, str, str, int, float, int]]) -> None:
        """Add (uid, base, filename, size, mtime, modseq) rows, replacing any row with the
        same UID or base name.  Inserted in UID order (a stable sort: of two rows for one
        UID the later still wins): a full sync gives them in directory order, and random
        keys make SQLite split pages all over a table bigger than its cache (100,000 rows:
        3.3 s in directory order, 0.5 s sorted).

        A batch of more than L{BULK_ROWS} (the first sync of a big folder) runs with a page
        cache that holds the table and its indexes: SQLite's default 2 MiB made it write
        pages out and read them back all through the insert (100,000 rows: 0.6 -> 0.3 s of
        CPU); the default comes back after it."""
        bulk = len(rows) > BULK_ROWS and not self.degraded
        if bulk:
            default = self.db.execute("PRAGMA cache_size").fetchone()[0]
            self.db.execute("PRAGMA cache_size = %d" % -min(len(rows) * 400 // 1024, 1 << 19))
        try:
            self._write(
                "INSERT OR REPLACE INTO messages (uid, base, filename, size, mtime, modseq)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                sorted(rows, key=itemgetter(0)),
                many=True,
            )
        finally:
            if bulk:
                self.db.execute("PRAGMA cache_size = %d" % default)

    def headers(self) -> dict[int, tuple[str, bytes, str]]:
        """The header cache: {uid: (base name, fields, decoded)} of the messages still
        indexed under that base name; C{fields} are the message's L{HEADER_FIELDS} as raw
        field lines then a blank line, C{decoded} their text as SEARCH compares it (JSON,
        written and read by L{twistedmail.imap.search})."""
        return _headers(self.db)

    def cache_headers(self, rows: list[tuple[int, str, bytes, str]]) -> None:
        """Keep (uid, base, fields, decoded) rows in the header cache (see L{headers})."""
        self._write("INSERT OR REPLACE INTO headers VALUES (?, ?, ?, ?)", rows, many=True)

    def cache_sortkeys(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Keep (uid, base, value per column) rows of parsed SORT keys (RFC 5256 §3), the
        other columns of a message's row left as they are (see L{SORT_COLUMNS})."""
        names = _sort_columns(columns)
        self._write(
            f"INSERT INTO sortkeys (uid, base, {', '.join(names)})"
            f" VALUES (?, ?{', ?' * len(names)}) ON CONFLICT (uid) DO UPDATE SET"
            " base = excluded.base, " + ", ".join(f"{c} = excluded.{c}" for c in names),
            rows,
            many=True,
        )

    def adopt_arrivals(self, now: float) -> None:
        """Move the header blocks kept at delivery (L{remember_arrival}) of the messages now
        indexed into the header cache (their decoded text is left to the first SEARCH:
        C{decoded} is C{""}); drop those whose message was never indexed within
        L{ARRIVING_MAX_AGE}."""
        self._write(
            "INSERT OR REPLACE INTO headers (uid, base, fields, decoded)"
            " SELECT m.uid, a.base, a.fields, '' FROM arriving a JOIN messages m USING (base)"
        )
        self._write(
            "DELETE FROM arriving WHERE base IN (SELECT base FROM messages) OR stamp < ?",
            (now - ARRIVING_MAX_AGE,),
        )

    def set_size(self, uid: int, size: int) -> None:
        """Correct the size of message C{uid} (octets with CRLF line ends)."""
        self._write("UPDATE messages SET size = ? WHERE uid = ?", (size, uid))

    def set_learned(self, column: str, values: dict[str, Any]) -> None:
        """Record the C{size}s or C{mtime}s (L{LEARNED}) learned of messages whose value
        was unknown ({base: value}: L{twistedmail.maildir.Folder.sizes} and C{dates});
        no MODSEQ: the message did not change."""
        unknown = LEARNED[column]
        self._write(
            f"UPDATE messages SET {column} = ? WHERE base = ? AND {column} = ?",
            [(value, base, unknown) for base, value in values.items()],
            many=True,
        )

    def rename(self, uid: int, filename: str, modseq: int) -> None:
        self._write(
            "UPDATE messages SET filename = ?, modseq = ? WHERE uid = ?", (filename, modseq, uid)
        )

    def expunge(self, uid: int, modseq: int) -> None:
        """Drop message C{uid}, keeping a tombstone for VANISHED (RFC 7162 §3.2.5.2)."""
        self._write("DELETE FROM messages WHERE uid = ?", (uid,))
        self._write("DELETE FROM headers WHERE uid = ?", (uid,))
        self._write("DELETE FROM sortkeys WHERE uid = ?", (uid,))
        self._write("INSERT OR REPLACE INTO expunged VALUES (?, ?)", (uid, modseq))

    def tombstones(self, uids: Iterable[int]) -> set[int]:
        """Those of C{uids} expunged (a tombstone kept, L{expunge})."""
        wanted = sorted(set(uids))
        found: set[int] = set()
        for at in range(0, len(wanted), 500):  # (SQLite's bound on parameters)
            chunk = wanted[at : at + 500]
            rows = self.db.execute(
                "SELECT uid FROM expunged WHERE uid IN (%s)" % ",".join("?" * len(chunk)), chunk
            )
            found.update(int(r[0]) for r in rows)
        return found

    def expunged_since(self, modseq: int) -> list[int]:
        """UIDs expunged with a MODSEQ larger than C{modseq}, ascending."""
        rows = self.db.execute("SELECT uid FROM expunged WHERE modseq > ? ORDER BY uid", (modseq,))
        return [int(r[0]) for r in rows]

    # cached FETCH parts

    def cached(self, uids: Iterable[int]) -> dict[int, CachedParts]:
        """The cached parts of C{uids} (one range query, filtered)."""
        wanted = set(uids)
        if not wanted:
            return {}
        rows = self.db.execute(
            "SELECT uid, envelope, bodystructure, body FROM messages WHERE uid BETWEEN ? AND ?",
            (min(wanted), max(wanted)),
        )
        return {row[0]: CachedParts(*row[1:]) for row in rows if row[0] in wanted}

    def cache(self, uid: int, base: str, parts: CachedParts) -> None:
        self._write(
            "UPDATE messages SET envelope = COALESCE(?, envelope),"
            " bodystructure = COALESCE(?, bodystructure), body = COALESCE(?, body)"
            " WHERE uid = ? AND base = ?",
            (parts.envelope, parts.bodystructure, parts.body, uid, base),
        )


_HEADERS_QUERY = (
    "SELECT h.uid, h.base, h.fields, h.decoded FROM headers h JOIN messages m"
    " ON m.uid = h.uid AND m.base = h.base"
)


def _headers(db: sqlite3.Connection) -> dict[int, tuple[str, bytes, str]]:
    return {row[0]: (row[1], row[2], row[3]) for row in db.execute(_HEADERS_QUERY)}


POOL_SIZE = 16
"""Index connections a process keeps open between commands (the folders used last)."""


class _Pool:
    """Open index connections kept between commands, the most recently used L{POOL_SIZE}.

    With a write-ahead log, closing the last connection to a database checkpoints it and
    syncs the file (SQLite's checkpoint-on-close): a connection kept open makes a command's
    commit cost no fsync at all.  A kept connection is used again only while the file at
    the path is still the one it opened (an index deleted as corrupt, or a folder renamed
    or deleted, is not)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: collections.OrderedDict[str, list[tuple[sqlite3.Connection, int]]] = (
            collections.OrderedDict()
        )
        self._count = 0

    def take(self, path: str | os.PathLike[str]) -> sqlite3.Connection | None:
        key = os.fspath(path)
        with self._lock:
            idle = self._idle.get(key)
            if not idle:
                return None
            db, ino = idle.pop()
            self._count -= 1
            if not idle:
                del self._idle[key]
        try:
            same = os.stat(key).st_ino == ino
        except OSError:
            same = False
        if not same:
            db.close()
            return None
        return db

    def give(self, path: str | os.PathLike[str], db: sqlite3.Connection) -> None:
        key = os.fspath(path)
        try:
            ino = os.stat(key).st_ino
        except OSError:
            db.close()
            return
        evicted = []
        with self._lock:
            self._idle.setdefault(key, []).append((db, ino))
            self._idle.move_to_end(key)
            self._count += 1
            while self._count > POOL_SIZE:
                oldest = next(iter(self._idle))
                idle = self._idle[oldest]
                evicted.append(idle.pop(0)[0])
                self._count -= 1
                if not idle:
                    del self._idle[oldest]
        for old in evicted:
            old.close()

    def clear(self) -> None:
        """Close every kept connection (tests; a folder's files about to be replaced)."""
        with self._lock:
            idle = [db for dbs in self._idle.values() for db, _ in dbs]
            self._idle.clear()
            self._count = 0
        for db in idle:
            db.close()


_pool = _Pool()


def _lazy(db: sqlite3.Connection) -> None:
    """Write-ahead log, synced at checkpoints only: a commit costs no fsync (Dovecot's
    C{mail_fsync = optimized} for its index).  A crash may lose the last commits, never
    the file's consistency; the Maildir (file names, C{dovecot-uidlist}, both made durable
    before OK) is the truth, and the stamps of a rolled-back index no longer match it, so
    the next scan syncs it again (L{FolderIndex.clean})."""
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")


def header_block(raw: bytes) -> bytes:
    """The L{HEADER_FIELDS} lines of message C{raw} (CRLF line ends) in order, each ending
    in CRLF, then the blank line: what the header cache keeps (the C{HEADER.FIELDS} form,
    RFC 3501 §6.4.5).  The header ends at the first empty line (RFC 5322 §2.1); a line
    starting with white space continues the field before it (§2.2.3).  The same cut as
    L{twistedmail.imap.message.split_message} and C{header_fields} (this layer cannot
    import them), so a block kept at delivery equals one cut at the first SEARCH."""
    if raw[:1] in (b"\r", b"\n"):
        return b"\r\n"
    # the first empty line is where two line ends meet: only the lines before it are split
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r"), raw.find(b"\r\r")) if i >= 0]
    header = raw[: min(ends) + 1] if ends else raw
    fields: list[list[bytes]] = []
    for line in header.splitlines(keepends=True):
        if not line.strip(b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += line
        else:
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            fields.append([name, line])
    kept = [text for name, text in fields if name in _HEADER_SET]
    return b"".join(t if t.endswith(b"\n") else t + b"\r\n" for t in kept) + b"\r\n"


_HEADER_SET = frozenset(HEADER_FIELDS)


def remember_arrival(directory: str | os.PathLike[str], base: str, raw: bytes) -> None:
    """Keep the L{header_block} of a message just delivered to C{directory}'s C{new/} (the
    bytes are in hand) until a scan indexes it (L{FolderIndex.adopt_arrivals}), so the first
    SEARCH or SORT does not read its file.  Only a cache: a folder without an index yet, a
    lock held past L{ARRIVAL_BUSY_TIMEOUT} or any SQLite error keeps nothing.  No fsync.
    The path is text (the pool's key): no pathlib per delivery (issue 10)."""
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.exists(path):
        return  # no IMAP client yet: the first SELECT builds the index, from the files
    block = header_block(raw)
    db = _pool.take(path)
    try:
        if db is None:
            db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            _lazy(db)
        db.execute("PRAGMA busy_timeout = %d" % int(ARRIVAL_BUSY_TIMEOUT * 1000))
        try:
            row = (base, block, time.time())
            db.execute("INSERT OR REPLACE INTO arriving VALUES (?, ?, ?)", row)
        finally:
            db.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT * 1000))
    except sqlite3.Error as e:
        log.debug("header cache at delivery skipped for {path}: {e}", path=str(path), e=e)
        if db is not None:
            db.close()
        return
    _pool.give(path, db)


def read_state(directory: Path) -> tuple[int, int, int] | None:
    """(UIDVALIDITY, floor, HIGHESTMODSEQ) of the folder's index as committed now, read
    without a write transaction or the folder lock, through a connection the process keeps
    open (L{_Pool}); C{None} when none is open or the read fails (the caller then takes
    the lock).  Every change to a row gives it a MODSEQ above HIGHESTMODSEQ, so an equal
    triple means no row changed since it was last read."""
    path = directory / INDEX_FILE
    db = _pool.take(path)
    if db is None:
        return None
    try:
        rows = dict(db.execute(_STATE_QUERY).fetchall())
    except sqlite3.Error:
        db.close()
        return None
    _pool.give(path, db)
    if rows.get("cache_version") != CACHE_VERSION:
        return None  # sizes to measure again (L{FolderIndex.stale_sizes}): the lock's work
    return rows.get("uidvalidity", 0), rows.get("floor", 1), rows.get("highestmodseq", 1)


def take_recent(directory: Path, uids: frozenset[int]) -> list[int] | None:
    """Take the C{\\Recent} of those of C{uids} no session has claimed yet (RFC 3501
    §2.3.2, as L{FolderIndex.recent} with C{claim}), in one write transaction of the index
    without the folder lock (SQLite orders it with every other write); C{None} when the
    process keeps no connection to the index or the write fails (the caller then scans
    under the lock)."""
    path = directory / INDEX_FILE
    db = _pool.take(path)
    if db is None:
        return None
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            taken = [uid for (uid,) in db.execute("SELECT uid FROM recent") if uid in uids]
            db.executemany("DELETE FROM recent WHERE uid = ?", [(uid,) for uid in taken])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error:
        db.close()
        return None
    _pool.give(path, db)
    return sorted(taken)


_STATE_QUERY = (
    "SELECT key, value FROM meta"
    " WHERE key IN ('uidvalidity', 'floor', 'highestmodseq', 'cache_version')"
)


SORT_COLUMNS = ("dated", "date", "subject", "sender", "recipient", "cc")
"""The parsed SORT keys the index keeps per message (RFC 5256 §3), C{NULL} until parsed:
C{dated} 1 when C{date} holds the Date: in UTC seconds, 0 when the message has no usable
one; the base subject; the first mailbox of From, To and Cc."""


def _sort_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    for column in columns:
        if column not in SORT_COLUMNS:
            raise ValueError(f"no sort key column {column!r}")
    return columns


def read_sortkeys(directory: Path, columns: tuple[str, ...]) -> dict[int, tuple[Any, ...]]:
    """{uid: (base name, value per column)} of the cached SORT keys
    (L{FolderIndex.cache_sortkeys}) of the messages still indexed under that base name,
    read-only as L{read_headers}."""
    names = _sort_columns(columns)
    with _read_only(directory, "sortkeys") as db:
        if db is None:
            return {}
        rows = db.execute(
            f"SELECT s.uid, s.base, {', '.join('s.' + c for c in names)} FROM sortkeys s"
            " JOIN messages m ON m.uid = s.uid AND m.base = s.base"
        )
        return {row[0]: row[1:] for row in rows}


def read_headers(directory: Path) -> dict[int, tuple[str, bytes, str]]:
    """L{FolderIndex.headers} of the folder at C{directory} through a read-only connection:
    it takes no write lock, so a search does not wait for (or block) sessions changing the
    folder; C{{}} when the folder has no index (or no header cache) yet.

    @raise sqlite3.Error: when the index cannot be read (busy past L{BUSY_TIMEOUT}, corrupt).
    """
    with _read_only(directory, "headers") as db:
        return {} if db is None else _headers(db)


def read_sizes(directory: Path, bases: list[str]) -> dict[str, int]:
    """The sizes the index knows ({base: octets}, L{FolderIndex.set_learned}) of C{bases},
    through a read-only connection (no write lock); C{{}} when there is no index yet.

    @raise sqlite3.Error: when the index cannot be read (busy past L{BUSY_TIMEOUT}, corrupt).
    """
    return read_learned(directory, "size", bases)


def read_learned(directory: Path, column: str, bases: list[str]) -> dict[str, Any]:
    """The C{size}s or C{mtime}s (L{LEARNED}) the index knows of C{bases} ({base:
    value}, those not unknown there), as L{read_sizes}.

    @raise sqlite3.Error: when the index cannot be read (busy past L{BUSY_TIMEOUT}, corrupt).
    """
    if not bases:
        return {}
    unknown = LEARNED[column]
    with _read_only(directory) as db:
        if db is None:
            return {}
        out: dict[str, Any] = {}
        for start in range(0, len(bases), 500):
            chunk = bases[start : start + 500]
            sql = f"SELECT base, {column} FROM messages WHERE {column} != ? AND base IN (%s)"
            out.update(db.execute(sql % ",".join("?" * len(chunk)), [unknown, *chunk]).fetchall())
        return out


@contextlib.contextmanager
def _read_only(directory: Path, table: str | None = None) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the index of the folder at C{directory}, closed after: it
    takes no write lock, so a reader neither waits for nor blocks the sessions changing the
    folder.  C{None} when the folder has no index yet, or it has no C{table} (a cache an
    older version did not make).  The one way L{read_sortkeys}, L{read_headers} and
    L{read_sizes} open it.

    @raise sqlite3.Error: when the index cannot be read (busy past L{BUSY_TIMEOUT}, corrupt).
    """
    path = directory / INDEX_FILE
    if not path.exists():
        yield None
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    try:
        found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        if table is not None and db.execute(found, (table,)).fetchone() is None:
            yield None
        else:
            yield db
    finally:
        db.close()


def now_ns() -> int:
    """The wall clock in nanoseconds (what directory mtimes are compared with)."""
    return time.time_ns()
