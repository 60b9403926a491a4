"""The parts of `twistedmail check` that need no DNS: reading dns-records lines, output lines."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from twistedmail.dnscheck import MISSING, OK, WRONG, Expected, Finding, expected_records


class ExpectedRecordsTests(TestCase):
    def test_zone_lines_read_back(self) -> None:
        """Each NAME. IN TYPE DATA line is one record; a TXT value split into quoted strings
        of at most 255 octets (RFC 1035 §3.3.14) is joined; comment lines are skipped."""
        lines = [
            "Example.ORG. IN MX 10 mail.example.org.",
            'sel._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=AAAA" "BBBB"',
            "; MTA-STS and autodiscover need the HTTPS listener: set [listen] https",
            "_imaps._tcp.example.org. IN SRV 0 1 993 mail.example.org.",
        ]
        self.assertEqual(
            expected_records(lines),
            [
                Expected("example.org", "MX", "10 mail.example.org."),
                Expected("sel._domainkey.example.org", "TXT", "v=DKIM1; k=rsa; p=AAAABBBB"),
                Expected("_imaps._tcp.example.org", "SRV", "0 1 993 mail.example.org."),
            ],
        )


class FindingTests(TestCase):
    def test_line(self) -> None:
        """Status padded to 7, the kind and name, the detail; what to publish unless ok."""
        self.assertEqual(
            Finding(OK, "MX", "example.org", "10 mail.example.org.", "10 x.").line(),
            "ok       MX example.org  10 mail.example.org.",
        )
        self.assertEqual(
            Finding(WRONG, "SRV", "_imaps._tcp.example.org", "0 1 9993 m.", "0 1 993 m.").line(),
            "WRONG    SRV _imaps._tcp.example.org  0 1 9993 m. (expected 0 1 993 m.)",
        )
        self.assertEqual(
            Finding(MISSING, "PTR", "192.0.2.1", "no PTR record", "m.").line(),
            "missing  PTR 192.0.2.1  no PTR record (expected m.)",
        )
