"""`twistedmail check DOMAIN` (issue 13), the real CLI against a twisted.names server on loopback.

The zone that passes is built from what `twistedmail dns-records` prints (publishing exactly
that must pass); each other zone changes records of it, and every output line is asserted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from e2e_server import BIN, free_ports
from twisted.internet import defer, reactor, utils
from twisted.names import common, dns, server
from twisted.trial.unittest import TestCase

from twistedmail.testing import TestZone

HOST = "mail.example.test"
V4, V6 = "192.0.2.10", "2001:db8::10"
PTR4, PTR6 = (ipaddress.ip_address(ip).reverse_pointer for ip in (V4, V6))

Zone = dict[str, dict[str, Any]]  # maps as TestZone takes them: {"mx": {...}, "txt": {...}, ...}


def zone_from(lines: list[str]) -> Zone:
    """TestZone maps holding the records of zone-file lines, plus the hostname's A/AAAA
    and the PTR records of its addresses."""
    zone: Zone = {
        "mx": {},
        "a": {HOST: [V4]},
        "aaaa": {HOST: [V6]},
        "txt": {},
        "srv": {},
        "cname": {},
        "ptr": {PTR4: [HOST], PTR6: [HOST]},
    }
    for line in lines:
        if line.startswith(";"):
            continue
        name, _in, rtype, data = line.split(None, 3)
        name = name.rstrip(".")
        if rtype == "MX":
            preference, host = data.split()
            zone["mx"].setdefault(name, []).append((int(preference), host.rstrip(".")))
        elif rtype == "TXT":
            zone["txt"].setdefault(name, []).append("".join(re.findall(r'"([^"]*)"', data)))
        elif rtype == "SRV":
            priority, weight, port, target = data.split()
            zone["srv"].setdefault(name, []).append(
                (int(priority), int(weight), int(port), target.rstrip("."))
            )
        elif rtype == "CNAME":
            zone["cname"][name] = data.rstrip(".")
        else:
            raise AssertionError(f"unexpected record type in {line!r}")
    return zone


class _ServerFailure(common.ResolverBase):
    """An authority that fails every query: the DNS server answers SERVFAIL."""

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        # not a DomainError: DNSServerFactory answers those NXDOMAIN, anything else SERVFAIL
        return defer.fail(RuntimeError("the zone is unavailable"))


class CheckTests(TestCase):
    """twistedmail check DOMAIN: one line per record, exit 1 when any is wrong or missing."""

    maxDiff = None

    @classmethod
    def setUpClass(cls) -> None:
        """One data dir with DKIM keys (RSA, Ed25519) for example.test, and one port, for
        every test."""
        cls.root = Path(tempfile.mkdtemp(prefix="twistedmail-check-"))
        (cls.dns_port,) = free_ports(1)
        cls.config = cls.root / "twistedmail.toml"
        cls.config.write_text(
            f'[server]\nhostname = "{HOST}"\ndata_dir = "{cls.root / "data"}"\n\n'
            '[listen]\nhttps = "0.0.0.0:443"\n\n'
            f'[relay]\nnameservers = ["127.0.0.1:{cls.dns_port}"]\n'
        )
        cls.cli_sync("init")
        cls.cli_sync("dkim", "generate", "example.test")
        cls.cli_sync("dkim", "generate", "example.test", "--algorithm", "ed25519")
        cls.published = cls.cli_sync("dns-records", "example.test").splitlines()

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.root)

    def setUp(self) -> None:
        self.records = self.published
        self.factory = server.DNSServerFactory(authorities=[])
        udp = reactor.listenUDP(
            self.dns_port, dns.DNSDatagramProtocol(self.factory), interface="127.0.0.1"
        )
        tcp = reactor.listenTCP(self.dns_port, self.factory, interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        self.addCleanup(tcp.stopListening)

    @classmethod
    def cli_sync(cls, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "twistedmail"), "--config", str(cls.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if (result.returncode, result.stderr) != (0, ""):
            raise AssertionError(f"twistedmail {' '.join(args)}: {result.stderr}")
        return result.stdout

    def serve(self, zone: Zone) -> None:
        """Answer from C{zone}: names under .test and the reverse names under .arpa."""
        forward = {k: v for k, v in zone.items() if k != "ptr"}
        self.factory.resolver.resolvers[:] = [
            TestZone("test", **forward),
            TestZone("arpa", ptr=zone["ptr"]),
        ]

    async def check(self, *args: str) -> tuple[int, list[str], str]:
        out, err, code = await utils.getProcessOutputAndValue(
            str(BIN / "twistedmail"),
            ("--config", str(self.config), "check", *args),
            env=dict(os.environ),
        )
        return code, out.decode().splitlines(), err.decode()

    def value(self, prefix: str) -> str:
        """The data of our record whose line starts with C{prefix}, as check shows it."""
        line = next(r for r in self.records if r.startswith(prefix))
        data = line.split(None, 3)[3]
        if " TXT " in line:
            return '"' + "".join(re.findall(r'"([^"]*)"', data)) + '"'
        return data

    def ok_lines(self, domain: str = "example.test", dkim: bool = True) -> list[str]:
        d = domain
        sts = self.value(f"_mta-sts.{d}.").strip('"')
        lines = [
            f"ok       MX {d}  10 {HOST}.",
            f'ok       SPF {d}  "v=spf1 mx -all": pass for {V4}, pass for {V6}',
            *(
                [
                    f"ok       DKIM twistedmail._domainkey.{d}  our rsa key",
                    f"ok       DKIM twistedmail-ed25519._domainkey.{d}  our ed25519 key",
                ]
                if dkim
                else []
            ),
            f'ok       DMARC _dmarc.{d}  "v=DMARC1; p=quarantine; rua=mailto:postmaster@{d}"',
            f"ok       SRV _submission._tcp.{d}  0 1 587 {HOST}.",
            f"ok       SRV _submissions._tcp.{d}  0 1 465 {HOST}.",
            f"ok       SRV _imap._tcp.{d}  0 1 143 {HOST}.",
            f"ok       SRV _imaps._tcp.{d}  0 1 993 {HOST}.",
            f"ok       SRV _pop3s._tcp.{d}  0 1 995 {HOST}.",
            f"ok       CNAME autoconfig.{d}  {HOST}.",
            f'ok       TLS-RPT _smtp._tls.{d}  "v=TLSRPTv1; rua=mailto:postmaster@{d}"',
            f"ok       CNAME mta-sts.{d}  {HOST}.",
            f'ok       MTA-STS _mta-sts.{d}  "{sts}"',
            f"ok       CNAME autodiscover.{d}  {HOST}.",
            f"ok       SRV _autodiscover._tcp.{d}  0 1 443 {HOST}.",
            f"ok       A {HOST}  {V4} {V6}",
            f"ok       PTR {V4}  {HOST}. (forward-confirmed)",
            f"ok       PTR {V6}  {HOST}. (forward-confirmed)",
        ]
        return lines

    async def test_published_records_pass(self) -> None:
        """Publishing exactly what dns-records prints: every line ok, exit 0."""
        self.serve(zone_from(self.records))
        code, lines, err = await self.check("example.test")
        self.assertEqual(lines, self.ok_lines())
        self.assertEqual((code, err), (0, ""))

    async def test_every_record_wrong(self) -> None:
        """Each record present but not what the server expects: WRONG with what was found
        and what is expected, exit 1."""
        zone = zone_from(self.records)
        d = "example.test"
        zone["mx"][d] = [(10, "mx.elsewhere.test")]
        zone["txt"][d] = ["v=spf1 -all"]  # RFC 7208 §5.1: fails every address
        other = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong"
        rsa_name, ed_name = f"twistedmail._domainkey.{d}", f"twistedmail-ed25519._domainkey.{d}"
        zone["txt"][ed_name] = zone["txt"][rsa_name]  # the RSA key at the Ed25519 selector
        zone["txt"][rsa_name] = [f"v=DKIM1; k=rsa; p={other}"]
        zone["txt"][f"_dmarc.{d}"] = ["v=DMARC1; p=bogus"]  # no valid p=, no rua=
        zone["txt"][f"_smtp._tls.{d}"] = ["v=TLSRPTv1"]
        zone["txt"][f"_mta-sts.{d}"] = ["v=STSv1; id=20260101"]
        zone["srv"][f"_imaps._tcp.{d}"] = [(0, 1, 9993, HOST)]
        zone["srv"][f"_submission._tcp.{d}"] = [(0, 1, 587, "mx.elsewhere.test")]
        zone["cname"][f"autoconfig.{d}"] = "web.elsewhere.test"
        del zone["cname"][f"mta-sts.{d}"]
        zone["a"][f"mta-sts.{d}"] = ["192.0.2.99"]
        zone["ptr"][PTR4] = ["host-10.isp.test"]
        self.serve(zone)
        code, lines, err = await self.check(d)
        self.assertEqual((code, err), (1, ""))
        expected = self.ok_lines()
        replace = {
            "MX ": f"WRONG    MX {d}  points elsewhere: 10 mx.elsewhere.test."
            f" (expected 10 {HOST}.)",
            "SPF ": f'WRONG    SPF {d}  "v=spf1 -all": fail for {V4}, fail for {V6}'
            ' (expected "v=spf1 mx -all")',
            "DKIM ": f"WRONG    DKIM {rsa_name}  not our rsa key"
            f" (expected {self.value(f'{rsa_name}.')})",
            "DKIM twistedmail-ed25519": f"WRONG    DKIM {ed_name}  not our ed25519 key"
            f" (expected {self.value(f'{ed_name}.')})",
            "DMARC ": f'WRONG    DMARC _dmarc.{d}  "v=DMARC1; p=bogus" does not parse'
            " (RFC 7489 §6.3: v=DMARC1; p=...)"
            f" (expected {self.value(f'_dmarc.{d}.')})",
            "TLS-RPT ": f'WRONG    TLS-RPT _smtp._tls.{d}  "v=TLSRPTv1" has no rua= (RFC 8460 §3)'
            f" (expected {self.value(f'_smtp._tls.{d}.')})",
            "MTA-STS ": f'WRONG    MTA-STS _mta-sts.{d}  "v=STSv1; id=20260101": not the id of our'
            f" policy (senders would not fetch it) (expected {self.value(f'_mta-sts.{d}.')})",
            f"SRV _imaps._tcp.{d} ": f"WRONG    SRV _imaps._tcp.{d}  0 1 9993 {HOST}."
            f" (expected 0 1 993 {HOST}.)",
            f"SRV _submission._tcp.{d} ": f"WRONG    SRV _submission._tcp.{d}  0 1 587"
            f" mx.elsewhere.test. (expected 0 1 587 {HOST}.)",
            f"CNAME autoconfig.{d} ": f"WRONG    CNAME autoconfig.{d}  points to"
            f" web.elsewhere.test. (expected {HOST}.)",
            f"CNAME mta-sts.{d} ": f"WRONG    CNAME mta-sts.{d}  192.0.2.99, not the addresses"
            f" of {HOST} (expected {HOST}.)",
            f"PTR {V4} ": f"WRONG    PTR {V4}  points to host-10.isp.test. (expected {HOST}.)",
        }
        for key, line in replace.items():
            i = next(i for i, e in enumerate(expected) if e[9:].startswith(key))
            expected[i] = line
        self.assertEqual(lines, expected)

    async def test_every_record_missing(self) -> None:
        """An empty zone: every record missing with what to publish; the hostname without
        an address, so SPF cannot be evaluated and there is no PTR to check; exit 1."""
        self.serve(zone_from([]) | {"a": {}, "aaaa": {}, "ptr": {}})
        code, lines, err = await self.check("example.test")
        self.assertEqual((code, err), (1, ""))
        d = "example.test"

        def missing(kind: str, name: str, what: str = "") -> str:
            line = next(r for r in self.records if r.startswith(f"{name}. ") and what in r)
            return (
                f"missing  {kind} {name}  no {'CNAME or address' if kind == 'CNAME' else kind}"
                f" record (expected {self.value(line)})"
            )

        self.assertEqual(
            lines,
            [
                missing("MX", d),
                missing("SPF", d, "spf1"),
                missing("DKIM", f"twistedmail._domainkey.{d}"),
                missing("DKIM", f"twistedmail-ed25519._domainkey.{d}"),
                missing("DMARC", f"_dmarc.{d}"),
                *(
                    missing("SRV", f"_{service}._tcp.{d}")
                    for service in ("submission", "submissions", "imap", "imaps", "pop3s")
                ),
                missing("CNAME", f"autoconfig.{d}"),
                missing("TLS-RPT", f"_smtp._tls.{d}"),
                missing("CNAME", f"mta-sts.{d}"),
                missing("MTA-STS", f"_mta-sts.{d}"),
                missing("CNAME", f"autodiscover.{d}"),
                missing("SRV", f"_autodiscover._tcp.{d}"),
                f"missing  A {HOST}  no A or AAAA record (expected the server's address)",
            ],
        )

    async def test_variants(self) -> None:
        """A domain without a DKIM key here; two SPF records (RFC 7208 §4.5: permerror);
        autoconfig as A/AAAA records equal to the hostname's (ok); an address without PTR."""
        d = "nokey.test"
        self.records = self.cli_sync("dns-records", d).splitlines()
        zone = zone_from(self.records)
        zone["txt"][d] = ["v=spf1 mx -all", "v=spf1 a -all"]
        del zone["cname"][f"autoconfig.{d}"]
        zone["a"][f"autoconfig.{d}"] = [V4]
        zone["aaaa"][f"autoconfig.{d}"] = [V6]
        del zone["ptr"][PTR6]
        self.serve(zone)
        code, lines, err = await self.check(d)
        self.assertEqual((code, err), (1, ""))
        expected = self.ok_lines(d, dkim=False)
        expected[1:2] = [
            f'WRONG    SPF {d}  2 records: "v=spf1 mx -all", "v=spf1 a -all"'
            ' (expected "v=spf1 mx -all")',
            f"missing  DKIM twistedmail._domainkey.{d}  no DKIM key for {d} here"
            f" (run: twistedmail dkim generate {d})",
        ]
        expected[9] = f"ok       CNAME autoconfig.{d}  {V4} {V6} (the addresses of {HOST})"
        expected[-1] = f"missing  PTR {V6}  no PTR record (expected {HOST}.)"
        self.assertEqual(lines, expected)

    async def test_json(self) -> None:
        """--json: one object with the domain, the hostname, ok, and every check."""
        self.serve(zone_from(self.records) | {"ptr": {PTR4: [HOST]}})
        code, lines, err = await self.check("example.test", "--json")
        self.assertEqual((code, err, len(lines)), (1, "", 1))
        report = json.loads(lines[0])
        self.assertEqual(
            (report["domain"], report["hostname"], report["ok"]), ("example.test", HOST, False)
        )
        self.assertEqual(
            report["checks"][0],
            {
                "status": "ok",
                "record": "MX",
                "name": "example.test",
                "detail": f"10 {HOST}.",
                "expected": None,
            },
        )
        self.assertEqual(
            report["checks"][-1],
            {
                "status": "missing",
                "record": "PTR",
                "name": V6,
                "detail": "no PTR record",
                "expected": f"{HOST}.",
            },
        )
        self.assertEqual(
            [c["status"] for c in report["checks"]],
            ["ok"] * (len(self.ok_lines()) - 1) + ["missing"],
        )

    async def test_lookup_failure(self) -> None:
        """A nameserver answering SERVFAIL: every record WRONG with the failed lookup, never
        missing (nothing could be confirmed either way), exit 1."""
        self.factory.resolver.resolvers[:] = [_ServerFailure()]
        code, lines, err = await self.check("example.test")
        self.flushLoggedErrors(RuntimeError)  # the DNS server logs each failed query
        self.assertEqual((code, err), (1, ""))
        failed = "lookup failed (DNSServerError)"
        expected = []
        for line in self.ok_lines()[:-3]:
            kind, name = line[9:].split()[:2]
            rtype = "TXT" if kind in ("SPF", "DKIM", "DMARC", "TLS-RPT", "MTA-STS") else kind
            expected.append(f"WRONG    {kind} {name}  DNS {rtype} {failed}")
        expected.append(f"WRONG    A {HOST}  DNS A {failed}")
        self.assertEqual(lines, expected)

    async def test_bad_domain(self) -> None:
        """A name that is no domain: one error line on stderr, exit 1 (DESIGN §3)."""
        code, lines, err = await self.check("no domain")
        self.assertEqual(
            (code, lines, err),
            (1, [], "twistedmail: error: invalid domain 'no domain': invalid domain\n"),
        )
