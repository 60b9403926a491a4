"""FETCH reads the message files it needs several at a time (twistedmail.imap.fetch
READ_AHEAD) and takes ENVELOPE/BODYSTRUCTURE from the index even when other items need the
file (RFC 3501 §6.4.5, §7.4.2): the replies are those of one read per message."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.test_imap_server import MSG1, MSG2, T1, Harness
from twistedmail.imap import fetch
from twistedmail.index import CachedParts
from twistedmail.maildir import Folder

MSG3 = b"From: dave@example.org\r\nSubject: third\r\n\r\nthird body\r\n"


class ReadAheadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.patch(fetch, "READ_AHEAD", 2)
        self.h = Harness(self)
        for n, msg in enumerate((MSG1, MSG2, MSG3, MSG2)):
            self.h.add(msg, "", T1 + n)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_whole_messages_in_batches(self) -> None:
        """FETCH 1:* BODY.PEEK[] over batches gives every message's bytes, in order."""
        out = self.h.send(b"a FETCH 1:* (BODY.PEEK[])\r\n")
        want = b"".join(
            b"* %d FETCH (BODY[] {%d}\r\n%s)\r\n" % (n, len(m), m)
            for n, m in enumerate((MSG1, MSG2, MSG3, MSG2), 1)
        )
        self.assertEqual(out, want + b"a OK FETCH completed\r\n")

    def test_message_expunged_elsewhere_is_nil(self) -> None:
        """A message whose file another program deleted is answered NIL and the tagged OK
        says EXPUNGEISSUED (RFC 2180 §4.1.2, RFC 5530 §3, as Dovecot; its EXPUNGE comes
        later, RFC 3501 §7.4.1); the others are sent whole."""
        cur = self.h.root / "cur"
        (gone,) = [n for n in os.listdir(cur) if "third" in (cur / n).read_bytes().decode()]
        os.unlink(cur / gone)
        out = self.h.send(b"a FETCH 1:* (BODY.PEEK[])\r\n")
        want = b"".join(
            b"* %d FETCH (BODY[] {%d}\r\n%s)\r\n" % (n, len(m), m)
            for n, m in ((1, MSG1), (2, MSG2))
        )
        want += b"* 3 FETCH (BODY[] NIL)\r\n* 4 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(MSG2), MSG2)
        self.assertEqual(
            out, want + b"a OK [EXPUNGEISSUED] Some messages were already expunged.\r\n"
        )

    def test_cached_envelope_beside_a_section(self) -> None:
        """ENVELOPE comes from the index's cache also when a BODY section needs the file."""
        folder = Folder(self.h.root)
        (entry,) = [e for e in folder.scan().messages if e.uid == 1]
        folder.cache_parts({(1, entry.base): CachedParts(b"CACHED", None, None)})
        out = self.h.send(b"a FETCH 1 (ENVELOPE BODY.PEEK[HEADER.FIELDS (Subject)])\r\n")
        fields = b"Subject: Hello\r\n\r\n"
        self.assertEqual(
            out,
            b"* 1 FETCH (ENVELOPE (CACHED) BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n%s)\r\n"
            b"a OK FETCH completed\r\n" % (len(fields), fields),
        )


class ReadAheadUnknownSizeTests(unittest.TestCase):
    def test_unmeasured_files_keep_the_octet_bound(self) -> None:
        """Files named without ,W= (size not measured yet) count in READ_AHEAD_OCTETS by their
        ,S= size, or alone without one: a FETCH of large such files never reads READ_AHEAD
        of them in one hop."""
        self.patch(fetch, "READ_AHEAD_OCTETS", 80)
        batches: list[int] = []
        read_many = fetch._read_many

        def recording(mbox: object, msgs: list[object]) -> list[bytes | None]:
            batches.append(len(msgs))
            return read_many(mbox, msgs)  # type: ignore[arg-type]

        self.patch(fetch, "_read_many", recording)
        h = Harness(self)
        cur = h.root / "cur"
        messages = (MSG1, MSG2, MSG3, MSG2)
        for n, msg in enumerate(messages):
            size = f",S={len(msg)}" if n < 2 else ""
            path = cur / f"{1000 + n}.M{n}P1.host{size}:2,"
            path.write_bytes(msg)
            os.utime(path, (T1 + n, T1 + n))
        h.login()
        h.cmd(b"s SELECT INBOX")
        out = h.send(b"a FETCH 1:* (BODY.PEEK[])\r\n")
        want = b"".join(
            b"* %d FETCH (BODY[] {%d}\r\n%s)\r\n" % (n, len(m), m)
            for n, m in enumerate(messages, 1)
        )
        self.assertEqual(out, want + b"a OK FETCH completed\r\n")
        self.assertTrue(all(len(m) > 40 for m in messages))
        self.assertEqual(batches, [1, 1, 1, 1])


MULTIPART = (
    b"From: Erin <erin@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: parts\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"first part\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>second</p>\r\n"
    b"--b1--\r\n"
)

ITEMS = (
    b"(ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE FLAGS)",
    b"(BODY.PEEK[HEADER.FIELDS (From Subject)] BODY.PEEK[HEADER.FIELDS.NOT (To)])",
    b"(BODY.PEEK[] BODY.PEEK[TEXT] BODY.PEEK[HEADER] BODY.PEEK[1] BODY.PEEK[2.MIME])",
    b"(RFC822.HEADER BODY.PEEK[1]<2.5> BODY.PEEK[3] BODY.PEEK[]<0.10>)",
    b"(BODY.PEEK[HEADER.FIELDS (X-None)] UID INTERNALDATE)",
)


class RenderedItemsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.patch(fetch, "RENDERED", fetch.RenderedItems())
        self.h = Harness(self)
        for n, msg in enumerate((MSG1, MULTIPART, MSG2)):
            self.h.add(msg, "", T1 + n)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_remembered_items_equal_fresh_renders(self) -> None:
        """A FETCH answered from the process's rendered items (no file read) is byte for
        byte the FETCH rendered from the files (RFC 3501 §7.4.2)."""
        fresh = [self.h.send(b"a FETCH 1:* %s\r\n" % items) for items in ITEMS]
        self.assertGreater(len(fetch.RENDERED), 0)

        def no_read(mbox: object, msgs: list[object]) -> list[bytes | None]:
            raise AssertionError("a message file was read for an item rendered before")

        self.patch(fetch, "_read_many", no_read)
        again = [self.h.send(b"a FETCH 1:* %s\r\n" % items) for items in ITEMS]
        self.assertEqual(again, fresh)
        self.assertIn(b"BODY[1]<2> {5}\r\nrst p", fresh[3])
        self.assertIn(b"BODY[3] NIL", fresh[3])

    def test_non_peek_section_still_sets_seen(self) -> None:
        """BODY[TEXT] (not PEEK) answered from the rendered items still sets \\Seen
        (RFC 3501 §6.4.5)."""
        self.h.send(b"a FETCH 3 (BODY.PEEK[TEXT])\r\n")
        out = self.h.send(b"a FETCH 3 (BODY[TEXT])\r\n")
        body = b"second body\r\n"
        self.assertEqual(
            out,
            b"* 3 FETCH (BODY[TEXT] {%d}\r\n%s FLAGS (\\Seen))\r\n"
            b"a OK FETCH completed\r\n" % (len(body), body),
        )


class RenderedItemsBoundTests(unittest.TestCase):
    def test_bounded_least_recently_used(self) -> None:
        """The rendered items never hold more than max_octets (values + overhead): the
        least recently used go first, and a value over max_item is not kept."""
        over = fetch.RenderedItems.OVERHEAD
        kept = fetch.RenderedItems(max_octets=3 * (over + 10), max_item=over + 20)
        for n in range(3):
            kept.put(("f", "m%d" % n, b"BODY[]"), b"x" * 10)
        self.assertEqual(kept.get(("f", "m0", b"BODY[]")), b"x" * 10)  # now the newest
        kept.put(("f", "m3", b"BODY[]"), b"y" * 10)
        self.assertIs(kept.get(("f", "m1", b"BODY[]")), fetch._MISSING)
        self.assertEqual(kept.get(("f", "m0", b"BODY[]")), b"x" * 10)
        kept.put(("f", "big", b"BODY[]"), b"z" * 21)
        self.assertIs(kept.get(("f", "big", b"BODY[]")), fetch._MISSING)
        kept.put(("f", "none", b"BODY[3]"), None)
        self.assertIsNone(kept.get(("f", "none", b"BODY[3]")))
        self.assertEqual(len(kept), 3)
        self.assertLessEqual(kept.octets, kept.max_octets)
        self.assertEqual(kept.octets, 2 * (over + 10) + over)


class OneWriteTests(unittest.TestCase):
    def test_responses_of_many_messages_in_one_write(self) -> None:
        """The FETCH responses of many messages go to the transport in one write (then the
        tagged OK): each write went through the connection's wrappers and the TLS layer."""
        h = Harness(self)
        for n, msg in enumerate((MSG1, MSG2, MSG3, MSG2)):
            h.add(msg, "S" if n % 2 else "", T1 + n)
        h.login()
        h.cmd(b"s SELECT INBOX")
        writes: list[bytes] = []
        write = h.transport.write

        def recording(data: bytes) -> None:
            writes.append(data)
            write(data)

        self.patch(h.transport, "write", recording)
        h.send(b"a FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])\r\n")
        fields = [b"Subject: " + s + b"\r\n\r\n" for s in (b"Hello", b"second", b"third")]
        self.assertEqual(
            writes,
            [
                b"".join(
                    b"* %d FETCH (UID %d FLAGS (%s) BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n%s)\r\n"
                    % (n, n, b"\\Seen" if n % 2 == 0 else b"", len(f), f)
                    for n, f in zip((1, 2, 3, 4), (*fields, fields[1]), strict=True)
                ),
                b"a OK FETCH completed\r\n",
            ],
        )
