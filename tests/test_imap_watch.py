"""L{twistedmail.imap.watch.FolderWatcher}: outside changes to a selected folder reach its
sessions (RFC 2177 IDLE), one notice per burst, one watch per folder, mtime checks as the
fallback; with a Clock, and the kernel's real inotify read by hand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath

from twistedmail.imap import watch as watch_module
from twistedmail.imap.watch import DELAY, MASK, POLL_INTERVAL, FolderWatcher
from twistedmail.maildir import make_maildir

inotify = pytest.importorskip("twisted.internet.inotify")


class FakeINotify:
    """Twisted's INotify as the watcher uses it, its events fired by the test."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.watched: dict[bytes, list[Any]] = {}
        self.fail_after = fail_after

    def startReading(self) -> None:
        pass

    def watch(self, path: FilePath[Any], *, mask: int, callbacks: list[Any]) -> int:
        if self.fail_after is not None and len(self.watched) >= self.fail_after:
            raise inotify.INotifyError("Failed to add watch (ENOSPC)")
        assert mask == MASK
        self.watched[path.path] = callbacks
        return len(self.watched)

    def ignore(self, path: FilePath[Any]) -> None:
        del self.watched[path.path]

    def doRead(self) -> None:
        pass

    def fire(self, path: Path) -> None:
        for callback in self.watched[os.fsencode(path)]:
            callback(None, FilePath(os.fsencode(path / "x")), MASK)


class ManualINotify(watch_module.EventINotify):
    """The kernel's inotify, read when the test calls C{doRead} (the Clock has no readers)."""

    def startReading(self) -> None:
        pass

    def stopReading(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass


def wd_count(fd: int) -> int:
    """Watches the kernel holds for inotify descriptor C{fd} (/proc fdinfo lines)."""
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    return sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_maildir(tmp_path / "Maildir")
    return tmp_path / "Maildir"


def test_a_burst_of_events_is_one_notice(folder: Path) -> None:
    """Ten events within the delay (a rename is two) tell each session once."""
    clock, fake = Clock(), FakeINotify()
    watcher = FolderWatcher(clock, lambda reactor, lost: fake)
    calls: list[str] = []
    watcher.subscribe(folder, lambda: calls.append("a"))
    watcher.subscribe(folder, lambda: calls.append("b"))
    for _ in range(5):
        fake.fire(folder / "new")
        fake.fire(folder / "cur")
    assert calls == []
    clock.advance(DELAY)
    assert calls == ["a", "b"]
    fake.fire(folder / "cur")
    clock.advance(DELAY)
    assert calls == ["a", "b", "a", "b"]
    assert clock.getDelayedCalls() == []


def test_one_watch_per_folder_released_with_the_last_session(folder: Path) -> None:
    """new/ and cur/ are watched once however many sessions select the folder, and the
    watches go when the last one leaves (a pending notice with them)."""
    clock, fake = Clock(), FakeINotify()
    watcher = FolderWatcher(clock, lambda reactor, lost: fake)

    def a() -> None:
        raise AssertionError("notice after the folder was left")

    def b() -> None:
        raise AssertionError("notice after the folder was left")

    watcher.subscribe(folder, a)
    watcher.subscribe(folder, b)
    assert sorted(fake.watched) == [os.fsencode(folder / "cur"), os.fsencode(folder / "new")]
    assert watcher.watches() == 2
    watcher.unsubscribe(folder, a)
    assert watcher.watches() == 2
    fake.fire(folder / "new")
    watcher.unsubscribe(folder, b)
    assert (fake.watched, watcher.watches(), watcher.subscriptions()) == ({}, 0, 0)
    clock.advance(DELAY)
    assert clock.getDelayedCalls() == []


def test_in_process_notices_are_passed_at_once(folder: Path) -> None:
    """A change made by this process (delivery, APPEND, POP3) is announced synchronously, as
    the plain ChangeNotifier did."""
    watcher = FolderWatcher(Clock(), lambda reactor, lost: FakeINotify())
    calls: list[int] = []
    watcher.subscribe(folder, lambda: calls.append(1))
    watcher.changed(folder)
    assert calls == [1]


def drop_into_new(folder: Path, name: str) -> None:
    """Deliver as an MDA does: write in tmp/, then rename into new/."""
    (folder / "tmp" / name).write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    os.rename(folder / "tmp" / name, folder / "new" / name)


def test_kernel_events_of_a_delivery_rename_and_unlink(folder: Path) -> None:
    """A file renamed into new/, a flag rename in cur/ and an unlink each reach the
    subscriber once, through the kernel's inotify."""
    clock = Clock()
    real: list[ManualINotify] = []

    def make(reactor: Any, lost: Any) -> ManualINotify:
        real.append(ManualINotify(reactor=reactor))
        return real[0]

    watcher = FolderWatcher(clock, make)
    calls: list[int] = []
    watcher.subscribe(folder, lambda: calls.append(1))
    drop_into_new(folder, "1.M1P1.host")
    real[0].doRead()
    clock.advance(DELAY)
    assert calls == [1]
    os.rename(folder / "new" / "1.M1P1.host", folder / "cur" / "1.M1P1.host:2,")
    os.rename(folder / "cur" / "1.M1P1.host:2,", folder / "cur" / "1.M1P1.host:2,S")
    real[0].doRead()
    clock.advance(DELAY)
    assert calls == [1, 1]
    os.unlink(folder / "cur" / "1.M1P1.host:2,S")
    real[0].doRead()
    clock.advance(DELAY)
    assert calls == [1, 1, 1]
    (folder / "tmp" / "2.M2P2.host").write_bytes(b"x")  # tmp/ is not a message yet
    real[0].doRead()
    clock.advance(DELAY)
    assert calls == [1, 1, 1]
    real[0].loseConnection()


def test_one_call_per_watched_directory_and_read(folder: Path) -> None:
    """The events of one read (three new messages, a flag rename) call each watched
    directory's callbacks once, with the directory's path and the events' masks."""
    reader = ManualINotify(reactor=Clock())
    calls: list[tuple[bytes, int]] = []
    for name in ("new", "cur"):
        reader.watch(
            FilePath(os.fsencode(folder / name)),
            mask=MASK,
            callbacks=[lambda _w, path, mask: calls.append((path.path, mask))],
        )
    for n in range(3):
        drop_into_new(folder, f"{n}.M1P1.host")
    (folder / "cur" / "9.M9P9.host:2,").write_bytes(b"x")
    os.rename(folder / "cur" / "9.M9P9.host:2,", folder / "cur" / "9.M9P9.host:2,S")
    reader.doRead()
    new, cur = os.fsencode(folder / "new"), os.fsencode(folder / "cur")
    assert [path for path, _ in calls] == [new, cur]
    assert calls[0][1] & MASK == inotify.IN_MOVED_TO
    assert calls[1][1] & MASK == inotify.IN_CREATE | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
    reader.loseConnection()


def test_our_own_change_is_not_announced_twice(folder: Path) -> None:
    """The kernel's events of a change this process announced itself (delivery, APPEND)
    start no second rescan; a later outside change still does."""
    clock = Clock()
    real: list[ManualINotify] = []

    def make(reactor: Any, lost: Any) -> ManualINotify:
        real.append(ManualINotify(reactor=reactor))
        return real[0]

    watcher = FolderWatcher(clock, make)
    calls: list[int] = []
    watcher.subscribe(folder, lambda: calls.append(1))
    drop_into_new(folder, "1.M1P1.host")  # as our delivery writes it
    watcher.changed(folder)
    assert calls == [1]
    real[0].doRead()
    clock.advance(DELAY)
    assert calls == [1]
    drop_into_new(folder, "2.M2P2.host")  # by someone else
    real[0].doRead()
    clock.advance(DELAY)
    assert calls == [1, 1]
    real[0].loseConnection()


def test_watches_come_back_after_many_select_close_cycles(folder: Path) -> None:
    """500 subscribe/unsubscribe cycles leave no watch in the kernel and one descriptor."""
    clock = Clock()
    made: list[ManualINotify] = []

    def make(reactor: Any, lost: Any) -> ManualINotify:
        made.append(ManualINotify(reactor=reactor))
        return made[-1]

    watcher = FolderWatcher(clock, make)
    for _ in range(500):

        def callback() -> None:
            pass

        watcher.subscribe(folder, callback)
        assert wd_count(made[0].fileno()) == 2
        watcher.unsubscribe(folder, callback)
    assert len(made) == 1
    assert (wd_count(made[0].fileno()), watcher.watches()) == (0, 0)
    made[0].loseConnection()


def test_without_inotify_the_directories_mtimes_are_checked(folder: Path) -> None:
    """No inotify (not Linux): a folder's new/ and cur/ mtimes are checked every
    poll_interval while it is selected, and a change is one notice."""
    clock = Clock()
    watcher = FolderWatcher(clock, None)
    calls: list[int] = []

    def callback() -> None:
        calls.append(1)

    watcher.subscribe(folder, callback)
    assert (watcher.polled(), watcher.watches()) == (1, 0)
    clock.advance(POLL_INTERVAL)
    clock.advance(DELAY)
    assert calls == []
    drop_into_new(folder, "1.M1P1.host")
    # a distinct mtime, whatever the file system's timestamp granularity
    os.utime(folder / "new", ns=(0, os.stat(folder / "new").st_mtime_ns + 10**9))
    clock.advance(POLL_INTERVAL)
    clock.advance(DELAY)
    assert calls == [1]
    watcher.unsubscribe(folder, callback)
    assert watcher.polled() == 0
    assert clock.getDelayedCalls() == []


def test_a_full_watch_table_falls_back_to_mtime_checks(folder: Path, tmp_path: Path) -> None:
    """When the kernel refuses a watch (fs.inotify.max_user_watches), that folder is
    checked by mtime; the others stay on inotify."""
    clock, fake = Clock(), FakeINotify(fail_after=2)
    watcher = FolderWatcher(clock, lambda reactor, lost: fake)
    other = tmp_path / "Other"
    make_maildir(other)
    calls: list[str] = []
    watcher.subscribe(folder, lambda: calls.append("inotify"))
    watcher.subscribe(other, lambda: calls.append("polled"))
    assert (watcher.watches(), watcher.polled()) == (2, 1)
    assert sorted(fake.watched) == [os.fsencode(folder / "cur"), os.fsencode(folder / "new")]
    drop_into_new(other, "1.M1P1.host")
    os.utime(other / "new", ns=(0, os.stat(other / "new").st_mtime_ns + 10**9))
    clock.advance(POLL_INTERVAL)
    clock.advance(DELAY)
    assert calls == ["polled"]


def test_a_deleted_folder_does_not_stop_the_others(folder: Path, tmp_path: Path) -> None:
    """Twisted closes the whole inotify descriptor when one watched directory is deleted:
    the folders still selected are watched again on a new one."""
    clock = Clock()
    made: list[ManualINotify] = []

    def make(reactor: Any, lost: Any) -> ManualINotify:
        class Lost(ManualINotify):
            def connectionLost(self, reason: Any) -> None:
                super().connectionLost(reason)
                lost()

        made.append(Lost(reactor=reactor))
        return made[-1]

    watcher = FolderWatcher(clock, make)
    doomed = tmp_path / "Doomed"
    make_maildir(doomed)
    calls: list[str] = []
    watcher.subscribe(folder, lambda: calls.append("kept"))
    watcher.subscribe(doomed, lambda: calls.append("doomed"))
    for name in ("new", "cur", "tmp"):
        (doomed / name).rmdir()
    made[0].doRead()
    clock.advance(0)  # Twisted's loseConnection calls connectionLost later
    assert len(made) == 2
    assert watcher.watches() == 2
    drop_into_new(folder, "1.M1P1.host")
    made[1].doRead()
    clock.advance(DELAY)
    assert "kept" in calls
    made[1].loseConnection()
