"""A session that ends while a command is still running leaves nothing behind (issue 9):
no per-user slot, no folder watcher, no timer, no command run after the connection is gone,
no Deferred waiting forever for input that will never come."""

from __future__ import annotations

import os
from typing import Any

from test_cli import CLITestCase
from test_imap_server import MSG1, MSG2, PASSWORD, USER, Harness, HeldThreads
from test_pop3 import POP3TestCase
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail import control
from twistedmail.limits import UserSessionLimit
from twistedmail.maildir import write_durably
from twistedmail.pop3 import DEFAULT_TIMEOUT

LOST = Failure(ConnectionDone("gone"))


class HeldPortal:
    """A portal whose logins answer only when L{release} is called."""

    def __init__(self, portal: Any) -> None:
        self.portal = portal
        self.held: list[tuple[Deferred[Any], tuple[Any, ...]]] = []
        self.logouts = 0

    def login(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.held.append((d, args))
        return d

    def release(self) -> None:
        for d, args in self.held:

            def counted(result: Any) -> Any:
                iface, avatar, logout = result

                def counting_logout() -> None:
                    self.logouts += 1
                    logout()

                return iface, avatar, counting_logout

            self.portal.login(*args).addCallback(counted).chainDeferred(d)
        self.held = []


class CountedThreads(HeldThreads):
    """L{HeldThreads} that also counts every call, held or not."""

    count = 0

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        self.count += 1
        return super().__call__(f, *args)


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_failure") is not None]


class IMAPSessionEndsMidCommandTests(unittest.TestCase):
    def test_login_that_completes_after_the_close_takes_no_slot(self) -> None:
        """The password check finishing after the client left must not count a session
        that no connectionLost will ever release (10 such: the user is locked out)."""
        h = Harness(self)
        limit = UserSessionLimit(10, "imap")
        h.server.user_limit = limit
        portal = HeldPortal(h.portal)
        h.server.portal = portal
        h.send(b"a LOGIN " + USER.encode() + b' "' + PASSWORD + b'"\r\n')
        h.server.connectionLost(LOST)
        with capturedLogs() as events:
            portal.release()
        self.assertEqual(limit.open, {})
        self.assertEqual(portal.logouts, 1)  # the avatar is logged out
        self.assertEqual(h.clock.getDelayedCalls(), [])  # no autologout timer left behind
        self.assertEqual(errors(events), [])

    def test_login_whose_folder_setup_ends_after_the_close(self) -> None:
        """The first-login folder setup finishing after the close: the slot given back at
        the close stays given back, the avatar is logged out, no timer is started."""
        held = HeldThreads()
        h = Harness(self, run=held)
        limit = UserSessionLimit(10, "imap")
        h.server.user_limit = limit
        portal = HeldPortal(h.portal)
        h.server.portal = portal
        held.holding = True
        h.send(b"a LOGIN " + USER.encode() + b' "' + PASSWORD + b'"\r\n')
        portal.release()
        self.assertEqual(len(limit.open), 1)
        h.server.connectionLost(LOST)
        self.assertEqual(limit.open, {})
        held.release()
        self.assertEqual(limit.open, {})
        self.assertEqual(portal.logouts, 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_select_that_completes_after_the_close_watches_no_folder(self) -> None:
        """A SELECT whose folder scan ends after the close leaves no folder watcher (each
        one kept the session and its mailbox alive for the life of the server)."""
        held = HeldThreads()
        h = Harness(self, run=held)
        h.add(MSG1)
        h.login()
        held.holding = True
        h.send(b"s SELECT INBOX\r\n")
        h.server.connectionLost(LOST)
        held.release()
        self.assertEqual(h.notifier.subscriptions(), 0)
        self.assertIsNone(h.server.mbox)

    def test_idle_ends_when_the_connection_does(self) -> None:
        """IDLE waiting for DONE ends at the close (RFC 2177): nothing waits forever."""
        h = Harness(self)
        h.login()
        h.cmd(b"s SELECT INBOX")
        self.assertEqual(h.cmd(b"i IDLE"), [b"+ idling"])
        with capturedLogs() as events:
            h.server.connectionLost(LOST)
        self.assertIsNone(h.server._line_waiter)
        self.assertFalse(h.server._busy)
        self.assertEqual(errors(events), [])
        self.assertEqual(h.notifier.subscriptions(), 0)

    def test_append_literal_cut_by_the_close_ends_the_command(self) -> None:
        """An APPEND whose literal never arrives whole ends at the close, storing nothing."""
        h = Harness(self)
        h.login()
        self.assertEqual(h.send(b"a APPEND INBOX {100}\r\n"), b"+ Ready for 100 octets of data\r\n")
        h.send(b"Subject: cut\r\n")
        with capturedLogs() as events:
            h.server.connectionLost(LOST)
        self.assertFalse(h.server._busy)
        self.assertEqual(errors(events), [])
        self.assertEqual(list((h.root / "cur").iterdir()) + list((h.root / "new").iterdir()), [])

    def test_pipelined_commands_are_not_run_after_the_close(self) -> None:
        """Commands still buffered behind a running one are dropped when the client is gone
        (they would run with nobody to answer)."""
        held = HeldThreads()
        h = Harness(self, run=held)
        h.login()
        held.holding = True
        h.send(b"s SELECT INBOX\r\nc CREATE Lost\r\n")
        h.server.connectionLost(LOST)
        held.release()
        self.assertFalse(h.maildir.folder_path("Lost").exists())

    def test_fetch_stops_reading_messages_after_the_close(self) -> None:
        """A FETCH of many messages stops at the close instead of reading every one of
        them in the thread pool for nobody."""
        held = CountedThreads()
        h = Harness(self, run=held)
        for _ in range(3):
            h.add(MSG2)
        h.login()
        h.cmd(b"s SELECT INBOX")
        held.holding = True
        before = held.count
        h.send(b"f FETCH 1:3 BODY.PEEK[]\r\n")
        self.assertEqual(held.count - before, 1)  # the first message is being read
        h.server.connectionLost(LOST)
        held.release()
        self.assertEqual(held.count - before, 1)  # and no other one after the close

    def test_fetch_to_a_client_reading_nothing_is_cut_at_the_autologout(self) -> None:
        """A FETCH whose output the client stopped reading is aborted by the autologout
        timer (RFC 3501 §5.4): a clean close would wait for output that can never go."""
        held = HeldThreads()
        h = Harness(self, run=held)
        for _ in range(3):
            h.add(MSG2)
        h.login()
        h.cmd(b"s SELECT INBOX")
        held.holding = True
        h.send(b"f FETCH 1:3 BODY.PEEK[]\r\n")
        h.transport.producer.pauseProducing()  # the client's window is full
        held.release()
        self.assertTrue(h.take().startswith(b"* 1 FETCH"))
        h.clock.advance(h.server.POSTAUTH_TIMEOUT)
        self.assertTrue(h.transport.disconnected)
        h.server.connectionLost(LOST)


class POP3StalledReaderTests(POP3TestCase):
    """A POP3 client that stops reading in the middle of RETR/TOP is closed after the idle
    timeout (RFC 1939 §3), instead of holding its connection slot forever: the timer was
    off for as long as a command ran."""

    def setUp(self) -> None:
        super().setUp()
        big = write_durably(self.root / "new", b"Subject: big\r\n\r\n" + b"x" * 76 * 4000)
        os.utime(self.root / "new" / big, (1_000_200, 1_000_200))

    def test_retr_to_a_client_reading_nothing_times_out(self) -> None:
        """RFC 1939 §3: a RETR to a client that reads nothing is aborted when the idle timer runs
        out."""
        proto, transport = self.login()
        proto.dataReceived(b"RETR 3\r\n")
        self.assertIsNotNone(transport.producer)  # waiting for the client to read
        self.clock.advance(DEFAULT_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)  # aborted: the rest can never be sent

    def test_retr_that_the_client_reads_is_not_timed_out(self) -> None:
        """A long RETR that the client keeps reading is not timed out; the idle timer counts from
        the last line received."""
        proto, transport = self.login()
        transport.clear()
        proto.dataReceived(b"RETR 3\r\n")
        while transport.producer is not None:
            self.clock.advance(DEFAULT_TIMEOUT - 1)
            transport.producer.resumeProducing()  # the client reads a chunk
        self.assertFalse(transport.disconnecting)
        self.assertTrue(transport.value().endswith(b"x\r\n.\r\n"))
        self.assertEqual(self.send(proto, transport, b"NOOP\r\n"), b"+OK\r\n")
        # The idle timer runs again between commands, from the last line received.
        self.clock.advance(DEFAULT_TIMEOUT)
        self.assertTrue(transport.disconnecting)

    def test_client_closing_mid_retr_is_no_server_error(self) -> None:
        """The transport stopping the RETR stream (the connection was lost) is not logged as
        a failed command with a traceback, and nothing is sent."""
        proto, transport = self.login()
        proto.dataReceived(b"RETR 3\r\n")
        transport.clear()
        transport.producer.stopProducing()  # what TCP does when the connection is lost
        proto.connectionLost(Failure(ConnectionDone("gone")))
        self.assertEqual(transport.value(), b"")
        self.assertEqual([e for e in self.events if e.get("log_failure") is not None], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionsCommandTests(CLITestCase):
    def test_connections_without_a_server(self) -> None:
        """`twistedmail connections` with no server running: one line, exit 1."""
        self.assertUserError(self.run_cli("connections"), "no running server")


class ControlConnectionTests(unittest.TestCase):
    def test_silent_control_connection_is_closed_and_counted(self) -> None:
        """A control-socket client that says nothing is closed after IDLE_TIMEOUT, and the
        `connections` answer counts control connections until they are gone."""

        async def flush() -> int:
            return 0

        clock = Clock()
        factory = control.control_factory(flush)
        factory.clock = clock  # type: ignore[attr-defined]
        factory.connection_counts = lambda: {"imap": 0}  # type: ignore[attr-defined]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertEqual(
            self.successResultOf(proto.connections()), {"counts": '{"control": 1, "imap": 0}'}
        )
        clock.advance(control.IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(LOST)
        self.assertEqual(factory.open_connections, 0)  # type: ignore[attr-defined]
        self.assertEqual(clock.getDelayedCalls(), [])
