"""Tests for twistd glue: the JSON log format (C{[log] format = "json"})."""

from __future__ import annotations

import io
import json
import os
import pwd
from pathlib import Path

from twisted.application.service import Application, MultiService
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher, globalLogPublisher
from twisted.python import log as legacy
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail.config import ConfigError, parse_config
from twistedmail.dns import quiet_dns_client
from twistedmail.tap import (
    Options,
    _StartGuard,
    json_line,
    json_log_observer,
    require_named_user,
    take_data_dir_owner,
)


class JSONLogTests(unittest.TestCase):
    def test_fields(self) -> None:
        """One line of JSON: time, level, namespace, the text, and the event's fields under
        common names (session, ip, message_id, outcome)."""
        line = json_line(
            {
                "log_time": 0.25,
                "log_level": LogLevel.info,
                "log_namespace": "twistedmail.smtp",
                "log_format": "session {session_id} message {id} from {peer}: {result}",
                "session_id": "abc",
                "id": "abc-1",
                "peer": "192.0.2.1",
                "result": "250 2.0.0 ok",
                "user": "alice@example.org",
                "size": 12,
                "log_logger": object(),
                "opaque": object(),
            }
        )
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(
            json.loads(line),
            {
                "time": "1970-01-01T00:00:00.250+00:00",
                "level": "info",
                "namespace": "twistedmail.smtp",
                "text": "session abc message abc-1 from 192.0.2.1: 250 2.0.0 ok",
                "session": "abc",
                "message_id": "abc-1",
                "ip": "192.0.2.1",
                "outcome": "250 2.0.0 ok",
                "user": "alice@example.org",
                "size": 12,
            },
        )

    def test_imap_service_and_failure(self) -> None:
        """IMAP/POP3 events get their service from the namespace; a failure its traceback,
        still on one line."""
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(
            json_line(
                {
                    "log_time": 1.0,
                    "log_level": LogLevel.critical,
                    "log_namespace": "twistedmail.imap",
                    "log_format": "imap broke session={session}",
                    "session": "s1",
                    "log_failure": failure,
                }
            )
        )
        self.assertEqual(record["service"], "imap")
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_observer_in_the_application(self) -> None:
        """With format json the Application twistd makes gets the JSON observer as its
        ILogObserver (twistd then logs every event through it); text format: none."""
        options = Options()
        options.parent = {"logfile": "-", "nodaemon": True, "syslog": False}  # type: ignore[attr-defined]
        config = parse_config({"log": {"format": "json"}}, None)
        observer = json_log_observer(options)
        assert observer is not None
        app = Application("twistedmail")
        _StartGuard(config, MultiService(), log_observer=observer).setServiceParent(app)
        self.assertIs(app.getComponent(ILogObserver), observer)
        plain = Application("twistedmail")
        _StartGuard(config, MultiService()).setServiceParent(plain)
        self.assertIsNone(plain.getComponent(ILogObserver))
        options.parent = {"syslog": True}  # type: ignore[attr-defined]
        self.assertIsNone(json_log_observer(options))

    def test_dns_chatter_filtered_in_json(self) -> None:
        """quiet_dns_client still drops Twisted's DNS client lines in front of the JSON
        observer; our lines pass."""
        out = io.StringIO()
        options = Options()
        options.parent = {"logfile": "-", "nodaemon": True}  # type: ignore[attr-defined]
        observer = json_log_observer(options)
        assert observer is not None
        observer._outFile = out  # the file twistd would use; here a buffer
        publisher = LogPublisher(observer)
        quiet_dns_client(publisher)
        globalLogPublisher.addObserver(publisher)
        try:
            legacy.msg("DNSDatagramProtocol starting on 40123")
            legacy.msg("(UDP Port 40123 Closed)")
            Logger(namespace="twistedmail.smtp", observer=publisher).info(
                "session {session} hello", session="s2"
            )
        finally:
            globalLogPublisher.removeObserver(publisher)
        lines = out.getvalue().splitlines()
        self.assertEqual([json.loads(x)["text"] for x in lines], ["session s2 hello"])


class DataDirOwnerTests(unittest.TestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("runs as root (twistd's -u, chown)")
        self.data_dir = Path(self.mktemp())
        self.data_dir.mkdir()
        self.config = parse_config({"server": {"data_dir": str(self.data_dir)}}, None)

    def options(self, **given: object) -> tuple[Options, dict[str, object]]:
        """Our options, under twistd's (a dict here: C{uid}, C{gid} as C{-u}/C{-g} set them)."""
        parent = {"uid": None, "gid": None, **given}
        options = Options()
        options.parent = parent  # type: ignore[assignment]
        return options, parent

    def test_root_without_u_takes_the_owner(self) -> None:
        """As root without -u/-g, a data dir another user owns sets twistd's uid and gid to
        its owner's (twistd switches to them after binding the ports); one root owns, or
        a -u/-g given, is left alone."""
        options, parent = self.options()
        self.assertIsNone(take_data_dir_owner(self.config, options))
        self.assertEqual((parent["uid"], parent["gid"]), (None, None))
        nobody = pwd.getpwnam("nobody")
        os.chown(self.data_dir, nobody.pw_uid, nobody.pw_gid)
        ids = (nobody.pw_uid, nobody.pw_gid)
        self.assertEqual(take_data_dir_owner(self.config, options), ids)
        self.assertEqual((parent["uid"], parent["gid"]), ids)
        given, parent = self.options(uid=0, gid=0)
        self.assertIsNone(take_data_dir_owner(self.config, given))
        self.assertEqual((parent["uid"], parent["gid"]), (0, 0))

    def test_owner_without_a_passwd_entry_stops_the_start(self) -> None:
        """A data dir owned by a uid that has no passwd entry (copied with numeric ids) stops
        the start with one line (ConfigError), uid/gid unset: twistd's switch to a uid calls
        initgroups, which looks the user up by name and would fail with a traceback."""
        uid = next(u for u in range(54321, 64000) if not _has_passwd_entry(u))
        os.chown(self.data_dir, uid, uid)
        options, parent = self.options()
        with self.assertRaises(ConfigError) as caught:
            take_data_dir_owner(self.config, options)
        self.assertIn(f"belongs to uid {uid}, which has no user name here", str(caught.exception))
        self.assertEqual((parent["uid"], parent["gid"]), (None, None))

    def test_u_without_a_passwd_entry_stops_the_start(self) -> None:
        """C{twistd -u N} naming a uid without a passwd entry stops the start with one line
        (ConfigError) before the ports are bound; a named -u, or none, passes."""
        uid = next(u for u in range(54321, 64000) if not _has_passwd_entry(u))
        options, _ = self.options(uid=uid)
        with self.assertRaises(ConfigError) as caught:
            require_named_user(self.config, options)
        self.assertIn(f"twistd -u {uid}: uid {uid} has no user name here", str(caught.exception))
        require_named_user(self.config, self.options(uid=pwd.getpwnam("nobody").pw_uid)[0])
        require_named_user(self.config, self.options()[0])


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
