"""The local domain list kept in memory between changes (issue 10: it was one SQLite query
per call, several per recipient): a domain added or deleted by another connection (the CLI)
or by the store itself counts at the next call, and a transaction rolled back leaves
nothing behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial import unittest

from twistedmail.accounts import AccountStore


class DomainCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = directory / "accounts.sqlite3"
        self.server = self.open()
        self.cli = self.open()

    def open(self) -> AccountStore:
        store = AccountStore(self.path)
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
