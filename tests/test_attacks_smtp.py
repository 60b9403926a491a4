"""Byte-level regression tests for the SMTP defects of Twisted 26.10.

Each test sends the hostile bytes of a loopback experiment against stock Twisted; on a stock
C{twisted.mail.smtp.ESMTP} each of them fails (each class docstring says what stock Twisted
did).  The letters (a) to (d) are those of the L{twistedmail.smtp.session} module docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_smtp_server import (
    TLS_CONTEXT,
    Mailhost,
    TLSStringTransport,
    b64,
    connect,
    plain,
    talk,
)
from twisted.cred.checkers import AllowAnonymousAccess
from twisted.cred.portal import Portal
from twisted.trial import unittest

from twistedmail.auth import MailRealm, PasswordChecker
from twistedmail.settings import SMTPSettings
from twistedmail.smtp.session import MAX_LINE_LENGTH, SMTPSession
from twistedmail.testing import inbound_for, submission_for

SENT_UP_TO_DATA = (
    b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
)
OPEN_TRANSACTION = b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
SMUGGLED = (
    b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: admin@bank.test\r\n\r\nsmuggled\r\n.\r\n"
)


class AttackTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))

    def inbound(self, max_message_size: int = 1 << 20) -> tuple[SMTPSession, Any]:
        factory = inbound_for(
            self.host, tls=TLS_CONTEXT, settings=SMTPSettings(max_message_size=max_message_size)
        )
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client.elsewhere.test\r\n")
        return proto, tr

    def submission(
        self, implicit_tls: bool, portal: Portal | None = None
    ) -> tuple[SMTPSession, Any]:
        factory = submission_for(
            self.host,
            portal=portal or self.host.portal,
            tls=TLS_CONTEXT,
            implicit_tls=implicit_tls,
            settings=SMTPSettings(max_message_size=1 << 20),
        )
        return connect(factory)

    def assertNothingStored(self) -> None:
        self.assertEqual(self.host.messages("alice@example.test"), [])
        self.assertEqual(self.host.messages("bob@example.test"), [])


class StartTLSInjectionTests(AttackTestCase):
    """(d) commands pipelined after STARTTLS ran inside the TLS session."""

    def test_pipelined_command_after_starttls_is_dropped(self) -> None:
        """RFC 3207 §4.2 (CVE-2011-0411): a MAIL pipelined after STARTTLS is dropped, nothing is
        written after the 220, and the EHLO is forgotten."""
        proto, tr = self.inbound()
        out = talk(proto, tr, b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        self.assertEqual(out, b"220 2.0.0 Ready to start TLS\r\n")
        assert isinstance(tr, TLSStringTransport)
        self.assertIs(tr.tls_context, TLS_CONTEXT)
        self.assertEqual(tr.written_before_tls, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertFalse(proto.has_sender)
        # Inside TLS: the injected MAIL never happened and the EHLO is forgotten.
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<alice@example.test>\r\n"),
            b"503 5.5.1 Need MAIL command first\r\n",
        )

    def test_partial_line_after_starttls_is_dropped(self) -> None:
        """A partial line after STARTTLS does not prefix the first command received over TLS."""
        proto, tr = self.inbound()
        talk(proto, tr, b"STARTTLS\r\nMAIL FROM:<inj")
        self.assertEqual(talk(proto, tr, b"NOOP\r\n"), b"250 2.0.0 OK\r\n")

    def test_state_before_starttls_is_reset(self) -> None:
        """RFC 3207 §4.2: a MAIL given before STARTTLS is forgotten after it."""
        proto, tr = self.inbound()
        talk(proto, tr, b"MAIL FROM:<x@elsewhere.test>\r\n")
        talk(proto, tr, b"STARTTLS\r\n")
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<alice@example.test>\r\n"),
            b"503 5.5.1 Need MAIL command first\r\n",
        )

    def test_starttls_injection_cannot_log_in(self) -> None:
        """An EHLO and AUTH pipelined after STARTTLS on 587 are dropped: nobody is logged in."""
        proto, tr = self.submission(implicit_tls=False)
        out = talk(
            proto,
            tr,
            b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\nAUTH PLAIN "
            + plain("alice@example.test", "alice-pw")
            + b"\r\n",
        )
        self.assertTrue(out.endswith(b"250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"), out)
        self.assertIsNone(proto.user)


class LongLineInDataTests(AttackTestCase):
    """(b') a >16 KiB body line switched stock Twisted to command mode."""

    def test_long_data_line_does_not_switch_to_command_mode(self) -> None:
        """RFC 5321 §4.5.3.1.6: an over-long line in DATA fails the message with one reply; the
        SMTP commands smuggled after it are not run."""
        proto, tr = self.inbound()
        out = talk(
            proto,
            tr,
            OPEN_TRANSACTION
            + b"Subject: x\r\n\r\n"
            + b"A" * 20000
            + b"\r\n"
            + SMUGGLED
            + b"NOOP\r\n",
        )
        # One answer for the whole DATA (after the first dot), then NOOP: no 250 for the
        # smuggled MAIL FROM, no second transaction.
        self.assertEqual(
            out,
            SENT_UP_TO_DATA + b"500 5.6.0 Message text line too long\r\n" + b"250 2.0.0 OK\r\n",
        )
        self.assertNothingStored()

    def test_long_data_line_in_many_reads(self) -> None:
        """An over-long DATA line that arrives in many reads is 500 5.6.0 and nothing is stored."""
        proto, tr = self.inbound()
        talk(proto, tr, OPEN_TRANSACTION + b"Subject: x\r\n\r\n")
        tr.clear()
        for _ in range(40):
            proto.dataReceived(b"B" * 1000)
        proto.dataReceived(b"\r\n" + SMUGGLED)
        self.assertEqual(tr.value(), b"500 5.6.0 Message text line too long\r\n")
        self.assertNothingStored()

    def test_line_at_the_limit_is_body(self) -> None:
        """A DATA line of exactly the limit is body: the command-looking line after it is stored
        as text, not run."""
        proto, tr = self.inbound()
        body = (
            b"Subject: x\r\n\r\n" + b"C" * MAX_LINE_LENGTH + b"\r\nMAIL FROM:<admin@bank.test>\r\n"
        )
        out = talk(proto, tr, OPEN_TRANSACTION + body + b".\r\n")
        self.assertEqual(out, SENT_UP_TO_DATA + b"250 2.0.0 Message accepted for delivery\r\n")
        (stored,) = self.host.messages("alice@example.test")
        self.assertTrue(
            stored.startswith(
                b"Return-Path: <x@elsewhere.test>\r\nDelivered-To: alice@example.test\r\nReceived: "
            )
        )
        self.assertEqual(stored[stored.index(b"Subject: x") :], body)
        self.assertEqual(self.host.messages("bob@example.test"), [])


class UnterminatedFloodTests(AttackTestCase):
    """(b) a line without CRLF was buffered forever, with quadratic CPU."""

    def flood(self, proto: SMTPSession, tr: Any) -> bytes:
        tr.clear()
        chunk = b"A" * 65536
        for _ in range(32):  # 2 MiB
            if tr.disconnecting:
                break
            proto.dataReceived(chunk)
            self.assertLessEqual(len(proto._buffer), 1)  # constant memory
        return tr.value()

    def test_flood_in_command_mode(self) -> None:
        """An unterminated flood of command bytes gets 500 5.5.6 Line too long and the connection
        closes."""
        proto, tr = self.inbound()
        self.assertEqual(self.flood(proto, tr), b"500 5.5.6 Line too long\r\n")
        self.assertTrue(tr.disconnecting)

    def test_flood_in_data(self) -> None:
        """An unterminated flood in DATA gets 500 5.6.0, the connection closes and nothing is
        stored."""
        proto, tr = self.inbound()
        talk(proto, tr, OPEN_TRANSACTION)
        self.assertEqual(self.flood(proto, tr), b"500 5.6.0 Message text line too long\r\n")
        self.assertTrue(tr.disconnecting)
        self.assertNothingStored()

    def test_long_command_line_is_answered_and_the_rest_of_the_read_runs(self) -> None:
        """A 100,000-byte command line is 500 5.5.6, and the commands after it in the same read
        are answered."""
        proto, tr = self.inbound()
        out = talk(proto, tr, b"X" * 100000 + b"\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(out, b"500 5.5.6 Line too long\r\n250 2.0.0 OK\r\n221 2.0.0 Bye\r\n")


class EndOfDataVariantTests(AttackTestCase):
    """(a) bare CR/LF end-of-data variants reached the Maildir as line breaks."""

    VARIANTS = (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n")

    def test_no_variant_ends_data_and_the_message_is_rejected(self) -> None:
        """RFC 5321 §4.1.1.4 (SMTP smuggling): no end-of-data with a bare CR or LF ends DATA; the
        message is refused with 550 5.6.0 and nothing is stored."""
        for variant in self.VARIANTS:
            proto, tr = self.inbound()
            out = talk(
                proto, tr, OPEN_TRANSACTION + b"Subject: x\r\n\r\nfirst part" + variant + SMUGGLED
            )
            self.assertEqual(
                out, SENT_UP_TO_DATA + b"550 5.6.0 Bare CR or LF in message data\r\n", variant
            )
            self.assertNothingStored()

    def test_bare_cr_and_lf_anywhere_in_data(self) -> None:
        """RFC 5321 §2.3.8: a bare CR or LF anywhere in a DATA line refuses the message with 550
        5.6.0."""
        for line in (b"a\rb", b"a\nb", b"trailing\r", b"\nleading"):
            proto, tr = self.inbound()
            out = talk(proto, tr, OPEN_TRANSACTION + line + b"\r\n.\r\n")
            self.assertEqual(out, SENT_UP_TO_DATA + b"550 5.6.0 Bare CR or LF in message data\r\n")
            self.assertNothingStored()


class AuthAttackTests(AttackTestCase):
    """(c) AUTH PLAIN was accepted in cleartext; malformed AUTH dropped the connection."""

    def test_auth_before_tls_is_refused(self) -> None:
        """RFC 4954 §4: on 587 before STARTTLS EHLO offers no AUTH, AUTH PLAIN and LOGIN are 530
        5.7.0, and MAIL is 530 Authentication required."""
        proto, tr = self.submission(implicit_tls=False)
        ehlo = talk(proto, tr, b"EHLO c\r\n")
        self.assertNotIn(b"AUTH", ehlo)
        out = talk(
            proto,
            tr,
            b"AUTH PLAIN " + plain("alice@example.test", "alice-pw") + b"\r\n"
            b"AUTH LOGIN\r\n"
            b"MAIL FROM:<alice@example.test>\r\n",
        )
        self.assertEqual(
            out,
            b"530 5.7.0 Must issue a STARTTLS command first\r\n"
            b"530 5.7.0 Must issue a STARTTLS command first\r\n"
            b"530 5.7.0 Authentication required\r\n",
        )
        self.assertIsNone(proto.user)

    def test_malformed_auth_is_answered_not_dropped(self) -> None:
        """RFC 4954 §4: each malformed AUTH gets its reply (501 for syntax or bad base64, 535
        5.7.8 for a malformed PLAIN) and the connection stays open."""
        proto, tr = self.submission(implicit_tls=True)
        talk(proto, tr, b"EHLO c\r\n")
        out = talk(
            proto,
            tr,
            b"AUTH\r\n"
            b"AUTH PLAIN " + b64("no-nul-bytes-here") + b"\r\n"
            b"AUTH PLAIN " + b64("only\0one-nul") + b"\r\n"
            b"AUTH PLAIN !!!not-base64\r\n"
            b"AUTH PLAIN " + b64("\0\0") + b"\r\n"
            b"AUTH LOGIN\r\n"
            b"%%%\r\n"
            b"NOOP\r\n",
        )
        # Undecodable base64 is 501 5.5.2 (RFC 4954 §4); decodable but malformed PLAIN is a
        # failed authentication, 535 5.7.8, not counted towards the 421 (no password tried).
        self.assertEqual(
            out,
            b"501 5.5.4 Syntax error in parameters or arguments\r\n"
            b"535 5.7.8 Authentication credentials invalid\r\n"
            b"535 5.7.8 Authentication credentials invalid\r\n"
            b"501 5.5.2 Cannot decode response\r\n"
            b"535 5.7.8 Authentication credentials invalid\r\n"
            b"334 VXNlcm5hbWU6\r\n"
            b"501 5.5.2 Cannot decode response\r\n"
            b"250 2.0.0 OK\r\n",
        )
        self.assertFalse(tr.disconnecting)


class CommandGapTests(AttackTestCase):
    """Other gaps of stock ESMTP: MAIL before EHLO, NOOP, SIZE=/BODY=, STARTTLS on 465,
    anonymous submission."""

    def test_mail_before_ehlo(self) -> None:
        """RFC 5321 §4.1.4: a transaction before EHLO on port 25 is 503 5.5.1 Send HELO/EHLO
        first."""
        factory = inbound_for(self.host, settings=SMTPSettings(max_message_size=1000))
        proto, tr = connect(factory)
        self.assertEqual(
            talk(proto, tr, OPEN_TRANSACTION),
            b"503 5.5.1 Send HELO/EHLO first\r\n"
            b"503 5.5.1 Need MAIL command first\r\n"
            b"503 5.5.1 Need MAIL command first\r\n",
        )

    def test_noop(self) -> None:
        """RFC 5321 §4.1.1.9: NOOP on port 25 is 250 2.0.0 OK."""
        proto, tr = self.inbound()
        self.assertEqual(talk(proto, tr, b"NOOP\r\n"), b"250 2.0.0 OK\r\n")

    def test_size_and_body_parameters(self) -> None:
        """RFC 1870 + RFC 6152: EHLO advertises SIZE; SIZE over it is 552, BODY=BINARYMIME and
        SMTPUTF8 are 555, SIZE at the limit with 8BITMIME is accepted."""
        proto, tr = self.inbound(max_message_size=5000)
        self.assertIn(b"250-SIZE 5000\r\n", talk(proto, tr, b"EHLO c\r\n"))
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<x@elsewhere.test> SIZE=5001\r\n"
            b"MAIL FROM:<x@elsewhere.test> BODY=BINARYMIME\r\n"
            b"MAIL FROM:<x@elsewhere.test> SMTPUTF8\r\n"
            b"MAIL FROM:<x@elsewhere.test> SIZE=5000 BODY=8BITMIME\r\n",
        )
        self.assertEqual(
            out,
            b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
            b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized\r\n"
            b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized\r\n"
            b"250 2.1.0 Sender OK\r\n",
        )

    def test_real_size_enforced_despite_a_small_declared_size(self) -> None:
        """RFC 1870 §6.3: a message larger than the limit is 552 5.3.4 even when SIZE= declared
        less."""
        proto, tr = self.inbound(max_message_size=100)
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<x@elsewhere.test> SIZE=10\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            + b"0123456789\r\n" * 10
            + b".\r\n",
        )
        self.assertEqual(
            out,
            SENT_UP_TO_DATA + b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        )
        self.assertNothingStored()

    def test_starttls_is_not_offered_on_465(self) -> None:
        """RFC 8314 §3.3: on 465 EHLO offers AUTH and no STARTTLS; STARTTLS is 503 and starts
        nothing."""
        proto, tr = self.submission(implicit_tls=True)
        ehlo = talk(proto, tr, b"EHLO c\r\n")
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertIn(b"250 AUTH PLAIN LOGIN\r\n", ehlo)
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"503 5.5.1 TLS already active\r\n")
        assert isinstance(tr, TLSStringTransport)
        self.assertIsNone(tr.tls_context)

    def test_submission_without_auth_never_delivers(self) -> None:
        # Even with a portal that would allow anonymous logins (stock validateFrom tries one).
        """RFC 6409 §4.3: even with an anonymous checker in the portal, submission without AUTH
        refuses MAIL (530) and stores nothing."""
        portal = Portal(
            MailRealm({}),
            [PasswordChecker(self.host.store, lambda f, *a: None), AllowAnonymousAccess()],
        )
        for implicit in (True, False):
            proto, tr = self.submission(implicit_tls=implicit, portal=portal)
            talk(proto, tr, b"EHLO c\r\n")
            out = talk(
                proto,
                tr,
                b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
            )
            self.assertEqual(
                out,
                b"530 5.7.0 Authentication required\r\n"
                b"503 5.5.1 Need MAIL command first\r\n"
                b"503 5.5.1 Need MAIL command first\r\n",
            )
        self.assertNothingStored()
