"""Changes to a selected folder made outside this process, pushed to its sessions (RFC 2177).

L{FolderWatcher} is the L{ChangeNotifier} of the service: besides the in-process notices
(delivery, APPEND, STORE, EXPUNGE, POP3), it watches C{new/} and C{cur/} of every folder some
session has selected, so a message dropped into C{new/} by an MDA, a flag set or a message
expunged by Dovecot, another worker or by hand reaches the sessions of the folder at once: an
IDLE client is sent C{* n EXISTS}, C{* n FETCH (FLAGS ...)} or C{* n EXPUNGE} through the same
rescan (L{twistedmail.imap.mailbox.MaildirMailbox.refresh}) an in-process notice starts.

One watch per folder, shared by every session that has it selected, and dropped when the
last one leaves.  Linux inotify (C{twisted.internet.inotify}) is used where it works; events
of a burst are coalesced into one notice per folder after L{FolderWatcher.delay} seconds (a
rename is C{IN_MOVED_FROM} + C{IN_MOVED_TO}, and a rescan moves C{new/} to C{cur/} itself).
Where inotify is missing (not Linux) or a watch cannot be added (C{fs.inotify.max_user_watches}
reached), the folder falls back to a check of the directories' mtimes every
L{FolderWatcher.poll_interval} seconds while it is selected (logged once).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from twistedmail.maildir import ChangeNotifier
from twistedmail.maildir.ownchanges import ARRIVED, LEFT, OWN

log = Logger(namespace="twistedmail.imap.watch")

try:  # Linux only: the module cannot be imported elsewhere
    from twisted.internet import inotify as _inotify
except ImportError:  # pragma: no cover (not Linux)
    _inotify = None  # type: ignore[assignment]

WATCH_ERRORS: tuple[type[Exception], ...] = (OSError, RuntimeError)
"""What adding a watch or opening inotify raises (C{INotifyError} is neither)."""
if _inotify is not None:
    WATCH_ERRORS += (_inotify.INotifyError,)

WATCHED = ("new", "cur")
"""The directories of a Maildir folder whose entries are its messages."""

MASK = 0x100 | 0x80 | 0x40 | 0x200  # IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE
_ARRIVING = 0x100 | 0x80
_LEAVING = 0x40 | 0x200
_OVERFLOW = 0x4000  # IN_Q_OVERFLOW: events were lost (any folder may have changed)
"""A message arrives (created or renamed in), is renamed (flags) or goes away; C{IN_ATTRIB}
is not needed: Maildir flags live in the file name."""

DELAY = 0.05
"""Seconds an event waits for the rest of its burst before the sessions are told."""

POLL_INTERVAL = 3.0
"""Seconds between mtime checks of a folder that inotify cannot watch."""


class INotifyLike(Protocol):
    """The part of C{twisted.internet.inotify.INotify} the watcher uses."""

    def startReading(self) -> None: ...

    def watch(self, path: FilePath[Any], *, mask: int, callbacks: list[Any]) -> int: ...

    def ignore(self, path: FilePath[Any]) -> None: ...

    def doRead(self) -> object: ...


if _inotify is not None:

    class EventINotify(_inotify.INotify):
        """Twisted's C{INotify}, its events read without a C{FilePath} per event: the
        watcher only needs which watched directory changed, and C{FilePath.child} with
        its checks was most of the reading (12% of the GIL's samples of a STORE, whose
        rename is two events, bench/imap_cmd_cost.py)."""

        _directories: dict[int, tuple[Any, str]]
        """Each watch's directory as text, by descriptor (with the watch it was for)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._directories = {}

        def _rmWatch(self, wd: int) -> None:
            self._directories.pop(wd, None)
            super()._rmWatch(wd)

        def _doRead(self, in_: bytes) -> None:
            """Each watched directory with events in C{in_} gets one call of its callbacks
            (the directory's path, its events' masks together), in the order the kernel
            queued them; a deleted one (C{IN_DELETE_SELF}) is dropped and the descriptor
            closed, as Twisted does.  The events of this process's own renames and unlinks
            (L{twistedmail.maildir.ownchanges}) are consumed there and call nothing; a lost
            queue (C{IN_Q_OVERFLOW}) calls every watched directory's."""
            buffer = self._buffer + in_
            end, at = len(buffer), 0
            directories = self._directories
            masks: dict[int, int] = {}
            while end - at >= 16:
                wd, mask, _cookie, size = struct.unpack_from("=LLLL", buffer, at)
                if end - at < 16 + size:
                    break  # (the kernel gives whole events; kept for the next read)
                name = buffer[at + 16 : at + 16 + size].rstrip(b"\0")
                at += 16 + size
                if mask & _OVERFLOW:
                    for every in self._watchpoints:
                        masks[every] = masks.get(every, 0) | mask
                    continue
                kind = ARRIVED if mask & _ARRIVING else LEFT if mask & _LEAVING else None
                watch = self._watchpoints.get(wd)
                if kind is not None and name and watch is not None:
                    known = directories.get(wd)
                    if known is None or known[0] is not watch:  # (a descriptor reused)
                        known = directories[wd] = (watch, os.fsdecode(watch.path.path))
                    if OWN.seen(known[1], os.fsdecode(name), kind):
                        continue  # our own change: its notice is sent by L{changed}
                masks[wd] = masks.get(wd, 0) | mask
            self._buffer = buffer[at:]
            deleted = False
            for wd, mask in masks.items():
                watch = self._watchpoints.get(wd)
                if watch is None:
                    continue
                watch._notify(watch.path.asBytesMode(), mask)
                if mask & _inotify.IN_DELETE_SELF:
                    self._rmWatch(wd)
                    deleted = True
            if deleted:
                self.loseConnection()


def _system_inotify(reactor: Any, lost: Callable[[], None]) -> INotifyLike:
    """A real inotify instance on C{reactor}; C{lost} is called when Twisted closes it (it
    does so, for every watch at once, when one watched directory is deleted)."""
    if _inotify is None:
        raise OSError("inotify is not available on this system")

    class _INotify(EventINotify):
        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)
            lost()

    return _INotify(reactor=reactor)


class FolderWatcher(ChangeNotifier):
    """A L{ChangeNotifier} that also watches the subscribed folders on disk.

    @param reactor: for C{callLater} (coalescing, polling) and the inotify descriptor.
    @param inotify: makes the inotify instance (C{reactor}, a callback for its loss); the
        system's by default; C{None} always polls.
    @param delay: seconds to gather a burst of events into one notice.
    @param poll_interval: seconds between mtime checks where inotify is not available.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        inotify: Callable[[Any, Callable[[], None]], INotifyLike] | None = _system_inotify,
        delay: float = DELAY,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.delay = delay
        self.poll_interval = poll_interval
        self._make_inotify = inotify
        self._inotify: INotifyLike | None = None
        self._inotify_failed = inotify is None
        self._watched: dict[Path, list[FilePath[Any]]] = {}
        self._pending: dict[Path, IDelayedCall] = {}
        self._polled: dict[Path, tuple[int, ...]] = {}
        self._poll: LoopingCall | None = None
        self._fallback_logged = False
        self._draining: Path | None = None

    # ChangeNotifier

    def changed(self, path: Path) -> None:
        """A change made by this process (delivery, APPEND, STORE, EXPUNGE, POP3), told to
        the folder's sessions at once.  The kernel already queued the inotify events of that
        change: they are read now and dropped, so the sessions do not rescan a second time
        for it (an outside change among them is seen by the rescans this notice starts)."""
        if self._inotify is not None and path in self._watched:
            self._draining = path
            try:
                self._inotify.doRead()
            finally:
                self._draining = None
            pending = self._pending.pop(path, None)
            if pending is not None and pending.active():
                pending.cancel()
            OWN.settle(os.fspath(path))
        super().changed(path)

    def subscribe(self, path: Path, callback: Callable[[], None]) -> None:
        first = path not in self._listeners
        super().subscribe(path, callback)
        if first:
            self._watch(path)

    def unsubscribe(self, path: Path, callback: Callable[[], None]) -> None:
        super().unsubscribe(path, callback)
        if path not in self._listeners:
            self._unwatch(path)

    def watches(self) -> int:
        """How many directories inotify watches now (two per selected folder; 0 when no
        session has a folder selected)."""
        return sum(len(dirs) for dirs in self._watched.values())

    def polled(self) -> int:
        """How many folders are checked by mtime instead (inotify unavailable)."""
        return len(self._polled)

    # watching

    def _watch(self, path: Path) -> None:
        if not self._inotify_failed and self._inotify is None:
            try:
                assert self._make_inotify is not None
                self._inotify = self._make_inotify(self.reactor, self._lost)
                self._inotify.startReading()
            except Exception as e:  # noqa: BLE001 (any failure: poll instead, said once)
                self._inotify = None
                self._inotify_failed = True
                self._fall_back("inotify cannot be used ({error})", error=str(e))
        if self._inotify is not None:
            added: list[FilePath[Any]] = []
            try:
                for name in WATCHED:
                    directory = FilePath(os.fsencode(path / name))
                    self._inotify.watch(directory, mask=MASK, callbacks=[self._event_for(path)])
                    added.append(directory)
            except WATCH_ERRORS as e:
                for directory in added:
                    self._ignore(directory)
                if not (path / "cur").is_dir():
                    return  # the folder is gone: nothing to watch
                self._fall_back(
                    "inotify watch of {path} failed ({error}); see fs.inotify.max_user_watches",
                    path=str(path),
                    error=str(e),
                )
            else:
                self._watched[path] = added
                OWN.watch(os.fspath(path))
                return
        self._polled[path] = self._stamps(path)
        if self._poll is None:
            self._poll = LoopingCall(self._check_polled)
            self._poll.clock = self.reactor
            self._poll.start(self.poll_interval, now=False).addErrback(
                lambda f: log.failure("folder mtime check failed", f)
            )

    def _unwatch(self, path: Path) -> None:
        OWN.unwatch(os.fspath(path))
        for directory in self._watched.pop(path, []):
            self._ignore(directory)
        pending = self._pending.pop(path, None)
        if pending is not None and pending.active():
            pending.cancel()
        self._polled.pop(path, None)
        if not self._polled and self._poll is not None:
            if self._poll.running:
                self._poll.stop()
            self._poll = None

    def _ignore(self, directory: FilePath[Any]) -> None:
        if self._inotify is None:
            return
        try:
            self._inotify.ignore(directory)
        except KeyError:
            pass  # the kernel dropped it already (directory deleted)

    def _lost(self) -> None:
        """Twisted closed the inotify descriptor (a watched directory was deleted): open a
        new one and watch the folders that are still selected again."""
        self._inotify = None
        paths = list(self._watched)
        self._watched.clear()
        for path in paths:
            if path in self._listeners:
                self._watch(path)
            self._event(path)

    def _fall_back(self, message: str, **fields: Any) -> None:
        if not self._fallback_logged:
            self._fallback_logged = True
            message += "; selected folders are checked every {interval} s instead"
            log.warn(message, interval=self.poll_interval, **fields)

    # events

    def _event_for(self, path: Path) -> Callable[[Any, FilePath[Any], int], None]:
        def event(_watch: Any, filepath: FilePath[Any], mask: int) -> None:
            self._event(path)

        return event

    def _event(self, path: Path) -> None:
        """Something changed in C{path}: tell its sessions once the burst is over."""
        OWN.distrust(os.fspath(path))  # (not our own change: its rescan lists the folder)
        if path in self._pending or path not in self._listeners or path == self._draining:
            return
        self._pending[path] = self.reactor.callLater(self.delay, self._fire, path)

    def _fire(self, path: Path) -> None:
        del self._pending[path]
        super().changed(path)

    # the fallback

    @staticmethod
    def _stamps(path: Path) -> tuple[int, ...]:
        stamps: list[int] = []
        for name in WATCHED:
            try:
                st = os.stat(path / name)
            except OSError:
                stamps += (0, 0)
                continue
            stamps += (st.st_mtime_ns, st.st_ino)
        return tuple(stamps)

    def _check_polled(self) -> None:
        for path, before in list(self._polled.items()):
            now = self._stamps(path)
            if now != before:
                self._polled[path] = now
                self._event(path)
