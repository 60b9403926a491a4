"""A rescan after this process's own STORE or EXPUNGE needs no listing of the folder when
inotify saw no other change (L{twistedmail.maildir.ownchanges}); any other change, also
one that leaves the directories' mtimes as they were, is still seen by the next rescan
(NOOP, RFC 3501 §6.1.2) and pushed to IDLE (RFC 2177)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from twistedmail.imap.watch import DELAY, FolderWatcher
from twistedmail.index import FolderIndex
from twistedmail.maildir import FlagChange, Folder, make_maildir
from twistedmail.maildir.ownchanges import OWN

pytest.importorskip("twisted.internet.inotify")
from tests.test_imap_watch import ManualINotify  # noqa: E402

MSG = b"Subject: x\r\n\r\nbody\r\n"


class Setup:
    """A folder of three messages, scanned (as a SELECT), watched by a FolderWatcher
    whose inotify the test reads by hand, and one session's listing after the watch."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        make_maildir(root)
        for n in range(3):
            (root / "cur" / f"{n}.M{n}P1.host:2,").write_bytes(MSG)
        self.root = root
        self.folder = Folder(root)
        self.scan = self.folder.scan()
        self.clock = Clock()
        self.real: list[ManualINotify] = []
        self.notices: list[int] = []
        self.watcher = FolderWatcher(self.clock, self.make)
        self.watcher.subscribe(root, self.notice)
        self.listings = 0
        listed_as = Folder._listed_as

        def counting(folder: Folder, snapshot: Any) -> bool:
            self.listings += 1
            return listed_as(folder, snapshot)

        monkeypatch.setattr(Folder, "_listed_as", counting)
        self.rescan()  # (the folder is listed once after the watch began)

    def notice(self) -> None:
        self.notices.append(1)

    def make(self, reactor: Any, lost: Any) -> ManualINotify:
        self.real.append(ManualINotify(reactor=reactor))
        return self.real[0]

    def rescan(self) -> Any:
        """A session's rescan (NOOP): the delta since what it last saw."""
        result = self.folder.scan(self.scan.highestmodseq)
        self.scan = result
        return result

    def store_seen(self, uid: int) -> None:
        """Our own STORE +FLAGS (\\Seen) of C{uid} and its in-process notice."""
        (entry,) = [e for e in self.folder.scan().messages if e.uid == uid]
        self.folder.change_flags_many([(entry, FlagChange(add="S"))])
        self.watcher.changed(self.root)

    def outside_rename(self, n: int, flags: str) -> None:
        """Another program renames message C{n} within the same mtime tick as our last
        change (cur/'s mtime put back): the stamps cannot show it."""
        cur = self.root / "cur"
        st = os.stat(cur)
        (old,) = [name for name in os.listdir(cur) if name.startswith(f"{n}.")]
        os.rename(cur / old, cur / f"{n}.M{n}P1.host:2,{flags}")
        os.utime(cur, ns=(st.st_atime_ns, st.st_mtime_ns))

    def close(self) -> None:
        self.watcher.unsubscribe(self.root, self.notice)
        if self.real:
            self.real[0].loseConnection()


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    s = Setup(tmp_path / "Maildir", monkeypatch)
    yield s
    s.close()


def test_rescan_after_our_own_store_lists_nothing(setup: Setup) -> None:
    """After our STORE, whose inotify events were all ours, the other sessions' rescans
    answer from memory (no listing) with the new flags."""
    setup.store_seen(1)
    assert OWN.trusted(os.fspath(setup.root)) is not None
    before = setup.listings
    result = setup.rescan()
    assert setup.listings == before
    assert [(e.uid, e.flags) for e in result.messages] == [(1, "S")]
    assert setup.notices == [1]  # the in-process notice, not a second one from inotify
    setup.clock.advance(DELAY)
    assert setup.notices == [1]


def test_outside_change_after_ours_is_seen_by_noop_and_idle(setup: Setup) -> None:
    """Another program's rename right after our STORE, within the same mtime tick, reaches
    IDLE (one notice after the burst) and the next rescan (NOOP) lists the folder and
    reports the new flags."""
    setup.store_seen(1)
    setup.outside_rename(2, "F")  # (UID 3)
    setup.real[0].doRead()
    assert OWN.trusted(os.fspath(setup.root)) is None
    setup.clock.advance(DELAY)
    assert setup.notices == [1, 1]
    before = setup.listings
    result = setup.rescan()
    assert setup.listings > before
    assert [(e.uid, e.flags) for e in result.messages] == [(1, "S"), (3, "F")]


def test_outside_change_among_our_events_is_not_trusted(setup: Setup) -> None:
    """An outside rename whose event comes in the same read as our STORE's leaves the
    folder untrusted: the rescan lists it and finds both changes."""
    setup.outside_rename(2, "F")  # (UID 3)
    before = setup.listings
    setup.store_seen(1)
    assert OWN.trusted(os.fspath(setup.root)) is None
    result = setup.rescan()
    assert setup.listings > before
    assert sorted((e.uid, e.flags) for e in result.messages) == [(1, "S"), (3, "F")]


def test_outside_change_read_before_our_notice_is_not_trusted(setup: Setup) -> None:
    """An outside rename read by the reactor before our STORE's notice (its own notice
    pending) leaves the folder untrusted too."""
    setup.outside_rename(2, "F")  # (UID 3)
    setup.real[0].doRead()
    setup.store_seen(1)
    assert OWN.trusted(os.fspath(setup.root)) is None
    result = setup.rescan()
    assert sorted((e.uid, e.flags) for e in result.messages) == [(1, "S"), (3, "F")]


def test_no_trust_before_a_listing_after_the_watch(tmp_path: Path) -> None:
    """A folder watched but not listed since (a change just before the watch made no
    event) is not trusted after our change."""
    root = tmp_path / "Maildir"
    make_maildir(root)
    (root / "cur" / "1.M1P1.host:2,").write_bytes(MSG)
    folder = Folder(root)
    (entry,) = folder.scan().messages
    real: list[ManualINotify] = []

    def make(reactor: Any, lost: Any) -> ManualINotify:
        real.append(ManualINotify(reactor=reactor))
        return real[0]

    watcher = FolderWatcher(Clock(), make)
    callback = lambda: None  # noqa: E731
    watcher.subscribe(root, callback)
    folder.change_flags_many([(entry, FlagChange(add="S"))])
    watcher.changed(root)
    assert OWN.trusted(os.fspath(root)) is None
    watcher.unsubscribe(root, callback)
    real[0].loseConnection()


def test_our_expunge_is_trusted_and_unwatch_forgets(setup: Setup) -> None:
    """Our EXPUNGE's unlink is ours too; once the last session leaves, nothing of the
    folder is trusted any more."""
    (entry,) = [e for e in setup.folder.scan().messages if e.uid == 2]
    setup.folder.remove_many([entry])
    setup.watcher.changed(setup.root)
    assert OWN.trusted(os.fspath(setup.root)) is not None
    before = setup.listings
    result = setup.rescan()
    assert setup.listings == before
    assert result.expunged == (2,)
    setup.watcher.unsubscribe(setup.root, setup.notice)
    assert OWN.trusted(os.fspath(setup.root)) is None


def test_outside_unlink_of_a_file_we_were_expunging_is_seen(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program deletes a message file between our EXPUNGE's look-up and its unlink:
    its IN_DELETE looks like ours, but the rescan still lists the folder and reports that
    message expunged too (RFC 3501 §7.4.1), not keeps it for good."""
    entries = [e for e in setup.folder.scan().messages if e.uid in (1, 2)]
    cur = setup.root / "cur"
    st = os.stat(cur)
    opened = Folder.open

    def racing(folder: Folder, entry: Any) -> Path:
        path = opened(folder, entry)
        if entry.uid == 2:
            os.unlink(path)  # (the other program, within the same mtime tick)
            os.utime(cur, ns=(st.st_atime_ns, st.st_mtime_ns))
        return path

    monkeypatch.setattr(Folder, "open", racing)
    removed = setup.folder.remove_many(entries)
    monkeypatch.setattr(Folder, "open", opened)
    assert [e.uid for e in removed] == [1]
    setup.watcher.changed(setup.root)
    result = setup.rescan()
    assert result.expunged == (1, 2)


def test_outside_change_between_two_of_ours_is_seen(setup: Setup) -> None:
    """Another program's rename read with our first STORE's events, then a second STORE of
    ours with no outside event: the folder is not listed since the outside rename, so it
    is not trusted and the next rescan (NOOP, RFC 3501 §6.1.2) reports that rename."""
    first, second = [e for e in setup.folder.scan().messages if e.uid in (1, 2)]
    setup.folder.change_flags_many([(first, FlagChange(add="S"))])
    setup.outside_rename(2, "F")  # (UID 3)
    setup.watcher.changed(setup.root)
    setup.folder.change_flags_many([(second, FlagChange(add="S"))])
    setup.watcher.changed(setup.root)
    result = setup.rescan()
    assert sorted((e.uid, e.flags) for e in result.messages) == [(1, "S"), (2, "S"), (3, "F")]


def test_change_of_ours_that_fails_midway_is_not_trusted(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our STORE renames a file, then its index write fails: its rename is on disk but in
    no snapshot, so the trust our earlier change left is taken back and the next rescan
    (NOOP, RFC 3501 §6.1.2) lists the folder and reports the new flags."""
    (entry,) = [e for e in setup.folder.scan().messages if e.uid == 2]
    setup.store_seen(1)
    cur = setup.root / "cur"
    st = os.stat(cur)

    def broken(*args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    rename = FolderIndex.rename
    monkeypatch.setattr(FolderIndex, "rename", broken)
    with pytest.raises(sqlite3.OperationalError):
        setup.folder.change_flags_many([(entry, FlagChange(add="S"))])
    monkeypatch.setattr(FolderIndex, "rename", rename)
    os.utime(cur, ns=(st.st_atime_ns, st.st_mtime_ns))  # (within the same mtime tick)
    setup.real[0].doRead()
    result = setup.rescan()
    assert sorted((e.uid, e.flags) for e in result.messages) == [(1, "S"), (2, "S")]
