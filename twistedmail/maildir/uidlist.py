"""Dovecot's C{dovecot-uidlist} file: the folder's UIDVALIDITY, UIDNEXT and one UID per message
file, read, written whole and added to one record at a time (RFC 3501 §2.3.1.1).

The format is Dovecot's version 3 (C{3 V<uidvalidity> N<uidnext> G<guid>}, then
C{<uid> :<base name>} per line), so Dovecot serves the same folder with the same UIDs.  The
caller holds the folder lock (L{twistedmail.maildir.folder.Folder}); these functions only
know the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from contextlib import suppress
from pathlib import Path

from twistedmail.maildir.durable import fsync_dir
from twistedmail.maildir.names import UIDLIST, UIDVALIDITY_FILE

_RECORD = re.compile(r"^([0-9]+) :(.*)$", re.MULTILINE)
"""A plain record: the UID, a space, a colon, the base name (L{read}'s fast path)."""


def read(folder: Path) -> tuple[int, int, str, dict[str, int]]:
    """(UIDVALIDITY, UIDNEXT, GUID, {base: UID}) of the folder's C{dovecot-uidlist}.

    A last record without its newline was cut short by a crash while it was added
    (L{append}: never made durable, so no APPEND answered OK with its UID) and is not a
    record: what is left of its name could be another message's base name.  Dovecot's
    reader skips an unterminated line too; the next writer writes the list whole without it
    (L{append} declines to continue a torn line)."""
    try:
        text = (folder / UIDLIST).read_text("utf-8", "surrogateescape")
    except FileNotFoundError:
        return 0, 1, "", {}
    lines = text.splitlines()
    if len(lines) > 1 and not text.endswith("\n"):
        lines.pop()  # the torn record (a header alone is kept: its UIDVALIDITY counts)
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
    records = lines[1:]
    if "\r" not in text:
        # the usual list, every record C{<uid> :<name>}: one regular expression over the
        # records instead of a few string methods per line in Python
        pairs = _RECORD.findall("\n".join(records))
        if len(pairs) == len(records):  # (else a line of another form: the loop below)
            if pairs:
                numbers = list(map(int, [uid for uid, _ in pairs]))
                uids = dict(zip([name for _, name in pairs], numbers, strict=True))
                uidnext = max(uidnext, max(numbers) + 1)
            return uidvalidity, uidnext, guid, uids
    for line in records:
        head, sep, name = line.partition(":")
        parts = head.split()
        if sep and parts and parts[0].isdigit():
            uids[name] = int(parts[0])
            uidnext = max(uidnext, int(parts[0]) + 1)
    return uidvalidity, uidnext, guid, uids


def write(folder: Path, uidvalidity: int, uidnext: int, guid: str, uids: dict[str, int]) -> None:
    """Write the list whole: a temporary file, fsync, rename, the directory fsynced (the
    rename itself must survive a crash, or UIDs could be given out again)."""
    lines = [f"3 V{uidvalidity} N{uidnext} G{guid}"]
    lines += [f"{uid} :{name}" for name, uid in sorted(uids.items(), key=lambda kv: kv[1])]
    tmp = folder / f"{UIDLIST}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / UIDLIST)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)  # a full disk leaves no half-written copy behind
        raise
    fsync_dir(folder)


def append(folder: Path, uid: int, base: str) -> bool:
    """Add the record C{<uid> :<base>} at the end of C{dovecot-uidlist}, durably, as Dovecot
    adds records (the header's C{N} is left behind: readers take the last UID + 1, L{read});
    the caller holds the folder lock and knows C{uid} is above every UID in the list.  One
    line and an fsync instead of the whole list written again, renamed and the directory
    fsynced (RFC 3501 §2.3.1.1: the UID is on disk before APPEND's OK either way).

    @return: C{False}, with nothing written, when the list is missing or its last line was
        cut short (a crash while one was added): the caller writes it whole."""
    try:
        fd = os.open(folder / UIDLIST, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        if not size or os.pread(fd, 1, size - 1) != b"\n":
            return False
        line = f"{uid} :{base}\n".encode("utf-8", "surrogateescape")
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.EIO, "short write to dovecot-uidlist")
            os.fsync(fd)
        except BaseException:
            with suppress(OSError):
                os.ftruncate(fd, size)  # no torn record left behind (a full disk)
            raise
        return True
    finally:
        os.close(fd)


def new_uidvalidity(folder: Path) -> int:
    """A UIDVALIDITY for a new UID list: the time, but above every one given out in this
    user's Maildir before, so a folder deleted and created again within a second gets a new
    one (RFC 3501 §2.3.1.1: UIDs of the old folder must not be reused)."""
    root = folder.parent if (folder / "maildirfolder").exists() else folder
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
