"""SEARCH of one flag key (RFC 3501 §6.4.4: UNSEEN, SEEN, DELETED, FLAGGED, ...) answered
from the session's view in one pass (twistedmail.imap.searchkeys.flag_search)."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.test_imap_server import MSG1, MSG2, T1, Harness
from twistedmail.imap import mailbox
from twistedmail.imap.searchkeys import flag_search
from twistedmail.testing import run_now


class FlagSearchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        for n, flags in enumerate(("S", "", "FS", "T", "")):
            self.h.add(MSG1 if n % 2 else MSG2, flags, T1 + n)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_each_flag_key(self) -> None:
        """Each flag key and its negation match the messages whose flags say so."""
        answers = {
            b"UNSEEN": b"* SEARCH 2 4 5",
            b"seen": b"* SEARCH 1 3",
            b"FLAGGED": b"* SEARCH 3",
            b"UNFLAGGED": b"* SEARCH 1 2 4 5",
            b"DELETED": b"* SEARCH 4",
            b"ANSWERED": b"* SEARCH",
        }
        for key, answer in answers.items():
            self.assertEqual(self.h.cmd(b"a SEARCH " + key), [answer, b"a OK SEARCH completed"])

    def test_uid_search_unseen(self) -> None:
        """UID SEARCH UNSEEN answers UIDs (RFC 3501 §6.4.8)."""
        self.assertEqual(
            self.h.cmd(b"a UID SEARCH UNSEEN"), [b"* SEARCH 2 4 5", b"a OK SEARCH completed"]
        )

    def test_message_expunged_elsewhere_is_left_out(self) -> None:
        """A message another program removed, seen by the session's rescan but its EXPUNGE
        not sent yet (none during SEARCH, RFC 3501 §7.4.1), is not in the answer; the
        others keep their sequence numbers."""
        cur = self.h.root / "cur"
        (second,) = [n for n in os.listdir(cur) if os.stat(cur / n).st_mtime == T1 + 1]
        os.unlink(cur / second)
        self.h.notifier.changed(self.h.root)  # the session rescans
        self.assertEqual(
            self.h.cmd(b"a SEARCH UNSEEN"), [b"* SEARCH 4 5", b"a OK SEARCH completed"]
        )

    def test_small_view_answered_without_a_thread(self) -> None:
        """A small view (up to INLINE_FLAG_SEARCH messages) is searched for one flag key on
        the reactor thread, no job for a thread; a larger one in a thread, with the same
        answer."""
        jobs: list[object] = []

        def counted(f: Any, *args: Any) -> Deferred[Any]:
            jobs.append(f)
            return run_now(f, *args)

        h = Harness(self, run=counted)
        for n in range(3):
            h.add(MSG1, "S" if n == 1 else "", T1 + n)
        h.login()
        h.cmd(b"s SELECT INBOX")
        jobs.clear()
        self.assertEqual(h.cmd(b"a SEARCH UNSEEN"), [b"* SEARCH 1 3", b"a OK SEARCH completed"])
        self.assertEqual(jobs, [])
        self.patch(mailbox, "INLINE_FLAG_SEARCH", 2)
        self.assertEqual(h.cmd(b"a SEARCH UNSEEN"), [b"* SEARCH 1 3", b"a OK SEARCH completed"])
        self.assertEqual(jobs, [flag_search])
