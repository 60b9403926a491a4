"""The first sync of a folder nobody indexed yet (a Maildir copied from another server, with
its C{dovecot-uidlist}): the UIDs of the list, INTERNALDATE the file's mtime (RFC 3501
§2.3.3: read when asked for the listed files, at the sync for those the list lacks), one
MODSEQ for every row (RFC 7162 §3.1.1), an empty folder's HIGHESTMODSEQ not moved."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from twistedmail.index import INDEX_FILE
from twistedmail.maildir import Folder
from twistedmail.maildir.names import UIDLIST, UNKNOWN_MTIME, UNKNOWN_SIZE


class FirstSyncTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            (self.root / sub).mkdir(parents=True)

    def test_copied_folder(self) -> None:
        """Files listed in dovecot-uidlist keep their UIDs and an unknown mtime (read when
        asked: L{Folder.dates}); the index gets each file's ,W= size or an unknown one, and
        one MODSEQ; a file the list lacks gets the next UID and its mtime."""
        names = {
            "1700000001.M1P1.h,S=10,W=12": (3, 1_600_000_000.25),
            "1700000002.M2P1.h,S=20": (7, 1_600_000_100.5),
            "1700000003.M3P1.h": (0, 1_600_000_200.0),
        }
        for base, (_, mtime) in names.items():
            path = self.root / "cur" / f"{base}:2,S"
            path.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
            os.utime(path, (mtime, mtime))
        listed = "".join(f"{uid} :{b}\n" for b, (uid, _) in names.items() if uid)
        (self.root / UIDLIST).write_text(f"3 V77 N8 Gabc\n{listed}")
        self.assertFalse((self.root / INDEX_FILE).exists())
        result = Folder(self.root).scan(claim_recent=True)
        got = [(m.uid, m.base, m.filename, m.size, m.mtime) for m in result.messages]
        self.assertEqual(
            got,
            [
                (3, "1700000001.M1P1.h,S=10,W=12", "1700000001.M1P1.h,S=10,W=12:2,S", 12,
                 UNKNOWN_MTIME),
                (7, "1700000002.M2P1.h,S=20", "1700000002.M2P1.h,S=20:2,S", UNKNOWN_SIZE,
                 UNKNOWN_MTIME),
                (8, "1700000003.M3P1.h", "1700000003.M3P1.h:2,S", UNKNOWN_SIZE, 1_600_000_200.0),
            ],
        )  # fmt: skip
        self.assertEqual((result.uidvalidity, result.uidnext), (77, 9))
        self.assertEqual({m.modseq for m in result.messages}, {result.highestmodseq})
        self.assertEqual(
            Folder(self.root).dates(result.messages),
            {"1700000001.M1P1.h,S=10,W=12": 1_600_000_000.25,
             "1700000002.M2P1.h,S=20": 1_600_000_100.5},
        )  # fmt: skip

    def test_empty_folder_keeps_its_modseq(self) -> None:
        """A first sync that finds no message gives out no MODSEQ: a new folder's
        HIGHESTMODSEQ stays at its start, 1."""
        result = Folder(self.root).scan()
        self.assertEqual((result.messages, result.highestmodseq), ((), 1))
