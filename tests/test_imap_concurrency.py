"""Two IMAP sessions (and other writers) on one folder: flags change by delta under the
folder lock (DESIGN §6), and a session's view changes only in the order RFC 3501 §7.4.1 and
§5.2 allow (EXISTS before any EXPUNGE or FETCH of a new message number)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from twisted.trial import unittest

from tests.test_imap_server import MSG1, MSG2, Harness
from twistedmail.maildir import ChangeNotifier, Folder, split_name


def rename_by_hand(folder: Folder, index: int, letters: str) -> None:
    """What another program (mutt, Dovecot, a shell) does: rename without our lock."""
    entry = folder.scan().messages[index]
    cur = folder.path / "cur"
    (name,) = [n for n in os.listdir(cur) if split_name(n)[0] == entry.base]
    os.rename(cur / name, cur / f"{entry.base}:2,{letters}")


class FlagDeltaTests(unittest.TestCase):
    """Each session is in its own process here (no shared change notifier), so one's view of
    the other's change is stale until it rescans."""

    def setUp(self) -> None:
        self.a = Harness(self)
        self.a.add(MSG1, "S")
        self.a.add(MSG2, "S")
        self.b = Harness(self, root=self.a.root, notifier=ChangeNotifier())
        for h in (self.a, self.b):
            h.login()
            h.cmd(b"s SELECT INBOX")
        self.folder = Folder(self.a.root)

    def flags_on_disk(self) -> list[str]:
        return [e.flags for e in self.folder.scan().messages]

    def test_remove_seen_keeps_answered_set_by_another_session(self) -> None:
        """STORE -FLAGS from a stale view removes only \\Seen (RFC 3501 §6.4.6)."""
        self.assertEqual(
            self.b.cmd(b"b STORE 1 +FLAGS (\\Answered)"),
            [b"* 1 FETCH (FLAGS (\\Answered \\Seen))", b"b OK STORE completed"],
        )
        self.assertEqual(
            self.a.cmd(b"a STORE 1 -FLAGS (\\Seen)"),
            [b"* 1 FETCH (FLAGS (\\Answered))", b"a OK STORE completed"],
        )
        self.assertEqual(self.flags_on_disk(), ["R", "S"])

    def test_add_flag_keeps_flag_removed_elsewhere_removed(self) -> None:
        """STORE +FLAGS from a stale view does not bring back \\Seen removed meanwhile."""
        self.b.cmd(b"b STORE 1 -FLAGS (\\Seen)")
        self.assertEqual(
            self.a.cmd(b"a STORE 1 +FLAGS (\\Flagged)"),
            [b"* 1 FETCH (FLAGS (\\Flagged))", b"a OK STORE completed"],
        )
        self.assertEqual(self.flags_on_disk(), ["F", "S"])

    def test_keywords_are_deltas_too(self) -> None:
        """A keyword set by one session survives another's stale +FLAGS of another keyword."""
        self.b.cmd(b"b STORE 1 +FLAGS ($Label1)")
        self.a.cmd(b"a STORE 1 +FLAGS ($Label2)")
        self.assertEqual(self.flags_on_disk(), ["Sab", "S"])

    def test_rename_by_hand_between_two_stores(self) -> None:
        """A flag another program set by renaming the file survives our -FLAGS."""
        rename_by_hand(self.folder, 0, "FS")
        self.a.cmd(b"a STORE 1 -FLAGS (\\Seen)")
        self.assertEqual(self.flags_on_disk(), ["F", "S"])

    def test_copy_takes_the_flags_the_file_has_now(self) -> None:
        """COPY keeps the message's flags as they are, not as the stale view has them
        (RFC 3501 §6.4.7)."""
        self.b.cmd(b"b STORE 1 +FLAGS (\\Flagged $Work)")
        self.a.cmd(b"c CREATE Archive")
        self.assertEqual(self.a.cmd(b"a COPY 1 Archive")[-1][:5], b"a OK ")
        archive = Folder(self.a.maildir.folder_path("Archive"))
        (entry,) = archive.scan().messages
        self.assertEqual(entry.flags, "FSa")
        self.assertEqual(archive.keywords(), {"a": "$Work"})

    def test_expunge_skips_a_message_undeleted_elsewhere(self) -> None:
        """EXPUNGE removes the messages that have \\Deleted now (RFC 3501 §6.4.3)."""
        self.a.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.b.cmd(b"n NOOP")
        self.b.cmd(b"b STORE 1 -FLAGS.SILENT (\\Deleted)")
        self.assertEqual(
            self.a.cmd(b"e EXPUNGE"),
            [b"* 1 FETCH (FLAGS (\\Seen))", b"e OK EXPUNGE completed"],
        )
        self.assertEqual(self.flags_on_disk(), ["S", "S"])

    def test_expunge_of_a_message_renamed_elsewhere(self) -> None:
        """A \\Deleted message whose file name another program changed is still expunged."""
        self.a.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        rename_by_hand(self.folder, 0, "FST")
        self.assertEqual(self.a.cmd(b"e EXPUNGE"), [b"* 1 EXPUNGE", b"e OK EXPUNGE completed"])
        self.assertEqual(self.flags_on_disk(), ["S"])


class ViewOrderTests(unittest.TestCase):
    """Another session delivers and expunges between two commands of this one."""

    def setUp(self) -> None:
        self.a = Harness(self)
        self.a.add(MSG1)
        self.b = Harness(self, root=self.a.root, notifier=self.a.notifier)
        for h in (self.a, self.b):
            h.login()
            h.cmd(b"s SELECT INBOX")

    def append_and_expunge_in_b(self) -> None:
        literal = b"{%d}\r\n" % len(MSG2)
        self.b.send(b"p APPEND INBOX (\\Deleted) " + literal)
        self.b.send(MSG2 + b"\r\n")
        self.b.cmd(b"x EXPUNGE")

    def test_no_expunge_for_a_message_never_announced(self) -> None:
        """RFC 3501 §7.4.1: no `* n EXPUNGE` with n above the last EXISTS."""
        self.append_and_expunge_in_b()
        self.assertEqual(self.a.cmd(b"n NOOP"), [b"n OK NOOP completed"])
        self.assertEqual(
            self.a.cmd(b"f FETCH 1:* (UID)"), [b"* 1 FETCH (UID 1)", b"f OK FETCH completed"]
        )

    def test_no_vanished_for_a_message_never_announced(self) -> None:
        """RFC 7162 §3.2.10: VANISHED (without EARLIER) names only messages the client has."""
        self.a.cmd(b"e ENABLE QRESYNC")
        self.append_and_expunge_in_b()
        self.assertEqual(self.a.cmd(b"n NOOP"), [b"n OK NOOP completed"])

    def test_exists_comes_before_expunge_of_new_message(self) -> None:
        """A message announced (EXISTS) and then expunged elsewhere is reported in that order.
        RFC 3501 §2.3.2: \\Recent goes to the first session told of the message: the one
        that appended it, whose rescan comes with the store (before: the other session's,
        which its change notice started first)."""
        literal = b"{%d}\r\n" % len(MSG2)
        self.b.send(b"p APPEND INBOX (\\Deleted) " + literal)
        self.assertEqual(
            self.b.send(MSG2 + b"\r\n").split(b"\r\n")[:2], [b"* 2 EXISTS", b"* 1 RECENT"]
        )
        self.assertEqual(
            self.a.cmd(b"n NOOP"), [b"* 2 EXISTS", b"* 0 RECENT", b"n OK NOOP completed"]
        )
        self.b.cmd(b"x EXPUNGE")
        self.assertEqual(self.a.cmd(b"n NOOP"), [b"* 2 EXPUNGE", b"n OK NOOP completed"])

    def test_fetch_star_does_not_name_an_unannounced_message(self) -> None:
        """RFC 3501 §5.2, §7.3.1: a FETCH response never names a number above EXISTS; new
        mail is announced before it."""
        literal = b"{%d}\r\n" % len(MSG2)
        self.b.send(b"p APPEND INBOX " + literal)
        self.b.send(MSG2 + b"\r\n")
        out = self.a.cmd(b"f FETCH 1:* (UID)")
        self.assertEqual(out[-1], b"f OK FETCH completed")
        if b"* 2 FETCH (UID 2)" in out:
            self.assertLess(out.index(b"* 2 EXISTS"), out.index(b"* 2 FETCH (UID 2)"))


class FirstLoginRaceTests(unittest.TestCase):
    """Two sessions of one user logging in for the first time at once (imaptest stress)."""

    def test_special_use_folder_made_by_the_other_session(self) -> None:
        """A special-use folder the other first login created meanwhile is no error, and
        every special-use folder is still subscribed (RFC 6154 §2)."""
        from twistedmail.imap.account import SPECIAL_USE, MaildirAccount
        from twistedmail.maildir import INBOX, UserMaildir, make_maildir

        root = Path(self.mktemp())
        make_maildir(root)
        maildir = UserMaildir(root)
        maildir.create("Sent")  # made by the other session after this one listed the folders
        self.patch(maildir, "folders", lambda: [INBOX])
        account = MaildirAccount("a@example.test", maildir, ChangeNotifier(), None)  # type: ignore[arg-type]
        account._prepare()
        self.assertEqual(sorted(maildir.subscriptions()), sorted(SPECIAL_USE))

    def test_concurrent_subscribes_all_kept(self) -> None:
        """SUBSCRIBE from many sessions at once loses none (RFC 3501 §6.3.6)."""
        from twistedmail.maildir import UserMaildir, make_maildir

        root = Path(self.mktemp())
        make_maildir(root)
        names = [f"Folder{n}" for n in range(30)]
        threads = [
            threading.Thread(target=UserMaildir(root).subscribe, args=(name,)) for name in names
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(UserMaildir(root).subscriptions()), sorted(names))
