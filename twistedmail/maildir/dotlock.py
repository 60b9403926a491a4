"""Dovecot's dotlock on C{dovecot-uidlist} (file-dotlock.c with dotlock_use_excl): taken
beside our C{flock} so Dovecot and doveadm see the folder locked too."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twistedmail.maildir.durable import is_enospc
from twistedmail.maildir.names import MaildirError

DOTLOCK_STALE = 120.0
"""Seconds without a change of the lock or of C{dovecot-uidlist} after which a dotlock of an
unknown owner is stale (Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT)."""
DOTLOCK_TIMEOUT = DOTLOCK_STALE + 2
"""Seconds to wait for the dotlock before giving up (Dovecot's uidlist lock timeout)."""
DOTLOCK_PID_CHECK = 2.0
"""A dotlock younger than this is not checked for a dead owner (Dovecot's STALE_PID_CHECK_SECS)."""


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
