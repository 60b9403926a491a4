"""INTERNALDATE known only when asked (issue 10): the first sync of a folder whose
C{dovecot-uidlist} names its files (copied from another server) indexes them without a
C{stat} each, their date unknown; L{Folder.dates}, the one place every consumer asks (FETCH
INTERNALDATE, SEARCH BEFORE/ON/SINCE, SORT ARRIVAL and DATE, COPY, the export), reads the
file's mtime (RFC 3501 §2.3.3, as Dovecot takes the received date) once and records it in
the index and the process's snapshot, so it is never read again, also after a restart."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.trial import unittest

from twistedmail import index as index_module
from twistedmail import maildir
from twistedmail.index import INDEX_FILE, read_learned
from twistedmail.maildir import UIDLIST, UNKNOWN_MTIME, Folder, make_maildir

# (base, mtime): UIDs 1.. in this order in the list; the mtimes are not in UID order
FILES = [
    ("1700000001.M1P1.otherhost,S=20", 1_600_000_000.5),
    ("1700000002.M1P1.otherhost", 1_500_000_000.0),
    ("1700000003.M1P1.otherhost,S=20,W=21", 1_650_000_000.25),
    ("1700000004.M1P1.otherhost,S=20", 1_600_086_399.0),
]
DATA = b"Subject: s\r\n\r\nbody body\r\n"


class LazyDateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        make_maildir(self.root)
        for base, mtime in FILES:
            path = self.root / "cur" / f"{base}:2,S"
            path.write_bytes(DATA)
            os.utime(path, (mtime, mtime))
        records = "".join(f"{uid} :{base}\n" for uid, (base, _) in enumerate(FILES, 1))
        (self.root / UIDLIST).write_text(f"3 V1234 N{len(FILES) + 1} Gabc\n{records}")
        self.folder = Folder(self.root)
        self.addCleanup(maildir._snapshots.forget, self.root)
        self.cur = os.fspath(self.root / "cur") + os.sep

    @contextmanager
    def stats(self) -> Iterator[list[str]]:
        """The message files C{os.stat} is asked about meanwhile (C{Path.exists} too)."""
        seen: list[str] = []
        real = os.stat

        def counted(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if isinstance(path, str | Path) and os.fspath(path).startswith(self.cur):
                seen.append(os.path.basename(path))
            return real(path, *args, **kwargs)

        with mock.patch("os.stat", counted):
            yield seen

    def stated(self, call: Callable[..., Any], *args: Any) -> tuple[Any, list[str]]:
        with self.stats() as seen:
            result = call(*args)
        return result, seen

    def test_first_sync_stats_no_listed_file(self) -> None:
        """The full sync of an unindexed folder whose UID list names every file stats
        none of them: every date is unknown, the UIDs are the list's."""
        scan, seen = self.stated(self.folder.scan, None, True)
        self.assertEqual(seen, [])
        self.assertEqual(
            [(e.uid, e.base, e.mtime) for e in scan.messages],
            [(uid, base, UNKNOWN_MTIME) for uid, (base, _) in enumerate(FILES, 1)],
        )

    def test_a_file_the_list_lacks_is_stated(self) -> None:
        """A file without a UID in the list is stat'ed at the sync (new UIDs go in order of
        mtime, RFC 3501 §2.3.1.1) and keeps the date it was read with."""
        late = self.root / "cur" / "1700000009.M1P1.otherhost:2,"
        late.write_bytes(DATA)
        os.utime(late, (1_400_000_000, 1_400_000_000))
        scan, seen = self.stated(self.folder.scan)
        self.assertEqual(seen, [late.name])
        self.assertEqual(
            (scan.messages[-1].uid, scan.messages[-1].mtime), (len(FILES) + 1, 1_400_000_000.0)
        )
        self.assertEqual(self.stated(self.folder.dates, scan.messages[-1:]), ({}, []))

    def test_dates_are_exact_and_read_once(self) -> None:
        """L{Folder.dates} gives each file's mtime, a C{stat} each; asked again (a session
        holding the old entries, another process reading the index, a restarted server)
        it stats nothing, and a new scan carries them."""
        entries = self.folder.scan().messages
        dates, seen = self.stated(self.folder.dates, entries)
        self.assertEqual(dates, dict(FILES))
        self.assertEqual(sorted(seen), sorted(f"{base}:2,S" for base, _ in FILES))
        self.assertEqual(self.stated(self.folder.dates, entries), (dates, []))  # the snapshot
        maildir._snapshots.forget(self.root)
        self.assertEqual(self.stated(Folder(self.root).dates, entries), (dates, []))  # index
        self.assertEqual(read_learned(self.root, "mtime", list(dates)), dates)
        # a restart: no snapshot, no pooled connection
        maildir._snapshots.forget(self.root)
        index_module._pool.clear()
        rescan, seen = self.stated(Folder(self.root).scan)
        self.assertEqual(([(e.base, e.mtime) for e in rescan.messages], seen), (FILES, []))
        self.assertEqual(rescan.highestmodseq, self.folder.scan().highestmodseq)

    def test_some_dates_then_the_rest(self) -> None:
        """Dates asked for some messages are read for those only; the others later."""
        entries = self.folder.scan().messages
        self.assertEqual(self.stated(self.folder.dates, entries[1:2])[1], [f"{FILES[1][0]}:2,S"])
        dates, seen = self.stated(self.folder.dates, entries)
        self.assertEqual(dates, dict(FILES))
        self.assertEqual(len(seen), len(FILES) - 1)

    def test_snapshot_takes_the_dates(self) -> None:
        """A rescan answered from the process's snapshot carries the dates read since,
        with no new MODSEQ (the message did not change)."""
        first = self.folder.scan()
        self.folder.dates(first.messages)
        after = self.folder.scan()
        self.assertEqual([(e.base, e.mtime) for e in after.messages], FILES)
        self.assertEqual(after.highestmodseq, first.highestmodseq)
        self.assertEqual([e.modseq for e in after.messages], [e.modseq for e in first.messages])

    def test_flag_change_keeps_an_unknown_date_unknown(self) -> None:
        """A rename (STORE) keeps the row's date as it is; read later, it is the file's."""
        entries = self.folder.scan().messages
        self.folder.set_flags(entries[0], "F")
        renamed = self.folder.scan().messages[0]
        self.assertEqual((renamed.filename, renamed.mtime), (f"{FILES[0][0]}:2,F", UNKNOWN_MTIME))
        self.assertEqual(self.folder.dates([renamed]), {FILES[0][0]: FILES[0][1]})

    def test_gone_message_is_left_out(self) -> None:
        """A message removed by another program before its date is read has none (as a
        size not measured yet: the caller leaves the message out)."""
        entries = self.folder.scan().messages
        (self.root / "cur" / f"{FILES[0][0]}:2,S").unlink()
        dates = self.folder.dates(entries)
        self.assertNotIn(entries[0].base, dates)
        self.assertEqual(dates, dict(FILES[1:]))

    def test_renamed_message_is_read_where_it_is(self) -> None:
        """A message another program renamed (flags) after the scan has its date read at
        its new name."""
        entries = self.folder.scan().messages
        old = self.root / "cur" / f"{FILES[0][0]}:2,S"
        old.rename(self.root / "cur" / f"{FILES[0][0]}:2,FS")
        self.assertEqual(self.folder.dates(entries[:1]), {FILES[0][0]: FILES[0][1]})

    def test_no_index_is_made_to_record_dates(self) -> None:
        """Dates asked after the index was deleted are read and given, and no index is made
        without its state (the next scan rebuilds it, RFC 7162 §3.1.2.1)."""
        entries = self.folder.scan().messages
        index_module._pool.clear()
        for suffix in ("", "-wal", "-shm"):
            (self.root / (INDEX_FILE + suffix)).unlink(missing_ok=True)
        maildir._snapshots.forget(self.root)
        self.assertEqual(self.folder.dates(entries), dict(FILES))
        self.assertFalse((self.root / INDEX_FILE).exists())

    def test_known_dates_are_not_asked(self) -> None:
        """Entries whose date is known (APPEND's into a scanned folder) cost nothing."""
        self.folder.scan()
        uid = self.folder.add(DATA, "", 1_234_567_890.0)[1]
        added = [e for e in self.folder.scan().messages if e.uid == uid]
        self.assertEqual(added[0].mtime, 1_234_567_890.0)
        self.assertEqual(self.stated(self.folder.dates, added), ({}, []))

    def test_dates_another_process_read_reach_the_snapshot(self) -> None:
        """Dates another process recorded in the index (its own snapshot, not ours, took
        them) are given without a stat, and our snapshot keeps them from then on."""
        entries = self.folder.scan().messages
        with index_module.FolderIndex(self.root) as index:
            index.set_learned("mtime", dict(FILES))
        self.assertEqual(self.stated(self.folder.dates, entries), (dict(FILES), []))
        kept = maildir._snapshots.get(self.root)
        assert kept is not None
        self.assertEqual([(e.base, e.mtime) for e in kept.messages], FILES)
