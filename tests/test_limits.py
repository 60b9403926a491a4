"""Configurable limits (issue 5): connections per listener and per IP (twistedmail.limits),
recipients per message, idle timeouts of SMTP, IMAP and POP3, and the [limits] config keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_imap_server import PASSWORD, USER, TLSStringTransport, make_mailroot, run_now
from test_smtp_server import PEER, TLS_CONTEXT, Mailhost, connect, talk
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.mail import imap4
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail.auth import MailRealm
from twistedmail.config import ConfigError, LimitsConfig, parse_config
from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.server import imap_factory
from twistedmail.limits import CLOSE_GRACE, ConnectionLimit, refusal_for
from twistedmail.maildir import ChangeNotifier, UserMaildir
from twistedmail.pop3 import pop3_factory
from twistedmail.settings import IMAPSettings, POP3Settings, SMTPSettings
from twistedmail.testing import inbound_for


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


def limited(max_connections: int = 3, max_per_ip: int = 2) -> ConnectionLimit:
    return ConnectionLimit(
        Factory.forProtocol(Echo),
        max_connections=max_connections,
        max_per_ip=max_per_ip,
        refusal=refusal_for("smtp", "mail.example.test"),
        service="smtp",
    )


def open_from(
    factory: ConnectionLimit, ip: str, lenient: bool = False
) -> tuple[Any, StringTransport]:
    address = IPv6Address("TCP", ip, 1) if ":" in ip else IPv4Address("TCP", ip, 1)
    proto = factory.buildProtocol(address)
    # lenient: a real transport may be resumed after loseConnection (it then reads the
    # peer's close); the strict StringTransport refuses that.
    transport = StringTransport(peerAddress=address, lenient=lenient)
    proto.makeConnection(transport)
    return proto, transport


REFUSED = b"421 4.7.0 mail.example.test Too many connections, try again later\r\n"


class ConnectionLimitTests(unittest.TestCase):
    def test_per_ip_limit_refuses_politely_and_others_still_connect(self) -> None:
        """Past max_per_ip one IP's next connection gets the protocol's refusal and one log line;
        the allowed ones work through the wrapper and another IP still connects."""
        factory = limited()
        open_from(factory, "192.0.2.1")
        first, tr = open_from(factory, "192.0.2.1")
        first.dataReceived(b"hello")
        self.assertEqual(tr.value(), b"hello")  # the wrapped protocol works through the wrapper
        with capturedLogs() as events:
            _, refused = open_from(factory, "192.0.2.1")
        self.assertEqual(refused.value(), REFUSED)
        self.assertTrue(refused.disconnecting)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["smtp: refused a connection from 192.0.2.1: 2 open from it, 2 in all"],
        )
        _, other = open_from(factory, "192.0.2.2")
        self.assertEqual(other.value(), b"")

    def test_total_limit_and_release_on_close(self) -> None:
        """Past max_connections a new connection is refused; a closed one frees its slot and its
        per-IP count."""
        factory = limited(max_connections=2, max_per_ip=5)
        a, _ = open_from(factory, "192.0.2.1")
        open_from(factory, "192.0.2.2")
        self.assertEqual(open_from(factory, "192.0.2.3")[1].value(), REFUSED)
        a.connectionLost(Failure(ConnectionError("bye")))
        self.assertEqual(open_from(factory, "192.0.2.3")[1].value(), b"")
        self.assertEqual(dict(factory.per_ip), {"192.0.2.2": 1, "192.0.2.3": 1})

    def test_ipv6_counts_by_slash_64(self) -> None:
        """IPv6 connections count per /64: a third from the same /64 is refused, another /64
        connects."""
        factory = limited()
        open_from(factory, "2001:db8::1")
        open_from(factory, "2001:db8::2")
        self.assertEqual(open_from(factory, "2001:db8::ffff")[1].value(), REFUSED)
        self.assertEqual(open_from(factory, "2001:db8:0:1::1")[1].value(), b"")

    def test_refusals_per_protocol(self) -> None:
        """Each protocol's refusal: IMAP BYE [UNAVAILABLE] (RFC 5530), POP3 -ERR [SYS/TEMP] (RFC
        3206), SMTP 421 4.7.0."""
        self.assertEqual(
            refusal_for("imaps", "mail.example.test"),
            b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        )
        self.assertEqual(
            refusal_for("pop3", "mail.example.test"),
            b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
        )
        self.assertEqual(refusal_for("submissions", "mail.example.test"), REFUSED)
        self.assertEqual(  # RFC 5804 §1.3 TRYLATER
            refusal_for("managesieve", "mail.example.test"),
            b'BYE (TRYLATER) "Too many connections, try again later"\r\n',
        )


class SessionLimitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))

    def smtp(self, **limits: int) -> Any:
        factory = inbound_for(
            self.host, tls=TLS_CONTEXT, settings=SMTPSettings(max_message_size=10000, **limits)
        )
        return connect(factory)

    def test_smtp_recipients_limit_is_configurable(self) -> None:
        """RFC 5321 §4.5.3.1.10: with max_recipients = 150 the 151st RCPT is 452 4.5.3."""
        for i in range(151):
            self.host.store.add_alias(f"a{i}@example.test", ["alice@example.test"])
        proto, tr = self.smtp(max_recipients=150)
        talk(proto, tr, b"EHLO client\r\nMAIL FROM:<x@remote.test>\r\n")
        out = talk(proto, tr, b"".join(b"RCPT TO:<a%d@example.test>\r\n" % i for i in range(151)))
        self.assertEqual(
            out, b"250 2.1.5 Recipient OK\r\n" * 150 + b"452 4.5.3 Too many recipients\r\n"
        )

    def test_smtp_idle_timeout_is_configurable(self) -> None:
        """smtp_idle_timeout = 60: after 60 idle seconds 421 4.4.2 and the connection closes."""
        proto, tr = self.smtp(idle_timeout=60)
        self.host.clock.advance(59)
        self.assertEqual(tr.value(), b"")
        self.host.clock.advance(1)
        self.assertEqual(tr.value(), b"421 4.4.2 Timeout, closing connection\r\n")
        self.assertTrue(tr.disconnecting)

    def test_smtp_default_idle_timeout_is_five_minutes(self) -> None:
        """RFC 5321 §4.5.3.2.7: the SMTP server's default idle timeout is 5 minutes."""
        proto, tr = self.smtp()
        self.host.clock.advance(299)
        self.assertEqual(tr.value(), b"")
        self.host.clock.advance(1)
        self.assertTrue(tr.disconnecting)

    def test_imap_autologout_is_configurable(self) -> None:
        """imap_idle_timeout = 120: a logged-in session idle for 120 s gets BYE Autologout."""
        root = make_mailroot(Path(self.mktemp()))
        realm = MailRealm(
            {
                imap4.IAccount: lambda a: MaildirAccount(
                    USER, UserMaildir(root), ChangeNotifier(), run_now
                )
            }
        )
        portal = Portal(realm, [InMemoryUsernamePasswordDatabaseDontUse(**{USER: PASSWORD})])
        clock = Clock()
        factory = imap_factory(
            portal=portal,
            tls=None,
            implicit_tls=True,
            clock=clock,
            settings=IMAPSettings(max_literal_size=1000, idle_timeout=120),
        )
        proto = factory.buildProtocol(PEER)
        tr = TLSStringTransport()
        proto.makeConnection(tr)
        proto.dataReceived(b"a LOGIN " + USER.encode() + b' "' + PASSWORD + b'"\r\n')
        self.assertIn(b"a OK", tr.value())
        tr.clear()
        clock.advance(119)
        self.assertEqual(tr.value(), b"")
        clock.advance(1)
        self.assertEqual(tr.value(), b"* BYE Autologout; connection idle too long\r\n")

    def test_pop3_timeout_is_configurable(self) -> None:
        """pop3_idle_timeout = 30: a POP3 session idle for 30 s is closed."""
        clock = Clock()
        factory = pop3_factory(
            portal=Portal(MailRealm({})),
            tls=None,
            implicit_tls=True,
            clock=clock,
            settings=POP3Settings(idle_timeout=30),
        )
        proto = factory.buildProtocol(PEER)
        tr = StringTransport()
        proto.makeConnection(tr)
        clock.advance(30)
        self.assertTrue(tr.disconnecting)


class LimitsConfigTests(unittest.TestCase):
    def test_defaults(self) -> None:
        """[limits] defaults: 25 MiB messages, 1000 recipients, 500 connections, 20 per IP, the
        idle timeouts and throttle values."""
        self.assertEqual(
            parse_config({}, None).limits,
            LimitsConfig(
                max_message_size=25 * 1024 * 1024,
                max_recipients=1000,
                max_connections=500,
                max_connections_per_ip=20,
                smtp_idle_timeout=300,
                imap_idle_timeout=1800,
                pop3_idle_timeout=600,
                login_failure_window=600,
                login_block_after=10,
                login_account_block_after=30,
                login_block_time=900,
            ),
        )

    def test_values_and_errors(self) -> None:
        """[limits] values are read; max_recipients below 100 (RFC 5321 §4.5.3.1.8) and
        non-positive or non-integer values are refused."""
        limits = parse_config(
            {"limits": {"max_recipients": 200, "max_connections_per_ip": 5}}, None
        ).limits
        self.assertEqual((limits.max_recipients, limits.max_connections_per_ip), (200, 5))
        for value, error in (
            ({"max_recipients": 99}, "must be at least 100 (RFC 5321 §4.5.3.1.8)"),
            ({"smtp_idle_timeout": 0}, "must be a positive integer"),
            ({"login_block_after": "ten"}, "must be a positive integer"),
            ({"max_connections": True}, "must be a positive integer"),
        ):
            with self.assertRaises(ConfigError) as e:
                parse_config({"limits": value}, None)
            self.assertEqual(
                str(e.exception), f"built-in defaults: [limits] {next(iter(value))}: {error}"
            )


class Closer(Protocol):
    """Pauses its input on C{pause}, closes on C{quit}; records what it received."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        if data == b"pause":
            self.transport.pauseProducing()  # type: ignore[union-attr]
        elif data == b"quit":
            self.transport.loseConnection()  # type: ignore[union-attr]


def closing_factory(clock: Clock) -> ConnectionLimit:
    return ConnectionLimit(
        Factory.forProtocol(Closer),
        max_connections=2,
        max_per_ip=1,
        refusal=refusal_for("pop3", "mail.example.test"),
        service="pop3",
        clock=clock,
    )


class ClosingTests(unittest.TestCase):
    """Issue 9: however a session ends, its connection finishes closing and its slot is
    given back."""

    def test_close_resumes_reading_paused_input(self) -> None:
        """A close while input is paused (a command was running: POP3 RETR/DELE then QUIT)
        reads again, so the peer's TLS close_notify or FIN is seen (RFC 8446 §6.1)."""
        factory = closing_factory(Clock())
        proto, transport = open_from(factory, "192.0.2.1", lenient=True)
        proto.dataReceived(b"pause")
        self.assertEqual(transport.producerState, "paused")
        proto.wrappedProtocol.transport.loseConnection()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.producerState, "producing")
        proto.wrappedProtocol.transport.pauseProducing()  # a late pause keeps reading
        self.assertEqual(transport.producerState, "producing")

    def test_nothing_is_acted_on_after_the_close(self) -> None:
        """What the client sends after the server closed never reaches the protocol
        (RFC 3501 §6.1.3: after LOGOUT nothing more is executed)."""
        factory = closing_factory(Clock())
        proto, _ = open_from(factory, "192.0.2.1")
        closer = proto.wrappedProtocol
        proto.dataReceived(b"quit")
        proto.dataReceived(b"RETR 1\r\n")
        self.assertEqual(closer.received, [b"quit"])

    def test_a_close_that_does_not_finish_is_aborted_after_the_grace(self) -> None:
        """A peer that neither answers the close nor reads is cut off after CLOSE_GRACE
        seconds, and its slot is free again."""
        clock = Clock()
        factory = closing_factory(clock)
        proto, transport = open_from(factory, "192.0.2.1")
        proto.dataReceived(b"quit")
        clock.advance(CLOSE_GRACE - 1)
        self.assertFalse(transport.disconnected)
        with capturedLogs() as events:
            clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["pop3: connection from 192.0.2.1 did not finish closing in 30.0 s: aborted"],
        )
        proto.connectionLost(Failure(Exception("aborted")))
        self.assertEqual((len(factory.protocols), dict(factory.per_ip)), (0, {}))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_close_that_finishes_cancels_the_grace_timer(self) -> None:
        """No timer outlives the connection."""
        clock = Clock()
        factory = closing_factory(clock)
        proto, transport = open_from(factory, "192.0.2.1")
        proto.dataReceived(b"quit")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        proto.connectionLost(Failure(Exception("closed")))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnected)
        open_from(factory, "192.0.2.1")  # the IP's one slot is free again

    def test_a_refused_connection_that_never_closes_is_aborted(self) -> None:
        """A refused client that never finishes closing (over TLS: never does the
        handshake the refusal waits for) is cut off after CLOSE_GRACE seconds."""
        clock = Clock()
        factory = closing_factory(clock)
        open_from(factory, "192.0.2.1")
        refused, transport = open_from(factory, "192.0.2.1")
        self.assertEqual(
            transport.value(), b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
        )
        clock.advance(CLOSE_GRACE)
        self.assertTrue(transport.disconnected)
        refused.connectionLost(Failure(Exception("aborted")))
        self.assertEqual(clock.getDelayedCalls(), [])
        refused, transport = open_from(factory, "192.0.2.1")  # refused again, closes at once
        refused.connectionLost(Failure(Exception("closed")))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnected)
