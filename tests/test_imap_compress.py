"""COMPRESS=DEFLATE (RFC 4978) over a fake transport: the tagged OK in clear, then raw
DEFLATE both ways with a sync flush per write, pipelined input after the command, a second
COMPRESS, corrupt input, and decompression bombs held to the plain-text limits."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_protocols import FUZZ, IMAP_LINE, Failures
from test_imap_server import MSG1, MSG2, Harness
from twisted.trial import unittest

from twistedmail.imap.compress import INFLATE_CHUNK, CompressionError, DeflateTransport, Inflater
from twistedmail.maildir import write_durably


class DeflateClient:
    """The client's end of a compressed session over a L{Harness}."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)

    def compress(self, data: bytes) -> bytes:
        return self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)

    def take(self) -> bytes:
        return self.inp.decompress(self.h.take())

    def send(self, data: bytes) -> bytes:
        self.h.server.dataReceived(self.compress(data))
        return self.take()

    def cmd(self, line: bytes) -> list[bytes]:
        return self.send(line + b"\r\n").split(b"\r\n")[:-1]


class InflaterTests(unittest.TestCase):
    def test_chunks_are_bounded_and_stop_when_paused(self) -> None:
        """A deflate bomb is inflated in bounded chunks and stops while the session is paused,
        keeping the rest pending."""
        data = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = data.compress(b"A" * 1_000_000) + data.flush(zlib.Z_SYNC_FLUSH)
        self.assertLess(len(bomb), 2000)
        chunks: list[bytes] = []
        inflater = Inflater()
        inflater.feed(bomb, chunks.append, lambda: len(chunks) >= 3)
        self.assertEqual([len(c) for c in chunks], [INFLATE_CHUNK] * 3)
        self.assertGreater(inflater.pending, 0)
        inflater.feed(b"", chunks.append, lambda: False)
        self.assertEqual(b"".join(chunks), b"A" * 1_000_000)
        self.assertEqual(inflater.pending, 0)

    def test_corrupt_and_final_block(self) -> None:
        """Corrupt deflate data, or a final block (the client may not end the stream), raise
        CompressionError."""
        self.assertRaises(
            CompressionError, Inflater().feed, b"\xff\xff\xff", lambda c: None, lambda: False
        )
        final = zlib.compressobj(6, zlib.DEFLATED, -15)
        ended = final.compress(b"a NOOP\r\n") + final.flush()
        self.assertRaises(CompressionError, Inflater().feed, ended, lambda c: None, lambda: False)

    def test_transport_flushes_every_write(self) -> None:
        """RFC 4978 §4: every write is sync-flushed (ends 00 00 ff ff) so the client can read
        each response at once."""
        written: list[bytes] = []

        class Sink:
            disconnecting = False

            def write(self, data: bytes) -> None:
                written.append(data)

        transport = DeflateTransport(Sink())
        transport.write(b"* OK one\r\n")
        transport.writeSequence([b"* OK ", b"two\r\n"])
        transport.write(b"")
        self.assertEqual(len(written), 2)
        self.assertTrue(all(w.endswith(b"\x00\x00\xff\xff") for w in written))
        inflate = zlib.decompressobj(-15)
        self.assertEqual(inflate.decompress(written[0]), b"* OK one\r\n")
        self.assertEqual(inflate.decompress(written[1]), b"* OK two\r\n")
        self.assertFalse(transport.disconnecting)


class CompressCommandTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1)

    def test_not_before_login(self) -> None:
        """RFC 4978 §3: COMPRESS is not offered or accepted before login."""
        self.assertNotIn(b"COMPRESS", self.h.greeting)
        self.assertEqual(
            self.h.cmd(b"a COMPRESS DEFLATE"),
            [b"a BAD Command unknown or not valid in this state"],
        )

    def test_advertised_after_login_and_session_runs_compressed(self) -> None:
        """RFC 4978 §3: after login CAPABILITY offers COMPRESS=DEFLATE; after OK the session runs
        deflated both ways."""
        self.h.login()
        self.assertIn(b" COMPRESS=DEFLATE", self.h.send(b"c CAPABILITY\r\n"))
        self.assertEqual(self.h.cmd(b"z COMPRESS DEFLATE"), [b"z OK DEFLATE active"])
        z = DeflateClient(self.h)
        self.assertEqual(z.cmd(b"s SELECT INBOX")[-1], b"s OK [READ-WRITE] SELECT completed")
        self.assertEqual(
            z.cmd(b"f FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
            [
                b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}",
                b"Subject: Hello",
                b"",
                b")",
                b"f OK FETCH completed",
            ],
        )
        capability = z.cmd(b"c CAPABILITY")
        self.assertNotIn(b"COMPRESS", capability[0])
        self.assertEqual(
            z.cmd(b"y COMPRESS DEFLATE"), [b"y NO [COMPRESSIONACTIVE] DEFLATE already active"]
        )

    def test_idle_push_is_flushed_at_once(self) -> None:
        """RFC 4978 §4: an IDLE push on a compressed session reaches the client at once."""
        self.h.login()
        self.h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(self.h)
        z.cmd(b"s SELECT INBOX")
        self.assertEqual(z.cmd(b"i IDLE"), [b"+ idling"])
        write_durably(self.h.root / "new", MSG2)
        self.h.notifier.changed(self.h.root)
        self.assertEqual(z.take(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(z.cmd(b"DONE"), [b"i OK IDLE terminated"])

    def test_pipelined_compressed_input_after_the_command(self) -> None:
        """RFC 4978 §3: client compression starts right after the COMPRESS line."""
        self.h.login()
        client = zlib.compressobj(6, zlib.DEFLATED, -15)
        tail = client.compress(b"n NOOP\r\n") + client.flush(zlib.Z_SYNC_FLUSH)
        out = self.h.send(b"z COMPRESS DEFLATE\r\n" + tail)
        head, _, compressed = out.partition(b"\r\n")
        self.assertEqual(head, b"z OK DEFLATE active")
        self.assertEqual(zlib.decompressobj(-15).decompress(compressed), b"n OK NOOP completed\r\n")

    def test_unknown_mechanism(self) -> None:
        """RFC 4978 §3: an unknown mechanism is BAD [CANNOT] and the session goes on
        uncompressed."""
        self.h.login()
        self.assertEqual(
            self.h.cmd(b"z COMPRESS LZ4"), [b"z BAD [CANNOT] Unknown compression mechanism"]
        )
        self.assertEqual(self.h.cmd(b"n NOOP"), [b"n OK NOOP completed"])

    def test_corrupt_input_closes(self) -> None:
        """Corrupt compressed input gets BYE [CLIENTBUG] and the connection closes."""
        self.h.login()
        self.h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(self.h)
        self.h.server.dataReceived(b"\xff\xfe\xfd\xfc")
        self.assertEqual(z.take(), b"* BYE [CLIENTBUG] Invalid compressed data\r\n")
        self.assertTrue(self.h.transport.disconnecting)

    def test_decompression_bomb_hits_the_line_limit(self) -> None:
        """A 64 MiB line in ~64 KiB of DEFLATE: the session ends at the plain-text line
        limit with at most one inflate chunk beyond it held in memory."""
        self.h.login()
        self.h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(self.h)
        bomb = z.out.compress(b"a NOOP " + b"x" * (64 << 20))
        bomb += z.out.flush(zlib.Z_SYNC_FLUSH)
        self.assertLess(len(bomb), 100_000)
        self.h.server.dataReceived(bomb)
        self.assertEqual(z.take(), b"* BYE [TOOBIG] Command line too long\r\n")
        self.assertTrue(self.h.transport.disconnecting)
        self.assertLessEqual(len(self.h.server._buffer), self.h.server.MAX_LENGTH + INFLATE_CHUNK)

    def test_bomb_of_pipelined_commands_is_inflated_as_they_run(self) -> None:
        """While a command runs (input paused), nothing more is inflated."""
        self.h.login()
        self.h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(self.h)
        self.h.server.pauseProducing()
        self.h.server.dataReceived(z.compress(b"n NOOP\r\n" * 10_000))
        self.assertEqual(self.h.server._buffer, b"")
        self.assertEqual(z.take(), b"")
        self.h.server.resumeProducing()
        replies = z.take().split(b"\r\n")[:-1]
        self.assertEqual(replies, [b"n OK NOOP completed"] * 10_000)

    def test_literal_and_the_command_after_it_in_one_chunk(self) -> None:
        """What follows a literal in the same inflated chunk is plain text for the line
        parser, not more DEFLATE (mbsync pipelines APPENDs with LITERAL+; before, the rest of
        the chunk was fed to the inflater again: BYE [CLIENTBUG] Invalid compressed data)."""
        self.h.login()
        self.h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(self.h)
        message = b"Subject: piped\r\n\r\nbody\r\n"
        append = b"a%d APPEND INBOX {%d+}\r\n%s\r\n"
        replies = z.send(
            b"".join(append % (i, len(message), message) for i in (1, 2)) + b"n NOOP\r\n"
        ).split(b"\r\n")[:-1]
        self.assertEqual(len(replies), 3, replies)
        self.assertRegex(replies[0], rb"\Aa1 OK \[APPENDUID \d+ 2\] APPEND completed\Z")
        self.assertRegex(replies[1], rb"\Aa2 OK \[APPENDUID \d+ 3\] APPEND completed\Z")
        self.assertEqual(replies[2], b"n OK NOOP completed")
        self.assertFalse(self.h.transport.disconnecting)

    def test_literal_limit_still_applies(self) -> None:
        """The literal size limit still applies inside a compressed session (NO [TOOBIG])."""
        self.h.login()
        self.h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(self.h)
        self.assertEqual(z.cmd(b"a APPEND INBOX {20000}"), [b"a NO [TOOBIG] Message too large"])
        self.assertEqual(z.cmd(b"n NOOP"), [b"n OK NOOP completed"])


class CompressFuzzTests(unittest.TestCase):
    @settings(FUZZ, max_examples=60)
    @given(st.lists(IMAP_LINE, min_size=1, max_size=8), st.booleans(), st.integers(0, 40))
    def test_random_input_after_compress(self, lines: list[bytes], raw: bool, cut: int) -> None:
        """Command lines sent compressed (the stream maybe cut short) or raw (not DEFLATE):
        never an internal error, and the server's output stays one valid DEFLATE stream."""
        failures = Failures(self)
        h = Harness(self, max_literal_size=1000)
        h.add(MSG1)
        h.login()
        h.cmd(b"s SELECT INBOX")
        h.cmd(b"z COMPRESS DEFLATE")
        z = DeflateClient(h)
        data = b"\r\n".join(lines) + b"\r\n"
        wire = data if raw else z.compress(data)
        h.server.dataReceived(wire[: len(wire) - cut] if cut < len(wire) else wire)
        h.clock.advance(1)
        try:
            out = z.take()
        except zlib.error:
            self.fail("server output is not a valid DEFLATE stream")
        self.assertEqual(failures.events, [])
        self.assertNotIn(b"SERVERBUG", out)
