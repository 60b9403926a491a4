"""Tests for forwarding (L{twistedmail.srs}): SRS rewriting and reversal with an injected
clock, the secret file, the ARC seal with a domain's DKIM key, a Sieve redirect leaving
with an SRS sender, and the C{[forwarding]} config keys."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dkim
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.config import ConfigError, ForwardingConfig, load_config, parse_config
from twistedmail.delivery import LocalDelivery
from twistedmail.dkim import KeyStore
from twistedmail.mailauth import (
    AuthenticationResults,
    DMARCResult,
    SPFResult,
    TemporaryDNSFailure,
    authentication_results,
    verify_arc,
)
from twistedmail.maildir import ChangeNotifier
from twistedmail.sieve.store import SieveStore
from twistedmail.srs import (
    Forwarding,
    SenderRewriting,
    SRSError,
    arc_seal,
    is_srs,
    load_secret,
)

M = Mailbox.parse
ROOT = Path(__file__).resolve().parent.parent
DAY = 86400
MESSAGE = (
    b"Authentication-Results: mail.example.org; spf=pass smtp.mailfrom=bob@remote.example\r\n"
    b"From: Bob <bob@remote.example>\r\n"
    b"To: fwd@example.org\r\n"
    b"Subject: hi\r\n"
    b"\r\n"
    b"body\r\n"
)


def run_now(f: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(f, *args)


class SRSTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.clock = Clock()
        self.clock.advance(20000 * DAY)
        self.srs = SenderRewriting(self.dir / "srs.secret", self.clock)

    def test_secret_made_once_owner_only(self) -> None:
        """The secret is made on first use, mode 0600, and read back unchanged after."""
        first = load_secret(self.dir / "s")
        self.assertEqual(stat.S_IMODE(os.stat(self.dir / "s").st_mode), 0o600)
        self.assertEqual(len(first), 64)
        self.assertEqual(load_secret(self.dir / "s"), first)

    def test_secret_made_once_by_racing_threads(self) -> None:
        """Threads making the secret at once all get the same one; no temporary file
        is left behind."""
        results: list[bytes] = []
        threads = [
            threading.Thread(target=lambda: results.append(load_secret(self.dir / "r")))
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(len(set(results)), 1)
        self.assertEqual(sorted(os.listdir(self.dir)), ["r"])

    def test_secret_whole_after_short_writes_and_nothing_left_on_failure(self) -> None:
        """os.write may write less than asked: the secret file is whole (64 hex digits and
        a newline), not the first octets; a write that fails leaves no file behind."""
        real = os.write
        self.patch(os, "write", lambda fd, data: real(fd, bytes(data[:5])))
        secret = load_secret(self.dir / "short")
        self.assertEqual((self.dir / "short").read_bytes(), secret + b"\n")
        self.assertEqual(len(secret), 64)

        def full(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        self.patch(os, "write", full)
        self.assertRaises(OSError, load_secret, self.dir / "full")
        self.assertEqual(sorted(os.listdir(self.dir)), ["short"])

    def test_forward_and_reverse(self) -> None:
        """SRS0=HHHH=TT=domain=local@ours reverses to the original sender."""
        rewritten = self.srs.forward(M("Bob@Remote.example"), "example.org")
        assert rewritten is not None
        self.assertTrue(is_srs(rewritten))
        self.assertEqual(rewritten.domain, "example.org")
        self.assertTrue(rewritten.local.startswith("srs0="))
        self.assertTrue(rewritten.local.endswith("=remote.example=bob"))
        self.assertEqual(self.srs.reverse(rewritten), M("bob@remote.example"))

    def test_srs0_sender_becomes_srs1(self) -> None:
        """A sender that is already SRS0 elsewhere becomes SRS1, which reverses to it."""
        first = SenderRewriting(self.dir / "other.secret", self.clock)
        srs0 = first.forward(M("bob@remote.example"), "hop1.example")
        assert srs0 is not None
        srs1 = self.srs.forward(srs0, "example.org")
        assert srs1 is not None
        self.assertTrue(srs1.local.startswith("srs1="))
        self.assertEqual(first.reverse(self.srs.reverse(srs1)), M("bob@remote.example"))

    def test_expired_after_21_days(self) -> None:
        """An SRS0 address reverses for 21 days (libsrs2's default), not after."""
        rewritten = self.srs.forward(M("bob@remote.example"), "example.org")
        assert rewritten is not None
        self.clock.advance(20 * DAY)
        self.assertEqual(self.srs.reverse(rewritten), M("bob@remote.example"))
        self.clock.advance(2 * DAY)
        with self.assertRaises(SRSError):
            self.srs.reverse(rewritten)

    def test_other_secret_and_junk_refused(self) -> None:
        """An address made under another secret, or not SRS at all, does not reverse."""
        other = SenderRewriting(self.dir / "other.secret", self.clock)
        rewritten = other.forward(M("bob@remote.example"), "example.org")
        assert rewritten is not None
        for address in (rewritten, M("srs0=x@example.org"), M("bob@example.org")):
            with self.assertRaises(SRSError):
                self.srs.reverse(address)

    def test_unrewritable_senders(self) -> None:
        """A quoted or literal sender, or one whose SRS local part would pass 64 octets
        (RFC 5321 §4.5.3.1.1), is not rewritten."""
        for sender in ('"a b"@remote.example', "bob@[192.0.2.1]", "b" * 50 + "@remote.example"):
            self.assertIsNone(self.srs.forward(M(sender), "example.org"))


class ARCTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.keys = KeyStore(self.dir / "dkim")

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        records = dict(self.keys.txt_record(k) for k in self.keys.signing_keys("example.org"))
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    def test_sealed_with_the_domain_key(self) -> None:
        """RFC 8617 §5.1: the ARC set (AAR from our Authentication-Results, AMS, AS with
        cv=none) signed by the domain's RSA key verifies."""
        self.keys.generate("example.org")
        sealed = arc_seal(MESSAGE, self.keys, "example.org", "mail.example.org")
        self.assertTrue(sealed.endswith(MESSAGE))
        self.assertTrue(sealed.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.org"))
        self.assertIn(
            b"ARC-Authentication-Results: i=1; mail.example.org;\r\n"
            b" spf=pass smtp.mailfrom=bob@remote.example\r\n",
            sealed,
        )
        cv, _, reason = dkim.arc_verify(sealed, dnsfunc=self.dnsfunc)
        self.assertEqual((cv, reason), (b"pass", "success"))

    def test_unsealed_without_key_or_results(self) -> None:
        """No key for the domain, or no Authentication-Results of ours: unchanged."""
        self.assertEqual(arc_seal(MESSAGE, self.keys, "example.org", "mail.example.org"), MESSAGE)
        self.keys.generate("example.org")
        self.assertEqual(arc_seal(MESSAGE, self.keys, "example.org", "other.example"), MESSAGE)

    def test_forwarding_prepare(self) -> None:
        """Forwarding.prepare: the SRS sender in the alias's domain (or srs_domain) and
        the seal by the alias domain's key."""
        self.keys.generate("example.org")
        srs = SenderRewriting(self.dir / "srs.secret", Clock())
        forwarding = Forwarding(srs, self.keys, "mail.example.org")
        sender, sealed = forwarding.prepare(M("bob@remote.example"), "example.org", MESSAGE)
        self.assertEqual(sender.domain, "example.org")
        self.assertEqual(srs.reverse(sender), M("bob@remote.example"))
        self.assertTrue(sealed.startswith(b"ARC-Seal: "))
        forwarding = Forwarding(srs, None, "mail.example.org", srs_domain="mail.example.org")
        sender, same = forwarding.prepare(M("bob@remote.example"), "example.org", MESSAGE)
        self.assertEqual((sender.domain, same), ("mail.example.org", MESSAGE))


class ARCChainTests(unittest.TestCase):
    """A message that arrives with an ARC chain (sealed by hop1.example) and is forwarded."""

    def setUp(self) -> None:
        base = Path(self.mktemp())
        self.hop1 = KeyStore(base / "hop1")
        self.hop1.generate("hop1.example")
        self.ours = KeyStore(base / "ours")
        self.ours.generate("example.org")
        arrived = b"Authentication-Results: mx.hop1.example; spf=pass smtp.mailfrom=bob@x\r\n"
        original = arrived + MESSAGE[MESSAGE.index(b"From:") :]
        self.sealed = arc_seal(original, self.hop1, "hop1.example", "mx.hop1.example")
        self.records = {
            name: value
            for keys, domain in ((self.hop1, "hop1.example"), (self.ours, "example.org"))
            for name, value in (keys.txt_record(k) for k in keys.signing_keys(domain))
        }

    def query(self, name: str, rtype: str) -> list[tuple[tuple[str, str], list[bytes]]]:
        value = self.records.get(name)
        return [((name, "TXT"), [value.encode()])] if value and rtype == "TXT" else []

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes | None:
        value = self.records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    def test_validated_then_sealed_on(self) -> None:
        """RFC 8617 §5.2: the arriving chain validates (arc=pass in our field); our seal is
        instance 2 with cv=pass, and the whole chain verifies."""
        self.assertEqual(verify_arc(self.query, self.sealed), "pass")
        results = AuthenticationResults(
            SPFResult("pass", "mailfrom", "remote.example"), (), DMARCResult("none", ""), "pass"
        )
        ours = authentication_results("mail.example.org", results)
        self.assertTrue(ours.endswith(b";\r\n\tarc=pass\r\n"))
        forwarded = arc_seal(ours + self.sealed, self.ours, "example.org", "mail.example.org")
        self.assertTrue(forwarded.startswith(b"ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=example."))
        cv, chain, _ = dkim.arc_verify(forwarded, dnsfunc=self.dnsfunc)
        self.assertEqual((cv, [r["instance"] for r in chain]), (b"pass", [2, 1]))

    def test_broken_chain_fails(self) -> None:
        """A body changed after the seal: arc=fail; no key (yet): unknown, C{None}."""
        self.assertEqual(verify_arc(self.query, self.sealed.replace(b"body", b"b0dy")), "fail")

        def failing(name: str, rtype: str) -> list[tuple[tuple[str, str], list[bytes]]]:
            raise TemporaryDNSFailure(name)

        self.assertIsNone(verify_arc(failing, self.sealed))


class SieveRedirectTests(unittest.TestCase):
    def test_redirect_leaves_with_srs_sender(self) -> None:
        """A Sieve redirect to an outside address is forwarding too: SRS sender in the
        user's domain; a vacation reply (from <>) is left alone."""
        base = Path(self.mktemp())
        base.mkdir()
        store = AccountStore(base / "accounts.sqlite3")
        self.addCleanup(store.close)
        store.add_user("alice@example.org", "h")
        sent: list[tuple[Mailbox | None, list[Mailbox]]] = []

        async def enqueue(
            reverse_path: Mailbox | None,
            recipients: Sequence[Mailbox],
            message: bytes,
            sign: bool = False,
        ) -> None:
            sent.append((reverse_path, list(recipients)))

        delivery = LocalDelivery(store, base / "mail", ChangeNotifier(), run_now, outbound=enqueue)
        srs = SenderRewriting(base / "srs.secret", Clock())
        delivery.forwarding = Forwarding(srs, None, "mail.example.org")
        scripts = SieveStore(base / "mail" / "example.org" / "alice")
        scripts.put("main", b'redirect "carol@remote.example";\n')
        scripts.activate("main")
        d = defer.ensureDeferred(
            delivery.deliver_all(M("bob@other.example"), [M("alice@example.org")], MESSAGE)
        )
        self.successResultOf(d)
        [(sender, to)] = sent
        assert sender is not None
        self.assertEqual(to, [M("carol@remote.example")])
        self.assertEqual(sender.domain, "example.org")
        self.assertEqual(srs.reverse(sender), M("bob@other.example"))


class ForwardingConfigTests(unittest.TestCase):
    def test_example_and_defaults(self) -> None:
        """[forwarding] in etc/twistedmail.example.toml equals the defaults: SRS and ARC on,
        SRS addresses in the alias's domain."""
        example = load_config(ROOT / "etc" / "twistedmail.example.toml")
        self.assertEqual(example.forwarding, parse_config({}, None).forwarding)
        self.assertEqual(example.forwarding, ForwardingConfig(srs=True, srs_domain="", arc=True))
        config = parse_config(
            {"forwarding": {"srs": False, "srs_domain": "Mail.Example.org", "arc": False}}, None
        )
        self.assertEqual(config.forwarding, ForwardingConfig(False, "mail.example.org", False))

    def test_errors(self) -> None:
        """Bad values are one-line errors naming the key."""
        for section, text in (
            ({"srs": "yes"}, "[forwarding] srs: must be true or false"),
            ({"arc": 1}, "[forwarding] arc: must be true or false"),
            ({"srs_domain": "bad domain"}, "[forwarding] srs_domain: "),
            ({"other": 1}, "[forwarding]"),
        ):
            with self.assertRaises(ConfigError) as cm:
                parse_config({"forwarding": section}, None)
            self.assertIn(text, str(cm.exception))
