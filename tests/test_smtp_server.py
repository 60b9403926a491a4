"""The policy-free ESMTP session (twistedmail.smtp.session), driven over StringTransport.

This module also holds the small harness the other SMTP test modules import
(C{Mailhost}, C{TLSStringTransport}, C{connect}, C{talk}).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.auth import MailRealm, PasswordChecker
from twistedmail.delivery import LocalDelivery
from twistedmail.maildir import ChangeNotifier
from twistedmail.passwords import hash_password
from twistedmail.settings import SMTPSettings
from twistedmail.smtp.policy import Client, Envelope, SMTPReplyError
from twistedmail.smtp.session import SMTPSession
from twistedmail.smtp.trace import received_header
from twistedmail.testing import TLSStringTransport, run_now
from twistedmail.testing import sasl_plain as plain
from twistedmail.wire import SessionFactory

HOST = "mail.example.test"
PEER = IPv4Address("TCP", "192.0.2.7", 40000)
NOW = 1_800_000_000
DATE = "Fri, 15 Jan 2027 08:00:00 +0000"
PASSWORDS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}
TLS_CONTEXT: Any = object()  # a stand-in: the fake transport only records it


# -- harness shared by the SMTP test modules -------------------------------------------


class Mailhost:
    """A store with example.test (alice, bob), a Maildir tree and a delivery, in C{root}."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.root = root
        self.store = AccountStore(root / "accounts.sqlite")
        for address, password in PASSWORDS.items():
            self.store.add_user(address, hash_password(password))
        self.mail_dir = root / "mail"
        self.delivery = LocalDelivery(self.store, self.mail_dir, ChangeNotifier(), run_now)
        self.portal = Portal(MailRealm({}), [PasswordChecker(self.store, run_now)])
        self.clock = Clock()
        self.clock.advance(NOW)

    def messages(self, address: str) -> list[bytes]:
        """The contents of every message file in the address's INBOX (new/ and cur/)."""
        local, domain = address.split("@")
        box = self.mail_dir / domain / local
        subdirs = [box / sub for sub in ("new", "cur") if (box / sub).is_dir()]
        files = sorted(p for sub in subdirs for p in sub.iterdir())
        return [p.read_bytes() for p in files]


def connect(
    factory: ServerFactory, tls_capable: bool = True
) -> tuple[SMTPSession, StringTransport]:
    """A session from C{factory} on a fresh transport, greeting consumed."""
    proto = factory.buildProtocol(PEER)
    cls = TLSStringTransport if tls_capable else StringTransport
    transport = cls(peerAddress=PEER)
    proto.makeConnection(transport)
    transport.clear()
    return proto, transport


def talk(proto: SMTPSession, transport: StringTransport, data: bytes) -> bytes:
    """Feed C{data}; return what the session wrote in response."""
    transport.clear()
    proto.dataReceived(data)
    return transport.value()


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


# -- a policy that records what the session asks ----------------------------------------


class FakePolicy:
    service = "test"

    def __init__(self) -> None:
        self.senders: list[tuple[Client, Mailbox | None]] = []
        self.refused: set[str] = set()
        self.delivered: list[tuple[Envelope, bytes]] = []
        self.hold: list[Deferred[None]] | None = None
        self.error: BaseException | None = None

    def connected(self, client: Client) -> None:
        pass

    def postmaster(self, hostname: str) -> Mailbox | None:
        return None

    async def check_sender(self, client: Client, reverse_path: Mailbox | None) -> None:
        self.senders.append((client, reverse_path))

    async def check_recipient(self, client: Client, recipient: Mailbox) -> None:
        from twistedmail.reply import REPLY_550_NO_SUCH_USER

        if str(recipient) in self.refused:
            raise SMTPReplyError(REPLY_550_NO_SUCH_USER)

    async def accept_message(self, envelope: Envelope, message: bytes) -> None:
        if self.hold is not None:
            d: Deferred[None] = Deferred()
            self.hold.append(d)
            await d
        if self.error is not None:
            raise self.error
        self.delivered.append((envelope, message))


EHLO_PLAIN = (
    b"250-mail.example.test\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 1000\r\n"
    b"250-8BITMIME\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)


class SessionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.policy = FakePolicy()
        self.clock = Clock()
        self.clock.advance(NOW)

    def session(
        self,
        *,
        tls: Any = None,
        implicit_tls: bool = False,
        portal: Portal | None = None,
        max_message_size: int = 1000,
        max_recipients: int = SMTPSettings().max_recipients,
    ) -> tuple[SMTPSession, StringTransport]:
        factory = SessionFactory(
            SMTPSession,
            SMTPSettings(max_message_size=max_message_size, max_recipients=max_recipients),
            policy=self.policy,
            hostname=HOST,
            clock=self.clock,
            tls_context=None if implicit_tls else tls,
            implicit_tls=implicit_tls,
            portal=portal,
        )
        return connect(factory)

    def ready(self, **kw: Any) -> tuple[SMTPSession, StringTransport]:
        """A session after EHLO."""
        proto, tr = self.session(**kw)
        talk(proto, tr, b"EHLO client.example\r\n")
        return proto, tr


class GreetingAndEHLOTests(SessionTestCase):
    def test_greeting(self) -> None:
        """RFC 5321 §4.2: the session opens with 220, the host name and ESMTP."""
        factory = SessionFactory(
            SMTPSession,
            SMTPSettings(max_message_size=1000),
            policy=self.policy,
            hostname=HOST,
            clock=self.clock,
        )
        proto = factory.buildProtocol(PEER)
        tr = StringTransport(peerAddress=PEER)
        proto.makeConnection(tr)
        self.assertEqual(tr.value(), b"220 mail.example.test ESMTP twistedmail ready\r\n")

    def test_ehlo_without_tls_context(self) -> None:
        """RFC 5321 §4.1.1.1: EHLO without a certificate lists the extensions without STARTTLS or
        AUTH."""
        proto, tr = self.session()
        self.assertEqual(talk(proto, tr, b"EHLO client.example\r\n"), EHLO_PLAIN)

    def test_ehlo_offers_starttls_with_a_context_and_no_auth_before_tls(self) -> None:
        """RFC 3207 §4 + RFC 4954 §4: with a certificate EHLO offers STARTTLS and, before TLS, no
        AUTH."""
        proto, tr = self.session(tls=TLS_CONTEXT, portal=Mailhost(Path(self.mktemp())).portal)
        self.assertEqual(
            talk(proto, tr, b"EHLO client.example\r\n"),
            EHLO_PLAIN.replace(b"250 ENHANCEDSTATUSCODES", b"250-ENHANCEDSTATUSCODES")
            + b"250 STARTTLS\r\n",
        )

    def test_ehlo_on_implicit_tls_offers_auth_not_starttls(self) -> None:
        """RFC 8314 §3.3: on implicit TLS EHLO offers AUTH PLAIN LOGIN and not STARTTLS."""
        proto, tr = self.session(
            tls=TLS_CONTEXT, implicit_tls=True, portal=Mailhost(Path(self.mktemp())).portal
        )
        self.assertEqual(
            talk(proto, tr, b"EHLO client.example\r\n"),
            EHLO_PLAIN.replace(b"250 ENHANCEDSTATUSCODES", b"250-ENHANCEDSTATUSCODES")
            + b"250 AUTH PLAIN LOGIN\r\n",
        )

    def test_helo(self) -> None:
        """RFC 5321 §4.1.1.1: HELO is answered with 250 and the host name."""
        proto, tr = self.session()
        self.assertEqual(talk(proto, tr, b"HELO client.example\r\n"), b"250 mail.example.test\r\n")

    def test_helo_and_ehlo_need_an_argument(self) -> None:
        """RFC 5321 §4.1.1.1: HELO or EHLO without a domain, or with two words, is 501 5.5.4."""
        proto, tr = self.session()
        self.assertEqual(
            talk(proto, tr, b"HELO\r\nEHLO \r\nEHLO two words\r\n"),
            b"501 5.5.4 Syntax error in parameters or arguments\r\n" * 3,
        )

    def test_ehlo_resets_the_transaction(self) -> None:
        """RFC 5321 §4.1.4: a second EHLO clears the open transaction, so RCPT then needs MAIL
        (503 5.5.1)."""
        proto, tr = self.ready()
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual(
            talk(proto, tr, b"EHLO again\r\nRCPT TO:<x@y.test>\r\n"),
            EHLO_PLAIN + b"503 5.5.1 Need MAIL command first\r\n",
        )


class SimpleCommandTests(SessionTestCase):
    def test_noop(self) -> None:
        """RFC 5321 §4.1.1.9: NOOP, with or without an argument, is 250 2.0.0."""
        proto, tr = self.session()
        self.assertEqual(talk(proto, tr, b"NOOP\r\nnoop anything\r\n"), b"250 2.0.0 OK\r\n" * 2)

    def test_rset(self) -> None:
        """RFC 5321 §4.1.1.5: RSET (250 2.0.0) drops the transaction, so RCPT then needs MAIL."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\r\nRSET\r\nRCPT TO:<c@d.test>\r\n"),
            b"250 2.1.0 Sender OK\r\n"
            b"250 2.0.0 Reset state\r\n"
            b"503 5.5.1 Need MAIL command first\r\n",
        )

    def test_vrfy(self) -> None:
        """RFC 5321 §3.5.3: VRFY gets 252 (no verification, will attempt delivery); VRFY without
        an argument is 501 5.5.4."""
        proto, tr = self.session()
        self.assertEqual(
            talk(proto, tr, b"VRFY alice\r\nVRFY\r\n"),
            b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        )

    def test_expn_help_unknown(self) -> None:
        """RFC 5321 §4.2.4: EXPN is 502 5.5.1, HELP lists the commands, and an unknown, empty or
        non-ASCII command is 500 5.5.2."""
        proto, tr = self.session()
        self.assertEqual(
            talk(proto, tr, b"EXPN list\r\nHELP\r\nXYZZY\r\n\r\nB\xc3\xa4D\r\n"),
            b"502 5.5.1 Command not implemented\r\n"
            b"214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT\r\n"
            b"500 5.5.2 Command not recognized\r\n"
            b"500 5.5.2 Command not recognized\r\n"
            b"500 5.5.2 Command not recognized\r\n",
        )

    def test_quit(self) -> None:
        """RFC 5321 §4.1.1.10: QUIT gets 221 2.0.0 and closes; a pipelined command after it is
        not answered."""
        proto, tr = self.session()
        self.assertEqual(talk(proto, tr, b"QUIT\r\nNOOP\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(tr.disconnecting)

    def test_bare_lf_in_a_command_line(self) -> None:
        """RFC 5321 §2.3.8: a command line ending in a bare LF is 500 5.5.2 Bare CR or LF in
        command."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\n"),
            b"500 5.5.2 Bare CR or LF in command\r\n",
        )

    def test_idle_timeout(self) -> None:
        """RFC 5321 §4.5.3.2.7: each command restarts the 5-minute timer; when it runs out the
        server sends 421 4.4.2 and closes."""
        proto, tr = self.session()
        self.clock.advance(299)
        talk(proto, tr, b"NOOP\r\n")
        self.clock.advance(299)
        self.assertFalse(tr.disconnecting)
        tr.clear()
        self.clock.advance(1)
        self.assertEqual(tr.value(), b"421 4.4.2 Timeout, closing connection\r\n")
        self.assertTrue(tr.disconnecting)

    def test_auth_is_not_implemented_without_a_portal(self) -> None:
        """On port 25 (no portal) AUTH is 502 5.5.1 Command not implemented, even over TLS."""
        proto, tr = self.ready(tls=TLS_CONTEXT, implicit_tls=True)
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + plain("a@b.test", "x") + b"\r\n"),
            b"502 5.5.1 Command not implemented\r\n",
        )


class MailParameterTests(SessionTestCase):
    def mail(self, args: bytes) -> bytes:
        proto, tr = self.ready()
        return talk(proto, tr, b"MAIL FROM:" + args + b"\r\n")

    def test_mail_before_helo(self) -> None:
        """RFC 5321 §4.1.4: MAIL before HELO/EHLO is 503 5.5.1 and reaches no policy."""
        proto, tr = self.session()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n"), b"503 5.5.1 Send HELO/EHLO first\r\n"
        )
        self.assertEqual(self.policy.senders, [])

    def test_null_reverse_path(self) -> None:
        """RFC 5321 §4.5.5: MAIL FROM:<> (a bounce) is accepted with no reverse path."""
        self.assertEqual(self.mail(b"<>"), b"250 2.1.0 Sender OK\r\n")
        self.assertEqual(self.policy.senders[0][1], None)

    def test_size_within_limit(self) -> None:
        """RFC 1870 §6: a SIZE= declaration equal to the limit is accepted."""
        self.assertEqual(self.mail(b"<a@b.test> SIZE=1000"), b"250 2.1.0 Sender OK\r\n")

    def test_size_over_limit(self) -> None:
        """RFC 1870 §6.1: a SIZE= declaration over the limit is 552 5.3.4 before the policy is
        asked."""
        self.assertEqual(
            self.mail(b"<a@b.test> SIZE=1001"),
            b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        )
        self.assertEqual(self.policy.senders, [])

    def test_size_malformed(self) -> None:
        """RFC 1870 §5: a SIZE value that is missing, not digits, negative or over 20 digits is
        501 5.5.4."""
        for value in (b"SIZE=abc", b"SIZE=", b"SIZE", b"SIZE=-1", b"SIZE=" + b"9" * 21):
            self.assertEqual(
                self.mail(b"<a@b.test> " + value),
                b"501 5.5.4 Syntax error in parameters or arguments\r\n",
                value,
            )

    def test_body_values(self) -> None:
        """RFC 6152: BODY=8BITMIME and BODY=7BIT (case-blind) are accepted; BODY=BINARYMIME (not
        offered) is 555 5.5.4."""
        self.assertEqual(self.mail(b"<a@b.test> BODY=8BITMIME"), b"250 2.1.0 Sender OK\r\n")
        self.assertEqual(self.mail(b"<a@b.test> body=7bit"), b"250 2.1.0 Sender OK\r\n")
        self.assertEqual(
            self.mail(b"<a@b.test> BODY=BINARYMIME"),
            b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized\r\n",
        )

    def test_bad_parameter_value(self) -> None:
        """RFC 5321 §4.1.2 esmtp-value is printable ASCII: a BODY value with 8-bit octets
        (UTF-8 or not) is 501 5.5.4 (RFC 3463 §3.6 invalid command arguments; Postfix's
        "Bad ... parameter syntax"), not a bad sender; another parameter's is the generic
        501 5.5.4, and the policy is not asked."""
        for value in (b"BODY=\xff", b"BODY=\xc3\xa4", b"body=8BIT\xff", b"SIZE=1 BODY=\xff"):
            self.assertEqual(
                self.mail(b"<a@b.test> " + value),
                b"501 5.5.4 Bad BODY parameter syntax\r\n",
                value,
            )
        for value in (b"SIZE=\xff", b"X-Y=\xff", b"B\xffDY=7BIT"):
            self.assertEqual(
                self.mail(b"<a@b.test> " + value),
                b"501 5.5.4 Syntax error in parameters or arguments\r\n",
                value,
            )
        self.assertEqual(
            self.mail(b"<\xe4@b.test> BODY=\xff"), b"501 5.1.7 Bad sender address syntax\r\n"
        )
        self.assertEqual(self.policy.senders, [])

    def test_unknown_parameter(self) -> None:
        """RFC 5321 §4.1.1.11: an unknown or unoffered MAIL parameter (SMTPUTF8, AUTH=) is 555
        5.5.4."""
        for value in (b"FOO=1", b"SMTPUTF8", b"AUTH=<>"):
            self.assertEqual(
                self.mail(b"<a@b.test> " + value),
                b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized\r\n",
            )

    def test_duplicate_parameter(self) -> None:
        """A MAIL parameter given twice is 501 5.5.4."""
        self.assertEqual(
            self.mail(b"<a@b.test> SIZE=1 SIZE=2"),
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        )

    def test_bad_sender_syntax(self) -> None:
        """RFC 5321 §4.1.2: a reverse path without brackets, unclosed, with a source route, a
        space or a raw 8-bit byte is 501 5.1.7; UTF-8 without SMTPUTF8 is 553 5.6.7."""
        paths = (b"a@b.test", b"<a@b.test", b"<@relay.test;a@b.test>", b"<a b@c.test>")
        for path in (*paths, b"<\xe4@b.test>"):
            self.assertEqual(self.mail(path), b"501 5.1.7 Bad sender address syntax\r\n", path)
        # RFC 6531 §3.5: no SMTPUTF8 is offered, so a UTF-8 address is 553 5.6.7.
        self.assertEqual(
            self.mail(b"<\xc3\xa4@b.test>"), b"553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
        )

    def test_mail_syntax(self) -> None:
        """RFC 5321 §4.1.1.2: MAIL without FROM: is 501 5.5.4."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL TO:<a@b.test>\r\nMAIL\r\n"),
            b"501 5.5.4 Syntax error in parameters or arguments\r\n" * 2,
        )

    def test_nested_mail(self) -> None:
        """RFC 5321 §4.1.4: a second MAIL inside a transaction is 503 5.5.1 Sender already
        specified."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\r\nMAIL FROM:<c@b.test>\r\n"),
            b"250 2.1.0 Sender OK\r\n503 5.5.1 Sender already specified\r\n",
        )


class RecipientTests(SessionTestCase):
    def test_rcpt_before_mail(self) -> None:
        """RFC 5321 §4.1.4: RCPT before MAIL is 503 5.5.1."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<a@b.test>\r\n"), b"503 5.5.1 Need MAIL command first\r\n"
        )

    def test_rcpt_syntax_and_parameters(self) -> None:
        """RFC 5321 §4.1.1.3: RCPT TO:<> or without brackets is 501 5.1.3, a parameter (NOTIFY=)
        is 555 5.5.4, and RCPT alone is 501 5.5.4."""
        proto, tr = self.ready()
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual(
            talk(
                proto,
                tr,
                b"RCPT TO:<>\r\nRCPT TO:c@d.test\r\nRCPT TO:<c@d.test> NOTIFY=NEVER\r\nRCPT\r\n",
            ),
            b"501 5.1.3 Bad address syntax\r\n"
            b"501 5.1.3 Bad address syntax\r\n"
            b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized\r\n"
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        )

    def test_bad_parameter_value(self) -> None:
        """RFC 5321 §4.1.2 esmtp-value is printable ASCII: a NOTIFY value with 8-bit octets
        is 501 5.5.4 (RFC 3463 §3.6; Postfix's "Bad NOTIFY parameter syntax"), not a bad
        address, also after <Postmaster>, and no recipient is added."""
        proto, tr = self.ready()
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual(
            talk(
                proto,
                tr,
                b"RCPT TO:<c@d.test> NOTIFY=\xff\r\n"
                b"RCPT TO:<c@d.test> NOTIFY=SUCCESS,\xc3\xa4\r\n"
                b"RCPT TO:<Postmaster> NOTIFY=\xff\r\n"
                b"RCPT TO:<\xe4@d.test> NOTIFY=\xff\r\n",
            ),
            b"501 5.5.4 Bad NOTIFY parameter syntax\r\n" * 3 + b"501 5.1.3 Bad address syntax\r\n",
        )
        self.assertEqual(proto.recipients, [])

    def test_refused_recipient(self) -> None:
        """A recipient the policy refuses is 550 5.1.1 and is not added, so DATA then needs a
        recipient (503)."""
        self.policy.refused.add("nobody@b.test")
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@b.test>\r\nDATA\r\n"),
            b"250 2.1.0 Sender OK\r\n"
            b"550 5.1.1 No such user here\r\n"
            b"503 5.5.1 Need RCPT command first\r\n",
        )

    def test_too_many_recipients(self) -> None:
        """RFC 5321 §4.5.3.1.10: past 100 recipients RCPT is 452 4.5.3 Too many recipients
        (with the limit at 100, the least RFC 5321 §4.5.3.1.8 allows)."""
        proto, tr = self.ready(max_recipients=100)
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n")
        out = talk(proto, tr, b"".join(b"RCPT TO:<u%d@b.test>\r\n" % i for i in range(101)))
        self.assertEqual(
            out,
            b"250 2.1.5 Recipient OK\r\n" * 100 + b"452 4.5.3 Too many recipients\r\n",
        )

    def test_postmaster_without_domain(self) -> None:
        """RFC 5321 §4.5.1: RCPT TO:<Postmaster> with no domain is accepted as postmaster of the
        server's host name."""
        proto, tr = self.ready()
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n")
        out = talk(proto, tr, b"RCPT TO:<Postmaster>\r\n")
        self.assertEqual(out, b"250 2.1.5 Recipient OK\r\n")
        self.assertEqual(proto.recipients, [Mailbox("postmaster", "mail.example.test")])

    def test_duplicate_recipient_kept_once(self) -> None:
        """A recipient given twice, differing only in letter case, is kept once."""
        proto, tr = self.ready()
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<C@D.test>\r\n")
        self.assertEqual(proto.recipients, [Mailbox("c", "d.test")])


TRANSACTION = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
ACCEPTED_UP_TO_DATA = (
    b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
)


class DataTests(SessionTestCase):
    def test_message_reaches_the_policy_unstuffed_with_received(self) -> None:
        """RFC 5321 §4.5.2 + §4.4: the policy gets the envelope, the transaction id and the
        message with the dots unstuffed under a Received header."""
        proto, tr = self.ready()
        out = talk(
            proto, tr, TRANSACTION + b"Subject: hi\r\n\r\n..leading dot\r\n..\r\nend\r\n.\r\n"
        )
        self.assertEqual(out, ACCEPTED_UP_TO_DATA + b"250 2.0.0 Message accepted for delivery\r\n")
        ((envelope, message),) = self.policy.delivered
        self.assertEqual(envelope.reverse_path, Mailbox("a", "b.test"))
        self.assertEqual(envelope.recipients, (Mailbox("c", "d.test"),))
        self.assertEqual(envelope.transaction_id, proto.session_id + "-1")
        self.assertEqual(
            message,
            b"Received: from client.example ([192.0.2.7])\r\n"
            b"\tby mail.example.test with ESMTP id " + proto.session_id.encode() + b"-1\r\n"
            b"\tfor <c@d.test>; " + DATE.encode() + b"\r\n"
            b"Subject: hi\r\n\r\n.leading dot\r\n.\r\nend\r\n",
        )

    def test_data_needs_mail_and_rcpt_and_no_argument(self) -> None:
        """RFC 5321 §4.1.4: DATA without MAIL or without RCPT is 503 5.5.1, and DATA with an
        argument is 501 5.5.4."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(
                proto,
                tr,
                b"DATA\r\nMAIL FROM:<a@b.test>\r\nDATA\r\nRCPT TO:<c@d.test>\r\nDATA x\r\n",
            ),
            b"503 5.5.1 Need MAIL command first\r\n"
            b"250 2.1.0 Sender OK\r\n"
            b"503 5.5.1 Need RCPT command first\r\n"
            b"250 2.1.5 Recipient OK\r\n"
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        )

    def test_size_enforced_during_data(self) -> None:
        """RFC 1870 §6.3: a message over the limit is 552 5.3.4 after the dot, nothing is
        delivered, and the session goes on."""
        proto, tr = self.ready(max_message_size=20)
        out = talk(proto, tr, TRANSACTION + b"0123456789012345678\r\nx\r\n.\r\nNOOP\r\n")
        self.assertEqual(
            out,
            ACCEPTED_UP_TO_DATA
            + b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
            + b"250 2.0.0 OK\r\n",
        )
        self.assertEqual(self.policy.delivered, [])

    def test_size_exactly_at_the_limit(self) -> None:
        """RFC 1870: a message of exactly the limit (CRLFs counted) is accepted."""
        proto, tr = self.ready(max_message_size=21)
        out = talk(proto, tr, TRANSACTION + b"0123456789012345678\r\n.\r\n")
        self.assertEqual(out, ACCEPTED_UP_TO_DATA + b"250 2.0.0 Message accepted for delivery\r\n")

    def test_bare_lf_fails_the_transaction(self) -> None:
        """RFC 5321 §2.3.8: a bare LF in DATA is refused with 550 5.6.0 and nothing is delivered."""
        proto, tr = self.ready()
        out = talk(proto, tr, TRANSACTION + b"a\nb\r\n.\r\n")
        self.assertEqual(out, ACCEPTED_UP_TO_DATA + b"550 5.6.0 Bare CR or LF in message data\r\n")
        self.assertEqual(self.policy.delivered, [])

    def test_transaction_is_reset_after_the_dot(self) -> None:
        """RFC 5321 §4.1.1.4: after the end of DATA the transaction is over, so RCPT needs a new
        MAIL."""
        proto, tr = self.ready()
        talk(proto, tr, TRANSACTION + b"x\r\n.\r\n")
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<c@d.test>\r\n"), b"503 5.5.1 Need MAIL command first\r\n"
        )

    def test_second_transaction_gets_a_new_id(self) -> None:
        """Each transaction of a session gets the id session-N, counting from 1."""
        proto, tr = self.ready()
        talk(proto, tr, TRANSACTION + b"x\r\n.\r\n" + TRANSACTION + b"y\r\n.\r\n")
        ids = [e.transaction_id for e, _ in self.policy.delivered]
        self.assertEqual(ids, [proto.session_id + "-1", proto.session_id + "-2"])

    def test_policy_refusal_after_data(self) -> None:
        """A policy refusal after DATA is sent as its own reply (452 4.3.1 Insufficient system
        storage)."""
        from twistedmail.reply import REPLY_452_STORAGE

        self.policy.error = SMTPReplyError(REPLY_452_STORAGE)
        proto, tr = self.ready()
        out = talk(proto, tr, TRANSACTION + b"x\r\n.\r\n")
        self.assertEqual(out, ACCEPTED_UP_TO_DATA + b"452 4.3.1 Insufficient system storage\r\n")

    def test_unexpected_error_in_delivery_is_451(self) -> None:
        """A bug in delivery answers 451 4.3.0, is logged once, and the session goes on."""
        self.policy.error = RuntimeError("disk on fire")
        proto, tr = self.ready()
        out = talk(proto, tr, TRANSACTION + b"x\r\n.\r\nNOOP\r\n")
        self.assertEqual(
            out,
            ACCEPTED_UP_TO_DATA + b"451 4.3.0 Local error in processing\r\n250 2.0.0 OK\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unexpected_error_in_a_command_is_451(self) -> None:
        """A bug in a command's policy check answers 451 4.3.0, is logged once, and the session
        goes on."""

        async def broken(client: Client, reverse_path: Mailbox | None) -> None:
            raise KeyError("bug")

        self.policy.check_sender = broken  # type: ignore[method-assign]
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\r\nNOOP\r\n"),
            b"451 4.3.0 Local error in processing\r\n250 2.0.0 OK\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class PipeliningTests(SessionTestCase):
    def test_replies_stay_in_order_while_delivery_runs(self) -> None:
        """RFC 2920 §3.1: while a delivery runs the session stops reading, and the replies to
        pipelined commands come after the delivery's, in order."""
        self.policy.hold = []
        proto, tr = self.ready()
        out = talk(proto, tr, TRANSACTION + b"x\r\n.\r\nNOOP\r\nMAIL FROM:<e@f.test>\r\nQUIT\r\n")
        self.assertEqual(out, ACCEPTED_UP_TO_DATA)
        self.assertEqual(tr.producerState, "paused")
        tr.clear()
        self.policy.hold[0].callback(None)
        self.assertEqual(
            tr.value(),
            b"250 2.0.0 Message accepted for delivery\r\n"
            b"250 2.0.0 OK\r\n"
            b"250 2.1.0 Sender OK\r\n"
            b"221 2.0.0 Bye\r\n",
        )
        self.assertTrue(tr.disconnecting)

    def test_input_arriving_while_paused_is_held(self) -> None:
        """Input arriving while a delivery runs is answered only after the delivery's reply, then
        reading resumes."""
        self.policy.hold = []
        proto, tr = self.ready()
        talk(proto, tr, TRANSACTION + b"x\r\n.\r\n")
        self.assertEqual(talk(proto, tr, b"NOOP\r\n"), b"")
        tr.clear()
        self.policy.hold[0].callback(None)
        self.assertEqual(tr.value(), b"250 2.0.0 Message accepted for delivery\r\n250 2.0.0 OK\r\n")
        self.assertEqual(tr.producerState, "producing")

    def test_refusals_and_errors_after_waiting(self) -> None:
        """A command that waits (run through a Deferred, not inline): a refusal raised
        after the wait is sent as its reply, a wait that fails reaches the command's
        coroutine at its await (here: answered 451 4.3.0 and logged), a command that waits
        twice still gets its one reply; the session goes on after each."""
        from twistedmail.reply import REPLY_452_STORAGE

        self.policy.hold = []
        proto, tr = self.ready()
        self.policy.error = SMTPReplyError(REPLY_452_STORAGE)
        talk(proto, tr, TRANSACTION + b"x\r\n.\r\nNOOP\r\n")
        tr.clear()
        self.policy.hold.pop().callback(None)
        self.assertEqual(tr.value(), b"452 4.3.1 Insufficient system storage\r\n250 2.0.0 OK\r\n")

        self.policy.error = None
        talk(proto, tr, TRANSACTION + b"x\r\n.\r\n")
        tr.clear()
        self.policy.hold.pop().errback(RuntimeError("thread died"))
        self.assertEqual(tr.value(), b"451 4.3.0 Local error in processing\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

        waits: list[Deferred[int]] = []

        async def twice(client: Client, recipient: Mailbox) -> None:
            for _ in range(2):
                d: Deferred[int] = Deferred()
                waits.append(d)
                self.assertEqual(await d, 7)

        self.policy.check_recipient = twice  # type: ignore[method-assign]
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nNOOP\r\n"),
            b"250 2.1.0 Sender OK\r\n",
        )
        waits[0].callback(7)
        self.assertEqual(len(waits), 2)
        tr.clear()
        waits[1].callback(7)
        self.assertEqual(tr.value(), b"250 2.1.5 Recipient OK\r\n250 2.0.0 OK\r\n")

    def test_connection_lost_during_delivery(self) -> None:
        """A connection lost during delivery gets no replies written, and the message is still
        stored."""
        self.policy.hold = []
        proto, tr = self.ready()
        talk(proto, tr, TRANSACTION + b"x\r\n.\r\nNOOP\r\n")
        proto.connectionLost(None)
        tr.clear()
        self.policy.hold[0].callback(None)
        self.assertEqual(tr.value(), b"")
        self.assertEqual(len(self.policy.delivered), 1)  # the message was still stored


class StartTLSTests(SessionTestCase):
    def test_starttls(self) -> None:
        """RFC 3207 §4: STARTTLS gets 220 2.0.0 and starts TLS; §4.2: HELO and the transaction
        are then forgotten, and a second STARTTLS is 503."""
        proto, tr = self.ready(tls=TLS_CONTEXT)
        talk(proto, tr, b"MAIL FROM:<a@b.test>\r\n")
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"220 2.0.0 Ready to start TLS\r\n")
        assert isinstance(tr, TLSStringTransport)
        self.assertIs(tr.tls_context, TLS_CONTEXT)
        self.assertTrue(proto.tls)
        # RFC 3207 §4.2: HELO and the transaction are forgotten.
        self.assertEqual(
            talk(proto, tr, b"RCPT TO:<c@d.test>\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\n"),
            b"503 5.5.1 Need MAIL command first\r\n"
            b"503 5.5.1 Send HELO/EHLO first\r\n"
            b"503 5.5.1 TLS already active\r\n",
        )
        self.assertEqual(
            talk(proto, tr, b"EHLO client.example\r\n"),
            EHLO_PLAIN,
        )

    def test_starttls_unavailable(self) -> None:
        """RFC 3207 §4: STARTTLS without a certificate is 454 4.7.0 TLS not available."""
        proto, tr = self.ready()
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"454 4.7.0 TLS not available\r\n")

    def test_starttls_with_an_argument(self) -> None:
        """RFC 3207 §4: STARTTLS with an argument is 501 5.5.4 and TLS is not started."""
        proto, tr = self.ready(tls=TLS_CONTEXT)
        self.assertEqual(
            talk(proto, tr, b"STARTTLS now\r\n"),
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        )
        self.assertFalse(proto.tls)

    def test_starttls_on_implicit_tls(self) -> None:
        """STARTTLS on implicit TLS (465) is 503 5.5.1 TLS already active."""
        proto, tr = self.ready(tls=TLS_CONTEXT, implicit_tls=True)
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"503 5.5.1 TLS already active\r\n")


def _envelope(**kw: Any) -> Envelope:
    client = Client(
        session_id="s1",
        peer_ip=kw.pop("peer_ip", "192.0.2.7"),
        helo=kw.pop("helo", "client.example"),
        esmtp=kw.pop("esmtp", True),
        tls=kw.pop("tls", False),
        user=kw.pop("user", None),
    )
    return Envelope(
        client=client,
        reverse_path=None,
        recipients=kw.pop("recipients", (Mailbox("c", "d.test"),)),
        body="7BIT",
        transaction_id="s1-1",
        received_at=NOW,
    )


class ReceivedHeaderTests(unittest.TestCase):
    def test_with_protocols(self) -> None:
        """RFC 3848: the Received 'with' is SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA after
        HELO/EHLO, TLS and AUTH."""
        cases = [
            ({"esmtp": False}, "SMTP"),
            ({}, "ESMTP"),
            ({"tls": True}, "ESMTPS"),
            ({"user": "a@b.test"}, "ESMTPA"),
            ({"tls": True, "user": "a@b.test"}, "ESMTPSA"),
        ]
        for kw, protocol in cases:
            self.assertEqual(
                received_header(_envelope(**kw), HOST),
                b"Received: from client.example ([192.0.2.7])\r\n"
                b"\tby mail.example.test with %s id s1-1\r\n"
                b"\tfor <c@d.test>; %s\r\n" % (protocol.encode(), DATE.encode()),
            )

    def test_several_recipients_are_not_named(self) -> None:
        """RFC 5321 §4.4: with several recipients the Received header has no 'for' clause."""
        env = _envelope(recipients=(Mailbox("c", "d.test"), Mailbox("e", "d.test")))
        self.assertEqual(
            received_header(env, HOST),
            b"Received: from client.example ([192.0.2.7])\r\n"
            b"\tby mail.example.test with ESMTP id s1-1;\r\n"
            b"\t" + DATE.encode() + b"\r\n",
        )

    def test_date_follows_the_clock(self) -> None:
        """RFC 5322 §3.3: the date-time is that of the message's second (it is made once a
        second and reused: the next second gets its own)."""
        for at, date in (
            (NOW + 0.9, DATE),
            (NOW + 1, DATE.replace(":00 +0000", ":01 +0000")),
            (NOW + 0.2, DATE),
        ):
            env = attrs.evolve(_envelope(), received_at=at)
            self.assertTrue(received_header(env, HOST).endswith(b"; " + date.encode() + b"\r\n"))

    def test_ipv6_and_odd_helo(self) -> None:
        """RFC 5321 §4.4: an IPv6 peer is written [IPv6:...], a HELO that is not a domain becomes
        'unknown', and an address literal HELO is kept."""
        env = _envelope(peer_ip="2001:db8::7", helo="bad(helo)")
        self.assertTrue(
            received_header(env, HOST).startswith(
                b"Received: from unknown ([IPv6:2001:db8::7])\r\n"
            )
        )
        env = _envelope(helo="[192.0.2.7]")
        self.assertTrue(
            received_header(env, HOST).startswith(b"Received: from [192.0.2.7] ([192.0.2.7])\r\n")
        )
