"""The durable queue (twistedmail.smtp.queue) and DSNs (twistedmail.smtp.dsn): spool files,
retry timing on a Clock, per-recipient states, bounces and delay notices, limits."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Sequence
from pathlib import Path

from test_smtp_server import NOW, Mailhost, run_now
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from twistedmail.address import Mailbox
from twistedmail.reply import REPLY_552_MAILBOX_FULL
from twistedmail.smtp.dsn import FAILED, build_dsn
from twistedmail.smtp.outbound import RecipientResult, enhanced_status
from twistedmail.smtp.queue import (
    QueueEntry,
    QueueError,
    QueueRunner,
    RetrySchedule,
    Spool,
)

MESSAGE = (
    b"Received: from x\r\n\tby y; date\r\nFrom: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
)
ALICE = Mailbox.parse("alice@example.test")


class FakeOutbound:
    """Answers per address from a script of reply lines (the last one repeats); records
    each call; with C{hold}, every call waits for a Deferred the test fires."""

    def __init__(self, script: dict[str, list[str]] | None = None, hold: bool = False) -> None:
        self.script = script or {}
        self.calls: list[tuple[str | None, str, tuple[str, ...]]] = []
        self.hold = hold
        self.held: list[defer.Deferred[None]] = []
        self.aborted = False

    def destination(self, domain: str) -> str:
        return domain

    def abort(self) -> None:
        """As Outbound.abort: the sessions under way end with a 451 for their recipients."""
        self.aborted = True
        while self.held:
            self.held.pop(0).callback(None)

    async def send(
        self, sender: str | None, domain: str, recipients: Sequence[str], message: bytes
    ) -> list[RecipientResult]:
        self.calls.append((sender, domain, tuple(recipients)))
        if self.hold:
            d: defer.Deferred[None] = defer.Deferred()
            self.held.append(d)
            await d
            if self.aborted:
                return [
                    RecipientResult(a, 451, "4.4.1", "451 4.4.1 Not tried: shutting down")
                    for a in recipients
                ]
        results = []
        for address in recipients:
            replies = self.script.get(address, ["250 2.0.0 Queued"])
            text = replies.pop(0) if len(replies) > 1 else replies[0]
            code = int(text[:3])
            results.append(
                RecipientResult(
                    address, code, enhanced_status(code, text[4:]), text, "mx.example.net"
                )
            )
        return results


class QueueTestCase(TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))
        self.clock = self.host.clock
        self.spool = Spool(self.host.root / "queue")
        self.schedule = RetrySchedule(first=300, maximum=3600, lifetime=86400, delay_warning=7200)

    def runner(self, outbound: FakeOutbound, **kw: int) -> QueueRunner:
        runner = QueueRunner(
            spool=self.spool,
            outbound=outbound,
            store=self.host.store,
            local=self.host.delivery,
            clock=self.clock,
            run_in_thread=run_now,
            hostname="mail.example.test",
            schedule=self.schedule,
            **kw,
        )
        self.successResultOf(defer.Deferred.fromCoroutine(runner.start()))
        self.addCleanup(runner.stop)
        return runner

    def enqueue(
        self, runner: QueueRunner, recipients: list[str], sender: Mailbox | None = ALICE
    ) -> QueueEntry:
        return self.successResultOf(
            defer.Deferred.fromCoroutine(
                runner.enqueue(sender, [Mailbox.parse(r) for r in recipients], MESSAGE)
            )
        )

    def dsns(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[misc]
            for data in self.host.messages("alice@example.test")
        ]


class SpoolTests(QueueTestCase):
    def test_add_writes_message_and_versioned_envelope(self) -> None:
        """add writes the message bytes to ID.msg and a version-1 JSON envelope (sender,
        recipients, times) to ID.json."""
        entry = self.spool.add("alice@example.test", ["bob@example.net"], MESSAGE, NOW)
        self.assertEqual((self.spool.directory / f"{entry.id}.msg").read_bytes(), MESSAGE)
        data = json.loads((self.spool.directory / f"{entry.id}.json").read_bytes())
        self.assertEqual(
            data,
            {
                "version": 1,
                "id": entry.id,
                "sender": "alice@example.test",
                "recipients": [
                    {
                        "address": "bob@example.net",
                        "state": "pending",
                        "status": "",
                        "diagnostic": "",
                        "remote_mta": None,
                    }
                ],
                "created": NOW,
                "next_try": NOW,
                "size": len(MESSAGE),
                "attempts": 0,
                "last_error": "",
                "delay_notified": False,
            },
        )
        self.assertEqual(self.spool.load(entry.id), entry)
        self.assertEqual(list((self.spool.directory / "tmp").iterdir()), [])

    def test_orphan_message_and_bad_version(self) -> None:
        """remove_orphans deletes a .msg without envelope; an envelope of an unknown version
        raises QueueError and is not listed."""
        entry = self.spool.add(None, ["bob@example.net"], MESSAGE, NOW)
        (self.spool.directory / "0000000000ABCDEF0123.msg").write_bytes(b"half")
        self.assertEqual(self.spool.remove_orphans(), ["0000000000ABCDEF0123"])
        path = self.spool.directory / f"{entry.id}.json"
        path.write_bytes(path.read_bytes().replace(b'"version": 1', b'"version": 9'))
        with self.assertRaises(QueueError):
            self.spool.load(entry.id)
        self.assertEqual(self.spool.entries(), [])

    def test_ids_are_validated(self) -> None:
        """A queue ID that is not one of ours ('../accounts') raises QueueError."""
        with self.assertRaises(QueueError):
            self.spool.load("../accounts")


class RunnerTests(QueueTestCase):
    def test_retry_after_451_then_delivered_once(self) -> None:
        """RFC 5321 §4.5.4.1: a 451 keeps the message with the attempt counted and the next try 5
        minutes later; the retry delivers it once and removes it."""
        outbound = FakeOutbound({"bob@example.net": ["451 4.3.0 Try later", "250 2.0.0 OK"]})
        runner = self.runner(outbound)
        entry = self.enqueue(runner, ["bob@example.net"])
        self.clock.advance(0)
        self.assertEqual(len(outbound.calls), 1)
        saved = self.spool.load(entry.id)
        assert saved is not None
        self.assertEqual(saved.attempts, 1)
        self.assertEqual(saved.next_try, NOW + 300)
        self.assertEqual(saved.last_error, "451 4.3.0 Try later")
        self.clock.advance(299)
        self.assertEqual(len(outbound.calls), 1)
        self.clock.advance(1)
        self.assertEqual(
            outbound.calls,
            [("alice@example.test", "example.net", ("bob@example.net",))] * 2,
        )
        self.assertEqual(self.spool.ids(), [])
        self.clock.advance(100000)
        self.assertEqual(len(outbound.calls), 2)

    def test_backoff_doubles_to_the_maximum(self) -> None:
        """The retry delay doubles from 5 minutes up to the 1-hour maximum."""
        self.assertEqual(
            [self.schedule.delay(n) for n in range(1, 8)],
            [300, 600, 1200, 2400, 3600, 3600, 3600],
        )

    def test_mixed_results_bounce_the_550_and_keep_the_451(self) -> None:
        """RFC 5321 §4.5.4: per recipient, a 250 is delivered, a 550 bounced, a 451 kept pending
        for a retry."""
        outbound = FakeOutbound(
            {
                "gone@example.net": ["550 5.1.1 No such user"],
                "busy@example.org": ["451 4.2.0 Busy", "250 2.0.0 OK"],
            }
        )
        runner = self.runner(outbound)
        entry = self.enqueue(runner, ["ok@example.net", "gone@example.net", "busy@example.org"])
        self.clock.advance(0)
        self.assertEqual(
            sorted(outbound.calls),
            [
                ("alice@example.test", "example.net", ("ok@example.net", "gone@example.net")),
                ("alice@example.test", "example.org", ("busy@example.org",)),
            ],
        )
        saved = self.spool.load(entry.id)
        assert saved is not None
        self.assertEqual(
            [(r.address, r.state) for r in saved.recipients],
            [
                ("ok@example.net", "delivered"),
                ("gone@example.net", "bounced"),
                ("busy@example.org", "pending"),
            ],
        )
        [dsn] = self.dsns()
        self.assertEqual(dsn["From"], "Mail Delivery System <MAILER-DAEMON@mail.example.test>")
        self.assertEqual(dsn["Subject"], "Undelivered Mail Returned to Sender")
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        human, status, headers = dsn.iter_parts()
        fields = [dict(p.items()) for p in status.get_payload()]
        self.assertEqual(
            fields[1],
            {
                "Final-Recipient": "rfc822; gone@example.net",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; mx.example.net",
                "Diagnostic-Code": "smtp; 550 5.1.1 No such user",
                "Last-Attempt-Date": "Fri, 15 Jan 2027 08:00:00 +0000",
            },
        )
        self.assertEqual(len(fields), 2)
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn(b"Subject: hi\r\n", self.host.messages("alice@example.test")[0])
        self.assertTrue(self.host.messages("alice@example.test")[0].startswith(b"Return-Path: <>"))
        # the retry carries only the pending recipient
        self.clock.advance(300)
        self.assertEqual(
            outbound.calls[-1], ("alice@example.test", "example.org", ("busy@example.org",))
        )
        self.assertEqual(self.spool.ids(), [])
        self.assertEqual(len(self.dsns()), 1)

    def test_no_bounce_for_a_null_sender(self) -> None:
        """RFC 5321 §4.5.5: a failed message from the null sender gets no bounce and leaves the
        queue."""
        outbound = FakeOutbound({"gone@example.net": ["550 5.1.1 No such user"]})
        runner = self.runner(outbound)
        self.enqueue(runner, ["gone@example.net"], sender=None)
        self.clock.advance(0)
        self.assertEqual(outbound.calls, [(None, "example.net", ("gone@example.net",))])
        self.assertEqual(self.spool.ids(), [])
        self.assertEqual(self.dsns(), [])

    def test_bounce_to_a_remote_sender_is_queued_from_null(self) -> None:
        """RFC 3464 + RFC 5321 §4.5.5: the bounce to a remote sender is queued from the null
        sender."""
        outbound = FakeOutbound({"gone@example.net": ["550 5.1.1 No such user"]})
        runner = self.runner(outbound)
        self.enqueue(runner, ["gone@example.net"], sender=Mailbox.parse("carol@example.org"))
        self.clock.advance(0)
        self.assertEqual(outbound.calls[-1][:2], (None, "example.org"))
        self.assertEqual(outbound.calls[-1][2], ("carol@example.org",))

    def test_delay_notice_once_then_expiry_bounce(self) -> None:
        """RFC 3464: one delayed DSN (4.4.1, Will-Retry-Until) after delay_warning, then a failed
        DSN when the lifetime runs out."""
        outbound = FakeOutbound({"bob@example.net": ["451 4.4.1 No answer"]})
        runner = self.runner(outbound)
        entry = self.enqueue(runner, ["bob@example.net"])
        self.clock.advance(0)
        self.assertEqual(self.dsns(), [])
        for _ in range(30):
            self.clock.advance(3600)
        self.assertEqual(len(self.dsns()), 2)
        subjects = sorted(m["Subject"] for m in self.dsns())
        self.assertEqual(
            subjects, ["Delayed Mail (still being retried)", "Undelivered Mail Returned to Sender"]
        )
        reports = {
            m["Subject"]: [dict(p.items()) for p in list(m.iter_parts())[1].get_payload()][1]
            for m in self.dsns()
        }
        delay = reports["Delayed Mail (still being retried)"]
        self.assertEqual((delay["Action"], delay["Status"]), ("delayed", "4.4.1"))
        self.assertIn("Will-Retry-Until", delay)
        final = reports["Undelivered Mail Returned to Sender"]
        self.assertEqual((final["Action"], final["Status"]), ("failed", "4.4.7"))
        self.assertEqual(self.spool.load(entry.id), None)

    def test_default_schedule_delay_notice_after_four_hours_once(self) -> None:
        """The defaults (Postfix's): retries after 5, 10, 20, 40 min, then hourly; one
        "delayed" DSN at the first attempt 4 h or more after arrival, never a second."""
        self.schedule = RetrySchedule()
        self.assertEqual(
            (self.schedule.first, self.schedule.maximum, self.schedule.delay_warning),
            (300, 3600, 4 * 3600),
        )
        self.assertEqual(self.schedule.lifetime, 5 * 86400)
        outbound = FakeOutbound({"bob@example.net": ["451 4.4.1 No answer"]})
        runner = self.runner(outbound)
        self.enqueue(runner, ["bob@example.net"])
        self.clock.advance(0)
        times = [0.0] if outbound.calls else []
        for _ in range(4 * 3600 - 1):
            calls = len(outbound.calls)
            self.clock.advance(1)
            if len(outbound.calls) != calls:
                times.append(self.clock.seconds() - NOW)
        self.assertEqual(times, [0, 300, 900, 2100, 4500, 8100, 11700])
        self.assertEqual(self.dsns(), [])
        self.clock.advance(3600)
        [notice] = self.dsns()
        self.assertEqual(notice["Subject"], "Delayed Mail (still being retried)")
        for _ in range(10):
            self.clock.advance(3600)
        self.assertEqual(len(self.dsns()), 1)

    def test_restart_picks_up_the_spool(self) -> None:
        """A new runner sends what is already in the spool and removes it when delivered."""
        entry = self.spool.add("alice@example.test", ["bob@example.net"], MESSAGE, NOW - 10)
        outbound = FakeOutbound()
        self.runner(outbound)
        self.clock.advance(0)
        self.assertEqual(
            outbound.calls, [("alice@example.test", "example.net", ("bob@example.net",))]
        )
        self.assertEqual(self.spool.load(entry.id), None)

    def test_deleted_entry_is_not_sent(self) -> None:
        """An entry removed from the spool before its try is not sent."""
        outbound = FakeOutbound()
        runner = self.runner(outbound)
        entry = self.spool.add("alice@example.test", ["bob@example.net"], MESSAGE, NOW + 50)
        self.successResultOf(defer.Deferred.fromCoroutine(runner.flush()))
        self.spool.remove(entry.id)
        self.clock.advance(0)
        self.assertEqual(outbound.calls, [])

    def test_flush_makes_everything_due(self) -> None:
        """flush makes every waiting entry due at once and returns how many; the retry delivers."""
        outbound = FakeOutbound({"bob@example.net": ["451 4.3.0 Later", "250 2.0.0 OK"]})
        runner = self.runner(outbound)
        self.enqueue(runner, ["bob@example.net"])
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(defer.Deferred.fromCoroutine(runner.flush())), 1)
        self.clock.advance(0)
        self.assertEqual(len(outbound.calls), 2)
        self.assertEqual(self.spool.ids(), [])

    def test_connections_limited_per_destination_and_overall(self) -> None:
        """Outbound connections are limited overall (max_connections) and per destination domain
        (max_per_destination)."""
        outbound = FakeOutbound(hold=True)
        runner = self.runner(outbound, max_connections=3, max_per_destination=2)
        for _ in range(3):
            self.enqueue(runner, ["bob@example.net"])
        self.enqueue(runner, ["x@example.org"])
        self.enqueue(runner, ["y@example.com"])
        self.clock.advance(0)
        domains = [c[1] for c in outbound.calls]
        self.assertEqual(len(domains), 3)  # max_connections
        self.assertLessEqual(domains.count("example.net"), 2)  # max_per_destination
        while outbound.held:
            outbound.held.pop(0).callback(None)
        self.clock.advance(0)
        self.assertEqual(len(outbound.calls), 5)
        self.assertEqual(self.spool.ids(), [])

    def test_one_session_for_all_domains_through_a_smarthost(self) -> None:
        """Recipients of several domains with one destination (a smarthost, a route) go in
        one call, so one connection; other domains keep theirs."""
        outbound = FakeOutbound()
        outbound.destination = lambda domain: (  # type: ignore[method-assign]
            "smarthost:587" if domain != "example.com" else domain
        )
        runner = self.runner(outbound)
        self.enqueue(runner, ["a@example.net", "b@example.org", "c@example.com", "d@example.net"])
        self.clock.advance(0)
        self.assertEqual(
            sorted(outbound.calls),
            [
                ("alice@example.test", "example.com", ("c@example.com",)),
                (
                    "alice@example.test",
                    "example.net",
                    ("a@example.net", "b@example.org", "d@example.net"),
                ),
            ],
        )
        self.assertEqual(self.spool.ids(), [])

    def test_shutdown_saves_the_250s_and_cuts_the_rest_in_bounded_time(self) -> None:
        """At stop, an attempt that gets its 250 within the grace period is recorded; one
        still waiting is cut after it, its recipient kept pending; a restart sends only
        that one (nothing delivered twice)."""
        outbound = FakeOutbound(hold=True)
        runner = self.runner(outbound)
        entry = self.enqueue(runner, ["ok@example.net", "slow@example.org"])
        self.clock.advance(0)
        self.assertEqual([c[1] for c in outbound.calls], ["example.net", "example.org"])
        stopped = defer.Deferred.fromCoroutine(runner.shutdown(grace=10))
        outbound.held.pop(0).callback(None)  # example.net answers 250 during the grace
        saved = self.spool.load(entry.id)
        assert saved is not None
        self.assertEqual([r.state for r in saved.recipients], ["delivered", "pending"])
        self.clock.advance(9)
        self.assertNoResult(stopped)
        self.assertFalse(outbound.aborted)
        self.clock.advance(1)
        self.assertTrue(outbound.aborted)
        self.successResultOf(stopped)
        saved = self.spool.load(entry.id)
        assert saved is not None
        self.assertEqual(
            [(r.state, r.diagnostic) for r in saved.recipients],
            [
                ("delivered", "250 2.0.0 Queued"),
                ("pending", "451 4.4.1 Not tried: shutting down"),
            ],
        )
        self.assertEqual(runner.in_flight, {})
        restarted = FakeOutbound()
        self.runner(restarted)
        self.clock.advance(3600)
        self.assertEqual(
            restarted.calls, [("alice@example.test", "example.org", ("slow@example.org",))]
        )

    def test_shutdown_starts_nothing_new_and_is_immediate_when_idle(self) -> None:
        """shutdown starts no new delivery, waits for the one running, and ends at once when
        idle."""
        outbound = FakeOutbound(hold=True)
        runner = self.runner(outbound, max_connections=1)
        self.enqueue(runner, ["a@example.net"])
        self.enqueue(runner, ["b@example.org"])
        self.clock.advance(0)
        self.assertEqual(len(outbound.calls), 1)  # the other waits for the connection slot
        stopped = defer.Deferred.fromCoroutine(runner.shutdown(grace=10))
        outbound.held.pop(0).callback(None)
        self.successResultOf(stopped)
        self.assertEqual(len(outbound.calls), 1)  # the waiting one was not started
        self.assertEqual(len(self.spool.ids()), 1)
        idle = self.runner(FakeOutbound())
        idle.stop()
        self.successResultOf(defer.Deferred.fromCoroutine(idle.shutdown()))


class DSNTests(TestCase):
    def test_local_failure_diagnostic_and_header_only(self) -> None:
        """RFC 3464 §2.3: a DSN for a local failure has Action, Status and Diagnostic-Code, no
        Remote-MTA, and returns headers only, not the body."""
        dsn = build_dsn(
            hostname="mail.example.test",
            recipient="alice@example.test",
            results=[
                RecipientResult(
                    "x@null.example",
                    556,
                    "5.1.10",
                    "556 5.1.10 Domain null.example does not accept mail (null MX, RFC 7505)",
                )
            ],
            action=FAILED,
            original=MESSAGE + b"secret body line\r\n",
            arrival=NOW,
            now=NOW,
        )
        self.assertIn(
            b"Final-Recipient: rfc822; x@null.example\r\nAction: failed\r\nStatus: 5.1.10\r\n"
            b"Diagnostic-Code: X-twistedmail; 556 5.1.10 Domain null.example does not accept"
            b" mail (null MX, RFC 7505)\r\n",
            dsn,
        )
        self.assertNotIn(b"secret body line", dsn)
        self.assertNotIn(b"Remote-MTA", dsn)


class LocalBounceTests(QueueTestCase):
    """QueueRunner.bounce: a DSN for recipients that failed at final delivery here (a user
    over quota), sent at once, never for a null reverse-path."""

    def bounce(self, runner: QueueRunner, sender: Mailbox | None) -> None:
        failures = [(Mailbox.parse("bob@example.test"), REPLY_552_MAILBOX_FULL)]
        d = defer.Deferred.fromCoroutine(runner.bounce(sender, failures, MESSAGE))
        self.successResultOf(d)

    def test_bounce_to_a_local_sender(self) -> None:
        """RFC 3464: a final-delivery failure here sends the local sender a DSN with human text,
        status per recipient and the headers."""
        runner = self.runner(FakeOutbound({}))
        self.bounce(runner, ALICE)
        [dsn] = self.dsns()
        self.assertEqual(dsn["Subject"], "Undelivered Mail Returned to Sender")
        human, status, headers = dsn.iter_parts()
        self.assertEqual(
            [dict(p.items()) for p in status.get_payload()][1],
            {
                "Final-Recipient": "rfc822; bob@example.test",
                "Action": "failed",
                "Status": "5.2.2",
                "Diagnostic-Code": "X-twistedmail; 552 5.2.2 Mailbox full",
                "Last-Attempt-Date": "Fri, 15 Jan 2027 08:00:00 +0000",
            },
        )
        self.assertEqual(self.spool.ids(), [])  # delivered locally, nothing queued

    def test_no_bounce_for_a_null_sender(self) -> None:
        """RFC 5321 §4.5.5: no bounce for a message from the null sender."""
        runner = self.runner(FakeOutbound({}))
        self.bounce(runner, None)
        self.assertEqual((self.dsns(), self.spool.ids()), ([], []))
