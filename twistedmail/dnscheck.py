"""C{twistedmail check DOMAIN}: what the DNS publishes for a domain against what this server
expects (issue 13).

The expected records are exactly the zone-file lines C{twistedmail dns-records} prints
(L{zone_lines}: L{twistedmail.dkim.dns_records}, then TLS-RPT and, with an HTTPS listener,
MTA-STS and autodiscover); each is looked up through the configured resolver (C{[relay]
nameservers}, else the system's) and judged:

  - MX (RFC 5321 §5.1): one of the domain's MX hosts is C{[server] hostname};
  - SPF (RFC 7208 §4.5: exactly one C{v=spf1} record): C{check_host()} of every address of
    the hostname, with the hostname as HELO and C{postmaster@DOMAIN} as sender, is C{pass};
  - DKIM (RFC 6376 §3.6.1): the C{k=} and C{p=} of the selector's TXT record are those of
    our key (and a domain without a signing key is reported);
  - DMARC (RFC 7489 §6.3, §6.6.3: exactly one record): present and parseable;
  - TLS-RPT (RFC 8460 §3): one C{v=TLSRPTv1} record with C{rua=};
  - MTA-STS (RFC 8461 §3.1): one C{v=STSv1} record whose C{id} is our policy's;
  - CNAME (autoconfig., mta-sts., autodiscover.): a CNAME to the hostname, or A/AAAA records
    equal to the hostname's addresses;
  - SRV (RFC 6186 §3, RFC 8314 §5.1): a record with the hostname as target and our port;
  - the hostname's A/AAAA records and, for each address, its PTR (RFC 1912 §2.1): a PTR
    naming the hostname, whose addresses include it by construction (forward-confirmed).

Each check gives one L{Finding}: C{ok}, C{WRONG} or C{missing}.  A lookup that fails
temporarily (timeout, SERVFAIL) is C{WRONG} with the reason: nothing could be confirmed.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Coroutine
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.names import dns
from twisted.names import error as dns_error

from twistedmail import dkim, mailauth
from twistedmail.address import Mailbox, normalize_domain
from twistedmail.config import Config
from twistedmail.web import mtasts

OK, WRONG, MISSING = "ok", "WRONG", "missing"
QUERY_TIMEOUT = (2, 4)  # seconds per try of one query, twisted.names semantics
SPF_TIMEOUT = 20.0  # seconds for the DNS work of one SPF evaluation (RFC 7208 §4.6.4)


@attrs.frozen
class Finding:
    """The verdict on one record: C{status} L{OK}, L{WRONG} or L{MISSING}; C{record} the
    kind (C{MX SPF DKIM DMARC TLS-RPT MTA-STS CNAME SRV A PTR}); C{name} the DNS name (an
    address for PTR); C{detail} what was found; C{expected} what should be published (the
    record data as C{dns-records} prints it), shown unless the record is ok."""

    status: str
    record: str
    name: str
    detail: str
    expected: str | None = None

    def line(self) -> str:
        """C{"ok       MX example.org  10 mail.example.org."} (status padded to 7)."""
        text = f"{self.status:<7}  {self.record} {self.name}  {self.detail}"
        if self.expected is not None and self.status != OK:
            text += f" (expected {self.expected})"
        return text

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Expected:
    """One record of L{zone_lines}: owner C{name} (no trailing dot), C{rtype}, and C{data}
    as printed (a TXT record's strings joined, without quotes)."""

    name: str
    rtype: str
    data: str


def zone_lines(config: Config, domain: str, keys: dkim.KeyStore) -> list[str]:
    """The zone-file lines C{domain} should publish (what C{twistedmail dns-records}
    prints): L{dkim.dns_records}, the TLS-RPT record (RFC 8460 §3) and, with C{[listen]
    https}, MTA-STS (RFC 8461 §3) and autodiscover; without it, a comment line saying so.

    @raise dkim.DKIMError: bad domain, or its key cannot be read.
    """
    hostname = config.server.hostname
    lines = dkim.dns_records(domain, hostname, keys)
    domain = normalize_domain(domain)  # dns_records refused a bad one already
    lines.append(mtasts.tlsrpt_record(domain))
    https = config.listen["https"]
    if not https:
        lines.append("; MTA-STS and autodiscover need the HTTPS listener: set [listen] https")
        return lines
    lines += mtasts.dns_records(domain, hostname, config.mta_sts.mode, config.mta_sts.max_age)
    lines.append(f"autodiscover.{domain}. IN CNAME {hostname}.")
    lines.append(f"_autodiscover._tcp.{domain}. IN SRV 0 1 {https[0].port} {hostname}.")
    return lines


def expected_records(lines: list[str]) -> list[Expected]:
    """The records of zone-file lines C{NAME. IN TYPE DATA} (comment lines skipped)."""
    records = []
    for line in lines:
        if line.startswith(";"):
            continue
        name, _class, rtype, data = line.split(None, 3)
        if rtype == "TXT":
            data = "".join(re.findall(r'"([^"]*)"', data))
        records.append(Expected(name.rstrip(".").lower(), rtype, data))
    return records


class LookupFailed(Exception):
    """A query failed temporarily (timeout, SERVFAIL, refused); the text says which."""


def _tags(value: str) -> dict[str, str]:
    """C{tag=value; ...} (RFC 6376 §3.2, used by all these TXT records), names lower case."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, eq, tag_value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), tag_value.strip())
    return tags


def _version(value: str) -> str:
    """The C{v=} of a TXT value, lower case (C{"v=spf1 mx"} -> C{"spf1"})."""
    head = value.split(";", 1)[0].split(None, 1)[0] if value.strip() else ""
    name, _eq, version = head.partition("=")
    return version.lower() if name.strip().lower() == "v" else ""


#: The kind of each TXT record, by its v= tag.
_KINDS = {
    "spf1": "SPF",
    "dkim1": "DKIM",
    "dmarc1": "DMARC",
    "tlsrptv1": "TLS-RPT",
    "stsv1": "MTA-STS",
}


def _quoted(value: str) -> str:
    return f'"{value}"'


class _Checker:
    def __init__(
        self, resolver: IResolver, clock: IReactorTime, hostname: str, domain: str
    ) -> None:
        self.resolver = resolver
        self.hostname = hostname
        self.domain = domain
        self.spf_cache = mailauth.DNSCache(resolver, clock)
        self.addresses: tuple[str, ...] = ()

    async def records(self, name: str, rtype: int) -> list[Any]:
        """The payloads of type C{rtype} at C{name}; C{[]} for NXDOMAIN and NODATA.

        @raise LookupFailed: a temporary failure."""
        query = dns.Query(name.encode("ascii"), rtype, dns.IN)
        try:
            result: Any = await self.resolver.query(query, QUERY_TIMEOUT)
        except (dns_error.DNSNameError, dns_error.AuthoritativeDomainError):
            return []
        except Exception as e:
            raise LookupFailed(
                f"DNS {dns.QUERY_TYPES.get(rtype, rtype)} lookup failed ({type(e).__name__})"
            ) from None
        return [rr.payload for rr in result[0] if rr.type == rtype]

    async def texts(self, name: str) -> list[str]:
        return [
            b"".join(p.data).decode("utf-8", "replace") for p in await self.records(name, dns.TXT)
        ]

    async def host_addresses(self, name: str) -> list[str]:
        found = [p.dottedQuad() for p in await self.records(name, dns.A)]
        for p in await self.records(name, dns.AAAA):
            found.append(socket.inet_ntop(socket.AF_INET6, p.address))
        return found

    # -- the checks, one per expected record --------------------------------------------

    async def mx(self, want: Expected) -> Finding:
        found = [
            (p.preference, str(p.name).rstrip(".").lower())
            for p in await self.records(want.name, dns.MX)
        ]
        text = ", ".join(f"{pref} {host}." for pref, host in sorted(found))
        if not found:
            return Finding(MISSING, "MX", want.name, "no MX record", want.data)
        if any(host == self.hostname for _, host in found):
            return Finding(OK, "MX", want.name, text)
        return Finding(WRONG, "MX", want.name, f"points elsewhere: {text}", want.data)

    async def txt(self, want: Expected) -> list[Finding]:
        version = _version(want.data)
        kind = _KINDS[version]
        found = [t for t in await self.texts(want.name) if _version(t) == version]
        expected = _quoted(want.data)
        if not found:
            return [Finding(MISSING, kind, want.name, f"no {kind} record", expected)]
        if len(found) > 1 and kind != "DKIM":
            # RFC 7208 §4.5, RFC 7489 §6.6.3, RFC 8460 §3, RFC 8461 §3.1: more than one
            # record means none is used.
            listed = ", ".join(_quoted(t) for t in found)
            return [Finding(WRONG, kind, want.name, f"{len(found)} records: {listed}", expected)]
        value = found[0]
        if kind == "SPF":
            return [await self.spf(want, value)]
        if kind == "DKIM":
            return [self.dkim(want, found)]
        if kind == "DMARC":
            if mailauth.parse_dmarc_record(value.encode("utf-8")) is None:
                detail = f"{_quoted(value)} does not parse (RFC 7489 §6.3: v=DMARC1; p=...)"
                return [Finding(WRONG, kind, want.name, detail, expected)]
            return [Finding(OK, kind, want.name, _quoted(value))]
        if kind == "TLS-RPT":
            if not _tags(value).get("rua"):
                detail = f"{_quoted(value)} has no rua= (RFC 8460 §3)"
                return [Finding(WRONG, kind, want.name, detail, expected)]
            return [Finding(OK, kind, want.name, _quoted(value))]
        ours = _tags(want.data).get("id")
        if _tags(value).get("id") != ours:
            detail = f"{_quoted(value)}: not the id of our policy (senders would not fetch it)"
            return [Finding(WRONG, kind, want.name, detail, expected)]
        return [Finding(OK, kind, want.name, _quoted(value))]

    async def spf(self, want: Expected, value: str) -> Finding:
        expected = _quoted(want.data)
        if not self.addresses:
            detail = f"{_quoted(value)}: not evaluated, {self.hostname} has no address"
            return Finding(WRONG, "SPF", want.name, detail, expected)
        sender = Mailbox("postmaster", self.domain)
        results = []
        for ip in self.addresses:
            result = await mailauth.spf_of(self.spf_cache, ip, sender, self.hostname, SPF_TIMEOUT)
            results.append(f"{result.result} for {ip}")
        status = OK if all(r.startswith("pass ") for r in results) else WRONG
        return Finding(
            status, "SPF", want.name, f"{_quoted(value)}: {', '.join(results)}", expected
        )

    def dkim(self, want: Expected, found: list[str]) -> Finding:
        ours = _tags(want.data)
        algorithm = ours.get("k", dkim.RSA)

        def key(tags: dict[str, str]) -> tuple[str, str]:
            return tags.get("k", dkim.RSA).lower(), "".join(tags.get("p", "").split())

        if any(key(_tags(t)) == key(ours) for t in found):
            return Finding(OK, "DKIM", want.name, f"our {algorithm} key")
        return Finding(WRONG, "DKIM", want.name, f"not our {algorithm} key", _quoted(want.data))

    async def cname(self, want: Expected) -> Finding:
        targets = [
            str(p.name).rstrip(".").lower() for p in await self.records(want.name, dns.CNAME)
        ]
        if targets:
            if self.hostname in targets:
                return Finding(OK, "CNAME", want.name, f"{self.hostname}.")
            text = ", ".join(f"{t}." for t in targets)
            return Finding(WRONG, "CNAME", want.name, f"points to {text}", want.data)
        addresses = await self.host_addresses(want.name)
        if not addresses:
            return Finding(MISSING, "CNAME", want.name, "no CNAME or address record", want.data)
        text = " ".join(addresses)
        if self.addresses and sorted(addresses) == sorted(self.addresses):
            return Finding(OK, "CNAME", want.name, f"{text} (the addresses of {self.hostname})")
        return Finding(
            WRONG, "CNAME", want.name, f"{text}, not the addresses of {self.hostname}", want.data
        )

    async def srv(self, want: Expected) -> Finding:
        port = int(want.data.split()[2])
        found = [
            (p.priority, p.weight, p.port, str(p.target).rstrip(".").lower())
            for p in await self.records(want.name, dns.SRV)
        ]
        if not found:
            return Finding(MISSING, "SRV", want.name, "no SRV record", want.data)
        text = ", ".join(f"{pr} {w} {po} {t}." for pr, w, po, t in sorted(found))
        if any(t == self.hostname and po == port for _pr, _w, po, t in found):
            return Finding(OK, "SRV", want.name, text)
        return Finding(WRONG, "SRV", want.name, text, want.data)

    async def ptr(self, ip: str) -> Finding:
        names = [
            str(p.name).rstrip(".").lower()
            for p in await self.records(ipaddress.ip_address(ip).reverse_pointer, dns.PTR)
        ]
        expected = f"{self.hostname}."
        if not names:
            return Finding(MISSING, "PTR", ip, "no PTR record", expected)
        text = ", ".join(f"{n}." for n in names)
        if self.hostname in names:
            return Finding(OK, "PTR", ip, f"{text} (forward-confirmed)")
        return Finding(WRONG, "PTR", ip, f"points to {text}", expected)


async def _guarded(kind: str, name: str, check: Any) -> list[Finding]:
    """The findings of C{check} (an awaitable), or one L{WRONG} when a lookup failed."""
    try:
        result = await check
    except LookupFailed as e:
        return [Finding(WRONG, kind, name, str(e))]
    return result if isinstance(result, list) else [result]


async def check(
    resolver: IResolver, clock: IReactorTime, config: Config, domain: str, keys: dkim.KeyStore
) -> list[Finding]:
    """Every record C{domain} should publish (L{zone_lines}), looked up and judged, then
    the hostname's addresses and their PTR records.

    @param resolver: the configured resolver (C{[relay] nameservers} or the system's).
    @param clock: the reactor (for the SPF evaluation's time budget).
    @raise dkim.DKIMError: bad domain, or its key cannot be read.
    """
    lines = zone_lines(config, domain, keys)
    domain = normalize_domain(domain)
    hostname = config.server.hostname.lower().rstrip(".")
    checker = _Checker(resolver, clock, hostname, domain)
    try:
        checker.addresses = tuple(await checker.host_addresses(hostname))
        failed = None
    except LookupFailed as e:
        failed = str(e)
    if failed is not None:
        host = Finding(WRONG, "A", hostname, failed)
    elif checker.addresses:
        host = Finding(OK, "A", hostname, " ".join(checker.addresses))
    else:
        host = Finding(MISSING, "A", hostname, "no A or AAAA record", "the server's address")
    checks: list[Coroutine[Any, Any, list[Finding]]] = []
    for want in expected_records(lines):
        kind = _KINDS[_version(want.data)] if want.rtype == "TXT" else want.rtype
        run = {"MX": checker.mx, "TXT": checker.txt, "CNAME": checker.cname, "SRV": checker.srv}
        checks.append(_guarded(kind, want.name, run[want.rtype](want)))
        if kind == "SPF" and not keys.signing_keys(domain):
            name = f"{dkim.DEFAULT_SELECTOR}._domainkey.{domain}"
            detail = f"no DKIM key for {domain} here (run: twistedmail dkim generate {domain})"
            checks.append(_given([Finding(MISSING, "DKIM", name, detail)]))
    checks.append(_given([host]))
    checks += [_guarded("PTR", ip, checker.ptr(ip)) for ip in checker.addresses]
    # all at once (a dead nameserver costs one timeout, not one per record), in order
    try:
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(c) for c in checks], consumeErrors=True
        )
    except defer.FirstError as e:
        e.subFailure.raiseException()
    return [finding for result in results for finding in result]


async def _given(findings: list[Finding]) -> list[Finding]:
    return findings
