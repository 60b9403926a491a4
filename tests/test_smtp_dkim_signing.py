"""Which queued mail the queue DKIM-signs (RFC 6376 §5): mail an authenticated user submitted
(587/465) and mail we generate (DSNs, Sieve vacation replies), never mail we only forward
(an alias to a remote address, a Sieve redirect), whatever its From: domain: a message from
the internet claiming a From: in our domain must not leave with our signature.

Real session, real queue runner (not started: nothing is sent), real key store and spool;
the assertions are on the exact bytes in the spool."""

from __future__ import annotations

from pathlib import Path

import dkim as dkimpy
from test_dkim import dnsfunc_for
from test_smtp_relay_policy import ALICE
from test_smtp_server import TLS_CONTEXT, Mailhost, connect, talk
from twisted.internet import defer
from twisted.trial import unittest

from twistedmail.address import Mailbox
from twistedmail.dkim import KeyStore
from twistedmail.reply import REPLY_552_MAILBOX_FULL
from twistedmail.sieve.store import SieveStore
from twistedmail.smtp.queue import QueueRunner, Spool
from twistedmail.testing import inbound_for, run_now, submission_for

SPOOFED = (
    b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: pay now\r\n\r\n"
    b"Send the money.\r\n"
)
DATA_OK = b"250 2.0.0 Message accepted for delivery\r\n"


def unsigned(message: bytes) -> bytes:
    """C{message} without the DKIM-Signature fields on top (each with its folded lines)."""
    lines = message.split(b"\r\n")
    while lines and lines[0].startswith(b"DKIM-Signature:"):
        lines.pop(0)
        while lines and lines[0][:1] in (b" ", b"\t"):
            lines.pop(0)
    return b"\r\n".join(lines)


class QueueSigningTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        self.host.store.add_alias("fwd@example.test", ["carol@remote.test"])
        self.keys = KeyStore(Path(self.mktemp()))
        self.keys.generate("example.test")
        self.spool = Spool(Path(self.mktemp()))
        self.queue = QueueRunner(
            spool=self.spool,
            outbound=None,  # type: ignore[arg-type]  # never started: nothing is sent
            store=self.host.store,
            local=self.host.delivery,
            clock=self.host.clock,
            run_in_thread=run_now,
            hostname="example.test",
            signer=self.keys.sign,
        )
        self.host.delivery.outbound = self.queue.enqueue  # as the service wires it

    def spooled(self) -> list[tuple[str | None, list[str], bytes]]:
        """Every queued message: (sender, recipients, the exact bytes stored)."""
        return [
            (e.sender, [r.address for r in e.recipients], self.spool.read_message(e.id))
            for e in self.spool.entries()
        ]

    def port_25(self, rcpt: bytes, body: bytes = SPOOFED) -> bytes:
        proto, tr = connect(inbound_for(self.host, queue=self.queue))
        out = talk(
            proto,
            tr,
            b"EHLO mx.elsewhere.test\r\nMAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<"
            + rcpt
            + b">\r\nDATA\r\n"
            + body
            + b".\r\n",
        )
        self.assertTrue(out.endswith(DATA_OK), out)
        [received] = self.host.messages("bob@example.test") or [b""]
        return received

    def assertSignedCopy(self, stored: bytes, original: bytes) -> None:
        """C{stored} is C{original} under our DKIM-Signature fields, and verifies."""
        self.assertTrue(stored.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; "), stored[:80])
        self.assertTrue(stored.endswith(original))
        self.assertNotIn(b"\r\n\r\n", stored[: len(stored) - len(original)])
        self.assertTrue(dkimpy.verify(stored, dnsfunc=dnsfunc_for(self.keys, "example.test")))

    def test_forwarding_alias_is_not_signed(self) -> None:
        """Port 25 mail to an alias that forwards to a remote address is queued exactly as
        received, unsigned, although its From: is in our domain (a spoof we must not sign)."""
        self.port_25(b"fwd@example.test")
        [(sender, recipients, stored)] = self.spooled()
        self.assertEqual((sender, recipients), ("x@elsewhere.test", ["carol@remote.test"]))
        self.assertNotIn(b"DKIM-Signature", stored[:200])
        self.assertTrue(stored.startswith(b"Received: from mx.elsewhere.test ([192.0.2.7])"))
        self.assertTrue(stored.endswith(b"\r\n" + SPOOFED))
        self.assertNotIn(b"DKIM-Signature", stored)

    def test_sieve_redirect_is_not_signed(self) -> None:
        """A Sieve redirect (RFC 5228 §4.2) of such a message leaves unsigned: the copy in
        the spool is byte for byte the one bob's INBOX would hold, but Return-Path."""
        home = self.host.mail_dir / "example.test" / "bob"
        scripts = SieveStore(home)
        scripts.put("main", b'redirect "carol@remote.test";\n')
        scripts.activate("main")
        self.port_25(b"bob@example.test")
        [(sender, recipients, stored)] = self.spooled()
        self.assertEqual((sender, recipients), ("x@elsewhere.test", ["carol@remote.test"]))
        self.assertNotIn(b"DKIM-Signature", stored[:200])
        self.assertTrue(stored.startswith(b"Delivered-To: bob@example.test\r\nReceived: from "))
        self.assertTrue(stored.endswith(b"\r\n" + SPOOFED))
        self.assertNotIn(b"DKIM-Signature", stored)

    def test_vacation_reply_is_signed(self) -> None:
        """A vacation reply (RFC 5230) is mail we generate, From: bob: signed."""
        home = self.host.mail_dir / "example.test" / "bob"
        scripts = SieveStore(home)
        scripts.put("main", b'require "vacation";\nvacation :days 1 "Away.";\n')
        scripts.activate("main")
        self.port_25(b"bob@example.test")
        [(sender, recipients, stored)] = self.spooled()
        self.assertEqual((sender, recipients), (None, ["x@elsewhere.test"]))
        self.assertIn(b"\r\nFrom: bob@example.test\r\n", stored)
        self.assertSignedCopy(stored, unsigned(stored))

    def test_submitted_mail_is_signed(self) -> None:
        """Mail alice submits on 465 after AUTH is queued signed (DKIM-Signature on top of
        exactly what she sent, under our Received:)."""
        proto, tr = connect(submission_for(self.host, tls=TLS_CONTEXT, queue=self.queue))
        out = talk(
            proto,
            tr,
            b"EHLO client\r\nAUTH PLAIN " + ALICE + b"\r\nMAIL FROM:<alice@example.test>\r\n"
            b"RCPT TO:<carol@remote.test>\r\nDATA\r\n" + SPOOFED + b".\r\n",
        )
        self.assertTrue(out.endswith(DATA_OK), out)
        [(sender, recipients, stored)] = self.spooled()
        self.assertEqual((sender, recipients), ("alice@example.test", ["carol@remote.test"]))
        received = stored[stored.index(b"\r\nReceived: ") + 2 :]
        self.assertTrue(received.startswith(b"Received: from client ([192.0.2.7])"))
        self.assertTrue(received.endswith(b"\r\n" + SPOOFED))
        self.assertSignedCopy(stored, received)

    def test_dsn_is_signed(self) -> None:
        """A delivery status notification (RFC 3464) from MAILER-DAEMON@our host is signed."""
        d = defer.Deferred.fromCoroutine(
            self.queue.bounce(
                Mailbox.parse("x@elsewhere.test"),
                [(Mailbox.parse("bob@example.test"), REPLY_552_MAILBOX_FULL)],
                SPOOFED,
            )
        )
        self.successResultOf(d)
        [(sender, recipients, stored)] = self.spooled()
        self.assertEqual((sender, recipients), (None, ["x@elsewhere.test"]))
        self.assertIn(b"From: Mail Delivery System <MAILER-DAEMON@example.test>\r\n", stored)
        self.assertSignedCopy(stored, unsigned(stored))
