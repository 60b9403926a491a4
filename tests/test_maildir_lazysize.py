"""Sizes known only when asked (issue 10): a message file named without Dovecot's C{,W=} is
indexed with an unknown size, so a full sync (the first SELECT of an unindexed folder) opens
no message file; L{Folder.sizes}, the one place every consumer asks, measures the CRLF form
(RFC 3501 §2.3.4 RFC822.SIZE, RFC 1939 §5) once and records it in the index and the
process's snapshot, so it is never measured again."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from twisted.trial import unittest

from twistedmail import maildir
from twistedmail.index import INDEX_FILE, read_sizes
from twistedmail.maildir import UNKNOWN_SIZE, Folder, make_maildir, measure

_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # (cannot be removed: records only while _opened is a list)


def lines(n: int, end: bytes) -> bytes:
    return b"From: a@example.test" + end + b"Subject: s" + end + end + (b"x" + end) * n


# (name in cur/, content, size with CRLF line ends): every combination of LF/CRLF content
# and ,S= / ,W= in the name; the LF files have more lines, so their on-disk size orders
# them differently from their CRLF size
LF30, LF20 = lines(30, b"\n"), lines(20, b"\n")
CRLF30, CRLF25, CRLF20, CRLF10 = (lines(n, b"\r\n") for n in (30, 25, 20, 10))
FILES = [
    ("1700000001.M1P1.otherhost:2,", LF30, len(CRLF30)),
    (f"1700000002.M1P1.otherhost,S={len(LF20)}:2,S", LF20, len(CRLF20)),
    (f"1700000003.M1P1.otherhost,S={len(CRLF25)}:2,", CRLF25, len(CRLF25)),
    (f"1700000004.M1P1.otherhost,S={len(LF20)},W={len(CRLF20)}:2,", LF20, len(CRLF20)),
    ("1700000005.M1P1.otherhost:2,", CRLF10, len(CRLF10)),
]


class LazySizeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()).absolute()
        make_maildir(self.root)
        for mtime, (name, data, _) in enumerate(FILES):
            path = self.root / "cur" / name
            path.write_bytes(data)
            os.utime(path, (1_700_000_000 + mtime, 1_700_000_000 + mtime))
        self.folder = Folder(self.root)
        self.addCleanup(maildir._snapshots.forget, self.root)

    def opened_messages(self, call: Any, *args: Any) -> tuple[Any, list[str]]:
        """C{call(*args)} and the message files it opened (Python's C{open} audit event)."""
        global _opened
        _opened = []
        try:
            result = call(*args)
        finally:
            seen, _opened = _opened, None
        cur = str(self.root / "cur")
        return result, [p for p in seen if p.startswith(cur)]

    def test_first_scan_opens_no_message_file(self) -> None:
        """The full sync of an unindexed folder lists and stats, but opens no message:
        only C{,W=} gives the size with CRLF line ends, the others are unknown."""
        scan, opened = self.opened_messages(self.folder.scan)
        self.assertEqual(opened, [])
        self.assertEqual(
            [e.size for e in scan.messages],
            [UNKNOWN_SIZE, UNKNOWN_SIZE, UNKNOWN_SIZE, FILES[3][2], UNKNOWN_SIZE],
        )

    def test_sizes_are_exact_and_measured_once(self) -> None:
        """L{Folder.sizes} gives the CRLF size of each unknown one (RFC 3501 §2.3.4),
        opening each file once; asked again (a session holding the old entries, another
        process reading the index) it opens nothing, and a new scan carries them."""
        entries = self.folder.scan().messages
        sizes, opened = self.opened_messages(self.folder.sizes, entries)
        self.assertEqual(sizes, {e.base: FILES[i][2] for i, e in enumerate(entries) if i != 3})
        measured = FILES[:3] + FILES[4:]
        self.assertEqual(sorted(opened), sorted(str(self.root / "cur" / n) for n, _, _ in measured))
        again, opened = self.opened_messages(self.folder.sizes, entries)
        self.assertEqual((again, opened), (sizes, []))  # from the process's snapshot
        maildir._snapshots.forget(self.root)
        again, opened = self.opened_messages(Folder(self.root).sizes, entries)
        self.assertEqual((again, opened), (sizes, []))  # from the index
        self.assertEqual(read_sizes(self.root, list(sizes)), sizes)
        rescan, opened = self.opened_messages(Folder(self.root).scan)
        self.assertEqual([e.size for e in rescan.messages], [size for _, _, size in FILES])
        self.assertEqual(opened, [])

    def test_snapshot_takes_the_sizes(self) -> None:
        """A rescan answered from the process's snapshot (no index read) carries the sizes
        measured since, with no new MODSEQ (the message did not change)."""
        first = self.folder.scan()
        self.folder.sizes(first.messages)
        after = self.folder.scan()
        self.assertEqual([e.size for e in after.messages], [size for _, _, size in FILES])
        self.assertEqual(after.highestmodseq, first.highestmodseq)

    def test_gone_message_is_left_out(self) -> None:
        """A message removed before it is measured has no size (the caller says so)."""
        entries = self.folder.scan().messages
        (self.root / "cur" / FILES[0][0]).unlink()
        sizes = self.folder.sizes(entries)
        self.assertNotIn(entries[0].base, sizes)
        self.assertEqual(sizes[entries[4].base], FILES[4][2])

    def test_renamed_message_is_measured_where_it_is(self) -> None:
        """A message another session renamed (flags) after the scan is measured at its new
        name (L{Folder.open_fd}, as L{Folder.read} finds it)."""
        entries = self.folder.scan().messages
        old = self.root / "cur" / FILES[0][0]
        old.rename(self.root / "cur" / (FILES[0][0] + "S"))
        sizes = self.folder.sizes(entries)
        self.assertEqual(sizes[entries[0].base], FILES[0][2])
        self.assertEqual(self.folder.read(entries[0]), CRLF30)

    def test_no_index_is_made_to_record_sizes(self) -> None:
        """Sizes asked after the index was deleted are measured and given, and no index is
        made without its state (the next scan rebuilds it, RFC 7162 §3.1.2.1)."""
        entries = self.folder.scan().messages
        for suffix in ("", "-wal", "-shm"):
            (self.root / (INDEX_FILE + suffix)).unlink(missing_ok=True)
        maildir._snapshots.forget(self.root)
        sizes = self.folder.sizes(entries)
        self.assertEqual(sizes[entries[0].base], FILES[0][2])
        self.assertFalse((self.root / INDEX_FILE).exists())

    def test_index_upgrade_forgets_sizes_without_w(self) -> None:
        """An index of the previous cache version (bare LF counted as one octet) gets its
        sizes without C{,W=} made unknown, not measured: no file opened at the upgrade."""
        entries = self.folder.scan().messages
        self.folder.sizes(entries)
        db = sqlite3.connect(self.root / INDEX_FILE)
        with db:
            db.execute("DELETE FROM meta WHERE key = 'cache_version'")
        db.close()
        maildir._snapshots.forget(self.root)
        scan, opened = self.opened_messages(Folder(self.root).scan)
        self.assertEqual(opened, [])
        self.assertEqual(
            [e.size for e in scan.messages],
            [UNKNOWN_SIZE, UNKNOWN_SIZE, UNKNOWN_SIZE, FILES[3][2], UNKNOWN_SIZE],
        )


class MeasureTests(unittest.TestCase):
    def test_line_ends_across_reads(self) -> None:
        """L{measure} reads a chunk at a time: a CRLF split between two reads is one line
        end, a bare LF starting a read still counts two octets."""
        path = Path(self.mktemp())
        chunk = 1 << 20
        for data in (
            b"a" * (chunk - 1) + b"\r\nb\n",
            b"a" * chunk + b"\nb\r\n",
            b"a" * (chunk - 1) + b"\r" + b"c\n",
            b"",
            b"\n" * (chunk + 3),
        ):
            path.write_bytes(data)
            expected = len(data) + data.count(b"\n") - data.count(b"\r\n")
            self.assertEqual(measure(path), expected)


class PositionsTests(unittest.TestCase):
    def test_few_and_many(self) -> None:
        """L{positions} finds the same places by bisection (a few UIDs) as by one pass."""
        messages = [
            maildir.MessageEntry(uid, f"b{uid}", f"b{uid}:2,", 1, 0.0) for uid in range(1, 200, 2)
        ]
        self.assertEqual(maildir.positions(messages, [3, 4, 199]), {3: 1, 199: 99})
        many = list(range(0, 201))
        self.assertEqual(
            maildir.positions(messages, many), {u: (u - 1) // 2 for u in range(1, 200, 2)}
        )
