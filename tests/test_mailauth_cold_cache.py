"""SPF on a cold DNS cache (twistedmail.mailauth, issue 10): the one-pass path's SPF work
carries over to the concurrent path instead of being done again, against a real
twisted.names server on loopback (RFC 7208 §4.6.4 counts the lookups of one evaluation)."""

from __future__ import annotations

from typing import Any

from test_mailauth import IP, message, zone
from test_smtp_server import run_now
from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.names import client, dns, server
from twisted.trial import unittest

from twistedmail import mailauth
from twistedmail.address import Mailbox
from twistedmail.mailauth import Authenticator, SPFResult

reactor: Any = _reactor  # the real one: UDP to the loopback DNS server


class ColdCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.zone = zone()
        protocol = dns.DNSDatagramProtocol(server.DNSServerFactory(clients=[self.zone]))
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        resolver = client.Resolver(servers=[("127.0.0.1", port.getHost().port)], reactor=reactor)
        self.auth = Authenticator(resolver, reactor, run_now)
        self.evaluations: list[str] = []

        def counting(query: Any, ip: str, reverse_path: Any, helo: str) -> SPFResult:
            self.evaluations.append(str(reverse_path))
            return check_spf(query, ip, reverse_path, helo)

        check_spf = mailauth.check_spf
        self.patch(mailauth, "check_spf", counting)

    async def check(self, mail_from: str) -> Any:
        path = Mailbox.parse(mail_from)
        return await self.auth.check(IP, "client.elsewhere.test", path, message("sender.test"))

    def test_spf_runs_once_per_answer_on_a_cold_cache(self) -> defer.Deferred[None]:
        """A cold cache: the SPF record is asked of the server once and SPF is evaluated
        twice (once meeting the unanswered name, once with the answer), not a third time
        by the concurrent path; then, all cached, once, with no query."""
        return defer.Deferred.fromCoroutine(self._cold_cache())

    async def _cold_cache(self) -> None:
        results = await self.check("a@sender.test")
        self.assertEqual(results.spf, SPFResult("pass", "mailfrom", "sender.test"))
        self.assertEqual(results.dmarc.result, "pass")
        self.assertEqual(
            sorted(self.zone.queries), [("_dmarc.sender.test", "TXT"), ("sender.test", "TXT")]
        )
        self.assertEqual(self.evaluations, ["a@sender.test"] * 2)
        again = await self.check("a@sender.test")
        self.assertEqual(again, results)
        self.assertEqual(len(self.zone.queries), 2)
        self.assertEqual(self.evaluations, ["a@sender.test"] * 3)

    def test_spf_with_a_second_lookup(self) -> defer.Deferred[None]:
        """A record that needs a second lookup (the "a" mechanism, RFC 7208 §5.3): one query
        per name, and one evaluation per round of answers (3), none repeated."""
        return defer.Deferred.fromCoroutine(self._second_lookup())

    async def _second_lookup(self) -> None:
        results = await self.check("h@helo.sender.test")
        self.assertEqual(results.spf, SPFResult("pass", "mailfrom", "helo.sender.test"))
        spf_queries = [q for q in self.zone.queries if not q[0].startswith("_dmarc.")]
        self.assertEqual(spf_queries, [("helo.sender.test", "TXT"), ("helo.sender.test", "A")])
        self.assertEqual(len(self.evaluations), 3)
