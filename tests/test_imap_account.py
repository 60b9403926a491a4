"""MaildirAccount: the folder tree of one user (RFC 3501 §6.3, RFC 2342, RFC 3348)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail import imap4
from twisted.trial import unittest

from twistedmail.imap.account import MailboxError, MaildirAccount
from twistedmail.imap.protocol import IMAPError
from twistedmail.maildir import ChangeNotifier, UserMaildir
from twistedmail.testing import run_now


class AccountTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.maildir = UserMaildir(self.root)
        self.maildir.ensure()
        self.account = MaildirAccount("alice@example.test", self.maildir, ChangeNotifier(), run_now)

    def listing(self, ref: str = "", pattern: str = "*") -> list[tuple[str, list[str]]]:
        boxes = self.successResultOf(
            Deferred.fromCoroutine(self.account.listMailboxes(ref, pattern))
        )
        return [(name, info.getFlags()) for name, info in boxes]

    def test_interfaces(self) -> None:
        """RFC 2342: the account is an IAccount and presents one personal namespace "" with '.'
        as separator."""
        self.assertTrue(imap4.IAccount.providedBy(self.account))
        self.assertTrue(imap4.INamespacePresenter.providedBy(self.account))
        self.assertEqual(self.account.getPersonalNamespaces(), [[b"", b"."]])

    def test_create_makes_parents_and_maildirfolder(self) -> None:
        """RFC 3501 §6.3.3: CREATE A.B.C. makes the missing parents too, each a Maildir++ folder
        with a maildirfolder marker."""
        self.assertTrue(self.account.create("A.B.C."))
        for d in (".A", ".A.B", ".A.B.C"):
            self.assertTrue((self.root / d / "maildirfolder").exists())
        self.assertEqual(
            self.listing(),
            [
                ("INBOX", ["\\HasNoChildren"]),
                ("A", ["\\HasChildren"]),
                ("A.B", ["\\HasChildren"]),
                ("A.B.C", ["\\HasNoChildren"]),
            ],
        )

    def test_list_patterns_match_without_backtracking(self) -> None:
        """RFC 3501 §6.3.8 wildcards, matched in linear steps: a pattern of many C{*} or
        C{%} against a long name used to be a backtracking regex that held the reactor
        (every session of every service) for hours."""
        self.maildir.create("a" * 60)
        self.maildir.create("Lists.Twisted.Dev")
        self.assertEqual(self.listing("", "a*" * 30 + "b"), [])
        self.assertEqual(self.listing("", "a%" * 30 + "b"), [])
        self.assertEqual(self.listing("", "*a*" * 30), [("a" * 60, ["\\HasNoChildren"])])
        self.assertEqual(self.listing("", "*%a" * 30), [("a" * 60, ["\\HasNoChildren"])])
        self.assertEqual(self.listing("", "L*D%"), [("Lists.Twisted.Dev", ["\\HasNoChildren"])])
        self.assertEqual(self.listing("", "L%D*"), [])
        self.assertEqual(
            self.listing("Lists.", "%.%v"), [("Lists.Twisted.Dev", ["\\HasNoChildren"])]
        )
        self.assertEqual(
            self.listing("", "%%%"),
            [
                ("INBOX", ["\\HasNoChildren"]),
                ("Lists", ["\\Noselect", "\\HasChildren"]),
                ("a" * 60, ["\\HasNoChildren"]),
            ],
        )
        self.assertEqual(self.listing("", "i*X"), [("INBOX", ["\\HasNoChildren"])])
        self.assertEqual(self.listing("", "i*x%%"), [("INBOX", ["\\HasNoChildren"])])
        self.assertEqual(self.listing("", "L*.?"), [])

    def test_noselect_parent_and_patterns(self) -> None:
        """RFC 3501 §6.3.8: a parent that is not a folder lists as \\Noselect; '%' stops at the
        separator; INBOX matches in any case."""
        self.maildir.create("X.Y")
        self.assertEqual(
            self.listing("", "%"),
            [("INBOX", ["\\HasNoChildren"]), ("X", ["\\Noselect", "\\HasChildren"])],
        )
        self.assertEqual(self.listing("X.", "%"), [("X.Y", ["\\HasNoChildren"])])
        self.assertEqual(self.listing("", "inbox"), [("INBOX", ["\\HasNoChildren"])])

    def test_errors_carry_codes(self) -> None:
        """RFC 5530: account errors carry their response code (ALREADYEXISTS, CANNOT,
        NONEXISTENT)."""
        self.account.create("Sent")
        for call, code in [
            (lambda: self.account.create("Sent"), b"ALREADYEXISTS"),
            (lambda: self.account.create("a/b"), b"CANNOT"),
            (lambda: self.account.delete("INBOX"), b"CANNOT"),
            (lambda: self.account.delete("Nope"), b"NONEXISTENT"),
            (lambda: self.account.rename("Nope", "X"), b"NONEXISTENT"),
            (lambda: self.account.rename("Sent", "Sent.Sub"), b"CANNOT"),
        ]:
            error = self.assertRaises(MailboxError, call)
            self.assertEqual(error.code, code)

    def test_rename_moves_children_and_subscriptions(self) -> None:
        """RFC 3501 §6.3.5: RENAME moves the children and their subscriptions; INBOX counts as
        subscribed in any case."""
        self.account.create("A.B")
        self.account.subscribe("A.B")
        self.account.rename("A", "Z.A")
        self.assertEqual([n for n, _ in self.listing()], ["INBOX", "Z", "Z.A", "Z.A.B"])
        self.assertEqual(self.maildir.subscriptions(), ["Z.A.B"])
        self.assertTrue(self.account.isSubscribed("Z.A.B"))
        self.assertTrue(self.account.isSubscribed("inbox"))

    def test_select_inbox_creates_it_and_missing_is_none(self) -> None:
        """SELECT inbox (any case) creates a missing INBOX Maildir in the user's directory; a
        missing folder or a path escape selects nothing."""
        root = Path(self.mktemp())
        root.mkdir()
        account = MaildirAccount("bob@example.test", UserMaildir(root), ChangeNotifier(), run_now)
        box = self.successResultOf(Deferred.fromCoroutine(account.select("inbox")))
        self.assertEqual(box.getMessageCount(), 0)
        self.assertTrue((root / "cur").is_dir())
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(account.select("Nope"))))
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(account.select("../x"))))

    def test_user_directory_gone_is_not_made_again(self) -> None:
        """Once the user's directory is gone (C{user del} moved it aside after the login made
        it), SELECT INBOX, CREATE, RENAME and SUBSCRIBE end the session with NO [NONEXISTENT]
        and make nothing."""
        shutil.rmtree(self.root)
        selected = Deferred.fromCoroutine(self.account.select("INBOX"))
        gone = self.failureResultOf(selected, IMAPError).value
        self.assertEqual((gone.code, gone.close), (b"NONEXISTENT", True))
        calls = [
            lambda: self.account.create("Work"),
            lambda: self.account.rename("INBOX", "Old"),
            lambda: self.account.subscribe("Work"),
        ]
        for call in calls:
            with self.assertRaises(IMAPError) as raised:
                call()
            self.assertEqual(
                (raised.exception.code, raised.exception.close), (b"NONEXISTENT", True)
            )
        self.assertFalse(self.root.exists())

    def test_select_is_one_thread_hop(self) -> None:
        """SELECT of INBOX (made when missing) or of a folder, and of a missing folder, does
        its disk work in one job off the reactor thread (they were three: making the INBOX,
        the existence check, the scan)."""
        jobs: list[object] = []

        def counted(f: Any, *args: Any) -> Deferred[Any]:
            jobs.append(f)
            return run_now(f, *args)

        root = Path(self.mktemp())
        root.mkdir()
        account = MaildirAccount("bob@example.test", UserMaildir(root), ChangeNotifier(), counted)
        box = self.successResultOf(Deferred.fromCoroutine(account.select("INBOX")))
        self.assertEqual((box.getMessageCount(), len(jobs)), (0, 1))
        self.assertTrue(account.create("Work"))
        jobs.clear()
        box = self.successResultOf(Deferred.fromCoroutine(account.select("Work", False)))
        self.assertEqual((box.getMessageCount(), len(jobs)), (0, 1))
        jobs.clear()
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(account.select("Nope"))))
        self.assertEqual(len(jobs), 1)

    def test_lsub_lists_missing_subscriptions_as_noselect(self) -> None:
        """RFC 3501 §6.3.9: LSUB lists a subscription whose folder is gone as \\Noselect."""
        self.maildir.subscribe("Gone")
        boxes = self.successResultOf(Deferred.fromCoroutine(self.account.list_subscribed("", "*")))
        self.assertEqual(
            [(n, i.getFlags()) for n, i in boxes], [("INBOX", []), ("Gone", ["\\Noselect"])]
        )

    def test_lsub_percent_lists_the_level_above_a_deeper_subscription(self) -> None:
        """RFC 3501 §6.3.9: LSUB "foo.%" with only "foo.bar.zap" subscribed lists "foo.bar"
        \\Noselect (existing or not); a name the pattern reaches itself is listed as it is."""
        for name in ("A", "A.One", "A.Two.Deep", "A.Three.Gone.Deeper"):
            self.maildir.create(name)
        for name in ("A.One", "A.Two.Deep", "A.Three.Gone.Deeper"):
            self.maildir.subscribe(name)
        boxes = self.successResultOf(
            Deferred.fromCoroutine(self.account.list_subscribed("", "A.%"))
        )
        self.assertEqual(
            [(n, i.getFlags()) for n, i in boxes],
            [("A.One", []), ("A.Three", ["\\Noselect"]), ("A.Two", ["\\Noselect"])],
        )

    def test_childinfo_only_for_descendants_not_listed_themselves(self) -> None:
        """RFC 5258 §3.5 RECURSIVEMATCH: CHILDINFO marks a parent whose subscribed descendant
        no pattern returns; with the descendant matched too it is listed on its own."""
        self.maildir.create("P.Child")
        self.maildir.subscribe("P.Child")
        one = self.successResultOf(
            Deferred.fromCoroutine(
                self.account.list_folders("", ["P"], subscribed=True, recursive=True)
            )
        )
        self.assertEqual([(e.name, e.child_subscribed) for e in one], [("P", True)])
        both = self.successResultOf(
            Deferred.fromCoroutine(
                self.account.list_folders("", ["P", "P.Child"], subscribed=True, recursive=True)
            )
        )
        self.assertEqual([(e.name, e.child_subscribed) for e in both], [("P.Child", False)])
