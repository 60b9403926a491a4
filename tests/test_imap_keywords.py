"""Keywords (RFC 3501 §2.3.2, §6.4.4, §6.4.6, §7.1): the Dovecot C{dovecot-keywords} file and
the letters a..z in Maildir file names, and the IMAP commands over them, with exact bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests.test_imap_server import MSG1, MSG2, T2, Harness
from twistedmail.maildir import (
    KEYWORDS,
    Folder,
    is_keyword,
    make_maildir,
    split_name,
    write_durably,
)
from twistedmail.testing import run_now

SYSTEM = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"


def flags_on_disk(root: Path) -> list[str]:
    return sorted(split_name(n)[1] for n in os.listdir(root / "cur"))


class KeywordFileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        make_maildir(self.path)
        self.folder = Folder(self.path)

    def test_file_format(self) -> None:
        """Lines C{<index> <name>}, index 0 = letter a, as Dovecot writes them."""
        self.assertEqual(self.folder.keyword_letters(["$Junk", "$label1"]), "ab")
        self.assertEqual((self.path / KEYWORDS).read_bytes(), b"0 $Junk\n1 $label1\n")
        self.assertEqual(self.folder.keywords(), {"a": "$Junk", "b": "$label1"})
        self.assertFalse((self.path / f"{KEYWORDS}.tmp").exists())

    def test_existing_file_and_case(self) -> None:
        """A Dovecot-written file is read as is; names match case-insensitively; the lowest
        free index is taken."""
        (self.path / KEYWORDS).write_bytes(b"0 $Forwarded\n2 Work\n")
        self.assertEqual(self.folder.keyword_letters(["work", "$NotJunk", "$FORWARDED"]), "abc")
        self.assertEqual((self.path / KEYWORDS).read_bytes(), b"0 $Forwarded\n1 $NotJunk\n2 Work\n")

    def test_no_rewrite_when_known(self) -> None:
        """A keyword already in dovecot-keywords (any case) gets its letter without rewriting the
        file."""
        self.folder.keyword_letters(["$Junk"])
        os.utime(self.path / KEYWORDS, (1, 1))
        self.assertEqual(self.folder.keyword_letters(["$junk"]), "a")
        self.assertEqual(os.stat(self.path / KEYWORDS).st_mtime, 1)

    def test_limit_26(self) -> None:
        """At most 26 keywords per folder; a 27th gets no letter and is not stored."""
        names = [f"k{i}" for i in range(26)]
        self.assertEqual(self.folder.keyword_letters(names), "abcdefghijklmnopqrstuvwxyz")
        self.assertEqual(self.folder.keyword_letters(["extra", "k25"]), "z")
        self.assertEqual(len(self.folder.keywords()), 26)
        self.assertNotIn(b"extra", (self.path / KEYWORDS).read_bytes())

    def test_invalid_names(self) -> None:
        """RFC 3501 §9: a keyword must be an atom (no space, specials, backslash, non-ASCII, over
        50 characters); invalid ones get no letter and no file."""
        for bad in ["", "a b", "\\Seen", "x]", "(", "é", "k" * 51, "a*", 'q"']:
            self.assertFalse(is_keyword(bad), bad)
        self.assertEqual(self.folder.keyword_letters(["a b", "\\Foo"]), "")
        self.assertFalse((self.path / KEYWORDS).exists())

    def test_letters_sort_after_system_flags(self) -> None:
        """Keyword letters (a-z) sort after the system flag letters in the Maildir file name."""
        write_durably(self.path / "cur", MSG1, "Sab", T2)
        entry = self.folder.scan().messages[0]
        self.assertEqual(entry.flags, "Sab")
        self.assertEqual(self.folder.set_flags(entry, "bRa").flags, "Rab")


class KeywordSessionTests(unittest.TestCase):
    def select(self, h: Harness) -> list[bytes]:
        h.login()
        return h.cmd(b"s SELECT INBOX")

    def test_select_lists_keywords_and_star(self) -> None:
        """RFC 3501 §7.2.6: SELECT lists the folder's keywords in FLAGS and PERMANENTFLAGS with
        \\* (new keywords allowed)."""
        h = Harness(self)
        (h.root / KEYWORDS).write_bytes(b"0 $Junk\n1 $label1\n")
        h.add(MSG1, "Sa")
        lines = self.select(h)
        self.assertEqual(lines[0], b"* FLAGS (" + SYSTEM + b" $Junk $label1)")
        self.assertIn(
            b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Junk $label1 \\*)] Flags permitted", lines
        )
        self.assertEqual(
            h.cmd(b"f FETCH 1 FLAGS"),
            [b"* 1 FETCH (FLAGS (\\Seen $Junk))", b"f OK FETCH completed"],
        )

    def test_store_new_keyword(self) -> None:
        """A new keyword: FLAGS and PERMANENTFLAGS again, then the FETCH; letter on disk."""
        h = Harness(self)
        h.add(MSG1, "S")
        self.select(h)
        self.assertEqual(
            h.cmd(b"a STORE 1 +FLAGS ($Junk)"),
            [
                b"* FLAGS (" + SYSTEM + b" $Junk)",
                b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Junk \\*)] Flags permitted",
                b"* 1 FETCH (FLAGS (\\Seen $Junk))",
                b"a OK STORE completed",
            ],
        )
        self.assertEqual(flags_on_disk(h.root), ["Sa"])
        self.assertEqual((h.root / KEYWORDS).read_bytes(), b"0 $Junk\n")
        self.assertEqual(
            h.cmd(b"b STORE 1 -FLAGS ($junk)"),
            [b"* 1 FETCH (FLAGS (\\Seen))", b"b OK STORE completed"],
        )
        self.assertEqual(flags_on_disk(h.root), ["S"])

    def test_store_is_one_thread_hop(self) -> None:
        """STORE with a new keyword gives it a letter and renames the files in one job off
        the reactor thread (two before), and still sends FLAGS and PERMANENTFLAGS before the
        FETCH that shows the keyword (RFC 3501 §7.2.6)."""
        jobs: list[object] = []

        def counted(f: Any, *args: Any) -> Deferred[Any]:
            jobs.append(f)
            return run_now(f, *args)

        h = Harness(self, run=counted)
        h.add(MSG1, "S")
        h.add(MSG2)
        self.select(h)
        jobs.clear()
        self.assertEqual(
            h.cmd(b"a STORE 1:2 +FLAGS ($Work)"),
            [
                b"* FLAGS (" + SYSTEM + b" $Work)",
                b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Work \\*)] Flags permitted",
                b"* 1 FETCH (FLAGS (\\Seen $Work))",
                b"* 2 FETCH (FLAGS ($Work))",
                b"a OK STORE completed",
            ],
        )
        self.assertEqual(len(jobs), 1)
        self.assertEqual(flags_on_disk(h.root), ["Sa", "a"])

    def test_store_replace(self) -> None:
        """FLAGS replaces system flags and keywords alike; P (passed) stays."""
        h = Harness(self)
        (h.root / KEYWORDS).write_bytes(b"0 $Junk\n1 $label1\n")
        h.add(MSG1, "PSa")
        self.select(h)
        self.assertEqual(
            h.cmd(b"a STORE 1 FLAGS (\\Flagged $label1)"),
            [b"* 1 FETCH (FLAGS (\\Flagged $label1))", b"a OK STORE completed"],
        )
        self.assertEqual(flags_on_disk(h.root), ["FPb"])

    def test_search_keyword(self) -> None:
        """RFC 3501 §6.4.4: SEARCH KEYWORD matches the keyword case-blind, UNKEYWORD the others;
        an unknown keyword matches nothing."""
        h = Harness(self)
        (h.root / KEYWORDS).write_bytes(b"0 $Junk\n")
        h.add(MSG1, "a")
        h.add(MSG2, "", T2)
        self.select(h)
        self.assertEqual(
            h.cmd(b"a SEARCH KEYWORD $JUNK"), [b"* SEARCH 1", b"a OK SEARCH completed"]
        )
        self.assertEqual(
            h.cmd(b"b SEARCH UNKEYWORD $Junk"), [b"* SEARCH 2", b"b OK SEARCH completed"]
        )
        self.assertEqual(h.cmd(b"c SEARCH KEYWORD Never"), [b"* SEARCH", b"c OK SEARCH completed"])
        self.assertEqual(
            h.cmd(b"d SEARCH UNKEYWORD Never"), [b"* SEARCH 1 2", b"d OK SEARCH completed"]
        )

    def test_append_with_keywords(self) -> None:
        """RFC 3501 §6.3.11: APPEND with a keyword stores it as a letter and adds it to
        dovecot-keywords."""
        h = Harness(self)
        h.login()
        lines = h.cmd(b"a APPEND INBOX (\\Seen $label1) {%d+}\r\n" % len(MSG2) + MSG2)
        self.assertTrue(lines[-1].startswith(b"a OK [APPENDUID"), lines)
        self.assertEqual(flags_on_disk(h.root), ["Sa"])
        self.assertEqual((h.root / KEYWORDS).read_bytes(), b"0 $label1\n")

    def test_copy_remaps_letters(self) -> None:
        """Each folder has its own dovecot-keywords: COPY maps keywords by name."""
        h = Harness(self)
        (h.root / KEYWORDS).write_bytes(b"0 $Junk\n1 $label1\n")
        h.add(MSG1, "Sb")
        self.select(h)
        h.cmd(b"c CREATE Work")
        work = h.root / ".Work"
        (work / KEYWORDS).write_bytes(b"0 Other\n")
        self.assertEqual(h.cmd(b"d COPY 1 Work")[-1][:4], b"d OK")
        self.assertEqual(flags_on_disk(work), ["Sb"])
        self.assertEqual((work / KEYWORDS).read_bytes(), b"0 Other\n1 $label1\n")
        (h.root / KEYWORDS).write_bytes(b"0 $Junk\n1 $label1\n")
        self.assertEqual(h.cmd(b"e MOVE 1 Work")[-1][:4], b"e OK")
        self.assertEqual(flags_on_disk(work), ["Sb", "Sb"])
        h.cmd(b"f SELECT Work")
        self.assertEqual(
            h.cmd(b"g FETCH 1:* FLAGS"),
            [
                b"* 1 FETCH (FLAGS (\\Seen $label1 \\Recent))",
                b"* 2 FETCH (FLAGS (\\Seen $label1 \\Recent))",
                b"g OK FETCH completed",
            ],
        )

    def test_full_folder(self) -> None:
        """26 keywords: no \\* in PERMANENTFLAGS; a new keyword is dropped (as Dovecot's
        Maildir file names do), the rest of the STORE is done."""
        h = Harness(self)
        (h.root / KEYWORDS).write_bytes(b"".join(b"%d k%d\n" % (i, i) for i in range(26)))
        h.add(MSG1, "")
        lines = self.select(h)
        permanent = [line for line in lines if b"PERMANENTFLAGS" in line][0]
        self.assertTrue(permanent.endswith(b" k25)] Flags permitted"), permanent)
        self.assertEqual(
            h.cmd(b"a STORE 1 +FLAGS (\\Seen New k3)"),
            [b"* 1 FETCH (FLAGS (\\Seen k3))", b"a OK STORE completed"],
        )
        self.assertEqual(flags_on_disk(h.root), ["Sd"])

    def test_other_session_sees_new_keyword(self) -> None:
        """RFC 3501 §7.2.6: a keyword another session adds is announced with new FLAGS and
        PERMANENTFLAGS before the FETCH."""
        h1 = Harness(self)
        h1.add(MSG1, "")
        h2 = Harness(self, root=h1.root, notifier=h1.notifier)
        self.select(h1)
        self.select(h2)
        h1.cmd(b"a STORE 1 +FLAGS ($Forwarded)")
        self.assertEqual(
            h2.cmd(b"n NOOP"),
            [
                b"* FLAGS (" + SYSTEM + b" $Forwarded)",
                b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Forwarded \\*)] Flags permitted",
                b"* 1 FETCH (FLAGS ($Forwarded))",
                b"n OK NOOP completed",
            ],
        )

    def test_fetch_after_other_session_keyword_sends_flags_first(self) -> None:
        """RFC 3501 §7.2.6: a keyword another session added reaches this one by a rescan
        between commands; the next FETCH FLAGS sends FLAGS and PERMANENTFLAGS before the
        FETCH that shows it (not only before the tagged reply, as imaptest's stress mode
        caught: "Keyword used without being in FLAGS")."""
        h1 = Harness(self)
        h1.add(MSG1, "")
        h2 = Harness(self, root=h1.root, notifier=h1.notifier)
        self.select(h1)
        self.select(h2)
        h1.cmd(b"a STORE 1 +FLAGS ($Forwarded)")
        self.assertEqual(
            h2.cmd(b"f FETCH 1 FLAGS"),
            [
                b"* FLAGS (" + SYSTEM + b" $Forwarded)",
                b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Forwarded \\*)] Flags permitted",
                b"* 1 FETCH (FLAGS ($Forwarded))",
                b"* 1 FETCH (FLAGS ($Forwarded))",  # the update the rescan queued
                b"f OK FETCH completed",
            ],
        )
        self.assertEqual(
            h2.cmd(b"g FETCH 1 FLAGS"),
            [b"* 1 FETCH (FLAGS ($Forwarded))", b"g OK FETCH completed"],
        )


class OtherProcessKeywordTests(unittest.TestCase):
    """A keyword added by another process on the same Maildir (another worker, Dovecot):
    its FLAGS line comes before any FETCH that shows it (RFC 3501 §7.2.6)."""

    def store_in_other_process(self, root: Path, keyword: str) -> None:
        """What another worker's C{STORE 1 +FLAGS (keyword)} does to the folder, in a
        process of its own: a letter in C{dovecot-keywords}, then the file renamed."""
        script = (
            "import sys\n"
            "from pathlib import Path\n"
            "from twistedmail.maildir import FlagChange, Folder\n"
            "folder = Folder(Path(sys.argv[1]))\n"
            "letters = folder.keyword_letters([sys.argv[2]])\n"
            "entry = folder.scan().messages[0]\n"
            "folder.change_flags_many([(entry, FlagChange(add=letters))])\n"
        )
        subprocess.run([sys.executable, "-c", script, str(root), keyword], check=True)

    def test_fetch_flags_after_keyword_of_other_process(self) -> None:
        """Another process STOREs a new keyword; the folder watch's notice rescans this
        session between commands; its next FETCH FLAGS and UID FETCH CHANGEDSINCE are
        preceded by FLAGS and PERMANENTFLAGS listing the keyword."""
        h = Harness(self)
        h.add(MSG1, "S")
        h.login()
        h.cmd(b"s SELECT INBOX")
        self.store_in_other_process(h.root, "$Label1")
        h.notifier.changed(h.root)  # as the FolderWatcher tells the sessions (inotify)
        self.assertEqual(
            h.cmd(b"f FETCH 1 (UID FLAGS)"),
            [
                b"* FLAGS (" + SYSTEM + b" $Label1)",
                b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Label1 \\*)] Flags permitted",
                b"* 1 FETCH (UID 1 FLAGS (\\Seen $Label1))",
                b"* 1 FETCH (FLAGS (\\Seen $Label1))",
                b"f OK FETCH completed",
            ],
        )
        self.assertEqual(flags_on_disk(h.root), ["Sa"])
        self.store_in_other_process(h.root, "$Label2")
        h.notifier.changed(h.root)
        self.assertEqual(
            h.cmd(b"g UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)"),
            [
                b"* FLAGS (" + SYSTEM + b" $Label1 $Label2)",
                b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Label1 $Label2 \\*)] Flags permitted",
                b"* 1 FETCH (FLAGS (\\Seen $Label1 $Label2) MODSEQ (4) UID 1)",
                b"* OK [HIGHESTMODSEQ 4] Highest",  # CHANGEDSINCE enabled CONDSTORE
                b"* 1 FETCH (FLAGS (\\Seen $Label1 $Label2) UID 1 MODSEQ (4))",
                b"g OK FETCH completed",
            ],
        )


class HeldLockTests(unittest.TestCase):
    def test_uidlist_lock_held_too_long_is_not_a_deleted_mailbox(self) -> None:
        """A rescan that cannot take the UID list's dotlock (another program held it past the
        timeout) does not say the selected mailbox was deleted nor close the connection
        (RFC 2180 §3.3 is for a mailbox that is gone); the session goes on once it is free."""
        self.patch(Folder, "lock_timeout", 0.2)
        h = Harness(self)
        h.add(MSG1, "")
        h.login()
        self.assertEqual(h.cmd(b"s SELECT INBOX")[-1], b"s OK [READ-WRITE] SELECT completed")
        lock = h.root / "dovecot-uidlist.lock"
        lock.write_text(f"{os.getpid()}\n")  # held by a live process: not stale
        write_durably(h.root / "new", MSG2)  # a rescan needs the lock
        self.assertEqual(
            h.cmd(b"n NOOP"), [b"n NO [INUSE] Mailbox is locked by another program, try again"]
        )
        self.assertFalse(h.transport.disconnecting)
        lock.unlink()
        after = h.cmd(b"m NOOP")
        self.assertEqual((after[0], after[-1]), (b"* 2 EXISTS", b"m OK NOOP completed"))
