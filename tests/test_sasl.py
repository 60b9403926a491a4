"""One SASL parser (twistedmail.sasl) and one login path (twistedmail.auth.login): the
mechanisms alone, then the same table of hostile inputs driven against SMTP AUTH (RFC 4954),
IMAP AUTHENTICATE (RFC 3501 §6.2.2, RFC 5530) and POP3 AUTH (RFC 5034), each answering with
its own reply for the same outcome."""

from __future__ import annotations

import base64
from collections.abc import Callable

from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_throttle import ALICE, PASSWORD, World, transport_from
from twistedmail import sasl
from twistedmail.imap.server import IMAPServer
from twistedmail.pop3 import POP3Server
from twistedmail.testing import submission_for

CLIENT = "192.0.2.55"


def b64(message: bytes) -> bytes:
    return base64.b64encode(message)


def plain(authzid: str, authcid: str, password: str) -> bytes:
    return b64(f"{authzid}\0{authcid}\0{password}".encode())


class MechanismTests(unittest.TestCase):
    """twistedmail.sasl alone: challenges, credentials and the three ways to fail."""

    def test_plain_without_initial_response(self) -> None:
        """RFC 4616 §2: PLAIN starts with an empty challenge, then takes the message."""
        exchange = sasl.Exchange(b"plain")
        self.assertEqual(exchange.start(None), b"")
        self.assertEqual(
            exchange.respond(plain("", ALICE, PASSWORD) + b"\r\n"),
            sasl.Credentials(ALICE, PASSWORD, "", "PLAIN"),
        )

    def test_plain_authzid_equal_to_authcid(self) -> None:
        """RFC 4616 §2: an authzid naming the same account (case aside) is no proxying."""
        outcome = sasl.Exchange("PLAIN").start(plain("Alice@Example.TEST", ALICE, PASSWORD))
        self.assertEqual(outcome, sasl.Credentials(ALICE, PASSWORD, "Alice@Example.TEST", "PLAIN"))

    def test_login_two_challenges(self) -> None:
        """LOGIN asks "Username:" then "Password:", each answered in base64."""
        exchange = sasl.Exchange("LOGIN")
        self.assertEqual(exchange.start(None), b"Username:")
        self.assertEqual(exchange.respond(b64(ALICE.encode())), b"Password:")
        self.assertEqual(
            exchange.respond(b64(PASSWORD.encode())),
            sasl.Credentials(ALICE, PASSWORD, "", "LOGIN"),
        )
        exchange = sasl.Exchange("LOGIN")
        self.assertEqual(exchange.start(b64(ALICE.encode())), b"Password:")  # initial response

    def test_cancel_only_in_answer_to_a_challenge(self) -> None:
        """RFC 4954 §4 / RFC 3501 §6.2.2: "*" cancels; as an initial response it is no
        base64 (RFC 4959 §3 initial-response = base64 / "=")."""
        self.assertRaises(sasl.Cancelled, sasl.Exchange("PLAIN").respond, b"*")
        login = sasl.Exchange("LOGIN")
        login.start(None)
        login.respond(b64(b"alice@example.test"))
        self.assertRaises(sasl.Cancelled, login.respond, b" * \r\n")
        self.assertRaises(sasl.BadBase64, sasl.Exchange("PLAIN").start, b"*")

    def test_unsupported(self) -> None:
        """A mechanism not implemented, or not offered by the protocol, is refused."""
        self.assertRaises(sasl.UnsupportedMechanism, sasl.Exchange, b"CRAM-MD5")
        self.assertRaises(sasl.UnsupportedMechanism, sasl.Exchange, "LOGIN", ("PLAIN",))

    def test_malformed_messages(self) -> None:
        """RFC 4616 §2: exactly two NULs, non-empty authcid and passwd, UTF-8; no proxying."""
        for message in (
            b"",
            b"alice@example.testalice-pw",
            b"\0alice@example.test",
            b"\0alice@example.test\0pw\0extra",
            b"\0alice@example.test\0",
            b"\0\0alice-pw",
            b"bob@example.test\0alice@example.test\0alice-pw",
            b"\0alice@example.test\0\xff\xfe",
            b"\0alice@example.test\0" + b"x" * (sasl.MAX_FIELD_LENGTH + 1),
        ):
            with self.subTest(message=message[:60]):
                self.assertRaises(sasl.Malformed, sasl.Exchange("PLAIN").respond, b64(message))
        self.assertRaises(sasl.Malformed, sasl.Exchange("PLAIN").start, b"=")

    def test_malformed_keeps_the_user_for_the_log(self) -> None:
        """The log line names the account a malformed message was for, when it has one."""
        with self.assertRaises(sasl.Malformed) as caught:
            sasl.Exchange("PLAIN").respond(b64(b"\0alice@example.test\0"))
        self.assertEqual(caught.exception.user, ALICE)

    def test_credentials_of_login_commands(self) -> None:
        """IMAP LOGIN and POP3 USER/PASS go through the same field rules."""
        self.assertEqual(sasl.credentials(b"a@b.test", b"pw"), sasl.Credentials("a@b.test", "pw"))
        for user, password in ((b"", b"pw"), (b"a@b.test", b""), (b"a\0b", b"pw"), (b"\xff", b"p")):
            self.assertRaises(sasl.Malformed, sasl.credentials, user, password)


# The hostile-input table: (name, initial response or None, lines after the challenge),
# and the outcome each must give.
CANCELLED, BAD_BASE64, FAILED = "cancelled", "bad base64", "failed"

REPLIES = {
    "smtp": {
        CANCELLED: b"501 5.0.0 Authentication cancelled",  # RFC 4954 §4
        BAD_BASE64: b"501 5.5.2 Cannot decode response",  # RFC 4954 §4, §6
        FAILED: b"535 5.7.8 Authentication credentials invalid",  # RFC 4954 §6
    },
    "imap": {
        CANCELLED: b"a BAD Authentication cancelled",  # RFC 3501 §6.2.2
        BAD_BASE64: b"a BAD Invalid base64 response",  # RFC 3501 §6.2.2
        FAILED: b"a NO [AUTHENTICATIONFAILED] Authentication failed",  # RFC 5530 §3
    },
    "pop3": {
        CANCELLED: b"-ERR authentication cancelled",  # RFC 5034 §4
        BAD_BASE64: b"-ERR invalid base64 data",  # RFC 5034 §4
        FAILED: b"-ERR [AUTH] Authentication failed",  # RFC 3206 §4
    },
}

HOSTILE: list[tuple[str, bytes, str]] = [
    ("bad base64", b"!!!not-base64", BAD_BASE64),
    ("base64 without padding", b64(b"\0alice@example.test\0alice-pw").rstrip(b"="), BAD_BASE64),
    ("missing NULs", b64(b"alice@example.testalice-pw"), FAILED),
    ("one NUL", b64(b"alice@example.test\0alice-pw"), FAILED),
    ("extra NULs", b64(b"\0alice@example.test\0alice-pw\0"), FAILED),
    ("empty password", b64(b"\0alice@example.test\0"), FAILED),
    ("empty authcid", b64(b"\0\0alice-pw"), FAILED),
    ("authzid mismatch", plain("bob@example.test", ALICE, PASSWORD), FAILED),
    ("over-long password", plain("", ALICE, "x" * 1025), FAILED),
    ("non-UTF-8", b64(b"\0alice@example.test\0alice-pw\xff"), FAILED),
    ("wrong password", plain("", ALICE, "wrong"), FAILED),
]


class HostileInputTests(unittest.TestCase):
    """The same bad inputs against the three protocols: the same outcome, each protocol's
    reply; the session stays usable, a malformed message logs a failed login but is not
    counted by the throttle (no password was tried)."""

    def setUp(self) -> None:
        self.world = World(self)

    def session(self, service: str) -> tuple[Protocol, Callable[[bytes], list[bytes]]]:
        """A logged-out session over implicit TLS from CLIENT; returns it and C{send(data)}
        -> the reply lines."""
        clock = self.world.clock
        proto: Protocol
        if service == "smtp":
            proto = submission_for(self.world).buildProtocol(None)
        elif service == "imap":
            proto = IMAPServer(
                portal=self.world.portal,
                tls=None,
                implicit_tls=True,
                clock=clock,
            )
        else:
            proto = POP3Server(portal=self.world.portal, tls=None, implicit_tls=True, clock=clock)
        transport = transport_from(CLIENT)
        proto.makeConnection(transport)
        self.addCleanup(proto.connectionLost, Failure(ConnectionError("done")))

        def send(data: bytes) -> list[bytes]:
            transport.clear()
            proto.dataReceived(data)
            clock.advance(16)  # any throttle delay
            return transport.value().splitlines()

        if service == "smtp":
            send(b"EHLO client\r\n")
        return proto, send

    def start(self, service: str, initial: bytes | None = None) -> bytes:
        command = {"smtp": b"AUTH PLAIN", "imap": b"a AUTHENTICATE PLAIN", "pop3": b"AUTH PLAIN"}
        line = command[service] + (b" " + initial if initial is not None else b"") + b"\r\n"
        return line

    def test_table_as_initial_response(self) -> None:
        """Each input sent with the command (RFC 4954 §4, RFC 4959, RFC 5034 §4)."""
        for service in ("smtp", "imap", "pop3"):
            for name, response, outcome in HOSTILE:
                with self.subTest(service=service, input=name):
                    _, send = self.session(service)
                    self.assertEqual(
                        send(self.start(service, response)), [REPLIES[service][outcome]]
                    )

    def test_table_after_the_challenge(self) -> None:
        """Each input sent in answer to the empty PLAIN challenge ("334 " / "+ ")."""
        challenge = {"smtp": b"334 ", "imap": b"+ ", "pop3": b"+ "}
        for service in ("smtp", "imap", "pop3"):
            for name, response, outcome in [*HOSTILE, ("cancel", b"*", CANCELLED)]:
                with self.subTest(service=service, input=name):
                    _, send = self.session(service)
                    self.assertEqual(send(self.start(service)), [challenge[service]])
                    self.assertEqual(send(response + b"\r\n"), [REPLIES[service][outcome]])

    def test_empty_initial_response(self) -> None:
        """RFC 4954 §4 / RFC 4959 / RFC 5034 §4: "=" is an empty message, no PLAIN one."""
        for service in ("smtp", "imap", "pop3"):
            _, send = self.session(service)
            self.assertEqual(send(self.start(service, b"=")), [REPLIES[service][FAILED]])

    def test_session_stays_usable_and_logs_in_afterwards(self) -> None:
        """After every refusal the next, correct, AUTH logs in on the same connection."""
        ok = {
            "smtp": b"235 2.7.0 Authentication successful",
            "imap": b"a OK [CAPABILITY",
            "pop3": b"+OK Logged in",
        }
        for service in ("smtp", "imap", "pop3"):
            _, send = self.session(service)
            send(self.start(service, b"!!!"))
            send(self.start(service, b64(b"no-nuls")))
            send(self.start(service))
            send(b"*\r\n")
            [reply] = send(self.start(service, plain("", ALICE, PASSWORD)))
            self.assertTrue(reply.startswith(ok[service]), (service, reply))

    def test_malformed_is_logged_not_counted(self) -> None:
        """A malformed message logs "login failed" (for fail2ban) with the user it named,
        but adds no throttle delay; a wrong password does both."""
        for service in ("smtp", "imap", "pop3"):
            _, send = self.session(service)
            with capturedLogs() as events:
                send(self.start(service, b64(b"\0alice@example.test\0")))
            self.assertIn(
                f"login failed: service={service} user={ALICE} ip={CLIENT}",
                [formatEvent(e) for e in events],
            )
            self.assertEqual(self.world.throttle.delay_for(CLIENT, ALICE), 0)
        _, send = self.session("pop3")
        send(self.start("pop3", plain("", ALICE, "wrong")))
        self.assertEqual(self.world.throttle.delay_for(CLIENT, ALICE), 1)

    def test_smtp_login_mechanism(self) -> None:
        """AUTH LOGIN (SMTP only): "*" at either challenge cancels, bad base64 is 501 5.5.2,
        an empty user name fails."""
        for lines, reply in (
            ([b"*"], REPLIES["smtp"][CANCELLED]),
            ([b64(ALICE.encode()), b"*"], REPLIES["smtp"][CANCELLED]),
            ([b64(ALICE.encode()), b"%%%"], REPLIES["smtp"][BAD_BASE64]),
            ([b""], REPLIES["smtp"][FAILED]),
            ([b64(ALICE.encode()), b""], REPLIES["smtp"][FAILED]),
            ([b64(ALICE.encode()), b64(PASSWORD.encode())], b"235 2.7.0 Authentication successful"),
        ):
            with self.subTest(lines=lines):
                _, send = self.session("smtp")
                self.assertEqual(send(b"AUTH LOGIN\r\n"), [b"334 VXNlcm5hbWU6"])
                for line in lines[:-1]:
                    self.assertEqual(send(line + b"\r\n"), [b"334 UGFzc3dvcmQ6"])
                self.assertEqual(send(lines[-1] + b"\r\n"), [reply])

    def test_login_commands(self) -> None:
        """IMAP LOGIN with an empty password fails like PLAIN's (RFC 5530 §3)."""
        _, send = self.session("imap")
        self.assertEqual(send(b'a LOGIN alice@example.test ""\r\n'), [REPLIES["imap"][FAILED]])
