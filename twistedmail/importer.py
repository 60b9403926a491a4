"""Moving mail in: a Maildir++ tree, an mbox file or another IMAP server into a user's
Maildir (issue 13), and moving it out again (L{export_maildir}, L{export_mbox}).

What is kept:

  - the bytes of every message, as the source holds them (a Maildir file is copied as it is,
    LF line ends included, as Dovecot writes them; an mbox message is un-quoted and given
    CRLF line ends; an IMAP message is the server's C{BODY[]}, RFC 3501 §6.4.5);
  - the flags (Maildir info C{:2,FLAGS}; mbox C{Status}/C{X-Status}/C{X-Keywords}; IMAP
    C{FLAGS}, RFC 3501 §2.3.2) and keywords (a Maildir's C{dovecot-keywords} letters are
    mapped to the target folder's own letters);
  - the internal date (the file's mtime; the mbox C{From_} line's date; IMAP C{INTERNALDATE},
    RFC 3501 §2.3.3);
  - folders (Maildir++ C{.A.B} directories; IMAP LIST with the remote hierarchy delimiter
    mapped to C{"."}) and subscriptions;
  - for a Maildir with a C{dovecot-uidlist}, UIDVALIDITY and every UID (RFC 3501 §2.3.1.1),
    when the target folder is empty (or holds only an earlier run of the same import):
    clients that cached the old server's UIDs keep them.

Durability: every message is written to the folder's C{tmp/} and fsynced, then linked into
C{cur/} (a link never overwrites) while the folder lock is held, and the UID list is written
in the same locked step, so an interrupted import leaves no half-written message and no
message without its UID; the running server (which takes the same lock) sees the new mail
at its next scan of the folder (its index compares the directories' stamps).

Resuming: each message imported is recorded in C{DATA_DIR/import.sqlite3} under (address,
source, key) -- the key is the source file's base name for a Maildir, the message's position
and SHA-256 for an mbox, C{UIDVALIDITY:UID} for IMAP -- with the base name it got here.  The
row is written (pending) before the message is linked and marked done after, so a second
run skips what is done, and a pending row whose message is in the folder counts as done: a
second run copies only what is missing, and never twice.  A message deleted here after its
import is not imported again.

Everything here is blocking (files, sockets): it runs in the C{twistedmail} command, never
in the server.
"""

from __future__ import annotations

import calendar
import hashlib
import imaplib
import os
import re
import shutil
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import attrs

from twistedmail.maildir import (
    FLAG_LETTERS,
    IMAP_TO_LETTER,
    INBOX,
    SUBSCRIPTIONS,
    UIDLIST,
    UNKNOWN_MTIME,
    Folder,
    FolderNameError,
    MaildirError,
    UserMaildir,
    decode_folder_name,
    fsync_dir,
    is_keyword,
    normalize_flags,
    split_name,
    to_crlf,
    uidlist,
    unique_name,
    write_file,
)

LEDGER = "import.sqlite3"
BATCH = 200
"""Messages linked per lock of the target folder (and per progress line)."""
BATCH_BYTES = 16 * 1024 * 1024
WRITERS = 8
"""Threads writing and fsyncing the files of a batch at once."""

Progress = Callable[[str], None]


class MigrationError(Exception):
    """A source that cannot be read or a target that cannot be written; one line for the
    admin."""


@attrs.frozen
class Incoming:
    """One message of a source.

    @ivar key: the source's stable name for it (the resume key).
    @ivar data: the message bytes.
    @ivar flags: Maildir system flag letters (C{DFPRST}).
    @ivar keywords: keyword names (RFC 3501 §2.3.2).
    @ivar mtime: the internal date, seconds since the epoch, or C{None} for now.
    @ivar base: a Maildir base name to keep, when the source has one.
    @ivar uid: the source's UID, kept when the folder's UIDVALIDITY is.
    """

    key: str
    data: bytes
    flags: str = ""
    keywords: tuple[str, ...] = ()
    mtime: float | None = None
    base: str | None = None
    uid: int | None = None


@attrs.frozen
class FolderReport:
    """What an import did to one folder."""

    folder: str
    imported: int
    skipped: int
    uidvalidity_kept: int | None


# the ledger: what was imported already


class Ledger:
    """C{DATA_DIR/import.sqlite3}: (address, source, key) -> (folder, base, done)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS imported (address TEXT, source TEXT, key TEXT,"
            " folder TEXT, base TEXT, done INTEGER, PRIMARY KEY (address, source, key))"
        )

    def close(self) -> None:
        self.db.close()

    def known(self, address: str, source: str) -> dict[str, tuple[str, str, bool]]:
        rows = self.db.execute(
            "SELECT key, folder, base, done FROM imported WHERE address = ? AND source = ?",
            (address, source),
        )
        return {key: (folder, base, bool(done)) for key, folder, base, done in rows}

    def record(
        self, address: str, source: str, rows: list[tuple[str, str, str]], done: bool
    ) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO imported VALUES (?, ?, ?, ?, ?, ?)",
                [(address, source, key, folder, base, int(done)) for key, folder, base in rows],
            )


# writing into a target folder


_BAD_BASE = re.compile(r"[/\x00-\x1f:]")


def _usable_base(base: str | None) -> bool:
    if not base or base.startswith("."):
        return False
    return _BAD_BASE.search(base) is None


class FolderImport:
    """Imports messages into one target folder, batch by batch (see the module docstring).

    @param keep: C{(uidvalidity, uidnext)} of the source when its UIDs are to be kept.
    """

    def __init__(
        self,
        folder: Folder,
        name: str,
        ledger: Ledger,
        address: str,
        source: str,
        keep: tuple[int, int] | None = None,
    ) -> None:
        self.folder, self.name, self.ledger = folder, name, ledger
        self.address, self.source = address, source
        self.known = ledger.known(address, source)
        self.present = self._present()
        self.keep = keep if keep is not None and self._can_keep(keep[0]) else None
        self.imported = self.skipped = 0
        self._letters: dict[tuple[str, ...], str] = {}

    def _present(self) -> set[str]:
        bases: set[str] = set()
        for sub in ("cur", "new"):
            try:
                names = os.listdir(self.folder.path / sub)
            except FileNotFoundError:
                continue
            bases.update(split_name(n)[0] for n in names if not n.startswith("."))
        return bases

    def _can_keep(self, uidvalidity: int) -> bool:
        """UIDs are kept when the folder holds no message, or its UIDVALIDITY is already the
        source's (an earlier run of this import): RFC 3501 §2.3.1.1 then holds (a changed
        UIDVALIDITY tells clients to forget the folder's old UIDs)."""
        current, _, _, _ = uidlist.read(self.folder.path)
        return not self.present or current == uidvalidity

    def _keyword_letters(self, names: tuple[str, ...]) -> str:
        """The folder's letters for keyword C{names} (L{Folder.keyword_letters}, asked once
        per set of names)."""
        if not names:
            return ""
        letters = self._letters.get(names)
        if letters is None:
            letters = self._letters[names] = self.folder.keyword_letters(list(names))
        return letters

    def done(self, key: str) -> bool:
        """Whether the message C{key} was imported by an earlier run (or this one)."""
        entry = self.known.get(key)
        if entry is None:
            return False
        folder, base, done = entry
        return done or (folder == self.name and base in self.present)

    def add(self, batch: list[Incoming]) -> None:
        """Import C{batch} (those not L{done}): write, link under the folder lock, give UIDs,
        record them in the ledger."""
        todo = []
        for item in batch:
            if self.done(item.key):
                self.skipped += 1
            else:
                todo.append(item)
        if not todo:
            return
        tmp = self.folder.path / "tmp"
        written: list[tuple[Incoming, str, str]] = []  # (item, base, info letters)
        files: list[tuple[Path, bytes, float | None]] = []
        try:
            for item in todo:
                letters = normalize_flags(
                    "".join(c for c in item.flags if c in FLAG_LETTERS)
                    + self._keyword_letters(item.keywords)
                )
                data = item.data
                base = item.base
                if not _usable_base(base) or base in self.present:
                    data = to_crlf(data)
                    base = unique_name(len(data))
                assert base is not None
                written.append((item, base, letters))
                files.append((tmp / base, data, item.mtime))
            # the fsyncs of a batch run side by side: the file system commits them together
            with ThreadPoolExecutor(WRITERS) as pool:
                list(pool.map(lambda f: self._write_tmp(*f), files))
            self.ledger.record(
                self.address, self.source, [(i.key, self.name, b) for i, b, _ in written], False
            )
            self._link(written)
            self.ledger.record(
                self.address, self.source, [(i.key, self.name, b) for i, b, _ in written], True
            )
        finally:
            for _item, base, _letters in written:
                try:
                    os.unlink(tmp / base)
                except FileNotFoundError:
                    pass
        for item, base, _ in written:
            self.present.add(base)
            self.known[item.key] = (self.name, base, True)
        self.imported += len(written)

    @staticmethod
    def _write_tmp(path: Path, data: bytes, mtime: float | None) -> None:
        write_file(path, data, exclusive=False)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def _link(self, written: list[tuple[Incoming, str, str]]) -> None:
        """Under the folder lock (the server's scan waits): link every file into C{cur/},
        fsync it, and write the UID list once (RFC 3501 §2.3.1.1: UIDs ascend in the order
        the messages were added; kept UIDs are the source's)."""
        folder = self.folder
        cur = folder.path / "cur"
        with folder._locked():  # noqa: SLF001 (the lock Folder.add takes)
            uidvalidity, uidnext, guid, uids = uidlist.read(folder.path)
            if self.keep is not None and uidvalidity != self.keep[0]:
                # a new UIDVALIDITY: the folder's old UIDs (of no message now) are forgotten
                uidvalidity, uidnext, uids = self.keep[0], self.keep[1], {}
            elif uidvalidity == 0:
                uidvalidity = uidlist.new_uidvalidity(folder.path)
            if not guid:
                guid = hashlib.sha256(os.urandom(16)).hexdigest()[:32]
            used = set(uids.values())
            pending: list[str] = []
            for item, base, letters in written:
                try:
                    os.link(folder.path / "tmp" / base, cur / f"{base}:2,{letters}")
                except FileExistsError:
                    pass  # linked by an interrupted run whose ledger row was not done yet
                if base in uids:
                    continue
                if self.keep is not None and item.uid is not None and item.uid not in used:
                    uids[base] = item.uid
                    used.add(item.uid)
                else:
                    pending.append(base)
            if self.keep is not None:
                uidnext = max([uidnext, *(u + 1 for u in used)])
            for base in pending:
                uids[base] = uidnext
                used.add(uidnext)
                uidnext += 1
            fsync_dir(cur)
            uidlist.write(folder.path, uidvalidity, uidnext, guid, uids)


def _run(
    target: FolderImport, items: Iterable[Incoming], total: int | None, progress: Progress
) -> FolderReport:
    batch: list[Incoming] = []
    size = 0
    seen = 0

    def flush() -> None:
        nonlocal batch, size
        target.add(batch)
        batch, size = [], 0
        of = f"/{total}" if total is not None else ""
        progress(
            f"{target.name}: {seen}{of}"
            f" ({target.imported} imported, {target.skipped} already there)"
        )

    for item in items:
        batch.append(item)
        size += len(item.data)
        seen += 1
        if len(batch) >= BATCH or size >= BATCH_BYTES:
            flush()
    if batch or seen == 0:
        flush()
    target.folder.scan()  # index the new mail now (the server would at its next look)
    return FolderReport(
        target.name, target.imported, target.skipped, target.keep[0] if target.keep else None
    )


def _target_folder(user: UserMaildir, name: str) -> Folder:
    user.ensure()
    if name.upper() != INBOX:
        try:
            user.create(name)
        except FolderNameError as e:
            raise MigrationError(f"folder {name!r}: {e}") from None
        except MaildirError:
            pass  # exists
    return user.folder(name)


# Maildir++ sources (Dovecot, Courier)


def source_folders(root: Path) -> list[tuple[str, Path]]:
    """(name, directory) of every folder of the Maildir++ tree at C{root}, INBOX first.

    @raise MigrationError: when C{root} is no Maildir (no C{cur/}).
    """
    if not (root / "cur").is_dir():
        raise MigrationError(f"{root} is not a Maildir (no cur/ directory)")
    found = [(INBOX, root)]
    for entry in sorted(os.listdir(root)):
        path = root / entry
        if not entry.startswith(".") or entry in (".", "..") or not (path / "cur").is_dir():
            continue
        try:
            name = decode_folder_name(entry)
        except FolderNameError:
            continue
        if name.upper().startswith("INBOX."):  # Courier names some folders INBOX.X
            name = name[6:]
        if name.upper() == INBOX or name.startswith("DELETED-"):
            continue
        found.append((name, path))
    return found


def source_subscriptions(root: Path) -> list[str]:
    """Subscribed folder names: Dovecot's C{subscriptions} (v2 format: a C{V\\t2} header,
    hierarchy separated by tabs) or Courier's C{courierimapsubscribed} (C{INBOX.} prefix)."""
    names: list[str] = []
    for filename in (SUBSCRIPTIONS, "courierimapsubscribed"):
        try:
            text = (root / filename).read_text("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            if not line or line.startswith("V\t"):
                continue
            name = line.replace("\t", ".")
            if name.upper().startswith("INBOX."):
                name = name[6:]
            names.append(name)
    return names


def maildir_messages(path: Path) -> tuple[int, int, list[Incoming]]:
    """A source folder's UIDVALIDITY, UIDNEXT (0, 0 without a C{dovecot-uidlist}) and
    messages (kept-UID ones in UID order, then the rest by mtime), read lazily: the list
    holds no bytes until L{_load}."""
    folder = Folder(path)
    uidvalidity, uidnext, _guid, uids = uidlist.read(folder.path)
    if not (path / UIDLIST).exists():
        uidvalidity = uidnext = 0
    keywords = folder.keywords()
    items: list[tuple[tuple[int, float, str], Incoming]] = []
    for sub in ("cur", "new"):
        try:
            names = os.listdir(path / sub)
        except FileNotFoundError:
            continue
        for filename in names:
            if filename.startswith("."):
                continue
            base, info = split_name(filename)
            try:
                st = os.stat(path / sub / filename)
            except FileNotFoundError:
                continue
            flags = "".join(c for c in info if c in FLAG_LETTERS) if sub == "cur" else ""
            names_kw = tuple(keywords[c] for c in info if c in keywords) if sub == "cur" else ()
            uid = uids.get(base)
            order = (0, float(uid), base) if uid is not None else (1, st.st_mtime, base)
            items.append(
                (
                    order,
                    Incoming(
                        key=base,
                        data=b"",
                        flags=flags,
                        keywords=names_kw,
                        mtime=st.st_mtime,
                        base=base,
                        uid=uid,
                    ),
                )
            )
            # the file name to read it from is found again at load time (flags may change)
    items.sort(key=lambda pair: pair[0])
    return uidvalidity, uidnext, [item for _, item in items]


def _load(path: Path, items: list[Incoming], skip: Callable[[str], bool]) -> Iterator[Incoming]:
    """The messages of C{items} with their bytes read (those not to C{skip} only)."""
    listing: dict[str, Path] | None = None
    for item in items:
        if skip(item.key):
            yield item  # counted as skipped without reading it
            continue
        if listing is None:
            listing = {}
            for sub in ("new", "cur"):
                for filename in os.listdir(path / sub):
                    listing[split_name(filename)[0]] = path / sub / filename
        file = listing.get(item.key)
        if file is None:
            continue  # gone from the source meanwhile
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            continue
        yield attrs.evolve(item, data=data)


def import_maildir(
    source: Path, user: UserMaildir, address: str, ledger: Ledger, progress: Progress
) -> list[FolderReport]:
    """Import the Maildir++ tree at C{source} into C{user}'s Maildir (the module docstring
    says what is kept).  @raise MigrationError: when C{source} is no Maildir."""
    source = source.resolve()
    reports = []
    for name, path in source_folders(source):
        uidvalidity, uidnext, items = maildir_messages(path)
        target = FolderImport(
            _target_folder(user, name),
            name,
            ledger,
            address,
            f"maildir:{path}",
            (uidvalidity, uidnext) if uidvalidity else None,
        )
        progress(f"{name}: {len(items)} message(s) in {path}")
        reports.append(_run(target, _load(path, items, target.done), len(items), progress))
    for name in source_subscriptions(source):
        try:
            user.subscribe(name)
        except (MaildirError, OSError):
            continue
    return reports


# mbox sources (RFC 4155; mboxrd and mboxo quoting)

MBOX_HEADERS = (
    b"status",
    b"x-status",
    b"x-keywords",
    b"x-uid",
    b"x-imapbase",
    b"x-imap",
    b"content-length",
)
"""Headers that are the mbox file's bookkeeping, not the message's: read for the flags, then
removed (Dovecot and mutt hide the same ones from IMAP clients)."""

_FROM_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +([A-Z][a-z]{2}) +(\d{1,2}) +(\d{1,2}):(\d{2})(?::(\d{2}))?"
    rb"(?: +[A-Z]{3,4}| +[+-]\d{4})? +(\d{4})"
)
_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.M)
_QUOTED_FROM_O = re.compile(rb"^>(From )", re.M)


def from_line_date(line: bytes) -> float | None:
    """The date of an mbox C{From_} line (asctime form, taken as UTC), or C{None}."""
    m = _FROM_DATE.search(line)
    if m is None or m.group(1) not in _MONTHS:
        return None
    month, day, hour, minute, second, year = m.groups()
    try:
        return float(
            calendar.timegm(
                (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second or 0))
            )
        )
    except (ValueError, OverflowError):
        return None


def mbox_split(file: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(From_ line, raw message) for each message of an mbox: a message starts at a line
    beginning C{From } at the start of the file or after an empty line (RFC 4155 §2); the
    empty line before the next C{From_} line is the separator, not part of the message."""
    from_line: bytes | None = None
    lines: list[bytes] = []
    previous_blank = True
    for line in file:
        if line.startswith(b"From ") and previous_blank:
            if from_line is not None:
                if lines and lines[-1] in (b"\n", b"\r\n"):
                    lines.pop()
                yield from_line, b"".join(lines)
            from_line, lines = line, []
            previous_blank = False
            continue
        if from_line is None:
            if line.strip():
                raise MigrationError("not an mbox file (it does not start with a From_ line)")
            continue
        lines.append(line)
        previous_blank = line in (b"\n", b"\r\n")
    if from_line is not None:
        if lines and lines[-1] in (b"\n", b"\r\n"):
            lines.pop()
        yield from_line, b"".join(lines)


def mbox_metadata(raw: bytes) -> tuple[bytes, str, tuple[str, ...]]:
    """Split the mbox bookkeeping headers off C{raw}: (message, flag letters, keywords).

    C{Status: R} is \\Seen; C{X-Status:} C{A} \\Answered, C{F} \\Flagged, C{T} \\Draft,
    C{D} \\Deleted (mutt's and Dovecot's letters); C{X-Keywords:} names separated by blanks
    or commas.
    """
    end = raw.find(b"\n\n")
    end_crlf = raw.find(b"\r\n\r\n")
    if end_crlf >= 0 and (end < 0 or end_crlf < end):
        end = end_crlf + 1
    head, body = (raw[: end + 1], raw[end + 1 :]) if end >= 0 else (raw, b"")
    kept: list[bytes] = []
    flags = ""
    keywords: list[str] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and kept is not None:
            if not dropping:
                kept.append(line)
            continue
        name, sep, value = line.partition(b":")
        dropping = bool(sep) and name.strip().lower() in MBOX_HEADERS
        if not dropping:
            kept.append(line)
            continue
        field = name.strip().lower()
        text = value.decode("ascii", "replace").strip()
        if field == b"status":
            flags += "S" if "R" in text else ""
        elif field == b"x-status":
            flags += "".join(letter for c, letter in zip("AFTD", "RFDT", strict=True) if c in text)
        elif field == b"x-keywords":
            keywords += [k for k in re.split(r"[\s,]+", text) if is_keyword(k)]
    return b"".join(kept) + body, normalize_flags(flags), tuple(keywords)


def mbox_messages(file: BinaryIO, quoting: str = "mboxrd") -> Iterator[Incoming]:
    """The messages of an mbox, un-quoted (mboxrd: one C{>} off every C{>+From }; mboxo:
    off C{>From } only), with CRLF line ends, flags from the bookkeeping headers and the
    internal date from the C{From_} line."""
    pattern = _QUOTED_FROM if quoting == "mboxrd" else _QUOTED_FROM_O
    occurrences: dict[bytes, int] = {}
    for from_line, raw in mbox_split(file):
        message, flags, keywords = mbox_metadata(raw)
        message = to_crlf(pattern.sub(rb"\1", message))
        digest = hashlib.sha256(message).digest()
        occurrences[digest] = occurrences.get(digest, 0) + 1
        yield Incoming(
            key=f"{digest.hex()}:{occurrences[digest]}",
            data=message,
            flags=flags,
            keywords=keywords,
            mtime=from_line_date(from_line),
        )


def import_mbox(
    source: Path,
    user: UserMaildir,
    address: str,
    folder: str,
    ledger: Ledger,
    progress: Progress,
    quoting: str = "mboxrd",
) -> FolderReport:
    """Import the mbox file C{source} into C{folder} of C{user}.

    @raise MigrationError: when it is not an mbox.
    """
    source = source.resolve()
    with open(source, "rb") as f:
        first = f.readline()
        while first in (b"\n", b"\r\n"):
            first = f.readline()
        if first and not first.startswith(b"From "):
            raise MigrationError("not an mbox file (it does not start with a From_ line)")
        f.seek(0)
        target = FolderImport(
            _target_folder(user, folder), folder, ledger, address, f"mbox:{source}"
        )
        progress(f"{folder}: reading {source}")
        return _run(target, mbox_messages(f, quoting), None, progress)


# IMAP sources (RFC 3501, RFC 8314 implicit TLS, RFC 2595 STARTTLS)


@attrs.frozen
class ImapSource:
    """Where to pull from.  @ivar tls: C{"imaps"} (implicit TLS) or C{"starttls"}."""

    host: str
    port: int
    user: str
    password: str
    tls: str = "imaps"
    cafile: Path | None = None
    timeout: float = 60.0


_LIST = re.compile(rb'\((?P<attrs>[^)]*)\) (?:"(?P<delim>[^"]*)"|NIL) (?P<name>.*)$')
_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_FETCH_DATE = re.compile(rb'INTERNALDATE "([^"]+)"')


def _imap_name(raw: bytes) -> bytes:
    raw = raw.strip()
    if raw.startswith(b'"') and raw.endswith(b'"'):
        return raw[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return raw


def _quote(name: bytes) -> str:
    return '"' + name.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_connect(source: ImapSource) -> imaplib.IMAP4:
    """Connect (TLS with the certificate verified against the system's CAs or C{cafile})
    and log in.  @raise MigrationError: on a refused connection, certificate or login."""
    context = ssl.create_default_context(cafile=str(source.cafile) if source.cafile else None)
    try:
        if source.tls == "imaps":
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                source.host, source.port, ssl_context=context, timeout=source.timeout
            )
        else:
            client = imaplib.IMAP4(source.host, source.port, timeout=source.timeout)
            client.starttls(ssl_context=context)
        client.login(source.user, source.password)
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as e:
        raise MigrationError(f"IMAP {source.host}:{source.port}: {e}") from None
    return client


def imap_folders(client: imaplib.IMAP4) -> list[tuple[str, bytes]]:
    """(our folder name, the server's mailbox name) of every selectable remote folder."""
    typ, data = client.list()
    if typ != "OK":
        raise MigrationError(f"IMAP LIST failed: {data!r}")
    found = []
    for line in data:
        if not isinstance(line, bytes):
            continue
        m = _LIST.match(line)
        if m is None or b"\\noselect" in m.group("attrs").lower():
            continue
        if b"\\nonexistent" in m.group("attrs").lower():
            continue
        remote = _imap_name(m.group("name"))
        delim = (m.group("delim") or b".").decode()
        try:
            text = remote.decode("imap4-utf-7")
        except (UnicodeError, ValueError):
            continue  # not a name this server can SELECT with imaplib (8-bit, RFC 6855)
        parts = text.split(delim) if delim else [text]
        name = ".".join(p.replace(".", "_") for p in parts)
        found.append((INBOX if name.upper() == INBOX else name, remote))
    found.sort(key=lambda pair: (pair[0] != INBOX, pair[0]))
    return found


def _imap_subscriptions(client: imaplib.IMAP4, folders: list[tuple[str, bytes]]) -> list[str]:
    typ, data = client.lsub()
    if typ != "OK":
        return []
    by_remote = {remote: name for name, remote in folders}
    out = []
    for line in data:
        if isinstance(line, bytes) and (m := _LIST.match(line)) is not None:
            name = by_remote.get(_imap_name(m.group("name")))
            if name is not None and name != INBOX:
                out.append(name)
    return out


def _imap_flags(text: bytes) -> tuple[str, tuple[str, ...]]:
    letters, keywords = "", []
    for flag in text.decode("utf-8", "replace").split():
        if flag.startswith("\\"):
            letter = {k.lower(): v for k, v in IMAP_TO_LETTER.items()}.get(flag.lower())
            letters += letter or ""
        elif is_keyword(flag):
            keywords.append(flag)
    return normalize_flags(letters), tuple(keywords)


def _imap_fetch(client: imaplib.IMAP4, uids: list[int], uidvalidity: int) -> Iterator[Incoming]:
    typ, data = client.uid(
        "FETCH", ",".join(map(str, uids)), "(UID FLAGS INTERNALDATE BODY.PEEK[])"
    )
    if typ != "OK":
        raise MigrationError(f"IMAP FETCH failed: {data!r}")
    pending: tuple[bytes, bytes] | None = None
    parts: list[tuple[bytes, bytes]] = []
    for item in data:
        if isinstance(item, tuple):
            if pending is not None:
                parts.append(pending)
            pending = (item[0], item[1])
        elif isinstance(item, bytes) and pending is not None:
            parts.append((pending[0] + b" " + item, pending[1]))  # items after the literal
            pending = None
    if pending is not None:
        parts.append(pending)
    for meta, body in parts:
        uid = _FETCH_UID.search(meta)
        if uid is None:
            continue
        flags = _FETCH_FLAGS.search(meta)
        letters, keywords = _imap_flags(flags.group(1) if flags else b"")
        date = _FETCH_DATE.search(meta)
        mtime = None
        if date is not None:
            try:
                text = date.group(1).decode().strip()
                mtime = datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z").timestamp()
            except ValueError:
                mtime = None
        yield Incoming(
            key=f"{uidvalidity}:{int(uid.group(1))}",
            data=body,
            flags=letters,
            keywords=keywords,
            mtime=mtime,
        )


def import_imap(
    source: ImapSource, user: UserMaildir, address: str, ledger: Ledger, progress: Progress
) -> list[FolderReport]:
    """Pull every selectable folder of C{source} into C{user}'s Maildir, with flags,
    keywords and INTERNALDATE; messages already imported (by remote UIDVALIDITY and UID,
    RFC 3501 §2.3.1.1) are not fetched again."""
    client = imap_connect(source)
    reports = []
    try:
        folders = imap_folders(client)
        for name, remote in folders:
            typ, data = client.select(_quote(remote), readonly=True)
            if typ != "OK":
                progress(f"{name}: cannot be selected ({data!r}), left out")
                continue
            codes = client.response("UIDVALIDITY")[1] or [b"0"]
            uidvalidity = int(codes[-1] or b"0") if (codes[-1] or b"0").isdigit() else 0
            typ, data = client.uid("SEARCH", "ALL")
            if typ != "OK":
                raise MigrationError(f"IMAP SEARCH failed in {name}: {data!r}")
            uids = [int(u) for u in (data[0] or b"").split()]
            label = f"{source.user}@{source.host}/{remote.decode('ascii', 'replace')}"
            target = FolderImport(
                _target_folder(user, name), name, ledger, address, f"imap:{label}"
            )
            missing = [u for u in uids if not target.done(f"{uidvalidity}:{u}")]
            target.skipped += len(uids) - len(missing)
            progress(f"{name}: {len(uids)} message(s) on the server, {len(missing)} to copy")

            def fetched(
                missing: list[int] = missing, uidvalidity: int = uidvalidity
            ) -> Iterator[Incoming]:
                for start in range(0, len(missing), 100):
                    yield from _imap_fetch(client, missing[start : start + 100], uidvalidity)

            reports.append(_run(target, fetched(), len(missing), progress))
        for name in _imap_subscriptions(client, folders):
            try:
                user.subscribe(name)
            except (MaildirError, OSError):
                continue
    except (OSError, imaplib.IMAP4.error) as e:
        raise MigrationError(f"IMAP {source.host}:{source.port}: {e}") from None
    finally:
        try:
            client.logout()
        except (OSError, imaplib.IMAP4.error):
            pass
    return reports


# export


def export_maildir(user: UserMaildir, target: Path, progress: Progress) -> int:
    """Copy every folder of C{user} to the Maildir++ tree C{target} (Dovecot's layout:
    messages, C{dovecot-uidlist} with the UIDs as of the copy, C{dovecot-keywords},
    C{subscriptions}), readable by L{import_maildir} and by Dovecot.  @return: messages."""
    count = 0
    for name in user.folders():
        folder = user.folder(name)
        if not folder.exists():
            continue
        scan = folder.scan()
        out = target if name == INBOX else target / user.folder_path(name).name
        for sub in ("cur", "new", "tmp"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        if name != INBOX:
            (out / "maildirfolder").touch()
        written: dict[str, int] = {}
        for entry in scan.messages:
            try:
                source = folder.open(entry)
                shutil.copy2(source, out / "cur" / source.name)
            except (MaildirError, FileNotFoundError):
                continue
            written[entry.base] = entry.uid
        lines = [f"3 V{scan.uidvalidity} N{scan.uidnext}"]
        lines += [f"{uid} :{base}" for base, uid in sorted(written.items(), key=lambda kv: kv[1])]
        (out / UIDLIST).write_text("\n".join(lines) + "\n", "utf-8")
        keywords = folder.keywords()
        if keywords:
            (out / "dovecot-keywords").write_text(
                "".join(f"{ord(c) - ord('a')} {kw}\n" for c, kw in sorted(keywords.items())),
                "utf-8",
            )
        count += len(written)
        progress(f"{name}: {len(written)} message(s) exported")
    subs = user.subscriptions()
    if subs:
        (target / SUBSCRIPTIONS).write_text("".join(s + "\n" for s in subs), "utf-8")
    return count


def _mbox_quote(data: bytes) -> bytes:
    """mboxrd quoting: one more C{>} before every C{>*From } line."""
    return re.sub(rb"^(>*From )", rb">\1", data, flags=re.M)


def export_mbox(user: UserMaildir, target: Path, progress: Progress) -> int:
    """Write every folder of C{user} as an mboxrd file C{target/NAME.mbox} (LF line ends,
    flags in C{Status}/C{X-Status}/C{X-Keywords}, the internal date on the C{From_} line),
    readable by L{import_mbox}.  @return: messages."""
    count = 0
    target.mkdir(parents=True, exist_ok=True)
    for name in user.folders():
        folder = user.folder(name)
        if not folder.exists():
            continue
        scan = folder.scan()
        keywords = folder.keywords()
        dates = folder.dates(scan.messages)  # (those a first sync indexed without a stat)
        n = 0
        with open(target / f"{name}.mbox", "wb") as out:
            for entry in scan.messages:
                mtime = dates.get(entry.base, entry.mtime)
                try:
                    data = folder.read(entry).replace(b"\r\n", b"\n")
                except MaildirError:
                    continue
                if mtime == UNKNOWN_MTIME:
                    continue  # gone before its date was read
                letters = entry.flags
                head = b"Status: " + (b"RO" if "S" in letters else b"O") + b"\n"
                x = "".join(c for c, f in zip("AFTD", "RFDT", strict=True) if f in letters)
                if x:
                    head += b"X-Status: " + x.encode() + b"\n"
                names = [keywords[c] for c in letters if c in keywords]
                if names:
                    head += b"X-Keywords: " + " ".join(names).encode() + b"\n"
                stamp = time.asctime(time.gmtime(mtime)).encode()
                body = _mbox_quote(data)
                if not body.endswith(b"\n"):
                    body += b"\n"
                out.write(b"From MAILER-DAEMON " + stamp + b"\n" + head + body + b"\n")
                n += 1
        count += n
        progress(f"{name}: {n} message(s) exported to {name}.mbox")
    return count
