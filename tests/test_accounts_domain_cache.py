"""The local domain list and the recipient lookups kept in memory between changes (issue 10:
it was one SQLite query per call, several per recipient): a domain, user, alias or quota
added, changed or deleted by another connection (the CLI) or by the store itself counts at
the next call (with a reactor: the CLI's from the next reactor turn), and a transaction
rolled back leaves nothing behind."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

from twistedmail.accounts import AccountStore, Quota


class DomainCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = directory / "accounts.sqlite3"
        self.server = self.open()
        self.cli = self.open()

    def open(self, reactor: Clock | None = None) -> AccountStore:
        store = AccountStore(self.path, reactor=reactor)
        self.addCleanup(store.close)
        return store

    def test_changes_by_another_connection(self) -> None:
        """The CLI's add and delete are seen by the server's connection at the next call."""
        self.assertFalse(self.server.is_local_domain("example.org"))
        self.cli.add_domain("example.org")
        self.assertTrue(self.server.is_local_domain("example.org"))
        self.assertTrue(self.server.is_local_domain("EXAMPLE.ORG"))
        self.cli.delete_domain("example.org")
        self.assertFalse(self.server.is_local_domain("example.org"))

    def test_another_thread_asks_the_database(self) -> None:
        """A delivery thread's lookup (a vacation reply's addresses) asks the database and
        leaves the reactor thread's memory and its per-turn version alone: a CLI change
        made in the same reactor turn is seen by it at once."""
        clock = Clock()
        server = self.open(clock)
        self.assertFalse(server.is_local_domain("example.org"))  # remembered for this turn
        self.cli.add_domain("example.org")
        answers: list[bool] = []
        thread = threading.Thread(
            target=lambda: answers.append(server.is_local_domain("example.org"))
        )
        thread.start()
        thread.join()
        self.assertEqual(answers, [True])
        self.assertFalse(server.is_local_domain("example.org"))  # the turn's memory, unchanged
        clock.advance(0)
        self.assertTrue(server.is_local_domain("example.org"))

    def test_changes_by_the_same_connection(self) -> None:
        """The server's own add and delete are seen at once (the cache is not stale)."""
        self.assertFalse(self.server.is_local_domain("example.org"))
        self.server.add_domain("example.org")
        self.assertTrue(self.server.is_local_domain("example.org"))
        self.server.delete_domain("example.org")
        self.assertFalse(self.server.is_local_domain("example.org"))

    def test_rolled_back_insert_is_not_remembered(self) -> None:
        """A domain seen inside a transaction that is then rolled back is not local after."""
        db = self.server._db
        self.assertFalse(self.server.is_local_domain("example.org"))
        db.execute("BEGIN")
        db.execute("INSERT INTO domains(name) VALUES ('example.org')")
        self.assertTrue(self.server.is_local_domain("example.org"))
        db.execute("ROLLBACK")
        self.assertFalse(self.server.is_local_domain("example.org"))
        self.assertFalse(self.cli.is_local_domain("example.org"))
        self.assertIsInstance(db, sqlite3.Connection)

    def test_users_aliases_and_quotas(self) -> None:
        """A user, alias or quota changed by the CLI is seen by the server at the next call."""
        self.cli.add_domain("example.org")
        self.assertFalse(self.server.is_user("a@example.org"))
        self.assertIsNone(self.server.quota("a@example.org"))
        self.cli.add_user("a@example.org", "hash")
        self.assertTrue(self.server.is_user("A@example.org"))
        self.assertEqual(self.server.quota("a@example.org"), Quota(0, 0))
        self.cli.set_quota("a@example.org", Quota(100, 2))
        self.assertEqual(self.server.quota("a@example.org"), Quota(100, 2))
        self.assertEqual(self.server.alias_targets("b@example.org"), [])
        self.cli.add_alias("b@example.org", ["a@example.org", "x@remote.test"])
        targets = self.server.alias_targets("b@example.org")
        self.assertEqual(targets, ["a@example.org", "x@remote.test"])
        targets.append("changed by the caller")  # a copy: the remembered answer is intact
        self.assertEqual(self.server.alias_targets("b@example.org"), targets[:2])
        self.cli.delete_alias("b@example.org")
        self.cli.delete_user("a@example.org")
        self.assertEqual(self.server.alias_targets("b@example.org"), [])
        self.assertFalse(self.server.is_user("a@example.org"))

    def test_once_per_reactor_turn(self) -> None:
        """With a reactor, another connection's change counts from the next reactor turn
        (whether the database changed is asked once per turn); the store's own change at
        once."""
        clock = Clock()
        server = self.open(clock)
        self.assertFalse(server.is_local_domain("example.org"))
        self.cli.add_domain("example.org")
        self.assertFalse(server.is_local_domain("example.org"))  # the same turn
        clock.advance(0)
        self.assertTrue(server.is_local_domain("example.org"))
        server.add_domain("example.net")
        self.assertTrue(server.is_local_domain("example.net"))  # its own change: at once
        self.cli.delete_domain("example.org")
        clock.advance(0)
        self.assertFalse(server.is_local_domain("example.org"))
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # one check per turn, not per call
