"""Port-25 policy (twistedmail.smtp.inbound): local recipients only, durable delivery."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from test_smtp_server import (
    DATE,
    TLS_CONTEXT,
    Mailhost,
    TLSStringTransport,
    connect,
    plain,
    talk,
)
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from twistedmail.delivery import LocalDelivery
from twistedmail.maildir import ChangeNotifier
from twistedmail.passwords import hash_password
from twistedmail.settings import SMTPSettings
from twistedmail.smtp.inbound import inbound_factory
from twistedmail.smtp.session import SMTPSession
from twistedmail.testing import inbound_for

BODY = b"From: x@elsewhere.test\r\nSubject: hello\r\n\r\nHi\r\n..dot\r\n"
BODY_STORED = b"From: x@elsewhere.test\r\nSubject: hello\r\n\r\nHi\r\n.dot\r\n"


def received(proto: SMTPSession, rcpt: str, protocol: str = "ESMTP", n: int = 1) -> bytes:
    return (
        b"Received: from client.elsewhere.test ([192.0.2.7])\r\n"
        b"\tby mail.example.test with %s id %s-%d\r\n"
        b"\tfor <%s>; %s\r\n"
        % (protocol.encode(), proto.session_id.encode(), n, rcpt.encode(), DATE.encode())
    )


class InboundTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        self.host.store.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        self.host.store.add_alias("fwd@example.test", ["alice@example.test", "carol@remote.test"])

    def connect(self, hostname: str = "mail.example.test") -> tuple[SMTPSession, Any]:
        factory = inbound_factory(
            hostname=hostname,
            store=self.host.store,
            delivery=self.host.delivery,
            tls=TLS_CONTEXT,
            settings=SMTPSettings(max_message_size=10000),
            clock=self.host.clock,
        )
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client.elsewhere.test\r\n")
        return proto, tr

    def test_ehlo_offers_starttls_never_auth(self) -> None:
        """Port 25 offers STARTTLS and never AUTH, before or after TLS; AUTH is 502 5.5.1."""
        proto, tr = connect(inbound_for(self.host, tls=TLS_CONTEXT))
        ehlo = (
            b"250-mail.example.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
            b"250-ENHANCEDSTATUSCODES\r\n"
        )
        self.assertEqual(talk(proto, tr, b"EHLO c\r\n"), ehlo + b"250 STARTTLS\r\n")
        talk(proto, tr, b"STARTTLS\r\n")
        self.assertEqual(talk(proto, tr, b"EHLO c\r\n"), ehlo.replace(b"250-ENH", b"250 ENH"))
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + plain("alice@example.test", "alice-pw") + b"\r\n"),
            b"502 5.5.1 Command not implemented\r\n",
        )

    def test_bare_postmaster_is_accepted_and_delivered(self) -> None:
        """RFC 5321 §4.5.1: <Postmaster> with no domain MUST be accepted.  The hostname
        (mail.example.test) is not a local domain: its parent example.test is.  Found by a new
        user: it was refused with 554 5.7.1."""
        self.host.store.add_alias("postmaster@example.test", ["alice@example.test"])
        proto, tr = self.connect()
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n" + BODY + b".\r\n",
        )
        self.assertEqual(
            out,
            b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
            b"250 2.0.0 Message accepted for delivery\r\n",
        )
        self.assertEqual(len(self.host.messages("alice@example.test")), 1)

    def test_delivery_to_a_local_user_exact_bytes(self) -> None:
        """RFC 5321 §4.4: a message to a local user (any case) is stored byte for byte under
        Return-Path and Received."""
        proto, tr = self.connect()
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<x@elsewhere.test> BODY=8BITMIME SIZE=60\r\n"
            b"RCPT TO:<Alice@Example.TEST>\r\nDATA\r\n" + BODY + b".\r\n",
        )
        self.assertEqual(
            out,
            b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
            b"250 2.0.0 Message accepted for delivery\r\n",
        )
        self.assertEqual(
            self.host.messages("alice@example.test"),
            [
                b"Return-Path: <x@elsewhere.test>\r\nDelivered-To: alice@example.test\r\n"
                + received(proto, "alice@example.test")
                + BODY_STORED
            ],
        )
        self.assertEqual(self.host.messages("bob@example.test"), [])

    def test_null_reverse_path(self) -> None:
        """RFC 5321 §4.4: a bounce (MAIL FROM:<>) is stored with Return-Path: <>."""
        proto, tr = self.connect()
        talk(proto, tr, b"MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nbounce\r\n.\r\n")
        self.assertEqual(
            self.host.messages("bob@example.test"),
            [
                b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n"
                + received(proto, "bob@example.test")
                + b"bounce\r\n"
            ],
        )

    def test_recipient_checks(self) -> None:
        """Port 25 recipients: an unknown local user is 550 5.1.1, a remote domain 554 5.7.1 (no
        open relay), an alias with a remote target 450 4.7.1 (no relay yet), an alias to local
        users 250."""
        proto, tr = self.connect()
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<x@elsewhere.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<someone@gmail.test>\r\n"
            b"RCPT TO:<fwd@example.test>\r\n"
            b"RCPT TO:<team@example.test>\r\n",
        )
        self.assertEqual(
            out,
            b"250 2.1.0 Sender OK\r\n"
            b"550 5.1.1 No such user here\r\n"
            b"554 5.7.1 Relay access denied\r\n"
            b"450 4.7.1 Relaying to remote domains is not available yet\r\n"
            b"250 2.1.5 Recipient OK\r\n",
        )

    def test_alias_delivers_to_each_user_once(self) -> None:
        """A message to an alias and one of its users is stored once for each user."""
        proto, tr = self.connect()
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<team@example.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nDATA\r\nhi all\r\n.\r\n",
        )
        self.assertTrue(out.endswith(b"250 2.0.0 Message accepted for delivery\r\n"))
        trace = (
            b"Received: from client.elsewhere.test ([192.0.2.7])\r\n"
            b"\tby mail.example.test with ESMTP id %s-1;\r\n\t%s\r\n"
            % (proto.session_id.encode(), DATE.encode())
        )
        expected = (
            b"Return-Path: <x@elsewhere.test>\r\nDelivered-To: %s\r\n" + trace + b"hi all\r\n"
        )
        self.assertEqual(
            self.host.messages("alice@example.test"), [expected % b"alice@example.test"]
        )
        self.assertEqual(self.host.messages("bob@example.test"), [expected % b"bob@example.test"])

    def test_starttls_then_delivery_says_esmtps(self) -> None:
        """RFC 3848: a message received after STARTTLS has 'with ESMTPS' in its Received header."""
        proto, tr = self.connect()
        talk(proto, tr, b"STARTTLS\r\n")
        assert isinstance(tr, TLSStringTransport)
        self.assertIs(tr.tls_context, TLS_CONTEXT)
        talk(
            proto,
            tr,
            b"EHLO client.elsewhere.test\r\nMAIL FROM:<x@elsewhere.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\nsecret\r\n.\r\n",
        )
        self.assertEqual(
            self.host.messages("bob@example.test"),
            [
                b"Return-Path: <x@elsewhere.test>\r\nDelivered-To: bob@example.test\r\n"
                + received(proto, "bob@example.test", "ESMTPS")
                + b"secret\r\n"
            ],
        )

    def test_postmaster_is_accepted_for_the_host_domain(self) -> None:
        """RFC 5321 §4.5.1: RCPT TO:<POSTMASTER> is accepted when the host name is a local
        domain."""
        self.host.store.add_alias("postmaster@example.test", ["alice@example.test"])
        proto, tr = self.connect(hostname="example.test")
        out = talk(proto, tr, b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<POSTMASTER>\r\n")
        self.assertEqual(out, b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n")

    def test_recipient_deleted_between_rcpt_and_data(self) -> None:
        """RFC 5321 §6.1: a recipient deleted between RCPT and DATA is refused with 550 5.1.1,
        not accepted and dropped."""
        self.host.store.add_user("carol@example.test", hash_password("c"))
        proto, tr = self.connect()
        talk(proto, tr, b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<carol@example.test>\r\n")
        self.host.store.delete_user("carol@example.test")
        out = talk(proto, tr, b"DATA\r\nhi\r\n.\r\n")
        # Nobody left to deliver to: refused, not acknowledged and dropped (RFC 5321 §6.1).
        self.assertTrue(out.endswith(b"550 5.1.1 No such user here\r\n"), out)
        self.assertEqual(self.host.messages("carol@example.test"), [])


class DiskFailureTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))

    def session_with(self, run: Any) -> tuple[SMTPSession, Any]:
        delivery = LocalDelivery(self.host.store, self.host.mail_dir, ChangeNotifier(), run)
        factory = inbound_factory(
            hostname="mail.example.test",
            store=self.host.store,
            delivery=delivery,
            tls=None,
            settings=SMTPSettings(max_message_size=10000),
            clock=self.host.clock,
        )
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO c\r\n")
        return proto, tr

    def test_full_disk_is_452(self) -> None:
        """RFC 3463: a full disk during delivery is 452 4.3.1 Insufficient system storage."""

        def full(f: Any, *args: Any) -> Deferred[Any]:
            return defer.fail(OSError(errno.ENOSPC, "No space left on device"))

        proto, tr = self.session_with(full)
        out = talk(
            proto, tr, b"MAIL FROM:<x@e.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nhi\r\n.\r\n"
        )
        self.assertTrue(out.endswith(b"452 4.3.1 Insufficient system storage\r\n"), out)

    def test_other_disk_error_is_451(self) -> None:
        """Another disk error during delivery is 451 4.3.0 and is logged."""

        def broken(f: Any, *args: Any) -> Deferred[Any]:
            return defer.fail(OSError(errno.EIO, "I/O error"))

        proto, tr = self.session_with(broken)
        out = talk(
            proto, tr, b"MAIL FROM:<x@e.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nhi\r\n.\r\n"
        )
        self.assertTrue(out.endswith(b"451 4.3.0 Local error in processing\r\n"), out)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
