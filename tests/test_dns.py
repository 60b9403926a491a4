"""MX resolution (RFC 5321 §5.1, RFC 7505) against testing.FakeResolver and a TestZone."""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from twistedmail.dns import (
    MXHost,
    NullMXError,
    PermanentDNSError,
    TemporaryDNSError,
    resolve_mx,
)
from twistedmail.testing import NXDOMAIN, SERVFAIL, TIMEOUT, FakeResolver, TestZone


def resolve(resolver: object, domain: str, seed: int = 0) -> defer.Deferred[list[MXHost]]:
    return defer.Deferred.fromCoroutine(resolve_mx(resolver, domain, random.Random(seed)))  # type: ignore[arg-type]


class ResolveMXTests(TestCase):
    async def test_mx_by_preference_with_a_and_aaaa(self) -> None:
        """RFC 5321 §5.1: MX hosts are tried by preference, each with its A and AAAA addresses."""
        resolver = FakeResolver(
            mx={"example.net": [(20, "mx2.example.net"), (10, "mx1.example.net")]},
            a={"mx1.example.net": ["192.0.2.1"], "mx2.example.net": ["192.0.2.2"]},
            aaaa={"mx1.example.net": ["2001:db8::1"]},
        )
        hosts = await resolve(resolver, "example.net")
        self.assertEqual(
            hosts,
            [
                MXHost("mx1.example.net", 10, ("192.0.2.1", "2001:db8::1")),
                MXHost("mx2.example.net", 20, ("192.0.2.2",)),
            ],
        )

    async def test_equal_preference_is_shuffled(self) -> None:
        """RFC 5321 §5.1: hosts of equal preference in random order; both orders occur."""
        resolver = FakeResolver(
            mx={
                "example.net": [(10, "a.example.net"), (10, "b.example.net"), (5, "c.example.net")]
            },
            a={n: ["192.0.2.9"] for n in ("a.example.net", "b.example.net", "c.example.net")},
        )
        orders = set()
        for seed in range(20):
            hosts = await resolve(resolver, "example.net", seed)
            self.assertEqual(hosts[0].name, "c.example.net")
            orders.add(tuple(h.name for h in hosts[1:]))
        self.assertEqual(
            orders, {("a.example.net", "b.example.net"), ("b.example.net", "a.example.net")}
        )

    async def test_implicit_mx(self) -> None:
        """RFC 5321 §5.1: no MX records -> the domain's own address, preference 0."""
        resolver = FakeResolver(a={"example.net": ["192.0.2.5"]})
        self.assertEqual(
            await resolve(resolver, "example.net"), [MXHost("example.net", 0, ("192.0.2.5",))]
        )

    async def test_no_mx_no_address_is_permanent(self) -> None:
        """RFC 5321 §5.1: a domain with neither MX nor address is a permanent failure."""
        resolver = FakeResolver(txt={"example.net": ["v=spf1 -all"]})
        with self.assertRaises(PermanentDNSError) as cm:
            await resolve(resolver, "example.net")
        self.assertEqual(str(cm.exception), "Domain example.net has no MX and no address record")

    async def test_address_literal_is_its_own_host(self) -> None:
        """RFC 5321 §4.1.3 / §5.1: mail to u@[192.0.2.1] goes to that address, no DNS."""
        resolver = FakeResolver()
        self.assertEqual(
            await resolve(resolver, "[192.0.2.1]"), [MXHost("[192.0.2.1]", 0, ("192.0.2.1",))]
        )
        self.assertEqual(
            await resolve(resolver, "[IPv6:2001:db8::1]"),
            [MXHost("[IPv6:2001:db8::1]", 0, ("2001:db8::1",))],
        )
        with self.assertRaises(PermanentDNSError):
            await resolve(resolver, "[x-tag:content]")
        self.assertEqual(resolver.queries, [])

    async def test_null_mx_is_permanent_and_addresses_are_not_tried(self) -> None:
        """RFC 7505 §4.1: with a null MX the A record must not be used."""
        resolver = FakeResolver(mx={"example.net": [(0, ".")]}, a={"example.net": ["192.0.2.5"]})
        with self.assertRaises(NullMXError) as cm:
            await resolve(resolver, "example.net")
        self.assertEqual(cm.exception.status, "5.1.10")
        self.assertEqual(resolver.queries, [("example.net", "MX")])

    async def test_nxdomain_is_permanent(self) -> None:
        """A domain that does not exist (NXDOMAIN) is a permanent failure, not a temporary one."""
        with self.assertRaises(PermanentDNSError) as cm:
            await resolve(FakeResolver(), "nowhere.example")
        self.assertEqual(str(cm.exception), "Domain nowhere.example does not exist (NXDOMAIN)")
        self.assertNotIsInstance(cm.exception, TemporaryDNSError)

    async def test_servfail_and_timeout_are_temporary(self) -> None:
        """SERVFAIL or a timeout on the MX lookup is a temporary failure."""
        for failure in (SERVFAIL, TIMEOUT):
            resolver = FakeResolver(failures={("example.net", "MX"): failure})
            with self.assertRaises(TemporaryDNSError):
                await resolve(resolver, "example.net")

    async def test_mx_host_lookup_failing_temporarily(self) -> None:
        """One MX host's A lookup times out, the other has an address: use the other; when
        none has one and a lookup failed temporarily, the whole lookup is temporary."""
        resolver = FakeResolver(
            mx={"example.net": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
            a={"mx2.example.net": ["192.0.2.2"]},
            failures={("mx1.example.net", "A"): TIMEOUT},
        )
        hosts = await resolve(resolver, "example.net")
        self.assertEqual([h.name for h in hosts], ["mx2.example.net"])
        resolver = FakeResolver(
            mx={"example.net": [(10, "mx1.example.net")]},
            failures={("mx1.example.net", "A"): SERVFAIL},
        )
        with self.assertRaises(TemporaryDNSError):
            await resolve(resolver, "example.net")

    async def test_mx_hosts_that_do_not_exist_is_permanent(self) -> None:
        """MX hosts none of which has an address are a permanent failure."""
        resolver = FakeResolver(
            mx={"example.net": [(10, "gone.example.net")]},
            failures={("gone.example.net", "AAAA"): NXDOMAIN},
        )
        with self.assertRaises(PermanentDNSError) as cm:
            await resolve(resolver, "example.net")
        self.assertEqual(str(cm.exception), "No MX host of example.net has an address")


class TestZoneTests(TestCase):
    """The authority used by the end-to-end DNS server answers as resolve_mx expects."""

    async def test_zone_answers(self) -> None:
        """TestZone answers MX and A records for resolve and a null MX (RFC 7505) as NullMXError;
        a missing name is a permanent failure."""
        zone = TestZone(
            "example.test",
            mx={"a.example.test": [(10, "mx.example.test")], "null.example.test": [(0, ".")]},
            a={"mx.example.test": ["127.0.0.1"]},
        )
        self.assertEqual(
            await resolve(zone, "a.example.test"), [MXHost("mx.example.test", 10, ("127.0.0.1",))]
        )
        with self.assertRaises(NullMXError):
            await resolve(zone, "null.example.test")
        with self.assertRaises(PermanentDNSError):
            await resolve(zone, "missing.example.test")


class DNSClientChatterTests(TestCase):
    """Twisted's DNS client logs a UDP port opened and closed per query; those informational
    lines are dropped from the log, errors and every other line pass."""

    def test_chatter_dropped_errors_kept(self) -> None:
        """quiet_dns_client drops Twisted's DNS client start/stop chatter, keeps other messages
        and every error."""
        from twisted.logger import LogPublisher, globalLogPublisher
        from twisted.python import log as legacy

        from twistedmail.dns import quiet_dns_client

        seen: list[dict[str, object]] = []
        publisher = LogPublisher(seen.append)
        quiet_dns_client(publisher)
        globalLogPublisher.addObserver(publisher)
        try:
            legacy.msg("DNSDatagramProtocol starting on 40123")
            legacy.msg("Starting protocol <twisted.names.dns.DNSDatagramProtocol object at 0x7f01>")
            legacy.msg("Stopping protocol <twisted.names.dns.DNSDatagramProtocol object at 0x7f01>")
            legacy.msg("(UDP Port 40123 Closed)")
            legacy.msg("Starting protocol <other.Protocol object at 0x7f01>")
            legacy.msg("(UDP Port 40123 Closed)", isError=True)
        finally:
            globalLogPublisher.removeObserver(publisher)
        self.assertEqual(
            [(e["log_text"], bool(e.get("isError"))) for e in seen],
            [
                ("Starting protocol <other.Protocol object at 0x7f01>", False),
                ("(UDP Port 40123 Closed)", True),
            ],
        )
