"""Quota usage and checks (twistedmail.quota): sizes from Maildir names over every folder, the
per-folder cache keyed on directory mtimes, and the limits of RFC 9208 §5.1/§5.2."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from twistedmail.accounts import AccountStore, Quota
from twistedmail.maildir import make_maildir, write_durably
from twistedmail.passwords import hash_password
from twistedmail.quota import (
    QuotaExceeded,
    QuotaTracker,
    Usage,
    UsageCache,
    exceeded,
    full,
)
from twistedmail.testing import run_now

OLD = 1_700_000_000.0  # a directory mtime long before NOW
NOW = OLD + 3600


def age(*dirs: Path, mtime: float = OLD) -> None:
    for d in dirs:
        os.utime(d, (mtime, mtime))


class LimitTests(unittest.TestCase):
    def test_exceeded_storage_and_messages(self) -> None:
        """RFC 9208: a message that would pass the storage or message limit exceeds it (STORAGE,
        MESSAGE); exactly at the limit fits."""
        quota = Quota(storage=1000, messages=3)
        self.assertIsNone(exceeded(quota, Usage(900, 2), 100))  # exactly at the limit fits
        self.assertEqual(exceeded(quota, Usage(900, 2), 101), "STORAGE")
        self.assertEqual(exceeded(quota, Usage(0, 3), 1), "MESSAGE")
        self.assertEqual(exceeded(quota, Usage(0, 1), 10, count=3), "MESSAGE")

    def test_zero_is_unlimited(self) -> None:
        """A quota of 0 is unlimited: nothing exceeds it and it is never full."""
        self.assertIsNone(exceeded(Quota(), Usage(10**12, 10**6), 10**9))
        self.assertIsNone(full(Quota(), Usage(10**12, 10**6)))
        self.assertTrue(Quota().unlimited)
        self.assertFalse(Quota(messages=1).unlimited)

    def test_full(self) -> None:
        """full is STORAGE or MESSAGE once usage reaches a limit, else None."""
        self.assertEqual(full(Quota(storage=1000), Usage(1000, 1)), "STORAGE")
        self.assertIsNone(full(Quota(storage=1000), Usage(999, 1)))
        self.assertEqual(full(Quota(messages=2), Usage(5, 2)), "MESSAGE")


class UsageCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "example.test" / "alice"
        make_maildir(self.root)
        make_maildir(self.root / ".Sent", folder=True)
        self.cache = UsageCache(now=lambda: NOW)

    def test_sums_sizes_from_names_over_all_folders(self) -> None:
        """Usage sums every folder's messages, from the S= size in the name or the file size; dot
        files and non-folders are left out."""
        write_durably(self.root / "new", b"a" * 100)
        write_durably(self.root / "cur", b"b" * 50, "S")
        write_durably(self.root / ".Sent" / "cur", b"c" * 7)
        (self.root / "cur" / "1.M1P1.host:2,S").write_bytes(b"no size in the name")  # 19
        (self.root / "cur" / ".hidden").write_bytes(b"ignored")
        (self.root / ".NotAFolder").mkdir()
        self.assertEqual(self.cache.measure(self.root), Usage(176, 4))

    def test_a_size_in_the_name_is_trusted_without_reading(self) -> None:
        """A size in the file name (S=) is used without reading the file."""
        (self.root / "cur" / "1.M1P1.host,S=5000:2,").write_bytes(b"short")
        self.assertEqual(self.cache.measure(self.root), Usage(5000, 1))

    def test_missing_tree_uses_nothing(self) -> None:
        """A user without a Maildir uses nothing."""
        self.assertEqual(self.cache.measure(self.root.parent / "nobody"), Usage())

    def test_folder_listed_again_only_when_its_mtime_changes(self) -> None:
        """A folder is listed again only when its directory mtime changes; otherwise the cached
        sum answers."""
        write_durably(self.root / "new", b"a" * 100)
        dirs = [self.root / "new", self.root / "cur", self.root / ".Sent" / "new"]
        dirs.append(self.root / ".Sent" / "cur")
        age(*dirs)
        self.assertEqual(self.cache.measure(self.root), Usage(100, 1))
        # A file added behind the cache's back, the mtime put back: the cache answers.
        write_durably(self.root / "new", b"b" * 10)
        age(self.root / "new")
        self.assertEqual(self.cache.measure(self.root), Usage(100, 1))
        # Any change of the directory's mtime lists it again.
        age(self.root / "new", mtime=OLD + 1)
        self.assertEqual(self.cache.measure(self.root), Usage(110, 2))

    def test_recently_changed_folder_is_never_cached(self) -> None:
        """A change in the same clock tick as the listing leaves the mtime as it was."""
        write_durably(self.root / "new", b"a" * 100)
        age(self.root / "new", self.root / "cur", mtime=NOW - 1)
        self.assertEqual(self.cache.measure(self.root), Usage(100, 1))
        write_durably(self.root / "new", b"b" * 10)
        age(self.root / "new", mtime=NOW - 1)
        self.assertEqual(self.cache.measure(self.root), Usage(110, 2))

    def test_deleted_folder_no_longer_counts(self) -> None:
        """A folder that is gone no longer counts."""
        write_durably(self.root / ".Sent" / "cur", b"c" * 7)
        self.assertEqual(self.cache.measure(self.root), Usage(7, 1))
        os.rename(self.root / ".Sent", self.root / "gone")
        self.assertEqual(self.cache.measure(self.root), Usage())


class TrackerTests(unittest.TestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.store = AccountStore(base / "accounts.sqlite")
        self.addCleanup(self.store.close)
        self.store.add_user("alice@example.test", hash_password("pw"), Quota(storage=1000))
        self.mail_dir = base / "mail"
        self.root = self.mail_dir / "example.test" / "alice"
        make_maildir(self.root)
        self.tracker = QuotaTracker(self.store, self.mail_dir, run_now)

    def check(self, size: int, count: int = 1) -> QuotaExceeded | None:
        failures: list[Any] = []
        d = Deferred.fromCoroutine(self.tracker.check("alice@example.test", size, count))
        d.addErrback(lambda f: failures.append(f.trap(QuotaExceeded) and f.value))
        return failures[0] if failures else None

    def test_check_against_usage_on_disk(self) -> None:
        """The tracker checks a new message's size against the user's quota and the usage on
        disk, naming user and resource."""
        write_durably(self.root / "new", b"x" * 600)
        self.assertIsNone(self.check(400))
        error = self.check(401)
        assert error is not None
        self.assertEqual((error.address, error.resource), ("alice@example.test", "STORAGE"))

    def test_limit_changes_apply_at_once(self) -> None:
        """A quota changed in the store applies to the next check."""
        write_durably(self.root / "new", b"x" * 600)
        self.store.set_quota("alice@example.test", Quota(storage=0, messages=1))
        error = self.check(1)
        assert error is not None
        self.assertEqual(error.resource, "MESSAGE")
        self.store.set_quota("alice@example.test", Quota())
        self.assertIsNone(self.check(10**9))

    def test_exceeded_at_lists_nothing_for_an_unlimited_quota(self) -> None:
        """The blocking check delivery makes (in its thread): the resource a message would
        take past the quota, from the tree's usage; an unlimited quota lists nothing."""
        write_durably(self.root / "new", b"x" * 600)
        tracker = self.tracker
        self.assertIsNone(tracker.exceeded_at(Quota(storage=1000), self.root, 400))
        self.assertEqual(tracker.exceeded_at(Quota(storage=1000), self.root, 401), "STORAGE")
        self.assertEqual(tracker.exceeded_at(Quota(messages=1), self.root, 1), "MESSAGE")
        listed: list[Path] = []
        self.patch(tracker.cache, "measure", listed.append)
        self.assertIsNone(tracker.exceeded_at(Quota(), self.root, 10**9))
        self.assertEqual(listed, [])

    def test_unknown_user_is_unlimited(self) -> None:
        """An unknown user has the unlimited quota."""
        self.assertEqual(self.tracker.quota("nobody@example.test"), Quota())
