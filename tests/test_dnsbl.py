"""DNS block and allow lists (twistedmail.dnsbl, RFC 5782) over a FakeResolver and a Clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twistedmail.dnsbl import Blocklists, Listing, query_name
from twistedmail.testing import TIMEOUT, FakeResolver


def check(lists: Blocklists, ip: str) -> Listing:
    result: list[Listing] = []
    Deferred.fromCoroutine(lists.check(ip)).addCallback(result.append)
    (listing,) = result
    return listing


def test_query_names() -> None:
    """RFC 5782 §2.1: reversed IPv4 octets; §2.4: reversed IPv6 nibbles; v4-mapped as v4."""
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("2001:db8::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    )
    assert query_name("unknown", "bl.test") is None


def test_listed_and_not_listed() -> None:
    """An A record in 127/8 lists the IP; NXDOMAIN does not; the first list is named."""
    resolver = FakeResolver(
        a={"2.0.0.127.bl.test": ["127.0.0.2"], "2.0.0.127.two.test": ["127.0.0.4"]}
    )
    lists = Blocklists(resolver, Clock(), ["bl.test", "two.test"])
    assert check(lists, "127.0.0.2") == Listing(blocked_by="bl.test", allowed_by=None)
    assert check(lists, "127.0.0.2").blocked
    assert not check(lists, "192.0.2.1").blocked


def test_refused_query_answer_is_no_listing() -> None:
    """Spamhaus's 127.255.255.x (query refused, open resolver) is not a listing."""
    resolver = FakeResolver(a={"2.0.0.127.bl.test": ["127.255.255.254"]})
    assert not check(Blocklists(resolver, Clock(), ["bl.test"]), "127.0.0.2").blocked


def test_allowlist_wins() -> None:
    """A client on a DNSWL is not blocked even when a DNSBL lists it."""
    resolver = FakeResolver(
        a={"2.0.0.127.bl.test": ["127.0.0.2"], "2.0.0.127.wl.test": ["127.0.10.0"]}
    )
    listing = check(Blocklists(resolver, Clock(), ["bl.test"], ["wl.test"]), "127.0.0.2")
    assert listing == Listing(blocked_by=None, allowed_by="wl.test")
    assert not listing.blocked


def test_dns_failure_is_not_listed() -> None:
    """A timeout never refuses mail: not listed."""
    resolver = FakeResolver(failures={("2.0.0.127.bl.test", "A"): TIMEOUT})
    assert not check(Blocklists(resolver, Clock(), ["bl.test"]), "127.0.0.2").blocked


def test_cached_for_the_ttl() -> None:
    """One query per (zone, IP) until the record's TTL (60 s here) has passed."""
    resolver = FakeResolver(a={"2.0.0.127.bl.test": ["127.0.0.2"]})
    clock = Clock()
    lists = Blocklists(resolver, clock, ["bl.test"])
    lists.prefetch("127.0.0.2")
    assert check(lists, "127.0.0.2").blocked
    assert check(lists, "127.0.0.2").blocked
    assert resolver.queries == [("2.0.0.127.bl.test", "A")]
    clock.advance(61)
    assert check(lists, "127.0.0.2").blocked
    assert len(resolver.queries) == 2
