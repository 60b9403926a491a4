"""Unit tests of twistedmail.importer: Maildir++ and mbox import, export, resuming (issue 13)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from twisted.trial import unittest

from twistedmail import cli, importer
from twistedmail.maildir import Folder, UserMaildir, make_maildir, split_name
from twistedmail.testing import run_cli

ADDRESS = "alice@example.org"
KEPT = ", UIDVALIDITY 1234567 and UIDs kept\n"


def dovecot_maildir(root: Path) -> None:
    """A Maildir as Dovecot leaves it: LF files named C{,S=,W=}, a uidlist with gaps, a
    keywords file, a subfolder, a message in new/ and one the uidlist does not list yet."""
    make_maildir(root)
    make_maildir(root / ".Work.Sub", folder=True)
    one = b"Subject: one\nMessage-ID: <1@x>\n\nbody one\n"
    two = b"Subject: two\nMessage-ID: <2@x>\n\nbody two\n"
    three = b"Subject: three\n\nbody three\n"
    four = b"Subject: four\r\n\r\nbody four\r\n"
    files = {
        f"cur/1700000000.M1P1.old,S={len(one)},W={len(one) + 4}:2,RSb": one,
        f"new/1700000001.M2P1.old,S={len(two)},W={len(two) + 4}": two,
        f"cur/1700000002.M3P1.old,S={len(three)},W={len(three) + 3}:2,FSa": three,
        "cur/1700000003.M4P1.old:2,T": four,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (1_600_000_000 + len(name), 1_600_000_000 + len(name)))
    (root / "dovecot-uidlist").write_text(
        "3 V1234567 N20 Gdeadbeef\n"
        f"4 :1700000000.M1P1.old,S={len(one)},W={len(one) + 4}\n"
        f"9 :1700000001.M2P1.old,S={len(two)},W={len(two) + 4}\n"
        f"12 :1700000002.M3P1.old,S={len(three)},W={len(three) + 3}\n"
    )
    (root / "dovecot-keywords").write_text("0 $Junk\n1 project-x\n")
    sub = root / ".Work.Sub"
    (sub / "cur" / "1700000010.M5P1.old:2,S").write_bytes(b"Subject: sub\n\nx\n")
    (sub / "dovecot-uidlist").write_text("3 V55 N3 Gfeed\n2 :1700000010.M5P1.old\n")
    (root / "subscriptions").write_text("V\t2\n\nWork\tSub\n")


def folder_state(folder: Folder) -> dict[int, tuple[str, bytes, float]]:
    """{uid: (flag letters, bytes as served, mtime as served: L{Folder.dates})} after a
    scan."""
    scan = folder.scan()
    dates = folder.dates(scan.messages)
    return {e.uid: (e.flags, folder.read(e), dates.get(e.base, e.mtime)) for e in scan.messages}


class ImportTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "data"
        self.config = self.base / "twistedmail.toml"
        self.config.write_text(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "m.example.org"\n'
        )
        self.assertEqual(self.cli("init")[0], 0)
        code, _, err = self.cli("user", "add", ADDRESS, "--password-stdin", stdin=b"pw\n")
        self.assertEqual((code, err), (0, ""))
        self.user = UserMaildir(self.data_dir / "mail" / "example.org" / "alice")
        self.lines: list[str] = []

    def cli(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        return run_cli(self, ["--config", str(self.config), *argv], stdin)

    def ledger(self) -> importer.Ledger:
        ledger = importer.Ledger(self.data_dir / importer.LEDGER)
        self.addCleanup(ledger.close)
        return ledger


class MaildirImportTests(ImportTestCase):
    def test_keeps_uids_flags_keywords_folders_dates_and_bytes(self) -> None:
        """A Dovecot Maildir++ tree arrives with its UIDVALIDITY and UIDs (RFC 3501 §2.3.1.1),
        flags, keywords under the target's letters, folders, subscriptions, mtimes and bytes."""
        src = self.base / "src"
        dovecot_maildir(src)
        code, out, err = self.cli("import", "maildir", str(src), ADDRESS)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("INBOX: 4 imported, 0 already there" + KEPT, out)
        self.assertIn("Work.Sub: 1 imported, 0 already there, UIDVALIDITY 55 and UIDs kept\n", out)
        inbox = self.user.folder("INBOX")
        scan = inbox.scan()
        self.assertEqual((scan.uidvalidity, scan.uidnext), (1234567, 21))
        state = folder_state(inbox)
        self.assertEqual(sorted(state), [4, 9, 12, 20])
        keywords = inbox.keywords()
        by_uid = {uid: (flags, data) for uid, (flags, data, _) in state.items()}
        self.assertEqual(
            by_uid[4],
            (
                "RS" + next(k for k, v in keywords.items() if v == "project-x"),
                b"Subject: one\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n",
            ),
        )
        self.assertEqual(by_uid[9], ("", b"Subject: two\r\nMessage-ID: <2@x>\r\n\r\nbody two\r\n"))
        letter = next(k for k, v in keywords.items() if v == "$Junk")
        self.assertEqual(by_uid[12][0], "FS" + letter)
        self.assertEqual(by_uid[20], ("T", b"Subject: four\r\n\r\nbody four\r\n"))
        # the file bytes are copied as they are (LF line ends), under the source's base name
        copied = sorted(os.listdir(inbox.path / "cur"))
        self.assertEqual(keywords, {"a": "project-x", "b": "$Junk"})
        self.assertEqual(
            copied,
            [
                "1700000000.M1P1.old,S=41,W=45:2,RSa",
                "1700000001.M2P1.old,S=41,W=45:2,",
                "1700000002.M3P1.old,S=27,W=30:2,FSb",
                "1700000003.M4P1.old:2,T",
            ],
        )
        self.assertEqual(
            (inbox.path / "cur" / copied[0]).read_bytes(),
            b"Subject: one\nMessage-ID: <1@x>\n\nbody one\n",
        )
        src_mtime = (src / "cur" / "1700000000.M1P1.old,S=41,W=45:2,RSb").stat().st_mtime
        self.assertEqual(state[4][2], src_mtime)
        sub = self.user.folder("Work.Sub").scan()
        self.assertEqual([(e.uid, e.flags) for e in sub.messages], [(2, "S")])
        self.assertEqual(sub.uidvalidity, 55)
        self.assertEqual(self.user.folders(), ["INBOX", "Work.Sub"])
        self.assertEqual(self.user.subscriptions(), ["Work.Sub"])

    def test_second_run_copies_nothing(self) -> None:
        """A second import of the same tree imports nothing and changes no UID."""
        src = self.base / "src"
        dovecot_maildir(src)
        self.assertEqual(self.cli("import", "maildir", str(src), ADDRESS)[0], 0)
        before = folder_state(self.user.folder("INBOX"))
        code, out, _ = self.cli("import", "maildir", str(src), ADDRESS)
        self.assertEqual(code, 0)
        self.assertIn("INBOX: 0 imported, 4 already there" + KEPT, out)
        self.assertEqual(folder_state(self.user.folder("INBOX")), before)

    def test_new_source_mail_is_added_on_a_second_run(self) -> None:
        """Mail that arrived in the source since the first run comes over on the second."""
        src = self.base / "src"
        dovecot_maildir(src)
        self.assertEqual(self.cli("import", "maildir", str(src), ADDRESS)[0], 0)
        (src / "new" / "1700000099.M9P1.old").write_bytes(b"Subject: late\n\nlate\n")
        code, out, _ = self.cli("import", "maildir", str(src), ADDRESS)
        self.assertIn("INBOX: 1 imported, 4 already there", out)
        self.assertEqual(sorted(folder_state(self.user.folder("INBOX"))), [4, 9, 12, 20, 21])

    def test_into_a_folder_with_mail_gets_new_uids(self) -> None:
        """A target folder that holds mail keeps its UIDVALIDITY: imported mail gets new UIDs
        above its own (RFC 3501 §2.3.1.1 forbids changing what clients cached)."""
        self.user.ensure()
        inbox = self.user.folder("INBOX")
        inbox.add(b"Subject: mine\r\n\r\nx\r\n", "S")
        uidvalidity = inbox.scan().uidvalidity
        src = self.base / "src"
        dovecot_maildir(src)
        code, out, _ = self.cli("import", "maildir", str(src), ADDRESS)
        self.assertIn("INBOX: 4 imported, 0 already there\n", out)
        scan = inbox.scan()
        self.assertEqual(scan.uidvalidity, uidvalidity)
        self.assertEqual([e.uid for e in scan.messages], [1, 2, 3, 4, 5])

    def test_interrupted_import_resumes_without_duplicates(self) -> None:
        """An import killed after linking a batch but before recording it done imports the
        rest on the next run, and nothing twice; no tmp/ file is left."""
        src = self.base / "src"
        dovecot_maildir(src)
        ledger = self.ledger()
        real = ledger.record
        calls = []

        def crash(address: str, source: str, rows: list[tuple[str, str, str]], done: bool) -> None:
            calls.append(done)
            if done:
                raise KeyboardInterrupt
            real(address, source, rows, done)

        self.patch(ledger, "record", crash)
        self.assertRaises(
            KeyboardInterrupt,
            importer.import_maildir,
            src,
            self.user,
            ADDRESS,
            ledger,
            self.lines.append,
        )
        inbox = self.user.folder("INBOX")
        self.assertEqual(os.listdir(inbox.path / "tmp"), [])
        self.assertEqual(len(os.listdir(inbox.path / "cur")), 4)
        self.patch(ledger, "record", real)
        reports = importer.import_maildir(src, self.user, ADDRESS, ledger, self.lines.append)
        self.assertEqual((reports[0].imported, reports[0].skipped), (0, 4))
        self.assertEqual(sorted(folder_state(inbox)), [4, 9, 12, 20])

    def test_message_deleted_after_import_is_not_imported_again(self) -> None:
        """The ledger remembers what was imported: a message the user deleted stays deleted."""
        src = self.base / "src"
        dovecot_maildir(src)
        self.assertEqual(self.cli("import", "maildir", str(src), ADDRESS)[0], 0)
        inbox = self.user.folder("INBOX")
        inbox.remove(inbox.scan().messages[0])
        self.cli("import", "maildir", str(src), ADDRESS)
        self.assertEqual(sorted(folder_state(inbox)), [9, 12, 20])

    def test_errors_are_one_line(self) -> None:
        """Not a Maildir, or not a user: one line on stderr, exit 1."""
        self.assertEqual(
            self.cli("import", "maildir", str(self.base), ADDRESS),
            (1, "", f"twistedmail: error: {self.base} is not a Maildir (no cur/ directory)\n"),
        )
        make_maildir(self.base / "m")
        self.assertEqual(
            self.cli("import", "maildir", str(self.base / "m"), "nobody@example.org"),
            (
                1,
                "",
                "twistedmail: error: no such user nobody@example.org (add it with"
                " 'twistedmail user add' first)\n",
            ),
        )


MBOX = (
    b"From alice@example.net Sat Jan  3 01:05:34 1996\n"
    b"Status: RO\nX-Status: AF\nX-Keywords: $Junk project-x\n"
    b"Subject: first\nX-Header: folded\n continued\n\n"
    b">From the start of a line\n>>From twice quoted\nend\n\n"
    b"From bob@example.net Mon Feb 12 10:00:00 2024\n"
    b"Subject: second\n\nsecond body\n\n"
    b"From bob@example.net Mon Feb 12 10:00:00 2024\n"
    b"Subject: second\n\nsecond body\n"
)


class MboxImportTests(ImportTestCase):
    def test_mboxrd_flags_dates_and_bytes(self) -> None:
        """mboxrd un-quoting, Status/X-Status/X-Keywords as flags (then removed), the From_
        line's date as INTERNALDATE, CRLF line ends; identical messages are both kept."""
        mbox = self.base / "in.mbox"
        mbox.write_bytes(MBOX)
        code, out, err = self.cli("import", "mbox", str(mbox), ADDRESS, "--folder", "Old")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("Old: 3 imported, 0 already there\n", out)
        folder = self.user.folder("Old")
        state = folder_state(folder)
        kw = {v: k for k, v in folder.keywords().items()}
        self.assertEqual(
            state[1],
            (
                "FRS" + "".join(sorted(kw[k] for k in ("$Junk", "project-x"))),
                b"Subject: first\r\nX-Header: folded\r\n continued\r\n\r\n"
                b"From the start of a line\r\n>From twice quoted\r\nend\r\n",
                820631134.0,
            ),
        )
        self.assertEqual(state[2], ("", b"Subject: second\r\n\r\nsecond body\r\n", 1707732000.0))
        self.assertEqual(state[3][1], state[2][1])
        code, out, _ = self.cli("import", "mbox", str(mbox), ADDRESS, "--folder", "Old")
        self.assertIn("Old: 0 imported, 3 already there\n", out)

    def test_not_an_mbox(self) -> None:
        """A file that does not start with a From_ line is refused in one line."""
        path = self.base / "x"
        path.write_bytes(b"Subject: hi\n\nbody\n")
        self.assertEqual(
            self.cli("import", "mbox", str(path), ADDRESS),
            (1, "", "twistedmail: error: not an mbox file (it does not start with a From_ line)\n"),
        )

    def test_imap_connection_refused_is_one_line(self) -> None:
        """An IMAP server that does not answer: one line, exit 1."""
        password = self.base / "pw"
        password.write_text("secret\n")
        code, out, err = self.cli(
            "import",
            "imap",
            ADDRESS,
            "--host",
            "127.0.0.1",
            "--port",
            "1",
            "--user",
            "u",
            "--password-file",
            str(password),
        )
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("twistedmail: error: IMAP 127.0.0.1:1: "), err)
        self.assertEqual(err.count("\n"), 1)


class ExportTests(ImportTestCase):
    def fill(self) -> None:
        self.user.ensure()
        self.user.create("Work")
        inbox = self.user.folder("INBOX")
        inbox.add(b"Subject: a\r\n\r\nFrom here\r\n", "S" + inbox.keyword_letters(["$Junk"]))
        inbox.add(b"Subject: b\r\n\r\nbody\r\n", "RF", mtime=1_500_000_000)
        inbox.remove(inbox.scan().messages[0])
        inbox.add(b"Subject: c\r\n\r\n>From quoted\r\n", "")
        self.user.folder("Work").add(b"Subject: w\r\n\r\nw\r\n", "D")
        self.user.subscribe("Work")

    def test_maildir_round_trip(self) -> None:
        """export --format maildir, then import maildir for another user: the same UIDs,
        UIDVALIDITY, flags, keywords, bytes and dates (a Dovecot-readable tree)."""
        self.fill()
        out_dir = self.base / "export"
        code, out, err = self.cli("export", ADDRESS, str(out_dir))
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"exported 3 message(s) of {ADDRESS} to {out_dir} (maildir)\n", out)
        self.cli("user", "add", "bob@example.org", "--password-stdin", stdin=b"pw\n")
        self.assertEqual(self.cli("import", "maildir", str(out_dir), "bob@example.org")[0], 0)
        bob = UserMaildir(self.data_dir / "mail" / "example.org" / "bob")
        for name in ("INBOX", "Work"):
            mine, theirs = self.user.folder(name), bob.folder(name)
            self.assertEqual(mine.scan().uidvalidity, theirs.scan().uidvalidity)
            names = lambda f: {  # noqa: E731
                uid: (
                    "".join(sorted(f.keywords().get(c, c) for c in flags)),
                    data,
                    mtime,
                )
                for uid, (flags, data, mtime) in folder_state(f).items()
            }
            self.assertEqual(names(mine), names(theirs))
        self.assertEqual(bob.subscriptions(), ["Work"])

    def test_mbox_round_trip(self) -> None:
        """export --format mbox (mboxrd), then import mbox: the same bytes, flags, dates."""
        self.fill()
        out_dir = self.base / "export"
        self.assertEqual(self.cli("export", ADDRESS, str(out_dir), "--format", "mbox")[0], 0)
        self.assertEqual(sorted(os.listdir(out_dir)), ["INBOX.mbox", "Work.mbox"])
        self.cli("user", "add", "bob@example.org", "--password-stdin", stdin=b"pw\n")
        code, _, err = self.cli("import", "mbox", str(out_dir / "INBOX.mbox"), "bob@example.org")
        self.assertEqual((code, err), (0, ""))
        bob = UserMaildir(self.data_dir / "mail" / "example.org" / "bob").folder("INBOX")
        mine = self.user.folder("INBOX")

        def view(f: Folder) -> list[tuple[str, bytes, float]]:
            kw = f.keywords()
            return [
                ("".join(sorted(kw.get(c, c) for c in flags)), data, int(mtime))
                for _, (flags, data, mtime) in sorted(folder_state(f).items())
            ]

        self.assertEqual(view(bob), view(mine))

    def test_export_refuses_a_non_empty_dir(self) -> None:
        """An export never mixes into existing files."""
        self.fill()
        (self.base / "full").mkdir()
        (self.base / "full" / "x").write_text("x")
        self.assertEqual(
            self.cli("export", ADDRESS, str(self.base / "full")),
            (1, "", f"twistedmail: error: {self.base / 'full'} is not empty\n"),
        )


def test_split_name_keeps_dovecot_sizes() -> None:
    """(helper check) a base name with C{,S=,W=} keeps both fields."""
    assert split_name("1.M1P1.h,S=3,W=4:2,S") == ("1.M1P1.h,S=3,W=4", "S")


class ParsingTests(unittest.TestCase):
    def test_imap_flags(self) -> None:
        """IMAP system flags become Maildir letters (RFC 3501 §2.3.2), \\Recent is dropped,
        other atoms are keywords."""
        self.assertEqual(
            importer._imap_flags(b"\\Seen \\Answered \\Flagged \\Deleted \\Draft \\Recent $Junk x"),
            ("DFRST", ("$Junk", "x")),
        )

    def test_imap_folders_map_the_delimiter(self) -> None:
        """A server's "/" hierarchy becomes ".", a "." inside a name becomes "_", mUTF-7
        names are decoded, \\Noselect folders are left out, INBOX comes first."""

        class Listing:
            def list(self) -> tuple[str, list[bytes]]:
                return "OK", [
                    b'(\\HasChildren \\Noselect) "/" "[Gmail]"',
                    b'(\\HasNoChildren) "/" "[Gmail]/All Mail"',
                    b'(\\HasNoChildren) "/" "Entw&APw-rfe/v1.2"',
                    b'(\\HasNoChildren) "/" INBOX',
                ]

        self.assertEqual(
            importer.imap_folders(Listing()),  # type: ignore[arg-type]
            [
                ("INBOX", b"INBOX"),
                ("Entwürfe.v1_2", b"Entw&APw-rfe/v1.2"),
                ("[Gmail].All Mail", b"[Gmail]/All Mail"),
            ],
        )

    def test_mboxo_unquotes_one_level_only(self) -> None:
        """mboxo quoting: only ">From " loses its ">"; ">>From " stays as it is."""
        data = b"From a Mon Feb 12 10:00:00 2024\nSubject: x\n\n>From a\n>>From b\n"
        (message,) = importer.mbox_messages(io.BytesIO(data), "mboxo")
        self.assertEqual(message.data, b"Subject: x\r\n\r\nFrom a\r\n>>From b\r\n")
        self.assertEqual(message.mtime, 1707732000.0)

    def test_from_line_dates(self) -> None:
        """From_ lines in asctime form, with or without a zone, one-digit days padded."""
        self.assertEqual(
            importer.from_line_date(b"From x@y Sat Jan  3 01:05:34 1996\n"), 820631134.0
        )
        self.assertEqual(
            importer.from_line_date(b"From x@y Sat Jan 3 01:05:34 +0000 1996\n"), 820631134.0
        )
        self.assertIsNone(importer.from_line_date(b"From x@y garbage\n"))

    def test_imap_folders_skip_undecodable_names(self) -> None:
        """A raw 8-bit folder name (not modified UTF-7) is left out, not a traceback."""

        class Listing:
            def list(self) -> tuple[str, list[bytes]]:
                return "OK", [b'() "/" "Caf\xc3\xa9"', b'() "/" INBOX']

        self.assertEqual(importer.imap_folders(Listing()), [("INBOX", b"INBOX")])  # type: ignore[arg-type]


class TerminalProgressTests(ImportTestCase):
    def test_progress_rewrites_one_line_on_a_terminal(self) -> None:
        """On a terminal the progress lines replace each other (CR, erase line); the
        per-folder summary follows on lines of its own."""

        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        src = self.base / "src"
        dovecot_maildir(src)
        out = Terminal()
        self.patch(sys, "stdout", out)
        self.assertEqual(
            cli.main(["--config", str(self.config), "import", "maildir", str(src), ADDRESS]), 0
        )
        text = out.getvalue()
        self.assertTrue(text.startswith("\r\x1b[KINBOX: 4 message(s) in "), text)
        self.assertIn("\r\x1b[KINBOX: 4/4 (4 imported, 0 already there)\r\x1b[K", text)
        self.assertTrue(
            text.endswith(
                "\r\x1b[KINBOX: 4 imported, 0 already there"
                + KEPT
                + "Work.Sub: 1 imported, 0 already there, UIDVALIDITY 55 and UIDs kept\n"
                + "\r\x1b[K"
            ),
            text,
        )
