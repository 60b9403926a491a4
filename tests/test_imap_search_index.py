"""SEARCH and SORT from the index's header cache (twistedmail.imap.search): header keys
answered without opening message files once cached (at APPEND or at the first search), BODY
read only for the messages the other keys left, the cache surviving an index from before it.
Whole response lines over a fake transport; files changed on disk behind the server's back
show what was read."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from test_imap_server import MSG1, MSG2, T1, Harness
from twisted.trial import unittest

from twistedmail import index as index_module
from twistedmail.imap.search import cached_fields
from twistedmail.index import HEADERS_VERSION, INDEX_FILE, FolderIndex
from twistedmail.maildir import Folder, make_maildir, write_durably

MSG3 = (
    b"From: =?utf-8?q?Z=C3=BCrich_Team?= <team@example.net>\r\n"
    b"To: dave@example.test\r\n"
    b"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?= zulu\r\n"
    b"Date: Sun, 25 Mar 2007 00:30:00 +0200\r\n"
    b"X-Other: skipped\r\n"
    b"\r\n"
    b"third body with needle\r\n"
)


def blank_files(root: Path) -> None:
    """Empty every message file in place (same names, so no directory change is seen)."""
    for path in (root / "cur").iterdir():
        path.write_bytes(b"")


class HeaderCacheSearchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.add(MSG2, "", T1 + 1)
        self.h.add(MSG3, "", T1 + 2)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def cached(self) -> dict[int, tuple[str, bytes, str]]:
        return Folder(self.h.root).cached_headers()

    def test_cached_fields_keep_only_search_fields(self) -> None:
        """The cache keeps the HEADER.FIELDS form of the search fields (RFC 3501 §6.4.5)."""
        self.assertEqual(
            cached_fields(MSG3)[0],
            MSG3.split(b"X-Other")[0] + b"\r\n",
        )

    def test_header_keys_answered_after_files_emptied(self) -> None:
        """Once cached, FROM/SUBJECT/SENTON/HEADER answers never read the files (RFC 3501
        §6.4.4), with RFC 2047 decoding as before; BODY still reads them."""
        self.assertEqual(
            self.h.cmd(b"a SEARCH FROM bob"), [b"* SEARCH 1", b"a OK SEARCH completed"]
        )
        self.assertEqual(sorted(self.cached()), [1, 2, 3])
        blank_files(self.h.root)
        for line, found in [
            (b"b SEARCH FROM bob", b"* SEARCH 1"),
            (b"b SEARCH FROM z\xc3\xbcrich", b"* SEARCH 3"),
            (b"b SEARCH CHARSET UTF-8 SUBJECT GR\xc3\x9c\xc3\x9fE", b"* SEARCH 3"),
            (b"b SEARCH SUBJECT second", b"* SEARCH 2"),
            (b"b SEARCH SENTON 25-Mar-2007", b"* SEARCH 3"),
            (b"b SEARCH HEADER Message-ID 1@example", b"* SEARCH 1"),
            (b"b SEARCH TO alice NOT SEEN", b"* SEARCH"),
            (b"b SEARCH HEADER X-Other skipped", b"* SEARCH"),  # not cached: the file is read
            (b"b SEARCH BODY needle", b"* SEARCH"),  # BODY reads the (now empty) file
        ]:
            self.assertEqual(self.h.cmd(line), [found, b"b OK SEARCH completed"], line)

    def test_sort_from_cache(self) -> None:
        """SORT (RFC 5256 §3) DATE and SUBJECT keys come from the header cache too."""
        self.assertEqual(
            self.h.cmd(b"a SORT (DATE) UTF-8 ALL"), [b"* SORT 3 1 2", b"a OK SORT completed"]
        )
        blank_files(self.h.root)
        self.assertEqual(
            self.h.cmd(b"b SORT (REVERSE SUBJECT) UTF-8 ALL"),
            [b"* SORT 2 1 3", b"b OK SORT completed"],
        )
        self.assertEqual(
            self.h.cmd(b"c SORT (DATE) UTF-8 ALL"), [b"* SORT 3 1 2", b"c OK SORT completed"]
        )

    def test_body_reads_only_remaining_candidates(self) -> None:
        """UNSEEN BODY x opens only the unseen messages' files: the seen one is never read
        (and so never cached)."""
        self.assertEqual(
            self.h.cmd(b"a SEARCH BODY needle UNSEEN"), [b"* SEARCH 3", b"a OK SEARCH completed"]
        )
        self.assertEqual(sorted(self.cached()), [2, 3])

    def test_append_fills_the_cache(self) -> None:
        """APPEND (RFC 3501 §6.3.11) caches the new message's fields at once."""
        self.h.server.dataReceived(b"p APPEND INBOX {%d}\r\n" % len(MSG3))
        self.h.take()
        self.assertTrue(self.h.send(MSG3 + b"\r\n").endswith(b" 4] APPEND completed\r\n"))
        self.assertEqual(self.cached()[4][1:], cached_fields(MSG3))
        blank_files(self.h.root)
        self.h.cmd(b"n NOOP")
        self.assertEqual(
            self.h.cmd(b"q SEARCH SUBJECT zulu"), [b"* SEARCH 4", b"q OK SEARCH completed"]
        )


class HeaderCacheIndexTests(unittest.TestCase):
    def test_index_from_before_the_cache_keeps_rows(self) -> None:
        """An index made before the header cache existed gets the table, keeping its UIDs and
        MODSEQs (no rebuild: HIGHESTMODSEQ stays, RFC 7162 §3.1.2.1)."""
        h = Harness(self)
        h.add(MSG1, "", T1)
        folder = Folder(h.root)
        before = folder.scan()
        db = sqlite3.connect(h.root / INDEX_FILE)
        db.execute("DROP TABLE headers")
        db.execute("DELETE FROM meta WHERE key = 'headers_version'")
        db.commit()
        db.close()
        with FolderIndex(h.root) as index:
            self.assertEqual(index.get("headers_version"), HEADERS_VERSION)
            self.assertEqual(index.headers(), {})
        after = folder.scan()
        self.assertEqual(after.messages, before.messages)
        self.assertEqual(after.highestmodseq, before.highestmodseq)

    def test_expunge_drops_cached_row(self) -> None:
        """A cached row goes with its message; one whose base name no longer matches is
        ignored."""
        h = Harness(self)
        h.add(MSG1, "", T1)
        folder = Folder(h.root)
        entry = folder.scan().messages[0]
        folder.cache_headers(
            [(entry.uid, entry.base, b"x\r\n", "{}"), (9, "other", b"y\r\n", "{}")]
        )
        self.assertEqual(folder.cached_headers(), {entry.uid: (entry.base, b"x\r\n", "{}")})
        folder.remove_many([entry])
        with FolderIndex(h.root) as index:
            rows = index.db.execute("SELECT uid FROM headers").fetchall()
        self.assertEqual(rows, [(9,)])

    def test_busy_index_is_not_rebuilt(self) -> None:
        """An index another connection holds locked past the busy timeout is busy, not
        corrupt: the open fails and the file (UIDs, MODSEQs, cache) is kept."""
        h = Harness(self)
        h.add(MSG1, "", T1)
        before = Folder(h.root).scan()
        self.patch(index_module, "BUSY_TIMEOUT", 0.01)
        holder = sqlite3.connect(h.root / INDEX_FILE, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with self.assertRaises(sqlite3.OperationalError):
                FolderIndex(h.root)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        self.assertEqual(Folder(h.root).scan().messages, before.messages)
        with FolderIndex(h.root) as index:
            self.assertEqual(index.floor, 1)


class CacheAtDeliveryTests(unittest.TestCase):
    """The header cache filled at delivery (the bytes are in hand) and SORT keys parsed once."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")  # the folder has an index from here on

    def test_delivered_message_searched_without_reading_it(self) -> None:
        """A message delivered to new/ keeps its header fields in the index: after the scan
        that gives it its UID, SEARCH FROM and SUBJECT (RFC 3501 §6.4.4) answer with its file
        emptied, and the fields kept are those a first SEARCH would have cut out."""
        base = write_durably(self.h.root / "new", MSG3)
        self.assertEqual(self.h.cmd(b"n NOOP")[0], b"* 2 EXISTS")
        kept = Folder(self.h.root).cached_headers()[2]
        self.assertEqual(kept, (base, cached_fields(MSG3)[0], ""))  # decoded at first SEARCH
        blank_files(self.h.root)
        self.assertEqual(
            self.h.cmd(b"a SEARCH FROM z\xc3\xbcrich"), [b"* SEARCH 2", b"a OK SEARCH completed"]
        )
        self.assertEqual(Folder(self.h.root).cached_headers()[2][1:], cached_fields(MSG3))
        self.assertEqual(
            self.h.cmd(b"b SEARCH SUBJECT zulu"), [b"* SEARCH 2", b"b OK SEARCH completed"]
        )
        with FolderIndex(self.h.root) as index:
            self.assertEqual(index.db.execute("SELECT COUNT(*) FROM arriving").fetchone(), (0,))

    def test_folder_without_index_keeps_nothing(self) -> None:
        """A folder no IMAP client opened yet gets no index from a delivery (the first
        SELECT builds it from the files)."""
        other = self.h.root / ".Other"
        make_maildir(other, folder=True)
        write_durably(other / "new", MSG3)
        self.assertFalse((other / INDEX_FILE).exists())

    def test_sort_keys_parsed_once(self) -> None:
        """SORT (RFC 5256 §3) keeps each message's parsed keys: a later SORT takes them from
        the index even when the cached fields no longer hold them (without the kept keys
        both orders below would fall back to arrival and sequence order)."""
        self.h.add(MSG3, "", T1 + 5)
        self.h.cmd(b"n NOOP")
        self.assertEqual(
            self.h.cmd(b"a SORT (DATE SUBJECT) UTF-8 ALL"), [b"* SORT 2 1", b"a OK SORT completed"]
        )
        with FolderIndex(self.h.root) as index:
            index.db.execute("UPDATE headers SET fields = ?", (b"\r\n",))
            keys = dict(index.db.execute("SELECT uid, dated FROM sortkeys"))
        self.assertEqual(sorted(keys), [1, 2])
        self.assertEqual(
            self.h.cmd(b"b SORT (REVERSE DATE) UTF-8 ALL"), [b"* SORT 1 2", b"b OK SORT completed"]
        )
        self.assertEqual(
            self.h.cmd(b"c SORT (SUBJECT) UTF-8 ALL"), [b"* SORT 2 1", b"c OK SORT completed"]
        )


class DurableFlagsTests(unittest.TestCase):
    """What is fsynced per command, as Dovecot's C{mail_fsync = optimized}: APPEND (and COPY)
    make the message file, its name in C{cur/} and its UID in C{dovecot-uidlist} durable
    before OK; STORE and EXPUNGE rename or unlink before OK (a kill -9 keeps them:
    tests/e2e/test_e2e_imap_crash.py) and fsync nothing."""

    def setUp(self) -> None:
        self.synced: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            # the path the descriptor names, relative to the folder (tmp/ files by their dir)
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            name = "tmp/" if path.parent.name == "tmp" else path.name
            self.synced.append(name)
            real(fd)

        self.patch(os, "fsync", fsync)
        self.h = Harness(self)
        self.h.add(MSG1, "", T1)
        self.h.add(MSG2, "", T1)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")
        self.synced.clear()

    def test_append_syncs_file_name_and_uid(self) -> None:
        """RFC 3501 §6.3.11: the message file, C{cur/} (its link) and C{dovecot-uidlist} (its
        UID, RFC 3501 §2.3.1.1) are fsynced, in that order, before APPEND's OK."""
        self.h.send(b"a APPEND INBOX {5}\r\n")
        reply = self.h.send(b"hello\r\n").split(b"\r\n")[-2]
        self.assertEqual(self.synced, ["tmp/", "cur", "dovecot-uidlist"])
        uidvalidity = self.h.uidvalidity()
        self.assertEqual(reply, b"a OK [APPENDUID %d 3] APPEND completed" % uidvalidity)

    def test_store_and_expunge_sync_nothing(self) -> None:
        """STORE renames and EXPUNGE unlinks before their OK, and neither fsyncs a file or
        a directory (nor does the index: SQLite's write-ahead log, synced at checkpoints)."""
        cur = self.h.root / "cur"
        self.assertEqual(self.h.cmd(b"a STORE 1 +FLAGS (\\Seen)")[-1], b"a OK STORE completed")
        self.assertEqual(self.h.cmd(b"b STORE 2 +FLAGS (\\Deleted)")[-1], b"b OK STORE completed")
        self.assertEqual(sorted(n.rsplit(",", 1)[1] for n in os.listdir(cur)), ["S", "T"])
        self.assertEqual(self.h.cmd(b"c EXPUNGE")[-1], b"c OK EXPUNGE completed")
        self.assertEqual([n.rsplit(",", 1)[1] for n in os.listdir(cur)], ["S"])
        self.assertEqual(self.synced, [])
