"""The failed-login throttle (twistedmail.throttle) alone, in the checker, and on the wire of
SMTP AUTH, IMAP and POP3: growing delays on an injected Clock, then a temporary block answered
with each protocol's temporary error; other IPs unaffected."""

from __future__ import annotations

from pathlib import Path

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.mail import imap4
from twisted.mail import pop3 as tpop3
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail import passwords
from twistedmail.accounts import AccountStore
from twistedmail.auth import ClientCredentials, LoginBlocked, MailRealm, PasswordChecker
from twistedmail.delivery import LocalDelivery
from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.server import IMAPServer
from twistedmail.maildir import ChangeNotifier, UserMaildir, mailbox_root
from twistedmail.pop3 import MaildirPOP3Mailbox, POP3Server
from twistedmail.testing import TLSStringTransport, run_now, submission_for
from twistedmail.testing import sasl_plain as plain
from twistedmail.throttle import Block, LoginThrottle, ThrottlePolicy, ip_key, parse_networks

ALICE = "alice@example.test"
PASSWORD = "alice-pw"
ATTACKER = "203.0.113.66"
FRIEND = "198.51.100.7"


class ThrottleUnitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.throttle = LoginThrottle(self.clock)

    def test_delays_grow_then_cap(self) -> None:
        """Each failure from an IP for an account doubles the delay before the next answer (0, 1,
        2, 4, 8 s), capped at 16 s, without blocking yet."""
        delays = []
        for _ in range(9):
            delays.append(self.throttle.delay_for(ATTACKER, ALICE))
            self.throttle.failed(ATTACKER, ALICE)
        self.assertEqual(delays, [0, 1, 2, 4, 8, 16, 16, 16, 16])
        self.assertFalse(self.throttle.blocked(ATTACKER, ALICE))

    def test_tenth_failure_blocks_that_account_from_that_ip_for_fifteen_minutes(self) -> None:
        """Per (IP, account): one client with a stale password blocks only itself (issue 9)."""
        with capturedLogs() as events:
            for _ in range(10):
                self.throttle.failed(ATTACKER, "nobody@example.test")
        self.assertTrue(self.throttle.blocked(ATTACKER, "nobody@example.test"))
        self.assertFalse(self.throttle.blocked(ATTACKER, ALICE))  # other accounts, same IP
        self.assertEqual(self.throttle.delay_for(ATTACKER, ALICE), 0)  # ... not even delayed
        self.assertFalse(self.throttle.blocked(FRIEND, "nobody@example.test"))
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "login throttle: blocking user=nobody@example.test from ip=203.0.113.66 for"
                " 900s after 10 failed logins"
            ],
        )
        self.clock.advance(899)
        self.assertTrue(self.throttle.blocked(ATTACKER, "nobody@example.test"))
        self.clock.advance(1)
        self.assertFalse(self.throttle.blocked(ATTACKER, "nobody@example.test"))

    def test_many_accounts_from_one_ip_block_it_except_for_its_users(self) -> None:
        """Password spraying: ip_block_after (100) failures over any accounts block the IP,
        except for the accounts that logged in from it (the office behind that NAT)."""
        self.throttle.succeeded(ATTACKER, "bob@example.test")
        with capturedLogs() as events:
            for i in range(99):
                self.throttle.failed(ATTACKER, f"user{i}@example.test")
            self.assertFalse(self.throttle.blocked(ATTACKER, ALICE))
            self.throttle.failed(ATTACKER, "user99@example.test")
        self.assertTrue(self.throttle.blocked(ATTACKER, ALICE))
        self.assertFalse(self.throttle.blocked(ATTACKER, "bob@example.test"))
        self.assertFalse(self.throttle.blocked(FRIEND, ALICE))
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "login throttle: blocking ip=203.0.113.66 for 900s after 100 failed logins on"
                " 100 accounts (except the accounts that logged in from it)"
            ],
        )

    def test_exempt_networks_are_never_throttled(self) -> None:
        """[limits] login_throttle_exempt: no delay, no block, nothing counted (v4 and v6)."""
        throttle = LoginThrottle(
            self.clock,
            ThrottlePolicy(exempt=parse_networks(["192.0.2.0/24", "2001:db8::/32"])),
        )
        for ip in ("192.0.2.9", "::ffff:192.0.2.9", "2001:db8:5::1"):
            for _ in range(200):
                throttle.failed(ip, ALICE)
            self.assertEqual(throttle.delay_for(ip, ALICE), 0)
            self.assertFalse(throttle.blocked(ip, ALICE))
        self.assertEqual(throttle.snapshot()["account_failures"], {})
        throttle.failed("192.0.3.1", ALICE)
        self.assertEqual(throttle.delay_for("192.0.3.1", ALICE), 1)
        self.assertRaises(ValueError, parse_networks, ["192.0.2.0/33"])
        self.assertRaises(ValueError, parse_networks, ["office"])

    def test_list_and_unblock(self) -> None:
        """blocks() lists each block with its time left and failures; unblock(IP) lifts the
        IP's blocks, unblock(ADDRESS) the account's, and forgets their failures."""
        throttle = LoginThrottle(self.clock, ThrottlePolicy(block_after=2, ip_block_after=4))
        throttle.failed(ATTACKER, ALICE)
        throttle.failed(ATTACKER, ALICE)
        self.clock.advance(100)
        throttle.failed(ATTACKER, "bob@example.test")
        throttle.failed(ATTACKER, "carol@example.test")
        throttle.failed(FRIEND, "Carol@Example.test")
        throttle.failed(FRIEND, "carol@example.test")
        self.assertEqual(
            throttle.blocks(),
            [
                Block("ip", ATTACKER, "", 900.0, 4),
                Block("ip+account", FRIEND, "carol@example.test", 900.0, 2),
                Block("ip+account", ATTACKER, ALICE, 800.0, 2),
            ],
        )
        self.assertEqual(throttle.unblock("carol@example.test"), (1, 3))
        self.assertEqual(throttle.delay_for(FRIEND, "carol@example.test"), 0)
        self.assertEqual(throttle.unblock(ATTACKER), (2, 3))
        self.assertEqual(throttle.blocks(), [])
        self.assertFalse(throttle.blocked(ATTACKER, ALICE))
        self.assertEqual(throttle.delay_for(ATTACKER, ALICE), 0)
        self.assertEqual(throttle.unblock(ATTACKER), (0, 0))
        for i in range(10):
            self.throttle.failed(f"2001:db8:1:2::{i + 1:x}", ALICE)
        [block] = self.throttle.blocks()
        self.assertEqual(block.ip, "2001:db8:1:2::/64")  # as listed, and as an address:
        self.assertEqual(self.throttle.unblock("2001:db8:1:2::/64"), (1, 10))
        self.throttle.failed("2001:db8:1:2::1", ALICE)
        self.assertEqual(self.throttle.unblock("2001:db8:1:2:ffff::"), (0, 1))

    def test_account_block_is_listed(self) -> None:
        """An account block (distributed guessing) is listed without an IP."""
        for i in range(30):
            self.throttle.failed(f"192.0.2.{i}", ALICE)
        self.assertEqual(self.throttle.blocks(), [Block("account", "", ALICE, 900.0, 30)])
        self.assertEqual(self.throttle.unblock(ALICE.upper()), (1, 30))
        self.assertFalse(self.throttle.blocked("192.0.2.200", ALICE))

    def test_failures_expire_after_the_window(self) -> None:
        """Failures older than the window (600 s) no longer count: no delay, no block."""
        for _ in range(9):
            self.throttle.failed(ATTACKER, ALICE)
        self.clock.advance(600)
        self.assertEqual(self.throttle.delay_for(ATTACKER, ALICE), 0)
        self.throttle.failed(ATTACKER, ALICE)
        self.assertFalse(self.throttle.blocked(ATTACKER, ALICE))

    def test_success_forgets_that_accounts_failures_only(self) -> None:
        """A success forgets the failures of that account from that IP, not bob's; and
        bob's never delay alice (issue 9)."""
        for _ in range(3):
            self.throttle.failed(FRIEND, ALICE)
        self.throttle.failed(FRIEND, "bob@example.test")
        self.assertEqual(self.throttle.delay_for(FRIEND, ALICE), 4)
        self.throttle.succeeded(FRIEND, ALICE)
        self.assertEqual(self.throttle.delay_for(FRIEND, ALICE), 0)
        self.assertEqual(self.throttle.delay_for(FRIEND, "bob@example.test"), 1)

    def test_success_does_not_lift_a_block(self) -> None:
        """A correct password does not lift a block already in place."""
        for _ in range(10):
            self.throttle.failed(ATTACKER, ALICE)
        self.throttle.succeeded(ATTACKER, ALICE)
        self.assertTrue(self.throttle.blocked(ATTACKER, ALICE))

    def test_distributed_guessing_blocks_the_account_except_for_known_ips(self) -> None:
        """Failures for one account from many IPs block it for new IPs, not for an IP it logged
        in from, and not other accounts."""
        self.throttle.succeeded(FRIEND, ALICE)
        for i in range(30):
            self.throttle.failed(f"192.0.2.{i}", ALICE)
        self.assertTrue(self.throttle.blocked("192.0.2.200", ALICE))  # a new IP
        self.assertFalse(self.throttle.blocked(FRIEND, ALICE))  # where alice logged in from
        self.assertFalse(self.throttle.blocked("192.0.2.200", "bob@example.test"))

    def test_ipv6_counts_by_slash_64(self) -> None:
        """IPv6 failures count per /64 (an IPv4-mapped address as IPv4), so another /64 is not
        blocked."""
        self.assertEqual(ip_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(ip_key("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(ip_key("unknown"), "unknown")
        for i in range(10):
            self.throttle.failed(f"2001:db8:1:2::{i + 1:x}", ALICE)
        self.assertTrue(self.throttle.blocked("2001:db8:1:2:ffff::9", ALICE))
        self.assertFalse(self.throttle.blocked("2001:db8:1:3::1", ALICE))

    def test_memory_is_bounded(self) -> None:
        """The failure tables keep at most max_entries entries."""
        throttle = LoginThrottle(self.clock, ThrottlePolicy(max_entries=100))
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}@example.test")
        self.assertLessEqual(len(throttle._ip_failures), 100)
        self.assertLessEqual(len(throttle._account_failures), 100)

    def test_admit_waits_on_the_clock(self) -> None:
        """admit waits the current delay (2 s after two failures) on the clock before it returns."""
        self.throttle.failed(ATTACKER, ALICE)
        self.throttle.failed(ATTACKER, ALICE)
        d = defer.Deferred.fromCoroutine(self.throttle.admit(ATTACKER, ALICE))
        self.assertNoResult(d)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))


class World:
    """One store (alice), one throttled checker, one portal for IMAP and POP3."""

    def __init__(self, tc: unittest.TestCase) -> None:
        root = Path(tc.mktemp())
        root.mkdir()
        self.store = AccountStore(root / "accounts.sqlite3")
        tc.addCleanup(self.store.close)
        self.store.add_user(ALICE, passwords.hash_password(PASSWORD))
        self.mail_dir = root / "mail"
        self.notifier = ChangeNotifier()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.throttle = LoginThrottle(self.clock)
        self.checker = PasswordChecker(self.store, run_now, self.throttle)
        self.delivery = LocalDelivery(self.store, self.mail_dir, self.notifier, run_now)
        realm = MailRealm(
            {
                imap4.IAccount: lambda a: MaildirAccount(
                    a, UserMaildir(mailbox_root(self.mail_dir, a)), self.notifier, run_now
                ),
                tpop3.IMailbox: lambda a: MaildirPOP3Mailbox(
                    mailbox_root(self.mail_dir, a), run_now, self.notifier
                ),
            }
        )
        UserMaildir(mailbox_root(self.mail_dir, ALICE)).ensure()
        self.portal = Portal(realm, [self.checker])

    def fail_until_blocked(self, tc: unittest.TestCase, ip: str = ATTACKER) -> None:
        """Ten wrong passwords from C{ip} through the checker, waiting out each delay."""
        for _ in range(10):
            d = self.checker.requestAvatarId(ClientCredentials(ALICE.encode(), b"guess", ip))
            self.clock.advance(16)
            tc.failureResultOf(d, UnauthorizedLogin)
        tc.assertTrue(self.throttle.blocked(ip, ALICE))


class CheckerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.world = World(self)

    def login(self, ip: str, password: str = PASSWORD) -> defer.Deferred[str]:
        return self.world.checker.requestAvatarId(
            ClientCredentials(ALICE.encode(), password.encode(), ip)
        )

    def test_failure_delays_the_next_answer_from_that_ip(self) -> None:
        """After a failure the checker answers that IP's next login after the delay; another IP
        is answered at once."""
        self.failureResultOf(self.login(ATTACKER, "wrong"), UnauthorizedLogin)
        d = self.login(ATTACKER)
        self.assertNoResult(d)
        self.world.clock.advance(1)
        self.assertEqual(self.successResultOf(d), ALICE)
        # Another IP is answered at once.
        self.assertEqual(self.successResultOf(self.login(FRIEND)), ALICE)

    def test_blocked_ip_is_refused_without_a_password_check(self) -> None:
        """A blocked IP gets LoginBlocked even with the right password; another IP logs in."""
        self.world.fail_until_blocked(self)
        self.failureResultOf(self.login(ATTACKER), LoginBlocked)  # even the right password
        self.assertEqual(self.successResultOf(self.login(FRIEND)), ALICE)

    def test_unknown_users_count_too(self) -> None:
        """Failures on a name that is no account block that name from that IP; alice, from
        the same IP, is neither delayed nor blocked (issue 9)."""
        for _ in range(10):
            d = self.world.checker.requestAvatarId(
                ClientCredentials(b"../../etc/passwd", b"x", ATTACKER)
            )
            self.world.clock.advance(16)
            self.failureResultOf(d, UnauthorizedLogin)
        d = self.world.checker.requestAvatarId(
            ClientCredentials(b"../../etc/passwd", b"x", ATTACKER)
        )
        self.failureResultOf(d, LoginBlocked)
        self.assertEqual(self.successResultOf(self.login(ATTACKER)), ALICE)

    def test_plain_credentials_are_not_throttled(self) -> None:
        """Without a client IP (UsernamePassword), only the password is checked."""
        self.world.fail_until_blocked(self)
        d = self.world.checker.requestAvatarId(UsernamePassword(ALICE.encode(), b"alice-pw"))
        self.assertEqual(self.successResultOf(d), ALICE)


def transport_from(ip: str) -> TLSStringTransport:
    return TLSStringTransport(peerAddress=IPv4Address("TCP", ip, 40000))


class ProtocolTests(unittest.TestCase):
    """Each protocol answers a blocked IP with its temporary error and logs a failed login."""

    def setUp(self) -> None:
        self.world = World(self)

    def smtp(self, ip: str, line: bytes) -> bytes:
        factory = submission_for(self.world)
        proto = factory.buildProtocol(None)
        transport = transport_from(ip)
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO client\r\n")
        transport.clear()
        proto.dataReceived(line)
        self.world.clock.advance(16)
        out = transport.value()
        proto.connectionLost(Failure(ConnectionError("done")))
        return out

    def imap(self, ip: str, line: bytes) -> bytes:
        proto = IMAPServer(
            portal=self.world.portal,
            tls=None,
            implicit_tls=True,
            clock=self.world.clock,
        )
        transport = transport_from(ip)
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(line)
        self.world.clock.advance(16)
        out = transport.value()
        proto.connectionLost(Failure(ConnectionError("done")))
        return out

    def pop3(self, ip: str, data: bytes) -> bytes:
        proto = POP3Server(
            portal=self.world.portal, tls=None, implicit_tls=True, clock=self.world.clock
        )
        transport = transport_from(ip)
        proto.makeConnection(transport)
        transport.clear()
        proto.dataReceived(data)
        self.world.clock.advance(16)
        out = transport.value()
        proto.connectionLost(Failure(ConnectionError("done")))
        return out

    def test_smtp_auth(self) -> None:
        """RFC 4954: a blocked IP's AUTH gets 454 4.7.0 (temporary) and a failed login is logged."""
        auth = b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\n"
        self.world.fail_until_blocked(self)
        with capturedLogs() as events:
            self.assertEqual(
                self.smtp(ATTACKER, auth),
                b"454 4.7.0 Too many failed logins, try again later\r\n",
            )
        self.assertIn(
            "login failed: service=smtp user=alice@example.test ip=203.0.113.66",
            [formatEvent(e) for e in events],
        )
        self.assertEqual(self.smtp(FRIEND, auth), b"235 2.7.0 Authentication successful\r\n")

    def test_smtp_answer_waits_for_the_delay(self) -> None:
        """The SMTP AUTH answer to a throttled IP comes only after the delay has passed on the
        clock."""
        self.world.throttle.failed(ATTACKER, ALICE)
        self.world.throttle.failed(ATTACKER, ALICE)
        factory = submission_for(self.world)
        proto = factory.buildProtocol(None)
        transport = transport_from(ATTACKER)
        proto.makeConnection(transport)
        proto.dataReceived(b"EHLO client\r\n")
        transport.clear()
        proto.dataReceived(b"AUTH PLAIN " + plain(ALICE, "wrong") + b"\r\nNOOP\r\n")
        self.world.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")  # NOOP waits too (replies stay in order)
        self.world.clock.advance(0.1)
        self.assertEqual(
            transport.value(),
            b"535 5.7.8 Authentication credentials invalid\r\n250 2.0.0 OK\r\n",
        )
        proto.connectionLost(Failure(ConnectionError("done")))

    def test_imap_login(self) -> None:
        """RFC 5530: a blocked IP's LOGIN and AUTHENTICATE get NO [UNAVAILABLE]."""
        login = b"a LOGIN alice@example.test alice-pw\r\n"
        self.world.fail_until_blocked(self)
        self.assertEqual(
            self.imap(ATTACKER, login),
            b"a NO [UNAVAILABLE] Too many failed logins, try again later\r\n",
        )
        self.assertEqual(
            self.imap(ATTACKER, b"b AUTHENTICATE PLAIN " + plain(ALICE, PASSWORD) + b"\r\n"),
            b"b NO [UNAVAILABLE] Too many failed logins, try again later\r\n",
        )
        self.assertTrue(self.imap(FRIEND, login).startswith(b"a OK [CAPABILITY IMAP4rev1 "))

    def test_pop3_user_pass_and_auth(self) -> None:
        """RFC 3206: a blocked IP's PASS and AUTH get -ERR [SYS/TEMP]."""
        self.world.fail_until_blocked(self)
        self.assertEqual(
            self.pop3(ATTACKER, b"USER alice@example.test\r\nPASS alice-pw\r\n"),
            b"+OK send PASS\r\n-ERR [SYS/TEMP] too many failed logins, try again later\r\n",
        )
        self.assertEqual(
            self.pop3(ATTACKER, b"AUTH PLAIN " + plain(ALICE, PASSWORD) + b"\r\n"),
            b"-ERR [SYS/TEMP] too many failed logins, try again later\r\n",
        )
        self.assertEqual(
            self.pop3(FRIEND, b"USER alice@example.test\r\nPASS alice-pw\r\n"),
            b"+OK send PASS\r\n+OK Logged in\r\n",
        )


class SnapshotTests(unittest.TestCase):
    """snapshot/restore: the state survives a restart (issue 5), expired parts do not."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.policy = ThrottlePolicy(block_after=3, ip_block_after=4, account_block_after=5)
        self.throttle = LoginThrottle(self.clock, self.policy)

    def restarted(self, state: object) -> LoginThrottle:
        """A new throttle (as after a restart) given C{state} through JSON."""
        import json

        fresh = LoginThrottle(self.clock, self.policy)
        fresh.restore(json.loads(json.dumps(state)))
        return fresh

    def test_round_trip(self) -> None:
        """Every kind of block and count comes back (version 2 snapshot, issue 9)."""
        self.throttle.succeeded(FRIEND, ALICE)
        for _ in range(3):
            self.throttle.failed(ATTACKER, ALICE)  # alice from ATTACKER
        self.throttle.failed(ATTACKER, "carol@example.test")  # 4 from ATTACKER: the IP
        for i in range(5):
            self.throttle.failed(f"203.0.113.{i + 100}", ALICE)  # alice from anywhere
        self.throttle.failed("192.0.2.99", "bob@example.test")
        state = self.throttle.snapshot()
        self.assertEqual(state["version"], 2)
        fresh = self.restarted(state)
        self.assertTrue(fresh.blocked(ATTACKER, ALICE))  # the (IP, account) block
        self.assertTrue(fresh.blocked(ATTACKER, "dave@example.test"))  # the IP block
        self.assertTrue(fresh.blocked("192.0.2.200", ALICE))  # the account block
        self.assertFalse(fresh.blocked(FRIEND, ALICE))  # ... but not from a trusted IP
        self.assertEqual(fresh.delay_for("192.0.2.99", "bob@example.test"), 1.0)  # failures
        self.assertEqual(fresh.delay_for("192.0.2.99", "x"), 0)
        self.assertEqual(fresh.snapshot(), state)
        self.assertEqual(fresh.blocks(), self.throttle.blocks())
        self.clock.advance(self.policy.block_time)
        self.assertFalse(fresh.blocked(ATTACKER, ALICE))
        self.assertFalse(fresh.blocked(ATTACKER, "dave@example.test"))

    def test_version_1_file_still_loads(self) -> None:
        """A throttle.json of the per-IP throttle: its IP block becomes blocks of the
        accounts that failed from that IP (the others are free), its failures count per
        (IP, account); an IP block whose failures are out of the window is lifted."""
        now = self.clock.seconds()
        old = {
            "version": 1,
            "ip_failures": {
                ATTACKER: [[now - 30, ALICE], [now - 20, ALICE], [now - 10, "bob@example.test"]]
            },
            "account_failures": {ALICE: [now - 30, now - 20], "bob@example.test": [now - 10]},
            "ip_blocked": {ATTACKER: now + 500, FRIEND: now + 500},
            "account_blocked": {},
            "trusted": {"carol@example.test": {ATTACKER: now - 1000}},
        }
        fresh = self.restarted(old)
        self.assertTrue(fresh.blocked(ATTACKER, ALICE))
        self.assertTrue(fresh.blocked(ATTACKER, "bob@example.test"))
        self.assertFalse(fresh.blocked(ATTACKER, "dave@example.test"))
        self.assertFalse(fresh.blocked(FRIEND, ALICE))
        self.assertEqual(fresh.delay_for(ATTACKER, ALICE), 2)
        self.assertEqual(
            fresh.blocks(),
            [
                Block("ip+account", ATTACKER, ALICE, 500.0, 2),
                Block("ip+account", ATTACKER, "bob@example.test", 500.0, 1),
            ],
        )

    def test_expired_state_is_left_out(self) -> None:
        """A snapshot leaves out failures and blocks that have expired; a restart from it blocks
        nobody."""
        for _ in range(3):
            self.throttle.failed(ATTACKER, ALICE)
        self.clock.advance(self.policy.block_time + 1)
        state = self.throttle.snapshot()
        self.assertEqual(
            (state["ip_failures"], state["account_failures"], state["ip_blocked"]), ({}, {}, {})
        )
        self.assertFalse(self.restarted(state).blocked(ATTACKER, ALICE))

    def test_malformed(self) -> None:
        """restore raises ValueError on a malformed or wrong-version snapshot and keeps the state
        it had."""
        for _ in range(3):
            self.throttle.failed(ATTACKER, ALICE)
        good = self.throttle.snapshot()
        for bad in (
            None,
            [],
            {"version": 2},
            {"version": 3},
            {**good, "ip_blocked": [1, 2]},
            {**good, "pair_blocked": [["ip", 1.0]]},
            {**good, "ip_failures": {"x": [[1.0]]}},
            {**good, "trusted": {"a": {"ip": "soon"}}},
        ):
            self.assertRaises(ValueError, self.throttle.restore, bad)
            self.assertTrue(self.throttle.blocked(ATTACKER, ALICE))  # unchanged
