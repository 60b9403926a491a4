"""The C{dovecot-uidlist} reader (L{twistedmail.maildir.uidlist.read}): the fast path for a
list of plain C{<uid> :<name>} records and the general one give the same UIDs (RFC 3501
§2.3.1.1: a UID read wrong is a UID given to two messages)."""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from twistedmail.maildir import uidlist
from twistedmail.maildir.names import UIDLIST


class ReadTests(unittest.TestCase):
    def read(self, text: str) -> tuple[int, int, str, dict[str, int]]:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / UIDLIST).write_bytes(text.encode("utf-8", "surrogateescape"))
        return uidlist.read(folder)

    def test_plain_records(self) -> None:
        """Plain records: every base name with its UID, UIDNEXT the header's or above."""
        got = self.read("3 V7 N9 Gabc\n1 :a,S=10\n5 :b:c\n8 :d\n")
        self.assertEqual(got, (7, 9, "abc", {"a,S=10": 1, "b:c": 5, "d": 8}))

    def test_uidnext_from_the_records(self) -> None:
        """A header C{N} behind the last record (L{uidlist.append} leaves it) counts for
        less than the highest UID + 1."""
        self.assertEqual(self.read("3 V7 N2 G\n1 :a\n40 :b\n")[:2], (7, 41))

    def test_extension_fields_and_odd_lines(self) -> None:
        """Dovecot's extension fields before the colon, a record without a space, an empty
        line and a line without a UID: the same UIDs as a record-by-record reading."""
        text = "3 V7 N1 G\n1 W120 :a\n2:b\n\nxx :c\n3 :d\n"
        self.assertEqual(self.read(text), (7, 4, "", {"a": 1, "b": 2, "d": 3}))

    def test_duplicate_name(self) -> None:
        """A base name listed twice keeps its later UID; the earlier still counts for
        UIDNEXT (a UID once given out is never given again)."""
        self.assertEqual(self.read("3 V7 N1 G\n9 :a\n2 :a\n")[1:], (10, "", {"a": 2}))

    def test_torn_last_record(self) -> None:
        """A last record without its newline is no record (a crash while it was added)."""
        self.assertEqual(self.read("3 V7 N3 G\n1 :a\n2 :b\n3 :c")[1:], (3, "", {"a": 1, "b": 2}))

    def test_header_alone(self) -> None:
        """A header alone, even without its newline, keeps its UIDVALIDITY and UIDNEXT."""
        self.assertEqual(self.read("3 V7 N5 Gg"), (7, 5, "g", {}))

    def test_crlf(self) -> None:
        """CRLF line ends are read as LF ones."""
        text = "3 V7 N1 G\r\n1 :a\r\n2 :b\r\n"
        self.assertEqual(self.read(text)[1:], (3, "", {"a": 1, "b": 2}))

    def test_undecodable_name(self) -> None:
        """A name that is not UTF-8 is kept byte for byte (surrogate escapes)."""
        name = b"a\xff".decode("utf-8", "surrogateescape")
        self.assertEqual(self.read(f"3 V7 N1 G\n6 :{name}\n")[3], {name: 6})
