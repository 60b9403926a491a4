"""CONDSTORE and QRESYNC (RFC 7162) on the wire, with the folder index behind them: the RFC's
examples adapted to a three-message INBOX, bytes in and bytes out (StringTransport)."""

from __future__ import annotations

import os
from typing import Any

from test_imap_server import MSG1, MSG2, T1, T2, Harness
from twisted.trial import unittest

from twistedmail.maildir import Folder, write_durably

T3 = T2 + 86400
MSG3 = b"From: dave@example.org\r\nSubject: third\r\n\r\nthird body\r\n"


class CondstoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "", T1)
        self.h.add(MSG2, "", T2)
        self.h.add(MSG3, "", T3)
        self.h.login()

    def select(self, h: Harness | None = None, params: bytes = b"") -> list[bytes]:
        return (h or self.h).cmd(b"s SELECT INBOX" + params)

    def test_select_condstore_reports_highestmodseq(self) -> None:
        """RFC 7162 §3.1.2.1, §3.1.8: SELECT (CONDSTORE) answers OK [HIGHESTMODSEQ]; a new
        index counts from 1 and the first sync gives every message MODSEQ 2."""
        lines = self.select(params=b" (CONDSTORE)")
        self.assertIn(b"* OK [HIGHESTMODSEQ 2] Highest", lines)
        self.assertEqual(lines[-1], b"s OK [READ-WRITE] SELECT completed")
        self.assertEqual(
            self.h.cmd(b"a FETCH 1:* (MODSEQ)"),
            [
                b"* 1 FETCH (MODSEQ (2))",
                b"* 2 FETCH (MODSEQ (2))",
                b"* 3 FETCH (MODSEQ (2))",
                b"a OK FETCH completed",
            ],
        )

    def test_unknown_select_parameter_is_bad(self) -> None:
        """RFC 4466 §2.1: an unknown SELECT parameter is BAD."""
        self.assertEqual(self.select(params=b" (FOO)"), [b"s BAD Unknown select parameter"])

    def test_store_then_fetch_changedsince(self) -> None:
        """RFC 7162 §3.1.4.1 example: C{UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)} returns
        only the messages changed since, with their MODSEQ."""
        self.select()
        self.assertEqual(
            self.h.cmd(b"a STORE 2 +FLAGS (\\Seen)"),
            [b"* 2 FETCH (FLAGS (\\Seen))", b"a OK STORE completed"],
        )
        self.assertEqual(
            self.h.cmd(b"b UID FETCH 1:* (FLAGS) (CHANGEDSINCE 2)"),
            [
                b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (3) UID 2)",
                b"* OK [HIGHESTMODSEQ 3] Highest",  # RFC 7162 §3.1: the enabling command
                b"b OK FETCH completed",
            ],
        )
        # CONDSTORE is now enabled: STORE answers carry UID and MODSEQ (RFC 7162 §3.1.3)
        self.assertEqual(
            self.h.cmd(b"c STORE 1 +FLAGS (\\Flagged)"),
            [b"* 1 FETCH (FLAGS (\\Flagged) UID 1 MODSEQ (4))", b"c OK STORE completed"],
        )

    def test_store_unchangedsince(self) -> None:
        """RFC 7162 §3.1.3 example (a103): C{UID STORE ... (UNCHANGEDSINCE n)
        +FLAGS.SILENT (\\Deleted)} changes the messages not modified since n, reports their
        new MODSEQ even though .SILENT, and lists the others in [MODIFIED]."""
        self.select()
        self.h.cmd(b"a STORE 2 +FLAGS (\\Seen)")  # message 2 now has MODSEQ 3
        self.assertEqual(
            self.h.cmd(b"b UID STORE 1:3 (UNCHANGEDSINCE 2) +FLAGS.SILENT (\\Deleted)"),
            [
                b"* OK [HIGHESTMODSEQ 4] Highest",  # RFC 7162 §3.1: the enabling command
                b"* 1 FETCH (UID 1 MODSEQ (4))",
                b"* 3 FETCH (UID 3 MODSEQ (4))",
                b"b OK [MODIFIED 2] Conditional STORE failed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b"c FETCH 1:* (FLAGS MODSEQ)"),
            [
                b"* 1 FETCH (FLAGS (\\Deleted) MODSEQ (4))",
                b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (3))",
                b"* 3 FETCH (FLAGS (\\Deleted) MODSEQ (4))",
                b"c OK FETCH completed",
            ],
        )
        names = sorted(os.listdir(self.h.root / "cur"))
        self.assertEqual(sorted(n.split(":2,")[1] for n in names), ["S", "T", "T"])

    def test_unchangedsince_zero_fails_everything(self) -> None:
        """RFC 7162 §3.1.3: every message has a MODSEQ above 0."""
        self.select()
        self.assertEqual(
            self.h.cmd(b"a STORE 1:2 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)"),
            [b"* OK [HIGHESTMODSEQ 2] Highest", b"a OK [MODIFIED 1:2] Conditional STORE failed"],
        )

    def test_search_modseq(self) -> None:
        """RFC 7162 §3.1.5 example: C{SEARCH MODSEQ "/flags/\\\\draft" all 620162338} ends
        with (MODSEQ highest-of-the-matches); the entry name is ignored (per-message
        mod-sequences)."""
        self.select()
        self.h.cmd(b"a STORE 2 +FLAGS (\\Draft)")
        self.assertEqual(
            self.h.cmd(b'b SEARCH MODSEQ "/flags/\\\\draft" all 3'),
            [
                b"* SEARCH 2 (MODSEQ 3)",
                b"* OK [HIGHESTMODSEQ 3] Highest",  # RFC 7162 §3.1: the enabling command
                b"b OK SEARCH completed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b"c UID SEARCH MODSEQ 2"),
            [b"* SEARCH 1 2 3 (MODSEQ 3)", b"c OK SEARCH completed"],
        )
        self.assertEqual(self.h.cmd(b"d SEARCH MODSEQ 9"), [b"* SEARCH", b"d OK SEARCH completed"])
        self.assertEqual(
            self.h.cmd(b'e SEARCH MODSEQ "/flags/x" odd 3'), [b"e BAD bad MODSEQ entry type"]
        )
        self.assertEqual(
            self.h.cmd(b'f SEARCH MODSEQ "/flags/\\\\seen" priv x'), [b"f BAD bad MODSEQ value"]
        )

    def test_esearch_modseq(self) -> None:
        """RFC 7162 §3.1.5 with ESEARCH (RFC 4731): the MODSEQ result follows the others."""
        self.select()
        self.h.cmd(b"a STORE 3 +FLAGS (\\Seen)")
        self.assertEqual(
            self.h.cmd(b"b SEARCH RETURN (ALL COUNT) MODSEQ 3"),
            [
                b'* ESEARCH (TAG "b") ALL 3 COUNT 1 MODSEQ 3',
                b"* OK [HIGHESTMODSEQ 3] Highest",  # RFC 7162 §3.1: the enabling command
                b"b OK SEARCH completed",
            ],
        )

    def test_esearch_min_max_modseq_of_the_messages_returned(self) -> None:
        """RFC 4731 §3.2: with only MIN and/or MAX, MODSEQ is the highest of the messages
        returned, not of all matches (imaptest esearch-condstore)."""
        self.select()
        self.h.cmd(b"a STORE 1 +FLAGS (\\Seen)")  # MODSEQ 3
        self.h.cmd(b"b STORE 3 +FLAGS (\\Seen)")  # 4
        self.h.cmd(b"c STORE 2 +FLAGS (\\Seen)")  # 5
        self.assertEqual(
            self.h.cmd(b"d SEARCH RETURN (MIN) 1:3 MODSEQ 1")[-3:],
            [
                b'* ESEARCH (TAG "d") MIN 1 MODSEQ 3',
                b"* OK [HIGHESTMODSEQ 5] Highest",
                b"d OK SEARCH completed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b"e SEARCH RETURN (MAX) 1:3 MODSEQ 1"),
            [b'* ESEARCH (TAG "e") MAX 3 MODSEQ 4', b"e OK SEARCH completed"],
        )
        self.assertEqual(
            self.h.cmd(b"f SEARCH RETURN (MIN MAX) 1:3 MODSEQ 1"),
            [b'* ESEARCH (TAG "f") MIN 1 MAX 3 MODSEQ 4', b"f OK SEARCH completed"],
        )
        self.assertEqual(
            self.h.cmd(b"g SEARCH RETURN (COUNT) 1:3 MODSEQ 1"),
            [b'* ESEARCH (TAG "g") COUNT 3 MODSEQ 5', b"g OK SEARCH completed"],
        )

    def test_status_highestmodseq(self) -> None:
        """RFC 7162 §3.1.2.2: the HIGHESTMODSEQ status item."""
        self.assertEqual(
            self.h.cmd(b"a STATUS INBOX (HIGHESTMODSEQ MESSAGES)"),
            [b'* STATUS "INBOX" (HIGHESTMODSEQ 2 MESSAGES 3)', b"a OK STATUS completed"],
        )

    def test_change_by_another_process_gets_a_new_modseq(self) -> None:
        """A flag change made directly in the Maildir (Dovecot, a rename by hand) gets a new
        MODSEQ at the next sync and is pushed as FETCH with UID and MODSEQ."""
        self.select(params=b" (CONDSTORE)")
        cur = self.h.root / "cur"
        first = Folder(self.h.root).scan().messages[0]
        os.rename(cur / first.filename, cur / (first.base + ":2,F"))
        self.assertEqual(
            self.h.cmd(b"a NOOP"),
            [b"* 1 FETCH (FLAGS (\\Flagged) UID 1 MODSEQ (3))", b"a OK NOOP completed"],
        )

    def test_implicit_seen_reports_modseq(self) -> None:
        """RFC 7162 §3.1.4: the FETCH that sets \\Seen carries the new MODSEQ."""
        self.select(params=b" (CONDSTORE)")
        out = self.h.send(b"a FETCH 1 (BODY[TEXT])\r\n")
        self.assertTrue(out.startswith(b"* 1 FETCH (BODY[TEXT] {"), out)
        self.assertTrue(
            out.endswith(b" FLAGS (\\Seen) MODSEQ (3))\r\na OK FETCH completed\r\n"), out
        )


class ConcurrencyTests(unittest.TestCase):
    """Two CONDSTORE sessions on one folder and a delivery: each sees EXISTS and the other's
    flag changes (with UID and MODSEQ) while IDLE, and MODSEQs only grow."""

    def test_two_sessions_and_a_delivery(self) -> None:
        """RFC 7162 §3.1: with two CONDSTORE sessions and a delivery, each STORE gets a new
        MODSEQ, reported to the other session, and HIGHESTMODSEQ follows."""
        one = Harness(self)
        one.add(MSG1, "", T1)
        one.login()
        two = Harness(self, root=one.root, notifier=one.notifier)
        two.login()
        one.cmd(b"s SELECT INBOX (CONDSTORE)")
        two.cmd(b"s SELECT INBOX (CONDSTORE)")
        self.assertEqual(one.cmd(b"i IDLE"), [b"+ idling"])
        write_durably(one.root / "new", MSG2)
        one.notifier.changed(one.root)
        self.assertEqual(one.take(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")
        # RFC 3501 §7.4.1: a message number means what the client was told: message 2
        # is not there for it before its EXISTS (which ends the command)
        self.assertEqual(
            two.cmd(b"a STORE 2 +FLAGS (\\Flagged)"),
            [b"* 2 EXISTS", b"* 0 RECENT", b"a OK STORE completed"],
        )
        self.assertEqual(
            two.cmd(b"a STORE 2 +FLAGS (\\Flagged)"),
            [b"* 2 FETCH (FLAGS (\\Flagged) UID 2 MODSEQ (4))", b"a OK STORE completed"],
        )
        self.assertEqual(one.take(), b"* 2 FETCH (FLAGS (\\Flagged \\Recent) UID 2 MODSEQ (4))\r\n")
        self.assertEqual(
            two.cmd(b"b STORE 1 +FLAGS (\\Seen)"),
            [b"* 1 FETCH (FLAGS (\\Seen) UID 1 MODSEQ (5))", b"b OK STORE completed"],
        )
        self.assertEqual(one.take(), b"* 1 FETCH (FLAGS (\\Seen) UID 1 MODSEQ (5))\r\n")
        self.assertEqual(one.cmd(b"DONE"), [b"i OK IDLE terminated"])
        self.assertEqual(
            one.cmd(b"c STATUS INBOX (HIGHESTMODSEQ)"),
            [b'* STATUS "INBOX" (HIGHESTMODSEQ 5)', b"c OK STATUS completed"],
        )


class QresyncTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "", T1)
        self.h.add(MSG2, "", T2)
        self.h.add(MSG3, "", T3)
        self.h.login()

    def other(self) -> Harness:
        other = Harness(self, root=self.h.root, notifier=self.h.notifier)
        other.login()
        return other

    def test_enable_qresync_implies_condstore(self) -> None:
        """RFC 7162 §3.2.3: C{ENABLE QRESYNC} answers C{* ENABLED QRESYNC} and turns on
        CONDSTORE too."""
        self.assertEqual(
            self.h.cmd(b"a ENABLE QRESYNC"), [b"* ENABLED QRESYNC", b"a OK ENABLE completed"]
        )
        self.assertEqual(self.h.server.enabled, {b"QRESYNC", b"CONDSTORE"})

    def test_qresync_parameter_needs_enable(self) -> None:
        """RFC 7162 §3.2.5: BAD for SELECT (QRESYNC ...) without ENABLE QRESYNC."""
        self.assertEqual(
            self.h.cmd(b"s SELECT INBOX (QRESYNC (1 2))"), [b"s BAD QRESYNC is not enabled"]
        )

    def test_expunge_is_vanished_once_enabled(self) -> None:
        """RFC 7162 §3.2.10: VANISHED instead of EXPUNGE, for this session's and others'
        expunges."""
        self.h.cmd(b"a ENABLE QRESYNC")
        self.h.cmd(b"s SELECT INBOX")
        self.h.cmd(b"b STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.h.cmd(b"c EXPUNGE"), [b"* VANISHED 1:2", b"c OK EXPUNGE completed"])
        other = self.other()
        other.cmd(b"s SELECT INBOX")
        self.assertEqual(
            other.cmd(b"t STORE 1 +FLAGS (\\Deleted)"),
            [b"* 1 FETCH (FLAGS (\\Deleted))", b"t OK STORE completed"],
        )
        self.assertEqual(other.cmd(b"u EXPUNGE"), [b"* 1 EXPUNGE", b"u OK EXPUNGE completed"])
        self.assertEqual(self.h.cmd(b"d NOOP"), [b"* VANISHED 3", b"d OK NOOP completed"])

    def test_select_qresync(self) -> None:
        """RFC 7162 §3.2.5.2 example (A03): SELECT (QRESYNC (uidvalidity modseq known-uids))
        sends VANISHED (EARLIER) for the known UIDs expunged since, then FETCH (UID FLAGS
        MODSEQ) for the messages changed since; the expunge survives in the index."""
        self.h.cmd(b"s SELECT INBOX")
        uidvalidity = self.h.uidvalidity()
        self.h.cmd(b"a STORE 3 +FLAGS (\\Seen)")  # MODSEQ 3
        self.h.cmd(b"b STORE 2 +FLAGS (\\Deleted)")  # MODSEQ 4
        self.h.cmd(b"c EXPUNGE")  # MODSEQ 5: UID 2 vanished
        other = self.other()
        other.cmd(b"e ENABLE QRESYNC")
        lines = other.cmd(b"f SELECT INBOX (QRESYNC (%d 2 1:3))" % uidvalidity)
        self.assertEqual(
            lines[-4:],
            [
                b"* OK [HIGHESTMODSEQ 5] Highest",
                b"* VANISHED (EARLIER) 2",
                b"* 2 FETCH (UID 3 FLAGS (\\Seen) MODSEQ (3))",
                b"f OK [READ-WRITE] SELECT completed",
            ],
        )
        # known-uids limits what is reported; nothing changed since 5
        lines = other.cmd(b"g SELECT INBOX (QRESYNC (%d 5 1:3 (1:2 1:3)))" % uidvalidity)
        self.assertEqual(lines[0], b"* OK [CLOSED] Previous mailbox closed")  # §3.2.11
        self.assertEqual(lines[-2:], [b"* OK [HIGHESTMODSEQ 5] Highest", lines[-1]])
        lines = other.cmd(b"h SELECT INBOX (QRESYNC (%d 2 3))" % uidvalidity)
        self.assertNotIn(b"* VANISHED (EARLIER) 2", lines)
        # another UIDVALIDITY: the client must resynchronise from scratch, nothing is sent
        lines = other.cmd(b"i SELECT INBOX (QRESYNC (%d 2 1:3))" % (uidvalidity + 1))
        self.assertEqual(lines[-2:], [b"* OK [HIGHESTMODSEQ 5] Highest", lines[-1]])

    def test_uid_fetch_vanished(self) -> None:
        """RFC 7162 §3.2.6 example: C{UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345
        VANISHED)} sends VANISHED (EARLIER) for the expunged UIDs in the set."""
        self.h.cmd(b"a ENABLE QRESYNC")
        self.h.cmd(b"s SELECT INBOX")
        self.h.cmd(b"b STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.h.cmd(b"c EXPUNGE")
        self.h.cmd(b"d STORE 2 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(
            self.h.cmd(b"e UID FETCH 1:* (FLAGS) (CHANGEDSINCE 2 VANISHED)"),
            [
                b"* VANISHED (EARLIER) 1",
                b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (5) UID 3)",
                b"e OK FETCH completed",
            ],
        )

    def test_vanished_modifier_rules(self) -> None:
        """RFC 7162 §3.2.6: VANISHED only with UID FETCH, CHANGEDSINCE and QRESYNC enabled."""
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(
            self.h.cmd(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"),
            [b"a BAD VANISHED needs UID FETCH and ENABLE QRESYNC"],
        )
        self.assertEqual(
            self.h.cmd(b"b FETCH 1:* (FLAGS) (VANISHED)"), [b"b BAD VANISHED needs CHANGEDSINCE"]
        )
        self.assertEqual(
            self.h.cmd(b"c FETCH 1 (FLAGS) (CHANGEDSINCE x)"),
            [b"c BAD Syntax error: Bad modifier value"],
        )


class IndexedFetchTests(unittest.TestCase):
    """DESIGN §4: SELECT, UID FETCH 1:* (UID FLAGS) and a FETCH of cached ENVELOPE and
    BODYSTRUCTURE open no message file."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "", T1)
        self.h.add(MSG2, "S", T2)
        self.h.login()

    def forbid_reading(self) -> None:
        def refuse(folder: Folder, entry: object) -> bytes:
            raise AssertionError("message file opened")

        self.patch(Folder, "read", refuse)

    def test_select_and_flags_do_not_read_messages(self) -> None:
        """SELECT and FETCH of UID and FLAGS are answered from the folder index without reading a
        message file."""
        self.forbid_reading()
        self.assertEqual(self.h.cmd(b"s SELECT INBOX")[-1], b"s OK [READ-WRITE] SELECT completed")
        self.assertEqual(
            self.h.cmd(b"a UID FETCH 1:* (UID FLAGS)"),
            [
                b"* 1 FETCH (UID 1 FLAGS ())",
                b"* 2 FETCH (UID 2 FLAGS (\\Seen))",
                b"a OK FETCH completed",
            ],
        )

    def test_envelope_and_bodystructure_cached_after_first_fetch(self) -> None:
        """ENVELOPE, BODYSTRUCTURE and BODY are cached after the first FETCH and answered again
        byte for byte without reading the files."""
        self.h.cmd(b"s SELECT INBOX")
        query = b"a FETCH 1:2 (ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)\r\n"
        first = self.h.send(query)
        self.assertIn(b'* 2 FETCH (ENVELOPE (NIL "second" ((NIL NIL "carol" ', first)
        self.assertIn(b' BODY ("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 13 1) ', first)
        self.forbid_reading()
        self.assertEqual(self.h.send(query), first)

    def test_only_the_parts_fetched_are_cached(self) -> None:
        """ENVELOPE alone caches only ENVELOPE; BODYSTRUCTURE is rendered (the file read)
        at its own first FETCH, and then both come from the index."""
        self.h.cmd(b"s SELECT INBOX")
        self.h.cmd(b"a FETCH 2 (ENVELOPE)")
        reads: list[int] = []
        real = Folder.read

        def counting(folder: Folder, entry: Any) -> bytes:
            reads.append(entry.uid)
            return real(folder, entry)

        self.patch(Folder, "read", counting)
        self.h.cmd(b"b FETCH 2 (ENVELOPE)")
        self.assertEqual(reads, [])
        self.h.cmd(b"c FETCH 2 (BODYSTRUCTURE)")
        self.assertEqual(reads, [2])
        out = self.h.cmd(b"d FETCH 2 (ENVELOPE BODYSTRUCTURE)")
        self.assertEqual(reads, [2])
        self.assertTrue(out[0].startswith(b'* 2 FETCH (ENVELOPE (NIL "second" '), out)
