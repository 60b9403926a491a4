"""Both cores: C{[server] workers} processes serving the same listening sockets (issue 10).

The parent, the twistd process, binds every listening socket (before dropping privileges,
as it always did), then has C{workers - 1} worker processes started (L{Supervisor}); each
builds the same L{twistedmail.service.MailServer} from the same config and serves the
parent's sockets, which it inherits as descriptors and adopts with C{reactor.adoptStreamPort}
(Twisted's documented way; implicit TLS listeners wrap the factory in
C{TLSMemoryBIOFactory} with the same context, by the same code).  The parent serves too.

How connections are spread: every process has the shared sockets in its epoll, so each new
connection wakes them all, and the first to call C{accept} gets it.  Twisted's C{Port}
accepts up to C{numberAccepts} (100 and growing) connections a wakeup, so the process that
woke first took a whole burst: under imaptest (10 TLS connections opened at once) one
process held 8 to 10 of them for the whole run while the other idled.  So each process
accepts one connection a wakeup and keeps its share (L{twistedmail.wire.balance_accepts},
the idea of nginx's and Postfix's accept mutex, by counts): every process writes its count
of open connections into a table in shared memory (L{LoadTable}, a memfd the parent makes
and passes on through the zygote: reading it costs no message), and a process holding more
than C{1 + } the fewest of another serving process leaves new connections to the others:
it stops reading the sockets and looks at the table again every
L{twistedmail.wire.ACCEPT_TICK} seconds; back within its share, or after
L{twistedmail.wire.ACCEPT_PAUSE} seconds in all, it takes a connection still waiting itself
(so a hung or busy worker delays one by that at most, and two processes never both wait
long).  A
worker that exits is marked out of the table by the parent at once (after a C{kill -9}, the
zygote's report), so the others take every new connection; a worker started again counts
from 0 and gets the new connections until it holds its share.  (C{SO_REUSEPORT} with a
socket per process spreads by a hash of the client's address and port, not by load, and
loses the connections queued on a dying worker's socket: not used.)

Privilege-safe start and restart (Dovecot's master, a zygote): a worker is not a new
Python started by the parent, which under C{twistd -u nobody} could not even read the
interpreter (a venv's python under a 0700 C{/root}) or a root-only config.  In
C{privilegedStartService} (after twistd daemonized and the listeners bound, before it drops
root) the parent starts one launcher, C{python -m twistedmail.workers --zygote}, holding the
listening sockets; it imports every module the parent has imported (and the codecs,
L{twistedmail.tap.load_before_the_drop}), reads the config and the TLS key (which may be
root's alone), drops to twistd's C{-u}/C{-g}
user (as twistd's C{shedPrivileges}), and waits.  For each worker, first or again after a
crash, the parent sends it a "spawn" request carrying three socket pairs' ends
(C{SCM_RIGHTS}); the zygote forks, and the child gives the reactor the import installed its
own epoll and waker and serves.  The zygote reports each worker's pid and exit (it is their
parent) on its stdout.  Without C{-u} nothing drops.

What happens once belongs to the parent: the outbound queue runner (a worker that queues a
message tells the parent, which schedules it, L{QueueRunner.adopt}), the control socket,
ACME, the metrics listener, the tmp/ sweep and saving the failed-login throttle.  What must
hold in every process goes through the parent, one JSON object a line:

  - the failed-login throttle: every outcome (failure, success, the admin's unblock) is
    replayed in every other process (L{twistedmail.throttle.LoginThrottle.share}), so a block
    made in one worker holds in all; a worker started later gets the parent's state first;
  - the hourly rates of messages (submission per user, port 25 per IP;
    L{twistedmail.rate.HourlyRate}): likewise, so a limit holds across processes (overrun
    only by events accepted in the same few milliseconds by two processes); the connection
    rate per IP on port 25 is counted by the parent alone, asked with each connection's
    admission (below), so it is exact;
  - the CLI's requests: C{twistedmail connections} and C{status} add up every process's open
    connections, a password change flushes the login cache of every process, C{/metrics}
    adds every worker's counters and histograms (gathered at each scrape);
  - SIGHUP (TLS reload) is passed on to every worker.

Everything else they share is on disk and locked across processes: the account store
(SQLite WAL), each Maildir folder (an C{flock} plus Dovecot's dotlock, and the index under
it), the queue spool (one file pair per message, renamed into place).  IDLE learns of
another process's delivery by inotify on the folder (L{twistedmail.imap.watch}).
For the whole server, counted by the parent (L{twistedmail.limits.Anvil}; a worker asks it
before it greets a client or logs a user in): the connection limits of C{[limits]}
(C{max_connections}, C{max_connections_per_ip}) and the per-user IMAP session limit
(C{imap_max_connections_per_user}).

Supervision: a worker that exits is started again (by the zygote) after a pause that
doubles from L{RESTART_FIRST} to L{RESTART_MAX} seconds (back to the first after L{STABLE}
seconds up); stopping the parent sends SIGTERM to each worker and waits (SIGKILL after
L{STOP_GRACE} seconds), then stops the zygote.  When the parent dies (even by SIGKILL) the
zygote and the workers stop too: the kernel sends each SIGTERM (C{PR_SET_PDEATHSIG}, set
after the drop, which clears it), and the end of the command channel stops them otherwise.
A zygote that dies takes its workers along; the parent starts it again (which works as
long as the interpreter stays readable to the dropped user; when it cannot, the parent logs
C{worker N not started: cannot start the workers' zygote: ...} and tries again, with the
same growing pause).

Descriptors of a worker: 0 and 3 one socket pair with the parent (its commands in, the
worker's messages out), 1 its log (below), 2 its stderr, then the listening sockets from
L{FIRST_LISTENER}.

Logging stays off the hot path: with twistd's text log in one file a worker writes finished
lines, many at a time, which the parent appends to its log file as they come
(L{twistedmail.loglines}); otherwise (C{--syslog}, C{[log] format = "json"}) the worker
sends each event as JSON and the parent replays it with C{worker=PID}
(L{Supervisor._log_event}).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import importlib
import json
import mmap
import os
import select
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol, stdio
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    ILogObserver,
    Logger,
    eventFromJSON,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from twistedmail.dns import quiet_dns_client
from twistedmail.limits import RATE_REFUSED, Admission, Anvil, LocalShare
from twistedmail.loglines import FLUSH_EVERY, LogLines, LogSink, fd_writer, log_sink
from twistedmail.service import MailServer
from twistedmail.wire import balance_accepts

log = Logger(namespace="twistedmail.workers")

RESTART_FIRST = 1.0
RESTART_MAX = 60.0
STABLE = 60.0
STOP_GRACE = 15.0
ASK_TIMEOUT = 10.0
FIRST_LISTENER = 4
MAX_LINE = 64 * 1024 * 1024  # a metrics snapshot of a busy worker stays far below

PR_SET_PDEATHSIG = 1
_NOT_PRELOADED = ("__main__", "twisted.internet.reactor", "_pytest", "pytest", "py.")


def _json_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


SLACK = 1
"""A process takes new connections while it holds at most this many more than the fewest of
another serving process (L{LoadTable.over_share})."""


class LoadTable:
    """The open connections of every process serving the shared listeners, one 32-bit count
    per slot (0 the parent, then the workers' slots), in shared memory (a memfd the parent
    makes; the zygote and every worker inherit it): each process writes its own slot, reads
    the others'.  -1: no process serving in that slot (not started yet, or exited)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, os.fstat(fd).st_size)
        self.counts = memoryview(self._map).cast("i")

    @classmethod
    def create(cls, slots: int) -> LoadTable:
        fd = os.memfd_create("twistedmail-connections")
        os.ftruncate(fd, slots * 4)
        table = cls(fd)
        for slot in range(slots):
            table.counts[slot] = -1
        return table

    def over_share(self, slot: int, mine: int) -> bool:
        """Whether C{mine} (the count of C{slot}) is more than L{SLACK} above the fewest of
        another serving process."""
        others = [n for i, n in enumerate(self.counts) if i != slot and n >= 0]
        return bool(others) and mine > min(others) + SLACK

    def balance(self, server: MailServer, slot: int, reactor: Any) -> None:
        """Have C{server}'s shared listening ports (this process, in C{slot}) take their
        share of new connections (L{twistedmail.wire.balance_accepts})."""
        share = _SlotShare(self, slot)
        share.changed()
        for port in server.shared_ports():
            balance_accepts(port, share, reactor)


class _SlotShare:
    """One process's open connections, in its slot of a L{LoadTable} (an
    L{twistedmail.wire.AcceptShare})."""

    def __init__(self, table: LoadTable, slot: int) -> None:
        self.table, self.slot = table, slot
        self.open = 0

    def changed(self) -> None:
        self.table.counts[self.slot] = self.open

    def over_share(self) -> bool:
        return self.table.over_share(self.slot, self.open)


# -- the parent's side ---------------------------------------------------------------------


class WorkerProcess:
    """One worker, as its parent sees it: forked by the zygote, reached over three socket
    pairs (its descriptors 0 and 3, 1 and 2; see the module docstring)."""

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid: int | None = None
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffers: dict[int, bytes] = {}
        self.log_sink: LogSink | None = None  # its fd 1 carries finished lines
        self._channels: dict[int, Any] = {}  # 3 (commands and messages), 1 (log), 2 (stderr)

    def connect(self, reactor: Any) -> list[socket.socket]:
        """Make the three socket pairs; return the worker's ends (for the zygote), in the
        order commands, log, stderr."""
        theirs = []
        for fd in (3, 1, 2):
            ours, other = socket.socketpair()
            self._channels[fd] = reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, _ChannelFactory(self, fd)
            )
            ours.close()  # adoptStreamConnection serves a duplicate
            theirs.append(other)
        return theirs

    def send(self, message: dict[str, Any]) -> None:
        channel = self._channels.get(3)
        if channel is not None and not self.ended.called:
            channel.write(_json_line(message))

    def signal(self, name: str) -> None:
        if self.pid is not None and not self.ended.called:
            with contextlib.suppress(OSError):  # already gone
                os.kill(self.pid, getattr(signal, f"SIG{name}"))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1 and self.log_sink is not None:
            data = self._buffers.pop(1, b"") + data
            end = data.rfind(b"\n") + 1
            rest = data[end:]
            self._buffers[1] = rest if len(rest) <= MAX_LINE else b""
            if end:
                self.log_sink.write(data[:end])
            return
        *lines, rest = (self._buffers.get(childFD, b"") + data).split(b"\n")
        self._buffers[childFD] = rest if len(rest) <= MAX_LINE else b""
        for line in lines:
            if line.strip(b"\x1e \r"):
                self.supervisor.received(self, childFD, line.strip(b"\x1e\r"))

    def processEnded(self, reason: Failure) -> None:
        if self.ended.called:
            return
        for channel in self._channels.values():
            channel.loseConnection()
        self.supervisor.exited(self, reason)
        self.ended.callback(None)


class _Channel(protocol.Protocol):
    """The parent's end of one of a worker's socket pairs."""

    def __init__(self, process: WorkerProcess, fd: int) -> None:
        self.process, self.fd = process, fd

    def dataReceived(self, data: bytes) -> None:
        self.process.childDataReceived(self.fd, data)


class _ChannelFactory(protocol.Factory):
    noisy = False

    def __init__(self, process: WorkerProcess, fd: int) -> None:
        self.process, self.fd = process, fd

    def buildProtocol(self, addr: Any) -> _Channel:
        return _Channel(self.process, self.fd)


def _exit_reason(status: int) -> Failure:
    """The Failure Twisted's process support gives for a wait status C{status}."""
    if os.WIFSIGNALED(status):
        return Failure(ProcessTerminated(None, os.WTERMSIG(status), status))
    code = os.waitstatus_to_exitcode(status)
    return Failure(ProcessDone(status) if code == 0 else ProcessTerminated(code, None, status))


class ZygoteProcess(protocol.ProcessProtocol):
    """The zygote, as the parent sees it: reports on its stdout (one JSON object a line)
    the workers it forked and those that exited; its stderr goes to the log."""

    def __init__(self, supervisor: Supervisor, channel: socket.socket) -> None:
        self.supervisor = supervisor
        self.channel = channel  # the parent's end: spawn requests with the workers' sockets
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffers: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> bool:
        """Send C{message} (with descriptors C{fds}) to the zygote; C{False} if it is gone."""
        try:
            socket.send_fds(self.channel, [_json_line(message)], list(fds))
            return True
        except OSError:
            return False

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._buffers.get(childFD, b"") + data).split(b"\n")
        self._buffers[childFD] = rest
        for line in lines:
            if not line.strip():
                continue
            if childFD == 2:
                text = line.decode(errors="replace")
                log.warn("workers' zygote pid {pid}: {line}", pid=self.pid, line=text)
            else:
                self.supervisor.zygote_said(line)

    def processEnded(self, reason: Failure) -> None:
        self.channel.close()
        self.supervisor.zygote_ended(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """Starts, restarts and stops the workers of C{server} (the parent's L{MailServer}), and
    carries what they share (see the module docstring).  A child service of the server,
    added after its listeners, so their sockets are bound when it starts."""

    def __init__(
        self,
        server: MailServer,
        count: int,
        reactor: Any,
        run_as: tuple[int, int] | None = None,
    ) -> None:
        self.server = server
        self.count = count
        self.reactor = reactor
        self.run_as = run_as  # twistd -u/-g: the zygote drops to it after its imports
        self.processes: dict[int, WorkerProcess] = {}  # slot -> the running process
        self.zygote: ZygoteProcess | None = None
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._asks: dict[int, tuple[defer.Deferred[list[Any]], set[int], list[Any]]] = {}
        self._next_ask = 0
        self._stopping = False
        self._sockets: list[tuple[str, int, int]] = []
        self._log_sink: LogSink | None = None
        self.load = LoadTable.create(count)  # slot 0: this process
        self._balanced = False
        self.setName("workers")
        server.workers = self
        server.throttle.share = self._throttle_shared
        for name, rate in server.rates.items():
            rate.share = self._rate_shared(name)
        combined = getattr(server, "metrics_combined", None)
        if combined is not None:
            combined.others = self._blocking_metrics
        # [limits]: the counts of every process, kept here (Postfix's and Dovecot's anvil)
        self.anvil = Anvil()
        mine = LocalShare(self.anvil)
        for limit in server.connection_limits.values():
            limit.shared = mine
        server.imap_user_limit.shared = mine

    # -- life cycle ------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # After the listeners (bound) and twistd's daemonizing, before its privilege drop:
        # the zygote starts as root and drops by itself once it has read what it needs.
        super().privilegedStartService()
        self._stopping = False
        self._sockets = self.server.listening_sockets()
        self._balance()
        self._start_zygote()

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        if self.zygote is None:
            self._sockets = self.server.listening_sockets()
            self._balance()
            self._start_zygote()
        for slot in range(1, self.count):
            self._spawn(slot)

    def _balance(self) -> None:
        if not self._balanced:
            self._balanced = True
            self.load.balance(self.server, 0, self.reactor)

    def _start_zygote(self) -> None:
        config = self.server.config
        args = [sys.executable, "-m", "twistedmail.workers", "--zygote"]
        args += ["--parent", str(os.getpid())]
        if config.source is not None:
            args += ["--config", str(Path(config.source).absolute())]
        if self.run_as is not None:
            args += ["--user", f"{self.run_as[0]}:{self.run_as[1]}"]
        self._log_sink = log_sink(globalLogPublisher)  # twistd's observer is in place by now
        if self._log_sink is not None:
            args += ["--log-lines"]
        ours, theirs = socket.socketpair()
        child_fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        for i, (name, fd, family) in enumerate(self._sockets):
            child_fds[FIRST_LISTENER + i] = fd
            args += ["--listen", f"{name}:{FIRST_LISTENER + i}:{family}"]
        load_fd = FIRST_LISTENER + len(self._sockets)
        child_fds[load_fd] = self.load.fd
        args += ["--load", str(load_fd)]
        zygote = ZygoteProcess(self, ours)
        try:
            self.reactor.spawnProcess(
                zygote, sys.executable, args, env=dict(os.environ), childFDs=child_fds
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.zygote = zygote
        # What this process imported to build its server: the zygote imports it before
        # any privilege drop (the interpreter may be unreadable after it).
        modules = sorted(n for n in sys.modules if not n.startswith(_NOT_PRELOADED))
        zygote.request({"op": "preload", "modules": modules})
        log.info("workers' zygote started: pid {pid}", pid=zygote.pid)

    def _spawn(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        if self._stopping:
            return
        if self.zygote is None:
            try:
                self._start_zygote()
            except OSError as e:
                # After twistd -u the user may not run the interpreter (pyenv's under a 0700
                # /root), or processes or descriptors ran out: said once a try, tried again.
                delay = self._delays.get(slot, RESTART_FIRST)
                self._delays[slot] = min(delay * 2, RESTART_MAX)
                log.error(
                    "worker {slot} not started: cannot start the workers' zygote: {error};"
                    " trying again in {delay:.0f}s",
                    slot=slot,
                    error=str(e),
                    delay=delay,
                )
                self._restarts[slot] = self.reactor.callLater(delay, self._spawn, slot)
                return
        assert self.zygote is not None
        process = WorkerProcess(self, slot)
        process.log_sink = self._log_sink
        theirs = process.connect(self.reactor)
        sent = self.zygote.request({"op": "spawn", "slot": slot}, [s.fileno() for s in theirs])
        for sock in theirs:
            sock.close()
        self.processes[slot] = process
        if not sent:  # the zygote is gone: zygote_ended starts it again
            process.processEnded(Failure(ProcessTerminated(None, None, None)))
            return
        process.send({"op": "throttle_state", "state": self.server.throttle.snapshot()})

    def zygote_said(self, line: bytes) -> None:
        """A report of the zygote: a worker forked (its pid) or exited (its wait status)."""
        try:
            message = json.loads(line)
            op = message["op"]
            if op == "spawned":
                process = self.processes.get(int(message["slot"]))
                if process is not None and process.pid is None:
                    process.pid = int(message["pid"])
                    log.info("worker {slot} started: pid {pid}", slot=process.slot, pid=process.pid)
            elif op == "exited":
                for process in list(self.processes.values()):
                    if process.pid == int(message["pid"]):
                        process.processEnded(_exit_reason(int(message["status"])))
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            log.error("workers' zygote: bad message: {error}", error=str(e))

    def zygote_ended(self, zygote: ZygoteProcess, reason: Failure) -> None:
        """The zygote exited: its workers die with it (they are its children)."""
        if self.zygote is zygote:
            self.zygote = None
        if not self._stopping:
            log.error("workers' zygote exited: {reason}", reason=reason.getErrorMessage())
        for process in list(self.processes.values()):
            process.signal("TERM")  # PR_SET_PDEATHSIG does too
            process.processEnded(reason)

    def exited(self, process: WorkerProcess, reason: Failure) -> None:
        if self.processes.get(process.slot) is process:
            del self.processes[process.slot]
        self.anvil.drop(process)  # its connections and sessions are gone with it
        self.load.counts[process.slot] = -1  # the others take every new connection
        for ask_id in list(self._asks):  # it will not answer
            self._answer(ask_id, process.pid, None)
        if self._stopping:
            return
        up = self.reactor.seconds() - process.started
        delay = self._delays.get(process.slot, RESTART_FIRST)
        if up >= STABLE:
            delay = RESTART_FIRST
        self._delays[process.slot] = min(delay * 2, RESTART_MAX)
        log.warn(
            "worker {slot} (pid {pid}) exited: {reason}; starting it again in {delay:.0f}s",
            slot=process.slot,
            pid=process.pid,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._restarts[process.slot] = self.reactor.callLater(delay, self._spawn, process.slot)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        processes = list(self.processes.values())
        for process in processes:
            process.signal("TERM")

        def kill() -> None:
            for process in processes:
                if not process.ended.called:
                    log.warn("worker pid {pid} did not stop: killing it", pid=process.pid)
                    process.signal("KILL")

        timer = self.reactor.callLater(STOP_GRACE, kill)
        d = defer.DeferredList([p.ended for p in processes])
        d.addBoth(lambda _: timer.cancel() if timer.active() else None)
        d.addCallback(lambda _: self._stop_zygote())
        return d  # type: ignore[return-value]

    def _stop_zygote(self) -> defer.Deferred[None] | None:
        zygote = self.zygote
        if zygote is None or zygote.ended.called:
            return None
        with contextlib.suppress(Exception):  # already gone
            zygote.transport.signalProcess("TERM")  # type: ignore[union-attr]
        return zygote.ended

    def signal_all(self, name: str) -> None:
        """Send signal C{name} (C{"HUP"}) to every worker."""
        for process in list(self.processes.values()):
            process.signal(name)

    def processes_status(self) -> list[dict[str, Any]]:
        """Every process serving the listeners, the parent first then the workers by slot:
        pid, role, open connections and logged-in IMAP sessions (the anvil's counts), for
        C{twistedmail status}."""
        out = []
        for role, pid, owner in [
            ("parent", os.getpid(), "parent"),
            *(("worker", p.pid, p) for _, p in sorted(self.processes.items()) if p.pid),
        ]:
            connections, sessions = self.anvil.owned(owner)
            out.append(
                {"pid": pid, "role": role, "connections": connections, "imap_sessions": sessions}
            )
        return out

    # -- what they share -----------------------------------------------------------------

    def broadcast(self, message: dict[str, Any], but: WorkerProcess | None = None) -> None:
        for process in list(self.processes.values()):
            if process is not but:
                process.send(message)

    def _throttle_shared(self, kind: str, args: Sequence[str]) -> None:
        self.broadcast({"op": "throttle", "kind": kind, "args": list(args)})

    def _rate_shared(self, name: str) -> Callable[[str, int], None]:
        def share(key: str, n: int) -> None:
            self.broadcast({"op": "rate", "name": name, "key": key, "n": n})

        return share

    def ask(self, what: str, **args: Any) -> defer.Deferred[list[Any]]:
        """Ask every running worker C{what} (C{counts}, C{metrics}, C{auth_flush}); fires
        with their answers (those that answer within L{ASK_TIMEOUT} seconds)."""
        waiting = {p.pid for p in self.processes.values() if p.pid is not None}
        d: defer.Deferred[list[Any]] = defer.Deferred()
        if not waiting:
            d.callback([])
            return d
        self._next_ask += 1
        ask_id = self._next_ask
        self._asks[ask_id] = (d, waiting, [])
        self.broadcast({"op": "ask", "id": ask_id, "what": what, "args": args})
        timer = self.reactor.callLater(ASK_TIMEOUT, self._finish, ask_id)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _answer(self, ask_id: int, pid: int | None, value: Any) -> None:
        pending = self._asks.get(ask_id)
        if pending is None or pid not in pending[1]:
            return
        pending[1].discard(pid)
        if value is not None:
            pending[2].append(value)
        if not pending[1]:
            self._finish(ask_id)

    def _finish(self, ask_id: int) -> None:
        pending = self._asks.pop(ask_id, None)
        if pending is not None:
            pending[0].callback(pending[2])

    def _blocking_metrics(self) -> list[Any]:
        """The workers' metric samples, from the exposition thread."""
        from twisted.internet.threads import blockingCallFromThread

        result: list[Any] = blockingCallFromThread(self.reactor, self.ask, "metrics")
        return result

    def received(self, process: WorkerProcess, fd: int, line: bytes) -> None:
        if fd == 1:
            self._log_event(process, line)
            return
        if fd == 2:
            text = line.decode(errors="replace")
            log.warn("worker pid {pid}: {line}", pid=process.pid, line=text)
            return
        try:
            message = json.loads(line)
            op = message["op"]
            if op == "answer":
                self._answer(message["id"], process.pid, message["value"])
            elif op == "throttle":
                self.server.throttle.replay(message["kind"], message["args"])
                self.broadcast(message, but=process)
            elif op == "rate":
                self.server.rates[message["name"]].replay(message["key"], int(message["n"]))
                self.broadcast(message, but=process)
            elif op in ("connect", "session"):
                self._admit(process, message)
            elif op == "disconnect":
                self.anvil.disconnect(process, message["service"], message["key"])
            elif op == "release":
                self.anvil.release(process, message["user"], message["ip"])
            elif op == "queued":
                d = defer.Deferred.fromCoroutine(self.server.queue.adopt(message["id"]))
                d.addErrback(lambda f: log.failure("queue: a worker's entry not scheduled", f))
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            log.error("worker pid {pid}: bad message: {error}", pid=process.pid, error=str(e))

    def _admit(self, process: WorkerProcess, message: dict[str, Any]) -> None:
        """A worker's question before it greets a client or logs a user in: counted here
        for the whole server, or refused (L{twistedmail.limits.Anvil})."""
        if process.ended.called:
            return
        if message["op"] == "connect":
            limit = self.server.connection_limits[message["service"]]
            key = str(message["key"])
            if limit.over_rate(key, str(message.get("ip") or key)):
                answer: Admission = (False, RATE_REFUSED, RATE_REFUSED)
            else:
                answer = self.anvil.connect(
                    process, limit.service, key, limit.max_connections, limit.max_per_ip
                )
        else:
            users = self.server.imap_user_limit
            answer = self.anvil.session(
                process, str(message["user"]), str(message["ip"]), users.max_per_user
            )
        process.send({"op": "admit", "id": message["id"], "answer": list(answer)})

    @staticmethod
    def _log_event(process: WorkerProcess, line: bytes) -> None:
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            text = line.decode(errors="replace")
            log.info("worker pid {pid}: {line}", pid=process.pid, line=text)
            return
        event["worker"] = process.pid
        level = event.get("log_level")
        system = event.get("log_system") or "{}#{}".format(
            event.get("log_namespace", "-"), getattr(level, "name", "info")
        )
        event["log_system"] = f"{system} worker={process.pid}"
        globalLogPublisher(event)


def supervise(
    server: MailServer, reactor: Any, run_as: tuple[int, int] | None = None
) -> Supervisor | None:
    """Add a L{Supervisor} to the parent's C{server} when C{[server] workers} is above 1;
    C{run_as}: the (uid, gid) of C{twistd -u/-g}, which the workers run as."""
    count = server.config.server.workers
    if count <= 1:
        return None
    if run_as is not None and (os.geteuid() != 0 or run_as[0] == 0):
        run_as = None  # as tap.hand_over_privileges: only root drops to another user
    supervisor = Supervisor(server, count, reactor, run_as)
    supervisor.setServiceParent(server)
    return supervisor


# -- the worker's side ---------------------------------------------------------------------


class ParentLink(LineOnlyReceiver):
    """A worker's end of its pipes to the parent: commands on stdin, messages on fd 3."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.server: MailServer | None = None
        self._questions: dict[int, defer.Deferred[Admission]] = {}
        self._next_question = 0

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(_json_line(message))

    # twistedmail.limits.Share: the parent keeps the counts

    def _question(self, message: dict[str, Any]) -> defer.Deferred[Admission]:
        self._next_question += 1
        message["id"] = self._next_question
        d: defer.Deferred[Admission] = defer.Deferred()
        self._questions[self._next_question] = d
        self.send(message)
        return d

    remote = True  # the parent counts (and checks the connection rate: ConnectionLimit)

    def connect(
        self, service: str, key: str, max_connections: int, max_per_ip: int, ip: str = ""
    ) -> defer.Deferred[Admission]:
        return self._question({"op": "connect", "service": service, "key": key, "ip": ip})

    def disconnect(self, service: str, key: str) -> None:
        self.send({"op": "disconnect", "service": service, "key": key})

    def session(self, user: str, ip: str, max_per_user: int) -> defer.Deferred[Admission]:
        return self._question({"op": "session", "user": user, "ip": ip})

    def release(self, user: str, ip: str) -> None:
        self.send({"op": "release", "user": user, "ip": ip})

    def attach(self, server: MailServer) -> None:
        """Hand C{server}'s shared state to the parent (see the module docstring)."""
        self.server = server
        server.throttle.share = lambda kind, args: self.send(
            {"op": "throttle", "kind": kind, "args": list(args)}
        )
        for name, rate in server.rates.items():
            rate.share = self._rate_share(name)
        queue = server.queue
        enqueue = queue.enqueue

        async def shared_enqueue(*args: Any, **kwargs: Any) -> Any:
            entry = await enqueue(*args, **kwargs)
            self.send({"op": "queued", "id": entry.id})  # the parent's queue runs it
            return entry

        queue.enqueue = shared_enqueue  # type: ignore[method-assign]
        server.delivery.outbound = shared_enqueue
        for limit in server.connection_limits.values():
            limit.shared = self
        server.imap_user_limit.shared = self

    def _rate_share(self, name: str) -> Callable[[str, int], None]:
        return lambda key, n: self.send({"op": "rate", "name": name, "key": key, "n": n})

    def lineReceived(self, line: bytes) -> None:
        server = self.server
        if server is None:
            return
        try:
            message = json.loads(line)
            op = message["op"]
            if op == "throttle":
                server.throttle.replay(message["kind"], message["args"])
            elif op == "throttle_state":
                server.throttle.restore(message["state"])
            elif op == "rate":
                server.rates[message["name"]].replay(message["key"], int(message["n"]))
            elif op == "admit":
                ok, count, total = message["answer"]
                self._questions.pop(message["id"]).callback((bool(ok), int(count), int(total)))
            elif op == "ask":
                self.send({"op": "answer", "id": message["id"], "value": self._answer(message)})
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            log.error("bad message from the parent: {error}", error=str(e))

    def _answer(self, message: dict[str, Any]) -> Any:
        from twistedmail.metrics import samples

        server = self.server
        assert server is not None
        what = message["what"]
        if what == "counts":
            return server.connection_counts()
        if what == "auth_flush":
            cache = server.auth_cache
            return cache.flush(message["args"]["user"]) if cache is not None else 0
        if what == "metrics":
            values = samples(server.metrics.registry)
            values += [
                ("twistedmail_sessions_open", {"service": name}, float(len(limit.protocols)))
                for name, limit in server.connection_limits.items()
            ]
            return values
        raise ValueError(f"unknown question {what!r}")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        # The parent is gone (or closed our pipe to stop us): stop serving.
        if self.reactor.running:
            log.info("the parent process is gone: stopping")
            self.reactor.stop()


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (Linux C{PR_SET_PDEATHSIG}); exit
    at once if it already has.  (A change of user clears it: call it after any drop.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the command pipe's end stops us
        pass
    if os.getppid() != parent:
        raise SystemExit(0)


# -- the zygote ----------------------------------------------------------------------------


def _preload(modules: Sequence[str]) -> None:
    """Import C{modules} (the parent's), so that a worker forked later imports nothing: after
    C{twistd -u} the interpreter's own files may be unreadable (pyenv under a 0700 /root)."""
    for name in modules:  # with -u, every codec too (twistedmail.tap.load_before_the_drop)
        with contextlib.suppress(BaseException):  # a module of another platform, a script
            importlib.import_module(name)
    from twistedmail.address import normalize_domain
    from twistedmail.mailauth import organizational_domain

    normalize_domain("xn--fa-hia.test")  # idna's UTS 46 table
    organizational_domain("example.org")  # the bundled Public Suffix List


def _drop_to(uid: int, gid: int) -> None:
    """Become C{uid}:C{gid} with its supplementary groups, as twistd's C{shedPrivileges}."""
    from twisted.python.util import switchUID

    switchUID(uid, gid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise SystemExit(f"could not become {uid}:{gid}")


def _fresh_reactor(reactor: Any) -> None:
    """In a forked worker: give the reactor the zygote installed (importing twisted.mail
    does) its own epoll and waker, which the zygote's copy would otherwise share."""
    poller = getattr(reactor, "_poller", None)
    if poller is not None:
        reactor._poller = select.epoll(1024)
        poller.close()
        reactor._reads.clear()
        reactor._writes.clear()
        reactor._selectables.clear()
    waker = reactor.waker
    if waker is not None:
        reactor._internalReaders.discard(waker)
        with contextlib.suppress(Exception):
            waker.connectionLost(None)
        reactor.waker = None
        reactor.installWaker()


def _read_line(
    channel: socket.socket, buffer: bytearray, pending: list[int]
) -> tuple[bytes, list[int]] | None:
    """One request of the parent (a JSON line) and the descriptors it carries; C{None}
    at the end of the channel."""
    while b"\n" not in buffer:
        data, more, _, _ = socket.recv_fds(channel, 1 << 20, 8)
        if not data:
            for fd in more:
                os.close(fd)
            return None
        buffer += data
        pending.extend(more)
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    # The descriptors come with the first byte of their request (the kernel does not
    # join a message carrying descriptors to the one before it).
    fds = pending[:] if json.loads(line).get("op") == "spawn" else []
    if fds:
        pending.clear()
    return line, fds


def _fork_worker(
    slot: int,
    fds: Sequence[int],
    channel: socket.socket,
    serve: Callable[[int], None],
) -> int:
    """Fork a worker whose descriptors 0 and 3, 1 and 2 are C{fds} (commands, log,
    stderr); it runs C{serve(slot)}.  Returns its pid (in the zygote)."""
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    try:  # the worker
        channel.close()
        zygote = os.getppid()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
        for fd in fds:
            os.close(fd)
        ctl, out, err = high
        for target, fd in ((0, ctl), (1, out), (2, err), (3, ctl)):
            os.dup2(fd, target)
        for fd in high:
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent(zygote)
        serve(slot)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    os._exit(code)


def zygote(options: argparse.Namespace) -> None:
    """The workers' launcher (C{--zygote}): started as root by the parent before twistd
    drops privileges, it imports what the workers need, reads the config, drops to
    C{--user}, then forks a worker for each request of the parent (module docstring)."""
    channel = socket.socket(fileno=fcntl.fcntl(3, fcntl.F_DUPFD_CLOEXEC, 64))
    os.close(3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to twistd -n: the parent stops us
    buffer = bytearray()
    pending: list[int] = []  # descriptors received, not yet taken by their request
    first = _read_line(channel, buffer, pending)
    if first is None:
        return
    _preload(json.loads(first[0]).get("modules", []))
    from twistedmail.config import load_config

    config = load_config(Path(options.config) if options.config else None)
    from twistedmail.service import server_tls_context

    tls = server_tls_context(config)  # before the drop: a key only root may read
    if options.user:
        uid, gid = (int(n) for n in options.user.split(":"))
        _drop_to(uid, gid)
    die_with_parent(options.parent)

    def serve(slot: int) -> None:
        from twisted.internet import reactor

        _fresh_reactor(reactor)
        load = (options.load, slot) if options.load is not None else None
        run_worker(reactor, config, options.listen, tls, options.log_lines, load)

    report = os.fdopen(1, "w", encoding="utf-8", buffering=1)
    children: set[int] = set()
    while True:
        ready: list[Any] = [channel]
        if b"\n" not in buffer:
            ready, _, _ = select.select([channel], [], [], 0.2 if children else 5.0)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            report.write(json.dumps({"op": "exited", "pid": pid, "status": status}) + "\n")
        if not ready:
            continue
        request = _read_line(channel, buffer, pending)
        if request is None:  # the parent is gone: the workers' pipes end too
            return
        line, fds = request
        message = json.loads(line)
        if message.get("op") != "spawn" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            print(f"bad request: {line!r}", file=sys.stderr, flush=True)
            continue
        pid = _fork_worker(int(message["slot"]), fds, channel, serve)
        children.add(pid)
        report.write(json.dumps({"op": "spawned", "slot": message["slot"], "pid": pid}) + "\n")


# -- a worker --------------------------------------------------------------------------------


def run_worker(
    reactor: Any,
    config: Any,
    listen: Sequence[str],
    tls: Any = None,
    log_lines: bool = False,
    load: tuple[int, int] | None = None,
) -> None:
    """Serve as a worker: the parent's sockets C{listen} (C{NAME:FD:FAMILY}), commands on
    descriptor 0, log events on 1 (finished lines with C{log_lines}, else JSON events),
    messages to the parent on 3; C{load}: the descriptor of the L{LoadTable} and this
    worker's slot in it."""

    lines: LogLines | None = None
    observer: ILogObserver
    if log_lines:
        observer = lines = LogLines(
            fd_writer(1), reactor, mark=f" worker={os.getpid()}", delay=FLUSH_EVERY
        )
    else:
        observer = jsonFileLogObserver(os.fdopen(1, "w", encoding="utf-8", buffering=1))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    quiet_dns_client(globalLogPublisher)
    adopted: dict[str, list[tuple[int, int]]] = {}
    for item in listen:
        name, fd, family = item.rsplit(":", 2)
        adopted.setdefault(name, []).append((int(fd), int(family)))
    server = MailServer(config, reactor, adopted=adopted, tls=tls)
    link = ParentLink(reactor)
    link.attach(server)
    stdio.StandardIO(link, stdin=0, stdout=3, reactor=reactor)  # type: ignore[call-arg]
    server.privilegedStartService()
    server.startService()
    if load is not None:
        load_fd, slot = load
        LoadTable(load_fd).balance(server, slot, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    log.info("worker serving: pid {pid}", pid=os.getpid())
    reactor.run()
    if lines is not None:
        lines.flush()  # what was logged after the reactor's last turn


def main(argv: Sequence[str] | None = None) -> None:
    """The workers' zygote: C{python -m twistedmail.workers --zygote --parent PID
    [--config PATH] [--user UID:GID] --listen NAME:FD:FAMILY ... [--load FD]} (started by
    L{Supervisor}, never by hand)."""
    parser = argparse.ArgumentParser(prog="twistedmail.workers")
    parser.add_argument("--zygote", action="store_true", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--user")
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--load", type=int, help="the descriptor of the connection counts")
    parser.add_argument("--log-lines", action="store_true", help="write finished log lines")
    options = parser.parse_args(argv)
    die_with_parent(options.parent)
    zygote(options)


if __name__ == "__main__":
    main()
