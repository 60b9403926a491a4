"""Both cores: C{[server] workers} processes serving the same listening sockets (issue 10).

The parent, the twistd process, binds every listening socket (before dropping privileges,
as it always did), then starts C{workers - 1} worker processes (L{Supervisor}); each runs
C{python -m twistedmail.workers}, builds the same L{twistedmail.service.MailServer} from the
same config, and serves the parent's sockets, which it inherits as descriptors and adopts
with C{reactor.adoptStreamPort} (Twisted's documented way; implicit TLS listeners wrap the
factory in C{TLSMemoryBIOFactory} with the same context, by the same code).  The kernel
hands each new connection to one of the processes accepting on the socket; the parent
serves too.

What happens once belongs to the parent: the outbound queue runner (a worker that queues a
message tells the parent, which schedules it, L{QueueRunner.adopt}), the control socket,
ACME, the metrics listener, the tmp/ sweep and saving the failed-login throttle.  What must
hold in every process goes through the parent, one JSON object a line:

  - the failed-login throttle: every outcome (failure, success, the admin's unblock) is
    replayed in every other process (L{twistedmail.throttle.LoginThrottle.share}), so a block
    made in one worker holds in all; a worker started later gets the parent's state first;
  - the hourly rates (submission per user, port 25 per IP; L{twistedmail.rate.HourlyRate}):
    likewise, so a limit holds across processes (overrun only by events accepted in the same
    few milliseconds by two processes);
  - the CLI's requests: C{twistedmail connections} and C{status} add up every process's open
    connections, a password change flushes the login cache of every process, C{/metrics}
    adds every worker's counters and histograms (gathered at each scrape);
  - SIGHUP (TLS reload) is passed on to every worker.

Everything else they share is on disk and locked across processes: the account store
(SQLite WAL), each Maildir folder (an C{flock} plus Dovecot's dotlock, and the index under
it), the queue spool (one file pair per message, renamed into place).  IDLE learns of
another process's delivery by inotify on the folder (L{twistedmail.imap.watch}).
Per process, and so at most C{workers} times the configured value: the connection limits of
C{[limits]} (C{max_connections}, C{max_connections_per_ip}) and the per-user IMAP session
limit (C{imap_max_connections_per_user}).

Supervision: a worker that exits is started again after a pause that doubles from
L{RESTART_FIRST} to L{RESTART_MAX} seconds (back to the first after L{STABLE} seconds up);
stopping the parent sends SIGTERM to each worker and waits (SIGKILL after L{STOP_GRACE}
seconds).  A worker whose parent dies (even by SIGKILL) stops too: the kernel sends it
SIGTERM (C{PR_SET_PDEATHSIG}), and the end of its command pipe stops it otherwise.

Descriptors of a worker: 0 the commands from the parent, 1 its log, 2 its stderr, 3 its
messages to the parent, then the listening sockets from L{FIRST_LISTENER}.

Logging stays off the hot path: when the parent logs twistd's text lines to one file (C{-l
PATH}, or stdout under C{-n}), a worker formats its events into the same lines itself (the
system marked C{worker=PID}, as fail2ban's filter expects), writes the lines of each
L{FLUSH_EVERY} seconds to fd 1 in one write (L{LogLines}), and the parent appends what
arrives, whole lines only, to its own log file as it is (L{LogSink}): one write per batch
in the parent, no decoding or formatting there, and rotation (size, SIGUSR1) stays the
parent's.  Otherwise
(C{--syslog}, C{[log] format = "json"}) the worker sends each event as JSON and the parent
replays it into its log with C{worker=PID} (L{Supervisor._log_event}).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer, protocol, stdio
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogPublisher,
    eventFromJSON,
    formatEventAsClassicLogText,
    formatTime,
    globalLogBeginner,
    globalLogPublisher,
    jsonFileLogObserver,
    timeFormatRFC3339,
)
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import logfile, threadable
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.dns import quiet_dns_client
from twistedmail.service import MailServer

log = Logger(namespace="twistedmail.workers")

RESTART_FIRST = 1.0
RESTART_MAX = 60.0
STABLE = 60.0
STOP_GRACE = 15.0
ASK_TIMEOUT = 10.0
FIRST_LISTENER = 4
MAX_LINE = 64 * 1024 * 1024  # a metrics snapshot of a busy worker stays far below
FLUSH_EVERY = 0.02  # seconds a worker's log lines wait to be written together (LogLines)

PR_SET_PDEATHSIG = 1


def _json_line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


# -- the parent's side ---------------------------------------------------------------------


@attrs.frozen
class LogSink:
    """The file twistd's text log observer writes to, which a worker's lines are appended
    to as they come (see the module docstring)."""

    out: IO[Any]
    text: bool  # it takes str (sys.stdout), not bytes (twistd's LogFile takes both)

    def write(self, data: bytes) -> None:
        self.out.write(data.decode("utf-8", "replace") if self.text else data)
        self.out.flush()


def _unfiltered(publisher: LogPublisher) -> object:
    """The one observer of C{publisher}, unwrapped from its filters, or C{None}."""
    observers = list(getattr(publisher, "_observers", ()))
    if len(observers) != 1:
        return None
    observer = observers[0]
    while isinstance(observer, FilteringLogObserver):
        observer = getattr(observer, "_observer", None)
    return observer


def log_sink(publisher: LogPublisher) -> LogSink | None:
    """The L{LogSink} of C{publisher} when its one observer is twistd's text file observer
    (C{textFileLogObserver}, perhaps behind a filter, or the L{LogLines} of L{batch_log}
    in its place), else C{None} (syslog, JSON lines,
    several observers): then the workers' events are replayed one by one."""
    observer = _unfiltered(publisher)
    if isinstance(observer, LogLines):  # batch_log put it there
        return observer.sink
    if not isinstance(observer, FileLogObserver):
        return None
    formatter = getattr(observer.formatEvent, "__qualname__", "")
    if formatter != "textFileLogObserver.<locals>.formatEvent":
        return None
    if getattr(observer, "_encoding", None) is not None:
        return None
    out = getattr(observer, "_outFile", None)
    if out is None:
        return None
    return LogSink(out, text=not isinstance(out, logfile.BaseLogFile))


class WorkerProcess(protocol.ProcessProtocol):
    """One worker, as its parent sees it."""

    def __init__(self, supervisor: Supervisor, slot: int) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.pid: int | None = None
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffers: dict[int, bytes] = {}
        self.log_sink: LogSink | None = None  # its fd 1 carries finished lines

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.ended.called:
            self.transport.write(_json_line(message))

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
        self.supervisor.exited(self, reason)
        self.ended.callback(None)


class Supervisor(Service):
    """Starts, restarts and stops the workers of C{server} (the parent's L{MailServer}), and
    carries what they share (see the module docstring).  A child service of the server,
    added after its listeners, so their sockets are bound when it starts."""

    def __init__(self, server: MailServer, count: int, reactor: Any) -> None:
        self.server = server
        self.count = count
        self.reactor = reactor
        self.processes: dict[int, WorkerProcess] = {}  # slot -> the running process
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._asks: dict[int, tuple[defer.Deferred[list[Any]], set[int], list[Any]]] = {}
        self._next_ask = 0
        self._stopping = False
        self._sockets: list[tuple[str, int, int]] = []
        self._log_sink: LogSink | None = None
        self.setName("workers")
        server.workers = self
        server.throttle.share = self._throttle_shared
        for name, rate in server.rates.items():
            rate.share = self._rate_shared(name)
        combined = getattr(server, "metrics_combined", None)
        if combined is not None:
            combined.others = self._blocking_metrics

    # -- life cycle ------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._sockets = self.server.listening_sockets()
        self._log_sink = log_sink(globalLogPublisher)  # twistd's observer is in place by now
        for slot in range(1, self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        if self._stopping:
            return
        config = self.server.config
        args = [sys.executable, "-m", "twistedmail.workers", "--parent", str(os.getpid())]
        if config.source is not None:
            args += ["--config", str(Path(config.source).absolute())]
        if self._log_sink is not None:
            args += ["--log-lines"]
        child_fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r", 3: "r"}
        for i, (name, fd, family) in enumerate(self._sockets):
            child_fds[FIRST_LISTENER + i] = fd
            args += ["--listen", f"{name}:{FIRST_LISTENER + i}:{family}"]
        process = WorkerProcess(self, slot)
        process.log_sink = self._log_sink
        self.reactor.spawnProcess(
            process, sys.executable, args, env=dict(os.environ), childFDs=child_fds
        )
        self.processes[slot] = process
        process.send({"op": "throttle_state", "state": self.server.throttle.snapshot()})
        log.info("worker {slot} started: pid {pid}", slot=slot, pid=process.pid)

    def exited(self, process: WorkerProcess, reason: Failure) -> None:
        if self.processes.get(process.slot) is process:
            del self.processes[process.slot]
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
            self._signal(process, "TERM")

        def kill() -> None:
            for process in processes:
                if not process.ended.called:
                    log.warn("worker pid {pid} did not stop: killing it", pid=process.pid)
                    self._signal(process, "KILL")

        timer = self.reactor.callLater(STOP_GRACE, kill)
        d = defer.DeferredList([p.ended for p in processes])
        d.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return d  # type: ignore[return-value]

    @staticmethod
    def _signal(process: WorkerProcess, name: str) -> None:
        try:
            process.transport.signalProcess(name)  # type: ignore[union-attr]
        except Exception:  # already gone
            pass

    def signal_all(self, name: str) -> None:
        """Send signal C{name} (C{"HUP"}) to every worker."""
        for process in list(self.processes.values()):
            self._signal(process, name)

    def pids(self) -> list[int]:
        """The running workers' process IDs, by slot."""
        return [p.pid for _, p in sorted(self.processes.items()) if p.pid is not None]

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
            elif op == "queued":
                d = defer.Deferred.fromCoroutine(self.server.queue.adopt(message["id"]))
                d.addErrback(lambda f: log.failure("queue: a worker's entry not scheduled", f))
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            log.error("worker pid {pid}: bad message: {error}", pid=process.pid, error=str(e))

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


def supervise(server: MailServer, reactor: Any) -> Supervisor | None:
    """Add a L{Supervisor} to the parent's C{server} when C{[server] workers} is above 1."""
    count = server.config.server.workers
    if count <= 1:
        return None
    supervisor = Supervisor(server, count, reactor)
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

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(_json_line(message))

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


@implementer(ILogObserver)
class LogLines:
    """A log observer that writes twistd's text lines (C{textFileLogObserver}'s), the
    system marked with C{mark}, and hands the lines logged within C{delay} seconds to
    C{write} together (L{flush}): one write for many lines, and one C{strftime} a second
    (twistd's time stamps have whole seconds).  Before the reactor runs and after it
    stopped, each line is written at once.

    A worker's (C{--log-lines}): C{mark} C{" worker=PID"}, C{write} to its fd 1, which the
    parent appends to its log file as it comes (see the module docstring), C{delay}
    L{FLUSH_EVERY} (a worker killed by SIGKILL loses the lines of its last L{FLUSH_EVERY}
    seconds; SIGTERM writes them).  The parent's own (L{batch_log}): no mark, C{delay} 0:
    the lines of one reactor turn are written at the start of the next, before the replies
    of that turn are sent."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        reactor: Any,
        mark: str = "",
        delay: float = 0.0,
        sink: LogSink | None = None,
    ) -> None:
        self.write = write
        self.reactor = reactor
        self.mark = mark
        self.delay = delay
        self.sink = sink  # the parent's log file, when this observer writes to it
        self._lines: list[str] = []
        self._scheduled = False
        self._lock = threading.Lock()
        self._stamp: tuple[int, str] = (-1, "")

    def _time(self, when: float | None) -> str:
        if when is None:
            return formatTime(when, timeFormatRFC3339)
        second, stamp = self._stamp
        if int(when) != second:
            stamp = formatTime(int(when), timeFormatRFC3339)
            self._stamp = (int(when), stamp)
        return stamp

    def __call__(self, event: LogEvent) -> None:
        if self.mark:
            event = dict(event)
            system = event.get("log_system")
            if system is None:
                level = event.get("log_level")
                system = "{}#{}".format(
                    event.get("log_namespace", "-"), level.name if level is not None else "-"
                )
            event["log_system"] = f"{system}{self.mark}"
        text = formatEventAsClassicLogText(event, formatTime=self._time)
        if not text:
            return
        with self._lock:
            self._lines.append(text)
            running = self.reactor.running
            if self._scheduled and running:
                return
            self._scheduled = running
        if not running:
            self.flush()
        elif threadable.isInIOThread():
            self.reactor.callLater(self.delay, self.flush)
        else:
            self.reactor.callFromThread(self.reactor.callLater, self.delay, self.flush)

    def flush(self) -> None:
        """Write the lines logged since the last flush (a pipe full because the parent is
        busy blocks: no line is dropped)."""
        with self._lock:
            lines, self._lines = self._lines, []
            self._scheduled = False
        if lines:
            self.write("".join(lines).encode("utf-8", "replace"))


def fd_writer(fd: int) -> Callable[[bytes], None]:
    """A C{write} for L{LogLines}: all of C{data} to C{fd}."""

    def write(data: bytes) -> None:
        while data:
            data = data[os.write(fd, data) :]

    return write


def batch_log(publisher: LogPublisher, reactor: Any) -> LogLines | None:
    """In the parent, once twistd logs: when its observer is the text file one
    (L{log_sink}), put a L{LogLines} writing to the same file in its place (behind the
    same DNS filter), so that the parent's own lines cost one write per reactor turn and
    one time stamp a second, in the same format; else leave the observers alone."""
    sink = log_sink(publisher)
    if sink is None or isinstance(_unfiltered(publisher), LogLines):
        return None
    lines = LogLines(sink.write, reactor, sink=sink)
    for observer in list(getattr(publisher, "_observers", ())):
        publisher.removeObserver(observer)
    publisher.addObserver(lines)
    quiet_dns_client(publisher)
    return lines


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (Linux C{PR_SET_PDEATHSIG}); exit
    at once if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the command pipe's end stops us
        pass
    if os.getppid() != parent:
        raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> None:
    """A worker process: C{python -m twistedmail.workers --parent PID [--config PATH]
    --listen NAME:FD:FAMILY ...} (started by L{Supervisor}, never by hand)."""
    parser = argparse.ArgumentParser(prog="twistedmail.workers")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--config")
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--log-lines", action="store_true", help="write finished log lines")
    options = parser.parse_args(argv)
    die_with_parent(options.parent)
    from twisted.internet import reactor

    from twistedmail.config import load_config
    from twistedmail.dns import quiet_dns_client

    lines: LogLines | None = None
    observer: ILogObserver
    if options.log_lines:
        observer = lines = LogLines(
            fd_writer(1), reactor, mark=f" worker={os.getpid()}", delay=FLUSH_EVERY
        )
    else:
        observer = jsonFileLogObserver(os.fdopen(1, "w", encoding="utf-8", buffering=1))
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    quiet_dns_client(globalLogPublisher)
    adopted: dict[str, list[tuple[int, int]]] = {}
    for item in options.listen:
        name, fd, family = item.rsplit(":", 2)
        adopted.setdefault(name, []).append((int(fd), int(family)))
    config = load_config(Path(options.config) if options.config else None)
    server = MailServer(config, reactor, adopted=adopted)
    link = ParentLink(reactor)
    link.attach(server)
    stdio.StandardIO(link, stdin=0, stdout=3, reactor=reactor)  # type: ignore[call-arg]
    server.privilegedStartService()
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    log.info("worker serving: pid {pid}", pid=os.getpid())
    reactor.run()
    if lines is not None:
        lines.flush()  # what was logged after the reactor's last turn


if __name__ == "__main__":
    main()
