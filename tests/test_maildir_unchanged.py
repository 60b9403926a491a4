"""The rescan of an unchanged folder (twistedmail.maildir.Folder._unchanged): a delta scan
of a folder whose C{new/}, C{cur/} and C{dovecot-uidlist} still carry the stamps the
process's snapshot was in step with, read outside the "dirty" window (twistedmail.index
DIRTY_NS, Dovecot's rule), takes no lock and lists nothing; every change to the Maildir,
by hand, by another program or by us, even one within the same mtime tick, is still seen.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from twistedmail import maildir
from twistedmail.index import INDEX_FILE
from twistedmail.maildir import Folder, keywordfile, make_maildir, snapshot, write_durably
from twistedmail.maildir import folder as folder_module

T1 = 1_700_000_000.0


def message(n: int) -> bytes:
    return b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (n, n)


class CountingFolder(Folder):
    """A folder that counts how often it takes its lock."""

    locks = 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.locks += 1
        with super()._locked():
            yield


class UnchangedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        for n in range(1, 4):
            write_durably(self.root / "cur", message(n), "S" if n % 2 else "", T1 + n)
        self.folder = CountingFolder(self.root)
        self.addCleanup(maildir._snapshots.forget, self.root)
        self.listings = 0
        real = os.listdir

        def listdir(path: Any = ".") -> Any:
            self.listings += 1
            return real(path)

        self.patch(os, "listdir", listdir)

    def age(self) -> None:
        """Set the directories and the UID list back in time, past the dirty window."""
        old = (T1, T1)
        for name in ("new", "cur", maildir.UIDLIST):
            os.utime(self.root / name, old)

    def stamps(self) -> tuple[int, int]:
        return os.stat(self.root / "new").st_mtime_ns, os.stat(self.root / "cur").st_mtime_ns

    def restore(self, stamps: tuple[int, int]) -> None:
        """Put the mtimes of new/ and cur/ back: a change within the same mtime tick."""
        os.utime(self.root / "new", ns=(stamps[0], stamps[0]))
        os.utime(self.root / "cur", ns=(stamps[1], stamps[1]))

    def settled(self) -> maildir.ScanResult:
        """A folder synced and verified with stamps older than the dirty window."""
        self.folder.scan()
        self.age()
        first = self.folder.scan()  # the stamps changed: synced again, now clean
        return first

    def test_unchanged_folder_takes_no_lock_and_lists_nothing(self) -> None:
        """The rescan of an unchanged, settled folder takes no lock and lists no directory."""
        first = self.settled()
        locks, listings = self.folder.locks, self.listings
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual(
            (self.folder.locks, self.listings, again.messages, again.expunged),
            (locks, listings, (), ()),
        )
        self.assertEqual(
            (again.uidvalidity, again.uidnext, again.highestmodseq, again.floor, again.full),
            (first.uidvalidity, first.uidnext, first.highestmodseq, first.floor, False),
        )

    def test_dirty_folder_is_listed_without_the_lock(self) -> None:
        """Within the dirty window the rescan lists the directories, still without the lock."""
        first = self.folder.scan()
        self.folder.scan(first.highestmodseq)  # the first delta scan keeps the snapshot
        locks, listings = self.folder.locks, self.listings
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual((self.folder.locks, again.messages), (locks, ()))
        self.assertEqual(self.listings, listings + 2)

    def changed_file(self, result: maildir.ScanResult, uid: int) -> maildir.MessageEntry:
        (entry,) = [e for e in result.messages if e.uid == uid]
        return entry

    def test_hand_rename_in_cur_is_seen(self) -> None:
        """A flag set by hand (a rename in cur/) of a settled folder is seen."""
        first = self.settled()
        entry = self.changed_file(first, 2)
        os.rename(self.root / "cur" / entry.filename, self.root / "cur" / f"{entry.base}:2,F")
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual([(e.uid, e.filename) for e in again.messages], [(2, f"{entry.base}:2,F")])

    def test_rename_within_the_same_mtime_tick_is_seen(self) -> None:
        """A rename whose cur/ mtime equals the one the last scan saw (same tick) is seen."""
        first = self.folder.scan()
        self.folder.scan(first.highestmodseq)
        before = self.stamps()
        entry = self.changed_file(first, 1)
        os.rename(self.root / "cur" / entry.filename, self.root / "cur" / f"{entry.base}:2,RS")
        self.restore(before)
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual([(e.uid, e.filename) for e in again.messages], [(1, f"{entry.base}:2,RS")])

    def test_new_mail_within_the_same_mtime_tick_is_seen(self) -> None:
        """A file dropped into new/ within the same mtime tick gets the next UID."""
        first = self.folder.scan()
        self.folder.scan(first.highestmodseq)
        before = self.stamps()
        base = write_durably(self.root / "new", message(9))
        self.restore(before)
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual([(e.uid, e.base) for e in again.messages], [(4, base)])

    def test_new_mail_in_a_settled_folder_is_seen(self) -> None:
        """A file dropped into new/ of a settled folder gets the next UID."""
        first = self.settled()
        base = write_durably(self.root / "new", message(9))
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual([(e.uid, e.base) for e in again.messages], [(4, base)])

    def test_removed_file_is_seen(self) -> None:
        """A message file deleted by hand, within the same mtime tick, is expunged."""
        first = self.folder.scan()
        self.folder.scan(first.highestmodseq)
        before = self.stamps()
        os.unlink(self.root / "cur" / self.changed_file(first, 3).filename)
        self.restore(before)
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual((again.messages, again.expunged), ((), (3,)))

    def test_removed_file_in_a_settled_folder_is_seen(self) -> None:
        """A message file deleted by hand from a settled folder is expunged."""
        first = self.settled()
        os.unlink(self.root / "cur" / self.changed_file(first, 3).filename)
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual((again.messages, again.expunged), ((), (3,)))

    def test_flag_set_and_cleared_again_gets_its_modseq(self) -> None:
        """A flag set and cleared again (file names as before, same mtime tick) still shows
        the message changed, with its new MODSEQ (RFC 7162 §3.1.1)."""
        first = self.folder.scan()
        self.folder.scan(first.highestmodseq)
        before = self.stamps()
        other = Folder(self.root)  # another session, or a process with its own index rows
        entry = self.changed_file(first, 2)
        flagged = other.set_flags(entry, "F")
        cleared = other.set_flags(flagged, "")
        self.restore(before)
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual(
            [(e.uid, e.filename, e.modseq) for e in again.messages],
            [(2, entry.filename, cleared.modseq)],
        )
        self.assertGreater(cleared.modseq, first.highestmodseq)

    def test_new_uid_list_is_seen(self) -> None:
        """A UID list rewritten by another program (new UIDVALIDITY) is synced at once."""
        first = self.settled()
        (self.root / maildir.UIDLIST).write_text("3 V7 N1 Gx\n")
        again = self.folder.scan(first.highestmodseq)
        self.assertEqual(again.uidvalidity, 7)


class FollowedTests(unittest.TestCase):
    """Our own changes (STORE, EXPUNGE, APPEND by a session of this process) bring the
    process's snapshot along, so the other sessions' rescans get them without the lock,
    exactly as the index has them."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        for n in range(1, 4):
            write_durably(self.root / "cur", message(n), "", T1 + n)
        self.folder = CountingFolder(self.root)  # the session that rescans
        self.other = Folder(self.root)  # the session that changes the folder
        self.addCleanup(maildir._snapshots.forget, self.root)
        self.first = self.folder.scan()
        self.folder.scan(self.first.highestmodseq)  # a delta scan keeps the snapshot

    def unlocked(self, since: int | None, claim: bool = False) -> maildir.ScanResult:
        """A scan that must not take the lock."""
        locks = self.folder.locks
        result = self.folder.scan(since, claim)
        self.assertEqual(self.folder.locks, locks)
        return result

    def truth(self, since: int | None) -> maildir.ScanResult:
        """What a scan under the lock, from the index, says."""
        maildir._snapshots.forget(self.root)
        return Folder(self.root).scan(since)

    def assertSameScan(self, got: maildir.ScanResult, since: int | None) -> None:
        want = self.truth(since)
        self.assertEqual(
            (got.messages, got.expunged, got.highestmodseq, got.uidnext, got.uidvalidity),
            (want.messages, want.expunged, want.highestmodseq, want.uidnext, want.uidvalidity),
        )

    def test_flag_change_reaches_other_sessions_without_the_lock(self) -> None:
        """A STORE's rename is in the next delta scan, with its MODSEQ, taken unlocked."""
        entry = self.first.messages[1]
        (changed,), _ = self.other.change_flags_many([(entry, maildir.FlagChange(add="S"))])
        got = self.unlocked(self.first.highestmodseq)
        self.assertEqual(got.messages, (changed,))
        self.assertSameScan(got, self.first.highestmodseq)

    def test_expunge_reaches_other_sessions_without_the_lock(self) -> None:
        """An EXPUNGE is in the next delta scan's expunged UIDs, taken unlocked."""
        self.other.remove_many([self.first.messages[0], self.first.messages[2]])
        got = self.unlocked(self.first.highestmodseq)
        self.assertEqual((got.messages, got.expunged), ((), (1, 3)))
        self.assertSameScan(got, self.first.highestmodseq)

    def test_append_reaches_examine_and_status_without_the_lock(self) -> None:
        """An APPENDed message is in the next delta and full scans that claim no \\Recent
        (EXAMINE, STATUS: RFC 3501 §2.3.2), as recent."""
        _, uid = self.other.add(message(7))
        got = self.unlocked(self.first.highestmodseq)
        status = self.unlocked(None)
        self.assertEqual(([e.uid for e in got.messages], got.recent), ([uid], {uid}))
        self.assertEqual(([e.uid for e in status.messages], status.recent), ([1, 2, 3, 4], {4}))
        self.assertSameScan(got, self.first.highestmodseq)
        self.assertSameScan(status, None)

    def test_recent_is_claimed_once_without_the_lock(self) -> None:
        """A SELECTed session claims the new \\Recent message (an index write, no folder
        lock); the next session's rescan gets the message, not recent (RFC 3501 §2.3.2)."""
        _, uid = self.other.add(message(7))
        claimed = self.unlocked(self.first.highestmodseq, True)
        self.assertEqual(([e.uid for e in claimed.messages], claimed.recent), ([uid], {uid}))
        again = self.unlocked(self.first.highestmodseq, True)
        self.assertEqual(([e.uid for e in again.messages], again.recent), ([uid], set()))
        self.assertEqual(self.truth(None).recent, set())

    def test_recent_claimed_by_another_process_is_not_claimed_again(self) -> None:
        """\\Recent taken by another process (in the index only) is not given out again."""
        _, uid = self.other.add(message(7))
        db = sqlite3.connect(self.root / INDEX_FILE)
        with db:
            db.execute("DELETE FROM recent")
        db.close()
        got = self.unlocked(self.first.highestmodseq, True)
        self.assertEqual(([e.uid for e in got.messages], got.recent), ([uid], set()))

    def test_session_behind_the_log_scans_under_the_lock(self) -> None:
        """A session further behind than the snapshot's log reaches scans the index."""
        self.patch(snapshot, "SNAPSHOT_LOG", 2)
        entries = list(self.first.messages)
        for flags in ("S", "F", "D"):
            done, _ = self.other.change_flags_many(
                [(e, maildir.FlagChange(add=flags)) for e in entries]
            )
            entries = done
        locks = self.folder.locks
        got = self.folder.scan(self.first.highestmodseq)
        self.assertEqual(self.folder.locks, locks + 1)
        self.assertEqual(got.messages, tuple(entries))


class SyncingFolder(CountingFolder):
    """Counts its full syncs too."""

    syncs = 0

    def _sync(self, index: Any, unsaved: Any) -> Any:
        self.syncs += 1
        return super()._sync(index, unsaved)


class OtherProcessTests(unittest.TestCase):
    """A change by another process of ours (another worker's STORE, EXPUNGE or APPEND:
    its own snapshot, the shared index) within the dirty window: the rescan brings the
    kept snapshot up to the index by MODSEQ instead of a full sync, and still sees any
    change nobody recorded in the index."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        for n in range(1, 4):
            write_durably(self.root / "cur", message(n), "", T1 + n)
        self.folder = SyncingFolder(self.root)
        self.addCleanup(maildir._snapshots.forget, self.root)
        self.first = self.folder.scan()

    def in_other_process(self, change: Any) -> Any:
        """Run C{change} on a Folder with a snapshot store of its own (another process)."""
        ours = folder_module._snapshots
        folder_module._snapshots = snapshot._Snapshots()
        try:
            return change(Folder(self.root))
        finally:
            folder_module._snapshots = ours

    def truth(self) -> maildir.ScanResult:
        maildir._snapshots.forget(self.root)
        return Folder(self.root).scan()

    def test_flag_change_by_another_process_needs_no_full_sync(self) -> None:
        """Another worker's STORE: the rescan reads the changed row, no full sync."""
        entry = self.first.messages[1]
        (changed,), _ = self.in_other_process(
            lambda other: other.change_flags_many([(entry, maildir.FlagChange(add="S"))])
        )
        syncs = self.folder.syncs
        got = self.folder.scan()
        self.assertEqual(self.folder.syncs, syncs)
        self.assertEqual(got.messages[1], changed)
        self.assertEqual(got.messages[1].filename[-2:], ",S")
        self.assertEqual(got.messages, self.truth().messages)

    def test_expunge_and_append_by_another_process_need_no_full_sync(self) -> None:
        """Another worker's EXPUNGE and APPEND: the rescan has both, no full sync."""
        uid = self.in_other_process(
            lambda other: (other.remove_many([self.first.messages[0]]), other.add(message(9))[1])[1]
        )
        syncs = self.folder.syncs
        got = self.folder.scan()
        self.assertEqual(self.folder.syncs, syncs)
        self.assertEqual([e.uid for e in got.messages], [2, 3, uid])
        truth = self.truth()
        self.assertEqual((got.messages, got.highestmodseq), (truth.messages, truth.highestmodseq))

    def test_unrecorded_change_in_the_same_tick_is_still_seen(self) -> None:
        """Another worker's STORE, then a rename by hand (Dovecot, a script) within the
        same mtime tick: the listing differs from the index, so the full sync runs and
        finds the renamed message's new flags."""
        entry = self.first.messages[1]
        self.in_other_process(
            lambda other: other.change_flags_many([(entry, maildir.FlagChange(add="S"))])
        )
        cur = self.root / "cur"
        tick = os.stat(cur).st_mtime_ns
        third = self.first.messages[2]
        os.rename(cur / third.filename, cur / (third.filename.split(":2,")[0] + ":2,F"))
        os.utime(cur, ns=(tick, tick))
        syncs = self.folder.syncs
        got = self.folder.scan()
        self.assertEqual(self.folder.syncs, syncs + 1)
        self.assertEqual([e.filename.rpartition(":2,")[2] for e in got.messages], ["", "S", "F"])


class KeywordMapTests(unittest.TestCase):
    """The keyword map (C{dovecot-keywords}) is read again only when the file changed."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        self.file = self.root / maildir.KEYWORDS
        self.file.write_text("0 $Junk\n1 Work\n")
        self.reads = 0
        test = self

        read = keywordfile.read

        def counting(folder: Path) -> dict[int, str]:
            test.reads += 1
            return read(folder)

        self.patch(keywordfile, "read", counting)
        self.folder = Folder(self.root)
        self.addCleanup(maildir._keyword_maps.pop, self.root, None)

    def test_settled_file_is_read_once(self) -> None:
        """A file unchanged since a read made after its dirty window is not read again."""
        os.utime(self.file, (T1, T1))
        self.assertEqual(self.folder.keywords(), {"a": "$Junk", "b": "Work"})
        self.assertEqual(self.folder.keywords(), {"a": "$Junk", "b": "Work"})
        self.assertEqual(self.reads, 1)

    def test_edit_within_the_same_mtime_tick_is_seen(self) -> None:
        """The file edited in place with its mtime and size as before is read again."""
        self.assertEqual(self.folder.keywords(), {"a": "$Junk", "b": "Work"})
        st = os.stat(self.file)
        with open(self.file, "r+") as f:
            f.write("0 $Spam\n1 Home\n")
        os.utime(self.file, ns=(st.st_mtime_ns, st.st_mtime_ns))
        self.assertEqual(self.folder.keywords(), {"a": "$Spam", "b": "Home"})

    def test_new_file_is_seen(self) -> None:
        """A file replaced by a rename (Dovecot, L{Folder.keyword_letters}) is read again."""
        os.utime(self.file, (T1, T1))
        self.assertEqual(self.folder.keywords(), {"a": "$Junk", "b": "Work"})
        self.assertEqual(self.folder.keyword_letters(["Later"]), "c")
        self.assertEqual(self.folder.keywords(), {"a": "$Junk", "b": "Work", "c": "Later"})
