"""Log lines off the hot path (issue 10): twistd's text log lines, formatted once and
written many at a time.

When twistd logs its text lines to one file (C{-l PATH}, or stdout under C{-n}), a worker
(L{twistedmail.workers}) formats its events into the same lines itself (the system marked
C{worker=PID}, as fail2ban's filter expects), writes the lines of each L{FLUSH_EVERY}
seconds to its fd 1 in one write (L{LogLines}), and the parent appends what arrives, whole
lines only, to its own log file as it is (L{LogSink}): one write per batch in the parent,
no decoding or formatting there, and rotation (size, SIGUSR1) stays the parent's.  The
parent's own lines go the same way (L{batch_log}): written once per reactor turn, the
time stamp formatted once a second.  With C{--syslog} or C{[log] format = "json"} none of
this applies (L{log_sink} is C{None}).
"""

from __future__ import annotations

import os
import string
import threading
from collections.abc import Callable
from typing import IO, Any

import attrs
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogPublisher,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from twisted.python import logfile, threadable
from zope.interface import implementer

from twistedmail import wire
from twistedmail.dns import quiet_dns_client

_formatter = string.Formatter()

FLUSH_EVERY = 0.02  # seconds a worker's log lines wait to be written together (LogLines)

_Parsed = tuple[tuple[str, str | None, str, str | None], ...]
_FORMATS: dict[str, _Parsed | None] = {}  # log_format -> its parts (None: not simple)
_MAX_FORMATS = 1000  # the formats of our own log calls are far fewer


def _parse(log_format: str) -> _Parsed | None:
    """The parts of a PEP 3101 format (literal text, field, spec, conversion), when every
    field is a plain name with a plain spec and C{!s}/C{!r} at most; else C{None} (calls
    C{{f()}}, attributes, indexes, nested fields: left to twisted.logger)."""
    try:
        parts = tuple(_formatter.parse(log_format))
    except ValueError:
        return None
    simple = []
    for literal, field, spec, conversion in parts:
        if field is not None and (
            not field.isidentifier() or conversion not in (None, "s", "r") or "{" in (spec or "")
        ):
            return None
        simple.append((literal, field, spec or "", conversion))
    return tuple(simple)


def classic_line(event: LogEvent, time: Callable[[float | None], str]) -> str | None:
    """C{formatEventAsClassicLogText(event, formatTime=time)}, the same text, with the
    event's C{log_format} parsed once per format instead of once per event (issue 10:
    twisted.logger's C{string.Formatter} pass was most of a log line's cost); an event it
    cannot do the same way (a failure, a call or attribute in the format, a missing
    field) goes to twisted.logger."""
    log_format = event.get("log_format")
    if type(log_format) is not str or "log_failure" in event or "log_flattened" in event:
        return formatEventAsClassicLogText(event, formatTime=time)
    try:
        parts = _FORMATS[log_format]
    except KeyError:
        parts = _parse(log_format)
        if len(_FORMATS) < _MAX_FORMATS:
            _FORMATS[log_format] = parts
    if parts is None:
        return formatEventAsClassicLogText(event, formatTime=time)
    pieces = []
    try:
        for literal, field, spec, conversion in parts:
            pieces.append(literal)
            if field is not None:
                value = event[field]
                if conversion == "r":
                    value = repr(value)
                elif conversion == "s":
                    value = str(value)
                pieces.append(format(value, spec))
    except Exception:
        return formatEventAsClassicLogText(event, formatTime=time)
    text = "".join(pieces)
    if not text:
        return None
    system = system_name(event)
    if type(system) is not str:
        return formatEventAsClassicLogText(event, formatTime=time)
    line = f"{time(event.get('log_time'))} [{system}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def system_name(event: LogEvent) -> object:
    """The system of a classic log line: the event's C{log_system}, else
    C{namespace#level} (as twisted.logger's C{formatEventAsClassicLogText} names it)."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        name = "-" if level is None else level.name
        return "{}#{}".format(event.get("log_namespace", "-"), name)
    return system


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
            event["log_system"] = f"{system_name(event)}{self.mark}"
        text = classic_line(event, self._time)
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
        elif threading.get_ident() == threadable.ioThread:  # isInIOThread, without its calls
            self.reactor.callLater(self.delay, self.flush)
        else:
            self.reactor.callFromThread(self.reactor.callLater, self.delay, self.flush)

    def write_pending(self) -> None:
        """Write the lines waiting now, before a reply sent at once (L{wire.BEFORE_WRITE});
        the L{flush} already scheduled finds fewer or none.  A write that fails (a full
        disk) puts the lines back for that flush, which meets the failure as it did before:
        the reply is not the one to fail."""
        if not self._lines:
            return
        with self._lock:
            lines, self._lines = self._lines, []
        if lines:
            try:
                self.write("".join(lines).encode("utf-8", "replace"))
            except Exception:
                with self._lock:
                    self._lines[:0] = lines

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
    # A reply sent at once (wire.write_at_once) still comes after the lines of its turn.
    wire.BEFORE_WRITE.append(lines.write_pending)
    return lines
