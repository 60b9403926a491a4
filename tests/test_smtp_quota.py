"""Quota at SMTP delivery (port 25 and submission): 552 5.2.2 at RCPT for a full mailbox and
after DATA when no recipient has room; with other recipients the message is delivered and the
sender gets a bounce for the users over quota (RFC 3463 X.2.2, Dovecot's quota behaviour)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from test_smtp_relay_policy import ALICE, FakeQueue
from test_smtp_server import TLS_CONTEXT, Mailhost, connect, talk
from twisted.trial import unittest

from twistedmail.accounts import Quota
from twistedmail.address import Mailbox
from twistedmail.delivery import LocalDelivery
from twistedmail.maildir import ChangeNotifier
from twistedmail.quota import QuotaTracker
from twistedmail.reply import Reply
from twistedmail.testing import inbound_for, submission_for

BODY = b"Subject: hi\r\n\r\n" + b"x" * 500 + b"\r\n"
FULL = b"552 5.2.2 Mailbox full\r\n"


class BouncingQueue(FakeQueue):
    def __init__(self) -> None:
        super().__init__()
        self.bounced: list[tuple[Mailbox | None, list[tuple[str, bytes]], bytes]] = []

    async def bounce(
        self,
        reverse_path: Mailbox | None,
        failures: Sequence[tuple[Mailbox, Reply]],
        message: bytes,
    ) -> None:
        self.bounced.append(
            (reverse_path, [(str(m), reply.line()) for m, reply in failures], message)
        )


class QuotaPolicyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        tracker = QuotaTracker(
            self.host.store, self.host.mail_dir, self.host.delivery.run_in_thread
        )
        self.host.delivery = LocalDelivery(
            self.host.store, self.host.mail_dir, ChangeNotifier(), tracker.run_in_thread, tracker
        )
        self.host.store.set_quota("bob@example.test", Quota(storage=1000))
        self.queue = BouncingQueue()

    def inbound(self) -> tuple[object, object]:
        factory = inbound_for(self.host, tls=TLS_CONTEXT, queue=self.queue)
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client.elsewhere.test\r\n")
        return proto, tr

    def send(self, rcpts: list[str], sender: str = "x@elsewhere.test") -> bytes:
        proto, tr = self.inbound()
        lines = [b"MAIL FROM:<%s>\r\n" % sender.encode()]
        lines += [b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts]
        lines += [b"DATA\r\n", BODY + b".\r\n"]
        return talk(proto, tr, b"".join(lines))  # type: ignore[arg-type]

    def test_data_refused_when_the_only_recipient_has_no_room(self) -> None:
        """RFC 9208 + RFC 3463: when the only recipient has no room for this message, DATA is
        refused with the quota reply and nothing is stored or bounced."""
        ok = b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
        ok += b"354 End data with <CR><LF>.<CR><LF>\r\n"
        self.assertEqual(
            self.send(["bob@example.test"]), ok + b"250 2.0.0 Message accepted for delivery\r\n"
        )
        # usage ~650 of 1000: not full (RCPT passes) but the next copy does not fit
        self.assertEqual(self.send(["bob@example.test"]), ok + FULL)
        self.assertEqual(len(self.host.messages("bob@example.test")), 1)
        self.assertEqual(self.queue.bounced, [])

    def test_one_thread_hop_per_recipient_at_data(self) -> None:
        """A user with a quota: at RCPT one thread hop (the usage listing), after DATA one
        (the listing, the check and the durable write together; issue 10: it was two)."""
        hops: list[str] = []
        run = self.host.delivery.run_in_thread

        def counted(f: object, *args: object) -> object:
            hops.append(getattr(f, "__name__", ""))
            return run(f, *args)  # type: ignore[arg-type]

        self.host.delivery.run_in_thread = counted  # type: ignore[assignment]
        assert self.host.delivery.quota is not None
        self.host.delivery.quota.run_in_thread = counted  # type: ignore[assignment]
        proto, tr = self.inbound()
        talk(proto, tr, b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<bob@example.test>\r\n")
        self.assertEqual(hops, ["measure"])
        self.assertEqual(
            talk(proto, tr, b"DATA\r\n" + BODY + b".\r\n"),  # type: ignore[arg-type]
            b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted for delivery\r\n",
        )
        self.assertEqual(hops, ["measure", "_deliver_made"])

    def test_rcpt_refused_when_full(self) -> None:
        """A recipient already at its quota is refused at RCPT with the quota reply; another
        recipient is accepted."""
        self.host.store.set_quota("bob@example.test", Quota(messages=1))
        self.send(["bob@example.test"])
        proto, tr = self.inbound()
        talk(proto, tr, b"MAIL FROM:<x@elsewhere.test>\r\n")  # type: ignore[arg-type]
        self.assertEqual(talk(proto, tr, b"RCPT TO:<bob@example.test>\r\n"), FULL)  # type: ignore[arg-type]
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<alice@example.test>\r\n"),  # type: ignore[arg-type]
            b"250 2.1.5 Recipient OK\r\n",
        )

    def test_others_get_it_and_the_sender_a_bounce(self) -> None:
        """With several recipients, the ones with room get the message and the sender gets a
        bounce for the one over quota."""
        self.send(["bob@example.test"])
        reply = self.send(["bob@example.test", "alice@example.test"], sender="x@elsewhere.test")
        self.assertTrue(reply.endswith(b"250 2.0.0 Message accepted for delivery\r\n"), reply)
        self.assertEqual(len(self.host.messages("alice@example.test")), 1)
        self.assertEqual(len(self.host.messages("bob@example.test")), 1)
        ((sender, failures, message),) = self.queue.bounced
        self.assertEqual(sender, Mailbox.parse("x@elsewhere.test"))
        self.assertEqual(failures, [("bob@example.test", FULL.rstrip())])
        self.assertTrue(message.startswith(b"Received: from client.elsewhere.test"))
        self.assertTrue(message.endswith(BODY))

    def test_submission_rcpt_and_remote_recipients(self) -> None:
        """On 587 too; a remote recipient is queued even when the local one has no room."""
        self.host.store.set_quota("bob@example.test", Quota(messages=1))
        self.send(["bob@example.test"])
        factory = submission_for(self.host, tls=TLS_CONTEXT, queue=self.queue)
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client\r\nAUTH PLAIN " + ALICE + b"\r\n")
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"),
            b"250 2.1.0 Sender OK\r\n" + FULL,
        )
        # Room at RCPT, none after: the remote recipient still gets it, Bob a bounce.
        self.host.store.set_quota("bob@example.test", Quota(messages=2))
        talk(proto, tr, b"RSET\r\nMAIL FROM:<alice@example.test>\r\n")
        talk(proto, tr, b"RCPT TO:<bob@example.test>\r\nRCPT TO:<carol@remote.test>\r\nDATA\r\n")
        self.host.store.set_quota("bob@example.test", Quota(messages=1))
        self.assertEqual(
            talk(proto, tr, BODY + b".\r\n"), b"250 2.0.0 Message accepted for delivery\r\n"
        )
        self.assertEqual([q[1] for q in self.queue.queued], [["carol@remote.test"]])
        self.assertEqual(
            [(s, f) for s, f, _ in self.queue.bounced],
            [(Mailbox.parse("alice@example.test"), [("bob@example.test", FULL.rstrip())])],
        )
        self.assertEqual(len(self.host.messages("bob@example.test")), 1)

    def test_rcpt_refused_when_the_announced_size_does_not_fit(self) -> None:
        """RFC 1870 SIZE: a message announced too big for the room left is refused at RCPT,
        before its data is sent; without SIZE= the same recipient is accepted."""
        self.send(["bob@example.test"])
        room = 1000 - len(self.host.messages("bob@example.test")[0])
        proto, tr = self.inbound()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<x@elsewhere.test> SIZE=%d\r\n" % (room + 1)),  # type: ignore[arg-type]
            b"250 2.1.0 Sender OK\r\n",
        )
        self.assertEqual(talk(proto, tr, b"RCPT TO:<bob@example.test>\r\n"), FULL)  # type: ignore[arg-type]
        talk(proto, tr, b"RSET\r\nMAIL FROM:<x@elsewhere.test> SIZE=%d\r\n" % room)  # type: ignore[arg-type]
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<bob@example.test>\r\n"),  # type: ignore[arg-type]
            b"250 2.1.5 Recipient OK\r\n",
        )
        talk(proto, tr, b"RSET\r\nMAIL FROM:<x@elsewhere.test>\r\n")  # type: ignore[arg-type]
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<bob@example.test>\r\n"),  # type: ignore[arg-type]
            b"250 2.1.5 Recipient OK\r\n",
        )
