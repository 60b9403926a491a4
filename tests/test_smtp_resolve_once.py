"""Each recipient's aliases are expanded once at RCPT (the check and the quota check share
it) and once more after DATA (a user or alias deleted since RCPT gets nothing, RFC 5321
§6.1), the delivery reusing that expansion (issue 10: it was four times per recipient)."""

from __future__ import annotations

from typing import Any

from test_smtp_data_limits import ACCEPTED, DataTestCase
from test_smtp_server import talk

from twistedmail.address import Mailbox


class ResolveOnceTests(DataTestCase):
    def test_alias_expanded_once_at_rcpt_and_once_after_data(self) -> None:
        """RCPT TO an alias of two users: one expansion at RCPT, one after the dot; both
        users get the message."""
        self.host.store.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        calls: list[str] = []
        resolve = self.host.store.resolve

        def counting(mbox: Mailbox) -> Any:
            calls.append(str(mbox))
            return resolve(mbox)

        self.host.store.resolve = counting  # type: ignore[method-assign]
        proto, tr = self.session()
        talk(proto, tr, b"MAIL FROM:<x@elsewhere.test>\r\n")
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<team@example.test>\r\n"), b"250 2.1.5 Recipient OK\r\n"
        )
        self.assertEqual(calls, ["team@example.test"])
        body = b"Subject: team\r\n\r\nhello\r\n"
        out = talk(proto, tr, b"DATA\r\n" + body + b".\r\n")
        self.assertEqual(out, b"354 End data with <CR><LF>.<CR><LF>\r\n" + ACCEPTED)
        self.assertEqual(calls, ["team@example.test", "team@example.test"])
        self.assertEqual(self.stored("alice@example.test"), [body])
        self.assertEqual(self.stored("bob@example.test"), [body])
