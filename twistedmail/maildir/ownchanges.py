"""This process's own changes to its folders, told apart from everyone else's by their
inotify events (issue 10).

A rescan within L{twistedmail.index.DIRTY_NS} of a folder's last change lists C{new/} and
C{cur/} (L{twistedmail.maildir.folder.Folder._unchanged}): another program may have changed
the folder within the same mtime tick, unseen by the stamps.  Under imaptest every folder
changes all the time, so every session's rescan after each STORE or EXPUNGE of ours listed
the folder again.  Where the folder is watched by inotify (L{twistedmail.imap.watch}) the
kernel tells us every change, ours and others': a STORE or EXPUNGE names the entries it will
rename or delete here (L{OwnChanges.expect}) before doing so, the watcher consumes those
events as ours (L{OwnChanges.seen}) and, when no other event came (L{OwnChanges.distrust})
and every expected one did, trusts the stamps the change left (L{OwnChanges.settle}): a
rescan that finds exactly those stamps needs no listing.  Any event not ours takes the trust
back at once (and its notice rescans with a listing); a folder not watched is never trusted.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

from twistedmail.index import Stamps

ARRIVED = "+"
"""An entry created or renamed into a directory (C{IN_CREATE}, C{IN_MOVED_TO})."""
LEFT = "-"
"""An entry deleted or renamed away (C{IN_DELETE}, C{IN_MOVED_FROM})."""


class OwnChanges:
    """The expected events and trusted stamps of the folders this process watches, by the
    folder's path as a string.  L{expect} and L{changed} run in the storage threads, the
    rest on the reactor thread; one lock orders them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[str] = set()
        self._expected: dict[str, Counter[tuple[str, str, str]]] = {}
        self._stamps: dict[str, Stamps] = {}  # as our last change left them
        self._foreign: set[str] = set()  # an event not ours since the last settle
        self._trusted: dict[str, Stamps] = {}
        self._unlisted: set[str] = set()  # watched, not listed since: nothing trusted yet

    def watch(self, folder: str) -> None:
        """inotify now watches C{folder}'s C{new/} and C{cur/}."""
        with self._lock:
            self._watched.add(folder)
            self._unlisted.add(folder)  # (a change just before the watch made no event)

    def listing(self, folder: str) -> None:
        """A rescan lists C{folder} now: what it finds covers the time before the watch."""
        with self._lock:
            self._unlisted.discard(folder)

    def unwatch(self, folder: str) -> None:
        with self._lock:
            self._watched.discard(folder)
            self._expected.pop(folder, None)
            self._stamps.pop(folder, None)
            self._foreign.discard(folder)
            self._trusted.pop(folder, None)
            self._unlisted.discard(folder)

    def expect(self, directory: str, name: str, kind: str) -> None:
        """We are about to make C{name} arrive in or leave C{directory} (C{new/}, C{cur/})."""
        folder = os.path.dirname(directory)
        with self._lock:
            if folder in self._watched:
                self._expected.setdefault(folder, Counter())[(directory, name, kind)] += 1

    def changed(self, folder: str, stamps: Stamps) -> None:
        """Our change (under the folder lock) is done and left the folder with C{stamps}."""
        with self._lock:
            if folder in self._watched:
                self._stamps[folder] = stamps

    def seen(self, directory: str, name: str, kind: str) -> bool:
        """An inotify event: C{True} when it is one we expected (consumed), else C{False}
        (the caller takes it as another's change: L{distrust})."""
        folder = os.path.dirname(directory)
        with self._lock:
            expected = self._expected.get(folder)
            key = (directory, name, kind)
            if not expected or not expected[key]:
                return False
            expected[key] -= 1
            if not expected[key]:
                del expected[key]
            return True

    def distrust(self, folder: str) -> None:
        """Someone else changed C{folder} (or may have): list it at the next rescan, and
        trust nothing before a listing: our next change's stamps cover that change too,
        unlisted (the change's snapshot follows the one kept, not the directories)."""
        with self._lock:
            self._foreign.add(folder)
            self._trusted.pop(folder, None)
            if folder in self._watched:
                self._unlisted.add(folder)

    def settle(self, folder: str) -> None:
        """After our change's notice read the pending events: trust the stamps our last
        change left when every event since the last settle was one we expected and came."""
        with self._lock:
            expected = self._expected.pop(folder, None)
            stamps = self._stamps.pop(folder, None)
            foreign = folder in self._foreign
            self._foreign.discard(folder)
            unlisted = folder in self._unlisted
            if folder not in self._watched or foreign or expected or unlisted or stamps is None:
                self._trusted.pop(folder, None)
            else:
                self._trusted[folder] = stamps

    def trusted(self, folder: str) -> Stamps | None:
        """The stamps C{folder} is known to have had no change beyond (see the module)."""
        return self._trusted.get(folder)


OWN = OwnChanges()
"""The process's own changes (one per process, as the folders' snapshots)."""
