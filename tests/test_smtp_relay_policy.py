"""Submission and port-25 policies with the outbound queue: remote recipients and forwarding
aliases are queued (exact envelope and bytes) before 250; local ones still delivered at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from test_smtp_server import TLS_CONTEXT, Mailhost, connect, plain, talk
from twisted.trial import unittest

from twistedmail.address import Mailbox
from twistedmail.testing import inbound_for, submission_for

ALICE = plain("alice@example.test", "alice-pw")
BODY = b"Subject: hi\r\n\r\n.dot line\r\n"


class FakeQueue:
    def __init__(self, fail: bool = False) -> None:
        self.queued: list[tuple[Mailbox | None, list[str], bytes]] = []
        self.fail = fail

    async def enqueue(
        self,
        reverse_path: Mailbox | None,
        recipients: Sequence[Mailbox],
        message: bytes,
        sign: bool = False,
    ) -> object:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.queued.append((reverse_path, [str(r) for r in recipients], message))
        return None


class RelayPolicyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        self.host.store.add_alias("fwd@example.test", ["alice@example.test", "carol@remote.test"])
        self.host.store.add_alias("away@example.test", ["dave@remote.test"])
        self.queue = FakeQueue()

    def submission(self) -> tuple[object, object]:
        factory = submission_for(self.host, tls=TLS_CONTEXT, queue=self.queue)
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client\r\n")
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"),
            b"235 2.7.0 Authentication successful\r\n",
        )
        return proto, tr

    def test_submission_queues_remote_and_delivers_local(self) -> None:
        """On submission a remote recipient is queued and a local one delivered, the same bytes
        under Return-Path."""
        proto, tr = self.submission()
        out = talk(
            proto,  # type: ignore[arg-type]
            tr,  # type: ignore[arg-type]
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<Bob@Example.NET>\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\n" + BODY.replace(b"\n.", b"\n..") + b".\r\n",
        )
        self.assertEqual(
            out,
            b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n"
            b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Message accepted for delivery\r\n",
        )
        [(sender, recipients, message)] = self.queue.queued
        self.assertEqual((str(sender), recipients), ("alice@example.test", ["bob@example.net"]))
        self.assertTrue(message.startswith(b"Received: from client ("))
        self.assertTrue(message.endswith(b"\r\n" + BODY))
        [local] = self.host.messages("bob@example.test")
        self.assertEqual(
            local,
            b"Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\n" + message,
        )

    def test_submission_queue_failure_is_not_acknowledged(self) -> None:
        """RFC 5321 §6.1: when the queue cannot take the message, DATA is 452 4.3.1, not accepted
        and lost."""
        self.queue.fail = True
        proto, tr = self.submission()
        out = talk(
            proto,  # type: ignore[arg-type]
            tr,  # type: ignore[arg-type]
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
            + BODY.replace(b"\n.", b"\n..")
            + b".\r\n",
        )
        self.assertTrue(out.endswith(b"\r\n452 4.3.1 Insufficient system storage\r\n"), out)

    def test_port_25_forwarding_alias_queues_the_remote_part(self) -> None:
        """On port 25 an alias's remote targets are queued and its local ones delivered; a remote
        RCPT is still 554 5.7.1 (no open relay)."""
        factory = inbound_for(self.host, queue=self.queue)
        proto, tr = connect(factory)
        out = talk(
            proto,
            tr,
            b"EHLO client\r\nMAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<fwd@example.test>\r\n"
            b"RCPT TO:<away@example.test>\r\nRCPT TO:<carol@remote.test>\r\nDATA\r\n"
            + BODY.replace(b"\n.", b"\n..")
            + b".\r\n",
        )
        self.assertIn(b"554 5.7.1 Relay access denied\r\n", out)
        self.assertTrue(out.endswith(b"250 2.0.0 Message accepted for delivery\r\n"), out)
        [(sender, recipients, message)] = self.queue.queued
        self.assertEqual(
            (str(sender), recipients),
            ("x@elsewhere.test", ["carol@remote.test", "dave@remote.test"]),
        )
        [local] = self.host.messages("alice@example.test")
        self.assertEqual(
            local,
            b"Return-Path: <x@elsewhere.test>\r\nDelivered-To: alice@example.test\r\n" + message,
        )
