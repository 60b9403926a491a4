"""Tests for DKIM signing (RFC 6376), the queue hook, and the C{dkim}/C{dns-records} commands."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import dkim as dkimpy
from twisted.internet import defer
from twisted.trial import unittest

from tests.test_cli import CLITestCase
from twistedmail.address import AddressError, normalize_domain
from twistedmail.dkim import DKIMError, KeyStore, author_domain, dns_records

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"X-Other: not signed\r\n"
    b"\r\n"
    b"Body line\r\n"
    b".dot line\r\n"
)


def dnsfunc_for(keys: KeyStore, domain: str):  # type: ignore[no-untyped-def]
    key = keys.signing_key(domain)
    assert key is not None
    name, value = keys.txt_record(key)

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes:
        return value.encode("ascii") if qname.decode().rstrip(".") == name else b""

    return dnsfunc


class SigningTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()) / "dkim"
        self.keys = KeyStore(self.dir)

    def test_generate_writes_0600_key(self) -> None:
        """generate writes the key mode 0600 in a 0700 folder, named domain.selector.key, and its
        TXT record is v=DKIM1; k=rsa (RFC 6376 §3.6.1)."""
        key = self.keys.generate("Example.ORG")
        self.assertEqual(key.path, self.dir / "example.org.twistedmail.key")
        self.assertEqual(stat.S_IMODE(key.path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(self.dir.stat().st_mode), 0o700)
        name, value = self.keys.txt_record(key)
        self.assertEqual(name, "twistedmail._domainkey.example.org")
        self.assertTrue(value.startswith("v=DKIM1; k=rsa; p=MIIBIjAN"), value)

    def test_generate_twice_refused(self) -> None:
        """A second key for the same domain and selector is refused ('already exists')."""
        self.keys.generate("example.org", "tm2026")
        with self.assertRaises(DKIMError) as e:
            self.keys.generate("example.org", "tm2026")
        self.assertIn("already exists", str(e.exception))

    def test_bad_selector_and_domain(self) -> None:
        """A selector with a path or a dot, or an invalid domain, is refused."""
        self.assertRaises(DKIMError, self.keys.generate, "example.org", "../x")
        self.assertRaises(DKIMError, self.keys.generate, "example.org", "a.b")
        self.assertRaises(DKIMError, self.keys.generate, "exa mple.org")

    def test_sign_verifies(self) -> None:
        """relaxed/relaxed rsa-sha256 over the present headers of the §5.4.1 set; verifies."""
        self.keys.generate("example.org")
        signed = self.keys.sign(MESSAGE)
        self.assertTrue(signed.startswith(b"DKIM-Signature: "))
        self.assertTrue(signed.endswith(MESSAGE))
        header = dkimpy.rfc822_parse(signed)[0][0][1]
        tags = dict(
            t.strip().split(b"=", 1) for t in b"".join(header.split()).split(b";") if t.strip()
        )
        self.assertEqual(tags[b"a"], b"rsa-sha256")
        self.assertEqual(tags[b"c"], b"relaxed/relaxed")
        self.assertEqual(tags[b"d"], b"example.org")
        self.assertEqual(tags[b"s"], b"twistedmail")
        self.assertEqual(tags[b"h"], b"from:to:subject:date:message-id")
        self.assertTrue(dkimpy.verify(signed, dnsfunc=dnsfunc_for(self.keys, "example.org")))

    def test_tampered_body_fails(self) -> None:
        """RFC 6376 §3.7: a signed message whose body is changed no longer verifies."""
        self.keys.generate("example.org")
        signed = self.keys.sign(MESSAGE).replace(b"Body line", b"Body lime")
        self.assertFalse(dkimpy.verify(signed, dnsfunc=dnsfunc_for(self.keys, "example.org")))

    def test_lf_message_verifies(self) -> None:
        """A message with LF line ends is signed as CRLF (RFC 6376 §3.4) and keeps its LF ends;
        it verifies."""
        self.keys.generate("example.org")
        message = MESSAGE.replace(b"\r\n", b"\n")
        signed = self.keys.sign(message)
        self.assertNotIn(b"\r", signed)
        self.assertTrue(dkimpy.verify(signed, dnsfunc=dnsfunc_for(self.keys, "example.org")))

    def test_no_key_unchanged(self) -> None:
        """A message from a domain without a key, or with no key store, is returned unchanged."""
        self.keys.generate("other.test")
        self.assertIs(self.keys.sign(MESSAGE), MESSAGE)
        self.assertIs(KeyStore(Path(self.mktemp())).sign(MESSAGE), MESSAGE)

    def test_no_or_odd_from_unchanged(self) -> None:
        """A message without exactly one From: address is returned unsigned."""
        self.keys.generate("example.org")
        for message in (
            b"To: x@y.test\r\n\r\nbody\r\n",
            b"From: a@example.org\r\nFrom: b@example.org\r\n\r\nbody\r\n",
            b"From: a@example.org, b@example.org\r\n\r\nbody\r\n",
            b"From: nonsense\r\n\r\nbody\r\n",
        ):
            self.assertIs(self.keys.sign(message), message)

    def test_unreadable_key_sends_unsigned(self) -> None:
        """An unreadable key logs one error and the message goes unsigned."""
        key = self.keys.generate("example.org")
        key.path.write_bytes(b"garbage")
        self.assertIs(self.keys.sign(MESSAGE), MESSAGE)
        self.assertEqual(len(self.flushLoggedErrors()), 1)

    def _errors(self) -> list[dict[str, object]]:
        return [e for e in self.events if "dkim: cannot read" in str(e.get("log_format", ""))]

    def _watch_log(self) -> None:
        from twisted.logger import globalLogPublisher

        self.events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_key_that_cannot_be_opened_is_skipped_and_logged_once(self) -> None:
        """Issue 9: a key the server cannot open (root's 0600 file for a server that dropped
        root) never fails the message: it is signed with the other keys, and the problem
        is logged once, not once per message."""
        self._watch_log()
        self.keys.generate("example.org")
        unreadable = self.dir / "example.org.twistedmail-ed25519.ed25519"
        unreadable.mkdir()  # opening it fails with an OSError, as EACCES would for root's file
        for _ in range(3):
            signed = self.keys.sign(MESSAGE)
            self.assertEqual(signed.count(b"DKIM-Signature:"), 1)
            self.assertIn(b"a=rsa-sha256", b"".join(signed.split(b"\r\n\r\n")[0].split()))
        [event] = self._errors()
        self.assertEqual(event["path"], str(unreadable))
        self.assertEqual(event["error"], "Is a directory")

    def test_key_directory_that_cannot_be_listed_sends_unsigned(self) -> None:
        """A key directory that cannot be listed leaves mail unsigned, logged once, never an
        exception (which answered every remote submission 451 4.3.0)."""
        self._watch_log()
        self.dir.parent.mkdir(parents=True)
        self.dir.write_bytes(b"")  # listing it fails with an OSError (ENOTDIR)
        self.assertIs(self.keys.sign(MESSAGE), MESSAGE)
        self.assertIs(self.keys.sign(MESSAGE), MESSAGE)
        [event] = self._errors()
        self.assertEqual(event["path"], str(self.dir))
        self.assertEqual(event["error"], "Not a directory")

    def test_newest_key_signs(self) -> None:
        """With two keys for a domain, the newest signs (key rotation)."""
        old = self.keys.generate("example.org", "tm2025")
        os.utime(old.path, (1_000_000, 1_000_000))
        self.keys.generate("example.org", "tm2026")
        signed = self.keys.sign(MESSAGE)
        self.assertIn(b"s=tm2026", b"".join(signed.split(b"\r\n\r\n")[0].split()))

    def test_author_domain(self) -> None:
        """author_domain is the From: address's domain, lower-cased (quoted commas in the name
        allowed), or None without From:."""
        self.assertEqual(author_domain(b'From: "A, B" <x@Example.ORG>\r\n\r\n'), "example.org")
        self.assertIsNone(author_domain(b"Subject: x\r\n\r\n"))

    def test_author_domain_reads_the_header_as_the_email_parser_does(self) -> None:
        """author_domain's scan of the header (RFC 5322 §2.2: names, folding; RFC 7489
        §3.1.1: one From: with one address) gives what Python's email parser gives, for
        header blocks made of valid, folded, repeated, malformed and non-ASCII lines."""
        import email.parser
        import email.policy
        import email.utils

        from hypothesis import given, settings
        from hypothesis import strategies as st

        def reference(message: bytes) -> str | None:  # the email parser, as it was
            block = message
            for sep in (b"\r\n\r\n", b"\n\n"):
                if (i := message.find(sep)) >= 0:
                    block = message[: i + len(sep)]
                    break
            parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
            values = parsed.get_all("From") or []
            if len(values) != 1:
                return None
            addresses = email.utils.getaddresses([str(values[0])])
            if len(addresses) != 1 or "@" not in addresses[0][1]:
                return None
            domain = addresses[0][1].rpartition("@")[2]
            try:
                return normalize_domain(domain)
            except AddressError:
                return None

        samples = [
            b"From: a@B.example\r\n",
            b"from:x@y.example\n",
            b"FROM:\t<z@w.example>\r\n",
            b"From : spaced@x.example\r\n",
            b"From x.example\r\n",
            b" folded@c.example\r\n",
            b"\tmore\r\n",
            b"To: t@x.example\r\n",
            b'From: "A, B" <a@b.example>\r\n',
            b"From: a@b.example, c@d.example\r\n",
            b"From: \xc3\xa9@b.example\r\n",
            b"From: x@\xc3\xa9.example\r\n",
            b"Subject: s\n",
            b"bad line\r\n",
            b":empty@name.example\r\n",
            b"From:<a@[192.0.2.1]>\r",
            b"From: Group: g@h.example;\r\n",
            b"From: (comment) c@e.example\r\n",
            b"From: Some One <some.one@Sub.B.example>\r\n",
            b"From: One<o@b.example>  \r\n",
            b"From: =?utf-8?q?Caf=C3=A9?= <c@b.example>\r\n",
            b"From: <a@b.example>\r\n",
            b"From:<a@b.example>\r\n",
            b"From: <a@b.example\r\n",
            b"From: <<a@b.example>>\r\n",
            b"From: < a@b.example >\r\n",
            b"From: a.@b.example\r\n",
            b"From: .a@b.example\r\n",
            b"From: a..b@b.example\r\n",
            b"From: a@b..example\r\n",
            b"From: a@b.example.\r\n",
            b"From: a@-b.example\r\n",
            b"From: a@b_c.example\r\n",
            b'From: "q u"@b.example\r\n',
            b"From: Name <a@b.example> (c)\r\n",
            b"From: Name <a@b.example>, <c@d.example>\r\n",
            b"From: a@b.example <c@d.example>\r\n",
            b"From: N <a@b.example\r\n",
            b"From: N a@b.example>\r\n",
            b"From: a!#$%&'*+/=?^_`{|}~-@b.example\r\n",
            b"From: a@b@c.example\r\n",
            b"From: @b.example\r\n",
            b"From: a@\r\n",
            b"\r\n",
            b"X-A: b\r\n",
        ]
        for line in samples:  # each alone, every one
            self.assertEqual(author_domain(line + b"\r\n"), reference(line + b"\r\n"), line)
        lines = st.sampled_from(samples)

        @settings(max_examples=400)
        @given(st.lists(lines, max_size=8), st.sampled_from([b"\r\n\r\nbody", b"\n\nb", b""]))
        def check(header: list[bytes], tail: bytes) -> None:
            message = b"".join(header) + tail
            self.assertEqual(author_domain(message), reference(message), message)

        check()

    def test_dns_records(self) -> None:
        """dns_records prints MX, SPF 'mx -all', the DKIM TXT split into strings, DMARC
        p=quarantine and the RFC 6186 SRV records."""
        self.keys.generate("example.org")
        lines = dns_records("example.org", "mail.example.org", self.keys)
        name, value = self.keys.txt_record(self.keys.signing_key("example.org"))  # type: ignore
        self.assertEqual(lines[0], "example.org. IN MX 10 mail.example.org.")
        self.assertEqual(lines[1], 'example.org. IN TXT "v=spf1 mx -all"')
        self.assertTrue(lines[2].startswith('twistedmail._domainkey.example.org. IN TXT "'))
        self.assertEqual("".join(lines[2].split(" IN TXT ")[1].split('" "')).strip('"'), value)
        self.assertEqual(
            lines[3:],
            [
                '_dmarc.example.org. IN TXT "v=DMARC1; p=quarantine; '
                'rua=mailto:postmaster@example.org"',
                "_submission._tcp.example.org. IN SRV 0 1 587 mail.example.org.",
                "_submissions._tcp.example.org. IN SRV 0 1 465 mail.example.org.",
                "_imap._tcp.example.org. IN SRV 0 1 143 mail.example.org.",
                "_imaps._tcp.example.org. IN SRV 0 1 993 mail.example.org.",
                "_pop3s._tcp.example.org. IN SRV 0 1 995 mail.example.org.",
                "autoconfig.example.org. IN CNAME mail.example.org.",
            ],
        )

    def dns_for_all(self, domain: str):  # type: ignore[no-untyped-def]
        records = dict(self.keys.txt_record(k) for k in self.keys.signing_keys(domain))

        def dnsfunc(qname: bytes, timeout: int = 5) -> bytes:
            return records.get(qname.decode().rstrip("."), "").encode("ascii")

        return dnsfunc

    def test_ed25519_signs_as_well_and_both_verify(self) -> None:
        """RFC 8463: with an Ed25519 key too, two signatures (rsa-sha256 first, then
        ed25519-sha256), each verifying with dkimpy against its published record."""
        self.keys.generate("example.org")
        key = self.keys.generate("example.org", algorithm="ed25519")
        self.assertEqual(key.path, self.dir / "example.org.twistedmail-ed25519.ed25519")
        self.assertEqual(stat.S_IMODE(key.path.stat().st_mode), 0o600)
        self.assertTrue(key.path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----"))
        name, value = self.keys.txt_record(key)
        self.assertEqual(name, "twistedmail-ed25519._domainkey.example.org")
        self.assertTrue(value.startswith("v=DKIM1; k=ed25519; p="), value)
        self.assertEqual(len(base64.b64decode(value.split("p=")[1])), 32)  # RFC 8463 §4
        signed = self.keys.sign(MESSAGE)
        self.assertTrue(signed.endswith(MESSAGE))
        headers = [v for k, v in dkimpy.rfc822_parse(signed)[0] if k == b"DKIM-Signature"]
        self.assertEqual(len(headers), 2)
        self.assertIn(b"a=rsa-sha256", b"".join(headers[0].split()))
        self.assertIn(b"a=ed25519-sha256", b"".join(headers[1].split()))
        self.assertIn(b"s=twistedmail-ed25519", b"".join(headers[1].split()))
        dnsfunc = self.dns_for_all("example.org")

        def verifies(message: bytes, idx: int) -> bool:
            try:
                return bool(dkimpy.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
            except dkimpy.DKIMException:
                return False

        tampered = signed.replace(b"Body line", b"Body lime")
        for idx in (0, 1):
            self.assertTrue(verifies(signed, idx), idx)
            self.assertFalse(verifies(tampered, idx), idx)

    def test_ed25519_alone_and_selector_shared_by_algorithms_refused(self) -> None:
        """RFC 8463: an ed25519 key alone signs with a=ed25519-sha256 and verifies; a selector
        already used by another algorithm is refused."""
        self.keys.generate("example.org", "s1", algorithm="ed25519")
        signed = self.keys.sign(MESSAGE)
        [(_, header)] = [h for h in dkimpy.rfc822_parse(signed)[0] if h[0] == b"DKIM-Signature"]
        self.assertIn(b"a=ed25519-sha256", b"".join(header.split()))
        self.assertTrue(dkimpy.verify(signed, dnsfunc=self.dns_for_all("example.org")))
        with self.assertRaises(DKIMError) as cm:
            self.keys.generate("example.org", "s1")
        self.assertIn("with selector s1 already exists", str(cm.exception))
        self.assertRaises(DKIMError, self.keys.generate, "example.org", "s2", "dsa")
        lines = dns_records("example.org", "mail.example.org", self.keys)
        self.assertEqual(
            [x.split(" IN ")[0] for x in lines if "_domainkey" in x], ["s1._domainkey.example.org."]
        )

    def test_dns_records_print_both_keys(self) -> None:
        """With an RSA and an ed25519 key, dns_records prints both DKIM TXT records."""
        self.keys.generate("example.org")
        self.keys.generate("example.org", algorithm="ed25519")
        lines = dns_records("example.org", "mail.example.org", self.keys)
        self.assertEqual(
            [line.split(' "')[0] for line in lines[2:4]],
            [
                "twistedmail._domainkey.example.org. IN TXT",
                "twistedmail-ed25519._domainkey.example.org. IN TXT",
            ],
        )
        self.assertIn('"v=DKIM1; k=ed25519; p=', lines[3])
        self.assertEqual(len(lines), 11)


class QueueHookTests(unittest.TestCase):
    def test_enqueue_stores_signed_copy(self) -> None:
        """The queue runs the signer in a thread before writing a message queued with sign:
        the spool holds the signed copy."""
        from twisted.internet.task import Clock

        from twistedmail.address import Mailbox
        from twistedmail.smtp.queue import QueueRunner, Spool

        keys = KeyStore(Path(self.mktemp()))
        keys.generate("example.org")
        calls: list[object] = []

        def run(f, *args):  # type: ignore[no-untyped-def]
            calls.append(f)
            return defer.succeed(f(*args))

        spool = Spool(Path(self.mktemp()))
        runner = QueueRunner(
            spool=spool,
            outbound=None,  # type: ignore[arg-type]
            store=None,  # type: ignore[arg-type]
            local=None,  # type: ignore[arg-type]
            clock=Clock(),
            run_in_thread=run,
            hostname="mail.example.org",
            signer=keys.sign,
        )
        d = defer.Deferred.fromCoroutine(
            runner.enqueue(
                Mailbox.parse("alice@example.org"),
                [Mailbox.parse("bob@remote.test")],
                MESSAGE,
                sign=True,
            )
        )
        entry = self.successResultOf(d)
        self.assertEqual(calls[0], keys.sign)
        stored = spool.read_message(entry.id)
        self.assertTrue(stored.startswith(b"DKIM-Signature: "))
        self.assertTrue(dkimpy.verify(stored, dnsfunc=dnsfunc_for(keys, "example.org")))


class DKIMCommandTests(CLITestCase):
    def test_generate_prints_record(self) -> None:
        """'dkim generate' prints the key path as a comment, then the TXT record to publish."""
        code, out, err = self.run_cli("dkim", "generate", "example.org", "--selector", "tm2026")
        self.assertEqual((code, err), (0, ""))
        path = self.data_dir / "dkim" / "example.org.tm2026.key"
        first, second = out.splitlines()
        self.assertEqual(first, f"# {path}")
        self.assertTrue(
            second.startswith('tm2026._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p='),
            second,
        )
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_generate_ed25519(self) -> None:
        """'dkim generate --algorithm ed25519' writes an .ed25519 key and prints a k=ed25519
        record."""
        code, out, err = self.run_cli("dkim", "generate", "example.org", "--algorithm", "ed25519")
        self.assertEqual((code, err), (0, ""))
        path = self.data_dir / "dkim" / "example.org.twistedmail-ed25519.ed25519"
        first, second = out.splitlines()
        self.assertEqual(first, f"# {path}")
        self.assertTrue(
            second.startswith(
                'twistedmail-ed25519._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p='
            ),
            second,
        )
        self.run_cli("dkim", "generate", "example.org")
        code, out, err = self.run_cli("dns-records", "example.org")
        self.assertEqual(len([x for x in out.splitlines() if "._domainkey." in x]), 2)

    def test_generate_twice_is_user_error(self) -> None:
        """'dkim generate' twice for the same selector is a one-line user error naming the key
        file."""
        self.run_cli("dkim", "generate", "example.org")
        path = self.data_dir / "dkim" / "example.org.twistedmail.key"
        self.assertUserError(
            self.run_cli("dkim", "generate", "example.org"),
            f"a key for example.org with selector twistedmail already exists: {path}",
        )

    def test_generate_bad_selector(self) -> None:
        """'dkim generate' with an invalid selector is a one-line user error."""
        self.assertUserError(
            self.run_cli("dkim", "generate", "example.org", "--selector", "a/b"),
            "invalid selector 'a/b' (letters, digits and '-' only)",
        )

    def test_dns_records(self) -> None:
        """'dns-records' (domain in any case) prints the records with the DKIM key, 10 lines."""
        self.run_cli("dkim", "generate", "example.org")
        code, out, err = self.run_cli("dns-records", "Example.org")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "example.org. IN MX 10 mail.example.org.")
        self.assertTrue(lines[2].startswith("twistedmail._domainkey.example.org. IN TXT "))
        self.assertEqual(
            lines[10:],
            [
                '_smtp._tls.example.org. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.org"',
                "; MTA-STS and autodiscover need the HTTPS listener: set [listen] https",
            ],
        )

    def test_dns_records_without_key(self) -> None:
        """'dns-records' without a DKIM key prints the other 9 lines and no _domainkey record."""
        code, out, err = self.run_cli("dns-records", "example.org")
        self.assertEqual((code, err), (0, ""))
        self.assertNotIn("_domainkey", out)
        self.assertEqual(len(out.splitlines()), 11)

    def test_dns_records_web(self) -> None:
        """With [listen] https: the MTA-STS policy host and TXT record (RFC 8461 §3.1, its id
        the policy's hash, changing with [mta_sts]), TLS-RPT (RFC 8460 §3) and autodiscover."""
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
            '[listen]\nhttps = "0.0.0.0:443"\n'
        )
        code, out, err = self.run_cli("dns-records", "example.org")
        self.assertEqual((code, err), (0, ""))
        policy = b"version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n"
        first_id = hashlib.sha256(policy).hexdigest()[:20]
        self.assertEqual(
            out.splitlines()[9:],
            [
                '_smtp._tls.example.org. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.org"',
                "mta-sts.example.org. IN CNAME mail.example.org.",
                f'_mta-sts.example.org. IN TXT "v=STSv1; id={first_id}"',
                "autodiscover.example.org. IN CNAME mail.example.org.",
                "_autodiscover._tcp.example.org. IN SRV 0 1 443 mail.example.org.",
            ],
        )
        self.assertIn("autoconfig.example.org. IN CNAME mail.example.org.", out.splitlines())
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
            '[listen]\nhttps = "0.0.0.0:443"\n[mta_sts]\nmode = "enforce"\n'
        )
        code, out, err = self.run_cli("dns-records", "example.org")
        record = next(x for x in out.splitlines() if x.startswith("_mta-sts."))
        self.assertNotIn(first_id, record)

    def test_dns_records_bad_domain(self) -> None:
        """'dns-records' of an invalid domain exits 1 with one error line."""
        code, out, err = self.run_cli("dns-records", "bad domain")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(err.startswith("twistedmail: error: invalid domain 'bad domain'"), err)
