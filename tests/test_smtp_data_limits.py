"""SMTP DATA hardening (issue 5): the text line and header section limits, and bare LF in
both modes (C{[smtp] bare_lf}), with the SMTP smuggling byte sequences (RFC 5321 §2.3.8,
§4.1.1.4): only <CRLF>.<CRLF> ever ends the data, nothing half-stored, no second message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_smtp_server import TLS_CONTEXT, Mailhost, connect, talk
from twisted.trial import unittest

from twistedmail.settings import SMTPSettings
from twistedmail.smtp.session import SMTPSession
from twistedmail.testing import inbound_for

SENT_UP_TO_DATA = (
    b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
)
OPEN = b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
SMUGGLED = (
    b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: admin@bank.test\r\n\r\nsmuggled\r\n"
)
ACCEPTED = b"250 2.0.0 Message accepted for delivery\r\n"
# The end-of-data variants of "SMTP smuggling" (2023): none may end DATA (RFC 5321 §4.1.1.4).
VARIANTS = (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n")


class DataTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))

    def session(self, **settings: Any) -> tuple[SMTPSession, Any]:
        factory = inbound_for(
            self.host, tls=TLS_CONTEXT, settings=SMTPSettings(max_message_size=1 << 20, **settings)
        )
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client.elsewhere.test\r\n")
        return proto, tr

    def stored(self, address: str = "alice@example.test") -> list[bytes]:
        """Each stored message from its Subject: header on (after our trace headers)."""
        return [m[m.index(b"Subject: ") :] for m in self.host.messages(address)]

    def assertNothingStored(self) -> None:
        self.assertEqual(self.host.messages("alice@example.test"), [])
        self.assertEqual(self.host.messages("bob@example.test"), [])


class LineLengthTests(DataTestCase):
    """RFC 5321 §4.5.3.1.6: a text line of up to max_line_length octets (998 at least)."""

    def test_line_at_the_limit_is_stored(self) -> None:
        """max_line_length = 998 (RFC 5322 §2.1.1): a body line of 998 octets is stored."""
        proto, tr = self.session(max_line_length=998)
        body = b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n"
        self.assertEqual(talk(proto, tr, OPEN + body + b".\r\n"), SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [body])

    def test_longer_line_fails_the_message(self) -> None:
        """A DATA line over max_line_length fails the message with 500 5.6.0; the smuggled
        commands after it are not run."""
        proto, tr = self.session(max_line_length=998)
        out = talk(
            proto,
            tr,
            OPEN + b"Subject: x\r\n\r\n" + b"a" * 999 + b"\r\n" + SMUGGLED + b".\r\nNOOP\r\n",
        )
        self.assertEqual(
            out,
            SENT_UP_TO_DATA + b"500 5.6.0 Message text line too long\r\n250 2.0.0 OK\r\n",
        )
        self.assertNothingStored()
        # The session goes on: the next transaction is stored.
        body = b"Subject: y\r\n\r\nok\r\n"
        self.assertEqual(talk(proto, tr, OPEN + body + b".\r\n"), SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [body])

    def test_stuffed_dot_does_not_count(self) -> None:
        """RFC 5321 §4.5.3.1.6: the limit does not count the dot added for transparency."""
        proto, tr = self.session(max_line_length=998)
        out = talk(proto, tr, OPEN + b"Subject: x\r\n\r\n.." + b"a" * 997 + b"\r\n.\r\n")
        self.assertEqual(out, SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [b"Subject: x\r\n\r\n." + b"a" * 997 + b"\r\n"])
        out = talk(proto, tr, OPEN + b"Subject: x\r\n\r\n.." + b"a" * 998 + b"\r\n.\r\n")
        self.assertEqual(out, SENT_UP_TO_DATA + b"500 5.6.0 Message text line too long\r\n")

    def test_limit_above_the_wire_default(self) -> None:
        """max_line_length above 16384 lets a 40000-octet line through and stores it."""
        proto, tr = self.session(max_line_length=40000)
        body = b"Subject: x\r\n\r\n" + b"b" * 40000 + b"\r\n"
        self.assertEqual(talk(proto, tr, OPEN + body + b".\r\n"), SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [body])


class HeaderSizeTests(DataTestCase):
    HEADER = b"Subject: x\r\n" + b"X-Filler: " + b"h" * 88 + b"\r\n"  # 12 + 100 octets

    def test_header_at_the_limit(self) -> None:
        """A header section of exactly max_header_size is stored."""
        proto, tr = self.session(max_header_size=112)
        body = self.HEADER + b"\r\n" + b"body line\r\n" * 50
        self.assertEqual(talk(proto, tr, OPEN + body + b".\r\n"), SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [body])

    def test_header_over_the_limit(self) -> None:
        """A header section one octet over max_header_size is 552 5.3.4, nothing is stored and
        the session goes on."""
        proto, tr = self.session(max_header_size=111)
        out = talk(proto, tr, OPEN + self.HEADER + b"\r\nbody\r\n.\r\nNOOP\r\n")
        self.assertEqual(
            out,
            SENT_UP_TO_DATA + b"552 5.3.4 Message header section too large\r\n250 2.0.0 OK\r\n",
        )
        self.assertNothingStored()

    def test_folded_lines_count(self) -> None:
        """Folded continuation lines count towards max_header_size."""
        proto, tr = self.session(max_header_size=111)
        header = b"Subject: x\r\nX-Filler:\r\n " + b"h" * 86 + b"\r\n"  # 12 + 11 + 89
        out = talk(proto, tr, OPEN + header + b"\r\nbody\r\n.\r\n")
        self.assertEqual(out, SENT_UP_TO_DATA + b"552 5.3.4 Message header section too large\r\n")

    def test_body_does_not_count(self) -> None:
        """The header ends at the empty line, or at the first line that is no header field."""
        expected = []
        for separator in (b"\r\n", b""):
            proto, tr = self.session(max_header_size=112)
            body = (
                self.HEADER + separator + b"not a header line\r\n" + b"Y: " + b"y" * 500 + b"\r\n"
            )
            self.assertEqual(talk(proto, tr, OPEN + body + b".\r\n"), SENT_UP_TO_DATA + ACCEPTED)
            expected.append(body)
            self.assertEqual(self.stored(), expected)


class BareLFRejectTests(DataTestCase):
    """bare_lf = "reject" (the default): every variant fails the one message; nothing stored."""

    def test_variants(self) -> None:
        """bare_lf = reject (RFC 5321 §2.3.8): every bare CR/LF end-of-data variant fails the
        message with 550 5.6.0, nothing smuggled."""
        for variant in VARIANTS:
            proto, tr = self.session()
            out = talk(proto, tr, OPEN + b"Subject: x\r\n\r\nfirst" + variant + SMUGGLED + b".\r\n")
            self.assertEqual(
                out, SENT_UP_TO_DATA + b"550 5.6.0 Bare CR or LF in message data\r\n", variant
            )
            self.assertNothingStored()


class BareLFNormalizeTests(DataTestCase):
    """bare_lf = "normalize": a bare LF is stored as CRLF, never ends the data; bare CR fails."""

    def test_lf_variants_are_one_message(self) -> None:
        """<LF>.<LF>, <CRLF>.<LF>, <LF>.<CRLF>: the dot line and the smuggled commands are
        text of the one message, stored with CRLF; bob gets nothing."""
        expected = []
        for variant in (b"\n.\n", b"\r\n.\n", b"\n.\r\n"):
            proto, tr = self.session(bare_lf="normalize")
            out = talk(
                proto,
                tr,
                OPEN + b"Subject: x\r\n\r\nfirst" + variant + SMUGGLED + b".\r\nNOOP\r\n",
            )
            self.assertEqual(out, SENT_UP_TO_DATA + ACCEPTED + b"250 2.0.0 OK\r\n", variant)
            expected.append(b"Subject: x\r\n\r\nfirst\r\n.\r\n" + SMUGGLED)
            self.assertEqual(self.stored(), expected, variant)
            self.assertEqual(self.host.messages("bob@example.test"), [])

    def test_cr_variants_still_fail(self) -> None:
        """bare_lf = normalize still refuses the end-of-data variants with a bare CR (550 5.6.0)."""
        for variant in (b"\r.\r", b"\r\n.\r", b"\r.\r\n"):
            proto, tr = self.session(bare_lf="normalize")
            out = talk(proto, tr, OPEN + b"Subject: x\r\n\r\nfirst" + variant + SMUGGLED + b".\r\n")
            self.assertEqual(
                out, SENT_UP_TO_DATA + b"550 5.6.0 Bare CR or LF in message data\r\n", variant
            )
            self.assertNothingStored()

    def test_lf_only_client(self) -> None:
        """A client with LF line ends everywhere (but the final <CRLF>.<CRLF>): stored in
        CRLF form, lines measured one by one (not as one long wire line)."""
        proto, tr = self.session(bare_lf="normalize", max_line_length=998)
        lines = [b"Subject: x", b"", *(b"line %d " % i + b"z" * 900 for i in range(40))]
        out = talk(proto, tr, OPEN + b"\n".join(lines) + b"\r\n.\r\n")
        self.assertEqual(out, SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [b"".join(line + b"\r\n" for line in lines)])

    def test_dot_after_bare_lf_is_kept(self) -> None:
        """Transparency (RFC 5321 §4.5.2) only at a line start after CRLF: after a bare LF
        the text is kept as sent."""
        proto, tr = self.session(bare_lf="normalize")
        out = talk(proto, tr, OPEN + b"Subject: x\r\n\r\na\n..b\r\n..c\r\n.\r\n")
        self.assertEqual(out, SENT_UP_TO_DATA + ACCEPTED)
        self.assertEqual(self.stored(), [b"Subject: x\r\n\r\na\r\n..b\r\n.c\r\n"])

    def test_commands_still_need_crlf(self) -> None:
        """Only message data is normalised: a bare LF in a command is refused as before."""
        proto, tr = self.session(bare_lf="normalize")
        self.assertEqual(
            talk(proto, tr, b"NOOP\nNOOP\r\n"), b"500 5.5.2 Bare CR or LF in command\r\n"
        )
        body = b"Subject: x\r\n\r\nok\r\n"
        self.assertEqual(
            talk(proto, tr, OPEN + body + b".\r\nNOOP\r\n"),
            SENT_UP_TO_DATA + ACCEPTED + b"250 2.0.0 OK\r\n",
        )
        self.assertEqual(
            talk(proto, tr, b"NOOP\nQUIT\r\n"), b"500 5.5.2 Bare CR or LF in command\r\n"
        )


class ClientSnapshotTests(DataTestCase):
    def test_one_snapshot_while_the_session_is_unchanged(self) -> None:
        """The policy's view of the session (Client) is made once and handed again while
        nothing in it changed; a new HELO or MAIL SIZE= makes a new one with the new value."""
        proto, tr = self.session()
        first = proto.client()
        self.assertIs(proto.client(), first)
        self.assertEqual(
            (first.helo, first.esmtp, first.declared_size), ("client.elsewhere.test", True, 0)
        )
        talk(proto, tr, b"MAIL FROM:<a@elsewhere.test> SIZE=100\r\n")
        sized = proto.client()
        self.assertEqual(sized.declared_size, 100)
        self.assertIs(proto.client(), sized)
        talk(proto, tr, b"RSET\r\nHELO other.test\r\n")
        again = proto.client()
        self.assertEqual((again.helo, again.esmtp, again.declared_size), ("other.test", False, 0))
        self.assertEqual(first.session_id, again.session_id)
