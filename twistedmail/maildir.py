"""Maildir++ storage: durable delivery, folders, flags and the UID list.

On-disk format (chosen to match Dovecot, so a mailbox moves between the two servers):

  - a mailbox is C{ROOT/{cur,new,tmp}}; subfolders are Maildir++ siblings C{ROOT/.Sent/},
    C{ROOT/.Lists.Work/} (IMAP hierarchy delimiter C{"."}, names in modified UTF-7 on disk,
    RFC 3501 §5.1.3), each with a C{maildirfolder} marker file;
  - file names are C{<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<size>[:2,<flags>]} (the
    Maildir spec at cr.yp.to/proto/maildir.html; C{,S=} (file size), C{,W=} (size with CRLF
    line ends, so indexing never reads the file) and the C{:2,} info are Dovecot's and
    Courier's): flags C{D}raft, C{F}lagged, C{P}assed, C{R}eplied, C{S}een, C{T}rashed,
    in ASCII order;
  - keywords (RFC 3501 §2.3.2: C{$Junk}, C{$label1}, user keywords) are the lower-case info
    letters C{a}..C{z} after the system flags, each folder mapping them to names in its own
    C{dovecot-keywords} file: one C{<index> <name>} line per keyword, index 0 being C{a}, at
    most 26 per folder; like Dovecot, a keyword that finds no free letter is not stored;
  - UIDs live in C{dovecot-uidlist}: a header C{3 V<uidvalidity> N<uidnext> G<guid>} then one
    C{<uid> :<base name>} line per message (Dovecot's "Maildir Mailbox Format" document);
  - messages are stored exactly as received on the wire (CRLF line ends), so the C{S=} size
    is also the RFC 822 size IMAP reports; a file another program wrote with bare LF line
    ends (Dovecot's C{,S=<file size>,W=<CRLF size>}, or a file dropped in by hand) is read
    with CRLF line ends and its size is that of the CRLF form (RFC 3501 §2.3.4).

Durability (the contract behind every C{250} and C{OK}): a message is written to C{tmp/},
fsynced, hard-linked into C{new/} or C{cur/} under a name that is never reused (a link never
overwrites), the C{tmp/} name unlinked and the directory fsynced (by an fsync that began
after the link: concurrent deliveries to one directory share it, L{fsync_dir_shared}).
Everything here is blocking file I/O: protocol code calls it through a thread
(C{deferToThread}).
"""

from __future__ import annotations

import bisect
import collections
import errno
import fcntl
import io
import os
import random
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, NamedTuple

import attrs
from twisted.mail import imap4  # noqa: F401  (registers the "imap4-utf-7" codec, RFC 3501 §5.1.3)

from twistedmail.index import (
    CachedParts,
    FolderIndex,
    IndexedMessage,
    Stamps,
    now_ns,
    read_headers,
    read_sortkeys,
    remember_arrival,
)

_BARE_LF = re.compile(rb"(?<!\r)\n")
UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
MAX_KEYWORDS = 26
"""Keyword letters a..z per folder (Dovecot's MAILDIR_MAX_KEYWORDS)."""
MAX_KEYWORD_LENGTH = 50
"""Longest keyword name accepted, in octets (Dovecot's mail_max_keyword_length)."""
LOCKFILE = "twistedmail-uidlist.lock"
UIDVALIDITY_FILE = "twistedmail-uidvalidity"  # the last UIDVALIDITY given out in a Maildir
UIDLIST_LOCK = "dovecot-uidlist.lock"
"""Dovecot's dotlock of the UID list (maildir-uidlist.c), taken with the C{flock} above so that
a Dovecot or doveadm on the same Maildir never hands out a UID we hand out."""
DOTLOCK_STALE = 120.0
"""Seconds without a change of the lock or of C{dovecot-uidlist} after which a dotlock of an
unknown owner is stale (Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT)."""
DOTLOCK_TIMEOUT = DOTLOCK_STALE + 2
"""Seconds to wait for the dotlock before giving up (Dovecot's uidlist lock timeout)."""
DOTLOCK_PID_CHECK = 2.0
"""A dotlock younger than this is not checked for a dead owner (Dovecot's STALE_PID_CHECK_SECS)."""
SUBSCRIPTIONS = "subscriptions"
DELIMITER = "."
INBOX = "INBOX"
FLAG_LETTERS = "DFPRST"
# IMAP system flag <-> Maildir info letter (RFC 3501 §2.3.2; Maildir spec "info").
IMAP_TO_LETTER = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_TO_IMAP = {v: k for k, v in IMAP_TO_LETTER.items()}

_counter_lock = threading.Lock()
_counter = 0


class MaildirError(Exception):
    """A request against the store that cannot be done; the message is safe to show a client."""


class FolderNameError(MaildirError):
    """A folder name that is not allowed (empty part, path characters, control characters)."""


def _safe_host() -> str:
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


_HOST = _safe_host()


def unique_name(size: int, now: float | None = None, wire: int | None = None) -> str:
    """A new Maildir base name C{<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>[,W=<wire>]},
    unique per process (C{wire}: the size with CRLF line ends, Dovecot's virtual size)."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    t = time.time() if now is None else now
    secs = int(t)
    usecs = int((t - secs) * 1_000_000)
    # Zero-padded microseconds so that names of one process sort in creation order (Dovecot
    # does not pad; both are valid Maildir names).
    name = f"{secs}.M{usecs:06d}P{os.getpid()}Q{n}.{_HOST},S={size}"
    return name if wire is None else f"{name},W={wire}"


_ARRIVAL = re.compile(r"(\d+)\.M(\d+)P\d+Q(\d+)\.")


def arrival_key(base: str) -> tuple[int, int, int, str]:
    """Sort key for new messages of equal mtime: (secs, usecs, counter, base) read from a
    C{unique_name}-shaped base name (Dovecot's too), so C{M99} sorts before C{M100}; other
    names sort after them, by name."""
    m = _ARRIVAL.match(base)
    if m is None:
        return (2**63, 0, 0, base)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), base)


def split_name(filename: str) -> tuple[str, str]:
    """Split C{base:2,FLAGS} into (base, flags); a name without info has flags C{""}."""
    base, sep, info = filename.partition(":2,")
    return base, info if sep else ""


def size_from_name(base: str) -> int | None:
    """The C{,S=} size in a base name, or C{None} when absent."""
    for field in base.split(",")[1:]:
        if field.startswith("S=") and field[2:].isdigit():
            return int(field[2:])
    return None


def wire_size(data: bytes) -> int:
    """Octets of C{data} with every bare LF made CRLF (RFC 5322 §2.1, RFC 3501 §2.3.4)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """C{data} with every bare LF made CRLF (the wire form, RFC 3501 §2.3.4, RFC 1939 §3)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


class CRLFReader(io.BufferedIOBase):
    """A binary message file read with bare LF line ends made CRLF, chunk by chunk (a CR
    at the end of one chunk and the LF starting the next stay one line end): what POP3
    streams (RFC 1939 §3) for a file another program wrote with LF line ends."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__()
        self._file = file
        self._after_cr = False

    def readable(self) -> bool:
        return True

    def _convert(self, data: bytes) -> bytes:
        out = to_crlf(data)
        if self._after_cr and data[:1] == b"\n":
            out = out[1:]  # the CR added before this LF came in the previous chunk
        if data:
            self._after_cr = data[-1:] == b"\r"
        return out

    def read(self, size: int | None = -1) -> bytes:
        return self._convert(self._file.read(-1 if size is None else size))

    read1 = read

    def readline(self, size: int | None = -1) -> bytes:
        return self._convert(self._file.readline(-1 if size is None else size))

    def close(self) -> None:
        self._file.close()
        super().close()


def measure(path: Path) -> int:
    """The size of message file C{path} with CRLF line ends.  @raise OSError: unreadable."""
    return wire_size(path.read_bytes())


def wire_size_from_name(base: str) -> int | None:
    """The size with CRLF line ends: Dovecot's C{,W=} when present, else C{,S=}, else C{None}.

    Dovecot saves messages with LF line ends (C{mail_save_crlf = no}) and names them
    C{,S=<file size>,W=<size with CRLF>}; ours are CRLF on disk and carry both (older
    versions wrote only C{,S=}).
    """
    for field in base.split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return size_from_name(base)


def dovecot_wire_size(base: str) -> int | None:
    """Dovecot's C{,W=} size (the message with CRLF line ends), or C{None} when absent."""
    for field in base.split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return None


def is_keyword(name: str) -> bool:
    """Whether C{name} is a keyword the store can keep: an RFC 3501 §9 C{flag-keyword} (an
    atom: ASCII, no CTL, SP or C{( ) { % * " \\ ]}) of at most L{MAX_KEYWORD_LENGTH}."""
    if not name or len(name) > MAX_KEYWORD_LENGTH:
        return False
    return all(0x20 < ord(c) < 0x7F and c not in '(){%*"\\]' for c in name)


def normalize_flags(letters: str) -> str:
    """Maildir info flags, deduplicated, in ASCII order as the spec requires."""
    return "".join(sorted(set(letters)))


def write_file(path: Path, data: bytes, *, exclusive: bool = True) -> None:
    """Write all of C{data} to the file C{path} (0600; a new one, else C{exclusive=False}
    truncates an existing one) and fsync it: C{os.write} may write less than asked.  Its
    directory is not fsynced (the caller renames or links the file first).

    @raise FileExistsError: C{exclusive} and C{path} exists (nothing was written).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirSyncs:
    """Directory fsyncs shared by concurrent deliveries (group commit): see L{fsync_dir_shared}.

    Per directory: C{begun} fsyncs started, C{done} the last one finished successfully,
    C{running} whether one is under way, C{users} the callers inside."""

    def __init__(self) -> None:
        self.begun = 0
        self.done = 0
        self.running = False
        self.users = 0


_dir_syncs: dict[str, _DirSyncs] = {}
_dir_syncs_changed = threading.Condition()


def fsync_dir_shared(path: Path) -> None:
    """L{fsync_dir}, shared by threads that need it at the same time: return once an fsync
    of C{path} that began after this call has finished.  A caller finding one already under
    way waits for it to end and then for the next one, which covers every caller that came
    in meanwhile (one directory fsync for many concurrent deliveries, each still durable
    before its C{250}).  A failed fsync fails its own caller; the ones waiting run their own.
    """
    key = os.fspath(path)
    cond = _dir_syncs_changed
    with cond:
        state = _dir_syncs.get(key)
        if state is None:
            state = _dir_syncs[key] = _DirSyncs()
        state.users += 1
        need = state.begun + 1  # one running now may have begun before our link
        try:
            while state.done < need:
                if state.running:
                    cond.wait()
                    continue
                state.running = True
                state.begun += 1
                generation = state.begun
                ok = False
                cond.release()
                try:
                    fsync_dir(path)
                    ok = True
                finally:
                    cond.acquire()
                    state.running = False
                    if ok:
                        state.done = generation
                    cond.notify_all()
        finally:
            state.users -= 1
            if not state.users:
                del _dir_syncs[key]


def make_maildir(path: Path, folder: bool = False) -> None:
    """Create C{path} with C{cur/ new/ tmp/} (mode 0700), and the C{maildirfolder} marker for a
    Maildir++ subfolder.  Existing directories are kept."""
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder:
        (path / "maildirfolder").touch(mode=0o600, exist_ok=True)


def write_durably(directory: Path, data: bytes, flags: str = "", mtime: float | None = None) -> str:
    """Store C{data} as a new message file in C{directory} (C{new} or C{cur}), durably.

    Writes C{tmp/<name>}, fsyncs it, links it to C{directory/<name>[:2,flags]} (C{link}
    fails rather than overwrite: a clash picks a new name), unlinks the tmp file and fsyncs
    C{directory}.  C{mtime}, when given, becomes the file's modification time (the IMAP
    INTERNALDATE, as Dovecot keeps it).

    @return: the base name (without C{:2,} info).
    @raise OSError: when the disk refuses; nothing is left in C{new}/C{cur} then.
    """
    tmp_dir = directory.parent / "tmp"
    while True:
        base = unique_name(len(data), wire=wire_size(data))  # the index reads ,W=
        tmp_path = tmp_dir / base
        try:
            write_file(tmp_path, data)
        except FileExistsError:  # another process's tmp file: not ours to remove
            continue
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        try:
            if mtime is not None:
                os.utime(tmp_path, (mtime, mtime))
            final = base + (":2," + normalize_flags(flags) if directory.name == "cur" else "")
            try:
                os.link(tmp_path, directory / final)
            except FileExistsError:
                continue
        finally:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
        fsync_dir_shared(directory)  # one fsync for the deliveries linked meanwhile
        if directory.name == "new":  # a delivery: keep its header fields for SEARCH
            remember_arrival(directory.parent, base, to_crlf(data))
        return base


ALL_LETTERS = FLAG_LETTERS + "abcdefghijklmnopqrstuvwxyz"
"""Every info letter a message can carry here (the system flags and the keyword letters)."""


@attrs.frozen
class FlagChange:
    """A change of a message's info letters, applied to the letters it has on disk at the
    moment of the change (DESIGN §6: flags change by delta, never by writing back a set read
    earlier): the result is (current - C{remove}) | C{add}, in ASCII order.

    STORE +FLAGS is C{FlagChange(add=...)}, -FLAGS C{FlagChange(remove=...)}, FLAGS a change
    that removes every letter IMAP can set and adds the new ones (RFC 3501 §6.4.6).
    """

    add: str = ""
    remove: str = ""

    def apply(self, letters: str) -> str:
        return normalize_flags("".join(c for c in letters if c not in self.remove) + self.add)


class FolderLockedError(MaildirError):
    """Another program held the folder's UID list lock past L{DOTLOCK_TIMEOUT}."""


def _lock_owner(path: Path) -> int | None:
    """The PID in a dotlock (C{<pid>:<host>}, Dovecot's file_write_pid) when the host is
    this one; C{None} when unreadable, empty or another host's."""
    try:
        with open(path, "rb") as f:
            text = f.read(512).decode("ascii", "replace").strip()
    except OSError:
        return None
    pid, sep, host = text.partition(":")
    if not sep or host != socket.gethostname() or not pid.isdigit() or int(pid) <= 0:
        return None
    return int(pid)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # we hold the flock: a lock of this process is left over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists
    return True


@contextmanager
def dotlock(
    lock: Path,
    protected: Path,
    timeout: float = DOTLOCK_TIMEOUT,
    stale: float = DOTLOCK_STALE,
) -> Iterator[None]:
    """Hold Dovecot's dotlock C{lock} (file-dotlock.c with dotlock_use_excl): created with
    C{O_EXCL}, holding C{<pid>:<host>}, removed at the end if it is still ours.

    A lock held by someone else is waited for; it is stale, and replaced, when its owner is a
    dead process of this host (checked once it is L{DOTLOCK_PID_CHECK} seconds old), or when
    neither it nor C{protected} changed for C{stale} seconds.  On a full disk (the lock cannot
    be created) the caller goes on with its C{flock} only: reading and deleting mail must keep
    working then.

    @raise FolderLockedError: when the lock is still held after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    wait = 0.005
    seen: tuple[int, int, int, int] | None = None
    last_change = 0.0
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            fd = -1
        except OSError as e:
            if is_enospc(e):
                yield
                return
            raise
        if fd >= 0:
            break
        now = time.time()
        try:
            st = os.lstat(lock)
        except FileNotFoundError:
            continue  # released meanwhile: try again at once
        identity = (st.st_ino, st.st_size, int(st.st_mtime), int(st.st_ctime))
        if identity != seen:
            last_change = max(last_change, st.st_mtime if seen is None else now)
            seen = identity
        overriding = False
        if st.st_mtime < now - DOTLOCK_PID_CHECK:
            owner = _lock_owner(lock)
            overriding = owner is not None and not _alive(owner)
        if not overriding and now > last_change + stale:
            try:
                last_change = max(last_change, os.stat(protected).st_mtime)
            except FileNotFoundError:
                pass
            overriding = now > last_change + stale
        if overriding:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            seen = None
            continue
        if time.monotonic() > deadline:
            raise FolderLockedError("folder is locked by another program")
        time.sleep(wait * (1 + random.random()))
        wait = min(wait * 1.5, 0.25)
    try:
        os.write(fd, f"{os.getpid()}:{socket.gethostname()}".encode())
    except OSError:
        pass  # Dovecot leaves it empty then, too
    mine = os.fstat(fd)
    try:
        yield
    finally:
        try:
            st = os.lstat(lock)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(lock)  # not a lock someone took over meanwhile
        except FileNotFoundError:
            pass
        os.close(fd)


class MessageEntry(NamedTuple):
    """One message of a folder as of the last scan: an index row as it comes out of SQLite
    (a tuple, so a 100,000-message SELECT makes no per-message objects beyond the rows
    themselves: L{Folder.scan}).

    @ivar uid: IMAP UID (RFC 3501 §2.3.1.1).
    @ivar base: the Maildir unique name without info (stable: the POP3 UIDL, RFC 1939 §7).
    @ivar filename: the current file name in C{cur/} (base + C{:2,} + flags).
    @ivar size: octets, as stored (CRLF line ends).
    @ivar mtime: seconds since the epoch: the IMAP INTERNALDATE.
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


@attrs.frozen
class _Snapshot:
    """A folder's message list as of one state of its index: UIDVALIDITY, the index floor
    and HIGHESTMODSEQ name the state (every change to a row gives it a MODSEQ above the
    HIGHESTMODSEQ before; every removal leaves a tombstone with one)."""

    uidvalidity: int
    floor: int
    highestmodseq: int
    messages: tuple[MessageEntry, ...]


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
                return _Snapshot(uidvalidity, floor, highest, _patched(old.messages, changed, gone))
        rows = tuple(map(MessageEntry._make, index.messages()))
        return _Snapshot(uidvalidity, floor, highest, rows)

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


def _patched(
    messages: tuple[MessageEntry, ...],
    changed: list[tuple[int, str, str, int, float, int]],
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


def _uid(entry: MessageEntry) -> int:
    return entry.uid


class Folder:
    """One Maildir folder (INBOX or a Maildir++ subfolder) and its C{dovecot-uidlist}.

    Methods are blocking and thread-safe; concurrent callers (threads or processes) serialise
    on an C{flock} of C{twistedmail-uidlist.lock} in the folder, and with Dovecot (or doveadm)
    on its dotlock C{dovecot-uidlist.lock} (L{dotlock}).
    """

    lock_timeout = DOTLOCK_TIMEOUT
    """Seconds to wait for Dovecot's C{dovecot-uidlist.lock} (L{dotlock})."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return (self.path / "cur").is_dir()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with dotlock(self.path / UIDLIST_LOCK, self.path / UIDLIST, self.lock_timeout):
                yield
        finally:
            os.close(fd)

    # the UID list

    def _read_uidlist(self) -> tuple[int, int, str, dict[str, int]]:
        try:
            text = (self.path / UIDLIST).read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            return 0, 1, "", {}
        lines = text.splitlines()
        uidvalidity, uidnext, guid = 0, 1, ""
        if lines:
            for field in lines[0].split()[1:]:
                if field[:1] == "V" and field[1:].isdigit():
                    uidvalidity = int(field[1:])
                elif field[:1] == "N" and field[1:].isdigit():
                    uidnext = int(field[1:])
                elif field[:1] == "G":
                    guid = field[1:]
        uids: dict[str, int] = {}
        for line in lines[1:]:
            head, sep, name = line.partition(":")
            parts = head.split()
            if sep and parts and parts[0].isdigit():
                uids[name] = int(parts[0])
                uidnext = max(uidnext, int(parts[0]) + 1)
        return uidvalidity, uidnext, guid, uids

    def _write_uidlist(
        self, uidvalidity: int, uidnext: int, guid: str, uids: dict[str, int]
    ) -> None:
        lines = [f"3 V{uidvalidity} N{uidnext} G{guid}"]
        lines += [f"{uid} :{name}" for name, uid in sorted(uids.items(), key=lambda kv: kv[1])]
        tmp = self.path / f"{UIDLIST}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / UIDLIST)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)  # a full disk leaves no half-written copy behind
            raise
        fsync_dir(self.path)  # the rename itself must survive a crash, or UIDs could be reissued

    def _new_uidvalidity(self) -> int:
        """A UIDVALIDITY for a new UID list: the time, but above every one given out in this
        user's Maildir before, so a folder deleted and created again within a second gets
        a new one (RFC 3501 §2.3.1.1: UIDs of the old folder must not be reused)."""
        root = self.path.parent if (self.path / "maildirfolder").exists() else self.path
        fd = os.open(root / UIDVALIDITY_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = os.read(fd, 32).strip()
            value = max(int(time.time()), int(last) + 1 if last.isdigit() else 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % value)
            os.fsync(fd)
        finally:
            os.close(fd)
        return value

    def _stamps(self) -> Stamps:
        new, cur = os.stat(self.path / "new"), os.stat(self.path / "cur")
        try:
            uidlist = os.stat(self.path / UIDLIST)
            u = (uidlist.st_mtime_ns, uidlist.st_size, uidlist.st_ino)
        except FileNotFoundError:
            u = (0, 0, 0)
        return Stamps(new.st_mtime_ns, cur.st_mtime_ns, *u)

    @contextmanager
    def _indexed(self) -> Iterator[FolderIndex]:
        """The folder lock and the open index (created, or rebuilt when unreadable, with a
        mod-sequence counter above any the lost one gave out: RFC 7162 §3.1.2.1)."""
        with self._locked(), FolderIndex(self.path) as index:
            if index.created:
                fresh = not (self.path / UIDLIST).exists()
                index.start(1 if fresh else int(time.time() * 1000))
            elif index.stale_sizes:
                _snapshots.forget(self.path)  # sizes change without a MODSEQ
                self._measure_again(index)
                index.sizes_measured()
            yield index

    def _measure_again(self, index: FolderIndex) -> None:
        """Sizes indexed by an older version counted a bare LF as one octet: measure every
        message without Dovecot's C{,W=} again (once, at the upgrade)."""
        cur = self.path / "cur"
        for uid, base, filename, size, _, _ in index.messages():
            if dovecot_wire_size(base) is not None:
                continue
            try:
                measured = measure(cur / filename)
            except OSError:
                continue  # gone or unreadable: the next sync deals with it
            if measured != size:
                index.set_size(uid, measured)

    def scan(
        self, since: int | None = None, claim_recent: bool = False, provisional: bool = False
    ) -> ScanResult:
        """Bring the index up to date with the folder and return its messages.

        When C{new/}, C{cur/} and C{dovecot-uidlist} are unchanged since the last full sync
        (and that sync was not within two seconds of their mtimes), nothing is listed: the
        index answers.  Otherwise C{new/} mail moves to C{cur/}, unseen messages get UIDs in
        ascending order of (mtime, name), never reused, UIDVALIDITY is set at the first scan
        (RFC 3501 §2.3.1.1), the UID list is rewritten (tmp, fsync, rename) only when
        something changed, and every message added, renamed (flags) or removed since the
        index last saw it gets a new MODSEQ (RFC 7162 §3.1.1; removals are kept as expunged
        UIDs for QRESYNC).

        C{recent} lists the messages no session has claimed yet (RFC 3501 §2.3.2): those
        moved from C{new/} and those added by L{add} (APPEND, COPY); with C{claim_recent}
        (a SELECT, not EXAMINE or STATUS) the caller takes them, and no other session gets
        them as C{\\Recent}.

        On a full disk nothing needs to be written to read: the index works in memory, and
        messages whose new UID cannot be saved in C{dovecot-uidlist} are left out (a UID
        given now and lost could later name another message, RFC 3501 §2.3.1.1) until
        there is room again.

        @param since: a MODSEQ: return only messages changed after it, and the UIDs expunged
            after it (RFC 7162 §3.1.4.1, §3.2.5.2); C{None}: every message.
        @param provisional: list the messages left out for want of room in
            L{ScanResult.unsaved} (POP3 needs no UIDs).
        @raise MaildirError: when the folder does not exist.
        """
        if not self.exists():
            raise MaildirError("no such folder")
        unsaved: list[MessageEntry] = []
        with self._indexed() as index:
            if not index.clean(self._stamps()):
                index.add_recent(self._sync(index, unsaved).values())
            recent = frozenset(index.recent(claim_recent))
            if since is not None and since < index.floor:
                since = None  # changes before the rebuild are unknown: report everything
            expunged = tuple(index.expunged_since(since)) if since is not None else ()
            if since is None:
                snapshot = _snapshots.messages(self.path, index)
                messages = snapshot.messages
            else:
                snapshot = None
                messages = tuple(map(MessageEntry._make, index.messages(since)))
            result = ScanResult(
                index.uidvalidity,
                index.uidnext,
                messages,
                recent,
                index.highestmodseq,
                expunged,
                since is None,
                index.floor,
                tuple(unsaved) if provisional else (),
            )
            degraded = index.degraded
        if snapshot is not None and not degraded:  # committed: later scans may start from it
            _snapshots.keep(self.path, snapshot)
        return result

    def _sync(self, index: FolderIndex, unsaved: list[MessageEntry]) -> dict[str, int]:
        """The full sync of L{scan}, under the lock; returns {base: uid} moved from new/."""
        started = now_ns()
        uidvalidity, uidnext, guid, uids = self._read_uidlist()
        changed = False
        if uidvalidity == 0:
            uidvalidity, guid, changed = self._new_uidvalidity(), uuid.uuid4().hex, True
        if index.uidvalidity != uidvalidity:
            index.reset(uidvalidity)
        moved: set[str] = set()
        cur = self.path / "cur"
        for name in os.listdir(self.path / "new"):
            if name.startswith("."):
                continue
            base, flags = split_name(name)
            try:
                os.rename(self.path / "new" / name, cur / f"{base}:2,{flags}")
                moved.add(base)
            except FileNotFoundError:
                pass
            except OSError as e:
                if not is_enospc(e):
                    raise
        known = index.known()
        entries: dict[str, tuple[str, float, int]] = {}
        cur_dir = os.fspath(cur) + os.sep
        for name in os.listdir(cur):
            if name.startswith("."):
                continue
            base = split_name(name)[0]
            old = known.get(base)
            if old is not None:  # a rename keeps the mtime and the size
                entries[base] = (name, old.mtime, old.size)
                continue
            try:
                st = os.stat(cur_dir + name)
            except FileNotFoundError:
                continue
            size = dovecot_wire_size(base)
            if size is None:
                # written by another program, maybe with bare LF line ends: measure it once
                # (RFC 3501 §2.3.4: RFC822.SIZE counts the CRLF form that is sent)
                try:
                    size = measure(cur / name)
                except FileNotFoundError:
                    continue
            entries[base] = (name, st.st_mtime, size)
        saved_uidnext = uidnext
        fresh = sorted(set(entries) - set(uids), key=lambda b: (entries[b][1], arrival_key(b)))
        for base in fresh:
            uids[base] = uidnext
            uidnext += 1
            changed = True
        for base in set(uids) - set(entries):
            del uids[base]
            changed = True
        saved = True
        if changed:
            try:
                self._write_uidlist(uidvalidity, uidnext, guid, uids)
            except OSError as e:
                if not is_enospc(e):
                    raise
                # disk full: the new UIDs are not saved, so nobody may see them (they could
                # go to other messages later); reading and deleting the rest go on
                saved = False
                uidnext = saved_uidnext
                for base in fresh:
                    del uids[base]
                    name, mtime, size = entries.pop(base)
                    unsaved.append(MessageEntry(0, base, name, size, mtime))
        modseq = 0
        for base, old in known.items():
            if base not in entries or uids.get(base) != old.uid:
                modseq = modseq or index.next_modseq()
                index.expunge(old.uid, modseq)
        added = []
        for base, (name, mtime, size) in entries.items():
            old = known.get(base)
            if old is None or old.uid != uids[base]:
                modseq = modseq or index.next_modseq()
                added.append((uids[base], base, name, size, mtime, modseq))
            elif old.filename != name:
                modseq = modseq or index.next_modseq()
                index.rename(old.uid, name, modseq)
        index.insert_many(added)
        index.adopt_arrivals(time.time())
        index.put("uidnext", uidnext)
        if saved:
            index.record(self._stamps(), started)
        else:
            index.forget_stamps()  # list the folder again next time, and try to save then
        return {b: uids[b] for b in moved if b in uids}

    def _own_change(self, index: FolderIndex, change: Callable[[], None]) -> None:
        """Run C{change} (our own rename, unlink or link in C{cur/}); when the index was in
        step with the directories before it, it stays so, and no full sync is needed."""
        before = self._stamps()
        in_step = index.stamps() == before
        change()
        if in_step:
            index.record(self._stamps(), now_ns())
        else:
            index.forget_stamps()

    def changed_since(self, modseq: int) -> tuple[list[int], int]:
        """(UIDs expunged after C{modseq}, the index floor) for QRESYNC (RFC 7162 §3.2.5.2).

        When C{modseq} is below the floor (the index was rebuilt since), the expunges are
        unknown: the caller must treat every UID it does not see as vanished.
        """
        with self._indexed() as index:
            return index.expunged_since(modseq), index.floor

    def cached_parts(self, uids: list[int]) -> dict[int, CachedParts]:
        """The cached FETCH data (ENVELOPE, BODYSTRUCTURE, BODY) of C{uids}, by UID."""
        with FolderIndex(self.path) as index:
            return index.cached(uids)

    def cache_parts(self, parts: dict[tuple[int, str], CachedParts]) -> None:
        """Store computed FETCH data, keyed by (UID, base name); messages gone are skipped."""
        with FolderIndex(self.path) as index:
            for (uid, base), value in parts.items():
                index.cache(uid, base, value)

    def cached_headers(self) -> dict[int, tuple[str, bytes, str]]:
        """The header cache of the index (L{FolderIndex.headers}): {uid: (base, fields,
        decoded)}, read without taking the index's write lock."""
        return read_headers(self.path)

    def cache_headers(self, rows: list[tuple[int, str, bytes, str]]) -> None:
        """Keep (uid, base, fields, decoded) rows in the header cache
        (L{FolderIndex.cache_headers})."""
        if rows:
            with FolderIndex(self.path) as index:
                index.cache_headers(rows)

    def cached_sortkeys(self, columns: tuple[str, ...]) -> dict[int, tuple[Any, ...]]:
        """The SORT keys kept in the index (L{twistedmail.index.read_sortkeys}): {uid:
        (base, value per column)}, read without taking the index's write lock."""
        return read_sortkeys(self.path, columns)

    def cache_sortkeys(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Keep (uid, base, value per column) rows of parsed SORT keys
        (L{FolderIndex.cache_sortkeys})."""
        if rows:
            with FolderIndex(self.path) as index:
                index.cache_sortkeys(columns, rows)

    # keywords (dovecot-keywords)

    def _read_keywords(self) -> dict[int, str]:
        try:
            text = (self.path / KEYWORDS).read_text("utf-8", "surrogateescape")
        except FileNotFoundError:
            return {}
        out: dict[int, str] = {}
        for line in text.splitlines():
            index, sep, name = line.partition(" ")
            if sep and index.isdigit() and int(index) < MAX_KEYWORDS and name:
                out[int(index)] = name
        return out

    def keywords(self) -> dict[str, str]:
        """The folder's keyword map: {letter: name}, C{"a"} for index 0 (empty when the
        C{dovecot-keywords} file is absent)."""
        return {chr(ord("a") + i): name for i, name in self._read_keywords().items()}

    def keyword_letters(self, names: list[str] | tuple[str, ...]) -> str:
        """The info letters for keyword C{names}, giving each unknown valid name the lowest free
        index and rewriting C{dovecot-keywords} (tmp, fsync, rename) under the folder lock.

        Names compare case-insensitively (the first spelling is kept); names that are not
        L{is_keyword} atoms, or find all 26 letters taken, get no letter (Dovecot keeps those
        only in its index; this store has none, so they are not kept).
        @return: the letters, sorted, without duplicates.
        """
        wanted = [n for n in names if is_keyword(n)]
        if not wanted:
            return ""
        with self._locked():
            table = self._read_keywords()
            by_lower = {name.lower(): i for i, name in table.items()}
            letters = set()
            changed = False
            for name in wanted:
                index = by_lower.get(name.lower())
                if index is None:
                    free = [i for i in range(MAX_KEYWORDS) if i not in table]
                    if not free:
                        continue
                    index = free[0]
                    table[index] = name
                    by_lower[name.lower()] = index
                    changed = True
                letters.add(chr(ord("a") + index))
            if changed:
                tmp = self.path / f"{KEYWORDS}.tmp"
                with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write("".join(f"{i} {table[i]}\n" for i in sorted(table)))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path / KEYWORDS)
                fsync_dir(self.path)
        return "".join(sorted(letters))

    # messages

    def add(
        self,
        data: bytes,
        flags: str = "",
        mtime: float | None = None,
        headers: tuple[bytes, str] | None = None,
    ) -> int:
        """APPEND: store C{data} in C{cur/} with C{flags}, durably; return its new UID (and
        index it with a new MODSEQ, and C{headers}, when given, in the header cache: see
        L{FolderIndex.headers})."""
        if not self.exists():
            raise MaildirError("no such folder")
        with self._indexed() as index:
            in_step = index.stamps() == self._stamps()
            base = write_durably(self.path / "cur", data, flags, mtime)
            uidvalidity, uidnext, guid, uids = self._read_uidlist()
            if uidvalidity == 0:
                uidvalidity, guid = self._new_uidvalidity(), uuid.uuid4().hex
            uid = uids[base] = uidnext
            try:
                self._write_uidlist(uidvalidity, uidnext + 1, guid, uids)
            except BaseException:
                # no UID, no message: APPEND fails whole (nothing half-written is left)
                with suppress(OSError):
                    os.unlink(self.path / "cur" / f"{base}:2,{normalize_flags(flags)}")
                    fsync_dir(self.path / "cur")
                raise
            index.add_recent([uid])  # RFC 3501 §2.3.2: new in this mailbox
            if in_step and index.uidvalidity == uidvalidity:
                name = f"{base}:2,{normalize_flags(flags)}"
                st = os.stat(self.path / "cur" / name)
                modseq = index.next_modseq()
                size = wire_size(data)
                index.insert(IndexedMessage(uid, base, name, size, st.st_mtime, modseq))
                if headers is not None:
                    index.cache_headers([(uid, base, *headers)])
                index.put("uidnext", uidnext + 1)
                index.record(self._stamps(), now_ns())
            else:
                index.forget_stamps()  # the next scan lists the folder and indexes it
        return uid

    def locate(self, base: str) -> Path | None:
        """The current path of message C{base} (its flags may have changed), or C{None}."""
        cur = self.path / "cur"
        try:
            names = os.listdir(cur)
        except FileNotFoundError:
            return None
        for name in names:
            if split_name(name)[0] == base:
                return cur / name
        new = self.path / "new" / base
        return new if new.exists() else None

    def open(self, entry: MessageEntry) -> Path:
        """The path to read C{entry} from (relocated if another session renamed it).

        @raise MaildirError: when the message is gone (expunged elsewhere).
        """
        path = self.path / "cur" / entry.filename
        if path.exists():
            return path
        found = self.locate(entry.base)
        if found is None:
            raise MaildirError("message no longer exists")
        return found

    def read(self, entry: MessageEntry) -> bytes:
        """The whole message with CRLF line ends (RFC 5322 §2.1): as stored, or with every
        bare LF made CRLF (a file Dovecot or another program wrote with LF line ends).

        @raise MaildirError: when it is gone.
        """
        try:
            data = self.open(entry).read_bytes()
        except FileNotFoundError:
            raise MaildirError("message no longer exists") from None
        return to_crlf(data)

    def set_flags(self, entry: MessageEntry, letters: str) -> MessageEntry:
        """Rename the message so its info carries exactly C{letters}; return the new entry.

        @raise MaildirError: when the message is gone.
        """
        done, _ = self.set_flags_many([(entry, letters)])
        if not done:
            raise MaildirError("message no longer exists")
        return done[0]

    def set_flags_many(
        self, plan: list[tuple[MessageEntry, str]], unchangedsince: int | None = None
    ) -> tuple[list[MessageEntry], list[MessageEntry]]:
        """Rename each message so its info carries exactly its letters (L{change_flags_many}
        with a change that replaces every letter)."""
        return self.change_flags_many(
            [(entry, FlagChange(add=letters, remove=ALL_LETTERS)) for entry, letters in plan],
            unchangedsince,
        )

    def current_name(self, entry: MessageEntry) -> str:
        """The message's file name as it is now (its flags changed by anyone), e.g. for COPY.

        @raise MaildirError: when the message is gone.
        """
        return self.open(entry).name

    def change_flags_many(
        self, plan: list[tuple[MessageEntry, FlagChange]], unchangedsince: int | None = None
    ) -> tuple[list[MessageEntry], list[MessageEntry]]:
        """STORE: apply each L{FlagChange} to the message's flags as they are on disk now
        (not as the caller last saw them: DESIGN §6, a delta under the lock, so another
        session's, POP3's or a hand rename's change survives), all under one lock with one
        new MODSEQ (RFC 7162 §3.1.1).

        @param unchangedsince: RFC 7162 §3.1.3 UNCHANGEDSINCE: a message whose MODSEQ is now
            larger is left alone and returned as modified.
        @return: (the renamed or unchanged entries, with their file name and MODSEQ as they
            are now; the entries that failed the UNCHANGEDSINCE test).  Messages gone
            meanwhile are in neither.
        """
        done: list[MessageEntry] = []
        modified: list[MessageEntry] = []
        with self._indexed() as index:
            current = index.modseqs(e.uid for e, _ in plan)
            renamed: list[tuple[int, str]] = []
            listing: dict[str, str] | None = None

            def find(entry: MessageEntry) -> Path | None:
                nonlocal listing
                path = self.path / "cur" / entry.filename
                if os.path.lexists(path):
                    return path
                if listing is None:  # list cur/ once, not once per stale entry
                    listing = {split_name(n)[0]: n for n in os.listdir(self.path / "cur")}
                name = listing.get(entry.base)
                if name is not None and os.path.lexists(self.path / "cur" / name):
                    return self.path / "cur" / name
                return self.locate(entry.base)

            def rename_all() -> None:
                nonlocal listing
                for entry, change in plan:
                    seen = current.get(entry.uid, entry.modseq)
                    if unchangedsince is not None and seen > unchangedsince:
                        modified.append(entry._replace(modseq=seen))
                        continue
                    for _attempt in range(5):  # renamed by someone without our lock: retry
                        path = find(entry)
                        if path is None:
                            break
                        letters = change.apply(split_name(path.name)[1])
                        new_name = f"{entry.base}:2,{letters}"
                        if path.name == new_name and path.parent.name == "cur":
                            done.append(entry._replace(filename=new_name, modseq=seen))
                            break
                        try:
                            os.rename(path, self.path / "cur" / new_name)
                        except FileNotFoundError:
                            listing = None
                            continue
                        renamed.append((entry.uid, new_name))
                        done.append(entry._replace(filename=new_name))
                        break

            self._own_change(index, rename_all)
            if renamed:
                # the flags are the file names: durable before OK (the index may lag)
                fsync_dir_shared(self.path / "cur")
                modseq = index.next_modseq()
                names = dict(renamed)
                for uid, name in renamed:
                    if uid in current:
                        index.rename(uid, name, modseq)
                done = [e._replace(modseq=modseq) if e.uid in names else e for e in done]
        return done, modified

    def remove(self, entry: MessageEntry) -> None:
        """Delete the message file (EXPUNGE, POP3 QUIT); a missing file is not an error."""
        self.remove_many([entry])

    def remove_many(self, entries: list[MessageEntry], flagged: str = "") -> list[MessageEntry]:
        """Delete the message files under one lock, each expunge recorded with one new
        MODSEQ (RFC 7162 §3.2.5.2 keeps the UIDs for VANISHED); missing files are skipped.

        @param flagged: an info letter (C{"T"} for EXPUNGE, RFC 3501 §6.4.3): only messages
            whose file carries it now are removed (another session may have cleared it).
        @return: the entries removed.
        """
        removed: list[MessageEntry] = []
        with self._indexed() as index:
            indexed = index.modseqs(e.uid for e in entries)
            modseq = 0

            def unlink_all() -> None:
                nonlocal modseq
                for entry in entries:
                    try:
                        path = self.open(entry)
                        if flagged and flagged not in split_name(path.name)[1]:
                            continue
                        os.unlink(path)
                    except (FileNotFoundError, MaildirError):
                        continue
                    removed.append(entry)
                    if entry.uid in indexed:
                        modseq = modseq or index.next_modseq()
                        index.expunge(entry.uid, modseq)

            self._own_change(index, unlink_all)
            if removed:
                fsync_dir_shared(self.path / "cur")  # the expunge durable before OK
        return removed


def encode_folder_name(name: str) -> str:
    """IMAP folder name (text) -> the Maildir++ directory name C{.A.B} (mUTF-7 parts).

    @raise FolderNameError: for INBOX, empty parts, C{/}, NUL or control characters, or a
        part beginning with C{.} (RFC 3501 §5.1 leaves names to the server; these would
        escape the folder or confuse Maildir++).
    """
    parts = name.split(DELIMITER)
    if name.upper() == INBOX:
        raise FolderNameError("INBOX is not a subfolder")
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part:
            raise FolderNameError("invalid folder name")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise FolderNameError("invalid folder name")
        if len(part.encode("utf-8")) > 200:
            raise FolderNameError("folder name too long")
    encoded = name.encode("imap4-utf-7").decode("ascii")
    return "." + encoded


def decode_folder_name(dirname: str) -> str:
    """The inverse of L{encode_folder_name}.  @raise FolderNameError: for a bad encoding."""
    try:
        return dirname[1:].encode("ascii").decode("imap4-utf-7")
    except (UnicodeError, ValueError):
        raise FolderNameError("undecodable folder name") from None


class UserMaildir:
    """One user's folder tree: INBOX at C{root}, subfolders as Maildir++ siblings in it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        """Create the INBOX if missing (first delivery or first login)."""
        make_maildir(self.root)

    def folder_path(self, name: str) -> Path:
        """The directory of folder C{name} (INBOX is case-insensitive, RFC 3501 §5.1).

        @raise FolderNameError: see L{encode_folder_name}.
        """
        if name.upper() == INBOX:
            return self.root
        return self.root / encode_folder_name(name)

    def folder(self, name: str) -> Folder:
        return Folder(self.folder_path(name))

    def folders(self) -> list[str]:
        """Every existing folder name, INBOX first, then subfolders sorted."""
        names = []
        try:
            dirs = os.listdir(self.root)
        except FileNotFoundError:
            return [INBOX]
        for d in dirs:
            if d.startswith(".") and d not in (".", "..") and (self.root / d / "cur").is_dir():
                try:
                    names.append(decode_folder_name(d))
                except FolderNameError:
                    continue
        return [INBOX] + sorted(names)

    def create(self, name: str) -> None:
        """Create folder C{name} (RFC 3501 §6.3.3). @raise MaildirError: if it exists."""
        path = self.folder_path(name)
        if path == self.root or (path / "cur").is_dir():
            raise MaildirError("mailbox already exists")
        self.ensure()
        make_maildir(path, folder=True)
        fsync_dir(self.root)

    def delete(self, name: str) -> None:
        """Delete folder C{name} and its messages (RFC 3501 §6.3.4); its children and its
        subscription stay.

        @raise MaildirError: for INBOX or a missing folder.
        """
        path = self.folder_path(name)
        if path == self.root:
            raise MaildirError("INBOX cannot be deleted")
        if not (path / "cur").is_dir():
            raise MaildirError("no such mailbox")
        trash = self.root / f".DELETED-{uuid.uuid4().hex}"
        os.rename(path, trash)  # atomic: the folder vanishes at once, then is removed
        shutil.rmtree(trash, ignore_errors=True)
        # its subscription stays: RFC 3501 §6.3.6, a server MUST NOT unilaterally remove a
        # name from the subscription list (LIST (SUBSCRIBED) shows it \NonExistent)

    def rename(self, old: str, new: str) -> None:
        """Rename C{old} and its children to C{new} (RFC 3501 §6.3.5).

        Renaming INBOX moves its messages into the new folder and leaves INBOX empty.
        @raise MaildirError: for a missing source or an existing target.
        """
        src, dst = self.folder_path(old), self.folder_path(new)
        if dst == self.root or (dst / "cur").is_dir():
            raise MaildirError("mailbox already exists")
        if src == self.root:
            make_maildir(dst, folder=True)
            for sub in ("cur", "new"):
                for name in os.listdir(src / sub):
                    os.rename(src / sub / name, dst / sub / name)
            fsync_dir(dst / "cur")
            return
        if not (src / "cur").is_dir():
            raise MaildirError("no such mailbox")
        children = [d for d in os.listdir(self.root) if d.startswith(src.name + DELIMITER)]
        os.rename(src, dst)
        for child in children:
            os.rename(self.root / child, self.root / (dst.name + child[len(src.name) :]))
        fsync_dir(self.root)

    # subscriptions (RFC 3501 §6.3.6): one name per line

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS).read_text("utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line and not line.startswith("V\t")]

    def _write_subscriptions(self, names: list[str]) -> None:
        self.ensure()
        tmp = self.root / f"{SUBSCRIPTIONS}.tmp"
        tmp.write_text("".join(n + "\n" for n in sorted(set(names))), "utf-8")
        os.replace(tmp, self.root / SUBSCRIPTIONS)

    @contextmanager
    def _subscriptions_locked(self) -> Iterator[None]:
        """Two sessions changing subscriptions at once must not lose one's change (the file
        is read, changed and written whole): our C{flock}, and Dovecot's dotlock
        C{subscriptions.lock} (stale after 30 s, its SUBSCRIPTION_FILE_CHANGE_TIMEOUT)."""
        self.ensure()
        fd = os.open(self.root / f"twistedmail-{SUBSCRIPTIONS}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with dotlock(self.root / f"{SUBSCRIPTIONS}.lock", self.root / SUBSCRIPTIONS, stale=30):
                yield
        finally:
            os.close(fd)

    def subscribe(self, name: str) -> None:
        with self._subscriptions_locked():
            subs = self.subscriptions()
            if name not in subs:
                self._write_subscriptions(subs + [name])

    def unsubscribe(self, name: str) -> None:
        if not (self.root / SUBSCRIPTIONS).exists():
            return
        with self._subscriptions_locked():
            subs = self.subscriptions()
            if name in subs:
                self._write_subscriptions([s for s in subs if s != name])


TMP_MAX_AGE = 36 * 3600.0
"""Seconds after which a file in C{tmp/} is a crash's leftover (the Maildir spec: "A program
should remove any file in tmp that hasn't been accessed in 36 hours"; Dovecot does the same)."""


def clean_tmp(mail_dir: Path, now: float | None = None, max_age: float = TMP_MAX_AGE) -> int:
    """Remove the files in C{tmp/} of every folder of every user under C{mail_dir}
    (C{DOMAIN/LOCALPART/[.FOLDER/]tmp/}) that nobody accessed, changed or linked for
    C{max_age} seconds.  Blocking (run it in a thread); a folder with an empty C{tmp/} costs
    one directory read.

    @return: how many files were removed.
    """
    cutoff = (time.time() if now is None else now) - max_age
    removed = 0

    def dirs(path: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as it:
                return [e for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    for domain in dirs(mail_dir):
        for user in dirs(Path(domain.path)):
            folders = [Path(user.path)]
            folders += [Path(d.path) for d in dirs(Path(user.path)) if d.name.startswith(".")]
            for folder in folders:
                try:
                    with os.scandir(folder / "tmp") as it:
                        entries = [e for e in it if e.is_file(follow_symlinks=False)]
                except OSError:
                    continue
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if max(st.st_atime, st.st_mtime, st.st_ctime) < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                    except OSError:
                        continue
    return removed


def mailbox_root(mail_dir: Path, address: str) -> Path:
    """C{DATA_DIR/mail/DOMAIN/LOCALPART}, lower-cased (DESIGN §3).

    @raise MaildirError: when either part could escape the mail directory.
    """
    local, _, domain = address.lower().rpartition("@")
    for part in (local, domain):
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise MaildirError("invalid address for a mailbox")
    return mail_dir / domain / local


class ChangeNotifier:
    """In-process notice that a folder changed (delivery, APPEND, flags, expunge).

    IMAP sessions subscribe per folder path to push EXISTS/EXPUNGE/FETCH while IDLE
    (RFC 2177); the notifier is called on the reactor thread.
    """

    def __init__(self) -> None:
        self._listeners: dict[Path, list[Callable[[], None]]] = {}

    def subscribe(self, path: Path, callback: Callable[[], None]) -> None:
        self._listeners.setdefault(path, []).append(callback)

    def unsubscribe(self, path: Path, callback: Callable[[], None]) -> None:
        callbacks = self._listeners.get(path, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._listeners.pop(path, None)

    def changed(self, path: Path) -> None:
        for callback in list(self._listeners.get(path, [])):
            callback()

    def subscriptions(self) -> int:
        """How many callbacks are subscribed (open selected folders; for the control
        socket's C{connections}: it returns to 0 when every session has ended)."""
        return sum(len(callbacks) for callbacks in self._listeners.values())


@attrs.frozen
class StorageReserve:
    """Free space kept on the file system of C{path} for reading and deleting mail (Postfix's
    C{queue_minfree}): new mail is taken only while C{min_free} octets and the message fit.

    @ivar min_free: octets; 0 keeps no reserve.
    """

    path: Path
    min_free: int

    def has_room(self, size: int = 0) -> bool:
        """Whether C{size} more octets fit above the reserve (one C{statvfs}, cheap)."""
        if self.min_free <= 0:
            return True
        try:
            st = os.statvfs(self.path)
        except OSError:
            return True  # cannot tell: let the write itself fail
        return st.f_bavail * st.f_frsize >= self.min_free + size


def is_enospc(error: BaseException) -> bool:
    """Whether C{error} is a full disk or quota (answered as a temporary failure)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
