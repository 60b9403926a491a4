"""Tests for the ACME client's own parts (twistedmail.acme): which names, when to renew,
the daily check on a Clock, the HTTP-01 challenge resource, durable replacement of the
pair.  The protocol itself runs against Pebble in tests/e2e/test_e2e_acme.py."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from acme import messages as acme_messages
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from twistedmail import acme
from twistedmail.testing import create_test_ca
from twistedmail.tls import create_self_signed
from twistedmail.web import MailSettings, build_site, mount, web_factory

# Certificates made below (from now, valid 10 days, in whole seconds) expire 10 days and a
# few seconds after NOW: the day-count boundaries are never met exactly.
NOW = int(datetime.datetime.now(datetime.timezone.utc).timestamp()) - 10
DAY = 86400


class NamesTests(unittest.TestCase):
    def test_hostname_then_autoconfig_and_mta_sts_of_each_domain(self) -> None:
        """The hostname comes first (it is the subject); each local domain adds its
        autoconfig. and mta-sts. names, once each, in domain order."""
        self.assertEqual(
            acme.wanted_names("Mail.Example.ORG", ["example.org", "example.net"]),
            [
                "mail.example.org",
                "autoconfig.example.net",
                "mta-sts.example.net",
                "autoconfig.example.org",
                "mta-sts.example.org",
            ],
        )
        self.assertEqual(acme.wanted_names("mail.example.org", []), ["mail.example.org"])

    def test_autodiscover_of_each_domain_with_https(self) -> None:
        """With the https listener on, each local domain adds autodiscover.D too, the host
        Outlook asks (https://autodiscover.D/autodiscover/autodiscover.xml)."""
        self.assertEqual(
            acme.wanted_names("Mail.Example.ORG", ["example.org", "example.net"], https=True),
            [
                "mail.example.org",
                "autoconfig.example.net",
                "autodiscover.example.net",
                "mta-sts.example.net",
                "autoconfig.example.org",
                "autodiscover.example.org",
                "mta-sts.example.org",
            ],
        )
        self.assertEqual(
            acme.wanted_names("mail.example.org", [], https=True), ["mail.example.org"]
        )


class RenewalReasonTests(unittest.TestCase):
    def setUp(self) -> None:
        # create_test_ca: a CA-issued certificate for mail.example.org valid 10 days from now
        self.dir = Path(self.mktemp())
        _, cert, _ = create_test_ca(self.dir, "mail.example.org")
        self.issued = cert.read_bytes()

    def test_no_or_unreadable_or_self_signed_certificate(self) -> None:
        """A missing, unreadable or self-signed certificate is replaced."""
        create_self_signed(self.dir / "s.pem", self.dir / "s.key", "mail.example.org")
        names = ["mail.example.org"]
        self.assertEqual(acme.renewal_reason(None, names, NOW), "no certificate")
        self.assertEqual(acme.renewal_reason(b"junk", names, NOW), "the certificate cannot be read")
        self.assertEqual(
            acme.renewal_reason((self.dir / "s.pem").read_bytes(), names, NOW),
            "the certificate is self-signed",
        )

    def test_thirty_days_before_expiry(self) -> None:
        """Renewed when fewer than 30 days are left, kept with more."""
        names = ["mail.example.org"]
        self.assertEqual(
            acme.renewal_reason(self.issued, names, NOW),
            "the certificate expires in 10.0 days",
        )
        self.assertIsNone(acme.renewal_reason(self.issued, names, NOW - 21 * DAY))
        self.assertEqual(
            acme.renewal_reason(self.issued, names, NOW - 19 * DAY),
            "the certificate expires in 29.0 days",
        )

    def test_a_missing_name(self) -> None:
        """A domain added since: the certificate lacks its names and is replaced."""
        names = acme.wanted_names("mail.example.org", ["example.org"])
        self.assertEqual(
            acme.renewal_reason(self.issued, names, NOW - 21 * DAY),
            "the certificate does not name autoconfig.example.org, mta-sts.example.org",
        )


class PairReplacementTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        self.cert.write_bytes(b"old cert")
        self.key.write_bytes(b"old key")

    def test_install(self) -> None:
        """Both files replaced, the key mode 0600, no temporary file left."""
        acme.install_pair(self.cert, self.key, b"new cert", b"new key")
        self.assertEqual((self.cert.read_bytes(), self.key.read_bytes()), (b"new cert", b"new key"))
        self.assertEqual(self.key.stat().st_mode & 0o777, 0o600)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["cert.pem", "key.pem"])

    def test_crash_between_the_renames_is_completed(self) -> None:
        """A crash after the key's rename, before the certificate's: the next start puts
        the new certificate in place, so the pair matches again."""
        (self.dir / "cert.pem.new").write_bytes(b"new cert")
        self.key.write_bytes(b"new key")
        acme.complete_replacement(self.cert, self.key)
        self.assertEqual((self.cert.read_bytes(), self.key.read_bytes()), (b"new cert", b"new key"))
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["cert.pem", "key.pem"])

    def test_crash_before_the_pair_was_written_keeps_the_old(self) -> None:
        """Only the new key written (no cert.pem.new): the old pair stays, the stray key
        goes."""
        (self.dir / "key.pem.new").write_bytes(b"new key")
        acme.complete_replacement(self.cert, self.key)
        self.assertEqual((self.cert.read_bytes(), self.key.read_bytes()), (b"old cert", b"old key"))
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["cert.pem", "key.pem"])


class ChallengeResourceTests(unittest.TestCase):
    def request(self, root: Any, path: bytes) -> bytes:
        site = web_factory(root, Clock())
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: mail.example.org\r\n\r\n")
        return transport.value()

    def test_published_token_answered(self) -> None:
        """RFC 8555 §8.3: GET /.well-known/acme-challenge/TOKEN answers the key
        authorization; an unknown or withdrawn token, or the directory, gets 404."""
        root = build_site(MailSettings("mail.example.org", (), lambda d: False), b"")
        challenges = acme.ChallengeResource()
        mount(root, acme.CHALLENGE_PATH, challenges)
        challenges.publish(b"tok-1", b"tok-1.thumbprint")
        answer = self.request(root, b"/.well-known/acme-challenge/tok-1")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer)
        self.assertIn(b"\r\nContent-Type: text/plain\r\n", answer)
        self.assertTrue(answer.endswith(b"\r\n\r\ntok-1.thumbprint"), answer)
        for path in (b"/.well-known/acme-challenge/other", b"/.well-known/acme-challenge/"):
            self.assertTrue(self.request(root, path).startswith(b"HTTP/1.1 404 "), path)
        challenges.withdraw(b"tok-1")
        answer = self.request(root, b"/.well-known/acme-challenge/tok-1")
        self.assertTrue(answer.startswith(b"HTTP/1.1 404 "), answer)


class KeeperTests(unittest.TestCase):
    """L{acme.CertificateKeeper} on a Clock; its thread work runs inline.  The CA's
    certificate bundle does not exist, so an order fails before any connection."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        _, cert, key = create_test_ca(self.dir / "ca", "mail.example.org")
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        self.cert.write_bytes(cert.read_bytes())
        self.key.write_bytes(key.read_bytes())
        self.clock = Clock()
        self.clock.advance(NOW - 21 * DAY)  # the certificate has 31 days left
        self.reloads = 0
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

        async def reload() -> bool:
            self.reloads += 1
            return True

        self.keeper = acme.CertificateKeeper(
            acme.AcmeSettings("https://127.0.0.1:9/dir", "a@example.org", self.dir / "none.pem"),
            acme.StateDir(self.dir / "acme"),
            self.cert,
            self.key,
            lambda: ["mail.example.org"],
            reload,
            self.clock,
            lambda f, *args: defer.maybeDeferred(f, *args),
        )

    def messages(self, level: LogLevel) -> list[str]:
        return [
            e["log_format"].format(**e)
            for e in self.events
            if e.get("log_namespace") == "twistedmail.acme" and e["log_level"] == level
        ]

    def test_daily_check_renews_thirty_days_ahead_and_keeps_the_old_on_failure(self) -> None:
        """Checked at start and every day: nothing is ordered while 30 or more days are
        left; the day after, an order is tried, and its failure is logged and the current
        pair left as it was, no reload."""
        before = (self.cert.read_bytes(), self.key.read_bytes())
        timer = TimerService(acme.CHECK_INTERVAL, self.keeper.check)
        timer.clock = self.clock
        timer.startService()
        self.addCleanup(timer.stopService)
        self.assertEqual(self.messages(LogLevel.info), [])
        self.clock.advance(DAY)  # 30.0 days left: not fewer than 30
        self.assertEqual(self.messages(LogLevel.info), [])
        self.clock.advance(DAY)  # 29.0 days left
        self.assertEqual(
            self.messages(LogLevel.info),
            [
                "ACME: ordering a certificate for mail.example.org from https://127.0.0.1:9/dir:"
                " the certificate expires in 29.0 days"
            ],
        )
        [error] = self.messages(LogLevel.error)
        self.assertTrue(
            error.startswith("ACME: no new certificate, keeping the current one: "), error
        )
        self.assertIn("none.pem", error)
        self.assertEqual((self.cert.read_bytes(), self.key.read_bytes()), before)
        self.assertEqual(self.reloads, 0)
        # the account key was made on the way, mode 0600, in a 0700 directory
        self.assertEqual((self.dir / "acme").stat().st_mode & 0o777, 0o700)
        self.assertEqual((self.dir / "acme" / "account.key").stat().st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(self.dir / "acme"), ["account.key"])


class StateDirTests(unittest.TestCase):
    def test_account_belongs_to_its_directory(self) -> None:
        """The account recorded for one ACME directory is not used at another (a switch
        from staging to production registers anew); the file is mode 0600."""
        state = acme.StateDir(Path(self.mktemp()))
        state.path.mkdir(mode=0o700)
        regr = acme_messages.RegistrationResource(
            body=acme_messages.Registration(), uri="https://ca.example/acct/1"
        )
        state.save_registration("https://ca.example/dir", regr)
        found = state.registration("https://ca.example/dir")
        assert found is not None
        self.assertEqual(found.uri, "https://ca.example/acct/1")
        self.assertIsNone(state.registration("https://other.example/dir"))
        self.assertEqual((state.path / "account.json").stat().st_mode & 0o777, 0o600)


class WriteDurablyTests(unittest.TestCase):
    def test_short_writes_still_write_every_byte(self) -> None:
        """write_durably writes the whole file with its mode even when each os.write takes
        only part of what it is given (a full disk's partial writes): a certificate or
        key cut short must never be renamed into place."""
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        real = os.write
        self.patch(os, "write", lambda fd, data: real(fd, bytes(data[:7])))
        data = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 300 + b"\n-----END CERTIFICATE-----\n"
        acme.write_durably(path, data, 0o640)
        self.assertEqual((path.read_bytes(), path.stat().st_mode & 0o777), (data, 0o640))
        self.assertEqual([p.name for p in path.parent.iterdir()], [path.name])
