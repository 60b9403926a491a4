"""Submission policy (twistedmail.smtp.submission) and SMTP AUTH (RFC 4954, 6409, 8314)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_smtp_server import (
    DATE,
    TLS_CONTEXT,
    Mailhost,
    b64,
    connect,
    plain,
    talk,
)
from twisted.logger import capturedLogs
from twisted.trial import unittest

from twistedmail.smtp.session import SMTPSession
from twistedmail.testing import submission_for

EHLO_TLS = (
    b"250-mail.example.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n"
)
ALICE = plain("alice@example.test", "alice-pw")


class SubmissionTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        self.host.store.add_alias("sales@example.test", ["alice@example.test"])

    def connect(self, implicit_tls: bool = True) -> tuple[SMTPSession, Any]:
        factory = submission_for(self.host, tls=TLS_CONTEXT, implicit_tls=implicit_tls)
        return connect(factory)

    def ready(self) -> tuple[SMTPSession, Any]:
        """Implicit TLS, after EHLO."""
        proto, tr = self.connect()
        self.assertEqual(talk(proto, tr, b"EHLO client\r\n"), EHLO_TLS)
        return proto, tr

    def logged_in(self) -> tuple[SMTPSession, Any]:
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"),
            b"235 2.7.0 Authentication successful\r\n",
        )
        return proto, tr


class StartTLSPortTests(SubmissionTestCase):
    def test_587_offers_starttls_and_auth_only_after_it(self) -> None:
        """RFC 3207 + RFC 4954 §4: on 587 EHLO offers STARTTLS and no AUTH; AUTH before TLS is
        530 5.7.0; after STARTTLS EHLO offers AUTH and it succeeds."""
        proto, tr = self.connect(implicit_tls=False)
        self.assertEqual(
            talk(proto, tr, b"EHLO client\r\n"),
            EHLO_TLS.replace(b"250 AUTH PLAIN LOGIN", b"250 STARTTLS"),
        )
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"),
            b"530 5.7.0 Must issue a STARTTLS command first\r\n",
        )
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(talk(proto, tr, b"EHLO client\r\n"), EHLO_TLS)
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"),
            b"235 2.7.0 Authentication successful\r\n",
        )

    def test_465_never_offers_starttls(self) -> None:
        """RFC 8314 §3.3: on implicit TLS (465) STARTTLS is 503 5.5.1 TLS already active."""
        proto, tr = self.ready()
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"503 5.5.1 TLS already active\r\n")


class AuthTests(SubmissionTestCase):
    def test_plain_with_initial_response(self) -> None:
        """RFC 4954 §4 + RFC 4616: AUTH PLAIN with an initial response logs in as the authcid."""
        proto, tr = self.logged_in()
        self.assertEqual(proto.user, "alice@example.test")

    def test_plain_without_initial_response(self) -> None:
        """RFC 4954 §4: AUTH PLAIN alone gets an empty 334 challenge; the response then logs in
        (235 2.7.0)."""
        proto, tr = self.ready()
        self.assertEqual(talk(proto, tr, b"AUTH PLAIN\r\n"), b"334 \r\n")
        self.assertEqual(
            talk(proto, tr, ALICE + b"\r\n"), b"235 2.7.0 Authentication successful\r\n"
        )

    def test_plain_login_name_is_case_insensitive(self) -> None:
        """A login name differing in case logs in as the stored lower-case address."""
        proto, tr = self.ready()
        out = talk(proto, tr, b"AUTH PLAIN " + plain("Alice@EXAMPLE.test", "alice-pw") + b"\r\n")
        self.assertEqual(out, b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(proto.user, "alice@example.test")

    def test_login(self) -> None:
        """AUTH LOGIN asks 334 Username: then 334 Password: (base64) and logs in."""
        proto, tr = self.ready()
        self.assertEqual(talk(proto, tr, b"AUTH LOGIN\r\n"), b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(
            talk(proto, tr, b64("bob@example.test") + b"\r\n"), b"334 UGFzc3dvcmQ6\r\n"
        )
        self.assertEqual(
            talk(proto, tr, b64("bob-pw") + b"\r\n"), b"235 2.7.0 Authentication successful\r\n"
        )
        self.assertEqual(proto.user, "bob@example.test")

    def test_login_with_initial_response(self) -> None:
        """AUTH LOGIN with the user name as initial response asks only for the password."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"AUTH login " + b64("bob@example.test") + b"\r\n"),
            b"334 UGFzc3dvcmQ6\r\n",
        )
        self.assertEqual(
            talk(proto, tr, b64("bob-pw") + b"\r\n"), b"235 2.7.0 Authentication successful\r\n"
        )

    def test_wrong_password(self) -> None:
        """RFC 4954 §6: a wrong password is 535 5.7.8, nobody is logged in, and the session goes
        on."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + plain("alice@example.test", "nope") + b"\r\n"),
            b"535 5.7.8 Authentication credentials invalid\r\n",
        )
        self.assertIsNone(proto.user)
        self.assertEqual(talk(proto, tr, b"NOOP\r\n"), b"250 2.0.0 OK\r\n")

    def test_unknown_user(self) -> None:
        """RFC 4954 §6: an unknown user gets the same 535 5.7.8 as a wrong password."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + plain("nobody@example.test", "x") + b"\r\n"),
            b"535 5.7.8 Authentication credentials invalid\r\n",
        )

    def test_proxy_authorization_is_refused(self) -> None:
        """RFC 4616 §2: an authzid naming another user is 535 5.7.8."""
        proto, tr = self.ready()
        response = plain("alice@example.test", "alice-pw", authzid="bob@example.test")
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + response + b"\r\n"),
            b"535 5.7.8 Authentication credentials invalid\r\n",
        )

    def test_same_authzid_is_fine(self) -> None:
        """RFC 4616 §2: an authzid equal to the authcid logs in."""
        proto, tr = self.ready()
        response = plain("alice@example.test", "alice-pw", authzid="alice@example.test")
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + response + b"\r\n"),
            b"235 2.7.0 Authentication successful\r\n",
        )

    def test_third_failure_closes(self) -> None:
        """The third failed AUTH in a session is 421 4.7.0 and closes the connection; pipelined
        commands after it are not answered."""
        proto, tr = self.ready()
        bad = b"AUTH PLAIN " + plain("alice@example.test", "nope") + b"\r\n"
        out = talk(proto, tr, bad * 3 + b"NOOP\r\n")
        self.assertEqual(
            out,
            b"535 5.7.8 Authentication credentials invalid\r\n" * 2
            + b"421 4.7.0 Too many failed authentication attempts\r\n",
        )
        self.assertTrue(tr.disconnecting)

    def test_cancel(self) -> None:
        """RFC 4954 §4: '*' cancels the exchange with 501 5.0.0 and the session goes on."""
        proto, tr = self.ready()
        talk(proto, tr, b"AUTH LOGIN\r\n")
        self.assertEqual(talk(proto, tr, b"*\r\n"), b"501 5.0.0 Authentication cancelled\r\n")
        self.assertEqual(talk(proto, tr, b"NOOP\r\n"), b"250 2.0.0 OK\r\n")

    def test_already_authenticated(self) -> None:
        """RFC 4954 §4: AUTH after a successful AUTH is 503 5.5.1."""
        proto, tr = self.logged_in()
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"),
            b"503 5.5.1 Already authenticated\r\n",
        )

    def test_auth_needs_ehlo(self) -> None:
        """AUTH before EHLO is 503 5.5.1 Send HELO/EHLO first."""
        proto, tr = self.connect()
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"), b"503 5.5.1 Send HELO/EHLO first\r\n"
        )

    def test_mechanisms(self) -> None:
        """RFC 4954 §4: an unknown mechanism is 504 5.5.4; AUTH without a mechanism or with two
        arguments is 501 5.5.4."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"AUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN a b\r\n"),
            b"504 5.5.4 Unrecognized authentication type\r\n"
            b"501 5.5.4 Syntax error in parameters or arguments\r\n"
            b"501 5.5.4 Syntax error in parameters or arguments\r\n",
        )

    def test_empty_initial_response(self) -> None:
        """RFC 4954 §4: "=" is an empty initial response, which is no PLAIN message
        (RFC 4616 §2): a failed authentication, as in IMAP and POP3."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN =\r\n"),
            b"535 5.7.8 Authentication credentials invalid\r\n",
        )

    def test_login_is_logged_without_the_password(self) -> None:
        """A failed and a successful AUTH each log one line with user and IP, and no log event
        holds the password or its base64."""
        with capturedLogs() as events:
            proto, tr = self.ready()
            talk(proto, tr, b"AUTH PLAIN " + plain("alice@example.test", "wrong-pw") + b"\r\n")
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n")
        logins = [e for e in events if e.get("service") == "smtp" and "user" in e]
        self.assertEqual(
            [(e["user"], e["ip"], e["log_format"].split(":")[0]) for e in logins],
            [
                ("alice@example.test", "192.0.2.7", "login failed"),
                ("alice@example.test", "192.0.2.7", "login ok"),
            ],
        )
        for event in events:
            text = repr(event)
            self.assertNotIn("alice-pw", text)
            self.assertNotIn("wrong-pw", text)
            self.assertNotIn(ALICE.decode(), text)

    def test_long_auth_line(self) -> None:
        """RFC 4954 §4: an over-long AUTH response line is 500 5.5.6 and the session goes on."""
        proto, tr = self.ready()
        talk(proto, tr, b"AUTH PLAIN\r\n")
        self.assertEqual(
            talk(proto, tr, b"A" * 20000 + b"\r\nNOOP\r\n"),
            b"500 5.5.6 Authentication exchange line is too long\r\n250 2.0.0 OK\r\n",
        )


class SenderAndRecipientTests(SubmissionTestCase):
    def test_mail_requires_auth(self) -> None:
        """RFC 6409 §4.3: MAIL on submission before AUTH is 530 5.7.0, so RCPT then has no
        transaction."""
        proto, tr = self.ready()
        self.assertEqual(
            talk(proto, tr, b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n"),
            b"530 5.7.0 Authentication required\r\n503 5.5.1 Need MAIL command first\r\n",
        )

    def test_sender_must_be_owned(self) -> None:
        """RFC 6409 §6.1: MAIL FROM must be the user's own address or an alias it receives
        (case-blind); another address or <> is 553 5.7.1."""
        proto, tr = self.logged_in()
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<bob@example.test>\r\nMAIL FROM:<>\r\n"
            b"MAIL FROM:<sales@example.test>\r\nRSET\r\nMAIL FROM:<ALICE@example.test>\r\n",
        )
        self.assertEqual(
            out,
            b"553 5.7.1 Sender address not owned by authenticated user\r\n"
            b"553 5.7.1 Sender address not owned by authenticated user\r\n"
            b"250 2.1.0 Sender OK\r\n"
            b"250 2.0.0 Reset state\r\n"
            b"250 2.1.0 Sender OK\r\n",
        )

    def test_auth_in_a_transaction(self) -> None:
        """RFC 4954 §4: AUTH during a mail transaction is 503 5.5.1."""
        proto, tr = self.logged_in()
        proto.user = None  # (as if AUTH were allowed again) the transaction check comes first
        talk(proto, tr, b"RSET\r\n")
        proto.has_sender = True
        self.assertEqual(
            talk(proto, tr, b"AUTH PLAIN " + ALICE + b"\r\n"),
            b"503 5.5.1 AUTH not permitted during a mail transaction\r\n",
        )

    def test_recipients(self) -> None:
        """Without a relay, a remote recipient is 450 4.7.1, an unknown local one 550 5.1.1, a
        local user 250."""
        proto, tr = self.logged_in()
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<alice@example.test>\r\n"
            b"RCPT TO:<friend@remote.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\n",
        )
        self.assertEqual(
            out,
            b"250 2.1.0 Sender OK\r\n"
            b"450 4.7.1 Relaying to remote domains is not available yet\r\n"
            b"550 5.1.1 No such user here\r\n"
            b"250 2.1.5 Recipient OK\r\n",
        )

    def test_submission_delivers_exact_bytes(self) -> None:
        """RFC 6409: a submitted message (with AUTH=<> and SIZE parameters) is stored byte for
        byte under Return-Path and a Received header naming ESMTPSA."""
        proto, tr = self.logged_in()
        message = (
            b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n"
        )
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<alice@example.test> AUTH=<> SIZE=100\r\nRCPT TO:<bob@example.test>\r\n"
            b"DATA\r\n" + message + b".\r\nQUIT\r\n",
        )
        self.assertEqual(
            out,
            b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
            b"250 2.0.0 Message accepted for delivery\r\n"
            b"221 2.0.0 Bye\r\n",
        )
        self.assertEqual(
            self.host.messages("bob@example.test"),
            [
                b"Return-Path: <alice@example.test>\r\n"
                b"Delivered-To: bob@example.test\r\n"
                b"Received: from client ([192.0.2.7])\r\n"
                b"\tby mail.example.test with ESMTPSA id %s-1\r\n"
                b"\tfor <bob@example.test>; %s\r\n"
                % (proto.session_id.encode(), DATE.encode())
                + message
            ],
        )

    def test_second_starttls_is_refused_and_keeps_the_login(self) -> None:
        """A second STARTTLS after login is 503 5.5.1 and the user stays logged in."""
        proto, tr = self.connect(implicit_tls=False)
        talk(proto, tr, b"EHLO c\r\nSTARTTLS\r\n")
        talk(proto, tr, b"EHLO c\r\nAUTH PLAIN " + ALICE + b"\r\n")
        self.assertEqual(proto.user, "alice@example.test")
        self.assertEqual(talk(proto, tr, b"STARTTLS\r\n"), b"503 5.5.1 TLS already active\r\n")
        self.assertEqual(proto.user, "alice@example.test")


class FromHeaderTests(SubmissionTestCase):
    """Issue 5: the From: header must name the authenticated user or one of their aliases."""

    def send(self, from_header: bytes) -> bytes:
        proto, tr = self.logged_in()
        return talk(
            proto,
            tr,
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            + from_header
            + b"To: bob@example.test\r\nSubject: s\r\n\r\nbody\r\n.\r\n",
        )

    def test_own_address_and_alias_accepted(self) -> None:
        """RFC 6409 §8: a From: of the user's own address or alias (case-blind), or no From:, is
        accepted and stored."""
        for header in (
            b"From: Alice <alice@example.test>\r\n",
            b"From: Sales <SALES@example.test>\r\n",
            b"",  # no From: at all is left to the client (RFC 6409 section 8 lets an MSA add it)
        ):
            self.assertTrue(
                self.send(header).endswith(b"250 2.0.0 Message accepted for delivery\r\n")
            )
        self.assertEqual(len(self.host.messages("bob@example.test")), 3)

    def test_someone_elses_address_refused_and_nothing_stored(self) -> None:
        """A From: header naming anyone else (also in a list, a second From:, obsolete syntax or
        a folded line) is 550 5.7.1 and nothing is stored."""
        for header in (
            b"From: Bob <bob@example.test>\r\n",
            b"From: alice@example.test, ceo@bank.test\r\n",
            b"From: alice@example.test\r\nFrom: ceo@bank.test\r\n",
            # RFC 5322 §4.5.3 obsolete syntax: white space before the colon is still From:
            # (our IMAP ENVELOPE, and MUAs, show it as the sender)
            b"FROM : Bob <bob@example.test>\r\n",
            b"From\t: bob@example.test\r\n",
            b"no colon on this line\r\nFrom: bob@example.test\r\n",  # email's parser stops
            b"From: alice@example.test,\r\n bob@example.test\r\n",
        ):
            self.assertTrue(
                self.send(header).endswith(
                    b"550 5.7.1 From: header address not owned by authenticated user\r\n"
                ),
                header,
            )
        self.assertEqual(self.host.messages("bob@example.test"), [])

    def test_check_can_be_disabled(self) -> None:
        """[submission] check_from_header = false: a From: of another address is accepted."""
        factory = submission_for(self.host, tls=TLS_CONTEXT, check_from_header=False)
        proto, tr = connect(factory)
        talk(proto, tr, b"EHLO client\r\nAUTH PLAIN " + ALICE + b"\r\n")
        out = talk(
            proto,
            tr,
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
            b"From: bob@example.test\r\n\r\nbody\r\n.\r\n",
        )
        self.assertTrue(out.endswith(b"250 2.0.0 Message accepted for delivery\r\n"))
