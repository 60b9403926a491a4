"""The durable outbound queue and its runner (RFC 5321 §4.5.4.1 retry strategy, §6.1
reliable delivery; RFC 3464 notifications).  Postfix's queue manager is the model.

Spool (L{Spool}), in C{DATA_DIR/queue/}: per message C{<id>.msg} (the bytes as received,
CRLF lines, trace header on top) and C{<id>.json} (the L{QueueEntry}: sender, recipients
with their state, attempts, next try, last error; a C{version} field; never pickle).  Each
file is written to C{queue/tmp/}, fsynced, renamed into place and the directory fsynced; the
envelope is renamed last, so it is the commit point: L{Spool.add} returns only when both are
on disk, before the SMTP session answers 250.  The envelope is rewritten the same way after
every delivery attempt, so a recipient a remote server accepted (250) is not sent again
after a restart or a C{kill -9}.

Recipient states: C{pending} (to try), C{delivered}, C{failed} (permanent failure, the
bounce not yet sent), C{bounced} (reported, or not reportable: the sender was C{<>}).

Runner (L{QueueRunner}): picks due messages on an injected clock, groups their pending
recipients by destination (one connection per domain carries all its recipients; one for all
of them through the smarthost or a route they share), limits
concurrent connections overall and per destination, retries with a backoff
(L{RetrySchedule}: 5 min doubling to 1 h, like Postfix's minimal/maximal_backoff_time),
sends one delay warning after 4 h, and gives up after 5 days (status 4.4.7).  File work runs
in threads (C{run_in_thread}); the reactor never waits on the disk.

Shutdown (L{QueueRunner.shutdown}): nothing new starts; attempts under way get a grace period
to finish and record their results; then their sessions are cut (their recipients stay
pending, so a message whose final dot was unanswered may be sent again after the restart:
RFC 5321 §6.1 accepts duplicates, never losses).  Results are saved per destination as they
come, so a recipient a remote server answered 250 is on disk before the process exits.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twistedmail import metrics
from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.auth import RunInThread
from twistedmail.delivery import LocalDelivery
from twistedmail.maildir import fsync_dir, write_file
from twistedmail.reply import Reply
from twistedmail.smtp.dsn import DELAYED, FAILED, build_dsn
from twistedmail.smtp.outbound import RecipientResult

_T = TypeVar("_T")

log = Logger(namespace="twistedmail.queue")

QUEUE_VERSION = 1
PENDING, DELIVERED, FAILED_STATE, BOUNCED = "pending", "delivered", "failed", "bounced"
_STATES = {PENDING, DELIVERED, FAILED_STATE, BOUNCED}
_ID = re.compile(r"[0-9A-F]{10,32}")


class QueueError(Exception):
    """A queue entry that cannot be read, or an ID that does not exist; safe to print."""


@attrs.frozen
class QueuedRecipient:
    """One recipient of a queued message.

    @ivar state: C{pending}, C{delivered}, C{failed} or C{bounced} (see module docstring).
    @ivar status: the last RFC 3463 status (C{""} before the first attempt).
    @ivar diagnostic: the last reply or error text, one line.
    @ivar remote_mta: the host that gave it, if any.
    """

    address: str
    state: str = PENDING
    status: str = ""
    diagnostic: str = ""
    remote_mta: str | None = None

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def result(self) -> RecipientResult:
        code = int(self.diagnostic[:3]) if self.diagnostic[:3].isdigit() else 0
        return RecipientResult(self.address, code, self.status, self.diagnostic, self.remote_mta)


@attrs.frozen
class QueueEntry:
    """One queued message's envelope (the C{<id>.json} file).

    @ivar sender: the reverse-path, C{None} for C{<>} (a bounce: never bounced itself).
    @ivar created: when it was queued, seconds since the epoch.
    @ivar next_try: when the runner tries it next, seconds since the epoch.
    @ivar delay_notified: whether the delay warning was sent (once, RFC 3464 "delayed").
    @ivar size: the message size in octets.
    """

    id: str
    sender: str | None
    recipients: tuple[QueuedRecipient, ...]
    created: float
    next_try: float
    size: int
    attempts: int = 0
    last_error: str = ""
    delay_notified: bool = False

    def with_state(self, state: str) -> list[QueuedRecipient]:
        return [r for r in self.recipients if r.state == state]

    @property
    def done(self) -> bool:
        return not any(r.state in (PENDING, FAILED_STATE) for r in self.recipients)

    def to_json(self) -> bytes:
        data = {"version": QUEUE_VERSION, **attrs.asdict(self)}
        return json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> QueueEntry:
        """@raise QueueError: not JSON, another version, or missing/invalid fields."""
        try:
            raw = json.loads(data)
            if raw.pop("version") != QUEUE_VERSION:
                raise QueueError("unsupported queue entry version")
            recipients = tuple(QueuedRecipient(**r) for r in raw.pop("recipients"))
            if any(r.state not in _STATES for r in recipients):
                raise QueueError("invalid recipient state")
            return cls(recipients=recipients, **raw)
        except QueueError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise QueueError(f"invalid queue entry: {e}") from None


@attrs.frozen
class RetrySchedule:
    """When to retry and when to give up (seconds).  Defaults as Postfix: first retry after
    5 min, doubling to at most 1 h; a delay warning after 4 h; bounce after 5 days
    (RFC 5321 §4.5.4.1: at least 30 min between tries SHOULD, give-up at least 4-5 days)."""

    first: float = 300
    maximum: float = 3600
    lifetime: float = 5 * 86400
    delay_warning: float = 4 * 3600

    def delay(self, attempts: int) -> float:
        """Seconds to wait after attempt number C{attempts} (1-based)."""
        return float(min(self.first * 2 ** max(attempts - 1, 0), self.maximum))


def new_id(now: float) -> str:
    """A queue ID: the arrival time then randomness, upper-case hex (sorts by age)."""
    return f"{int(now):010X}{secrets.token_hex(5).upper()}"


def _write_atomically(directory: Path, name: str, data: bytes) -> None:
    tmp = directory / "tmp" / f"{name}.{secrets.token_hex(4)}"
    try:
        write_file(tmp, data)
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)


class Spool:
    """The queue directory.  Blocking file I/O: call it through C{run_in_thread} from the
    reactor; the CLI calls it directly."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure(self) -> None:
        """Create C{queue/} and C{queue/tmp/}, owner-only (0700)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / "tmp").mkdir(mode=0o700, exist_ok=True)

    def _paths(self, queue_id: str) -> tuple[Path, Path]:
        if not _ID.fullmatch(queue_id):
            raise QueueError(f"invalid queue ID {queue_id!r}")
        return self.directory / f"{queue_id}.msg", self.directory / f"{queue_id}.json"

    def add(
        self, sender: str | None, recipients: Sequence[str], message: bytes, now: float
    ) -> QueueEntry:
        """Store a new message durably (message first, envelope last) and return its entry,
        due at once.  @raise OSError: the disk refused; nothing was queued."""
        self.ensure()
        entry = QueueEntry(
            id=new_id(now),
            sender=sender,
            recipients=tuple(QueuedRecipient(a) for a in dict.fromkeys(recipients)),
            created=now,
            next_try=now,
            size=len(message),
        )
        msg_path, _ = self._paths(entry.id)
        _write_atomically(self.directory, msg_path.name, message)
        try:
            _write_atomically(self.directory, f"{entry.id}.json", entry.to_json())
        except BaseException:
            msg_path.unlink(missing_ok=True)
            raise
        return entry

    def load(self, queue_id: str) -> QueueEntry | None:
        """The entry, or C{None} when it is gone.  @raise QueueError: unreadable."""
        _, json_path = self._paths(queue_id)
        try:
            data = json_path.read_bytes()
        except FileNotFoundError:
            return None
        return QueueEntry.from_json(data)

    def read_message(self, queue_id: str) -> bytes:
        """@raise FileNotFoundError: the message file is missing."""
        msg_path, _ = self._paths(queue_id)
        return msg_path.read_bytes()

    def save(self, entry: QueueEntry) -> bool:
        """Rewrite C{entry}'s envelope durably; C{False} (nothing written) when the entry
        was deleted meanwhile (C{twistedmail queue delete})."""
        _, json_path = self._paths(entry.id)
        if not json_path.exists():
            return False
        _write_atomically(self.directory, json_path.name, entry.to_json())
        return True

    def remove(self, queue_id: str) -> bool:
        """Delete an entry (envelope first, so a crash leaves no half entry behind).
        @return: whether it existed."""
        msg_path, json_path = self._paths(queue_id)
        existed = json_path.exists()
        json_path.unlink(missing_ok=True)
        msg_path.unlink(missing_ok=True)
        if existed:
            fsync_dir(self.directory)
        return existed

    def ids(self) -> list[str]:
        """Every committed entry's ID, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.stem for p in self.directory.glob("*.json") if _ID.fullmatch(p.stem) is not None
        )

    def entries(self) -> list[QueueEntry]:
        """Every readable entry, oldest first; unreadable ones are logged and skipped."""
        found = []
        for queue_id in self.ids():
            try:
                entry = self.load(queue_id)
            except QueueError as e:
                log.error("queue {id}: {error}; left in place", id=queue_id, error=str(e))
                continue
            if entry is not None:
                found.append(entry)
        return found

    def remove_orphans(self) -> list[str]:
        """Delete message files without an envelope (a crash between the two writes of
        L{add}: never acknowledged) and stale temporary files."""
        removed = []
        committed = set(self.ids())
        for path in self.directory.glob("*.msg"):
            if path.stem not in committed:
                path.unlink(missing_ok=True)
                removed.append(path.stem)
        tmp = self.directory / "tmp"
        if tmp.is_dir():
            for path in tmp.iterdir():
                path.unlink(missing_ok=True)
        return removed


#: Seconds the attempts under way get to finish at shutdown, and again after their sessions
#: are cut (to save the results).
SHUTDOWN_GRACE = 10.0


class Transport(Protocol):
    """What the runner needs from L{twistedmail.smtp.outbound.Outbound}."""

    def destination(self, domain: str) -> str: ...

    def abort(self) -> None: ...

    async def send(
        self, sender: str | None, domain: str, recipients: Sequence[str], message: bytes
    ) -> list[RecipientResult]: ...


class QueueRunner:
    """Delivers what is in the spool, on time, within the connection limits.

    @param spool: the queue directory.
    @param outbound: tries one domain's recipients (L{twistedmail.smtp.outbound.Outbound}).
    @param store: decides whether a bounce goes to a local user or is queued.
    @param local: delivers bounces to local users.
    @param clock: the reactor's time (tests: C{Clock}).
    @param run_in_thread: runs the spool's file I/O off the reactor thread.
    @param hostname: Reporting-MTA of our DSNs.
    @param max_connections: concurrent outbound SMTP sessions in all.
    @param max_per_destination: concurrent sessions to one domain (or route / smarthost).
    @param signer: called in a thread on each message queued with C{sign} (L{enqueue})
        before it is stored, returns the bytes to store and send
        (L{twistedmail.dkim.KeyStore.sign}); None queues messages as given.
    """

    def __init__(
        self,
        *,
        spool: Spool,
        outbound: Transport,
        store: AccountStore,
        local: LocalDelivery,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        hostname: str,
        schedule: RetrySchedule | None = None,
        max_connections: int = 20,
        max_per_destination: int = 5,
        signer: Callable[[bytes], bytes] | None = None,
        metrics: metrics.Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.spool = spool
        self.signer = signer
        self.outbound = outbound
        self.store = store
        self.local = local
        self.clock = clock
        self.run = run_in_thread
        self.hostname = hostname
        self.schedule = schedule or RetrySchedule()
        self.max_per_destination = max_per_destination
        self.connections = defer.DeferredSemaphore(max_connections)
        self.destinations: dict[str, defer.DeferredSemaphore] = {}
        self.entries: dict[str, QueueEntry] = {}
        self.in_flight: dict[str, defer.Deferred[None]] = {}
        self._timer: IDelayedCall | None = None
        self._running = False
        self._idle_waiters: list[defer.Deferred[None]] = []

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the spool (orphans removed) and schedule what is due."""
        await self.run(self.spool.ensure)
        removed = await self.run(self.spool.remove_orphans)
        for queue_id in removed:
            log.warn("queue {id}: message without envelope removed", id=queue_id)
        entries: list[QueueEntry] = await self.run(self.spool.entries)
        self.entries = {e.id: e for e in entries}
        self._running = True
        log.info("queue: {count} message(s) in the spool", count=len(self.entries))
        self._wake()

    def stop(self) -> None:
        """Stop scheduling; attempts under way go on (see L{shutdown})."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    async def shutdown(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop for a server shutdown, in bounded time (at most about 2 x C{grace} seconds):
        no new attempt or session starts; the attempts under way get C{grace} seconds to
        finish and save their results; then their sessions are cut (their recipients get
        a 451 result, saved as pending) and they get C{grace} seconds more to save it."""
        self.stop()
        if self.in_flight:
            await self._idle(grace)
        if self.in_flight:
            log.info(
                "queue: cutting {count} delivery attempt(s) still under way",
                count=len(self.in_flight),
            )
        self.outbound.abort()  # also ends sessions that are only finishing their QUIT
        if self.in_flight:
            await self._idle(grace)

    def _idle(self, timeout: float) -> defer.Deferred[None]:
        """Fires when no attempt is under way, or after C{timeout} seconds."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        timer = self.clock.callLater(timeout, self._wake_waiters)
        waiter.addBoth(_cancel_timer, timer)
        return waiter

    def _wake_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    # -- the API for the SMTP policies and the control socket ---------------------------

    async def enqueue(
        self,
        reverse_path: Mailbox | None,
        recipients: Sequence[Mailbox],
        message: bytes,
        *,
        sign: bool = False,
    ) -> QueueEntry:
        """Queue C{message} for C{recipients} durably; return when it is on disk (so the
        session may answer 250, RFC 5321 §6.1).  @raise OSError: nothing was queued.

        @param sign: DKIM-sign it (with the L{signer}): the caller says so for mail an
            authenticated user submitted and mail we generate (DSNs, vacation replies), never
            for mail we only forward (an alias, a Sieve redirect), whose From: nobody checked.
        """
        sender = str(reverse_path) if reverse_path is not None else None
        if sign and self.signer is not None:
            # RFC 6376 §5: sign before queueing, so the stored copy is the one sent.
            message = await self.run(self.signer, message)
        entry: QueueEntry = await self.run(
            self.spool.add, sender, [str(r) for r in recipients], message, self.clock.seconds()
        )
        log.info(
            "queue {id}: queued from=<{sender}> to={recipients} size={size}",
            id=entry.id,
            sender=sender or "",
            recipients=",".join(f"<{r.address}>" for r in entry.recipients),
            size=entry.size,
        )
        self.entries[entry.id] = entry
        metrics.of(self).message_queued()
        self._wake()
        return entry

    async def adopt(self, queue_id: str) -> None:
        """Schedule entry C{queue_id}, which another process (a worker, C{[server] workers})
        put in the spool with L{enqueue}."""
        entry: QueueEntry | None = await self.run(self.spool.load, queue_id)
        if entry is not None and queue_id not in self.entries:
            self.entries[queue_id] = entry
            self._wake()

    async def flush(self) -> int:
        """Reread the spool and make every entry due now (C{twistedmail queue flush}).
        @return: the number of entries in the queue."""
        entries: list[QueueEntry] = await self.run(self.spool.entries)
        now = self.clock.seconds()
        self.entries = {
            e.id: self.entries.get(e.id, e)
            if e.id in self.in_flight
            else attrs.evolve(e, next_try=now)
            for e in entries
        }
        self._wake()
        return len(self.entries)

    # -- scheduling ---------------------------------------------------------------------

    def _wake(self) -> None:
        if not self._running:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        waiting = [e.next_try for i, e in self.entries.items() if i not in self.in_flight]
        if waiting:
            delay = max(0.0, min(waiting) - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._run_due)

    def _run_due(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        for queue_id, entry in sorted(self.entries.items()):
            if queue_id in self.in_flight or entry.next_try > now:
                continue
            d = defer.Deferred.fromCoroutine(self._attempt(queue_id))
            self.in_flight[queue_id] = d
            d.addErrback(self._attempt_failed, queue_id)
            d.addBoth(self._attempt_done, queue_id)
        self._wake()

    def _attempt_failed(self, failure: Any, queue_id: str) -> None:
        log.failure("queue {id}: attempt failed unexpectedly", failure, id=queue_id)
        entry = self.entries.get(queue_id)
        if entry is not None:  # in memory only: retry later rather than spin
            self.entries[queue_id] = attrs.evolve(
                entry, next_try=self.clock.seconds() + self.schedule.first
            )

    def _attempt_done(self, result: object, queue_id: str) -> None:
        self.in_flight.pop(queue_id, None)
        if not self.in_flight:
            self._wake_waiters()
        self._wake()

    # -- one attempt ---------------------------------------------------------------------

    async def _attempt(self, queue_id: str) -> None:
        entry: QueueEntry | None = await self.run(self.spool.load, queue_id)
        if entry is None:  # deleted with the CLI
            self.entries.pop(queue_id, None)
            return
        try:
            message: bytes = await self.run(self.spool.read_message, queue_id)
        except FileNotFoundError:
            log.error("queue {id}: message file missing; entry dropped", id=queue_id)
            self.entries.pop(queue_id, None)
            return
        state = _AttemptState(entry)
        # One session per destination carries all its recipients: per domain for MX
        # delivery, all domains at once through the smarthost or a shared route.
        groups: dict[str, tuple[str, list[str]]] = {}
        for r in entry.with_state(PENDING):
            destination = self.outbound.destination(r.domain)
            groups.setdefault(destination, (r.domain, []))[1].append(r.address)
        await defer.DeferredList(
            [
                defer.Deferred.fromCoroutine(
                    self._deliver_domain(state, destination, domain, recipients, message)
                )
                for destination, (domain, recipients) in groups.items()
            ],
            consumeErrors=True,
        )
        await self._finish(state, message)

    async def _deliver_domain(
        self,
        state: _AttemptState,
        destination: str,
        domain: str,
        recipients: list[str],
        message: bytes,
    ) -> None:
        limit = self.destinations.setdefault(
            destination, defer.DeferredSemaphore(self.max_per_destination)
        )
        await limit.acquire()
        try:
            await self.connections.acquire()
            try:
                if not self._running:  # shutting down: leave them pending, untried
                    return
                results = await self.outbound.send(state.entry.sender, domain, recipients, message)
            finally:
                self.connections.release()
        finally:
            limit.release()
        for result in results:
            log.info(
                "queue {id}: to=<{to}> relay={relay} status={status} ({diagnostic})",
                id=state.entry.id,
                to=result.address,
                relay=result.remote_mta or "none",
                status="sent"
                if result.delivered
                else ("bounced" if result.permanent else "deferred"),
                diagnostic=result.diagnostic,
            )
            metrics.of(self).outbound_result(result, state.entry.created)
        # Record who has been delivered now, so a crash cannot send to them twice.
        async with state.lock:
            state.entry = _apply(state.entry, results)
            await self._save(state.entry)

    async def _finish(self, state: _AttemptState, message: bytes) -> None:
        entry = state.entry
        now = self.clock.seconds()
        pending = entry.with_state(PENDING)
        if pending and now - entry.created >= self.schedule.lifetime:
            # RFC 5321 §4.5.4.1: give up after the lifetime; RFC 3463 4.4.7 expired.
            expired = {
                r.address: attrs.evolve(
                    r,
                    state=FAILED_STATE,
                    status="4.4.7",
                    diagnostic=f"Message expired in the queue; last error: {r.diagnostic}",
                )
                for r in pending
            }
            entry = attrs.evolve(
                entry, recipients=tuple(expired.get(r.address, r) for r in entry.recipients)
            )
            pending = []
        failed = entry.with_state(FAILED_STATE)
        if failed:
            await self._notify(entry, failed, FAILED, message, now)
            metrics.of(self).bounced(len(failed))
            bounced = {r.address for r in failed}
            entry = attrs.evolve(
                entry,
                recipients=tuple(
                    attrs.evolve(r, state=BOUNCED) if r.address in bounced else r
                    for r in entry.recipients
                ),
            )
        if (
            pending
            and not entry.delay_notified
            and now - entry.created >= (self.schedule.delay_warning)
        ):
            await self._notify(entry, pending, DELAYED, message, now)
            entry = attrs.evolve(entry, delay_notified=True)
        if entry.done:
            await self.run(self.spool.remove, entry.id)
            self.entries.pop(entry.id, None)
            log.info("queue {id}: removed (all recipients done)", id=entry.id)
            return
        attempts = entry.attempts + 1
        last = next((r.diagnostic for r in pending if r.diagnostic), entry.last_error)
        entry = attrs.evolve(
            entry,
            attempts=attempts,
            next_try=now + self.schedule.delay(attempts),
            last_error=last,
        )
        if await self._save(entry):
            self.entries[entry.id] = entry
        else:
            self.entries.pop(entry.id, None)

    async def _save(self, entry: QueueEntry) -> bool:
        saved: bool = await self.run(self.spool.save, entry)
        return saved

    async def _notify(
        self,
        entry: QueueEntry,
        recipients: list[QueuedRecipient],
        action: str,
        message: bytes,
        now: float,
    ) -> None:
        """Send a DSN about C{recipients} to the sender; never for a null sender (RFC 5321
        §6.1: a bounce is not bounced)."""
        if entry.sender is None:
            log.info(
                "queue {id}: not reporting {action} for a message from <>",
                id=entry.id,
                action=action,
            )
            return
        dsn = build_dsn(
            hostname=self.hostname,
            recipient=entry.sender,
            results=[r.result() for r in recipients],
            action=action,
            original=message,
            arrival=entry.created,
            now=now,
            will_retry_until=entry.created + self.schedule.lifetime,
        )
        await self.submit_dsn(entry.sender, dsn)
        log.info(
            "queue {id}: {action} notice sent to <{sender}>",
            id=entry.id,
            action=action,
            sender=entry.sender,
        )

    async def bounce(
        self,
        reverse_path: Mailbox | None,
        failures: Sequence[tuple[Mailbox, Reply]],
        message: bytes,
    ) -> None:
        """A bounce (RFC 3464) for recipients that failed at final delivery here (a user over
        quota), sent at once; none for the null reverse-path (RFC 5321 §6.1)."""
        if reverse_path is None or not failures:
            return
        now = self.clock.seconds()
        results = [
            RecipientResult(str(rcpt), reply.code, reply.status, reply.line().decode("ascii"))
            for rcpt, reply in failures
        ]
        dsn = build_dsn(
            hostname=self.hostname,
            recipient=str(reverse_path),
            results=results,
            action=FAILED,
            original=message,
            arrival=now,
            now=now,
        )
        await self.submit_dsn(str(reverse_path), dsn)
        log.info(
            "bounce sent to <{sender}> for {recipients}",
            sender=str(reverse_path),
            recipients=",".join(f"<{r.address}>" for r in results),
        )

    async def submit_dsn(self, recipient: str, dsn: bytes) -> None:
        """Deliver a DSN from C{<>}: to a local user's INBOX, or queued for a remote one."""
        try:
            mailbox = Mailbox.parse(recipient)
        except ValueError:
            log.warn("queue: cannot report to invalid sender {sender}", sender=recipient)
            return
        if self.store.is_local_domain(mailbox.domain):
            users, _ = self.local.local_users([mailbox])
            remote = await self.local.deliver(None, [mailbox], dsn) if users else []
            if not users:
                log.warn("queue: bounce for <{sender}> dropped: no such user", sender=recipient)
        else:
            remote = [mailbox]
        if remote:
            await self.enqueue(None, remote, dsn, sign=True)  # ours: signed


@attrs.define
class _AttemptState:
    entry: QueueEntry
    lock: defer.DeferredLock = attrs.field(factory=defer.DeferredLock)


def _cancel_timer(result: _T, timer: IDelayedCall) -> _T:
    """Stop C{timer} if it has not fired yet; pass C{result} on (a Deferred callback)."""
    if timer.active():
        timer.cancel()
    return result


def _apply(entry: QueueEntry, results: Sequence[RecipientResult]) -> QueueEntry:
    by_address = {r.address: r for r in results}
    recipients = []
    for r in entry.recipients:
        result = by_address.get(r.address)
        if result is None or r.state != PENDING:
            recipients.append(r)
            continue
        state = DELIVERED if result.delivered else FAILED_STATE if result.permanent else PENDING
        recipients.append(
            QueuedRecipient(r.address, state, result.status, result.diagnostic, result.remote_mta)
        )
    return attrs.evolve(entry, recipients=tuple(recipients))
