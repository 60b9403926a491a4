"""Tests for L{twistedmail.delivery.LocalDelivery}: alias expansion, Return-Path, exact bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from twistedmail import delivery as delivery_module
from twistedmail.accounts import AccountStore, Quota
from twistedmail.address import Mailbox
from twistedmail.delivery import (
    Delivered,
    LocalDelivery,
    delivered_to_header,
    return_path_header,
)
from twistedmail.maildir import ChangeNotifier, Folder
from twistedmail.quota import QuotaExceeded, QuotaTracker
from twistedmail.testing import run_now

M = Mailbox.parse
MESSAGE = (
    b"Received: from client.example (192.0.2.7) by mail.example.org\r\n"
    b"From: Sender <sender@remote.example>\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"line one\r\n"
    b".leading dot kept as received\r\n"
)


class DeliveryTests(unittest.TestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.mail_dir = base / "mail"
        self.store = AccountStore(base / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        for user in ("alice", "bob"):
            self.store.add_user(f"{user}@example.org", "h")
        self.store.add_alias(
            "team@example.org", ["alice@example.org", "bob@example.org", "friend@remote.example"]
        )
        self.notifier = ChangeNotifier()
        self.changed: list[Path] = []
        self.delivery = LocalDelivery(self.store, self.mail_dir, self.notifier, run_now)

    def watch(self, user: str) -> Path:
        root = self.mail_dir / "example.org" / user
        self.notifier.subscribe(root, lambda: self.changed.append(root))
        return root

    def deliver(self, sender: Mailbox | None, recipients: list[str]) -> list[str]:
        d = defer.ensureDeferred(self.delivery.deliver(sender, [M(r) for r in recipients], MESSAGE))
        return [str(m) for m in self.successResultOf(d)]

    def stored(self, user: str) -> list[bytes]:
        new = self.mail_dir / "example.org" / user / "new"
        return [(new / name).read_bytes() for name in sorted(os.listdir(new))]

    def test_return_path_header(self) -> None:
        """RFC 5321 §4.4: the Return-Path header holds the reverse path, <> for the null sender."""
        self.assertEqual(
            return_path_header(M("a@example.org")), b"Return-Path: <a@example.org>\r\n"
        )
        self.assertEqual(return_path_header(None), b"Return-Path: <>\r\n")

    def test_exact_bytes_in_new(self) -> None:
        """RFC 5321 §4.4: Return-Path first, then Delivered-To (the final recipient, as
        Postfix and Dovecot LMTP write it), then the message exactly as received (CRLF)."""
        root = self.watch("alice")
        self.assertEqual(self.deliver(M("Sender@Remote.example"), ["alice@example.org"]), [])
        expected = (
            b"Return-Path: <sender@remote.example>\r\nDelivered-To: alice@example.org\r\n" + MESSAGE
        )
        self.assertEqual(self.stored("alice"), [expected])
        (name,) = os.listdir(root / "new")
        self.assertTrue(name.endswith(f",S={len(expected)},W={len(expected)}"), name)
        self.assertEqual(os.listdir(root / "tmp"), [])
        self.assertEqual(self.changed, [root])
        (entry,) = Folder(root).scan().messages
        self.assertEqual(entry.size, len(expected))

    def test_null_reverse_path(self) -> None:
        """A bounce is stored with Return-Path: <> above the message bytes."""
        self.deliver(None, ["bob@example.org"])
        self.assertEqual(
            self.stored("bob"), [b"Return-Path: <>\r\nDelivered-To: bob@example.org\r\n" + MESSAGE]
        )

    def test_alias_expansion(self) -> None:
        """One copy per user behind the alias; remote targets are returned, not delivered."""
        alice, bob = self.watch("alice"), self.watch("bob")
        remote = self.deliver(M("s@remote.example"), ["team@example.org"])
        self.assertEqual(remote, ["friend@remote.example"])
        copy = b"Return-Path: <s@remote.example>\r\nDelivered-To: %s\r\n" + MESSAGE
        self.assertEqual(self.stored("alice"), [copy % b"alice@example.org"])
        self.assertEqual(self.stored("bob"), [copy % b"bob@example.org"])
        self.assertEqual(self.changed, [alice, bob])

    def test_one_copy_per_user(self) -> None:
        """A user named directly, through an alias and in other case gets one copy."""
        self.deliver(None, ["alice@example.org", "team@example.org", "ALICE@example.org"])
        self.assertEqual(len(self.stored("alice")), 1)
        self.assertEqual(len(self.stored("bob")), 1)

    def test_maildir_created(self) -> None:
        """The first delivery to a user creates its Maildir (cur, new, tmp)."""
        self.deliver(None, ["alice@example.org"])
        root = self.mail_dir / "example.org" / "alice"
        self.assertEqual(sorted(os.listdir(root)), ["cur", "new", "tmp"])

    def test_maildir_removed_by_hand_is_made_again(self) -> None:
        """The Maildir made at the first delivery is not made again for every message; one
        removed by hand since is made again and the message stored there."""
        import shutil

        self.deliver(None, ["alice@example.org"])
        shutil.rmtree(self.mail_dir / "example.org" / "alice")
        self.deliver(None, ["alice@example.org"])
        self.assertEqual(len(self.stored("alice")), 1)

    def test_mailbox_roots_kept_per_user(self) -> None:
        """Each user's mail goes to DATA/mail/DOMAIN/LOCALPART (DESIGN §3) whether its root
        is kept from an earlier delivery or the kept ones were forgotten (MAX_ROOTS)."""
        self.patch(delivery_module, "MAX_ROOTS", 1)
        for user in ("alice", "bob", "alice", "bob"):
            self.deliver(None, [f"{user}@example.org"])
        self.assertEqual((len(self.stored("alice")), len(self.stored("bob"))), (2, 2))

    def test_local_users(self) -> None:
        """local_users splits recipients into local users (aliases expanded) and remote
        addresses."""
        users, remote = self.delivery.local_users(
            [M("bob@example.org"), M("team@example.org"), M("x@elsewhere.example")]
        )
        self.assertEqual([str(u) for u in users], ["bob@example.org", "alice@example.org"])
        self.assertEqual([str(r) for r in remote], ["friend@remote.example", "x@elsewhere.example"])

    def test_only_remote(self) -> None:
        """Remote-only recipients are returned for the queue and nothing is written locally."""
        self.assertEqual(self.deliver(None, ["x@elsewhere.example"]), ["x@elsewhere.example"])
        self.assertFalse(self.mail_dir.exists())

    def test_log(self) -> None:
        """Each local delivery logs one line with recipient, sender, size and file name."""
        with capturedLogs() as events:
            self.deliver(M("s@remote.example"), ["alice@example.org"])
        (name,) = os.listdir(self.mail_dir / "example.org" / "alice" / "new")
        size = len(
            b"Return-Path: <s@remote.example>\r\nDelivered-To: alice@example.org\r\n" + MESSAGE
        )
        self.assertEqual(
            [formatEvent(e) for e in events],
            [f"delivered: to=alice@example.org from=s@remote.example size={size} file={name}"],
        )

    def test_disk_failure(self) -> None:
        """A disk failure during delivery is raised and notifies no watcher."""

        def full(f: Any, *args: Any) -> defer.Deferred[Any]:
            return defer.fail(OSError(28, "No space left on device"))

        self.watch("alice")
        delivery = LocalDelivery(self.store, self.mail_dir, self.notifier, full)
        d = defer.ensureDeferred(delivery.deliver(None, [M("alice@example.org")], MESSAGE))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.changed, [])


class QuotaDeliveryTests(unittest.TestCase):
    """A user whose quota the message would exceed gets no copy; the others do."""

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.mail_dir = base / "mail"
        self.store = AccountStore(base / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        self.size = len(
            return_path_header(M("sender@remote.example"))
            + delivered_to_header(M("alice@example.org"))
            + MESSAGE
        )
        self.store.add_user("alice@example.org", "h", Quota(storage=self.size + 10))
        self.store.add_user("bob@example.org", "h")
        self.store.add_alias("team@example.org", ["alice@example.org", "bob@example.org"])
        self.store.add_alias("alice2@example.org", ["alice@example.org"])
        tracker = QuotaTracker(self.store, self.mail_dir, run_now)
        self.delivery = LocalDelivery(self.store, self.mail_dir, ChangeNotifier(), run_now, tracker)

    def deliver(self, recipients: list[str]) -> Delivered:
        d = defer.ensureDeferred(
            self.delivery.deliver_all(
                M("sender@remote.example"), [M(r) for r in recipients], MESSAGE
            )
        )
        return self.successResultOf(d)

    def count(self, user: str) -> int:
        return len(os.listdir(self.mail_dir / "example.org" / user / "new"))

    def test_over_quota_user_gets_no_copy(self) -> None:
        """RFC 9208: a user over quota gets no copy and is reported and logged; the other
        recipients get theirs."""
        first = self.deliver(["team@example.org"])
        self.assertEqual(first, Delivered((M("alice@example.org"), M("bob@example.org")), (), ()))
        with capturedLogs() as events:
            second = self.deliver(["team@example.org"])
        self.assertEqual(second, Delivered((M("bob@example.org"),), (), (M("alice@example.org"),)))
        self.assertEqual((self.count("alice"), self.count("bob")), (1, 2))
        self.assertIn(
            f"not delivered: to=alice@example.org from=sender@remote.example size={self.size}:"
            " STORAGE quota exceeded",
            [formatEvent(e) for e in events],
        )

    def test_deliver_drops_over_quota_copies(self) -> None:
        """The DSN path (deliver) stores what fits and reports nothing."""
        self.deliver(["alice@example.org"])
        d = defer.ensureDeferred(self.delivery.deliver(None, [M("alice@example.org")], MESSAGE))
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(self.count("alice"), 1)

    def test_check_quota_at_rcpt(self) -> None:
        """Refused only when every user behind the address is full."""

        def check(address: str) -> object:
            d = defer.ensureDeferred(self.delivery.check_quota(M(address)))
            failures: list[Any] = []
            d.addErrback(failures.append)
            return failures[0].value if failures else None

        self.assertIsNone(check("alice@example.org"))  # room left: 10 + one message
        self.store.set_quota("alice@example.org", Quota(storage=1))
        self.deliver(["bob@example.org"])
        self.assertIsNone(check("alice@example.org"))  # empty, 1 octet free
        (self.mail_dir / "example.org" / "alice" / "new").mkdir(parents=True, exist_ok=True)
        (self.mail_dir / "example.org" / "alice" / "new" / "1.M1P1.h,S=1").write_bytes(b"x")
        error = check("alice2@example.org")
        self.assertIsInstance(error, QuotaExceeded)
        self.assertIsNone(check("team@example.org"))  # bob has room


class PlusFolderTests(unittest.TestCase):
    """[delivery] plus_folder: user+detail goes into the user's folder named detail."""

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.mail_dir = base / "mail"
        self.store = AccountStore(base / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        self.store.add_user("alice@example.org", "h")
        self.root = self.mail_dir / "example.org" / "alice"
        (self.root / ".Lists" / "cur").mkdir(parents=True)  # as a bare client-made folder
        self.changed: list[Path] = []
        notifier = ChangeNotifier()
        notifier.subscribe(self.root / ".Lists", lambda: self.changed.append(self.root))

        def make(plus_folder: bool) -> LocalDelivery:
            return LocalDelivery(
                self.store, self.mail_dir, notifier, run_now, plus_folder=plus_folder
            )

        self.make = make

    def deliver(self, delivery: LocalDelivery, rcpt: str) -> None:
        d = defer.ensureDeferred(delivery.deliver(None, [M(rcpt)], MESSAGE))
        self.successResultOf(d)

    def files(self, folder: str) -> list[bytes]:
        new = self.root / folder / "new"
        return [p.read_bytes() for p in new.iterdir()] if new.is_dir() else []

    def test_existing_folder_any_case(self) -> None:
        """alice+lists@ lands in the existing folder "Lists" (matched case-insensitively)."""
        self.deliver(self.make(True), "alice+lists@example.org")
        self.assertEqual(
            self.files(".Lists"),
            [b"Return-Path: <>\r\nDelivered-To: alice@example.org\r\n" + MESSAGE],
        )
        self.assertEqual(self.files(""), [])
        self.assertEqual(self.changed, [self.root])

    def test_missing_folder_or_off_is_inbox(self) -> None:
        """No such folder, or plus_folder off: the INBOX (no folder is created)."""
        self.deliver(self.make(True), "alice+nothere@example.org")
        self.deliver(self.make(False), "alice+lists@example.org")
        self.assertEqual(len(self.files("")), 2)
        self.assertEqual(self.files(".Lists"), [])
        self.assertFalse((self.root / ".nothere").exists())
