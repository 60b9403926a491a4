"""Prometheus metrics (twistedmail.metrics, issue 13): the values in a server's own
registry after sessions driven in-process, the scrape-time state, and the bearer token
(RFC 6750 §2.1, §3)."""

from __future__ import annotations

import os
from pathlib import Path

from test_mailauth import message, zone
from test_service import quiet_config, quiet_server
from test_smtp_queue import FakeOutbound, QueueTestCase
from test_smtp_server import PASSWORDS, PEER, TLS_CONTEXT, Mailhost, plain, talk
from twisted.internet import reactor
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.static import Data
from twisted.web.test.requesthelper import DummyRequest

from twistedmail import metrics
from twistedmail.auth import PasswordChecker
from twistedmail.limits import ConnectionLimit
from twistedmail.mailauth import (
    AuthenticationResults,
    Authenticator,
    DKIMResult,
    DMARCResult,
    SPFResult,
)
from twistedmail.metrics import BearerToken, Metrics, ServerState
from twistedmail.service import MailServer
from twistedmail.smtp.outbound import RecipientResult
from twistedmail.testing import inbound_for, run_now, submission_for
from twistedmail.throttle import LoginThrottle, ThrottlePolicy

BODY = b"From: x@elsewhere.test\r\nSubject: hello\r\n\r\nHi\r\n"


def limited(factory: object, service: str, m: Metrics) -> ConnectionLimit:
    limit = ConnectionLimit(
        factory,  # type: ignore[arg-type]
        max_connections=10,
        max_per_ip=10,
        refusal=b"421 busy\r\n",
        service=service,
    )
    limit.metrics = m  # type: ignore[attr-defined]
    return limit


class SessionTests(unittest.TestCase):
    """Sessions driven through the listener's wrapper, as the server builds them."""

    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        self.metrics = Metrics(clock=self.host.clock)
        self.host.delivery.metrics = self.metrics  # type: ignore[attr-defined]

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def connect(self, factory: object, service: str) -> tuple[object, StringTransport]:
        proto = limited(factory, service, self.metrics).buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def test_message_received_and_delivered(self) -> None:
        """A message to two local users on port 25: one connection, one message received,
        two copies delivered, two local latencies of 0 s (the clock did not move)."""
        factory = inbound_for(self.host, tls=TLS_CONTEXT)
        factory.metrics = self.metrics  # type: ignore[attr-defined]
        proto, tr = self.connect(factory, "smtp")
        out = talk(
            proto,  # type: ignore[arg-type]
            tr,
            b"EHLO c\r\nMAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\n" + BODY + b".\r\n",
        )
        self.assertTrue(out.endswith(b"250 2.0.0 Message accepted for delivery\r\n"), out)
        self.assertEqual(self.value("twistedmail_connections_total", service="smtp"), 1.0)
        self.assertEqual(self.value("twistedmail_messages_received_total", service="smtp"), 1.0)
        self.assertEqual(
            self.value("twistedmail_messages_received_total", service="submission"), 0.0
        )
        self.assertEqual(self.value("twistedmail_messages_delivered_total"), 2.0)
        self.assertEqual(self.value("twistedmail_delivery_seconds_count", path="local"), 1.0)
        self.assertEqual(self.value("twistedmail_delivery_seconds_sum", path="local"), 0.0)

    def test_inbound_authentication(self) -> None:
        """Port 25 with checks: the message's SPF, DKIM and DMARC results are counted once
        (a fail.test sender from an IP its SPF record does not list, no signature)."""
        authenticator = Authenticator(zone(), self.host.clock, run_now)
        authenticator.metrics = self.metrics  # type: ignore[attr-defined]
        factory = inbound_for(self.host, tls=TLS_CONTEXT, authenticator=authenticator)
        proto, tr = self.connect(factory, "smtp")
        out = talk(
            proto,  # type: ignore[arg-type]
            tr,
            b"EHLO client.elsewhere.test\r\nMAIL FROM:<a@fail.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nDATA\r\n" + message("fail.test") + b".\r\n",
        )
        self.assertTrue(out.endswith(b"250 2.0.0 Message accepted for delivery\r\n"), out)
        counted = {
            (sample.labels["method"], sample.labels["result"]): sample.value
            for metric in self.metrics.registry.collect()
            if metric.name == "twistedmail_inbound_authentication"
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
        self.assertEqual(
            counted, {("spf", "fail"): 1.0, ("dkim", "none"): 1.0, ("dmarc", "fail"): 1.0}
        )

    def test_refused_message_not_counted(self) -> None:
        """A message refused at DATA (no such user any more) is neither received nor
        delivered."""
        factory = inbound_for(self.host, tls=TLS_CONTEXT)
        factory.metrics = self.metrics  # type: ignore[attr-defined]
        proto, tr = self.connect(factory, "smtp")
        talk(proto, tr, b"EHLO c\r\nMAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<bob@example.test>\r\n")  # type: ignore[arg-type]
        self.host.store.delete_user("bob@example.test")
        out = talk(proto, tr, b"DATA\r\n" + BODY + b".\r\n")  # type: ignore[arg-type]
        self.assertTrue(out.endswith(b"550 5.1.1 No such user here\r\n"), out)
        self.assertEqual(self.value("twistedmail_messages_received_total", service="smtp"), 0.0)
        self.assertEqual(self.value("twistedmail_messages_delivered_total"), 0.0)

    def test_logins(self) -> None:
        """Submission AUTH: a wrong password is failed, then (blocked after one failure) the
        right one is throttled; another account's right password is ok."""
        throttle = LoginThrottle(
            self.host.clock, ThrottlePolicy(block_after=1, base_delay=0.0, max_delay=0.0)
        )
        checker = PasswordChecker(self.host.store, self.host.delivery.run_in_thread, throttle)
        checker.metrics = self.metrics  # type: ignore[attr-defined]
        self.host.portal.checkers.clear()
        self.host.portal.registerChecker(checker)
        factory = submission_for(self.host)
        proto, tr = self.connect(factory, "submissions")
        talk(proto, tr, b"EHLO c\r\n")  # type: ignore[arg-type]
        alice, bob = "alice@example.test", "bob@example.test"
        replies = [
            talk(proto, tr, b"AUTH PLAIN " + plain(alice, "wrong") + b"\r\n"),  # type: ignore[arg-type]
            talk(proto, tr, b"AUTH PLAIN " + plain(alice, PASSWORDS[alice]) + b"\r\n"),  # type: ignore[arg-type]
            talk(proto, tr, b"AUTH PLAIN " + plain(bob, PASSWORDS[bob]) + b"\r\n"),  # type: ignore[arg-type]
        ]
        self.assertEqual([r[:3] for r in replies], [b"535", b"454", b"235"])
        counts = {
            outcome: self.value("twistedmail_logins_total", service="smtp", outcome=outcome)
            for outcome in ("ok", "failed", "throttled", "error")
        }
        self.assertEqual(counts, {"ok": 1.0, "failed": 1.0, "throttled": 1.0, "error": 0.0})
        self.assertEqual(self.value("twistedmail_connections_total", service="submissions"), 1.0)

    def test_owner_without_metrics(self) -> None:
        """An object the service gave no Metrics (a unit test's) counts into a throw-away
        instance, never into a server's."""
        self.assertIsNot(metrics.of(object()), self.metrics)
        self.assertIs(metrics.of(object()), metrics.of(None))


class QueueTests(QueueTestCase):
    """The queue runner's hooks, on a Clock."""

    def test_queued_relayed_deferred_bounced(self) -> None:
        """One message to three recipients: queued once; relayed (60 s after it was
        queued), deferred and bounced once each; the queue is 1 message, 60 s old."""
        m = Metrics(clock=self.clock)
        outbound = FakeOutbound(
            {"later@remote.test": ["451 4.3.0 Try later"], "bad@remote.test": ["550 5.1.1 No"]}
        )
        runner = self.runner(outbound)
        runner.metrics = m  # type: ignore[attr-defined]
        m.registry.register(
            ServerState(
                sessions=dict,
                queue=lambda: [e.created for e in runner.entries.values()],
                domains=dict,
                started=lambda: 0.0,
                clock=self.clock.seconds,
            )
        )
        self.enqueue(runner, ["ok@remote.test", "later@remote.test", "bad@remote.test"])
        self.clock.advance(60)

        def value(name: str, **labels: str) -> float | None:
            return m.registry.get_sample_value(name, labels)

        self.assertEqual(value("twistedmail_messages_queued_total"), 1.0)
        results = {
            r: value("twistedmail_outbound_recipients_total", result=r)
            for r in ("relayed", "deferred", "bounced")
        }
        self.assertEqual(results, {"relayed": 1.0, "deferred": 1.0, "bounced": 1.0})
        self.assertEqual(value("twistedmail_delivery_seconds_sum", path="queue"), 60.0)
        self.assertEqual(value("twistedmail_queue_messages"), 1.0)
        self.assertEqual(value("twistedmail_queue_oldest_age_seconds"), 60.0)


class EventTests(unittest.TestCase):
    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.clock.advance(1000)
        self.metrics = Metrics(clock=self.clock)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)

    def test_outbound_results(self) -> None:
        """A remote 250 is relayed with its latency since queued; a 4xx deferred; a 5xx
        is counted only when bounced (with the expired ones)."""
        queued_at = self.clock.seconds()
        self.clock.advance(90)
        m = self.metrics
        m.outbound_result(RecipientResult("a@remote.test", 250, "2.0.0", "250 ok"), queued_at)
        m.outbound_result(RecipientResult("b@remote.test", 451, "4.3.0", "451 later"), queued_at)
        m.outbound_result(RecipientResult("c@remote.test", 550, "5.1.1", "550 no"), queued_at)
        m.bounced(2)
        results = {
            r: self.value("twistedmail_outbound_recipients_total", result=r)
            for r in ("relayed", "deferred", "bounced")
        }
        self.assertEqual(results, {"relayed": 1.0, "deferred": 1.0, "bounced": 2.0})
        self.assertEqual(self.value("twistedmail_delivery_seconds_sum", path="queue"), 90.0)
        self.assertEqual(
            self.value("twistedmail_delivery_seconds_bucket", path="queue", le="60.0"), 0.0
        )
        self.assertEqual(
            self.value("twistedmail_delivery_seconds_bucket", path="queue", le="300.0"), 1.0
        )

    def test_authentication_results(self) -> None:
        """RFC 8601 result words per method; DKIM once per message (pass when any signature
        passed); a word outside RFC 8601 is "other"."""
        self.metrics.authenticated(
            AuthenticationResults(
                SPFResult("softfail", "mailfrom", "remote.test"),
                (DKIMResult("fail", "a.test", "s"), DKIMResult("pass", "b.test", "s")),
                DMARCResult("pass", "b.test"),
            )
        )
        self.metrics.authenticated(
            AuthenticationResults(SPFResult("bogus\nword", "helo", ""), (), DMARCResult("none", ""))
        )
        values = {
            (method, result): self.value(
                "twistedmail_inbound_authentication_total", method=method, result=result
            )
            for method, result in [
                ("spf", "softfail"),
                ("spf", "other"),
                ("dkim", "pass"),
                ("dkim", "fail"),
                ("dkim", "none"),
                ("dmarc", "pass"),
                ("dmarc", "none"),
            ]
        }
        self.assertEqual(
            values,
            {
                ("spf", "softfail"): 1.0,
                ("spf", "other"): 1.0,
                ("dkim", "pass"): 1.0,
                ("dkim", "fail"): None,
                ("dkim", "none"): 1.0,
                ("dmarc", "pass"): 1.0,
                ("dmarc", "none"): 1.0,
            },
        )

    def test_server_state(self) -> None:
        """Open sessions, the queue's size and oldest age, and per-domain figures are read at
        scrape time from the callables given."""
        queue = [400.0, 900.0]
        self.metrics.registry.register(
            ServerState(
                sessions=lambda: {"imap": 2, "smtp": 0},
                queue=lambda: queue,
                domains=lambda: {"example.test": (2, 12345, 3)},
                started=lambda: 100.0,
                clock=self.clock.seconds,
            )
        )
        self.assertEqual(self.value("twistedmail_sessions_open", service="imap"), 2.0)
        self.assertEqual(self.value("twistedmail_queue_messages"), 2.0)
        self.assertEqual(self.value("twistedmail_queue_oldest_age_seconds"), 600.0)
        self.assertEqual(self.value("twistedmail_stored_bytes", domain="example.test"), 12345.0)
        self.assertEqual(self.value("twistedmail_stored_messages", domain="example.test"), 3.0)
        self.assertEqual(self.value("twistedmail_users", domain="example.test"), 2.0)
        self.assertEqual(self.value("twistedmail_start_time_seconds"), 100.0)
        queue.clear()
        self.assertEqual(self.value("twistedmail_queue_oldest_age_seconds"), 0.0)


class BearerTokenTests(unittest.TestCase):
    def render(self, authorization: bytes | None) -> DummyRequest:
        resource = BearerToken(Data(b"metrics\n", "text/plain"), "s3cret")
        request = DummyRequest([b""])
        if authorization is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [authorization])
        body = resource.render(request)
        request.write(body)
        return request

    def test_right_token(self) -> None:
        """RFC 6750 §2.1: the right bearer token gets the metrics page."""
        request = self.render(b"Bearer s3cret")
        self.assertEqual((request.responseCode, b"".join(request.written)), (None, b"metrics\n"))

    def test_no_token(self) -> None:
        """RFC 6750 §3: a request without credentials gets the challenge, no error code."""
        request = self.render(None)
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"www-authenticate"),
            [b'Bearer realm="twistedmail"'],
        )

    def test_wrong_token_or_scheme(self) -> None:
        """RFC 6750 §3.1: a wrong token is invalid_token; Basic credentials are no token."""
        for header in (b"Bearer s3cret-not", b"Basic czNjcmV0", b"Bearer", b"s3cret"):
            request = self.render(header)
            self.assertEqual(request.responseCode, 401, header)
            self.assertEqual(
                request.responseHeaders.getRawHeaders(b"www-authenticate"),
                [b'Bearer realm="twistedmail", error="invalid_token"'],
            )


class ServerTests(unittest.TestCase):
    """The registry of a L{MailServer}: its own, with the server's state in it."""

    def setUp(self) -> None:
        self.data = Path(self.mktemp()).resolve()
        self.server = quiet_server(self, self.data)
        self.server.store.open()
        self.server.store.add_domain("example.test")
        self.server.store.add_domain("empty.test")
        self.server.store.add_user("alice@example.test", "x")
        new = self.data / "mail" / "example.test" / "alice" / "new"
        new.mkdir(parents=True)
        (new / "1700000000.M1P1.host,S=1234").write_bytes(b"x" * 1234)

    def value(self, name: str, **labels: str) -> float | None:
        return self.server.metrics.registry.get_sample_value(name, labels)

    def test_own_registry_with_state(self) -> None:
        """Each server has its own registry; bytes stored per domain come from the S= of the
        file names (the quota's listing), every local domain listed."""
        other = MailServer(quiet_config(Path(self.mktemp()).resolve()), reactor)
        self.addCleanup(other.store.close)
        self.addCleanup(other.run_in_thread.stop)
        parse = getattr(other.queue.outbound.resolver, "_parseCall", None)
        if parse is not None and parse.active():
            self.addCleanup(parse.cancel)
        self.assertIsNot(other.metrics.registry, self.server.metrics.registry)
        self.assertEqual(self.value("twistedmail_stored_bytes", domain="example.test"), 1234.0)
        self.assertEqual(self.value("twistedmail_stored_bytes", domain="empty.test"), 0.0)
        self.assertEqual(self.value("twistedmail_users", domain="example.test"), 1.0)
        self.assertEqual(self.value("twistedmail_queue_messages"), 0.0)
        self.assertEqual(self.value("twistedmail_sessions_open", service="pop3s"), 0.0)
        self.assertEqual(self.value("twistedmail_start_time_seconds"), self.server.started)

    async def test_status(self) -> None:
        """The control socket's status: listeners by name, queue, blocks, domains."""
        status = await self.server.status()
        self.assertEqual(status["queue"], {"messages": 0, "oldest": None, "oldest_age": 0})
        self.assertEqual(
            status["domains"],
            {
                "empty.test": {"users": 0, "bytes": 0, "messages": 0},
                "example.test": {"users": 1, "bytes": 1234, "messages": 1},
            },
        )
        self.assertEqual(status["listeners"], {"control": [str(self.data / "control")]})
        self.assertEqual((status["blocked_ips"], status["other_blocks"]), ([], 0))
        # one process (no [server] workers): itself, with its open connections and sessions
        self.assertEqual(
            status["workers"],
            [{"pid": os.getpid(), "role": "parent", "connections": 0, "imap_sessions": 0}],
        )
