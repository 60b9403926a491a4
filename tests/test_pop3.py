"""Unit tests for twistedmail.pop3: the POP3 session (RFC 1939, 2449, 2595, 5034) over
StringTransport and a Clock, and MaildirPOP3Mailbox over a temp Maildir."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.mail import pop3 as tpop3
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail import passwords
from twistedmail.accounts import AccountStore
from twistedmail.auth import MailRealm, PasswordChecker
from twistedmail.maildir import Folder, make_maildir, write_durably
from twistedmail.pop3 import (
    DEFAULT_TIMEOUT,
    DotStuffer,
    MaildirPOP3Mailbox,
    POP3Server,
    pop3_factory,
    uidl_for,
)
from twistedmail.settings import POP3Settings
from twistedmail.testing import TLSStringTransport, pump, run_now
from twistedmail.wire import SessionFactory

USER = b"alice@example.test"
PASSWORD = b"secret pass"
MSG1 = b"From: a@example.test\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\nbye\r\n"
MSG2 = b"From: b@example.test\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
TLS_CONTEXT: Any = object()  # a stand-in: StringTransport only records it


class DeferredChecker:
    """A checker whose answers the test fires by hand (for pipelining tests)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((credentials, d))
        return d


class POP3TestCase(unittest.TestCase):
    """A Maildir with two messages for alice, a portal, and a session factory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.mail = Path(self.mktemp())
        self.root = self.mail / "example.test" / "alice"
        make_maildir(self.root)
        self.base1 = write_durably(self.root / "new", MSG1)
        self.base2 = write_durably(self.root / "new", MSG2)
        # Distinct mtimes so UIDs (and so message numbers) follow delivery order.
        for base, t in ((self.base1, 1_000_000), (self.base2, 1_000_100)):
            os.utime(self.root / "new" / base, (t, t))
        self.checker = InMemoryUsernamePasswordDatabaseDontUse()
        self.checker.addUser(USER, PASSWORD)
        self.mailboxes: list[MaildirPOP3Mailbox] = []
        self.portal = Portal(MailRealm({tpop3.IMailbox: self.make_mailbox}), [self.checker])
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def make_mailbox(self, avatar_id: Any) -> MaildirPOP3Mailbox:
        box = MaildirPOP3Mailbox(self.root, run_now)
        self.mailboxes.append(box)
        return box

    def connect(
        self, *, implicit_tls: bool = True, tls: Any = TLS_CONTEXT, **kw: Any
    ) -> tuple[POP3Server, TLSStringTransport]:
        proto = POP3Server(
            portal=self.portal, tls=tls, implicit_tls=implicit_tls, clock=self.clock, **kw
        )
        transport = TLSStringTransport()
        proto.makeConnection(transport)
        self.addCleanup(self._close, proto, transport)
        return proto, transport

    def _close(self, proto: POP3Server, transport: StringTransport) -> None:
        if not proto._lost:
            proto.connectionLost(Failure(ConnectionError("test over")))

    def send(self, proto: POP3Server, transport: StringTransport, data: bytes) -> bytes:
        transport.clear()
        proto.dataReceived(data)
        pump(transport)
        return transport.value()

    def login(self, **kw: Any) -> tuple[POP3Server, TLSStringTransport]:
        proto, transport = self.connect(**kw)
        out = self.send(proto, transport, b"USER %s\r\nPASS %s\r\n" % (USER, PASSWORD))
        self.assertEqual(out, b"+OK send PASS\r\n+OK Logged in\r\n")
        return proto, transport

    def on_disk(self) -> list[str]:
        return sorted(p.name for sub in ("new", "cur") for p in (self.root / sub).iterdir())

    def log_lines(self) -> list[str]:
        from twisted.logger import formatEvent

        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace", "").startswith("twistedmail")
        ]


class GreetingAndCapaTests(POP3TestCase):
    def test_greeting_has_no_apop_timestamp(self) -> None:
        """RFC 1939 §4: the greeting is a plain +OK with no APOP timestamp (APOP is not offered)."""
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"+OK twistedmail POP3 server ready\r\n")

    def test_capa_before_tls(self) -> None:
        """RFC 2449 §5: CAPA on 110 before STLS lists STLS and no USER or SASL (no plaintext
        login)."""
        proto, transport = self.connect(implicit_tls=False)
        self.assertEqual(
            self.send(proto, transport, b"CAPA\r\n"),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            b"PIPELINING\r\nSTLS\r\nIMPLEMENTATION twistedmail\r\n.\r\n",
        )

    def test_capa_on_implicit_tls(self) -> None:
        """RFC 2449 §5: CAPA on implicit TLS (995) lists USER and SASL PLAIN, not STLS; the verb
        is case-blind."""
        proto, transport = self.connect(implicit_tls=True)
        self.assertEqual(
            self.send(proto, transport, b"capa\r\n"),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            b"PIPELINING\r\nUSER\r\nSASL PLAIN\r\nIMPLEMENTATION twistedmail\r\n.\r\n",
        )

    def test_capa_without_tls_context(self) -> None:
        """Without a certificate, CAPA on 110 lists neither STLS nor any login method."""
        proto, transport = self.connect(implicit_tls=False, tls=None)
        self.assertEqual(
            self.send(proto, transport, b"CAPA\r\n"),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            b"PIPELINING\r\nIMPLEMENTATION twistedmail\r\n.\r\n",
        )

    def test_capa_allow_plaintext(self) -> None:
        """allow_plaintext_auth: CAPA without TLS lists USER and SASL PLAIN."""
        proto, transport = self.connect(
            implicit_tls=False, tls=None, settings=POP3Settings(allow_plaintext_auth=True)
        )
        self.assertIn(b"\r\nUSER\r\nSASL PLAIN\r\n", self.send(proto, transport, b"CAPA\r\n"))

    def test_capa_after_login_keeps_auth_lines(self) -> None:
        """CAPA in the TRANSACTION state still lists USER and SASL PLAIN (the same list as before
        login)."""
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"CAPA\r\n"),
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            b"PIPELINING\r\nUSER\r\nSASL PLAIN\r\nIMPLEMENTATION twistedmail\r\n.\r\n",
        )


class STLSTests(POP3TestCase):
    def test_stls_starts_tls(self) -> None:
        """RFC 2595 §4: STLS answers +OK, starts TLS with the server context, and CAPA then
        offers USER without STLS."""
        proto, transport = self.connect(implicit_tls=False)
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertIs(transport.tls_context, TLS_CONTEXT)
        self.assertTrue(proto.is_secure())
        out = self.send(proto, transport, b"CAPA\r\n")
        self.assertIn(b"\r\nUSER\r\n", out)
        self.assertNotIn(b"STLS", out)

    def test_stls_twice(self) -> None:
        """RFC 2595 §4: a second STLS is -ERR TLS already active."""
        proto, transport = self.connect(implicit_tls=False)
        self.send(proto, transport, b"STLS\r\n")
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR TLS already active\r\n")

    def test_stls_on_implicit_tls(self) -> None:
        """STLS on implicit TLS (995) is -ERR TLS already active."""
        proto, transport = self.connect(implicit_tls=True)
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR TLS already active\r\n")

    def test_stls_without_context(self) -> None:
        """STLS without a certificate is -ERR STLS not available."""
        proto, transport = self.connect(implicit_tls=False, tls=None)
        self.assertEqual(self.send(proto, transport, b"STLS\r\n"), b"-ERR STLS not available\r\n")

    def test_stls_after_login_refused(self) -> None:
        """RFC 2595 §4: STLS is valid only in the AUTHORIZATION state; after login it is -ERR."""
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"STLS\r\n"), b"-ERR command not valid in this state\r\n"
        )

    def test_login_after_stls(self) -> None:
        """USER and PASS succeed on 110 once STLS has started TLS."""
        proto, transport = self.connect(implicit_tls=False)
        self.send(proto, transport, b"STLS\r\n")
        self.assertEqual(
            self.send(proto, transport, b"USER %s\r\nPASS %s\r\n" % (USER, PASSWORD)),
            b"+OK send PASS\r\n+OK Logged in\r\n",
        )


class PlaintextRefusedTests(POP3TestCase):
    def test_user_before_tls(self) -> None:
        """USER on 110 before STLS is -ERR TLS required (no password in the clear)."""
        proto, transport = self.connect(implicit_tls=False)
        self.assertEqual(
            self.send(proto, transport, b"USER %s\r\n" % USER), b"-ERR TLS required\r\n"
        )

    def test_pass_before_tls(self) -> None:
        """PASS on 110 before STLS is -ERR TLS required."""
        proto, transport = self.connect(implicit_tls=False)
        self.assertEqual(self.send(proto, transport, b"PASS x\r\n"), b"-ERR TLS required\r\n")

    def test_auth_before_tls(self) -> None:
        """AUTH PLAIN on 110 before STLS is -ERR TLS required and the session stays in
        AUTHORIZATION."""
        proto, transport = self.connect(implicit_tls=False)
        blob = base64.b64encode(b"\0" + USER + b"\0" + PASSWORD)
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN " + blob + b"\r\n"), b"-ERR TLS required\r\n"
        )
        self.assertEqual(proto.pop3_state, "AUTHORIZATION")

    def test_allowed_plaintext(self) -> None:
        """allow_plaintext_auth: USER/PASS log in without TLS."""
        self.login(implicit_tls=False, tls=None, settings=POP3Settings(allow_plaintext_auth=True))


class UserPassTests(POP3TestCase):
    def test_login_logs_one_line(self) -> None:
        """A USER/PASS login enters TRANSACTION and logs one 'login ok' line with service, user
        and IP."""
        proto, _ = self.login()
        self.assertEqual(proto.pop3_state, "TRANSACTION")
        self.assertIn(
            "login ok: service=pop3 user=alice@example.test ip=192.168.1.1", self.log_lines()
        )

    def test_wrong_password_then_right(self) -> None:
        """RFC 2449 §8.1.2: a wrong PASS is -ERR [AUTH], logged as a failed login; PASS then
        needs a new USER, after which the right password logs in."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"USER %s\r\nPASS wrong\r\n" % USER),
            b"+OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n",
        )
        self.assertIn(
            "login failed: service=pop3 user=alice@example.test ip=192.168.1.1", self.log_lines()
        )
        self.assertEqual(proto.pop3_state, "AUTHORIZATION")
        self.assertEqual(
            self.send(proto, transport, b"PASS %s\r\n" % PASSWORD), b"-ERR send USER first\r\n"
        )
        self.assertEqual(
            self.send(proto, transport, b"USER %s\r\nPASS %s\r\n" % (USER, PASSWORD)),
            b"+OK send PASS\r\n+OK Logged in\r\n",
        )

    def test_password_keeps_spaces(self) -> None:
        """RFC 1939 §7: everything after 'PASS ' is the password, leading, inner and trailing
        spaces included."""
        self.checker.addUser(b"bob@example.test", b" two  spaces ")
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"USER bob@example.test\r\nPASS  two  spaces \r\n"),
            b"+OK send PASS\r\n+OK Logged in\r\n",
        )

    def test_pass_without_user(self) -> None:
        """RFC 1939 §7: PASS before USER is -ERR send USER first."""
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"PASS x\r\n"), b"-ERR send USER first\r\n")

    def test_apop_refused(self) -> None:
        """APOP (RFC 1939 §7) is not supported: -ERR APOP not supported."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"APOP alice 0123456789abcdef\r\n"),
            b"-ERR APOP not supported\r\n",
        )

    def test_real_password_checker(self) -> None:
        """With the real PasswordChecker the user name is case-blind and a password with a space
        works; STAT then counts the maildrop."""
        store = AccountStore(Path(self.mktemp()))
        self.addCleanup(store.close)
        store.add_user("Alice@Example.test", passwords.hash_password("pw 1"))
        self.portal = Portal(
            MailRealm({tpop3.IMailbox: self.make_mailbox}), [PasswordChecker(store, run_now)]
        )
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"USER ALICE@example.test\r\nPASS pw 1\r\nSTAT\r\n"),
            b"+OK send PASS\r\n+OK Logged in\r\n+OK 2 %d\r\n" % (len(MSG1) + len(MSG2)),
        )

    def test_maildrop_that_cannot_be_opened(self) -> None:
        """RFC 3206 §4: a maildrop that cannot be opened is -ERR [SYS/TEMP] and the session stays
        in AUTHORIZATION."""
        self.root = self.mail / "example.test" / "file"
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.write_bytes(b"not a directory")
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"USER %s\r\nPASS %s\r\n" % (USER, PASSWORD)),
            b"+OK send PASS\r\n-ERR [SYS/TEMP] unable to open maildrop\r\n",
        )
        self.assertEqual(proto.pop3_state, "AUTHORIZATION")
        self.flushLoggedErrors()


class AuthPlainTests(POP3TestCase):
    def plain(self, authz: bytes = b"", user: bytes = USER, password: bytes = PASSWORD) -> bytes:
        return base64.b64encode(authz + b"\0" + user + b"\0" + password)

    def test_initial_response(self) -> None:
        """RFC 5034 §4 + RFC 4616: AUTH PLAIN with an initial response logs in and enters
        TRANSACTION."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN " + self.plain() + b"\r\n"),
            b"+OK Logged in\r\n",
        )
        self.assertEqual(proto.pop3_state, "TRANSACTION")

    def test_challenge_then_response(self) -> None:
        """RFC 5034 §4: AUTH plain without a response gets the empty '+ ' challenge; the response
        on the next line logs in."""
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH plain\r\n"), b"+ \r\n")
        self.assertEqual(self.send(proto, transport, self.plain() + b"\r\n"), b"+OK Logged in\r\n")

    def test_pipelined_response(self) -> None:
        """RFC 2449 PIPELINING: AUTH PLAIN, its response and STAT sent in one write are answered
        in order."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN\r\n" + self.plain() + b"\r\nSTAT\r\n"),
            b"+ \r\n+OK Logged in\r\n+OK 2 %d\r\n" % (len(MSG1) + len(MSG2)),
        )

    def test_authzid_equal_to_authcid(self) -> None:
        """RFC 4616 §2: an authzid equal to the authcid is accepted."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN " + self.plain(authz=USER) + b"\r\n"),
            b"+OK Logged in\r\n",
        )

    def test_other_authzid_refused(self) -> None:
        """RFC 4616 §2: an authzid naming another user is -ERR [AUTH] Authentication failed."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(
                proto, transport, b"AUTH PLAIN " + self.plain(authz=b"bob@example.test") + b"\r\n"
            ),
            b"-ERR [AUTH] Authentication failed\r\n",
        )

    def test_wrong_password(self) -> None:
        """AUTH PLAIN with a wrong password is -ERR [AUTH] and logs one failed login line."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN " + self.plain(password=b"no") + b"\r\n"),
            b"-ERR [AUTH] Authentication failed\r\n",
        )
        self.assertIn(
            "login failed: service=pop3 user=alice@example.test ip=192.168.1.1", self.log_lines()
        )

    def test_cancel(self) -> None:
        """RFC 5034 §4: '*' cancels AUTH with -ERR, and the session goes on (CAPA answers +OK)."""
        proto, transport = self.connect()
        self.send(proto, transport, b"AUTH PLAIN\r\n")
        self.assertEqual(
            self.send(proto, transport, b"*\r\n"), b"-ERR authentication cancelled\r\n"
        )
        self.assertEqual(self.send(proto, transport, b"CAPA\r\n")[:4], b"+OK ")

    def test_bad_base64(self) -> None:
        """RFC 5034 §4: an initial or continued response that is not base64 is -ERR invalid
        base64 data."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN %%%\r\n"), b"-ERR invalid base64 data\r\n"
        )
        self.send(proto, transport, b"AUTH PLAIN\r\n")
        self.assertEqual(
            self.send(proto, transport, b"not base64!\r\n"), b"-ERR invalid base64 data\r\n"
        )

    def test_not_three_fields(self) -> None:
        """RFC 4616 §2: a PLAIN message without two NULs is -ERR [AUTH] Authentication failed."""
        proto, transport = self.connect()
        blob = base64.b64encode(USER + b"\0" + PASSWORD)
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN " + blob + b"\r\n"),
            b"-ERR [AUTH] Authentication failed\r\n",
        )

    def test_empty_initial_response(self) -> None:
        """RFC 5034 §4: '=' (an empty initial response) fails the PLAIN login with -ERR [AUTH]."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH PLAIN =\r\n"),
            b"-ERR [AUTH] Authentication failed\r\n",
        )

    def test_list_mechanisms(self) -> None:
        """AUTH without a mechanism lists the SASL mechanisms: PLAIN only."""
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"AUTH\r\n"), b"+OK\r\nPLAIN\r\n.\r\n")

    def test_unsupported_mechanism(self) -> None:
        """AUTH with an unknown mechanism is -ERR unsupported SASL mechanism."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"AUTH CRAM-MD5\r\n"),
            b"-ERR unsupported SASL mechanism\r\n",
        )


class TransactionTests(POP3TestCase):
    def test_stat_list_uidl(self) -> None:
        """RFC 1939 §5, §7: STAT, LIST and UIDL (with and without an argument) give counts, octet
        sizes and the Maildir base names."""
        proto, transport = self.login()
        n1, n2 = len(MSG1), len(MSG2)
        self.assertEqual(self.send(proto, transport, b"STAT\r\n"), b"+OK 2 %d\r\n" % (n1 + n2))
        self.assertEqual(
            self.send(proto, transport, b"LIST\r\n"),
            b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n" % (n1 + n2, n1, n2),
        )
        self.assertEqual(self.send(proto, transport, b"LIST 2\r\n"), b"+OK 2 %d\r\n" % n2)
        self.assertEqual(
            self.send(proto, transport, b"UIDL\r\n"),
            b"+OK\r\n1 %s\r\n2 %s\r\n.\r\n" % (self.base1.encode(), self.base2.encode()),
        )
        self.assertEqual(
            self.send(proto, transport, b"UIDL 1\r\n"), b"+OK 1 %s\r\n" % self.base1.encode()
        )

    def test_retr(self) -> None:
        """RFC 1939 §7 RETR: the size line, then the message byte for byte with leading dots
        doubled and the '.' terminator."""
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"RETR 1\r\n"),
            b"+OK %d octets\r\n" % len(MSG1)
            + b"From: a@example.test\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\nbye\r\n.\r\n",
        )

    def test_retr_message_without_final_crlf(self) -> None:
        """RETR of a message not ending in CRLF adds one before the terminator; UIDL of it is its
        base name."""
        base = write_durably(self.root / "new", b"Subject: x\r\n\r\nno end")
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"RETR 3\r\n"),
            b"+OK 20 octets\r\nSubject: x\r\n\r\nno end\r\n.\r\n",
        )
        self.assertEqual(
            self.send(proto, transport, b"UIDL 3\r\n"), b"+OK 3 %s\r\n" % base.encode()
        )

    def test_top(self) -> None:
        """RFC 1939 §7 TOP: the header, the blank line and the first n body lines (all of it when
        n is past the end), dot-stuffed."""
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"TOP 2 0\r\n"),
            b"+OK top of message follows\r\nFrom: b@example.test\r\nSubject: two\r\n\r\n.\r\n",
        )
        self.assertEqual(
            self.send(proto, transport, b"TOP 2 2\r\n"),
            b"+OK top of message follows\r\nFrom: b@example.test\r\nSubject: two\r\n\r\n"
            b"line 1\r\nline 2\r\n.\r\n",
        )
        self.assertEqual(
            self.send(proto, transport, b"TOP 1 99\r\n"),
            b"+OK top of message follows\r\n"
            b"From: a@example.test\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\nbye\r\n.\r\n",
        )

    def test_top_bad_line_count(self) -> None:
        """TOP with a line count of -1, x or +1 is -ERR invalid line count."""
        proto, transport = self.login()
        for count in (b"-1", b"x", b"+1"):
            self.assertEqual(
                self.send(proto, transport, b"TOP 1 " + count + b"\r\n"),
                b"-ERR invalid line count\r\n",
            )

    def test_top_long_header(self) -> None:
        """TOP returns a 70,000-byte header line whole, then the asked body lines."""
        header = b"X-Long: " + b"a" * 70000 + b"\r\nSubject: s\r\n\r\n"
        write_durably(self.root / "new", header + b"b1\r\nb2\r\n")
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"TOP 3 1\r\n"),
            b"+OK top of message follows\r\n" + header + b"b1\r\n.\r\n",
        )

    def test_dele_hides_message_until_rset(self) -> None:
        """RFC 1939 §5 DELE: the message leaves STAT, LIST and UIDL, commands on it are -ERR no
        such message, until RSET brings it back."""
        proto, transport = self.login()
        n2 = len(MSG2)
        self.assertEqual(self.send(proto, transport, b"DELE 1\r\n"), b"+OK message deleted\r\n")
        self.assertEqual(self.send(proto, transport, b"STAT\r\n"), b"+OK 1 %d\r\n" % n2)
        self.assertEqual(
            self.send(proto, transport, b"LIST\r\n"),
            b"+OK 1 messages (%d octets)\r\n2 %d\r\n.\r\n" % (n2, n2),
        )
        self.assertEqual(
            self.send(proto, transport, b"UIDL\r\n"), b"+OK\r\n2 %s\r\n.\r\n" % self.base2.encode()
        )
        for command in (b"LIST 1", b"UIDL 1", b"RETR 1", b"TOP 1 0", b"DELE 1"):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"), b"-ERR no such message\r\n", command
            )
        self.assertEqual(self.send(proto, transport, b"RSET\r\n"), b"+OK\r\n")
        self.assertEqual(
            self.send(proto, transport, b"STAT\r\n"), b"+OK 2 %d\r\n" % (len(MSG1) + n2)
        )

    def test_quit_removes_deleted_and_flags_retrieved_seen(self) -> None:
        """RFC 1939 §6: QUIT removes the DELEted message, marks the RETRieved one Seen (:2,S),
        and closes the connection."""
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 2\r\nTOP 1 0\r\nDELE 1\r\n")
        self.assertEqual(
            self.send(proto, transport, b"QUIT\r\n"), b"+OK twistedmail POP3 server signing off\r\n"
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.on_disk(), [self.base2 + ":2,S"])
        self.assertEqual(proto.pop3_state, "UPDATE")

    def test_disconnect_without_quit_deletes_nothing(self) -> None:
        """RFC 1939 §6: a connection lost without QUIT deletes nothing and changes no flags."""
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 1\r\nDELE 1\r\nDELE 2\r\n")
        proto.connectionLost(Failure(ConnectionError("gone")))
        self.assertEqual(self.on_disk(), sorted([self.base1 + ":2,", self.base2 + ":2,"]))
        self.assertFalse((self.root / ".Trash").exists())

    def test_noop(self) -> None:
        """RFC 1939 §5 NOOP: +OK."""
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")

    def test_message_removed_by_another_session(self) -> None:
        """A message whose file another session removed gives -ERR message no longer exists on
        RETR; DELE of it and QUIT still succeed."""
        proto, transport = self.login()
        for p in (self.root / "cur").iterdir():
            if p.name.startswith(self.base1):
                p.unlink()
        self.assertEqual(
            self.send(proto, transport, b"RETR 1\r\n"), b"-ERR message no longer exists\r\n"
        )
        self.assertEqual(
            self.send(proto, transport, b"DELE 1\r\nQUIT\r\n"),
            b"+OK message deleted\r\n+OK twistedmail POP3 server signing off\r\n",
        )

    def test_sync_failure(self) -> None:
        """RFC 3206 §4: when removing DELEted messages at QUIT fails, the reply is -ERR
        [SYS/TEMP], the connection closes and the error is logged once."""
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1\r\n")

        def fail() -> Deferred[None]:
            return defer.fail(PermissionError(13, "denied"))

        proto.mbox.sync = fail
        self.assertEqual(
            self.send(proto, transport, b"QUIT\r\n"),
            b"-ERR [SYS/TEMP] some deleted messages not removed\r\n",
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)

    def test_unexpected_error_answers_err(self) -> None:
        """A bug in a command handler answers -ERR [SYS/TEMP] internal server error, is logged,
        and the session goes on."""
        proto, transport = self.login()

        def boom(i: int | None = None) -> Any:
            raise RuntimeError("bug")

        proto.mbox.listMessages = boom
        self.assertEqual(
            self.send(proto, transport, b"STAT\r\n"), b"-ERR [SYS/TEMP] internal server error\r\n"
        )
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")


class StateAndSyntaxTests(POP3TestCase):
    def test_transaction_commands_need_login(self) -> None:
        """RFC 1939 §3: TRANSACTION commands in the AUTHORIZATION state are -ERR not
        authenticated."""
        proto, transport = self.connect()
        for command in (
            b"STAT",
            b"LIST",
            b"UIDL",
            b"RETR 1",
            b"TOP 1 1",
            b"DELE 1",
            b"RSET",
            b"NOOP",
        ):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"),
                b"-ERR not authenticated\r\n",
                command,
            )

    def test_authorization_commands_after_login(self) -> None:
        """RFC 1939 §3: USER, PASS, AUTH, APOP and STLS after login are -ERR command not valid in
        this state."""
        proto, transport = self.login()
        for command in (b"USER x", b"PASS y", b"AUTH PLAIN", b"APOP a b", b"STLS"):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"),
                b"-ERR command not valid in this state\r\n",
                command,
            )

    def test_unknown_and_removed_commands(self) -> None:
        """An empty line, an unknown verb, the removed LAST and RPOP, and non-ASCII bytes are
        -ERR unknown command."""
        proto, transport = self.login()
        for command in (b"", b"XYZZY", b"LAST", b"RPOP x", b"\xff\xfe"):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"), b"-ERR unknown command\r\n", command
            )

    def test_arity(self) -> None:
        """A command with too few or too many arguments is -ERR syntax error."""
        proto, transport = self.login()
        for command in (b"STAT 1", b"RETR", b"RETR 1 2", b"TOP 1", b"DELE", b"NOOP x", b"LIST 1 2"):
            self.assertEqual(
                self.send(proto, transport, command + b"\r\n"), b"-ERR syntax error\r\n", command
            )

    def test_quit_in_authorization(self) -> None:
        """RFC 1939 §4: QUIT before login says goodbye and closes the connection."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"QUIT\r\n"), b"+OK twistedmail POP3 server signing off\r\n"
        )
        self.assertTrue(transport.disconnecting)

    def test_line_too_long_keeps_session(self) -> None:
        """RFC 2449 §4: a command line over the limit is -ERR line too long and the next command
        is answered."""
        proto, transport = self.connect()
        self.assertEqual(
            self.send(proto, transport, b"NOOP " + b"x" * 20000 + b"\r\nCAPA\r\n")[:28],
            b"-ERR line too long\r\n+OK Capa",
        )
        self.assertFalse(transport.disconnecting)

    def test_session_logs_one_closing_line(self) -> None:
        """A session that ends logs one closing line with its id, IP, user, final state and the
        counts retrieved and removed."""
        proto, transport = self.login()
        self.send(proto, transport, b"RETR 1\r\nDELE 2\r\nQUIT\r\n")
        proto.connectionLost(Failure(ConnectionError("closed")))
        closing = [line for line in self.log_lines() if line.startswith("pop3 session")]
        self.assertEqual(
            closing,
            [
                f"pop3 session {proto.session} ip=192.168.1.1 user=alice@example.test "
                "closed in state UPDATE: retrieved=1 removed=1"
            ],
        )


class TimeoutTests(POP3TestCase):
    def test_idle_timeout_closes_silently(self) -> None:
        """RFC 1939 §3: the idle timer restarts on each command and closes the connection with no
        response when it runs out."""
        proto, transport = self.connect()
        transport.clear()
        self.clock.advance(DEFAULT_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"CAPA\r\n")
        self.clock.advance(DEFAULT_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")  # RFC 1939 §3: no response, no UPDATE

    def test_timeout_after_login_deletes_nothing(self) -> None:
        """RFC 1939 §3: an autologout timeout does not enter UPDATE, so DELEted messages stay."""
        proto, transport = self.login()
        self.send(proto, transport, b"DELE 1\r\n")
        self.clock.advance(DEFAULT_TIMEOUT)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionError("timeout")))
        self.assertEqual(len(self.on_disk()), 2)

    def test_timeout_is_ten_minutes(self) -> None:
        """RFC 1939 §3: the default autologout timer is 10 minutes."""
        self.assertEqual(DEFAULT_TIMEOUT, 600)

    def test_connection_lost_cancels_timer(self) -> None:
        """A lost connection leaves no idle timer pending on the clock."""
        proto, _ = self.connect()
        proto.connectionLost(Failure(ConnectionError("x")))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PipeliningTests(POP3TestCase):
    def test_replies_wait_for_slow_login(self) -> None:
        """RFC 2449 §6.6: commands pipelined behind a PASS whose check is still running are
        answered after it, in order."""
        checker = DeferredChecker()
        self.portal = Portal(MailRealm({tpop3.IMailbox: self.make_mailbox}), [checker])
        proto, transport = self.connect()
        out = self.send(
            proto, transport, b"USER %s\r\nPASS %s\r\nSTAT\r\nNOOP\r\n" % (USER, PASSWORD)
        )
        self.assertEqual(out, b"+OK send PASS\r\n")
        transport.clear()
        ((credentials, d),) = checker.pending
        self.assertEqual((credentials.username, credentials.password), (USER, PASSWORD))
        d.callback(USER)
        pump(transport)
        self.assertEqual(
            transport.value(), b"+OK Logged in\r\n+OK 2 %d\r\n+OK\r\n" % (len(MSG1) + len(MSG2))
        )

    def test_pipelined_retrievals_in_order(self) -> None:
        """RFC 2449 §6.6: pipelined RETR, STAT, TOP and QUIT get their replies in order, each
        message complete."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"RETR 2\r\nSTAT\r\nTOP 2 1\r\nQUIT\r\n")
        self.assertEqual(
            out,
            b"+OK %d octets\r\n" % len(MSG2)
            + MSG2
            + b".\r\n"
            + b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG2))
            + b"+OK top of message follows\r\n"
            + b"From: b@example.test\r\nSubject: two\r\n\r\nline 1\r\n.\r\n"
            + b"+OK twistedmail POP3 server signing off\r\n",
        )

    def test_lines_held_while_retr_streams(self) -> None:
        """A command that arrives while RETR streams its message is answered after the message's
        terminator."""
        proto, transport = self.login()
        transport.clear()
        proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertIsNotNone(transport.producer)
        self.assertEqual(transport.value(), b"+OK %d octets\r\n" % len(MSG1))
        pump(transport)
        self.assertTrue(transport.value().endswith(b"bye\r\n.\r\n+OK\r\n"))

    def test_disconnect_during_login(self) -> None:
        """A connection lost while the password check runs opens no mailbox and leaves no timer
        when the check succeeds later."""
        checker = DeferredChecker()
        self.portal = Portal(MailRealm({tpop3.IMailbox: self.make_mailbox}), [checker])
        proto, transport = self.connect()
        self.send(proto, transport, b"USER %s\r\nPASS %s\r\n" % (USER, PASSWORD))
        proto.connectionLost(Failure(ConnectionError("gone")))
        checker.pending[0][1].callback(USER)
        self.assertIsNone(proto.mbox)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_disconnect_during_retr(self) -> None:
        """A connection lost while RETR streams logs no error and removes no message."""
        proto, transport = self.login()
        transport.clear()
        proto.dataReceived(b"RETR 1\r\n")
        producer = transport.producer
        proto.connectionLost(Failure(ConnectionError("gone")))
        producer.stopProducing()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(self.on_disk()), 2)


class DotStufferTests(unittest.TestCase):
    def reference(self, message: bytes) -> bytes:
        lines = message.replace(b"\r\n", b"\n").split(b"\n")
        out = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
        return out + (b"." if out.endswith(b"\r\n") or not out else b"\r\n.") + b"\r\n"

    def stuff(self, message: bytes, cuts: list[int]) -> bytes:
        stuffer = DotStuffer()
        pieces, start = [], 0
        for cut in cuts + [len(message)]:
            pieces.append(stuffer.feed(message[start:cut]))
            start = cut
        return b"".join(pieces) + stuffer.finish()

    def test_every_single_cut(self) -> None:
        """RFC 1939 §3: the byte-stuffed output is the same wherever the input is cut in two."""
        message = b".a\r\n.\r\nb\r\n..c\r\n\r\n.\r\nx\ny\n.z\n."
        expected = self.reference(message)
        for cut in range(len(message) + 1):
            self.assertEqual(self.stuff(message, [cut]), expected, cut)

    def test_every_pair_of_cuts(self) -> None:
        """RFC 1939 §3: lines that are a lone '.' are doubled and terminated correctly wherever
        the input is cut in three."""
        message = b"\r\n.\r\n.\r\n"
        expected = b"\r\n..\r\n..\r\n.\r\n"
        for a in range(len(message) + 1):
            for b in range(a, len(message) + 1):
                self.assertEqual(self.stuff(message, [a, b]), expected, (a, b))

    def test_bare_lf_becomes_crlf(self) -> None:
        """A bare LF in a stored message is sent as CRLF, and a line starting with '.' after it
        is stuffed."""
        self.assertEqual(self.stuff(b"a\n.\nb\n", []), b"a\r\n..\r\nb\r\n.\r\n")

    def test_bare_cr_kept(self) -> None:
        """A bare CR is not a line end: the '.' after it is not stuffed and the CR is kept."""
        self.assertEqual(self.stuff(b"a\r.b\r", [2]), b"a\r.b\r\r\n.\r\n")

    def test_empty_message(self) -> None:
        """An empty message is sent as the terminator line alone."""
        self.assertEqual(self.stuff(b"", []), b".\r\n")


class MailboxTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        self.base = write_durably(self.root / "new", b"Subject: s\r\n\r\nbody\r\n")

    def opened(self) -> MaildirPOP3Mailbox:
        box = MaildirPOP3Mailbox(self.root, run_now)
        self.successResultOf(box.open_maildrop())
        return box

    def test_open_moves_new_to_cur(self) -> None:
        """Opening the maildrop moves new/ messages to cur/ with an empty ':2,' info and lists
        their sizes."""
        box = self.opened()
        self.assertEqual(os.listdir(self.root / "new"), [])
        self.assertEqual(os.listdir(self.root / "cur"), [self.base + ":2,"])
        self.assertEqual(box.listMessages(), [20])

    def test_open_creates_missing_inbox(self) -> None:
        """Opening the maildrop of a user with no Maildir yet creates it and lists no messages."""
        root = Path(self.mktemp()) / "example.test" / "new-user"
        box = MaildirPOP3Mailbox(root, run_now)
        self.successResultOf(box.open_maildrop())
        self.assertEqual(box.listMessages(), [])
        self.assertTrue((root / "cur").is_dir())

    def test_snapshot_ignores_later_delivery(self) -> None:
        """RFC 1939 §5: the message list is fixed at login; a later delivery is not listed."""
        box = self.opened()
        write_durably(self.root / "new", b"later\r\n")
        self.assertEqual(box.listMessages(), [20])

    def test_uidl_is_stable_across_flag_changes(self) -> None:
        """RFC 1939 §7 UIDL: the unique id is the Maildir base name, unchanged by a flag rename,
        and the old snapshot still reads the renamed file."""
        box = self.opened()
        uidl = box.getUidl(0)
        folder = Folder(self.root)
        entry = folder.scan().messages[0]
        folder.set_flags(entry, "FS")
        box2 = self.opened()
        self.assertEqual(box2.getUidl(0), uidl)
        self.assertEqual(uidl, self.base.encode())
        with box.getMessage(0) as f:  # the old snapshot still finds the renamed file
            self.assertEqual(f.read(), b"Subject: s\r\n\r\nbody\r\n")

    def test_uidl_for_unusable_names(self) -> None:
        """RFC 1939 §7: a base name that is too long, non-ASCII or has a space becomes its MD5
        hex, so every UIDL is 1-70 printable characters."""
        self.assertEqual(uidl_for("123.M1P2Q3.host,S=5"), "123.M1P2Q3.host,S=5")
        long = "1.M1P1Q1." + "h" * 80
        self.assertEqual(uidl_for(long), hashlib.md5(long.encode()).hexdigest())
        self.assertEqual(
            uidl_for("1.M1P1Q1.höst"), hashlib.md5("1.M1P1Q1.höst".encode()).hexdigest()
        )
        self.assertEqual(uidl_for("a b"), hashlib.md5(b"a b").hexdigest())
        for value in (long, "x" * 70, "1.M1P1Q1.höst"):
            uid = uidl_for(value)
            self.assertTrue(1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid))

    def test_out_of_range_is_value_error(self) -> None:
        """Message indexes out of range raise ValueError in every mailbox method (what Twisted
        turns into -ERR)."""
        box = self.opened()
        for call in (box.listMessages, box.getMessage, box.getUidl, box.deleteMessage):
            self.assertRaises(ValueError, call, 1)
            self.assertRaises(ValueError, call, -1)

    def test_deleted_message(self) -> None:
        """A deleted message lists as size 0 and cannot be read, until undeleteMessages restores
        it."""
        box = self.opened()
        box.deleteMessage(0)
        self.assertEqual(box.listMessages(), [0])
        self.assertEqual(box.listMessages(0), 0)
        self.assertRaises(ValueError, box.getMessage, 0)
        box.undeleteMessages()
        self.assertEqual(box.listMessages(0), 20)

    def test_getmessage_is_binary(self) -> None:
        """getMessage returns the stored bytes unchanged, in binary."""
        box = self.opened()
        with box.getMessage(0) as f:
            self.assertEqual(f.read(), b"Subject: s\r\n\r\nbody\r\n")

    def test_sync_removes_and_notifies(self) -> None:
        """sync removes the deleted message files and notifies the folder's watchers once."""
        from twistedmail.maildir import ChangeNotifier

        notifier = ChangeNotifier()
        calls: list[int] = []
        notifier.subscribe(self.root, lambda: calls.append(1))
        box = MaildirPOP3Mailbox(self.root, run_now, notifier)
        self.successResultOf(box.open_maildrop())
        box.deleteMessage(0)
        self.successResultOf(box.sync())
        self.assertEqual(os.listdir(self.root / "cur"), [])
        self.assertEqual(calls, [1])

    def test_sync_keeps_flags_set_elsewhere(self) -> None:
        """sync adds S to a retrieved message without losing a flag another session set
        meanwhile."""
        box = self.opened()
        box.retrieved(0)
        folder = Folder(self.root)
        folder.set_flags(folder.scan().messages[0], "F")
        self.successResultOf(box.sync())
        self.assertEqual(os.listdir(self.root / "cur"), [self.base + ":2,FS"])

    def test_works_with_stock_protocol_without_open(self) -> None:
        """The mailbox lists messages without open_maildrop (as Twisted's stock POP3 uses it)."""
        box = MaildirPOP3Mailbox(self.root, run_now)
        self.assertEqual(box.listMessages(), [20])


class FactoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.portal = Portal(MailRealm({}), [])

    def test_plain_factory(self) -> None:
        """pop3_factory builds POP3Server protocols that carry its portal and clock, without
        implicit TLS."""
        clock = Clock()
        factory = pop3_factory(
            portal=self.portal, tls=None, implicit_tls=False, clock=clock, settings=POP3Settings()
        )
        self.assertIsInstance(factory, SessionFactory)
        proto = factory.buildProtocol(None)
        self.assertIsInstance(proto, POP3Server)
        self.assertIs(proto.factory, factory)
        self.assertIs(proto.portal, self.portal)
        self.assertIs(proto.clock, clock)
        self.assertFalse(proto.implicit_tls)

    def test_implicit_tls_factory(self) -> None:
        """With implicit_tls the built protocol counts as secure from the start (995, RFC 8314)."""
        factory = pop3_factory(
            portal=self.portal, tls=None, implicit_tls=True, clock=Clock(), settings=POP3Settings()
        )
        self.assertIsInstance(factory, SessionFactory)
        proto = factory.buildProtocol(None)
        self.assertTrue(proto.implicit_tls)
        self.assertTrue(proto.is_secure())

    def test_over_tls_wrapper(self) -> None:
        """The service wraps the 995 factory in TLSMemoryBIOFactory: a real handshake."""
        from twisted.internet.protocol import Protocol
        from twisted.internet.ssl import CertificateOptions
        from twisted.test import iosim

        from twistedmail.tls import create_self_signed, server_context

        tmp = Path(self.mktemp())
        create_self_signed(tmp / "cert.pem", tmp / "key.pem", "mail.example.test")
        checker = InMemoryUsernamePasswordDatabaseDontUse()
        checker.addUser(USER, PASSWORD)
        root = tmp / "alice"
        make_maildir(root)
        write_durably(root / "new", MSG2)
        portal = Portal(
            MailRealm({tpop3.IMailbox: lambda _: MaildirPOP3Mailbox(root, run_now)}), [checker]
        )
        clock = Clock()
        inner = pop3_factory(
            portal=portal, tls=None, implicit_tls=True, clock=clock, settings=POP3Settings()
        )
        server_factory = TLSMemoryBIOFactory(
            server_context(tmp / "cert.pem", tmp / "key.pem"), False, inner, clock
        )
        received: list[bytes] = []

        class Client(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

        client_factory = TLSMemoryBIOFactory(
            CertificateOptions(), True, Factory.forProtocol(Client), clock
        )
        address = iosim.FakeAddress()
        client, server, pump_ = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(address),
            lambda: client_factory.buildProtocol(address),
            clock=clock,
        )
        pump_.flush()
        # (RETR over TLS streams through a cooperator on the global reactor: see the e2e tests.)
        client.write(b"CAPA\r\nUSER %s\r\nPASS %s\r\nSTAT\r\nQUIT\r\n" % (USER, PASSWORD))
        pump_.flush()
        self.assertEqual(
            b"".join(received),
            b"+OK twistedmail POP3 server ready\r\n"
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
            b"PIPELINING\r\nUSER\r\nSASL PLAIN\r\nIMPLEMENTATION twistedmail\r\n.\r\n"
            b"+OK send PASS\r\n+OK Logged in\r\n"
            + b"+OK 1 %d\r\n" % len(MSG2)
            + b"+OK twistedmail POP3 server signing off\r\n",
        )
