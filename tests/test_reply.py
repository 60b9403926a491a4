"""SMTP reply values (twistedmail.reply): the line sent for each."""

from __future__ import annotations

import attrs
from twisted.trial import unittest

from twistedmail import reply
from twistedmail.reply import REPLY_250_QUEUED, REPLY_354_DATA, Reply


class WireTests(unittest.TestCase):
    def test_wire_is_the_line_with_crlf(self) -> None:
        """Every reply's wire form, made once, is its line and CRLF (RFC 5321 §4.2), with
        the enhanced status code when it has one (RFC 2034 §4)."""
        self.assertEqual(REPLY_250_QUEUED.wire, b"250 2.0.0 Message accepted for delivery\r\n")
        self.assertEqual(REPLY_354_DATA.wire, b"354 End data with <CR><LF>.<CR><LF>\r\n")
        for value in vars(reply).values():
            if isinstance(value, Reply):
                self.assertEqual(value.wire, value.line() + b"\r\n")

    def test_made_and_evolved_replies_have_their_own(self) -> None:
        """A reply made at run time (a Sieve reject's reason) or evolved has its own line;
        equality and hashing are by code, status and text."""
        made = Reply(550, "5.7.1", "Go away")
        self.assertEqual(made.wire, b"550 5.7.1 Go away\r\n")
        self.assertEqual(attrs.evolve(made, text="No").wire, b"550 5.7.1 No\r\n")
        self.assertEqual(made, Reply(550, "5.7.1", "Go away"))
        self.assertEqual(hash(made), hash(Reply(550, "5.7.1", "Go away")))
