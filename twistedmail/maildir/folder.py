"""One Maildir folder and its C{dovecot-uidlist}: scans that give UIDs (RFC 3501 §2.3.1.1),
flags by delta, APPEND/EXPUNGE, under the folder's C{flock} and Dovecot's dotlock.

The files' formats are their own modules: L{twistedmail.maildir.uidlist} (UIDs) and
L{twistedmail.maildir.keywordfile} (keyword names)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs

from twistedmail.index import (
    DIRTY_NS,
    INDEX_FILE,
    CachedParts,
    FolderIndex,
    IndexedMessage,
    Stamps,
    now_ns,
    read_headers,
    read_learned,
    read_sortkeys,
    read_state,
    take_recent,
)
from twistedmail.maildir import keywordfile, uidlist
from twistedmail.maildir.dotlock import DOTLOCK_TIMEOUT, dotlock
from twistedmail.maildir.durable import fsync_dir, is_enospc, write_durably
from twistedmail.maildir.names import (
    ALL_LETTERS,
    KEYWORDS,
    LOCKFILE,
    MAX_KEYWORDS,
    UIDLIST,
    UIDLIST_LOCK,
    UNKNOWN_MTIME,
    UNKNOWN_SIZE,
    FlagChange,
    FolderGoneError,
    MaildirError,
    arrival_key,
    dovecot_wire_size,
    is_keyword,
    measure_fd,
    normalize_flags,
    read_fd,
    split_name,
    to_crlf,
    wire_size,
)
from twistedmail.maildir.ownchanges import ARRIVED, LEFT, OWN
from twistedmail.maildir.snapshot import (
    KEYWORD_MAPS,
    MessageEntry,
    ScanResult,
    _keyword_maps,
    _Snapshot,
    _snapshots,
)


class Folder:
    """One Maildir folder (INBOX or a Maildir++ subfolder) and its C{dovecot-uidlist}.

    Methods are blocking and thread-safe; concurrent callers (threads or processes) serialise
    on an C{flock} of C{twistedmail-uidlist.lock} in the folder, and with Dovecot (or doveadm)
    on its dotlock C{dovecot-uidlist.lock} (L{dotlock}).
    """

    lock_timeout = DOTLOCK_TIMEOUT
    """Seconds to wait for Dovecot's C{dovecot-uidlist.lock} (L{dotlock})."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # the paths a rescan and a read stat, list or open, as strings made once (pathlib
        # joins and str() of them were 6% of the GIL's samples under imaptest: issue 10)
        where = os.fspath(path)
        self._new, self._cur = os.path.join(where, "new"), os.path.join(where, "cur")
        self._uidlist = os.path.join(where, UIDLIST)
        self._index_file = os.path.join(where, INDEX_FILE)
        self._keywords_file = os.path.join(where, KEYWORDS)

    def exists(self) -> bool:
        return (self.path / "cur").is_dir()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path / LOCKFILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with dotlock(self.path / UIDLIST_LOCK, self.path / UIDLIST, self.lock_timeout):
                yield
        finally:
            os.close(fd)

    def _stamps(self) -> Stamps:
        new, cur = os.stat(self._new), os.stat(self._cur)
        try:
            listed = os.stat(self._uidlist)
            u = (listed.st_mtime_ns, listed.st_size, listed.st_ino)
        except FileNotFoundError:
            u = (0, 0, 0)
        return Stamps(new.st_mtime_ns, cur.st_mtime_ns, *u)

    @contextmanager
    def _indexed(self, keep: list[_Snapshot] | None = None) -> Iterator[FolderIndex]:
        """The folder lock and the open index (created, or rebuilt when unreadable, with a
        mod-sequence counter above any the lost one gave out: RFC 7162 §3.1.2.1).

        @param keep: the caller puts the folder's snapshot as of its transaction there;
            it is kept once the index committed to disk, still under the lock (so the next
            change under the lock finds it, L{_in_step})."""
        with self._locked():
            try:
                with FolderIndex(self.path) as index:
                    if index.created:
                        fresh = not (self.path / UIDLIST).exists()
                        index.start(1 if fresh else int(time.time() * 1000))
                    elif index.stale_sizes:
                        _snapshots.forget(self.path)  # sizes change without a MODSEQ
                        self._measure_again(index)
                        index.sizes_measured()
                    yield index
            except BaseException:
                # a change of ours may be on disk but in no snapshot: the next rescan lists
                OWN.distrust(os.fspath(self.path))
                raise
            if keep and not index.degraded:
                _snapshots.keep(self.path, keep[-1])

    def _measure_again(self, index: FolderIndex) -> None:
        """Sizes indexed by an older version counted a bare LF as one octet: every message
        without Dovecot's C{,W=} gets an unknown size (once, at the upgrade), measured when
        a consumer asks (L{sizes})."""
        for uid, base, _, size, _, _ in index.messages():
            if dovecot_wire_size(base) is None and size >= 0:
                index.set_size(uid, UNKNOWN_SIZE)

    def scan(
        self, since: int | None = None, claim_recent: bool = False, provisional: bool = False
    ) -> ScanResult:
        """Bring the index up to date with the folder and return its messages.

        When C{new/}, C{cur/} and C{dovecot-uidlist} are unchanged since the last full sync
        (and that sync was not within two seconds of their mtimes), nothing is listed: the
        index answers.  Otherwise C{new/} mail moves to C{cur/}, unseen messages get UIDs in
        ascending order of (mtime, name), never reused, UIDVALIDITY is set at the first scan
        (RFC 3501 §2.3.1.1), the UID list is rewritten (tmp, fsync, rename) only when
        something changed, and every message added, renamed (flags) or removed since the
        index last saw it gets a new MODSEQ (RFC 7162 §3.1.1; removals are kept as expunged
        UIDs for QRESYNC).

        C{recent} lists the messages no session has claimed yet (RFC 3501 §2.3.2): those
        moved from C{new/} and those added by L{add} (APPEND, COPY); with C{claim_recent}
        (a SELECT, not EXAMINE or STATUS) the caller takes them, and no other session gets
        them as C{\\Recent}.

        On a full disk nothing needs to be written to read: the index works in memory, and
        messages whose new UID cannot be saved in C{dovecot-uidlist} are left out (a UID
        given now and lost could later name another message, RFC 3501 §2.3.1.1) until
        there is room again.

        @param since: a MODSEQ: return only messages changed after it, and the UIDs expunged
            after it (RFC 7162 §3.1.4.1, §3.2.5.2); C{None}: every message.
        @param provisional: list the messages left out for want of room in
            L{ScanResult.unsaved} (POP3 needs no UIDs).
        @raise FolderGoneError: when the folder does not exist.
        """
        if not provisional:
            unchanged = self._unchanged(since, claim_recent)
            if unchanged is not None:
                return unchanged
        if not self.exists():
            raise FolderGoneError("no such folder")
        unsaved: list[MessageEntry] = []
        snapshot: _Snapshot | None
        keep: list[_Snapshot] = []
        with self._indexed(keep) as index:
            current = self._stamps()
            if not index.clean(current) and not self._still(index, current):
                index.add_recent(self._sync(index, unsaved).values())
            recent = frozenset(index.recent(claim_recent))
            if since is not None and since < index.floor:
                since = None  # changes before the rebuild are unknown: report everything
            expunged = tuple(index.expunged_since(since)) if since is not None else ()
            if since is None:
                snapshot = _snapshots.messages(self.path, index)
                messages = snapshot.messages
            else:
                messages = tuple(map(MessageEntry._make, index.messages(since)))
                snapshot = _snapshots.advanced(self.path, index, since, messages, expunged)
            if snapshot is not None:
                stamps = index.stamps()
                try:
                    ino = os.stat(index.path).st_ino
                except OSError:
                    stamps = None
                if stamps is not None and not unsaved:
                    snapshot = attrs.evolve(
                        snapshot,
                        uidnext=index.uidnext,
                        stamps=stamps,
                        verified_ns=index.get("synced_ns"),
                        index_ino=ino,
                        recent=frozenset() if claim_recent else recent,
                    )
                else:
                    snapshot = attrs.evolve(snapshot, stamps=None)
                keep.append(snapshot)  # (a full scan's even when not in step: for SELECT)
            result = ScanResult(
                index.uidvalidity,
                index.uidnext,
                messages,
                recent,
                index.highestmodseq,
                expunged,
                since is None,
                index.floor,
                tuple(unsaved) if provisional else (),
            )
        return result

    def _unchanged(self, since: int | None, claim_recent: bool) -> ScanResult | None:
        """L{scan} without the lock, a transaction or (mostly) a listing: from the process's
        snapshot of the folder, when the folder is still as the snapshot saw it and the
        snapshot can answer (its log reaches back to C{since}; no C{\\Recent} message to
        claim); else C{None} (the caller scans under the lock).

        Every change to a Maildir (a delivery, APPEND, a flag rename, an expunge: ours,
        another process's, Dovecot's or by hand) changes the mtime of C{new/} or C{cur/},
        and a new UID list has a new inode.  When the stamps are those the snapshot was
        in step with, and they were read at least L{DIRTY_NS} after the directories last
        changed (so no change within the same mtime tick can hide behind them, Dovecot's
        "dirty" rule), nothing changed: no listing.  Otherwise (changed, or still dirty)
        C{new/} and C{cur/} are listed (no lock): no new mail and exactly the snapshot's
        file names, and the index's HIGHESTMODSEQ still the snapshot's (a flag set and
        cleared again by another process leaves the names as they were), mean nothing
        changed either; the listing's stamps become the snapshot's."""
        snapshot = _snapshots.get(self.path)
        if snapshot is None or snapshot.stamps is None:
            return None
        expunged: tuple[int, ...] = ()
        if since is None:
            messages = snapshot.messages
        else:
            if since < snapshot.floor:
                return None
            delta = snapshot.delta(since)
            if delta is None:
                return None
            messages, expunged = delta
        result = ScanResult(
            snapshot.uidvalidity,
            snapshot.uidnext,
            messages,
            frozenset() if claim_recent else snapshot.recent,
            snapshot.highestmodseq,
            expunged,
            since is None,
            snapshot.floor,
        )
        started = now_ns()
        try:
            current = self._stamps()
            index_ino = os.stat(self._index_file).st_ino
        except OSError:
            return None  # (the folder is gone: the locked scan says so)
        if index_ino != snapshot.index_ino:
            return None  # the index was rebuilt (its MODSEQs are not the snapshot's)
        last = max(current.new_ns, current.cur_ns, current.uidlist_ns)
        # (or inotify saw no change since our own last one left these stamps: ownchanges)
        settled = current == snapshot.stamps and (
            snapshot.verified_ns - last >= DIRTY_NS or OWN.trusted(os.fspath(self.path)) == current
        )
        if not settled:
            old = snapshot.stamps
            if (current.uidlist_ns, current.uidlist_size, current.uidlist_ino) != (
                old.uidlist_ns,
                old.uidlist_size,
                old.uidlist_ino,
            ):
                return None  # UIDs given out or dropped
            OWN.listing(os.fspath(self.path))
            if not self._listed_as(snapshot):
                return None
            state = read_state(self.path)
            if state != (snapshot.uidvalidity, snapshot.floor, snapshot.highestmodseq):
                return None
        if claim_recent and snapshot.recent:
            claimed = take_recent(self.path, snapshot.recent)
            if claimed is None:
                return None
            result = attrs.evolve(result, recent=frozenset(claimed))
        if not settled or (claim_recent and snapshot.recent):
            _snapshots.verified(
                self.path,
                snapshot,
                snapshot.stamps if settled else current,
                snapshot.verified_ns if settled else started,
                frozenset() if claim_recent else snapshot.recent,
            )
        return result

    def _still(self, index: FolderIndex, current: Stamps) -> bool:
        """Under the lock: whether the index, not known clean (changed within L{DIRTY_NS}),
        is still in step with the folder: it recorded C{current} at its last sync or change,
        and the folder lists just the index's files (the kept snapshot's, brought up to the
        index's MODSEQ when another process changed the folder), so the full sync's listing,
        UID list read and index writes are not needed."""
        if index.stamps() != current:
            return False
        snapshot = self._in_step(index, current)
        if snapshot is None:
            # Another process of ours changed the folder (a STORE, EXPUNGE or APPEND in
            # another worker) and recorded these stamps with its change: the index holds
            # it. Bring the kept snapshot up to the index by MODSEQ (the rows changed since,
            # not a record per message) and check the directories against that.
            kept = _snapshots.get(self.path)
            if kept is None or (kept.uidvalidity, kept.floor) != (index.uidvalidity, index.floor):
                return False
            if kept.highestmodseq > index.highestmodseq:
                return False
            snapshot = _snapshots.messages(self.path, index)
            if not self._listed_as(snapshot):
                return False
            if snapshot is not kept:
                # kept now (without stamps: no lockless answer from it until scan() sets
                # them), so that scan() takes it instead of reading the same rows again
                _snapshots.keep(self.path, snapshot)
            return True
        return self._listed_as(snapshot)

    def _listed_as(self, snapshot: _Snapshot) -> bool:
        """Whether C{new/} holds no message and C{cur/} exactly the snapshot's files."""
        try:
            if any(not name.startswith(".") for name in os.listdir(self._new)):
                return False  # new mail
            names = [name for name in os.listdir(self._cur) if not name.startswith(".")]
        except OSError:
            return False
        return len(names) == len(snapshot.messages) and not snapshot.filenames.symmetric_difference(
            names
        )

    def _sync(self, index: FolderIndex, unsaved: list[MessageEntry]) -> dict[str, int]:
        """The full sync of L{scan}, under the lock; returns {base: uid} moved from new/."""
        started = now_ns()
        OWN.listing(os.fspath(self.path))  # (new/ and cur/ are listed below)
        uidvalidity, uidnext, guid, uids = uidlist.read(self.path)
        changed = False
        if uidvalidity == 0:
            uidvalidity, guid, changed = uidlist.new_uidvalidity(self.path), uuid.uuid4().hex, True
        if index.uidvalidity != uidvalidity:
            index.reset(uidvalidity)
        moved: set[str] = set()
        cur = self.path / "cur"
        for name in os.listdir(self.path / "new"):
            if name.startswith("."):
                continue
            base, flags = split_name(name)
            try:
                os.rename(self.path / "new" / name, cur / f"{base}:2,{flags}")
                moved.add(base)
            except FileNotFoundError:
                pass
            except OSError as e:
                if not is_enospc(e):
                    raise
        known = index.known()
        entries: dict[str, tuple[str, float, int]] = {}
        cur_dir = os.fspath(cur) + os.sep
        for name in os.listdir(cur):
            if name[:1] == ".":
                continue
            base = name.partition(":2,")[0]  # (L{split_name}, inline: once per file)
            old = known.get(base)
            if old is not None:  # a rename keeps the mtime and the size
                entries[base] = (name, old.mtime, old.size)
                continue
            if base in uids:
                # its UID is in the list: INTERNALDATE (the mtime) is read when a consumer
                # asks (L{dates}, as Dovecot's received date), not here: a first SELECT of a
                # folder copied with its list stats no message file
                mtime = UNKNOWN_MTIME
            else:
                try:  # (new UIDs go in order of mtime: read now)
                    mtime = os.stat(cur_dir + name).st_mtime
                except FileNotFoundError:
                    continue
            size = dovecot_wire_size(base) if ",W=" in base else None
            if size is None:
                # written by another program, maybe with bare LF line ends (,S= is then
                # the size on disk): measured once when asked (RFC 3501 §2.3.4: RFC822.SIZE
                # counts the CRLF form that is sent), not here: a first SELECT opens no file
                size = UNKNOWN_SIZE
            entries[base] = (name, mtime, size)
        saved_uidnext = uidnext
        if known:
            # a file under the base name of a message expunged since (our EXPUNGE leaves
            # it in the UID list until this sync; another program put the file back): a
            # new message, never its old UID (RFC 3501 §2.3.1.1)
            back = {uids[b]: b for b in entries if b in uids and b not in known}
            for uid in index.tombstones(back) if back else ():
                del uids[back[uid]]
                changed = True
        fresh = sorted(set(entries) - set(uids), key=lambda b: (entries[b][1], arrival_key(b)))
        for base in fresh:
            uids[base] = uidnext
            uidnext += 1
            changed = True
        for base in set(uids) - set(entries):
            del uids[base]
            changed = True
        saved = True
        if changed:
            try:
                uidlist.write(self.path, uidvalidity, uidnext, guid, uids)
            except OSError as e:
                if not is_enospc(e):
                    raise
                # disk full: the new UIDs are not saved, so nobody may see them (they could
                # go to other messages later); reading and deleting the rest go on
                saved = False
                uidnext = saved_uidnext
                for base in fresh:
                    del uids[base]
                    name, mtime, size = entries.pop(base)
                    unsaved.append(MessageEntry(0, base, name, size, mtime))
        modseq = 0
        for base, old in known.items():
            if base not in entries or uids.get(base) != old.uid:
                modseq = modseq or index.next_modseq()
                index.expunge(old.uid, modseq)
        added = []
        if not known and entries:  # the first sync: every entry is a row to add
            modseq = modseq or index.next_modseq()
            added = [
                (uids[base], base, name, size, mtime, modseq)
                for base, (name, mtime, size) in entries.items()
            ]
        for base, (name, mtime, size) in entries.items() if known else ():
            old = known.get(base)
            if old is None or old.uid != uids[base]:
                modseq = modseq or index.next_modseq()
                added.append((uids[base], base, name, size, mtime, modseq))
            elif old.filename != name:
                modseq = modseq or index.next_modseq()
                index.rename(old.uid, name, modseq)
        index.insert_many(added)
        index.adopt_arrivals(time.time())
        index.put("uidnext", uidnext)
        if saved:
            index.record(self._stamps(), started)
        else:
            index.forget_stamps()  # list the folder again next time, and try to save then
        return {b: uids[b] for b in moved if b in uids}

    def _own_change(self, index: FolderIndex, change: Callable[[], None]) -> _Snapshot | None:
        """Run C{change} (our own rename, unlink or link in C{cur/}); when the index was in
        step with the directories before it, it stays so, and no full sync is needed.

        @return: the process's snapshot of the folder when it was in step with the index
            and the directories before the change (L{_followed} brings it along)."""
        before = self._stamps()
        in_step = index.stamps() == before
        kept = self._in_step(index, before) if in_step else None
        change()
        if in_step:
            index.record(self._stamps(), now_ns())
        else:
            index.forget_stamps()
        return kept

    def _in_step(self, index: FolderIndex, stamps: Stamps) -> _Snapshot | None:
        """The kept snapshot when it holds the index's state and saw the directories with
        C{stamps} (read under the lock, before a change of ours)."""
        snapshot = _snapshots.get(self.path)
        if snapshot is None or snapshot.stamps != stamps:
            return None
        state = (index.uidvalidity, index.floor, index.highestmodseq)
        if (snapshot.uidvalidity, snapshot.floor, snapshot.highestmodseq) != state:
            return None
        return snapshot

    def _followed(
        self,
        snapshot: _Snapshot,
        index: FolderIndex,
        rows: list[tuple[Any, ...]],
        gone: list[tuple[int, int]],
        recent: frozenset[int] = frozenset(),
    ) -> _Snapshot:
        """L{_in_step} C{snapshot} after our own change (under the lock, in the index's
        transaction): C{rows} changed, C{gone} ((UID, MODSEQ)) expunged, C{recent} added;
        in step with the directories as they are now.  Kept once the index commits, so
        the other sessions' rescans need no lock (L{_unchanged})."""
        started = now_ns()
        changed = snapshot.then(index.highestmodseq, rows, gone)
        stamps = self._stamps()
        OWN.changed(os.fspath(self.path), stamps)
        return attrs.evolve(
            changed,
            uidnext=index.uidnext,
            stamps=stamps,
            verified_ns=started,
            index_ino=snapshot.index_ino,
            recent=snapshot.recent | recent,
        )

    def sizes(self, entries: Iterable[MessageEntry]) -> dict[str, int]:
        """The size with CRLF line ends (RFC 3501 §2.3.4 RFC822.SIZE, RFC 1939 §5 octets)
        of each of C{entries} whose size is L{UNKNOWN_SIZE}, by base name: what the
        process's snapshot or the index knows when a session measured it before, else
        measured now (the file read once, as Dovecot fills its cache's virtual size) and
        recorded in both.  The one place every consumer of a size (FETCH, SEARCH
        LARGER/SMALLER, SORT SIZE, STATUS DELETED-STORAGE, COPY's quota check, POP3) asks.
        Blocking: call it in a thread.  A message gone meanwhile is left out."""
        return self._learn("size", [e for e in entries if e.size == UNKNOWN_SIZE], self._measure)

    def dates(self, entries: Iterable[MessageEntry]) -> dict[str, float]:
        """The INTERNALDATE (the file's mtime, seconds since the epoch; RFC 3501 §2.3.3)
        of each of C{entries} whose date is L{UNKNOWN_MTIME} (indexed at a first sync
        without a C{stat}), by base name: what the process's snapshot or the index knows
        when a session read it before, else the file's C{stat} now (as Dovecot takes the
        received date lazily into its cache), recorded in both.  The one place every
        consumer of a date (FETCH INTERNALDATE, SEARCH BEFORE/ON/SINCE, SORT ARRIVAL and
        DATE's fallback, COPY and MOVE keeping it, the export) asks.  Blocking: call it
        in a thread.  A message gone meanwhile is left out."""
        wanted = [e for e in entries if e.mtime == UNKNOWN_MTIME]
        return self._learn("mtime", wanted, self._mtime)

    def _measure(self, entry: MessageEntry) -> int:
        fd = self.open_fd(entry)
        try:
            return measure_fd(fd)
        finally:
            os.close(fd)

    def _mtime(self, entry: MessageEntry) -> float:
        try:
            return os.stat(os.path.join(self._cur, entry.filename)).st_mtime
        except FileNotFoundError:
            return os.stat(self.open(entry)).st_mtime  # (renamed meanwhile: its flags)

    def _learn(
        self, field: str, wanted: list[MessageEntry], read: Callable[[MessageEntry], Any]
    ) -> dict[str, Any]:
        """L{sizes} and L{dates}: the C{field} of C{wanted} (unknown in these entries)
        from the kept snapshot, else the index (another process learned it: the snapshot
        takes it), else C{read} from the file and recorded in both (no MODSEQ: the
        message did not change); messages whose file is gone are left out.  Not recorded
        when the index is busy past its timeout (learned again later), nor in an index
        this would create (made without its state: the next scan rebuilds it)."""
        if not wanted:
            return {}
        found = _snapshots.known(self.path, field, wanted)
        rest = [e for e in wanted if e.base not in found]
        if rest:
            with suppress(sqlite3.Error):  # (busy past its timeout, corrupt: read)
                indexed = read_learned(self.path, field, [e.base for e in rest])
                if indexed:  # (another process learned them: our snapshot takes them too)
                    uids = [e.uid for e in rest if e.base in indexed]
                    _snapshots.learned(self.path, field, indexed, uids)
                    found.update(indexed)
        learned: dict[str, Any] = {}
        for entry in rest:
            if entry.base in found:
                continue
            try:
                learned[entry.base] = read(entry)
            except (OSError, MaildirError):
                continue  # expunged
        if learned:
            if os.path.exists(self._index_file):  # (not one made here, without its state)
                try:
                    with FolderIndex(self.path) as index:
                        index.set_learned(field, learned)
                except sqlite3.Error:
                    pass  # busy past its timeout: the values are still right, read again later
            uids = [e.uid for e in rest if e.base in learned]
            _snapshots.learned(self.path, field, learned, uids)
            found.update(learned)
        return found

    def changed_since(self, modseq: int) -> tuple[list[int], int]:
        """(UIDs expunged after C{modseq}, the index floor) for QRESYNC (RFC 7162 §3.2.5.2).

        When C{modseq} is below the floor (the index was rebuilt since), the expunges are
        unknown: the caller must treat every UID it does not see as vanished.
        """
        with self._indexed() as index:
            return index.expunged_since(modseq), index.floor

    def cached_parts(self, uids: list[int]) -> dict[int, CachedParts]:
        """The cached FETCH data (ENVELOPE, BODYSTRUCTURE, BODY) of C{uids}, by UID."""
        with FolderIndex(self.path) as index:
            return index.cached(uids)

    def cache_parts(self, parts: dict[tuple[int, str], CachedParts]) -> None:
        """Store computed FETCH data, keyed by (UID, base name); messages gone are skipped."""
        with FolderIndex(self.path) as index:
            for (uid, base), value in parts.items():
                index.cache(uid, base, value)

    def cached_headers(self) -> dict[int, tuple[str, bytes, str]]:
        """The header cache of the index (L{FolderIndex.headers}): {uid: (base, fields,
        decoded)}, read without taking the index's write lock."""
        return read_headers(self.path)

    def cache_headers(self, rows: list[tuple[int, str, bytes, str]]) -> None:
        """Keep (uid, base, fields, decoded) rows in the header cache
        (L{FolderIndex.cache_headers})."""
        if rows:
            with FolderIndex(self.path) as index:
                index.cache_headers(rows)

    def cached_sortkeys(self, columns: tuple[str, ...]) -> dict[int, tuple[Any, ...]]:
        """The SORT keys kept in the index (L{twistedmail.index.read_sortkeys}): {uid:
        (base, value per column)}, read without taking the index's write lock."""
        return read_sortkeys(self.path, columns)

    def cache_sortkeys(self, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Keep (uid, base, value per column) rows of parsed SORT keys
        (L{FolderIndex.cache_sortkeys})."""
        if rows:
            with FolderIndex(self.path) as index:
                index.cache_sortkeys(columns, rows)

    # keywords (dovecot-keywords)

    def keywords(self) -> dict[str, str]:
        """The folder's keyword map: {letter: name}, C{"a"} for index 0 (empty when the
        C{dovecot-keywords} file is absent).

        Read again only when the file's mtime, size or inode changed since the process
        last read it, or it had changed within L{DIRTY_NS} of that read (an edit in the
        same mtime tick): a rescan costs one C{stat}."""
        try:
            st = os.stat(self._keywords_file)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = _keyword_maps.get(self.path)
        if cached is not None and cached[0] == stamp and cached[1] - stamp[0] >= DIRTY_NS:
            return dict(cached[2])
        started = now_ns()
        table = {chr(ord("a") + i): name for i, name in keywordfile.read(self.path).items()}
        if len(_keyword_maps) >= KEYWORD_MAPS:
            _keyword_maps.clear()
        _keyword_maps[self.path] = (stamp, started, table)
        return dict(table)

    def keyword_letters(self, names: list[str] | tuple[str, ...]) -> str:
        """The info letters for keyword C{names}, giving each unknown valid name the lowest free
        index and rewriting C{dovecot-keywords} (tmp, fsync, rename) under the folder lock.

        Names compare case-insensitively (the first spelling is kept); names that are not
        L{is_keyword} atoms, or find all 26 letters taken, get no letter (Dovecot keeps those
        only in its index; this store has none, so they are not kept).
        @return: the letters, sorted, without duplicates.
        """
        wanted = [n for n in names if is_keyword(n)]
        if not wanted:
            return ""
        with self._locked():
            table = keywordfile.read(self.path)
            by_lower = {name.lower(): i for i, name in table.items()}
            letters = set()
            changed = False
            for name in wanted:
                index = by_lower.get(name.lower())
                if index is None:
                    free = [i for i in range(MAX_KEYWORDS) if i not in table]
                    if not free:
                        continue
                    index = free[0]
                    table[index] = name
                    by_lower[name.lower()] = index
                    changed = True
                letters.add(chr(ord("a") + index))
            if changed:
                keywordfile.write(self.path, table)
        return "".join(sorted(letters))

    # messages

    def add(
        self,
        data: bytes,
        flags: str = "",
        mtime: float | None = None,
        headers: tuple[bytes, str] | None = None,
    ) -> tuple[int, int]:
        """APPEND: store C{data} in C{cur/} with C{flags}, durably; return the folder's
        UIDVALIDITY and the message's new UID, read under the lock (the folder may have
        been deleted and created again since a session selected it: RFC 4315 §3 APPENDUID
        names the UIDVALIDITY the UID belongs to).  Index it with a new MODSEQ, and
        C{headers}, when given, in the header cache: see L{FolderIndex.headers}.

        The folder is listed only when the index is not in step with it (another program
        or process changed it, or it was never synced): then the full sync of L{scan} runs
        first, so the files waiting in C{new/} get their UIDs before this one and the UID
        list gets one line, not a rewrite (an APPEND to a folder no session has open needs
        no scan before it).

        @raise FolderGoneError: the folder is not there (APPEND's C{NO [TRYCREATE]})."""
        if not self.exists():
            raise FolderGoneError("no such folder")
        followed: list[_Snapshot] = []
        with self._indexed(followed) as index:
            stamps = self._stamps()
            if index.stamps() != stamps:
                index.add_recent(self._sync(index, []).values())  # (as a scan would)
                stamps = self._stamps()
            in_step = index.stamps() == stamps
            kept = self._in_step(index, stamps) if in_step else None
            base = write_durably(self.path / "cur", data, flags, mtime)
            try:
                if in_step and index.uidvalidity and uidlist.append(self.path, index.uidnext, base):
                    # the list is as the index last saw it: its UIDs are the index's
                    uidvalidity, uidnext = index.uidvalidity, index.uidnext
                else:
                    uidvalidity, uidnext, guid, uids = uidlist.read(self.path)
                    if uidvalidity == 0:
                        uidvalidity, guid = uidlist.new_uidvalidity(self.path), uuid.uuid4().hex
                    uids[base] = uidnext
                    uidlist.write(self.path, uidvalidity, uidnext + 1, guid, uids)
                uid = uidnext
            except BaseException:
                # no UID, no message: APPEND fails whole (nothing half-written is left)
                with suppress(OSError):
                    os.unlink(self.path / "cur" / f"{base}:2,{normalize_flags(flags)}")
                    fsync_dir(self.path / "cur")
                raise
            index.add_recent([uid])  # RFC 3501 §2.3.2: new in this mailbox
            if in_step and index.uidvalidity == uidvalidity:
                name = f"{base}:2,{normalize_flags(flags)}"
                st = os.stat(self.path / "cur" / name)
                modseq = index.next_modseq()
                size = wire_size(data)
                index.insert(IndexedMessage(uid, base, name, size, st.st_mtime, modseq))
                if headers is not None:
                    index.cache_headers([(uid, base, *headers)])
                index.put("uidnext", uidnext + 1)
                index.record(self._stamps(), now_ns())
                if kept is not None:
                    row = (uid, base, name, size, st.st_mtime, modseq)
                    followed.append(self._followed(kept, index, [row], [], frozenset([uid])))
            else:
                index.forget_stamps()  # the next scan lists the folder and indexes it
        return uidvalidity, uid

    def locate(self, base: str) -> Path | None:
        """The current path of message C{base} (its flags may have changed), or C{None}."""
        cur = self.path / "cur"
        try:
            names = os.listdir(cur)
        except FileNotFoundError:
            return None
        for name in names:
            if split_name(name)[0] == base:
                return cur / name
        new = self.path / "new" / base
        return new if new.exists() else None

    def open(self, entry: MessageEntry) -> Path:
        """The path to read C{entry} from (relocated if another session renamed it).

        @raise MaildirError: when the message is gone (expunged elsewhere).
        """
        path = self.path / "cur" / entry.filename
        if path.exists():
            return path
        found = self.locate(entry.base)
        if found is None:
            raise MaildirError("message no longer exists")
        return found

    def open_fd(self, entry: MessageEntry) -> int:
        """A file descriptor (read-only, the caller closes it) of C{entry}'s file: where the
        entry says first, with no stat before; where L{open} finds it when another session
        renamed it (flags) meanwhile.  The one way L{read}, L{sizes} and POP3 RETR open it.

        @raise MaildirError: when the message is gone (expunged elsewhere).
        """
        flags = os.O_RDONLY | os.O_CLOEXEC
        try:
            return os.open(os.path.join(self._cur, entry.filename), flags)
        except FileNotFoundError:
            try:
                return os.open(self.open(entry), flags)
            except FileNotFoundError:
                raise MaildirError("message no longer exists") from None

    def read(self, entry: MessageEntry) -> bytes:
        """The whole message with CRLF line ends (RFC 5322 §2.1): as stored, or with every
        bare LF made CRLF (a file Dovecot or another program wrote with LF line ends).

        @raise MaildirError: when it is gone.
        """
        fd = self.open_fd(entry)
        try:
            data = read_fd(fd)
        finally:
            os.close(fd)
        return to_crlf(data)

    def set_flags(self, entry: MessageEntry, letters: str) -> MessageEntry:
        """Rename the message so its info carries exactly C{letters}; return the new entry.

        @raise MaildirError: when the message is gone.
        """
        done, _ = self.set_flags_many([(entry, letters)])
        if not done:
            raise MaildirError("message no longer exists")
        return done[0]

    def set_flags_many(
        self, plan: list[tuple[MessageEntry, str]], unchangedsince: int | None = None
    ) -> tuple[list[MessageEntry], list[MessageEntry]]:
        """Rename each message so its info carries exactly its letters (L{change_flags_many}
        with a change that replaces every letter)."""
        return self.change_flags_many(
            [(entry, FlagChange(add=letters, remove=ALL_LETTERS)) for entry, letters in plan],
            unchangedsince,
        )

    def current_name(self, entry: MessageEntry) -> str:
        """The message's file name as it is now (its flags changed by anyone), e.g. for COPY.

        @raise MaildirError: when the message is gone.
        """
        return self.open(entry).name

    def change_flags_many(
        self, plan: list[tuple[MessageEntry, FlagChange]], unchangedsince: int | None = None
    ) -> tuple[list[MessageEntry], list[MessageEntry]]:
        """STORE: apply each L{FlagChange} to the message's flags as they are on disk now
        (not as the caller last saw them: DESIGN §6, a delta under the lock, so another
        session's, POP3's or a hand rename's change survives), all under one lock with one
        new MODSEQ (RFC 7162 §3.1.1).  The renames are done when this returns (a kill -9
        after STORE's OK keeps them) but C{cur/} is not fsynced (Dovecot's C{mail_fsync =
        optimized}: a power loss may undo the last flag changes).

        @param unchangedsince: RFC 7162 §3.1.3 UNCHANGEDSINCE: a message whose MODSEQ is now
            larger is left alone and returned as modified.
        @return: (the renamed or unchanged entries, with their file name and MODSEQ as they
            are now; the entries that failed the UNCHANGEDSINCE test).  Messages gone
            meanwhile are in neither.
        """
        done: list[MessageEntry] = []
        modified: list[MessageEntry] = []
        followed: list[_Snapshot] = []
        with self._indexed(followed) as index:
            current = index.modseqs(e.uid for e, _ in plan)
            renamed: list[tuple[int, str]] = []
            listing: dict[str, str] | None = None

            def find(entry: MessageEntry) -> Path | None:
                nonlocal listing
                path = self.path / "cur" / entry.filename
                if os.path.lexists(path):
                    return path
                if listing is None:  # list cur/ once, not once per stale entry
                    listing = {split_name(n)[0]: n for n in os.listdir(self.path / "cur")}
                name = listing.get(entry.base)
                if name is not None and os.path.lexists(self.path / "cur" / name):
                    return self.path / "cur" / name
                return self.locate(entry.base)

            def rename_all() -> None:
                nonlocal listing
                for entry, change in plan:
                    seen = current.get(entry.uid, entry.modseq)
                    if unchangedsince is not None and seen > unchangedsince:
                        modified.append(entry._replace(modseq=seen))
                        continue
                    for _attempt in range(5):  # renamed by someone without our lock: retry
                        path = find(entry)
                        if path is None:
                            break
                        letters = change.apply(split_name(path.name)[1])
                        new_name = f"{entry.base}:2,{letters}"
                        if path.name == new_name and path.parent.name == "cur":
                            done.append(entry._replace(filename=new_name, modseq=seen))
                            break
                        OWN.expect(os.fspath(path.parent), path.name, LEFT)
                        OWN.expect(self._cur, new_name, ARRIVED)
                        try:
                            os.rename(path, self.path / "cur" / new_name)
                        except FileNotFoundError:  # (its event looks like ours)
                            OWN.distrust(os.fspath(self.path))
                            listing = None
                            continue
                        renamed.append((entry.uid, new_name))
                        done.append(entry._replace(filename=new_name))
                        break

            kept = self._own_change(index, rename_all)
            if renamed:
                # the flags are the file names, renamed before OK: a kill -9 keeps them; not
                # fsynced (Dovecot's mail_fsync = optimized: a power loss may undo the last
                # flag changes, never a message or a UID)
                modseq = index.next_modseq()
                names = dict(renamed)
                for uid, name in renamed:
                    if uid in current:
                        index.rename(uid, name, modseq)
                done = [e._replace(modseq=modseq) if e.uid in names else e for e in done]
                if kept is not None:
                    rows = [tuple(e) for e in done if e.uid in names and e.uid in current]
                    followed.append(self._followed(kept, index, rows, []))
        return done, modified

    def remove(self, entry: MessageEntry) -> None:
        """Delete the message file (EXPUNGE, POP3 QUIT); a missing file is not an error."""
        self.remove_many([entry])

    def remove_many(self, entries: list[MessageEntry], flagged: str = "") -> list[MessageEntry]:
        """Delete the message files under one lock, each expunge recorded with one new
        MODSEQ (RFC 7162 §3.2.5.2 keeps the UIDs for VANISHED); missing files are skipped.
        The files are unlinked when this returns (a kill -9 after EXPUNGE's OK keeps the
        expunge) but C{cur/} is not fsynced (Dovecot's C{mail_fsync = optimized}: a power
        loss may bring the last expunged messages back, with their UIDs).

        @param flagged: an info letter (C{"T"} for EXPUNGE, RFC 3501 §6.4.3): only messages
            whose file carries it now are removed (another session may have cleared it).
        @return: the entries removed.
        """
        removed: list[MessageEntry] = []
        followed: list[_Snapshot] = []
        with self._indexed(followed) as index:
            indexed = index.modseqs(e.uid for e in entries)
            modseq = 0

            def unlink_all() -> None:
                nonlocal modseq
                for entry in entries:
                    try:
                        path = self.open(entry)
                        if flagged and flagged not in split_name(path.name)[1]:
                            continue
                        OWN.expect(os.fspath(path.parent), path.name, LEFT)
                        os.unlink(path)
                    except (FileNotFoundError, MaildirError) as e:
                        if isinstance(e, FileNotFoundError):  # (its event looks like ours)
                            OWN.distrust(os.fspath(self.path))
                        continue
                    removed.append(entry)
                    if entry.uid in indexed:
                        modseq = modseq or index.next_modseq()
                        index.expunge(entry.uid, modseq)

            kept = self._own_change(index, unlink_all)
            if removed:
                # unlinked before OK (a kill -9 keeps the expunge), not fsynced: as Dovecot's
                # mail_fsync = optimized, a power loss may bring the last expunged files back
                if kept is not None:
                    gone = [(e.uid, modseq) for e in removed if e.uid in indexed]
                    followed.append(self._followed(kept, index, [], gone))
        return removed
