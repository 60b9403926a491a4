"""Durable writes: a message written to C{tmp/}, fsynced, linked into C{new/} or C{cur/} and
the directory fsynced (shared by concurrent deliveries) before any C{250} or C{OK}; the
free-space reserve and the full-disk test."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import attrs

from twistedmail.fsync import fsync_dir, write_file
from twistedmail.index import (
    remember_arrival,
)
from twistedmail.maildir.names import normalize_flags, to_crlf, unique_name, wire_size


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


def fsync_dir_shared(path: str | os.PathLike[str]) -> None:
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


def write_durably(
    directory: str | os.PathLike[str], data: bytes, flags: str = "", mtime: float | None = None
) -> str:
    """Store C{data} as a new message file in C{directory} (C{new} or C{cur}), durably.

    Writes C{tmp/<name>}, fsyncs it, links it to C{directory/<name>[:2,flags]} (C{link}
    fails rather than overwrite: a clash picks a new name), unlinks the tmp file and fsyncs
    C{directory}.  C{mtime}, when given, becomes the file's modification time (the IMAP
    INTERNALDATE, as Dovecot keeps it).  The paths are text, not C{Path} objects: pathlib
    building, parsing and formatting them was 7% of the CPU of a delivery (issue 10).

    @return: the base name (without C{:2,} info).
    @raise OSError: when the disk refuses; nothing is left in C{new}/C{cur} then.
    """
    target = os.fspath(directory)
    folder, kind = os.path.split(target.rstrip("/") or "/")
    tmp_dir = os.path.join(folder, "tmp")
    info = ":2," + normalize_flags(flags) if kind == "cur" else ""
    while True:
        base = unique_name(len(data), wire=wire_size(data))  # the index reads ,W=
        tmp_path = os.path.join(tmp_dir, base)
        try:
            write_file(tmp_path, data)
        except FileExistsError:  # another process's tmp file: not ours to remove
            continue
        except BaseException:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
            raise
        try:
            if mtime is not None:
                os.utime(tmp_path, (mtime, mtime))
            try:
                os.link(tmp_path, os.path.join(target, base + info))
            except FileExistsError:
                continue
        finally:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
        fsync_dir_shared(target)  # one fsync for the deliveries linked meanwhile
        if kind == "new":  # a delivery: keep its header fields for SEARCH
            remember_arrival(folder, base, to_crlf(data))
        return base


RESERVE_RECHECK = 1.0
"""Seconds a C{statvfs} figure is reused for (L{StorageReserve.has_room}), when far above the
reserve."""
RESERVE_MARGIN = 1 << 30
"""Octets above the reserve and the message that a reused figure must show (1 GiB): nearer
the reserve, every check asks the file system."""


@attrs.define(eq=False)
class StorageReserve:
    """Free space kept on the file system of C{path} for reading and deleting mail (Postfix's
    C{queue_minfree}): new mail is taken only while C{min_free} octets and the message fit.

    @ivar min_free: octets; 0 keeps no reserve.
    @ivar clock: seconds (the reactor's C{seconds}); when given, a figure more than
        L{RESERVE_MARGIN} above the reserve is reused for L{RESERVE_RECHECK} seconds (the
        checks run at MAIL, RCPT and after DATA: three C{statvfs} a message).  It is a
        reserve, not an exact figure: nearer to it, every check asks the file system.
    """

    path: Path
    min_free: int
    clock: Callable[[], float] | None = None
    _known: tuple[float, int] | None = attrs.field(default=None, init=False, repr=False)

    def has_room(self, size: int = 0) -> bool:
        """Whether C{size} more octets fit above the reserve (one C{statvfs}, cheap, or
        none: see C{clock})."""
        if self.min_free <= 0:
            return True
        clock, known = self.clock, self._known
        if clock is not None and known is not None:
            age = clock() - known[0]
            if 0 <= age < RESERVE_RECHECK and known[1] >= self.min_free + size + RESERVE_MARGIN:
                return True
        try:
            st = os.statvfs(self.path)
        except OSError:
            return True  # cannot tell: let the write itself fail
        free = st.f_bavail * st.f_frsize
        self._known = (clock(), free) if clock is not None else None
        return free >= self.min_free + size


def is_enospc(error: BaseException) -> bool:
    """Whether C{error} is a full disk or quota (answered as a temporary failure)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
