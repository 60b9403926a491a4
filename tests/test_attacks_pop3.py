"""Byte-level regression tests for the POP3 defects of stock Twisted 26.10 (reproduced).

Each test sends the hostile bytes that broke C{twisted.mail.pop3.POP3} and asserts the exact
safe answer: STLS command injection, dot-stuffing lost at the 16 KiB FileSender chunk
boundary, C{DELE 0} deleting the last message, deletion before QUIT, malformed AUTH/USER
dropping the connection, the APOP banner, and the joke CAPA entries.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import pop3 as tpop3
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail.auth import MailRealm
from twistedmail.maildir import make_maildir, write_durably
from twistedmail.pop3 import MaildirPOP3Mailbox, POP3Server
from twistedmail.testing import TLSStringTransport, pump, run_now

USER = b"alice@example.test"
PASSWORD = b"secret"
CHUNK = FileSender.CHUNK_SIZE  # 16384: where stock Twisted lost the stuffing
INJECTED = b".\r\n+OK fake response injected by message content\r\n"


def stuffed(message: bytes) -> bytes:
    """The reference RFC 1939 §3 body of a CRLF message: each leading "." doubled."""
    return re.sub(rb"(?m)^\.", b"..", message)


def client_read(output: bytes) -> tuple[bytes, list[bytes], bytes]:
    """Read one multi-line response as a lenient client (poplib: lines split on LF) does:
    (status line, unstuffed lines, everything after the terminator)."""
    status, _, rest = output.partition(b"\n")
    lines = []
    while True:
        line, sep, rest = rest.partition(b"\n")
        if not sep:
            raise AssertionError("no terminator")
        line = line.removesuffix(b"\r")
        if line == b".":
            return status.removesuffix(b"\r"), lines, rest
        lines.append(line[1:] if line.startswith(b"..") else line)


class AttackTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.root = Path(self.mktemp()) / "example.test" / "alice"
        make_maildir(self.root)
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(USER, PASSWORD)
        self.portal = Portal(
            MailRealm({tpop3.IMailbox: lambda _: MaildirPOP3Mailbox(self.root, run_now)}),
            [checker],
        )

    def deliver(self, *messages: bytes) -> None:
        import os

        for n, message in enumerate(messages):
            base = write_durably(self.root / "new", message)
            os.utime(self.root / "new" / base, (1_000_000 + n, 1_000_000 + n))

    def connect(self, implicit_tls: bool = True) -> tuple[POP3Server, TLSStringTransport]:
        proto = POP3Server(
            portal=self.portal, tls=object(), implicit_tls=implicit_tls, clock=self.clock
        )
        transport = TLSStringTransport()
        proto.makeConnection(transport)
        self.addCleanup(lambda: proto._lost or proto.connectionLost(Failure(ConnectionError())))
        return proto, transport

    def send(self, proto: POP3Server, transport: StringTransport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        pump(transport)
        return transport.value()

    def login(self) -> tuple[POP3Server, TLSStringTransport]:
        proto, transport = self.connect()
        out = self.send(proto, transport, b"USER %s\r\nPASS %s\r\n" % (USER, PASSWORD))
        self.assertEqual(out, b"+OK send PASS\r\n+OK Logged in\r\n")
        return proto, transport

    def files(self) -> list[Path]:
        return sorted(p for sub in ("new", "cur") for p in (self.root / sub).iterdir())


class STLSInjectionTests(AttackTestCase):
    """Lines pipelined after STLS in the same packet must never run (RFC 2595 §4)."""

    def test_commands_after_stls_are_dropped(self) -> None:
        """RFC 2595 §4 (CVE-2011-0411 class): USER, PASS and CAPA pipelined after STLS are
        dropped, so no injected USER survives the handshake."""
        proto, transport = self.connect(implicit_tls=False)
        out = self.send(
            proto, transport, b"STLS\r\nUSER %s\r\nPASS %s\r\nCAPA\r\n" % (USER, PASSWORD)
        )
        self.assertEqual(out, b"+OK Begin TLS negotiation\r\n")
        self.assertIsNotNone(transport.tls_context)
        self.assertEqual(proto.pop3_state, "AUTHORIZATION")
        # The injected USER left no trace: PASS after the handshake has no user to go with.
        self.assertEqual(
            self.send(proto, transport, b"PASS %s\r\n" % PASSWORD), b"-ERR send USER first\r\n"
        )

    def test_partial_line_after_stls_is_dropped(self) -> None:
        """A partial line after STLS does not prefix the first line received over TLS."""
        proto, transport = self.connect(implicit_tls=False)
        self.assertEqual(
            self.send(proto, transport, b"STLS\r\nQU"), b"+OK Begin TLS negotiation\r\n"
        )
        # "QU" must not prefix the first line received over TLS.
        self.assertEqual(self.send(proto, transport, b"IT\r\n"), b"-ERR unknown command\r\n")
        self.assertFalse(transport.disconnecting)

    def test_user_stored_before_stls_is_forgotten(self) -> None:
        """A USER given before STLS is forgotten after it: PASS then needs a new USER."""
        proto, transport = self.connect(implicit_tls=False)
        proto.allow_plaintext_auth = True
        self.send(proto, transport, b"USER %s\r\n" % USER)
        proto.allow_plaintext_auth = False
        self.send(proto, transport, b"STLS\r\n")
        self.assertEqual(
            self.send(proto, transport, b"PASS %s\r\n" % PASSWORD), b"-ERR send USER first\r\n"
        )

    def test_no_password_before_tls(self) -> None:
        """AUTH PLAIN, USER and PASS before TLS are each -ERR TLS required and nobody logs in."""
        proto, transport = self.connect(implicit_tls=False)
        plain = base64.b64encode(b"\0" + USER + b"\0" + PASSWORD)
        self.assertEqual(
            self.send(
                proto,
                transport,
                b"AUTH PLAIN " + plain + b"\r\nUSER %s\r\nPASS %s\r\n" % (USER, PASSWORD),
            ),
            b"-ERR TLS required\r\n" * 3,
        )
        self.assertEqual(proto.pop3_state, "AUTHORIZATION")


class ChunkBoundaryDotStuffingTests(AttackTestCase):
    """A "." line anywhere, especially at and around byte 16384, is stuffed (RFC 1939 §3)."""

    def message_with_dot_line_at(self, offset: int, eol: bytes = b"\r\n") -> bytes:
        header = b"Subject: t" + eol + eol
        filler = b"y" * (offset - len(header) - len(eol)) + eol
        message = header + filler + INJECTED.replace(b"\r\n", eol) + b"..." + eol + b"end" + eol
        self.assertEqual(message[offset : offset + 1], b".")
        return message

    def check_retr(self, message: bytes) -> None:
        self.deliver(message)
        proto, transport = self.login()
        out = self.send(proto, transport, b"RETR 1\r\nNOOP\r\n")
        normalized = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.assertEqual(
            out,
            # the size is that of the CRLF form sent (RFC 1939 §5), also for a bare-LF file
            b"+OK %d octets\r\n" % len(normalized) + stuffed(normalized) + b".\r\n+OK\r\n",
        )
        status, lines, rest = client_read(out)
        self.assertEqual(status, b"+OK %d octets" % len(normalized))
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", normalized)
        self.assertEqual(rest, b"+OK\r\n")  # the message never became a server reply

    def test_notes_reproduction_dot_line_at_16384(self) -> None:
        """RFC 1939 §3: the "." line at byte 16384, where stock Twisted's RETR sent it
        unstuffed and message text became the next server reply, is stuffed."""
        message = self.message_with_dot_line_at(CHUNK)
        self.check_retr(message)

    def test_dot_lines_around_the_first_boundary(self) -> None:
        """RFC 1939 §3: RETR stuffs a '.' line at every offset around FileSender's first 16 KiB
        chunk boundary."""
        for offset in range(CHUNK - 3, CHUNK + 4):
            with self.subTest(offset=offset):
                self.setUp()
                self.check_retr(self.message_with_dot_line_at(offset))

    def test_dot_line_at_later_boundaries(self) -> None:
        """RFC 1939 §3: RETR stuffs a '.' line at the second and third chunk boundaries."""
        for offset in (2 * CHUNK, 2 * CHUNK + 1, 3 * CHUNK - 1):
            with self.subTest(offset=offset):
                self.setUp()
                self.check_retr(self.message_with_dot_line_at(offset))

    def test_crlf_split_across_boundary(self) -> None:
        # CR is the last byte of the first chunk, LF the first of the next, "." right after.
        """RFC 1939 §3: a CRLF split by a chunk boundary still starts a line whose '.' is
        stuffed."""
        message = self.message_with_dot_line_at(CHUNK + 1)
        self.assertEqual(message[CHUNK - 1 : CHUNK + 2], b"\r\n.")
        self.check_retr(message)

    def test_bare_lf_dot_line_at_boundary(self) -> None:
        # A lenient client splits on LF: "\n.\n" must not reach it unstuffed.
        """RFC 1939 §3: a '.' line after a bare LF at a chunk boundary is stuffed."""
        self.check_retr(self.message_with_dot_line_at(CHUNK, eol=b"\n"))

    def test_top_at_boundary(self) -> None:
        """RFC 1939 §7: TOP over a chunk boundary is stuffed and the pipelined NOOP answered
        after it."""
        message = self.message_with_dot_line_at(CHUNK)
        self.deliver(message)
        proto, transport = self.login()
        out = self.send(proto, transport, b"TOP 1 3\r\nNOOP\r\n")
        header, _, body = message.partition(b"\r\n\r\n")
        first3 = b"".join(body.split(b"\r\n")[i] + b"\r\n" for i in range(3))
        self.assertEqual(
            out,
            b"+OK top of message follows\r\n"
            + stuffed(header + b"\r\n\r\n" + first3)
            + b".\r\n+OK\r\n",
        )

    def test_message_of_only_dots(self) -> None:
        """RFC 1939 §3: a message of nothing but '.' lines, longer than a chunk, is stuffed line
        by line."""
        message = b".\r\n" * (CHUNK // 3 + 5)
        self.check_retr(message)


class DeleteTests(AttackTestCase):
    """DELE 0 deleted the last message; deletion happened at DELE, not at QUIT."""

    def setUp(self) -> None:
        super().setUp()
        self.deliver(b"Subject: 1\r\n\r\none\r\n", b"Subject: 2\r\n\r\ntwo\r\n")

    def test_dele_zero_and_other_bad_numbers(self) -> None:
        """RFC 1939 §5: DELE, LIST, UIDL, RETR and TOP of 0, signed, non-decimal, out-of-range or
        non-ASCII numbers are -ERR no such message; QUIT removes nothing."""
        proto, transport = self.login()
        for arg in (
            b"0",
            b"-1",
            b"+1",
            b"1_0",
            b"0x1",
            b"1.0",
            b"3",
            b"99999999999999",
            b"\xd9\xa1",
        ):
            with self.subTest(arg=arg):
                self.assertEqual(
                    self.send(proto, transport, b"DELE " + arg + b"\r\n"),
                    b"-ERR no such message\r\n",
                )
        for command in (b"LIST 0", b"UIDL 0", b"RETR 0", b"TOP 0 1"):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"), b"-ERR no such message\r\n"
            )
        self.assertEqual(
            self.send(proto, transport, b"QUIT\r\n"), b"+OK twistedmail POP3 server signing off\r\n"
        )
        self.assertEqual(len(self.files()), 2)

    def test_deletion_only_at_quit(self) -> None:
        """RFC 1939 §6: DELE only marks; a connection lost without QUIT removes nothing and the
        next session sees both messages."""
        before = self.files()
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"DELE 2\r\n"), b"+OK message deleted\r\n")
        # Still on disk, only moved from new/ to cur/ by the login scan.
        self.assertEqual([p.name for p in self.files()], [p.name + ":2," for p in before])
        proto.connectionLost(Failure(ConnectionError("dropped")))  # no QUIT
        self.assertEqual(len(self.files()), 2)
        self.assertFalse((self.root / ".Trash").exists())
        proto2, transport2 = self.login()
        self.assertEqual(self.send(proto2, transport2, b"STAT\r\n"), b"+OK 2 38\r\n")

    def test_deleted_message_invisible_and_uidl_safe(self) -> None:
        """RFC 1939 §5: a DELEted message is left out of STAT, LIST and UIDL, and UIDL or RETR of
        it is -ERR, with no error logged."""
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1\r\n")
        out = self.send(proto, transport, b"STAT\r\nLIST\r\nUIDL\r\nUIDL 1\r\nRETR 1\r\n")
        self.assertTrue(out.startswith(b"+OK 1 %d\r\n" % len(b"Subject: 2\r\n\r\ntwo\r\n")))
        self.assertNotIn(b"\r\n1 ", out)
        self.assertTrue(out.endswith(b"-ERR no such message\r\n-ERR no such message\r\n"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_quit_removes_exactly_the_deleted(self) -> None:
        """RFC 1939 §6: QUIT removes exactly the DELEted message and keeps the other byte for
        byte."""
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 2\r\nQUIT\r\n")
        (remaining,) = self.files()
        self.assertEqual(remaining.read_bytes(), b"Subject: 1\r\n\r\none\r\n")


class MalformedInputTests(AttackTestCase):
    """Missing or extra arguments got a traceback-dropped connection from stock Twisted."""

    def assert_alive(self, proto: POP3Server, transport: TLSStringTransport) -> None:
        self.assertFalse(transport.disconnecting)
        self.assertTrue(self.send(proto, transport, b"CAPA\r\n").startswith(b"+OK Capability"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_bad_arity(self) -> None:
        """Commands with missing or extra arguments (USER, PASS, AUTH, STLS, CAPA, QUIT) are -ERR
        syntax error and the session lives."""
        proto, transport = self.connect()
        for line in (
            b"USER",
            b"USER a b",
            b"PASS",
            b"AUTH PLAIN a b",
            b"AUTH PLAIN AGFsaWNlAHg= extra",
            b"STLS now",
            b"CAPA all",
            b"QUIT now",
        ):
            with self.subTest(line=line):
                self.assertEqual(
                    self.send(proto, transport, line + b"\r\n"), b"-ERR syntax error\r\n"
                )
        self.assert_alive(proto, transport)

    def test_bad_sasl_responses(self) -> None:
        """RFC 5034 §4: empty, non-ASCII, bad base64 or NUL-only PLAIN responses are each -ERR
        and the session lives."""
        proto, transport = self.connect()
        for response in (b"", b"\xff\xfe", b"====", b"AA", base64.b64encode(b"\0\0\0\0")):
            with self.subTest(response=response):
                self.assertEqual(self.send(proto, transport, b"AUTH PLAIN\r\n"), b"+ \r\n")
                self.assertTrue(
                    self.send(proto, transport, response + b"\r\n").startswith(b"-ERR "),
                )
        self.assert_alive(proto, transport)

    def test_binary_garbage(self) -> None:
        """Binary garbage is -ERR unknown command; USER and PASS with binary bytes fail the
        login, and the session lives."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"\x00\xff\x80 \x01\r\nUSER \xff\xfe\r\nPASS \x00\r\n"),
            b"-ERR unknown command\r\n+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n",
        )
        self.assert_alive(proto, transport)

    def test_unterminated_huge_line(self) -> None:
        """1 MiB without a line end gets one -ERR line too long, and the next command is
        answered."""
        proto, transport = self.connect()
        transport.clear()
        for _ in range(64):  # 1 MiB without CRLF, in packets
            proto.dataReceived(b"x" * 16384)
        proto.dataReceived(b"\r\nNOOP\r\n")
        self.assertEqual(transport.value(), b"-ERR line too long\r\n-ERR not authenticated\r\n")
        self.assert_alive(proto, transport)


class BannerAndCapaTests(AttackTestCase):
    def test_no_apop_timestamp(self) -> None:
        """RFC 1939 §7: the greeting carries no APOP timestamp (<...@...>)."""
        _, transport = self.connect()
        greeting = transport.value()
        self.assertEqual(greeting, b"+OK twistedmail POP3 server ready\r\n")
        self.assertNotRegex(greeting, rb"<[^>]*@[^>]*>")

    def test_apop_refused(self) -> None:
        """APOP is -ERR APOP not supported."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n"),
            b"-ERR APOP not supported\r\n",
        )

    def test_no_joke_capabilities(self) -> None:
        """RFC 2449 §6: CAPA lists PIPELINING, RESP-CODES and AUTH-RESP-CODE (not Twisted's joke
        names), STLS only on 110 and USER only on TLS."""
        for implicit in (False, True):
            proto, transport = self.connect(implicit_tls=implicit)
            capa = self.send(proto, transport, b"CAPA\r\n").split(b"\r\n")
            for joke in (b"PIPELINE", b"CELERITY", b"AUSPEX", b"POTENCE"):
                self.assertNotIn(joke, capa)
            self.assertIn(b"PIPELINING", capa)
            self.assertIn(b"RESP-CODES", capa)
            self.assertIn(b"AUTH-RESP-CODE", capa)
            self.assertEqual(b"STLS" in capa, not implicit)
            self.assertEqual(b"USER" in capa, implicit)
