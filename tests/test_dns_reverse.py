"""Forward-confirmed reverse DNS (twistedmail.dns.reverse_name), the spam filter's
C{Hostname}: a PTR name counts only when its address records lead back to the IP."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import common, dns
from twisted.names import error as dns_error
from twisted.python.failure import Failure

from twistedmail.dns import reverse_name


class Zone(common.ResolverBase):
    """PTR, A and AAAA records from dicts; anything else NXDOMAIN."""

    def __init__(self, records: dict[str, list[Any]]) -> None:
        super().__init__()
        self.records = records

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Any:
        text = name.decode().lower()
        if text not in self.records:
            return defer.fail(Failure(dns_error.DNSNameError(text)))
        answers = [
            dns.RRHeader(name, r.TYPE, dns.IN, 60, r) for r in self.records[text] if r.TYPE == type
        ]
        return defer.succeed((answers, [], []))


def resolve(zone: Zone, ip: str) -> str:
    result: list[str] = []
    defer.Deferred.fromCoroutine(reverse_name(zone, ip)).addCallback(result.append)
    return result[0]


def test_forward_confirmed() -> None:
    """PTR mail.client.test whose A record is the IP: the name."""
    zone = Zone(
        {
            "7.2.0.192.in-addr.arpa": [dns.Record_PTR(b"mail.client.test")],
            "mail.client.test": [dns.Record_A("192.0.2.7")],
        }
    )
    assert resolve(zone, "192.0.2.7") == "mail.client.test"


def test_forged_ptr_is_not_confirmed() -> None:
    """A PTR claiming a name whose A record is another IP: no name."""
    zone = Zone(
        {
            "7.2.0.192.in-addr.arpa": [dns.Record_PTR(b"mail.google.test")],
            "mail.google.test": [dns.Record_A("198.51.100.1")],
        }
    )
    assert resolve(zone, "192.0.2.7") == ""


def test_ipv6_and_no_ptr() -> None:
    """IPv6 through AAAA; an IP without PTR (or not an IP) has no name."""
    ptr = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    zone = Zone(
        {
            ptr: [dns.Record_PTR(b"v6.client.test")],
            "v6.client.test": [dns.Record_AAAA("2001:db8::1")],
        }
    )
    assert resolve(zone, "2001:db8::1") == "v6.client.test"
    assert resolve(zone, "192.0.2.8") == ""
    assert resolve(zone, "unknown") == ""
