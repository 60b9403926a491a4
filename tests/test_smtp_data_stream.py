"""SMTP DATA as a stream (issue 10): the data is taken in whole reads, checked and
dot-unstuffed on bytes, and the outcome is that of the line-by-line path wherever the reads
split the data: the same stored bytes (RFC 5321 §4.5.2 transparency), the same end of data
(only <CRLF>.<CRLF>, §4.1.1.4), the same refusals (bare CR/LF §2.3.8, line length
§4.5.3.1.6, header size, RFC 1870 SIZE)."""

from __future__ import annotations

from test_smtp_data_limits import ACCEPTED, OPEN, SENT_UP_TO_DATA, VARIANTS, DataTestCase
from twisted.internet.testing import StringTransport

from twistedmail.smtp.session import SMTPSession

BODY = (
    b"Subject: stream\r\nFrom: <x@elsewhere.test>\r\n\r\n"
    b"..leading dot\r\n"
    b"...two dots\r\n"
    b". \r\n"
    b"..\r\n"
    b"middle . line\r\n"
    + b"0123456789abcdef" * 200
    + b"\r\n"
    + b"\r\n".join(b"line %d" % i for i in range(300))
    + b"\r\n..\r\n"
)
STORED = (
    b"Subject: stream\r\nFrom: <x@elsewhere.test>\r\n\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b" \r\n"
    b".\r\n"
    b"middle . line\r\n"
    + b"0123456789abcdef" * 200
    + b"\r\n"
    + b"\r\n".join(b"line %d" % i for i in range(300))
    + b"\r\n.\r\n"
)


def feed(proto: SMTPSession, tr: StringTransport, parts: list[bytes]) -> bytes:
    tr.clear()
    for part in parts:
        proto.dataReceived(part)
    return tr.value()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class StreamTests(DataTestCase):
    def test_every_split_point(self) -> None:
        """Two reads split anywhere around the end of data and the dot-stuffed lines: the
        message is stored exactly once, unstuffed (RFC 5321 §4.5.2), and NOOP after it runs."""
        data = OPEN + BODY + b".\r\nNOOP\r\n"
        start = len(OPEN)
        points = [*range(start, start + 120), *range(len(data) - 40, len(data))]
        for n, point in enumerate(points, 1):
            proto, tr = self.session()
            out = feed(proto, tr, [data[:point], data[point:]])
            self.assertEqual(out, SENT_UP_TO_DATA + ACCEPTED + b"250 2.0.0 OK\r\n", point)
            self.assertEqual(len(self.stored()), n)
            self.assertEqual(self.stored()[-1], STORED)

    def test_read_sizes(self) -> None:
        """One read, one byte a read, and reads of 7, 1000 and 4096 octets store the same
        bytes."""
        data = OPEN + BODY + b".\r\n"
        for n, size in enumerate((len(data), 1, 7, 1000, 4096), 1):
            proto, tr = self.session()
            self.assertEqual(feed(proto, tr, pieces(data, size)), SENT_UP_TO_DATA + ACCEPTED)
            self.assertEqual(self.stored(), [STORED] * n)

    def test_smuggling_variants_in_any_read_size(self) -> None:
        """None of the bare CR/LF end-of-data variants ends the data or is stored, however
        the reads split them (RFC 5321 §2.3.8, §4.1.1.4): 550 after the real dot."""
        for variant in VARIANTS:
            data = OPEN + b"Subject: x\r\n\r\n" + b"body\r\n" * 50 + b"text" + variant
            data += b"MAIL FROM:<admin@bank.test>\r\n" + b"more\r\n" * 50 + b".\r\nNOOP\r\n"
            for size in (len(data), 1, 3, 64):
                proto, tr = self.session()
                out = feed(proto, tr, pieces(data, size))
                self.assertEqual(
                    out,
                    SENT_UP_TO_DATA
                    + b"550 5.6.0 Bare CR or LF in message data\r\n"
                    + b"250 2.0.0 OK\r\n",
                    (variant, size),
                )
                self.assertNothingStored()

    def test_size_limit_in_large_reads(self) -> None:
        """A message over the limit in reads of 64 KiB: 552 5.3.4 after the dot (RFC 1870
        §6.3), nothing stored, and the next transaction is accepted."""
        proto, tr = self.session()
        proto.max_message_size = 100_000
        line = b"x" * 998 + b"\r\n"
        data = OPEN + b"Subject: big\r\n\r\n" + line * 101 + b".\r\nNOOP\r\n"
        out = feed(proto, tr, pieces(data, 65536))
        too_big = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
        self.assertEqual(out, SENT_UP_TO_DATA + too_big + b"250 2.0.0 OK\r\n")
        self.assertNothingStored()
        body = b"Subject: fits\r\n\r\n" + line * 99
        self.assertEqual(feed(proto, tr, [OPEN + body + b".\r\n"]), SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [body])

    def test_long_line_after_clean_lines_in_one_read(self) -> None:
        """An over-long line deep in a read of clean lines fails the message with 500 5.6.0
        (RFC 5321 §4.5.3.1.6), and the body after it never runs as commands."""
        proto, tr = self.session(max_line_length=998)
        data = (
            OPEN
            + b"Subject: x\r\n\r\n"
            + b"fine\r\n" * 500
            + b"a" * 999
            + b"\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n.\r\nNOOP\r\n"
        )
        out = feed(proto, tr, [data])
        self.assertEqual(
            out, SENT_UP_TO_DATA + b"500 5.6.0 Message text line too long\r\n250 2.0.0 OK\r\n"
        )
        self.assertNothingStored()
