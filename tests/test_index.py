"""Tests for L{twistedmail.index} through L{twistedmail.maildir.Folder}: a clean folder is
answered without listing it, changes by other processes get new MODSEQs, expunges are kept,
MODSEQ is monotonic across Folder objects (processes) and threads, and the index is rebuilt
from the Maildir when deleted or corrupt, without going back in MODSEQ."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from twisted.trial import unittest

from twistedmail import index as index_module
from twistedmail import maildir
from twistedmail.index import INDEX_FILE, CachedParts, FolderIndex
from twistedmail.maildir import UIDLIST, Folder, make_maildir, write_durably

MSG = b"Subject: x\r\n\r\nbody\r\n"
PAST = 1_600_000_000


class IndexTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        self.folder = Folder(self.root)

    def deliver(self, n: int = 1) -> None:
        for i in range(n):
            write_durably(self.root / "new", MSG, mtime=PAST + i)

    def age(self) -> None:
        """Make the directories and the UID list look changed long ago (past the dirty
        window), as a folder nobody touched for a while."""
        for path in (self.root / "new", self.root / "cur", self.root / UIDLIST):
            if path.exists():
                os.utime(path, ns=(PAST * 10**9, PAST * 10**9))

    def forbid_listing(self) -> None:
        def refuse(path: object) -> list[str]:
            raise AssertionError(f"listed {path}")

        self.patch(os, "listdir", refuse)

    def test_insert_many_in_any_order(self) -> None:
        """insert_many stores rows given in any order (a full sync gives them in directory
        order) as in UID order, and of two rows for one UID the one given last stays."""
        rows = [
            (uid, f"b{uid}", f"b{uid}:2,S", 100 + uid, float(PAST + uid), uid)
            for uid in (5, 1, 9, 3, 7)
        ]
        rows.append((3, "b3-again", "b3-again:2,", 7, float(PAST), 10))
        with FolderIndex(self.root) as index:
            index.insert_many(rows)
            self.assertEqual(
                index.messages(),
                [(1, "b1", "b1:2,S", 101, float(PAST + 1), 1)]
                + [(3, "b3-again", "b3-again:2,", 7, float(PAST), 10)]
                + [(u, f"b{u}", f"b{u}:2,S", 100 + u, float(PAST + u), u) for u in (5, 7, 9)],
            )

    def test_clean_folder_is_not_listed(self) -> None:
        """DESIGN §4: with new/, cur/ and the UID list unchanged since the last sync (and
        that sync more than 2 s after their mtimes), scan() lists nothing."""
        self.deliver(3)
        first = self.folder.scan()
        self.age()
        self.folder.scan()  # records the aged stamps
        self.forbid_listing()
        again = Folder(self.root).scan()
        self.assertEqual(again.messages, first.messages)
        self.assertEqual(again.highestmodseq, first.highestmodseq)

    def test_recent_change_is_listed_again(self) -> None:
        """Dovecot's dirty rule: a sync within 2 s of a directory's mtime does not let the
        next one skip the listing (a change in the same mtime tick would be missed)."""
        self.deliver(1)
        self.folder.scan()
        with FolderIndex(self.root) as index:
            self.assertFalse(index.clean(self.folder._stamps()))

    def test_new_mail_in_a_clean_folder_is_seen(self) -> None:
        """A delivery into a folder whose index is up to date is found by the next scan, with the
        next UID and \\Recent."""
        self.deliver(1)
        self.folder.scan(claim_recent=True)
        self.age()
        self.folder.scan()
        write_durably(self.root / "new", MSG)
        result = self.folder.scan()
        self.assertEqual([e.uid for e in result.messages], [1, 2])
        self.assertEqual(result.recent, frozenset({2}))

    def test_external_rename_and_delete_get_modseqs(self) -> None:
        """RFC 7162 §3.1.1: a change made by another program (a rename by hand, Dovecot, a
        POP3 delete elsewhere) gets a new MODSEQ at the next sync; a removal is kept as an
        expunged UID with its MODSEQ."""
        self.deliver(2)
        first = self.folder.scan()
        self.assertEqual([e.modseq for e in first.messages], [2, 2])
        one, two = first.messages
        cur = self.root / "cur"
        os.rename(cur / one.filename, cur / (one.base + ":2,S"))
        os.unlink(cur / two.filename)
        result = self.folder.scan()
        self.assertEqual(result.highestmodseq, 3)
        self.assertEqual([(e.uid, e.flags, e.modseq) for e in result.messages], [(1, "S", 3)])
        delta = self.folder.scan(since=2)
        self.assertFalse(delta.full)
        self.assertEqual([e.uid for e in delta.messages], [1])
        self.assertEqual(delta.expunged, (2,))
        self.assertEqual(self.folder.scan(since=3).messages, ())

    def test_own_changes_update_the_index(self) -> None:
        """STORE and EXPUNGE by our code go through Folder, which gives one new MODSEQ per
        batch and keeps the index in step."""
        self.deliver(3)
        entries = list(self.folder.scan().messages)
        done, modified = self.folder.set_flags_many([(e, "S") for e in entries[:2]])
        self.assertEqual([(e.uid, e.modseq) for e in done], [(1, 3), (2, 3)])
        self.assertEqual(modified, [])
        done, modified = self.folder.set_flags_many(
            [(entries[0], "F"), (entries[2], "F")], unchangedsince=2
        )
        self.assertEqual([(e.uid, e.modseq) for e in done], [(3, 4)])
        self.assertEqual([e.uid for e in modified], [1])
        self.folder.remove_many([entries[1]])
        self.assertEqual(self.folder.changed_since(4), ([2], 1))
        self.assertEqual(self.folder.add(MSG, "S")[1], 4)
        result = self.folder.scan()
        self.assertEqual([(e.uid, e.flags, e.modseq) for e in result.messages][-1], (4, "S", 6))
        self.assertEqual(result.highestmodseq, 6)

    def test_modseq_monotonic_across_folders_and_threads(self) -> None:
        """Two Folder objects (as two processes would) and several threads changing flags
        at once: every MODSEQ handed out is new, and HIGHESTMODSEQ is their maximum."""
        self.deliver(4)
        entries = list(self.folder.scan().messages)
        seen: list[int] = []
        lock = threading.Lock()

        def work(entry: maildir.MessageEntry) -> None:
            folder = Folder(self.root)
            for letters in ("S", "F", "", "R"):
                done, _ = folder.set_flags_many([(entry, letters)])
                entry = done[0]
                with lock:
                    seen.append(entry.modseq)

        threads = [threading.Thread(target=work, args=(e,)) for e in entries]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(set(seen)), len(seen))
        self.assertEqual(self.folder.scan().highestmodseq, max(seen))

    def test_rebuilt_index_keeps_uids_and_never_goes_back(self) -> None:
        """The index is a cache: deleted or corrupt, it is rebuilt from dovecot-uidlist and
        the files, UIDs unchanged, its MODSEQs above any given out before (RFC 7162
        §3.1.2.1), and QRESYNC told expunges before the rebuild are unknown (the floor)."""
        self.deliver(2)
        before = self.folder.scan()
        os.unlink(self.root / INDEX_FILE)
        after = self.folder.scan()
        self.assertEqual([e.uid for e in after.messages], [1, 2])
        self.assertGreater(after.highestmodseq, 1_000_000_000_000)
        self.assertGreaterEqual(after.floor, before.highestmodseq)
        self.assertTrue(self.folder.scan(since=before.highestmodseq).full)
        (self.root / INDEX_FILE).write_bytes(b"not a database at all" * 100)
        again = self.folder.scan()
        self.assertEqual([e.uid for e in again.messages], [1, 2])
        self.assertGreaterEqual(again.highestmodseq, after.highestmodseq)

    def test_new_uidvalidity_resets_the_index(self) -> None:
        """RFC 3501 §2.3.1.1: a new UIDVALIDITY in dovecot-uidlist resets the index and the UIDs."""
        self.deliver(1)
        self.folder.scan()
        (self.root / UIDLIST).write_text("3 V42 N1 Gx\n")
        result = self.folder.scan()
        self.assertEqual(result.uidvalidity, 42)
        self.assertEqual([e.uid for e in result.messages], [1])

    def test_cached_parts_are_keyed_by_uid_and_base(self) -> None:
        """Cached ENVELOPE/BODYSTRUCTURE parts count only for the same UID and file base name."""
        self.deliver(1)
        (entry,) = self.folder.scan().messages
        parts = CachedParts(b"env", b"bs", b"body")
        self.folder.cache_parts({(entry.uid, "other-base"): parts})
        self.assertEqual(self.folder.cached_parts([1]), {1: CachedParts(None, None, None)})
        self.folder.cache_parts({(entry.uid, entry.base): parts})
        self.assertEqual(self.folder.cached_parts([1, 7]), {1: parts})

    def test_index_file_is_private(self) -> None:
        """The folder index file twistedmail.index is mode 0600."""
        self.deliver(1)
        self.folder.scan()
        self.assertEqual(os.stat(self.root / INDEX_FILE).st_mode & 0o777, 0o600)
        self.assertEqual(index_module.INDEX_FILE, "twistedmail.index")


class ReadOnlyTests(unittest.TestCase):
    """The read-only readers of the index (no write lock) share one way to open it."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)

    def test_no_index_reads_empty(self) -> None:
        """A folder with no index yet: every reader answers nothing, and makes no index."""
        self.assertEqual(index_module.read_sortkeys(self.root, ("subject",)), {})
        self.assertEqual(index_module.read_headers(self.root), {})
        self.assertEqual(index_module.read_sizes(self.root, ["1.M1P1.host"]), {})
        self.assertFalse((self.root / INDEX_FILE).exists())

    def test_no_cache_table_reads_empty(self) -> None:
        """An index without the SORT key or header cache tables (an older version's):
        their readers answer nothing; the sizes are read from the messages."""
        write_durably(self.root / "new", MSG, mtime=PAST)
        entry = Folder(self.root).scan().messages[0]
        with FolderIndex(self.root) as index:
            index.db.execute("DROP TABLE IF EXISTS sortkeys")
            index.db.execute("DROP TABLE IF EXISTS headers")
        self.assertEqual(index_module.read_sortkeys(self.root, ("subject",)), {})
        self.assertEqual(index_module.read_headers(self.root), {})
        self.assertEqual(index_module.read_sizes(self.root, [entry.base]), {entry.base: len(MSG)})
