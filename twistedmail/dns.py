"""MX resolution for outbound mail (RFC 5321 §5.1, RFC 7505 null MX) over twisted.names.

L{resolve_mx} turns a recipient domain into the hosts to try, in order: the MX records
sorted by preference (hosts of equal preference in random order, RFC 5321 §5.1), each with
its A and AAAA addresses.  A domain without MX records is its own implicit MX (§5.1: "the
domain name is treated as if it had an MX record with preference 0 pointing to itself").

Outcomes, as Postfix classifies them:
  - NXDOMAIN for the domain, a null MX (a single C{MX 0 .}, RFC 7505 §3), or no MX and no
    address: L{PermanentDNSError} (the recipients bounce);
  - SERVFAIL, a timeout, a refused query, or MX hosts none of which has an address while some
    lookups failed temporarily: L{TemporaryDNSError} (the message stays queued).

The resolver is injected: any C{twisted.internet.interfaces.IResolver}
(C{twisted.names.client.Resolver(servers=...)} for C{[relay] nameservers}, or
L{twistedmail.testing.FakeResolver} in tests).  Nothing here imports the global reactor.

L{quiet_dns_client} keeps the lines Twisted's DNS client writes for every query (it opens
and closes a UDP port per query, for source port randomisation) out of the log.
"""

from __future__ import annotations

import ipaddress
import random
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    LogEvent,
    LogLevel,
    LogPublisher,
    PredicateResult,
)
from twisted.names import dns
from twisted.names import error as dns_error

LOOKUP_TIMEOUT = (5, 10, 20)  # seconds per try, twisted.names semantics (35 s in all)


class DNSLookupError(Exception):
    """A failed MX resolution; C{str()} is a short text safe for a DSN Diagnostic-Code.

    @ivar status: the RFC 3463 enhanced status code for the recipients of the domain.
    """

    status = "4.4.3"


class PermanentDNSError(DNSLookupError):
    """The domain cannot receive mail: NXDOMAIN, null MX, no MX and no address."""

    status = "5.1.2"  # RFC 3463: bad destination system address


class NullMXError(PermanentDNSError):
    """The domain publishes a null MX (RFC 7505 §3): it accepts no mail."""

    status = "5.1.10"  # RFC 7505 §4.2


class TemporaryDNSError(DNSLookupError):
    """SERVFAIL, timeout or refused: try again later (RFC 5321 §4.5.4.1)."""

    status = "4.4.3"  # RFC 3463: directory server failure


@attrs.frozen
class MXHost:
    """One host to try: its name, MX preference (0 for an implicit MX) and addresses.

    @ivar addresses: IPv4 then IPv6 addresses as text, in the order the DNS gave them.
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


_TEMPORARY = (
    dns_error.DNSServerError,
    dns_error.DNSQueryTimeoutError,
    dns_error.DNSQueryRefusedError,
    dns_error.DNSFormatError,
    dns_error.DNSNotImplementedError,
    dns_error.DNSUnknownError,
    defer.TimeoutError,
)


async def _query(resolver: IResolver, name: str, rtype: int) -> list[dns.RRHeader] | None:
    """The answer records of type C{rtype} for C{name}; C{None} for NXDOMAIN.

    @raise TemporaryDNSError: SERVFAIL, timeout, refused.
    """
    # (answers, authority, additional): lists of RRHeader (IResolver's annotation says one
    # RRHeader each, which is not what any resolver returns).
    lookup: Callable[..., defer.Deferred[Any]] = {
        dns.MX: resolver.lookupMailExchange,
        dns.A: resolver.lookupAddress,
        dns.AAAA: resolver.lookupIPV6Address,
    }[rtype]
    try:
        answers: list[dns.RRHeader]
        answers, _authority, _additional = await lookup(name, LOOKUP_TIMEOUT)
    except dns_error.DNSNameError:
        return None
    except dns_error.AuthoritativeDomainError:
        return None
    except _TEMPORARY as e:
        raise TemporaryDNSError(
            f"DNS {dns.QUERY_TYPES.get(rtype, rtype)} lookup for {name} failed"
            f" temporarily ({type(e).__name__})"
        ) from None
    return [rr for rr in answers if rr.type == rtype]


async def host_addresses(resolver: IResolver, name: str) -> tuple[tuple[str, ...], bool]:
    """(addresses, temporary_failure) for C{name}: A then AAAA records as text.

    C{temporary_failure} is true when a lookup failed temporarily (the list may then be
    incomplete); NXDOMAIN and "no record" are not failures.
    """
    addresses: list[str] = []
    temporary = False
    for rtype in (dns.A, dns.AAAA):
        try:
            records = await _query(resolver, name, rtype)
        except TemporaryDNSError:
            temporary = True
            continue
        for rr in records or ():
            if rtype == dns.A:
                addresses.append(cast(dns.Record_A, rr.payload).dottedQuad())
            else:
                address = cast(dns.Record_AAAA, rr.payload).address
                addresses.append(socket.inet_ntop(socket.AF_INET6, address))
    return tuple(dict.fromkeys(addresses)), temporary


def _ordered(records: list[dns.Record_MX], rng: random.Random) -> list[dns.Record_MX]:
    """By preference; hosts of equal preference shuffled (RFC 5321 §5.1: SHOULD randomize)."""
    keyed = [(r.preference, rng.random(), r) for r in records]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [r for _, _, r in keyed]


def _literal_host(domain: str) -> MXHost:
    """RFC 5321 §4.1.3, §5.1: an address literal names the host itself, no DNS.

    @raise PermanentDNSError: a General-address-literal (no address we can connect to).
    """
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        address = ipaddress.ip_address(inner)
    except ValueError:
        raise PermanentDNSError(f"No route to the address literal {domain}") from None
    return MXHost(domain, 0, (str(address),))


async def resolve_mx(
    resolver: IResolver, domain: str, rng: random.Random | None = None
) -> list[MXHost]:
    """The hosts to try for mail to C{domain}, best first (RFC 5321 §5.1).

    @param domain: an ASCII (A-label) domain, lower case, no trailing dot; or an address
        literal (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}), which is its own host.
    @param rng: shuffles hosts of equal preference; tests pass a seeded one.
    @return: at least one L{MXHost}; hosts without any address are left out.
    @raise PermanentDNSError: NXDOMAIN; null MX (L{NullMXError}); no MX and no address;
        MX hosts none of which exists.
    @raise TemporaryDNSError: a lookup failed temporarily and no usable host was found.
    """
    rng = rng or random.Random()
    if domain.startswith("["):
        return [_literal_host(domain)]
    records = await _query(resolver, domain, dns.MX)
    if records is None:
        raise PermanentDNSError(f"Domain {domain} does not exist (NXDOMAIN)")
    mxs = [cast(dns.Record_MX, rr.payload) for rr in records]
    if any(mx.name.name in (b"", b".") for mx in mxs):
        # RFC 7505 §3: a null MX (preference 0, exchange ".") says the domain takes no mail;
        # §4.1: the sender MUST NOT try the domain's address records instead.
        raise NullMXError(f"Domain {domain} does not accept mail (null MX, RFC 7505)")
    if not mxs:
        # RFC 5321 §5.1: no MX -> the domain itself is the (implicit) MX, preference 0.
        addresses, temporary = await host_addresses(resolver, domain)
        if addresses:
            return [MXHost(domain, 0, addresses)]
        if temporary:
            raise TemporaryDNSError(f"Address lookup for {domain} failed temporarily")
        raise PermanentDNSError(f"Domain {domain} has no MX and no address record")
    hosts: list[MXHost] = []
    temporary = False
    for mx in _ordered(mxs, rng):
        name = mx.name.name.decode("ascii", "replace").rstrip(".").lower()
        addresses, failed = await host_addresses(resolver, name)
        temporary = temporary or failed
        if addresses:
            hosts.append(MXHost(name, mx.preference, addresses))
    if hosts:
        return hosts
    if temporary:
        raise TemporaryDNSError(f"Address lookup for the MX hosts of {domain} failed temporarily")
    raise PermanentDNSError(f"No MX host of {domain} has an address")


_CHATTER = re.compile(
    r"DNSDatagramProtocol starting on \d+"
    r"|\(UDP Port \d+ Closed\)"
    r"|(Starting|Stopping) protocol <twisted\.names\.dns\.DNSDatagramProtocol object at \w+>"
)


def dns_client_chatter(event: LogEvent) -> PredicateResult:
    """An C{ILogFilterPredicate}: C{no} for the informational lines of Twisted's DNS client
    (C{DNSDatagramProtocol starting on N}, C{Starting protocol}, C{Stopping protocol},
    C{(UDP Port N Closed)}), C{maybe} for everything else, errors and warnings included."""
    if event.get("log_namespace") != "log_legacy" or event.get("isError"):
        return PredicateResult.maybe
    if event.get("log_level") not in (None, LogLevel.debug, LogLevel.info):
        return PredicateResult.maybe
    text = event.get("log_text")
    if isinstance(text, str) and _CHATTER.fullmatch(text):
        return PredicateResult.no
    return PredicateResult.maybe


def quiet_dns_client(publisher: LogPublisher) -> None:
    """Put L{dns_client_chatter} in front of every observer of C{publisher} (call it once
    logging has begun, e.g. from C{startService}: twistd adds its observer before).

    Twisted offers no public way to filter what reaches twistd's own observer, nor a
    C{noisy} switch for the UDP port a DNS query opens, so the observers already
    registered are wrapped in a C{FilteringLogObserver}.
    """
    observers = list(getattr(publisher, "_observers", ()))
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):
            continue
        publisher.removeObserver(observer)
        predicate = cast(ILogFilterPredicate, dns_client_chatter)  # a callable is one
        publisher.addObserver(FilteringLogObserver(observer, [predicate]))


async def reverse_name(resolver: IResolver, ip: str, timeout: Sequence[int] = (2, 4)) -> str:
    """The forward-confirmed PTR name of C{ip} (RFC 1035 §3.5, RFC 3596 §2.5: a PTR name
    whose A/AAAA records include C{ip}, as rspamd wants its C{Hostname}), C{""} when there
    is none, it does not resolve back, or a lookup fails: an input to the spam filter, never
    a reason to refuse."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    try:
        result: Any = await resolver.lookupPointer(addr.reverse_pointer, tuple(timeout))
    except Exception:
        return ""
    names = [str(rr.payload.name).rstrip(".") for rr in result[0] if rr.type == dns.PTR]
    lookup = resolver.lookupAddress if addr.version == 4 else resolver.lookupIPV6Address
    rtype = dns.A if addr.version == 4 else dns.AAAA
    for name in names[:3]:  # a few names at most: each costs a query
        try:
            forward: Any = await lookup(name, tuple(timeout))
        except Exception:
            continue
        for rr in forward[0]:
            if rr.type == rtype and _record_address(rr.payload) == addr:
                return name
    return ""


def _record_address(payload: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(payload, dns.Record_A):
        return ipaddress.IPv4Address(payload.address)
    return ipaddress.IPv6Address(payload.address)
