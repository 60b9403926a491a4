"""Message files with bare LF line ends (written by other programs) are read, sized and
streamed in their CRLF form (RFC 3501 §2.3.4, RFC 1939 §3), and an index written by an
older version drops its cached ENVELOPEs and measures sizes again (issue 9), when asked."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

from twisted.trial import unittest

from twistedmail import index as index_module
from twistedmail.index import INDEX_FILE, CachedParts
from twistedmail.maildir import (
    UNKNOWN_SIZE,
    CRLFReader,
    Folder,
    make_maildir,
    to_crlf,
    wire_size,
)

CRLF_MSG = b"From: a@example.org\r\nTo: undisclosed-recipients:;\r\n\r\nbody\r\nmore\r\n"
LF_MSG = CRLF_MSG.replace(b"\r\n", b"\n")
MIXED_MSG = b"From: a@example.org\r\nTo: undisclosed-recipients:;\n\r\nbody\nmore\r\n"


class ConversionTests(unittest.TestCase):
    def test_to_crlf_and_wire_size(self) -> None:
        """Every bare LF becomes CRLF, CRLF stays, a bare CR stays; the size counts that."""
        for data in (LF_MSG, MIXED_MSG, CRLF_MSG):
            self.assertEqual(to_crlf(data), CRLF_MSG)
            self.assertEqual(wire_size(data), len(CRLF_MSG))
        self.assertEqual(to_crlf(b"a\rb\n"), b"a\rb\r\n")
        self.assertIs(to_crlf(CRLF_MSG), CRLF_MSG)

    def test_reader_across_chunks(self) -> None:
        """A CR ending one read and the LF starting the next are one line end, not two."""
        for size in range(1, len(MIXED_MSG) + 1):
            reader = CRLFReader(io.BytesIO(MIXED_MSG))
            chunks = []
            while chunk := reader.read(size):
                chunks.append(chunk)
            self.assertEqual(b"".join(chunks), CRLF_MSG, size)
        reader = CRLFReader(io.BytesIO(MIXED_MSG))
        self.assertEqual(reader.readline(20), b"From: a@example.org\r")
        self.assertEqual(reader.readline(), b"\n")
        self.assertEqual(reader.readline(), b"To: undisclosed-recipients:;\r\n")


class FolderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        self.folder = Folder(self.root)

    def test_file_dropped_in_by_hand(self) -> None:
        """A bare-LF file without Dovecot's C{,W=}: the size is that of the CRLF form and
        it reads back as CRLF (RFC 3501 §2.3.4)."""
        (self.root / "cur" / "1700000000.M1P1.otherhost:2,").write_bytes(LF_MSG)
        (self.root / "new" / f"1700000001.M1P1.otherhost,S={len(MIXED_MSG)}").write_bytes(MIXED_MSG)
        entries = self.folder.scan().messages
        self.assertEqual([e.size for e in entries], [UNKNOWN_SIZE, UNKNOWN_SIZE])  # until asked
        self.assertEqual(self.folder.sizes(entries), {e.base: len(CRLF_MSG) for e in entries})
        self.assertEqual([self.folder.read(e) for e in entries], [CRLF_MSG, CRLF_MSG])

    def test_append_with_bare_lf(self) -> None:
        """An APPENDed message with bare LF is indexed with the size of what is sent."""
        self.folder.add(LF_MSG)
        (entry,) = self.folder.scan().messages
        self.assertEqual((entry.size, self.folder.read(entry)), (len(CRLF_MSG), CRLF_MSG))

    def test_old_index_is_refreshed(self) -> None:
        """An index of cache version 1 (ENVELOPE without groups, bare LF counted as one
        octet) loses its cached parts and gets its sizes measured again; UIDs, MODSEQs
        and HIGHESTMODSEQ stay."""
        (self.root / "cur" / "1700000000.M1P1.otherhost:2,").write_bytes(LF_MSG)
        first = self.folder.scan()
        self.folder.sizes(first.messages)
        (entry,) = first.messages
        self.folder.cache_parts({(entry.uid, entry.base): CachedParts(b"OLD", b"OLD", b"OLD")})
        db = sqlite3.connect(self.root / INDEX_FILE)
        with db:
            db.execute("UPDATE messages SET size = ?", (len(LF_MSG),))
            db.execute("DELETE FROM meta WHERE key = 'cache_version'")
        db.close()
        # a FETCH of cached parts may open the old index first: the sizes still get measured
        self.assertEqual(
            self.folder.cached_parts([entry.uid]), {entry.uid: CachedParts(None, None, None)}
        )
        after = self.folder.scan()
        (again,) = after.messages
        self.assertEqual(
            (again.uid, again.modseq, again.size, after.highestmodseq),
            (entry.uid, entry.modseq, UNKNOWN_SIZE, first.highestmodseq),
        )  # measured again when asked
        self.assertEqual(self.folder.sizes(after.messages), {entry.base: len(CRLF_MSG)})
        self.assertEqual(
            self.folder.cached_parts([entry.uid]), {entry.uid: CachedParts(None, None, None)}
        )
        db = sqlite3.connect(self.root / INDEX_FILE)
        (version,) = db.execute("SELECT value FROM meta WHERE key = 'cache_version'").fetchone()
        db.close()
        self.assertEqual(version, index_module.CACHE_VERSION)
