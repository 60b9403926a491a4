"""Tests for the operations parts of L{twistedmail.service} and L{twistedmail.tap}: the TLS
reload (SIGHUP) and handing the data dir to the user twistd switches to (C{-u}/C{-g})."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from twistedmail.config import SERVICES, Config, ConfigError, parse_config
from twistedmail.service import MailServer
from twistedmail.tap import hand_over_data_dir, run_as
from twistedmail.throttle import LoginThrottle, ThrottlePolicy, load_throttle, save_throttle
from twistedmail.tls import create_self_signed


def quiet_config(data_dir: Path) -> Config:
    """No listeners: the server is built (and could be started) without binding a port."""
    return parse_config(
        {
            "server": {"hostname": "mail.example.test", "data_dir": str(data_dir)},
            "listen": dict.fromkeys(SERVICES, []),
            "inbound": {"check_authentication": False},  # no second resolver
        },
        None,
    )


def quiet_server(case: unittest.TestCase, data_dir: Path) -> MailServer:
    """A L{MailServer} on L{quiet_config} whose store closes and whose resolver's
    resolv.conf timer stops when C{case} ends."""
    server = MailServer(quiet_config(data_dir), reactor)
    case.addCleanup(server.store.close)
    case.addCleanup(server.run_in_thread.stop)  # its I/O threads (else kept until exit)
    # The resolv.conf resolver rereads its file on a timer.
    parse = getattr(server.queue.outbound.resolver, "_parseCall", None)
    if parse is not None and parse.active():
        case.addCleanup(parse.cancel)
    return server


class ReloadTests(unittest.TestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).resolve()
        self.server = quiet_server(self, self.data)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.cert, self.key = self.data / "tls" / "cert.pem", self.data / "tls" / "key.pem"

    def subject(self) -> str:
        cert = self.server.tls_context.options.certificate.to_cryptography()
        return cert.subject.rfc4514_string().removeprefix("CN=")

    async def test_reload(self) -> None:
        """The new pair is used from then on, and the log names its fingerprint."""
        self.assertEqual(self.subject(), "mail.example.test")
        create_self_signed(self.cert, self.key, "renewed.example.test")
        self.assertTrue(await self.server.reload_tls())
        self.assertEqual(self.subject(), "renewed.example.test")
        [event] = [e for e in self.events if "reloaded" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["cert"], str(self.cert))

    async def test_bad_pair_keeps_the_old_one(self) -> None:
        """A TLS reload with a bad key keeps the old certificate and logs the error naming both
        files."""
        self.key.write_bytes(b"not a key\n")
        self.assertFalse(await self.server.reload_tls())
        self.assertEqual(self.subject(), "mail.example.test")
        [event] = [e for e in self.events if "TLS reload failed" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.error)
        self.assertIn(f"cannot load certificate {self.cert} / key {self.key}", event["error"])

    def test_sighup_handler_chains_and_is_removed(self) -> None:
        """startService installs the SIGHUP handler on top of the one before (which it still
        calls); stopService puts the old one back."""
        calls: list[int] = []
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(signum))
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        reloads: list[bool] = []
        self.server._reload_tls_now = lambda: reloads.append(True)  # type: ignore[method-assign]
        self.server.startService()
        try:
            handler = signal.getsignal(signal.SIGHUP)
            assert callable(handler)
            handler(signal.SIGHUP, None)
            self.assertEqual(calls, [signal.SIGHUP])
        finally:
            d = self.server.stopService()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), handler)
        return d


class StartOrderTests(unittest.TestCase):
    """Issue 9: twistd builds the service, then forks (no C{-n}) and drops root, then calls
    C{startService}; nothing that must belong to the serving process is opened before."""

    def setUp(self) -> None:
        self.data = Path(self.mktemp()).resolve()
        self.server = quiet_server(self, self.data)

    def test_building_opens_nothing(self) -> None:
        """Building the service leaves the store unopened (no database file), starts no
        check thread and reads no throttle state."""
        self.assertFalse((self.data / "accounts.sqlite3").exists())
        with self.assertRaises(RuntimeError) as e:
            self.server.store.users()
        self.assertEqual(
            str(e.exception), f"account store {self.server.store.path} used before open()"
        )
        self.assertFalse(self.server.auth_pool.started)
        self.assertFalse(self.server._throttle_loaded)

    def test_start_opens_the_store(self) -> None:
        """startService opens the store, creating it (mode 0600), and stopService closes it."""
        self.server.startService()
        try:
            self.assertEqual(self.server.store.users(), [])
            self.assertEqual((self.data / "accounts.sqlite3").stat().st_mode & 0o777, 0o600)
            self.assertTrue(self.server.auth_pool.started)
        finally:
            d = self.server.stopService()
        return d

    def test_store_used_in_a_forked_child_raises(self) -> None:
        """A store opened before a fork() refuses to answer in the child (it would answer
        from a stale WAL index) instead of silently missing every later CLI change."""
        self.server.store.open()
        pid = os.fork()
        if pid == 0:
            try:
                self.server.store.users()
            except RuntimeError as e:
                os._exit(0 if "opened before a fork()" in str(e) else 2)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)


class HandOverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.data = Path(self.mktemp()).resolve()
        self.config = quiet_config(self.data)

    def test_chowns_everything(self) -> None:
        """Started as root with -u/-g, the data dir and everything in it is handed to that user
        and group."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown to another user needs root")
        nobody = pwd.getpwnam("nobody")
        # Not under trial's temp dir, whose parents nobody may not enter.
        self.data = Path(tempfile.mkdtemp(prefix="twistedmail-handover-")) / "data"
        self.addCleanup(shutil.rmtree, self.data.parent, True)
        self.config = quiet_config(self.data)
        (self.data / "mail" / "example.test" / "alice" / "new").mkdir(parents=True)
        (self.data / "mail" / "example.test" / "alice" / "new" / "1.host").write_bytes(b"x")
        (self.data / "accounts.sqlite3").write_bytes(b"")
        os.chmod(self.data.parent, 0o755)
        self.assertEqual(hand_over_data_dir(self.config, nobody.pw_uid, nobody.pw_gid), 7)
        for path in [self.data, *self.data.rglob("*")]:
            self.assertEqual((path.stat().st_uid, path.stat().st_gid), (nobody.pw_uid, 65534))
        self.assertEqual(hand_over_data_dir(self.config, nobody.pw_uid, nobody.pw_gid), 0)

    def test_parent_not_searchable(self) -> None:
        """A directory above the data dir the user cannot enter: one line saying what to do."""
        self.data.mkdir(parents=True)
        os.chmod(self.data.parent, 0o700)
        other = 54321  # owns nothing here, is in no group
        closed = next(p for p in reversed(self.data.parents) if not p.stat().st_mode & 0o001)
        e = self.assertRaises(ConfigError, hand_over_data_dir, self.config, other, other)
        self.assertEqual(
            str(e),
            f"built-in defaults: [server] data_dir: user {other} cannot enter"
            f" {closed} (run: chmod o+x {closed}, or choose a data_dir it can reach)",
        )


class _Parent(usage.Options):
    optParameters = [["uid", "u", None, "", int], ["gid", "g", None, "", int]]


class RunAsTests(unittest.TestCase):
    def options(self, **parent: int) -> usage.Options:
        sub = usage.Options()
        sub.parent = _Parent()
        sub.parent.update(parent)
        return sub

    def test_run_as(self) -> None:
        """run_as reads twistd's -u/-g: none without -u, and the user's primary group when -g is
        not given."""
        self.assertIsNone(run_as(usage.Options()))
        self.assertIsNone(run_as(self.options()))
        self.assertEqual(run_as(self.options(uid=65534, gid=100)), (65534, 100))
        primary = pwd.getpwuid(0).pw_gid
        self.assertEqual(run_as(self.options(uid=0)), (0, primary))


class ThrottleStateTests(unittest.TestCase):
    """DATA_DIR/throttle.json: written at stop, read at start (issue 5)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(2_000_000)
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        self.path = directory / "throttle.json"
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_round_trip(self) -> None:
        """The throttle state is saved mode 0600 as its snapshot and a fresh throttle loaded from
        it blocks the same."""
        throttle = LoginThrottle(self.clock, ThrottlePolicy(block_after=2))
        throttle.failed("192.0.2.1", "a@x.test")
        throttle.failed("192.0.2.1", "a@x.test")
        save_throttle(throttle, self.path)
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o600)
        self.assertEqual(json.loads(self.path.read_bytes()), throttle.snapshot())
        fresh = LoginThrottle(self.clock, ThrottlePolicy(block_after=2))
        load_throttle(fresh, self.path)
        self.assertTrue(fresh.blocked("192.0.2.1", "a@x.test"))  # that account from that IP

    def test_missing_and_broken_files(self) -> None:
        """A missing state file is silently nothing; a broken or wrong-version one is ignored
        with a warning."""
        throttle = LoginThrottle(self.clock)
        load_throttle(throttle, self.path)  # first start: nothing, silently
        self.assertEqual(self.events, [])
        for text in (b"{", b'{"version": 7}'):
            self.path.write_bytes(text)
            load_throttle(throttle, self.path)
        warnings = [e for e in self.events if "ignored" in e.get("log_format", "")]
        self.assertEqual([e["log_level"] for e in warnings], [LogLevel.warn] * 2)
        self.assertEqual(throttle.snapshot()["ip_blocked"], {})

    def test_unwritable(self) -> None:
        """A state file that cannot be written logs a warning, not an error."""
        save_throttle(LoginThrottle(self.clock), self.path.parent / "missing" / "throttle.json")
        [event] = [e for e in self.events if "not saved" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.warn)


class TmpCleanupServiceTests(unittest.TestCase):
    """The server sweeps every tmp/ folder at start and then daily."""

    def test_timer_and_sweep(self) -> None:
        """A 'tmp-cleanup' timer runs daily; its sweep removes a 36-hour-old tmp/ file."""
        from twistedmail.maildir import TMP_MAX_AGE, make_maildir
        from twistedmail.service import TMP_CLEANUP_INTERVAL

        data = Path(self.mktemp()).resolve()
        server = MailServer(quiet_config(data), reactor)
        self.addCleanup(server.store.close)
        self.addCleanup(server.run_in_thread.stop)
        parse = getattr(server.queue.outbound.resolver, "_parseCall", None)
        if parse is not None and parse.active():
            self.addCleanup(parse.cancel)
        timer = server.getServiceNamed("tmp-cleanup")
        self.assertEqual(timer.step, TMP_CLEANUP_INTERVAL)
        self.assertEqual(TMP_CLEANUP_INTERVAL, 86400)
        root = server.mail_dir / "example.test" / "alice"
        make_maildir(root)
        leftover = root / "tmp" / "1.M1P1Q1.host,S=3"
        leftover.write_bytes(b"abc")
        d = server.clean_tmp(time.time() + TMP_MAX_AGE + 60)
        d.addCallback(self.assertEqual, 1)
        return d.addCallback(lambda _: self.assertFalse(leftover.exists()))


class IMAPAccountTests(unittest.TestCase):
    def test_sessions_of_one_user_share_one_account(self) -> None:
        """Every IMAP login of a user gets the account object their open sessions hold
        (issue 10: no per-session copy), with no disk work on the reactor (the login's
        L{MaildirAccount.prepare} makes INBOX, in a thread); once none holds it, a new one."""
        import gc

        data = Path(self.mktemp()).resolve()
        server = quiet_server(self, data)
        first = server._imap_account("alice@example.test")
        self.assertFalse(first.maildir.root.exists())  # (nothing on the reactor)
        first._prepare()  # what the login runs in a thread
        shutil.rmtree(first.maildir.root)
        again = server._imap_account("alice@example.test")
        self.assertIs(again, first)
        self.assertFalse(first.maildir.root.exists())
        again._prepare()
        self.assertTrue((first.maildir.root / "cur").is_dir())  # INBOX made again at login
        other = server._imap_account("bob@example.test")
        self.assertIsNot(other, first)
        self.assertEqual(other.maildir.root, server.mail_dir / "example.test" / "bob")
        del first, again
        gc.collect()
        self.assertEqual(list(server._imap_accounts), ["bob@example.test"])
