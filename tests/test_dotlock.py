"""Dovecot's dotlock of dovecot-uidlist (file-dotlock.c semantics): O_EXCL, <pid>:<host>,
stale when its owner died or nothing changed for two minutes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial import unittest

from twistedmail.maildir import (
    UIDLIST_LOCK,
    Folder,
    FolderLockedError,
    dotlock,
    make_maildir,
    write_durably,
)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class DotlockTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.lock = self.dir / "dovecot-uidlist.lock"
        self.protected = self.dir / "dovecot-uidlist"
        self.protected.write_text("3 V1 N1 G\n")

    def age(self, path: Path, seconds: float) -> None:
        t = time.time() - seconds
        os.utime(path, (t, t))

    def test_lock_file_holds_pid_and_host_and_goes_away(self) -> None:
        """The lock is created holding <pid>:<host> and removed on release."""
        with dotlock(self.lock, self.protected):
            self.assertEqual(self.lock.read_text(), f"{os.getpid()}:{socket.gethostname()}")
        self.assertFalse(self.lock.exists())

    def test_live_owner_blocks(self) -> None:
        """A lock of a live process is not taken over: the caller gives up (timeout 0)."""
        self.lock.write_text(f"{os.getppid()}:{socket.gethostname()}")
        self.age(self.lock, 60)
        with self.assertRaises(FolderLockedError):
            with dotlock(self.lock, self.protected, timeout=0):
                pass
        self.assertTrue(self.lock.exists())

    def test_dead_owner_is_stale(self) -> None:
        """A lock older than 2 s whose owner on this host is gone is replaced."""
        self.lock.write_text(f"{dead_pid()}:{socket.gethostname()}")
        self.age(self.lock, 5)
        with dotlock(self.lock, self.protected, timeout=0):
            self.assertEqual(self.lock.read_text().split(":")[0], str(os.getpid()))

    def test_unchanged_for_stale_timeout(self) -> None:
        """An empty (or another host's) lock is stale once neither it nor the UID list
        changed for the stale timeout."""
        self.lock.write_text("1:elsewhere.example")
        self.age(self.lock, 200)
        self.age(self.protected, 200)
        with dotlock(self.lock, self.protected, timeout=0):
            pass
        self.assertFalse(self.lock.exists())

    def test_recent_uidlist_change_keeps_lock(self) -> None:
        """The UID list changing keeps an old lock of another host alive."""
        self.lock.write_text("1:elsewhere.example")
        self.age(self.lock, 200)
        with self.assertRaises(FolderLockedError):
            with dotlock(self.lock, self.protected, timeout=0):
                pass

    def test_someone_elses_lock_is_not_removed(self) -> None:
        """A lock taken over while we held it (we were thought stale) stays."""
        with dotlock(self.lock, self.protected):
            os.unlink(self.lock)
            self.lock.write_text("1:elsewhere.example")
        self.assertEqual(self.lock.read_text(), "1:elsewhere.example")

    def test_folder_scan_waits_for_dovecots_lock(self) -> None:
        """Folder operations take dovecot-uidlist.lock: with Dovecot holding it, no UID is
        handed out (the scan gives up instead of racing)."""
        root = self.dir / "mail"
        make_maildir(root)
        write_durably(root / "new", b"Subject: x\r\n\r\nx\r\n")
        folder = Folder(root)
        (root / UIDLIST_LOCK).write_text(f"{os.getppid()}:{socket.gethostname()}")
        folder.lock_timeout = 0.0
        with self.assertRaises(FolderLockedError):
            folder.scan()
        self.assertFalse((root / "dovecot-uidlist").exists())
        os.unlink(root / UIDLIST_LOCK)
        self.assertEqual([e.uid for e in folder.scan().messages], [1])
