"""DNS block and allow lists of client IPs (RFC 5782 DNSBL/DNSWL), the first gate on port 25.

The client IP is looked up in each zone as RFC 5782 §2.1 says (the octets of an IPv4
address reversed, C{2.0.0.127.zen.example}; an IPv6 address as 32 reversed nibbles,
§2.4): an A record in 127.0.0.0/8 means listed.  Spamhaus answers C{127.255.255.x} for a
refused query (an open resolver, over quota): that is no listing.  Lookups go through the
configured resolver (C{[relay] nameservers}); the result is cached for the answer's TTL
(an NXDOMAIN for the zone's negative TTL, at most L{MAX_TTL}), so a client that connects
ten times costs one query per zone.

A client in an allowlist (C{dnswl}) is never blocked; a DNS failure (timeout, SERVFAIL)
counts as not listed: a blocklist outage never refuses mail.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dns_error

log = Logger(namespace="twistedmail.dnsbl")

LOOKUP_TIMEOUT = (2, 4)  # seconds per try (twisted.names): a slow list must not stall RCPT
MAX_TTL = 3600  # seconds a result is kept at most
NEGATIVE_TTL = 300  # seconds "not listed" is kept when the answer gave no TTL
FAILURE_TTL = 60  # seconds a failed lookup is remembered (as not listed)


def query_name(ip: str, zone: str) -> str | None:
    """The RFC 5782 §2.1/§2.4 query name of C{ip} in C{zone}, C{None} for no IP address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 4:
        return ".".join(reversed(str(addr).split("."))) + "." + zone
    return ".".join(reversed(addr.exploded.replace(":", ""))) + "." + zone


def _listing(answers: Sequence[Any]) -> tuple[bool, int]:
    """(listed, ttl) from the A records of a query (RFC 5782 §2.3: 127.0.0.0/8)."""
    listed, ttl = False, MAX_TTL
    for rr in answers:
        if rr.type != dns.A:
            continue
        ttl = min(ttl, rr.ttl or MAX_TTL)
        address = rr.payload.dottedQuad()
        if address.startswith("127.") and not address.startswith("127.255.255."):
            listed = True
    return listed, ttl


@attrs.frozen
class Listing:
    """The lists a client IP is on: C{blocked_by} the first blocklist (C{None}: none),
    C{allowed_by} the first allowlist (which overrides the blocklists)."""

    blocked_by: str | None
    allowed_by: str | None

    @property
    def blocked(self) -> bool:
        return self.blocked_by is not None and self.allowed_by is None


def _share(shared: Deferred[bool]) -> Deferred[bool]:
    """A Deferred of its own for one waiter on C{shared}, whose result stays for the
    others."""
    waiter: Deferred[bool] = Deferred()

    def fire(listed: bool) -> bool:
        waiter.callback(listed)
        return listed

    shared.addCallback(fire)
    return waiter


class Blocklists:
    """The configured DNSBL and DNSWL zones, with a TTL cache per (zone, IP).

    @param resolver: the configured resolver (L{twistedmail.service.dns_resolver}).
    @param clock: for the cache's expiry.
    @param blocklists: DNSBL zones, e.g. C{("zen.spamhaus.org",)}.
    @param allowlists: DNSWL zones, e.g. C{("list.dnswl.org",)}.
    """

    def __init__(
        self,
        resolver: IResolver,
        clock: IReactorTime,
        blocklists: Sequence[str] = (),
        allowlists: Sequence[str] = (),
    ) -> None:
        self.resolver = resolver
        self.clock = clock
        self.blocklists = tuple(blocklists)
        self.allowlists = tuple(allowlists)
        self._cache: dict[tuple[str, str], tuple[float, bool]] = {}
        self._pending: dict[tuple[str, str], Deferred[bool]] = {}

    async def _listed(self, zone: str, ip: str) -> bool:
        key = (zone, ip)
        now = self.clock.seconds()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = Deferred.fromCoroutine(self._lookup(zone, ip))
            self._pending[key] = pending
            pending.addBoth(self._done, key)
        return await _share(pending)

    def _done(self, result: object, key: tuple[str, str]) -> object:
        self._pending.pop(key, None)
        return result

    async def _lookup(self, zone: str, ip: str) -> bool:
        name = query_name(ip, zone)
        if name is None:
            return False
        now = self.clock.seconds()
        try:
            result: Any = await self.resolver.lookupAddress(name, LOOKUP_TIMEOUT)
            answers = result[0]
        except (dns_error.DNSNameError, dns_error.AuthoritativeDomainError):
            listed, ttl = False, NEGATIVE_TTL
        except Exception as e:
            # A failed list never refuses mail: not listed, and asked again soon.
            log.warn(
                "dnsbl: {zone} lookup for {ip} failed: {error}; not listed",
                zone=zone,
                ip=ip,
                error=type(e).__name__,
            )
            listed, ttl = False, FAILURE_TTL
        else:
            listed, ttl = _listing(answers)
            if not listed and not answers:
                ttl = NEGATIVE_TTL
        self._cache[(zone, ip)] = (now + min(ttl, MAX_TTL), listed)
        if len(self._cache) > 100_000:
            self._expire(now)
        return listed

    def _expire(self, now: float) -> None:
        for key in [k for k, (until, _) in self._cache.items() if until <= now]:
            del self._cache[key]

    def prefetch(self, ip: str) -> None:
        """Start the lookups for C{ip} (at connect), so RCPT finds them done."""
        for zone in self.allowlists + self.blocklists:
            Deferred.fromCoroutine(self._listed(zone, ip)).addErrback(
                lambda f: log.failure("dnsbl: prefetch failed", f)
            )

    async def check(self, ip: str) -> Listing:
        """Which of the lists C{ip} is on (all lookups at once, cached)."""
        allowed_by = None
        for zone in self.allowlists:
            if await self._listed(zone, ip):
                allowed_by = zone
                break
        blocked_by = None
        if allowed_by is None:
            for zone in self.blocklists:
                if await self._listed(zone, ip):
                    blocked_by = zone
                    break
        return Listing(blocked_by=blocked_by, allowed_by=allowed_by)
