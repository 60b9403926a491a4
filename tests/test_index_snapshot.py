"""The per-process snapshots of folder message lists (twistedmail.maildir._Snapshots): a
scan of a folder whose index did not change reuses the last list, one that changed patches
it from the rows changed and the UIDs expunged since; either way the list equals what a
scan that reads every row returns."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from twistedmail import maildir
from twistedmail.index import INDEX_FILE
from twistedmail.maildir import Folder, make_maildir, write_durably

T1 = 1_700_000_000.0


def message(n: int) -> bytes:
    return b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (n, n)


class SnapshotTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        for n in range(1, 6):
            write_durably(self.root / "cur", message(n), "S" if n % 2 else "", T1 + n)
        self.folder = Folder(self.root)
        self.addCleanup(maildir._snapshots.forget, self.root)

    def fresh(self) -> maildir.ScanResult:
        """A scan that reads every row (no snapshot to start from)."""
        maildir._snapshots.forget(self.root)
        return self.folder.scan()

    def test_unchanged_folder_reuses_the_list(self) -> None:
        """A second scan of an unchanged folder returns the very same entries."""
        first = self.folder.scan()
        self.assertIs(self.folder.scan().messages, first.messages)

    def test_changes_are_patched_in(self) -> None:
        """Flags changed, a message removed, one appended and one delivered to new/ (by
        another Folder object, as another session would): the patched list equals a full
        read, entry for entry (UID, name, size, date, MODSEQ)."""
        before = self.folder.scan().messages
        other = Folder(self.root)
        other.set_flags(before[1], "FS")
        other.remove_many([before[0], before[3]])
        other.add(message(6), "D", T1 + 6)
        write_durably(self.root / "new", message(7))
        patched = self.folder.scan()
        self.assertEqual(patched.messages, self.fresh().messages)
        self.assertEqual([e.uid for e in patched.messages], [2, 3, 5, 6, 7])
        self.assertEqual(patched.messages[0].flags, "FS")

    def test_hand_rename_is_patched_in(self) -> None:
        """A flag changed by renaming the file behind the server's back (the next full sync
        gives it a MODSEQ) shows in the patched list."""
        first = self.folder.scan().messages
        cur = self.root / "cur"
        os.rename(cur / first[2].filename, cur / (first[2].base + ":2,T"))
        os.utime(cur, ns=(0, 0))  # the directory stamp differs: a full sync
        patched = self.folder.scan().messages
        self.assertEqual(patched[2].flags, "T")
        self.assertEqual(patched, self.fresh().messages)

    def test_rebuilt_index_reads_everything(self) -> None:
        """An index deleted (lost in a crash) and rebuilt has a new floor: the snapshot of
        the old one is not patched, the list is read whole."""
        first = self.folder.scan().messages
        for leftover in self.root.glob(INDEX_FILE + "*"):
            leftover.unlink()
        again = self.folder.scan()
        self.assertIsNot(again.messages, first)
        self.assertEqual([e[:4] for e in again.messages], [e[:4] for e in first])
        self.assertEqual(again.messages, self.fresh().messages)
        # (the UID list names every file: their dates are read when asked)
        self.assertEqual(self.folder.dates(again.messages), {e.base: e.mtime for e in first})
