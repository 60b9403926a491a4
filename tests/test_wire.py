"""Tests for L{twistedmail.wire.StrictLineReceiver}: CRLF framing, long lines, STARTTLS input
discarding and pipelining order: what stock Twisted's C{LineOnlyReceiver} gets wrong for
SMTP and POP3 (quadratic buffering of a long line, lines pipelined after STARTTLS/STLS run)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import skipIf

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial import unittest

from twistedmail import wire
from twistedmail.tls import create_self_signed, server_context
from twistedmail.wire import (
    ACCEPT_PAUSE,
    ACCEPT_TICK,
    SlottedServer,
    StrictLineReceiver,
    ack_now,
    balance_accepts,
    plain_tcp,
    release_tls_buffers,
    use_slotted_connections,
    write_at_once,
)

MiB = 1024 * 1024


class Recorder(StrictLineReceiver):
    """Records lines; C{on_line[line]} runs after a line is recorded."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.too_long: list[bytes] = []
        self.on_line: dict[bytes, Callable[[], object]] = {}

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        action = self.on_line.get(line)
        if action is not None:
            action()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.too_long.append(line)


class DefaultRecorder(StrictLineReceiver):
    """Keeps the base class's C{lineLengthExceeded} (closes the connection)."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)


def connect(protocol: StrictLineReceiver) -> StringTransport:
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport


class FramingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.p = Recorder()
        self.transport = connect(self.p)

    def test_lines_in_one_read(self) -> None:
        """Several CRLF lines in one read, an empty line among them, each arrive; a partial line
        waits for its end."""
        self.p.dataReceived(b"EHLO a\r\nMAIL FROM:<a@b>\r\n\r\npartial")
        self.assertEqual(self.p.lines, [b"EHLO a", b"MAIL FROM:<a@b>", b""])
        self.p.dataReceived(b" line\r\n")
        self.assertEqual(self.p.lines[-1], b"partial line")

    def test_crlf_split_across_reads(self) -> None:
        """A CRLF split between two reads (and a line split over many) still ends the line."""
        for chunk in (b"HE", b"LO x\r", b"\nNO", b"OP", b"\r", b"\n"):
            self.p.dataReceived(chunk)
        self.assertEqual(self.p.lines, [b"HELO x", b"NOOP"])

    def test_byte_by_byte(self) -> None:
        """Lines sent one byte at a time arrive whole."""
        for byte in b"A\r\nB\r\n\r\n":
            self.p.dataReceived(bytes([byte]))
        self.assertEqual(self.p.lines, [b"A", b"B", b""])

    def test_bare_lf_and_cr_are_not_line_ends(self) -> None:
        """RFC 5321 §2.3.8: only CRLF ends a line; bare LF or CR stay inside the line, where
        the protocol can refuse them (the SMTP smuggling end-of-data variants such as
        <LF>.<LF>)."""
        self.p.dataReceived(b"first\n.\nMAIL FROM:<x@y>\r\nsecond\r.\rthird\r\n")
        self.assertEqual(self.p.lines, [b"first\n.\nMAIL FROM:<x@y>", b"second\r.\rthird"])

    def test_lf_cr_is_not_crlf(self) -> None:
        """LF CR is not a line end: only CRLF ends a line."""
        self.p.dataReceived(b"a\n\rb\r\n")
        self.assertEqual(self.p.lines, [b"a\n\rb"])

    def test_nothing_after_lose_connection(self) -> None:
        """Once a line closes the connection, the rest of the read is not acted on."""
        self.p.on_line[b"QUIT"] = self.transport.loseConnection
        self.p.dataReceived(b"QUIT\r\nRSET\r\n")
        self.assertEqual(self.p.lines, [b"QUIT"])


class LongLineTests(unittest.TestCase):
    """Stock Twisted's LineOnlyReceiver answers once per read, never clears its buffer and
    re-splits it on every read (quadratic CPU, unbounded memory); ours answers once, in
    linear time and constant memory."""

    def setUp(self) -> None:
        self.p = Recorder()
        self.transport = connect(self.p)
        self.max = self.p.MAX_LENGTH

    def test_max_length_default(self) -> None:
        """The default line limit is 16384 bytes."""
        self.assertEqual(StrictLineReceiver.MAX_LENGTH, 16384)

    def test_exactly_max_length_is_a_line(self) -> None:
        """A line of exactly the limit is a line, not too long."""
        line = b"x" * self.max
        self.p.dataReceived(line + b"\r\n")
        self.assertEqual((self.p.lines, self.p.too_long), ([line], []))

    def test_exactly_max_length_cr_at_end_of_read(self) -> None:
        """Regression: a line of exactly MAX_LENGTH whose CR ends one read and LF starts the
        next was reported as too long (the pending CR was counted as line content)."""
        line = b"y" * self.max
        self.p.dataReceived(line + b"\r")
        self.p.dataReceived(b"\nNEXT\r\n")
        self.assertEqual((self.p.lines, self.p.too_long), ([line, b"NEXT"], []))

    def test_one_over_max_length(self) -> None:
        """A line one byte over the limit is reported once (its first MAX_LENGTH bytes) and the
        next line arrives."""
        line = b"z" * (self.max + 1)
        self.p.dataReceived(line + b"\r\nNEXT\r\n")
        self.assertEqual(self.p.too_long, [line[: self.max]])
        self.assertEqual(self.p.lines, [b"NEXT"])

    def test_long_line_then_commands_same_read(self) -> None:
        """Unlike Twisted, commands after a long line in the same read are still read
        (stock Twisted dropped the rest of that read: a QUIT in it got no answer)."""
        self.p.dataReceived(b"a" * 100_000 + b"\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(self.p.too_long, [b"a" * self.max])
        self.assertEqual(self.p.lines, [b"NOOP", b"QUIT"])

    def test_long_line_over_many_reads_reported_once(self) -> None:
        """A long line is reported once, its tail discarded, and framing resumes after its
        CRLF."""
        self.p.dataReceived(b"OK\r\n" + b"b" * 10_000)
        for _ in range(10):
            self.p.dataReceived(b"b" * 8192)
        self.p.dataReceived(b"tail of the long line\r")
        self.p.dataReceived(b"\nRSET\r\n")
        self.assertEqual(self.p.too_long, [b"b" * self.max])
        self.assertEqual(self.p.lines, [b"OK", b"RSET"])

    def test_crlf_split_while_discarding(self) -> None:
        """While an over-long line is discarded, a CRLF split across reads still ends it."""
        self.p.dataReceived(b"c" * (self.max + 10))
        self.p.dataReceived(b"c\r")
        self.p.dataReceived(b"\nAFTER\r\n")
        self.assertEqual(self.p.lines, [b"AFTER"])
        self.assertEqual(len(self.p.too_long), 1)

    def test_two_long_lines_two_reports(self) -> None:
        """Two over-long lines give two reports, and the line after them arrives."""
        self.p.dataReceived(b"d" * 20_000 + b"\r\n" + b"e" * 20_000 + b"\r\nX\r\n")
        self.assertEqual(self.p.too_long, [b"d" * self.max, b"e" * self.max])
        self.assertEqual(self.p.lines, [b"X"])

    def test_flood_bounded_memory_linear_time(self) -> None:
        """10 MiB without a CRLF: one report, and the buffer never holds more than one byte
        after the line got too long, so each read costs only its own length (linear time,
        constant memory; Twisted kept all 10 MiB and re-split it on every read)."""
        chunk = b"f" * 65536
        largest = 0
        for _ in range(10 * MiB // len(chunk)):
            self.p.dataReceived(chunk)
            largest = max(largest, len(self.p._buffer))
        self.assertLessEqual(largest, 1)
        self.assertEqual(self.p.too_long, [b"f" * self.max])
        self.p.dataReceived(b"\r\nQUIT\r\n")
        self.assertEqual(self.p.lines, [b"QUIT"])

    def test_flood_small_reads_bounded(self) -> None:
        """Before the line is too long, the buffer never exceeds MAX_LENGTH + 1 bytes."""
        largest = 0
        for _ in range(3 * self.max // 1000):
            self.p.dataReceived(b"g" * 1000)
            largest = max(largest, len(self.p._buffer))
        self.assertLessEqual(largest, self.max + 1)
        self.assertEqual(len(self.p.too_long), 1)

    def test_cr_flood_bounded(self) -> None:
        """A flood of bare CRs (each could begin a CRLF) is bounded too."""
        for _ in range(64):
            self.p.dataReceived(b"\r" * 65536)
            self.assertLessEqual(len(self.p._buffer), self.max + 1)
        self.p.dataReceived(b"\nX\r\n")
        self.assertEqual(self.p.lines, [b"X"])
        self.assertEqual(len(self.p.too_long), 1)

    def test_default_closes(self) -> None:
        """Without a handler, an over-long line closes the connection and nothing after it is
        read."""
        p = DefaultRecorder()
        transport = connect(p)
        p.dataReceived(b"h" * (p.MAX_LENGTH + 1) + b"\r\nNOOP\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(p.lines, [])


class DiscardTests(unittest.TestCase):
    """STARTTLS command injection (RFC 3207 §4.2, RFC 2595 §4): stock Twisted ran lines sent
    in the same packet as STARTTLS and answered them inside TLS."""

    def setUp(self) -> None:
        self.p = Recorder()
        self.transport = connect(self.p)
        self.p.on_line[b"STARTTLS"] = self.p.discard_pending_input

    def test_pipelined_after_starttls_dropped(self) -> None:
        """Lines that arrived in the STARTTLS packet never run, even after the handshake."""
        self.p.dataReceived(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<x@y>\r\n")
        self.assertEqual(self.p.lines, [b"STARTTLS"])
        self.assertEqual(self.p._buffer, b"")
        self.p.dataReceived(b"EHLO client\r\n")  # first bytes after the TLS handshake
        self.assertEqual(self.p.lines, [b"STARTTLS", b"EHLO client"])

    def test_partial_line_after_starttls_dropped(self) -> None:
        """RFC 3207 §4.2: bytes after the STARTTLS line in the same read are discarded, not
        joined to the next line."""
        self.p.dataReceived(b"STARTTLS\r\nMAIL FROM:<inj")
        self.p.dataReceived(b"EHLO client\r\n")
        self.assertEqual(self.p.lines, [b"STARTTLS", b"EHLO client"])

    def test_long_line_after_starttls_dropped(self) -> None:
        """A long tail after STARTTLS is discarded without a too-long report."""
        self.p.dataReceived(b"STARTTLS\r\n" + b"x" * 50_000)
        self.assertEqual(self.p.too_long, [])
        self.p.dataReceived(b"EHLO client\r\n")
        self.assertEqual(self.p.lines, [b"STARTTLS", b"EHLO client"])

    def test_discard_while_paused(self) -> None:
        """A STARTTLS answered later (its Deferred) drops what was held meanwhile."""
        pending: list[Deferred[None]] = []

        def starttls() -> None:
            self.p.pause_lines()
            d: Deferred[None] = Deferred()
            d.addCallback(lambda _: self.p.discard_pending_input())
            d.addCallback(lambda _: self.p.resume_lines())
            pending.append(d)

        self.p.on_line[b"STARTTLS"] = starttls
        self.p.dataReceived(b"STARTTLS\r\nNOOP\r\n")
        self.p.dataReceived(b"RSET\r\n")
        pending[0].callback(None)
        self.assertEqual(self.p.lines, [b"STARTTLS"])
        self.p.dataReceived(b"EHLO client\r\n")
        self.assertEqual(self.p.lines, [b"STARTTLS", b"EHLO client"])


class PipeliningTests(unittest.TestCase):
    """RFC 2920 §3 / RFC 2449 §6.6: replies in command order while a command's Deferred runs."""

    def setUp(self) -> None:
        self.p = Recorder()
        self.transport = connect(self.p)
        self.pending: list[Deferred[None]] = []

    def slow(self) -> None:
        """A command whose result comes later: hold lines until it is done."""
        self.p.pause_lines()
        d: Deferred[None] = Deferred()
        d.addCallback(lambda _: self.p.resume_lines())
        self.pending.append(d)

    def fast(self) -> None:
        """A command whose Deferred fired at once: pause and resume inside lineReceived."""
        self.p.pause_lines()
        self.p.resume_lines()

    def test_held_until_resumed(self) -> None:
        """While a slow command runs the transport is paused and later lines, even ones arriving
        then, wait until it finishes."""
        self.p.on_line[b"SLOW"] = self.slow
        self.p.dataReceived(b"SLOW\r\nB\r\nC\r\n")
        self.assertEqual(self.p.lines, [b"SLOW"])
        self.assertEqual(self.transport.producerState, "paused")
        self.p.dataReceived(b"D\r\n")  # arrives while paused: held too
        self.assertEqual(self.p.lines, [b"SLOW"])
        self.pending.pop().callback(None)
        self.assertEqual(self.p.lines, [b"SLOW", b"B", b"C", b"D"])
        self.assertEqual(self.transport.producerState, "producing")

    def test_slow_commands_in_a_row(self) -> None:
        """Slow commands in a row are run one at a time, in order."""
        self.p.on_line[b"SLOW"] = self.slow
        self.p.dataReceived(b"SLOW\r\nSLOW\r\nSLOW\r\nEND\r\n")
        for n in (1, 2, 3):
            self.assertEqual(self.p.lines, [b"SLOW"] * n)
            self.pending.pop().callback(None)
        self.assertEqual(self.p.lines, [b"SLOW"] * 3 + [b"END"])

    def test_resume_inside_line_received(self) -> None:
        """Regression: a command resumed synchronously while held lines were being processed
        re-entered dataReceived with the stale buffer and ran the same line again, forever
        (RecursionError)."""
        self.p.on_line[b"SLOW"] = self.slow
        self.p.on_line[b"FAST"] = self.fast
        self.p.dataReceived(b"SLOW\r\nFAST\r\nFAST\r\nLAST\r\n")
        self.pending.pop().callback(None)
        self.assertEqual(self.p.lines, [b"SLOW", b"FAST", b"FAST", b"LAST"])
        self.assertEqual(self.transport.producerState, "producing")

    def test_fast_commands_first_read(self) -> None:
        """Commands that finish at once are all run in the same read."""
        self.p.on_line[b"FAST"] = self.fast
        self.p.dataReceived(b"FAST\r\nFAST\r\nX\r\n")
        self.assertEqual(self.p.lines, [b"FAST", b"FAST", b"X"])

    def test_reentrant_data_kept_in_order(self) -> None:
        """Bytes delivered while a line is being handled come after the lines already read."""
        self.p.on_line[b"A"] = lambda: self.p.dataReceived(b"C\r\n")
        self.p.dataReceived(b"A\r\nB\r\n")
        self.assertEqual(self.p.lines, [b"A", b"B", b"C"])

    def test_reentrant_data_then_pause(self) -> None:
        """Data fed in from inside a line handler that then pauses is held and run in order after
        the resume."""

        def both() -> None:
            self.p.dataReceived(b"C\r\n")
            self.slow()

        self.p.on_line[b"A"] = both
        self.p.dataReceived(b"A\r\nB\r\n")
        self.assertEqual(self.p.lines, [b"A"])
        self.pending.pop().callback(None)
        self.assertEqual(self.p.lines, [b"A", b"B", b"C"])

    def test_no_resume_producing_after_disconnect(self) -> None:
        """After the connection is lost, finishing a slow command runs no held line and does not
        resume the transport."""
        self.p.on_line[b"SLOW"] = self.slow
        self.p.dataReceived(b"SLOW\r\nNEXT\r\n")
        self.transport.loseConnection()
        self.pending.pop().callback(None)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.p.lines, [b"SLOW"])


class BareLFLineEndTests(unittest.TestCase):
    """C{lf_ends_lines} (SMTP DATA with bare_lf = "normalize"): a bare LF ends a line too,
    and the receiver learns how each line and the one before it ended."""

    def setUp(self) -> None:
        self.p = EndingRecorder()
        self.p.lf_ends_lines = True
        self.transport = connect(self.p)

    def test_endings(self) -> None:
        """lf_ends_lines: a bare LF ends a line too, and each line learns whether it and the line
        before ended with a bare LF."""
        self.p.dataReceived(b"a\r\nb\nc\n\r\nd\r\n\n.\r\n")
        self.assertEqual(
            self.p.endings,
            [
                (b"a", False, False),
                (b"b", True, False),
                (b"c", True, True),
                (b"", False, True),
                (b"d", False, False),
                (b"", True, False),
                (b".", False, True),
            ],
        )

    def test_crlf_split_across_reads(self) -> None:
        """lf_ends_lines: a CRLF split across reads is one CRLF, not a bare LF."""
        for chunk in (b"a\r", b"\nb", b"\n", b"\r", b"\n"):
            self.p.dataReceived(chunk)
        self.assertEqual(
            self.p.endings, [(b"a", False, False), (b"b", True, False), (b"", False, True)]
        )

    def test_bare_cr_is_kept(self) -> None:
        """lf_ends_lines: a bare CR is kept in the line."""
        self.p.dataReceived(b"a\rb\n")
        self.assertEqual(self.p.endings, [(b"a\rb", True, False)])

    def test_long_line_ending_is_recorded(self) -> None:
        """An over-long line discarded up to a bare LF still counts as ended by a bare LF, so
        a "." right after it is not the end of the data."""
        self.p.dataReceived(b"x" * (self.p.MAX_LENGTH + 10))
        self.p.dataReceived(b"yy\n.\r\n")
        self.assertEqual(self.p.too_long, [b"x" * self.p.MAX_LENGTH])
        self.assertEqual(self.p.endings, [(b".", False, True)])

    def test_switching_mode_mid_buffer(self) -> None:
        """The mode is read per line: lines after the switch in the same read follow it."""
        self.p.lf_ends_lines = False
        self.p.on_line[b"DATA"] = lambda: setattr(self.p, "lf_ends_lines", True)
        self.p.dataReceived(b"x\ny\r\nDATA\r\nb\nc\r\n")
        self.assertEqual([line for line, _, _ in self.p.endings], [b"x\ny", b"DATA", b"b", b"c"])


class EndingRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.endings: list[tuple[bytes, bool, bool]] = []

    def lineReceived(self, line: bytes) -> None:
        self.endings.append((line, self.line_ended_bare, self.previous_line_ended_bare))
        super().lineReceived(line)


class _Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ReleaseTLSBuffersTests(unittest.TestCase):
    """L{release_tls_buffers}: fresh memory BIOs on an idle TLS connection (issue 10)."""

    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        create_self_signed(base / "cert.pem", base / "key.pem", "mail.example.test")
        server_tls = server_context(base / "cert.pem", base / "key.pem")
        self.server, self.client = _Collect(), _Collect()
        self.clock = Clock()  # the TLS layer's small-write aggregation
        server_factory = TLSMemoryBIOFactory(
            server_tls, False, Factory.forProtocol(lambda: self.server), self.clock
        )
        client_factory = TLSMemoryBIOFactory(
            CertificateOptions(verify=False),
            True,
            Factory.forProtocol(lambda: self.client),
            self.clock,
        )
        _, _, self.pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None),
            lambda: client_factory.buildProtocol(None),
            greet=False,
        )
        self.client.transport.write(b"hello")
        self.flush()

    def flush(self) -> None:
        for _ in range(3):
            self.clock.advance(0)
            self.pump.flush()

    def bios(self) -> tuple[object, object]:
        connection = self.server.transport._tlsConnection
        return connection._into_ssl, connection._from_ssl

    def test_idle_connection_gets_new_bios_and_keeps_working(self) -> None:
        """After the handshake, with both BIOs empty, they are replaced and data still flows
        both ways over the same TLS session."""
        self.assertEqual(self.server.received, b"hello")
        before = self.bios()
        release_tls_buffers(self.server.transport)
        after = self.bios()
        self.assertNotEqual(before[0], after[0])
        self.assertNotEqual(before[1], after[1])
        self.server.transport.write(b"from server")
        self.client.transport.write(b" again")
        self.flush()
        self.assertEqual(self.client.received, b"from server")
        self.assertEqual(self.server.received, b"hello again")

    def test_bytes_waiting_in_a_bio_keep_it(self) -> None:
        """Encrypted bytes not yet read out of the BIO: nothing is replaced."""
        connection = self.server.transport._tlsConnection
        connection.send(b"pending")  # encrypted into the outgoing BIO, not read out
        before = self.bios()
        release_tls_buffers(self.server.transport)
        self.assertEqual(self.bios(), before)

    def test_plain_transport_is_left_alone(self) -> None:
        """Without TLS below, the call does nothing."""
        release_tls_buffers(StringTransport())


@contextmanager
def tcp_connection() -> Iterator[socket.socket]:
    """The server end of a real, idle loopback TCP connection, in delayed-ACK mode
    (C{TCP_QUICKACK} cleared: what a server that just answered is in)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
    try:
        yield server
    finally:
        for s in (server, client, listener):
            s.close()


def quickack(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


def on_socket(sock: socket.socket) -> StringTransport:
    """A transport whose TCP socket is C{sock} (as Twisted's C{tcp.Server} holds it)."""
    transport = StringTransport()
    transport.socket = sock  # type: ignore[attr-defined]
    return transport


class _Layer:
    """A TLS layer or ProtocolWrapper: what lies below is its C{transport}."""

    def __init__(self, transport: object) -> None:
        self.transport = transport


@skipIf(not hasattr(socket, "TCP_QUICKACK"), "TCP_QUICKACK is Linux's")
class AckNowTests(unittest.TestCase):
    def test_ack_now_finds_the_socket_below_the_layers(self) -> None:
        """RFC 1122 §4.2.3.2: ack_now sets TCP_QUICKACK on the TCP socket under TLS and
        wrapper layers, which sends the delayed ACK at once."""
        with tcp_connection() as sock:
            self.assertEqual(quickack(sock), 0)
            ack_now(_Layer(_Layer(on_socket(sock))))
            self.assertEqual(quickack(sock), 1)

    def test_ack_now_without_a_socket_does_nothing(self) -> None:
        """A transport with no TCP socket (a test transport, a UNIX socket) is left alone."""
        ack_now(_Layer(StringTransport()))
        ack_now(None)

    def test_a_line_in_part_is_acknowledged_at_once(self) -> None:
        """A line without its CRLF yet: ACK now, so that a client's Nagle does not hold the
        rest of it for the 40 ms of our delayed ACK."""
        with tcp_connection() as sock:
            r = Recorder()
            r.makeConnection(on_socket(sock))
            r.dataReceived(b"NOOP\r\n")
            self.assertEqual(quickack(sock), 0)  # whole lines: the reply carries the ACK
            r.dataReceived(b"MAIL FROM:<a@exa")
            self.assertEqual(quickack(sock), 1)
            self.assertEqual(r.lines, [b"NOOP"])


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        self.factory.received.callback(self.transport)  # type: ignore[attr-defined]

    def connectionLost(self, reason: object = None) -> None:
        self.factory.lost.callback(None)  # type: ignore[attr-defined]


class SlottedServerTests(unittest.TestCase):
    async def test_accepted_connection_keeps_its_attributes_in_slots(self) -> None:
        """A listener given use_slotted_connections accepts SlottedServers: a connection that
        read and wrote keeps no instance dict (issue 10), writes and closes as before, and
        ack_now finds its socket (RFC 1122 §4.2.3.2)."""
        from twisted.internet import reactor

        factory = Factory.forProtocol(_Echo)
        factory.received = Deferred()  # type: ignore[attr-defined]
        factory.lost = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        use_slotted_connections(port)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.sendall(b"hello\r\n")
        transport = await factory.received  # type: ignore[attr-defined]
        self.assertIsInstance(transport, SlottedServer)
        if hasattr(socket, "TCP_QUICKACK"):
            transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            ack_now(_Layer(transport))
            self.assertEqual(quickack(transport.socket), 1)
        transport.loseConnection()  # after the echo is written
        await factory.lost  # type: ignore[attr-defined]
        self.assertEqual(vars(transport), {})
        client.settimeout(5)
        self.assertEqual(client.recv(100), b"hello\r\n")
        self.assertEqual(client.recv(100), b"")

    async def test_closed_connection_pauses_and_stops_as_twisteds(self) -> None:
        """After the peer closed a SlottedServer, pausing it, stopping its reading and writing
        and fileno() do what they do on tcp.Server (nothing; -1): Twisted's connectionLost
        deletes the fileno slot, which hid FileDescriptor.fileno."""
        from twisted.internet import reactor

        factory = Factory.forProtocol(_Echo)
        factory.received = Deferred()  # type: ignore[attr-defined]
        factory.lost = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        use_slotted_connections(port)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(b"hello\r\n")
        transport = await factory.received  # type: ignore[attr-defined]
        self.assertIsInstance(transport, SlottedServer)
        client.close()
        await factory.lost  # type: ignore[attr-defined]
        self.assertEqual(transport.fileno(), -1)
        transport.pauseProducing()
        transport.stopReading()
        transport.stopWriting()
        transport.resumeProducing()
        self.assertEqual(vars(transport), {})

    async def test_ack_now_after_the_close_does_nothing(self) -> None:
        """ack_now on a TCP connection the peer closed (lines held until a command ended,
        then a partial one left) does nothing: Twisted's connectionLost deleted its socket
        (RFC 1122 §4.2.3.2: only an open connection has an ACK to send)."""
        from twisted.internet import reactor

        factory = Factory.forProtocol(_Echo)
        factory.received = Deferred()  # type: ignore[attr-defined]
        factory.lost = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        use_slotted_connections(port)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(b"hello\r\n")
        transport = await factory.received  # type: ignore[attr-defined]
        client.close()
        await factory.lost  # type: ignore[attr-defined]
        ack_now(transport)
        ack_now(_Layer(transport))


class _Share:
    """An L{twistedmail.wire.AcceptShare} whose answer the test sets."""

    def __init__(self) -> None:
        self.open = 0
        self.over = False
        self.seen: list[int] = []

    def changed(self) -> None:
        self.seen.append(self.open)

    def over_share(self) -> bool:
        return self.over


class _Kept(Protocol):
    def connectionMade(self) -> None:
        self.factory.made.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: object = None) -> None:
        self.factory.made.remove(self)  # type: ignore[attr-defined]
        if not self.factory.made:  # type: ignore[attr-defined]
            self.factory.all_lost.callback(None)  # type: ignore[attr-defined]


class BalanceAcceptsTests(unittest.TestCase):
    """balance_accepts: a port shared by several processes takes its share (issue 10)."""

    def listen(self, share: _Share, clock: Clock) -> tuple[object, list[Protocol]]:
        from twisted.internet import reactor

        factory = Factory.forProtocol(_Kept)
        factory.made = []  # type: ignore[attr-defined]
        self.all_lost = factory.all_lost = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        use_slotted_connections(port)
        balance_accepts(port, share, clock)
        return port, factory.made  # type: ignore[attr-defined]

    def connect(self, port: object) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))  # type: ignore[attr-defined]
        self.addCleanup(client.close)
        return client

    async def test_one_accept_a_wakeup_counted_until_the_connection_ends(self) -> None:
        """Under its share, each wakeup accepts one of the waiting connections (not
        Twisted's burst), counted in share.open from the accept to the end of the TCP
        connection; the connections stay slotted (no instance dict)."""
        share, clock = _Share(), Clock()
        port, made = self.listen(share, clock)
        clients = [self.connect(port) for _ in range(3)]
        port.doRead()  # type: ignore[attr-defined]
        self.assertEqual(len(made), 1)
        port.doRead()  # type: ignore[attr-defined]
        port.doRead()  # type: ignore[attr-defined]
        self.assertEqual(len(made), 3)
        self.assertEqual((share.open, share.seen), (3, [1, 2, 3]))
        transport = made[0].transport
        self.assertIsInstance(transport, SlottedServer)
        self.assertEqual(vars(transport), {})
        for client in clients:
            client.close()
        await self.all_lost
        self.assertEqual((share.open, share.seen[-3:]), (0, [2, 1, 0]))

    def test_over_its_share_it_leaves_a_connection_then_takes_it(self) -> None:
        """Over its share, a wakeup accepts nothing and stops reading the socket; still
        over it after ACCEPT_PAUSE seconds, it reads again and takes a connection still
        waiting."""
        from twisted.internet import reactor

        share, clock = _Share(), Clock()
        port, made = self.listen(share, clock)
        self.connect(port)
        share.over = True
        port.doRead()  # type: ignore[attr-defined]
        self.assertEqual(made, [])
        self.assertNotIn(port, reactor.getReaders())  # type: ignore[attr-defined]
        clock.pump([ACCEPT_TICK] * (round(ACCEPT_PAUSE / ACCEPT_TICK) - 1))
        self.assertEqual(made, [])
        clock.advance(ACCEPT_TICK)
        self.assertEqual(len(made), 1)
        self.assertIn(port, reactor.getReaders())  # type: ignore[attr-defined]
        self.assertEqual(clock.getDelayedCalls(), [])
        made[0].transport.abortConnection()  # type: ignore[union-attr]

    def test_back_within_its_share_it_takes_the_connection_at_the_next_look(self) -> None:
        """A port leaving connections to the others looks at its share every ACCEPT_TICK
        seconds: once within it, it reads again and takes a connection still waiting."""
        share, clock = _Share(), Clock()
        port, made = self.listen(share, clock)
        self.connect(port)
        share.over = True
        port.doRead()  # type: ignore[attr-defined]
        clock.advance(ACCEPT_TICK)
        self.assertEqual(made, [])
        share.over = False
        clock.advance(ACCEPT_TICK)
        self.assertEqual(len(made), 1)
        self.assertEqual(clock.getDelayedCalls(), [])
        made[0].transport.abortConnection()  # type: ignore[union-attr]


class _Hold(Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self.transport)  # type: ignore[attr-defined]


class WriteAtOnceTests(unittest.TestCase):
    async def connection(self) -> tuple[Any, socket.socket]:
        """The server end (Twisted's accepted connection, a SlottedServer) and the client
        socket of a real loopback connection."""
        from twisted.internet import reactor

        factory = Factory.forProtocol(_Hold)
        factory.made = Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        use_slotted_connections(port)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        client.settimeout(5)
        server = await factory.made  # type: ignore[attr-defined]
        self.addCleanup(server.abortConnection)
        return server, client

    async def test_sent_before_the_reactor_turns(self) -> None:
        """Nothing queued: the bytes are on the socket when write_at_once returns (no reactor
        turn in between: the client reads them while the reactor waits here)."""
        server, client = await self.connection()
        self.assertTrue(write_at_once(server, b"250 2.0.0 Ok\r\n"))
        self.assertEqual(client.recv(100), b"250 2.0.0 Ok\r\n")
        self.assertEqual((server.dataBuffer, server._tempDataBuffer), (b"", []))

    async def test_queued_bytes_keep_their_order(self) -> None:
        """Bytes queued by Twisted's write go first: write_at_once declines, and the caller's
        write queues its bytes behind them."""
        server, client = await self.connection()
        server.write(b"one\r\n")
        self.assertFalse(write_at_once(server, b"two\r\n"))
        server.write(b"two\r\n")
        received = b""
        while len(received) < 10:
            received += await deferToThread(client.recv, 100)
        self.assertEqual(received, b"one\r\ntwo\r\n")

    async def test_what_must_go_first_is_written_first(self) -> None:
        """BEFORE_WRITE (the log lines of this turn) runs before the bytes are sent."""
        server, client = await self.connection()
        seen: list[bytes | None] = []

        def before() -> None:  # what the client has received by then: nothing yet
            client.settimeout(0)
            try:
                seen.append(client.recv(100))
            except BlockingIOError:
                seen.append(None)
            client.settimeout(5)

        self.patch(wire, "BEFORE_WRITE", [before])
        self.assertTrue(write_at_once(server, b"x"))
        self.assertEqual(seen, [None])
        self.assertEqual(client.recv(100), b"x")

    async def test_declines_while_closing(self) -> None:
        """A connection closing leaves the bytes to Twisted's write path."""
        server, client = await self.connection()
        server.loseConnection()
        self.assertFalse(write_at_once(server, b"x"))

    def test_plain_tcp_only_through_pass_through_wrappers(self) -> None:
        """plain_tcp finds the TCP connection below wrappers that pass writes through, and
        nothing below TLS or a wrapper with a write of its own."""
        from twisted.internet import tcp
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

        connection = tcp.Connection.__new__(tcp.Connection)
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.transport = connection
        self.assertIs(plain_tcp(connection), connection)
        self.assertIs(plain_tcp(wrapper), connection)

        class Counting(ProtocolWrapper):
            def write(self, data: bytes) -> None:
                super().write(data)

        counting = Counting(WrappingFactory(Factory()), Protocol())
        counting.transport = connection
        self.assertIsNone(plain_tcp(counting))
        tls = TLSMemoryBIOFactory(
            CertificateOptions(), False, Factory.forProtocol(Protocol)
        ).buildProtocol(None)
        tls.transport = connection
        self.assertIsNone(plain_tcp(tls))
        self.assertIsNone(plain_tcp(StringTransport()))
