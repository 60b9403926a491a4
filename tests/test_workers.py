"""The pieces of C{[server] workers} (issue 10) that hold without processes: the config key,
the throttle's and the hourly rates' shared outcomes (L{LoginThrottle.share},
L{HourlyRate.share}), the metrics of every process added up (L{CombinedRegistry}), and the
connection limits counted for the whole server (L{Anvil}).
The processes themselves are tested end to end in tests/e2e/test_e2e_workers.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail.config import DEFAULT_WORKERS, ConfigError, load_config, parse_config
from twistedmail.limits import (
    RATE_REFUSED,
    Admission,
    Anvil,
    ConnectionLimit,
    LocalShare,
    refusal_for,
)
from twistedmail.metrics import CombinedRegistry, samples
from twistedmail.rate import HourlyRate
from twistedmail.throttle import LoginThrottle, ThrottlePolicy

IP = "203.0.113.9"
USER = "alice@example.test"
REFUSAL = b"421 4.7.0 mail.example.test Too many connections, try again later\r\n"


class WorkersConfigTests(unittest.TestCase):
    def test_default(self) -> None:
        """[server] workers defaults to DEFAULT_WORKERS: one process per CPU (README)."""
        self.assertEqual(parse_config({}, None).server.workers, DEFAULT_WORKERS)
        self.assertEqual(DEFAULT_WORKERS, os.cpu_count() or 1)

    def test_example_file_shows_the_default(self) -> None:
        """etc/twistedmail.example.toml's [server] workers is the default."""
        example = load_config(Path(__file__).parents[1] / "etc" / "twistedmail.example.toml")
        self.assertEqual(example.server.workers, DEFAULT_WORKERS)

    def test_value(self) -> None:
        """[server] workers = 3 is read as 3."""
        self.assertEqual(parse_config({"server": {"workers": 3}}, None).server.workers, 3)

    def test_zero_is_refused(self) -> None:
        """[server] workers = 0 is a one-line error naming the key."""
        with self.assertRaises(ConfigError) as cm:
            parse_config({"server": {"workers": 0}}, None)
        self.assertIn("[server] workers: must be a positive integer", str(cm.exception))


def pair(policy: ThrottlePolicy) -> tuple[LoginThrottle, LoginThrottle, Clock]:
    """Two throttles wired as two processes are: each one's outcomes replayed in the other."""
    clock = Clock()
    clock.advance(1_000_000)
    a, b = LoginThrottle(clock, policy), LoginThrottle(clock, policy)
    a.share = lambda kind, args: b.replay(kind, args)
    b.share = lambda kind, args: a.replay(kind, args)
    return a, b, clock


class SharedThrottleTests(unittest.TestCase):
    def test_a_block_made_in_one_process_holds_in_the_other(self) -> None:
        """Failures counted in two processes add up: the third blocks the pair in both."""
        a, b, _ = pair(ThrottlePolicy(block_after=3))
        a.failed(IP, USER)
        b.failed(IP, USER)
        a.failed(IP, USER)
        self.assertTrue(a.blocked(IP, USER))
        self.assertTrue(b.blocked(IP, USER))

    def test_unblock_reaches_the_other_process(self) -> None:
        """The admin's unblock in the parent lifts the block in the workers too."""
        a, b, _ = pair(ThrottlePolicy(block_after=2))
        a.failed(IP, USER)
        a.failed(IP, USER)
        self.assertEqual(a.unblock(IP), (1, 2))
        self.assertFalse(b.blocked(IP, USER))
        self.assertEqual(b.blocks(), [])

    def test_replay_is_neither_shared_again_nor_logged(self) -> None:
        """A replayed outcome is not handed on (no echo) and logs no second block line."""
        sent: list[Any] = []
        throttle = LoginThrottle(Clock(), ThrottlePolicy(block_after=1))
        throttle.share = lambda kind, args: sent.append((kind, args))
        with capturedLogs() as events:
            throttle.replay("failed", [IP, USER])
        self.assertEqual((sent, events), ([], []))
        self.assertTrue(throttle.blocked(IP, USER))
        throttle.failed("198.51.100.1", USER)
        self.assertEqual(sent, [("failed", ("198.51.100.1", USER))])

    def test_replay_refuses_what_is_no_outcome(self) -> None:
        """Only failed/succeeded/unblock with their string arguments are replayed."""
        throttle = LoginThrottle(Clock())
        for kind, args in (("restore", [{}]), ("failed", [IP]), ("failed", [IP, 5])):
            with self.assertRaises(ValueError):
                throttle.replay(kind, args)


class SharedRateTests(unittest.TestCase):
    def test_events_of_both_processes_count_against_one_limit(self) -> None:
        """Two processes' records add up in each: the limit holds across them."""
        clock = Clock()
        a, b = HourlyRate(3, clock), HourlyRate(3, clock)
        a.share = lambda key, n: b.replay(key, n)
        b.share = lambda key, n: a.replay(key, n)
        a.record(USER, 2)
        b.record(USER)
        self.assertEqual((a.count(USER), b.count(USER)), (3, 3))
        self.assertFalse(a.allows(USER))
        self.assertFalse(b.allows(USER))


class CombinedRegistryTests(unittest.TestCase):
    def test_worker_samples_are_added_to_the_parents(self) -> None:
        """Counters of the workers are summed into the parent's samples, label by label,
        and a label only a worker has is served too; the parent's own lines stay."""
        parent, worker = CollectorRegistry(), CollectorRegistry()
        for registry, counts in ((parent, {"imap": 2}), (worker, {"imap": 3, "pop3": 1})):
            counter = Counter("t_connections", "help", ["service"], registry=registry)
            for service, n in counts.items():
                counter.labels(service).inc(n)
        combined = CombinedRegistry(parent)
        combined.others = lambda: [samples(worker)]
        text = generate_latest(combined).decode()  # type: ignore[arg-type]
        self.assertIn('t_connections_total{service="imap"} 5.0\n', text)
        self.assertIn('t_connections_total{service="pop3"} 1.0\n', text)
        self.assertEqual(text.count("# TYPE t_connections_total counter"), 1)

    def test_without_workers_the_registry_is_served_as_it_is(self) -> None:
        """No worker: the exposition equals the registry's own."""
        registry = CollectorRegistry()
        Counter("t_logins", "help", registry=registry).inc()
        combined = CombinedRegistry(registry)
        self.assertEqual(
            generate_latest(combined).decode(),  # type: ignore[arg-type]
            generate_latest(registry).decode(),
        )


class WorkerLogLinesTests(unittest.TestCase):
    """A worker's own log lines (L{LogLines}) and the parent's file they go to (L{log_sink})."""

    def test_a_worker_writes_the_parent_observers_line_marked_with_its_pid(self) -> None:
        """The line is twistd's text line with C{worker=PID} after the system, and the lines
        logged within the delay are written together."""
        import io
        import os

        from twisted.logger import LogLevel, textFileLogObserver

        from twistedmail.loglines import LogLines, fd_writer

        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        clock = Clock()
        clock.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
        clock.running = True  # type: ignore[attr-defined]
        writes: list[bytes] = []
        lines = LogLines(writes.append, clock, mark=f" worker={os.getpid()}", delay=0.02)
        event = {
            "log_format": "login failed: ip={ip}",
            "ip": "192.0.2.7",
            "log_level": LogLevel.warn,
            "log_namespace": "twistedmail.auth",
            "log_time": 1796623735.5,
        }
        lines(dict(event))
        lines(dict(event, log_system="x"))
        self.assertEqual(writes, [])
        clock.advance(0.02)
        self.assertEqual(len(writes), 1)  # one write for both
        fd_writer(write)(writes[0])
        expected = io.StringIO()
        textFileLogObserver(expected)(
            dict(event, log_system=f"twistedmail.auth#warn worker={os.getpid()}")
        )
        textFileLogObserver(expected)(dict(event, log_system=f"x worker={os.getpid()}"))
        self.assertEqual(os.read(read, 65536).decode(), expected.getvalue())
        self.assertIn(
            f"[twistedmail.auth#warn worker={os.getpid()}] login failed: ip=192.0.2.7\n",
            expected.getvalue(),
        )

    def test_the_sink_is_twistds_text_observer_only(self) -> None:
        """Behind the DNS filter, twistd's text observer gives its file; a JSON observer or
        a second observer gives none (the events are replayed then)."""
        import io
        from typing import cast

        from twisted.logger import FileLogObserver, ILogObserver, LogPublisher, textFileLogObserver

        from twistedmail.dns import quiet_dns_client
        from twistedmail.loglines import log_sink

        out = io.StringIO()
        publisher = LogPublisher(textFileLogObserver(out))
        quiet_dns_client(publisher)
        sink = log_sink(publisher)
        assert sink is not None
        sink.write(b"a line\n")
        self.assertEqual(out.getvalue(), "a line\n")
        self.assertIsNone(log_sink(LogPublisher(FileLogObserver(out, lambda e: "{}\n"))))
        other = cast(ILogObserver, lambda e: None)
        self.assertIsNone(log_sink(LogPublisher(textFileLogObserver(out), other)))

    def test_the_parents_lines_are_written_at_the_next_turn_in_twistds_format(self) -> None:
        """batch_log puts a LogLines in place of twistd's text observer: the same lines,
        written at the next reactor turn, at once when the reactor is not running."""
        import io

        from twisted.logger import Logger, LogPublisher, textFileLogObserver

        from twistedmail import wire
        from twistedmail.loglines import LogLines, batch_log, log_sink

        out, expected = io.StringIO(), io.StringIO()
        publisher = LogPublisher(textFileLogObserver(out))
        clock = Clock()
        clock.running = True  # type: ignore[attr-defined]
        clock.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
        lines = batch_log(publisher, clock)
        self.assertIsInstance(lines, LogLines)
        assert lines is not None
        self.addCleanup(wire.BEFORE_WRITE.remove, lines.write_pending)
        self.assertIn(lines.write_pending, wire.BEFORE_WRITE)  # before a reply sent at once
        self.assertIsNotNone(log_sink(publisher))  # the workers still find the file
        self.assertIsNone(batch_log(publisher, clock))  # once
        reference = textFileLogObserver(expected)
        for observer in (publisher, reference):
            for when, text in ((1796623735.5, "one {n}"), (1796623735.9, "two"), (1796623736, "3")):
                observer(
                    {
                        "log_format": text,
                        "n": 1,
                        "log_time": when,
                        "log_level": LogLevel.info,
                        "log_namespace": "twistedmail.smtp",
                    }
                )
        self.assertEqual(out.getvalue(), "")
        clock.advance(0)
        self.assertEqual(out.getvalue(), expected.getvalue())
        # Before a reply sent at once, the lines waiting are written (and only those).
        publisher({"log_format": "four", "log_time": 1796623736, "log_level": LogLevel.info})
        lines.write_pending()
        self.assertTrue(out.getvalue().endswith("] four\n"), out.getvalue())
        written = out.getvalue()
        lines.write_pending()
        clock.advance(0)
        self.assertEqual(out.getvalue(), written)
        clock.running = False  # type: ignore[attr-defined]
        Logger(observer=publisher).info("after the reactor stopped")
        self.assertTrue(out.getvalue().endswith("] after the reactor stopped\n"))

    def test_a_failed_write_pending_leaves_the_lines_to_the_flush(self) -> None:
        """write_pending (before a reply sent at once) does not raise when the file refuses:
        the lines stay for the scheduled flush, which writes them (or fails as before)."""
        from twistedmail.loglines import LogLines

        clock = Clock()
        clock.running = True  # type: ignore[attr-defined]
        clock.callFromThread = lambda f, *a: f(*a)  # type: ignore[attr-defined]
        writes: list[bytes] = []
        refuse = [True]

        def write(data: bytes) -> None:
            if refuse.pop() if refuse else False:
                raise OSError(28, "No space left on device")
            writes.append(data)

        lines = LogLines(write, clock)
        lines(
            {
                "log_format": "one",
                "log_time": 1796623736,
                "log_namespace": "t",
                "log_level": LogLevel.info,
            }
        )
        lines.write_pending()
        self.assertEqual(writes, [])
        clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].endswith(b"] one\n"), writes)


class _AskedShare(LocalShare):
    """A worker's view of the parent's anvil: every answer waits until L{answer}."""

    remote = True  # type: ignore[assignment]

    def __init__(self, anvil: Anvil, owner: object, parent: ConnectionLimit | None = None) -> None:
        super().__init__(anvil, owner)
        self.parent = parent  # the parent's listener, which counts the connection rate
        self.waiting: list[tuple[defer.Deferred[Admission], Admission]] = []

    def connect(  # type: ignore[override]
        self, service: str, key: str, max_connections: int, max_per_ip: int, ip: str = ""
    ) -> defer.Deferred[Admission]:
        d: defer.Deferred[Admission] = defer.Deferred()
        if self.parent is not None and self.parent.over_rate(key, ip or key):  # (as _admit)
            result: Admission = (False, RATE_REFUSED, RATE_REFUSED)
        else:
            result = super().connect(service, key, max_connections, max_per_ip)
        self.waiting.append((d, result))
        return d

    def answer(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, result in waiting:
            d.callback(result)


def _limited(share: Any, max_per_ip: int = 2) -> ConnectionLimit:
    limit = ConnectionLimit(
        Factory.forProtocol(_Greeter),
        max_connections=10,
        max_per_ip=max_per_ip,
        refusal=refusal_for("smtp", "mail.example.test"),
        service="smtp",
    )
    limit.shared = share
    return limit


class _Greeter(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"220 hi\r\n")  # type: ignore[union-attr]


def _open(limit: ConnectionLimit) -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", IP, 1)
    proto = limit.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    proto.makeConnection(transport)
    return proto, transport


class SharedLimitsTests(unittest.TestCase):
    """The connection limits of every process counted by the parent (Postfix's anvil)."""

    def test_the_parent_and_a_worker_share_one_per_ip_count(self) -> None:
        """One connection in the parent and one in a worker fill max_per_ip = 2: the next, in
        either, gets the one-process refusal; closing one frees its slot."""
        anvil = Anvil()
        worker = _AskedShare(anvil, "worker")
        parent_limit, worker_limit = _limited(LocalShare(anvil)), _limited(worker)
        in_parent, tr = _open(parent_limit)
        self.assertEqual(tr.value(), b"220 hi\r\n")
        in_worker, wtr = _open(worker_limit)
        self.assertEqual(wtr.value(), b"")  # not greeted before the parent's answer
        worker.answer()
        self.assertEqual(wtr.value(), b"220 hi\r\n")
        self.assertEqual(_open(parent_limit)[1].value(), REFUSAL)
        _, refused = _open(worker_limit)
        worker.answer()
        self.assertEqual(refused.value(), REFUSAL)
        self.assertTrue(refused.disconnecting)
        in_parent.connectionLost(Failure(ConnectionError("bye")))
        _, again = _open(worker_limit)
        worker.answer()
        self.assertEqual(again.value(), b"220 hi\r\n")
        self.assertEqual(dict(anvil.connections), {("smtp", IP): 2})

    def test_the_connection_rate_is_counted_once_for_every_process(self) -> None:
        """smtp_connections_per_ip_hour = 2 with a worker: the parent counts the attempts
        of every process (a worker asks with its admission) and the third is refused with
        the rate's refusal whichever process takes it; a worker counts none itself (its
        count was replayed from the others' events, late when they came fast)."""
        clock, anvil = Clock(), Anvil()
        parent_limit = _limited(LocalShare(anvil), max_per_ip=10)
        worker = _AskedShare(anvil, "worker", parent_limit)
        worker_limit = _limited(worker, max_per_ip=10)
        for limit in (parent_limit, worker_limit):
            limit.rate, limit.rate_refusal = HourlyRate(2, clock), b"421 4.7.0 rate\r\n"
        self.assertEqual(_open(parent_limit)[1].value(), b"220 hi\r\n")
        _, in_worker = _open(worker_limit)
        worker.answer()
        self.assertEqual(in_worker.value(), b"220 hi\r\n")
        _, over = _open(worker_limit)
        worker.answer()
        self.assertEqual(over.value(), b"421 4.7.0 rate\r\n")
        self.assertTrue(over.disconnecting)
        self.assertEqual(_open(parent_limit)[1].value(), b"421 4.7.0 rate\r\n")
        assert worker_limit.rate is not None and parent_limit.rate is not None
        self.assertEqual((worker_limit.rate.count(IP), parent_limit.rate.count(IP)), (0, 3))
        self.assertEqual(dict(anvil.connections), {("smtp", IP): 2})

    def test_a_dead_workers_counts_are_dropped(self) -> None:
        """Anvil.drop forgets every connection and session of a worker that died."""
        anvil = Anvil()
        for _ in range(2):
            self.assertTrue(anvil.connect("w", "smtp", IP, 10, 2)[0])
        self.assertTrue(anvil.session("w", USER, IP, 1)[0])
        self.assertEqual(anvil.session("parent", USER, IP, 1), (False, 1, 1))
        self.assertEqual(anvil.connect("parent", "smtp", IP, 10, 2), (False, 2, 2))
        anvil.drop("w")
        self.assertEqual(anvil.connect("parent", "smtp", IP, 10, 2), (True, 0, 0))
        self.assertTrue(anvil.session("parent", USER, IP, 1)[0])
        anvil.disconnect("w", "smtp", IP)  # late news of a dead worker: ignored
        self.assertEqual(dict(anvil.connections), {("smtp", IP): 1})

    def test_owned_counts_per_process(self) -> None:
        """Anvil.owned gives one process's open connections and IMAP sessions (what
        `twistedmail status` shows per worker); an unknown process has none."""
        anvil = Anvil()
        for service in ("smtp", "imaps", "imaps"):
            anvil.connect("w", service, IP, 10, 10)
        anvil.session("w", USER, IP, 5)
        anvil.connect("parent", "pop3", IP, 10, 10)
        anvil.disconnect("w", "smtp", IP)
        self.assertEqual((anvil.owned("w"), anvil.owned("parent")), ((2, 1), (1, 0)))
        self.assertEqual(anvil.owned("gone"), (0, 0))

    def test_a_client_gone_before_the_answer_gives_its_slot_back(self) -> None:
        """A connection closed while the worker waits for the parent is never greeted, and
        its slot, once granted, is given back at once."""
        anvil = Anvil()
        worker = _AskedShare(anvil, "worker")
        proto, tr = _open(_limited(worker))
        proto.connectionLost(Failure(ConnectionError("bye")))
        worker.answer()
        self.assertEqual(tr.value(), b"")
        self.assertEqual(dict(anvil.connections), {})
