"""The index's bulk insert (L{twistedmail.index.FolderIndex.insert_many}) at the first sync of
a big folder: every row kept, and the connection's page cache back to its default after."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from twistedmail.index import BULK_ROWS, FolderIndex


class BulkInsertTests(unittest.TestCase):
    def test_bulk_rows_kept_and_cache_restored(self) -> None:
        """More than BULK_ROWS rows: all read back in UID order, and the pooled connection
        is left with SQLite's default page cache (it serves the folder afterwards)."""
        folder = Path(self.mktemp())
        folder.mkdir()
        count = BULK_ROWS + 7
        rows = [(count - i, f"b{i}", f"b{i}:2,S", -1, 1.5e9 + i, 3) for i in range(count)]
        with FolderIndex(folder) as index:
            index.start(1)
            default = index.db.execute("PRAGMA cache_size").fetchone()[0]
            index.insert_many(rows)
            self.assertEqual(index.db.execute("PRAGMA cache_size").fetchone()[0], default)
        with FolderIndex(folder) as index:
            got = index.messages()
        self.assertEqual(got, sorted(rows))
