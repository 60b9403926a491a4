"""A selected IMAP mailbox over one Maildir folder (RFC 3501 §2.3, §6.4).

L{MaildirMailbox} implements Twisted's C{IMailbox}, C{ISearchableMailbox}, C{IMessageCopier}
and C{ICloseableMailbox}.  It keeps the session's view of the folder: the messages in
sequence-number order (RFC 3501 §2.3.1.2), the C{\\Recent} UIDs this session claimed, and
the messages expunged by someone else that the client has not been told about yet.  New mail
is appended to the view at any time (EXISTS may be sent at any time); expunges found by a
rescan only renumber the view when the server calls L{MaildirMailbox.take_expunged} at a
moment RFC 3501 §7.4.1 allows (not during FETCH, STORE or SEARCH).

UIDVALIDITY and UIDs come from the folder's C{dovecot-uidlist} (stable across restarts,
RFC 3501 §2.3.1.1).  Flags are Maildir info letters (C{maildir.IMAP_TO_LETTER}); keywords are
the letters a..z named by the folder's C{dovecot-keywords} file (read with every scan), so
FLAGS lists them and PERMANENTFLAGS adds C{\\*} while a letter is free (RFC 3501 §7.1).
Disk work runs through C{run_in_thread}.  SORT (RFC 5256) reuses the search, then orders the
matches in a thread by the keys of L{twistedmail.imap.sort}.

The folder's index (L{twistedmail.index}, kept by L{twistedmail.maildir.Folder}) answers the
scans, so opening and rescanning a folder that did not change lists no directory and opens
no message; a rescan asks only for what changed since the session's HIGHESTMODSEQ.  Each
message carries its MODSEQ (RFC 7162 §3.1.1), which FETCH MODSEQ, STORE UNCHANGEDSINCE,
SEARCH MODSEQ and QRESYNC use; the index also caches ENVELOPE and BODYSTRUCTURE.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail.auth import RunInThread
from twistedmail.imap.grammar import in_set
from twistedmail.imap.message import (
    MaildirMessage,
    imap_flags,
    parse_internaldate,
)
from twistedmail.imap.search import (
    cached_fields,
    search_view,
    sort_entries,
)
from twistedmail.imap.searchkeys import FLAG_KEYS, compile_search, flag_search
from twistedmail.index import CachedParts
from twistedmail.maildir import (
    IMAP_TO_LETTER,
    LEARNED_FIELDS,
    MAX_KEYWORDS,
    UNKNOWN_MTIME,
    ChangeNotifier,
    FlagChange,
    Folder,
    FolderGoneError,
    MessageEntry,
    ScanResult,
    fill_learned,
    index_of,
    is_enospc,
    positions,
    split_name,
    to_crlf,
)

log = Logger(namespace="twistedmail.imap.mailbox")

SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]
"""The system flags in FLAGS and PERMANENTFLAGS of every folder (RFC 3501 §7.2.6); the folder's
keywords follow them."""


REPLACEABLE_LETTERS = "".join(IMAP_TO_LETTER.values()) + "abcdefghijklmnopqrstuvwxyz"
"""The info letters STORE FLAGS replaces: the system flags and keywords IMAP can express
(RFC 3501 §6.4.6); others (C{P}, passed) are kept."""


INLINE_FLAG_SEARCH = 500
"""A view of up to this many messages is searched for one flag key on the reactor thread
(a pass over 500 file names takes about what a thread hop costs, ~0.1 ms here); a larger
one in a thread (100,000 take 15 ms)."""

NO_UIDS: frozenset[int] = frozenset()
"""The empty UID set every session's L{MaildirMailbox} starts its sets with (one object)."""


class StorageFullError(imap4.MailboxException):
    """The disk (or the user's file system quota) is full: C{NO [OVERQUOTA]} (RFC 5530 §3,
    RFC 9208 §4.3.1), nothing stored."""

    code = b"OVERQUOTA"


def _storage(f: Callable[..., Any]) -> Callable[..., Any]:
    """Run C{f} (in a thread); a full disk becomes L{StorageFullError}."""

    def run(*args: Any) -> Any:
        try:
            return f(*args)
        except OSError as e:
            if is_enospc(e):
                raise StorageFullError("Insufficient storage") from None
            raise

    return run


def letters_for(flags: Sequence[str]) -> str:
    """IMAP flags -> Maildir info letters; C{\\Recent} and keywords are dropped."""
    by_lower = {k.lower(): v for k, v in IMAP_TO_LETTER.items()}
    return "".join(by_lower[f.lower()] for f in flags if f.lower() in by_lower)


def keyword_names(flags: Sequence[str]) -> list[str]:
    """The keywords among IMAP C{flags} (anything not starting with a backslash)."""
    return [f for f in flags if not f.startswith("\\")]


def _scan(
    folder: Folder, since: int | None = None, claim_recent: bool = False
) -> tuple[ScanResult, dict[str, str]]:
    """A folder scan (all messages, or those changed after MODSEQ C{since}; with
    C{claim_recent}, this session takes the C{\\Recent} messages) and its keyword map
    ({letter: name}), in one thread hop."""
    return folder.scan(since, claim_recent), folder.keywords()


def _add_and_scan(
    folder: Folder,
    data: bytes,
    letters: str,
    names: list[str],
    mtime: float | None,
    since: int | None,
    claim_recent: bool,
) -> tuple[tuple[int, int], tuple[ScanResult, dict[str, str]] | None]:
    """APPEND to the selected folder in one thread hop: the message stored (as
    L{_add_with_keywords}), then L{_scan} of what changed, or C{None} when the scan failed
    in any way (the caller's own rescan then meets the failure and reports it as a rescan
    does: the folder deleted or made again, its UID list locked too long)."""
    added: tuple[int, int] = _storage(_add_with_keywords)(folder, data, letters, names, mtime)
    try:
        return added, _scan(folder, since, claim_recent)
    except Exception:  # (the message is stored: APPEND must not fail for the scan's sake)
        return added, None


def _open_scan(
    folder: Folder, claim_recent: bool, make: Callable[[], None] | None = None
) -> tuple[ScanResult, dict[str, str]] | None:
    """Opening a folder in one thread hop: C{make} first (the INBOX made when missing),
    then C{None} when the folder is not there, else L{_scan} of every message."""
    if make is not None:
        make()
    if not folder.exists():
        return None
    return _scan(folder, None, claim_recent)


def _store_letters(
    folder: Folder, flags: Sequence[str], create: bool
) -> tuple[str, dict[str, str]]:
    """IMAP C{flags} -> info letters of C{folder}, plus its keyword map afterwards.

    With C{create}, unknown keywords get a letter (STORE +FLAGS/FLAGS, APPEND, COPY);
    without, they are ignored (STORE -FLAGS cannot remove what has no letter)."""
    letters = letters_for(flags)
    names = keyword_names(flags)
    if create:
        letters += folder.keyword_letters(names)
        return letters, folder.keywords()
    table = folder.keywords()
    wanted = {n.lower() for n in names}
    letters += "".join(c for c, n in table.items() if n.lower() in wanted)
    return letters, table


def _current_flags(folder: Folder, entry: MessageEntry) -> tuple[str, list[str]]:
    """The system letters and keyword names of C{entry} as its file is named now.

    @raise MaildirError: when it is gone."""
    letters = split_name(folder.current_name(entry))[1]
    table = folder.keywords()
    names = [table[c] for c in letters if c in table]
    return "".join(c for c in letters if c.isupper()), names


def _add_with_keywords(
    folder: Folder,
    data: bytes,
    letters: str,
    keywords: Sequence[str],
    mtime: float | None,
    make: Callable[[], None] | None = None,
) -> tuple[int, int]:
    """L{Folder.add} with C{keywords} given letters first: (UIDVALIDITY, UID).  C{make}
    first when given (the INBOX made when missing, L{MaildirMailbox.make})."""
    if make is not None:
        make()
    if keywords:
        letters += folder.keyword_letters(list(keywords))
    return folder.add(data, letters, mtime, headers=cached_fields(to_crlf(data)))


def _merged(messages: imap4.MessageSet, last: int) -> list[tuple[int, int]]:
    """The ranges of a sequence or UID set (C{*} standing for C{last}, RFC 3501 §9), each
    low to high, sorted and merged so that no number is in two."""
    ranges = []
    for low, high in messages.ranges:
        low = last if low is None else low
        high = last if high is None else high
        ranges.append((low, high) if low <= high else (high, low))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _uid_of(entry: MessageEntry) -> int:
    return entry.uid


@implementer(
    imap4.IMailbox, imap4.ISearchableMailbox, imap4.IMessageCopier, imap4.ICloseableMailbox
)
class MaildirMailbox:
    """One folder as seen by one IMAP session.

    @param name: the IMAP name (C{"INBOX"}, C{"Lists.Work"}).
    @param readwrite: SELECT (True) or EXAMINE/STATUS (False), RFC 3501 §6.3.1-2.
    """

    def __init__(
        self,
        name: str,
        folder: Folder,
        notifier: ChangeNotifier,
        run_in_thread: RunInThread,
        readwrite: bool = True,
    ) -> None:
        self.name = name
        self.folder = folder
        self.path = folder.path
        self.notifier = notifier
        self.run_in_thread = run_in_thread
        self.readwrite = readwrite
        self.uidvalidity = 0
        self.uidnext = 1
        self._view: list[MessageEntry] = []
        self._announced = 0  # how many of _view the client knows (its last EXISTS)
        self.keywords: dict[str, str] = {}
        # UID sets, empty in most sessions: they start as the one shared empty frozenset
        # and are only ever rebound, never changed in place (issue 10: three empty sets were
        # 650 bytes per idle session)
        self._gone: frozenset[int] | set[int] = NO_UIDS
        self._recent: frozenset[int] | set[int] = NO_UIDS
        self._unapplied_recent: frozenset[int] | set[int] = NO_UIDS
        self._highest = 0
        self.highestmodseq = 0
        self.floor = 0
        self.modified: list[int] = []
        self.expunged_uids: list[int] = []
        self.searched_modseq = False
        self._generation = 0
        self._listeners: list[Any] = []
        self._refreshing: Deferred[None] | None = None
        self._dirty = False
        self._notifying = False
        self._watching = False
        self._closed = False
        # the keyword map of the last FLAGS the client was sent (L{flags_announced}; maps are
        # rebound, never changed in place, so holding one costs no copy)
        self._told_keywords: dict[str, str] = self.keywords
        self.make: Callable[[], None] | None = None
        """Run before L{append} stores (in its thread hop): the account's INBOX made when
        missing, for an APPEND target that was not opened (L{MaildirAccount.append_target})."""

    # opening and rescanning

    async def open(self, make: Callable[[], None] | None = None) -> MaildirMailbox | None:
        """First scan of the folder, after C{make} (the INBOX made when missing), in one
        thread hop; C{None} when the folder is not there.

        @raise MaildirError: the folder went away during the scan."""
        # RFC 3501 §2.3.2: SELECT claims the \Recent messages; EXAMINE and STATUS only count
        opened = await self.run_in_thread(_open_scan, self.folder, self.readwrite, make)
        if opened is None:
            return None
        scan, self.keywords = opened
        self._view = list(scan.messages)
        self._announced = len(self._view)  # SELECT's EXISTS
        self._recent = frozenset(scan.recent) if scan.recent else NO_UIDS
        self._highest = max((e.uid for e in scan.messages), default=0)
        self.uidvalidity, self.uidnext = scan.uidvalidity, scan.uidnext
        self.highestmodseq, self.floor = scan.highestmodseq, scan.floor
        return self

    async def refresh(self) -> None:
        """Rescan the folder; new mail -> C{newMessages}, other flags -> C{flagsChanged},
        expunges are kept until L{take_expunged}.  Concurrent calls share one scan loop."""
        if self._refreshing is not None:
            self._dirty = True
            waiter: Deferred[None] = Deferred()

            def wake(result: object) -> object:
                waiter.callback(None)
                return result

            self._refreshing.addBoth(wake)
            await waiter
            return
        done: Deferred[None] = Deferred()
        self._refreshing = done
        try:
            self._dirty = True
            while self._dirty and not self._closed:
                self._dirty = False
                generation = self._generation
                since = self.highestmodseq or None
                scan, keywords = await self.run_in_thread(_scan, self.folder, since, self.readwrite)
                if scan.uidvalidity != self.uidvalidity:
                    # deleted and made again (or its UID list lost): none of the session's
                    # UIDs name these messages (RFC 3501 §2.3.1.1)
                    raise FolderGoneError("the folder was made again")
                if generation != self._generation:
                    self._dirty = True  # our own change raced the scan: rescan
                    self._unapplied_recent |= scan.recent  # claimed: keep them for us
                    continue
                self._apply(scan, keywords)
        finally:
            self._refreshing = None
            done.callback(None)

    def _apply(self, scan: ScanResult, keywords: dict[str, str] | None = None) -> None:
        if keywords is not None and keywords != self.keywords:
            self.keywords = keywords
            for listener in list(self._listeners):
                if hasattr(listener, "keywordsChanged"):
                    listener.keywordsChanged()
        if not scan.full and not scan.messages and not scan.expunged:
            # nothing changed (the common rescan): no pass over the view
            self.uidnext = max(self.uidnext, scan.uidnext)
            self.highestmodseq = max(self.highestmodseq, scan.highestmodseq)
            self.floor = scan.floor
            return
        # a full scan lists every message; a delta (RFC 7162 CHANGEDSINCE semantics) only
        # those changed after our HIGHESTMODSEQ, and the UIDs expunged after it
        on_disk = {e.uid: e for e in scan.messages}
        if scan.full:
            position = {e.uid: i for i, e in enumerate(self._view) if e.uid not in self._gone}
            vanished = set(position) - set(on_disk)
        else:  # only the UIDs named, found in the view (in UID order) by bisection
            position = {}
            view = self._view
            for uid in [*on_disk, *scan.expunged]:
                at = bisect.bisect_left(view, uid, key=_uid_of)
                if at < len(view) and view[at].uid == uid and uid not in self._gone:
                    position[uid] = at
            vanished = set(scan.expunged) & set(position)
        changed: dict[int, list[str]] = {}
        if vanished:
            self._gone = self._gone | vanished
        newly_gone = bool(vanished)
        for uid, found in on_disk.items():
            i = position.get(uid)
            if i is None or uid in vanished:
                continue
            entry = self._view[i]
            if found.filename != entry.filename or found.modseq != entry.modseq:
                self._view[i] = found
                if found.flags != entry.flags:
                    changed[i + 1] = self._flags(found)
        new = [e for e in scan.messages if e.uid > self._highest]
        self.uidnext = max(self.uidnext, scan.uidnext)
        self.highestmodseq = max(self.highestmodseq, scan.highestmodseq)
        self.floor = scan.floor
        if new:
            self._view.extend(new)
            self._highest = new[-1].uid
            recent = scan.recent | self._unapplied_recent
            self._unapplied_recent = NO_UIDS
            self._recent = self._recent | {u for u in recent if u in on_disk} or NO_UIDS
        for listener in list(self._listeners):
            if new:
                listener.newMessages(len(self._view), len(self._recent))
            if changed:
                listener.flagsChanged(changed)
            if newly_gone and hasattr(listener, "expungesPending"):
                listener.expungesPending()

    def announce(self) -> int | None:
        """The client is sent C{* n EXISTS} now: every message of the view is known to it
        from here on.  @return: the count to send, or C{None} when the client has it."""
        if self._announced == len(self._view):
            return None
        self._announced = len(self._view)
        return self._announced

    def take_expunged(self) -> list[int]:
        """Renumber the view for messages expunged elsewhere; return the sequence numbers to
        send as C{* n EXPUNGE}, in order (each already adjusted, RFC 3501 §7.4.1).

        A message the client was never told of (no EXISTS covered it yet) is dropped from
        the view silently: an EXPUNGE (or VANISHED, RFC 7162 §3.2.10) naming it would be a
        number above the client's count, which desynchronises it (RFC 3501 §5.2)."""
        self.expunged_uids = []
        if not self._gone:
            return []
        out: list[int] = []
        kept: list[MessageEntry] = []
        announced = self._announced
        for i, entry in enumerate(self._view):
            if entry.uid in self._gone:
                if i < self._announced:
                    out.append(i + 1 - len(out))
                    self.expunged_uids.append(entry.uid)
                    announced -= 1
            else:
                kept.append(entry)
        self._announced = announced
        self._view = kept
        self._recent = self._recent & {e.uid for e in kept} or NO_UIDS
        self._gone = NO_UIDS
        return out

    def _changed(self) -> None:
        """Tell other sessions (and POP3) that this folder changed."""
        self._generation += 1
        self._notifying = True
        try:
            self.notifier.changed(self.path)
        finally:
            self._notifying = False

    def _on_notice(self) -> None:
        if self._notifying or self._closed:
            return
        Deferred.fromCoroutine(self.refresh()).addErrback(self._rescan_failed)

    def _rescan_failed(self, failure: Failure) -> None:
        """A rescan on a change notice failed: a folder deleted (or made again) under the
        session is told to the listeners (an idling session says BYE at once), not logged."""
        if failure.check(FolderGoneError) and not self._closed:
            for listener in list(self._listeners):
                if hasattr(listener, "mailboxDeleted"):
                    listener.mailboxDeleted()
            return
        log.failure("rescan of {path} failed", failure, path=str(self.path))

    # IMailboxInfo / IMailbox

    def getFlags(self) -> list[str]:
        """FLAGS (RFC 3501 §7.2.6): the system flags, then the folder's keywords."""
        return list(SYSTEM_FLAGS) + [self.keywords[c] for c in sorted(self.keywords)]

    def flags_announced(self) -> list[str]:
        """L{getFlags} as the client is sent them now in C{* FLAGS}: from here on it knows
        the folder's keywords as of now (RFC 3501 §7.2.6)."""
        self._told_keywords = self.keywords
        return self.getFlags()

    def knows_keywords(self, flags: Sequence[str]) -> bool:
        """Whether every keyword among C{flags} (a FETCH response's) was in the last
        C{* FLAGS} the client was sent (L{flags_announced}).  RFC 3501 §7.2.6: a client must
        not see a keyword in FETCH before FLAGS lists it; our map may have grown since (a
        rescan after another session's or process's STORE, or this session's STORE)."""
        told = self._told_keywords
        return all(f[:1] == "\\" or f in told.values() for f in flags)

    def permanent_flags(self) -> list[str]:
        """PERMANENTFLAGS (RFC 3501 §7.1): L{getFlags}, and C{\\*} (new keywords may be
        created) while the folder has a free keyword letter."""
        flags = self.getFlags()
        if len(self.keywords) < MAX_KEYWORDS:
            flags.append("\\*")
        return flags

    def _flags(self, entry: MessageEntry) -> list[str]:
        return imap_flags(entry.flags, entry.uid in self._recent, self.keywords)

    def getHierarchicalDelimiter(self) -> str:
        return "."

    def getUIDValidity(self) -> int:
        return self.uidvalidity

    def getUIDNext(self) -> int:
        return self.uidnext

    def getUID(self, message: int) -> int:
        return self._view[message - 1].uid

    def getMessageCount(self) -> int:
        return len(self._view)

    def sequence_of(self, uid: int) -> int | None:
        """The sequence number of C{uid} in the view, found by bisection (the view is in
        UID order), or C{None}; as a map of every UID of the view would answer."""
        at = index_of(self._view, uid)
        return None if at is None else at + 1

    def getRecentCount(self) -> int:
        return len(self._recent)

    def modseq_of(self, seq: int) -> int:
        """The MODSEQ of message C{seq} as the session knows it (RFC 7162 §3.1.4.1)."""
        return self._view[seq - 1].modseq

    def getHighestModSeq(self) -> int:
        """HIGHESTMODSEQ (RFC 7162 §3.1.2.1) as of the last scan or own change."""
        return self.highestmodseq

    def getUnseenCount(self) -> int:
        return sum(1 for e in self._view if "S" not in e.flags)

    def first_unseen(self) -> int | None:
        """Sequence number of the first message without C{\\Seen} (SELECT's UNSEEN code)."""
        for i, e in enumerate(self._view):
            if "S" not in e.flags:
                return i + 1
        return None

    def isWriteable(self) -> bool:
        return self.readwrite

    def destroy(self) -> None:
        raise imap4.MailboxException("use DELETE")

    def requestStatus(self, names: Sequence[str]) -> dict[str, int]:
        """STATUS items (RFC 3501 §6.3.10, HIGHESTMODSEQ of RFC 7162 §3.1.2.2) from the
        last scan."""
        wanted = [n for n in names if n.upper() != "HIGHESTMODSEQ"]
        status: dict[str, int] = imap4.statusRequestHelper(self, wanted)
        out = {}
        for n in names:
            out[n] = self.highestmodseq if n.upper() == "HIGHESTMODSEQ" else status[n]
        return out

    def addListener(self, listener: Any) -> None:
        self._listeners.append(listener)
        if not self._watching:
            self._watching = True
            self.notifier.subscribe(self.path, self._on_notice)

    def removeListener(self, listener: Any) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
        if not self._listeners and self._watching:
            self._watching = False
            self.notifier.unsubscribe(self.path, self._on_notice)

    def close(self) -> None:
        """ICloseableMailbox: stop watching the folder (CLOSE, re-SELECT, logout)."""
        self._closed = True
        self._listeners.clear()
        if self._watching:
            self._watching = False
            self.notifier.unsubscribe(self.path, self._on_notice)

    # APPEND and COPY into this folder

    def addMessage(
        self, message: Any, flags: Sequence[str] | None = (), date: bytes | str | None = None
    ) -> Deferred[int]:
        """APPEND (RFC 3501 §6.3.11): store durably, return the new UID.  C{flags} may be
        C{None} (no flag list); C{date} is an RFC 3501 date-time or C{None} (now)."""
        return Deferred.fromCoroutine(self.append(message, flags or (), date)).addCallback(
            lambda added: added[1]
        )

    async def append(
        self, message: Any, flags: Sequence[str], date: bytes | str | None
    ) -> tuple[int, int]:
        """L{addMessage}, returning the folder's UIDVALIDITY with the UID (RFC 4315 §3
        APPENDUID): the folder's as it is now, which is not the session's when another
        session deleted and created it again since the SELECT."""
        data = message if isinstance(message, bytes) else message.read()
        mtime = None
        if date is not None:
            mtime = parse_internaldate(date.encode() if isinstance(date, str) else date)
        added: tuple[int, int] = await self.run_in_thread(
            _storage(_add_with_keywords),
            self.folder,
            data,
            letters_for(flags),
            keyword_names(flags),
            mtime,
            self.make,
        )
        self._changed()
        return added

    async def append_seen(
        self, message: bytes, flags: Sequence[str], date: bytes | str | None
    ) -> tuple[int, int, bool]:
        """L{append} to this, the session's selected mailbox, with the rescan that shows the
        client its new message (EXISTS before the tagged OK) in the same thread hop: one hop
        instead of two (issue 10).  The third value says whether that rescan was applied;
        when not (a rescan of the session ran meanwhile, our own change raced it, the
        folder was made again or could not be scanned), the caller rescans as before."""
        if self._refreshing is not None:
            return (*await self.append(message, flags, date), False)
        mtime = None
        if date is not None:
            mtime = parse_internaldate(date.encode() if isinstance(date, str) else date)
        generation = self._generation
        added, scanned = await self.run_in_thread(
            _add_and_scan,
            self.folder,
            message,
            letters_for(flags),
            keyword_names(flags),
            mtime,
            self.highestmodseq or None,
            self.readwrite,
        )
        fresh = (
            scanned is not None
            and self._refreshing is None
            and generation == self._generation
            and not self._closed
            and scanned[0].uidvalidity == self.uidvalidity
        )
        if fresh:
            assert scanned is not None
            self._apply(*scanned)
        self._changed()
        return (*added, fresh)

    async def copy(self, message: Any) -> int:
        """IMessageCopier: copy C{message} (of any folder) here with its flags and date."""
        flags = [f for f in message.getFlags() if f.lower() != "\\recent"]
        if isinstance(message, MaildirMessage):
            data = await message.load(self.run_in_thread)
            # the flags the file has now (another session may have changed them since our
            # view): the system letters as they are (P included); keyword letters are per
            # folder, so they are mapped by name into this folder's dovecot-keywords
            letters, names = await self.run_in_thread(_current_flags, message.folder, message.entry)
            flags = list(names)
            mtime: float | None = message.entry.mtime
            if mtime == UNKNOWN_MTIME:  # (not dated by the caller: L{dated})
                dates = await self.run_in_thread(message.folder.dates, [message.entry])
                mtime = dates.get(message.entry.base)
        else:
            data = imap4.IMessageFile(message).open().read()
            letters = letters_for(flags)
            mtime = None
        _, uid = await self.run_in_thread(
            _storage(_add_with_keywords), self.folder, data, letters, keyword_names(flags), mtime
        )
        self._changed()
        return uid

    # FETCH, STORE, EXPUNGE

    def resolve(
        self, messages: imap4.MessageSet, uid: bool, gone_too: bool = False
    ) -> list[tuple[int, MessageEntry]]:
        """(seq, entry) for a sequence set or UID set (RFC 3501 §9), in sequence order;
        messages expunged elsewhere but not yet reported are left out (unless C{gone_too}:
        FETCH answers them, RFC 2180 §4.1.2), and so are new ones not yet announced with
        EXISTS (C{*} is the client's last message, RFC 3501 §6.4.8)."""
        view = self._view[: self._announced]
        if not view:
            return []
        out = []
        gone = NO_UIDS if gone_too else self._gone
        last = view[-1].uid if uid else len(view)
        # the set's ranges merged, then each looked up: the view is in UID order, so a range
        # of UIDs is found by bisection (a FETCH of the last 500 of 100,000 visits 500)
        for low, high in _merged(messages, last):
            if uid:
                start = bisect.bisect_left(view, low, key=_uid_of)
                end = bisect.bisect_right(view, high, key=_uid_of)
            else:
                start, end = low - 1, min(high, len(view))
            for i in range(max(start, 0), end):
                e = view[i]
                if e.uid not in gone:
                    out.append((i + 1, e))
        return out

    def message(self, seq: int) -> MaildirMessage:
        entry = self._view[seq - 1]
        return MaildirMessage(entry, self.folder, seq, entry.uid in self._recent, self.keywords)

    def fetch(
        self, messages: imap4.MessageSet, uid: bool, gone_too: bool = False
    ) -> list[tuple[int, MaildirMessage]]:
        """IMailbox.fetch: a list (not a generator) of (seq, message); L{resolve}."""
        return [(seq, self.message(seq)) for seq, _ in self.resolve(messages, uid, gone_too)]

    def is_gone(self, uid: int) -> bool:
        """Whether message C{uid} of the view was expunged elsewhere (not yet reported)."""
        return uid in self._gone

    def any_gone(self, messages: imap4.MessageSet, uid: bool) -> bool:
        """Whether the set names a message expunged elsewhere and not yet reported."""
        return bool(self._gone) and any(
            e.uid in self._gone for _, e in self.resolve(messages, uid, True)
        )

    async def sized(self, targets: Sequence[tuple[int, MaildirMessage]]) -> None:
        """Give the messages of C{targets} whose size is not known yet (a file named without
        C{,W=}) their size, for RFC822.SIZE or a quota check: L{Folder.sizes} in one
        thread hop, none when every size is known."""
        await self._learn_for(targets, "size")

    async def dated(self, targets: Sequence[tuple[int, MaildirMessage]]) -> None:
        """Give the messages of C{targets} whose INTERNALDATE is not known yet (indexed at
        a first sync without a C{stat}) their date, for FETCH INTERNALDATE or COPY:
        L{Folder.dates} in one thread hop, none when every date is known."""
        await self._learn_for(targets, "mtime")

    async def _learn_for(self, targets: Sequence[tuple[int, MaildirMessage]], field: str) -> None:
        entries = [m.entry for _, m in targets]
        if fill_learned(entries, field, await self._learned(entries, field)):
            for (_, msg), entry in zip(targets, entries, strict=True):
                msg.entry = entry

    async def known_sizes(self, entries: Sequence[MessageEntry]) -> dict[str, int]:
        """L{Folder.sizes} of C{entries} (the unknown ones: {base: octets}) in a thread;
        the view's entries take them, so the session asks once."""
        return await self._learned(entries, "size")

    async def known_dates(self, entries: Sequence[MessageEntry]) -> dict[str, float]:
        """L{Folder.dates} of C{entries} (the unknown ones: {base: mtime}) in a thread;
        the view's entries take them, so the session asks once."""
        return await self._learned(entries, "mtime")

    async def _learned(self, entries: Sequence[MessageEntry], field: str) -> dict[str, Any]:
        at_field, unknown_value = LEARNED_FIELDS[field]
        unknown = [e for e in entries if e[at_field] == unknown_value]
        if not unknown:
            return {}
        ask = self.folder.sizes if field == "size" else self.folder.dates
        values: dict[str, Any] = await self.run_in_thread(ask, unknown)
        view = self._view
        at = positions(view, [e.uid for e in unknown if e.base in values])
        fill_learned(view, field, values, at.values())
        return values

    async def store(
        self,
        messages: imap4.MessageSet,
        flags: Sequence[str],
        mode: int,
        uid: bool,
        unchangedsince: int | None = None,
    ) -> dict[int, list[str]]:
        """STORE (RFC 3501 §6.4.6): mode 1 adds, -1 removes, 0 replaces; renames the files
        in a thread.  With C{unchangedsince} (RFC 7162 §3.1.3), messages whose MODSEQ is
        larger are left alone and their sequence numbers put in L{modified}.
        @return: {seq: new flags} for every message addressed and not modified."""
        if not self.readwrite:
            raise imap4.ReadOnlyMailbox()
        targets = self.resolve(messages, uid)
        keywords, renamed, modified = await self.run_in_thread(
            _store_all, self.folder, targets, list(flags), mode, unchangedsince
        )
        # (a rescan that ended meanwhile may have brought a newer map, holding ours)
        if not keywords.items() <= self.keywords.items():
            self.keywords = keywords
            for listener in list(self._listeners):
                if hasattr(listener, "keywordsChanged"):
                    listener.keywordsChanged()
        return self._stored(renamed, modified)

    async def store_entries(
        self,
        targets: Sequence[tuple[int, MessageEntry]],
        letters: str,
        mode: int,
        unchangedsince: int | None = None,
    ) -> dict[int, list[str]]:
        plan = [(seq, entry, _flag_change(letters, mode)) for seq, entry in targets]
        renamed, modified = await self.run_in_thread(_rename_all, self.folder, plan, unchangedsince)
        return self._stored(renamed, modified)

    def _stored(
        self, renamed: list[tuple[int, MessageEntry]], modified: list[int]
    ) -> dict[int, list[str]]:
        """The view after a STORE's renames: {seq: new flags}; other sessions told."""
        result: dict[int, list[str]] = {}
        for seq, entry in renamed:
            if seq <= len(self._view) and self._view[seq - 1].uid == entry.uid:
                self._view[seq - 1] = entry
            result[seq] = self._flags(entry)
        self.modified = sorted(modified)
        if renamed:
            self._changed()
        return result

    async def expunge(self, uids: imap4.MessageSet | None = None) -> list[int]:
        """EXPUNGE (RFC 3501 §6.4.3): remove C{\\Deleted} messages; return the sequence
        numbers to report (including expunges by other sessions), adjusted in order.

        @param uids: UID EXPUNGE (RFC 4315 §2.1): only C{\\Deleted} messages in this set.
        """
        if not self.readwrite:
            raise imap4.ReadOnlyMailbox()
        await self.refresh()  # \Deleted set or cleared elsewhere counts, not our old view
        last = self._view[-1].uid if self._view else 0
        doomed = [
            e
            for e in self._view
            if "T" in e.flags
            and e.uid not in self._gone
            and (uids is None or in_set(uids, e.uid, last))
        ]
        return await self.remove_entries(doomed, "T")

    async def remove_entries(self, doomed: Sequence[MessageEntry], flagged: str = "") -> list[int]:
        """Delete C{doomed} (MOVE, RFC 6851 §3.3, or EXPUNGE with C{flagged} C{"T"}: only
        those whose file still carries it); return the sequence numbers to report as
        C{* n EXPUNGE}, as L{take_expunged}."""
        if not self.readwrite:
            raise imap4.ReadOnlyMailbox()
        if doomed:
            removed = await self.run_in_thread(_remove_all, self.folder, list(doomed), flagged)
            self._gone |= {e.uid for e in removed}
            self._changed()
        return self.take_expunged()

    async def vanished_since(self, modseq: int, uids: imap4.MessageSet | None = None) -> list[int]:
        """UIDs expunged after C{modseq} (QRESYNC's VANISHED (EARLIER), RFC 7162 §3.2.5.2,
        §3.2.6), limited to C{uids}, ascending.  When the index no longer knows (it was
        rebuilt after C{modseq}), every UID below UIDNEXT that is not in the folder."""
        expunged, floor = await self.run_in_thread(self.folder.changed_since, modseq)
        last = self.uidnext - 1
        if modseq < floor:
            present = {e.uid for e in self._view if e.uid not in self._gone}
            ranges = uids.ranges if uids is not None else [(1, last)]
            candidates: set[int] = set()
            for low, high in ranges:
                low = last if low is None else low
                high = last if high is None else min(high, last)
                candidates.update(range(min(low, high), max(low, high) + 1))
            expunged = [u for u in candidates if u not in present]
        if uids is not None:
            expunged = [u for u in expunged if in_set(uids, u, last)]
        return sorted(expunged)

    async def cached_parts(self, uids: list[int]) -> dict[int, CachedParts]:
        """The index's cached ENVELOPE/BODYSTRUCTURE/BODY of C{uids} (RFC 3501 §7.4.2)."""
        found: dict[int, CachedParts] = await self.run_in_thread(self.folder.cached_parts, uids)
        return found

    async def cache_parts(self, parts: dict[tuple[int, str], CachedParts]) -> None:
        """Keep rendered parts in the index, keyed by (UID, Maildir base name)."""
        await self.run_in_thread(self.folder.cache_parts, parts)

    # SEARCH

    async def search(self, query: list[Any], uid: bool = False) -> list[int]:
        """ISearchableMailbox (RFC 3501 §6.4.4): matching sequence numbers.

        @raise SearchError: for a malformed query (answered BAD).
        """
        view = self._view[: self._announced]  # what the client knows (RFC 3501 §7.4.1)
        if len(query) == 1 and isinstance(query[0], bytes) and query[0].upper() in FLAG_KEYS:
            # one flag key (UNSEEN, DELETED, ...): the entries' file names answer, in one pass
            self.searched_modseq = False
            letter, want = FLAG_KEYS[query[0].upper()]
            if len(view) <= INLINE_FLAG_SEARCH:  # (no disk: in memory alone)
                return flag_search(view, frozenset(self._gone), letter, want)
            found: list[int] = await self.run_in_thread(
                flag_search, view, frozenset(self._gone), letter, want
            )
            return found
        last_seq = len(view)
        last_uid = view[-1].uid if view else 0
        used: set[bytes] = set()
        predicate, cost = compile_search(list(query), last_seq, last_uid, self.keywords, used)
        self.searched_modseq = b"MODSEQ" in used
        if used & {b"LARGER", b"SMALLER"}:  # RFC822.SIZE (RFC 3501 §6.4.4): known first
            if await self.known_sizes(view):
                view = self._view[: self._announced]  # (the view's entries took them)
        if used & {b"BEFORE", b"ON", b"SINCE"}:  # INTERNALDATE (RFC 3501 §6.4.4): known first
            if await self.known_dates(view):
                view = self._view[: self._announced]
        # the candidates are listed in the thread too (20,000 tuples are not free): with
        # copies of the sets the reactor may change meanwhile
        matched: list[int] = await self.run_in_thread(
            search_view,
            self.folder,
            view,
            frozenset(self._recent),
            frozenset(self._gone),
            predicate,
            cost,
        )
        return matched

    async def sort(self, criteria: Sequence[tuple[bytes, bool]], query: list[Any]) -> list[int]:
        """SORT (RFC 5256 §3): the sequence numbers matching C{query} (as L{search}) in the
        order of C{criteria} (L{sort.parse_criteria} output), ties in sequence order.

        @raise SearchError: for a malformed query (answered BAD).
        """
        matched = await self.search(query)
        if any(key == b"SIZE" for key, _ in criteria):  # RFC 5256 §3: RFC822.SIZE
            await self.known_sizes([self._view[seq - 1] for seq in matched])  # (the view's)
        if any(key == b"ARRIVAL" for key, _ in criteria):  # RFC 5256 §3: INTERNALDATE
            await self.known_dates([self._view[seq - 1] for seq in matched])
        # (DATE falls back to INTERNALDATE without a usable Date:: sort_entries asks those)
        entries = [(seq, self._view[seq - 1]) for seq in matched]
        ordered: list[int] = await self.run_in_thread(
            sort_entries, self.folder, entries, list(criteria)
        )
        return ordered


def _flag_change(letters: str, mode: int) -> FlagChange:
    """STORE's change (mode 1 adds, -1 removes, 0 replaces flags and keywords, keeping
    letters IMAP cannot express, P), a delta applied in the thread to the flags each file
    has then (DESIGN §6): our view may be older than another session's change, which must
    survive."""
    if mode > 0:
        return FlagChange(add=letters)
    if mode < 0:
        return FlagChange(remove=letters)
    return FlagChange(add=letters, remove=REPLACEABLE_LETTERS)


def _store_all(
    folder: Folder,
    targets: Sequence[tuple[int, MessageEntry]],
    flags: list[str],
    mode: int,
    unchangedsince: int | None,
) -> tuple[dict[str, str], list[tuple[int, MessageEntry]], list[int]]:
    """STORE in one thread hop: the flags' letters (a new keyword given one), then the
    renames (L{_rename_all}); with the keyword map after the letters were given."""
    letters, keywords = _storage(_store_letters)(folder, flags, mode >= 0)
    change = _flag_change(letters, mode)
    renamed, modified = _rename_all(folder, [(s, e, change) for s, e in targets], unchangedsince)
    return keywords, renamed, modified


def _rename_all(
    folder: Folder, plan: list[tuple[int, MessageEntry, FlagChange]], unchangedsince: int | None
) -> tuple[list[tuple[int, MessageEntry]], list[int]]:
    """Rename in one locked batch; (seq, new entry) renamed, and the seqs that failed the
    UNCHANGEDSINCE test.  Messages expunged meanwhile are skipped."""
    seqs = {entry.uid: seq for seq, entry, _ in plan}
    done, modified = folder.change_flags_many(
        [(e, change) for _, e, change in plan], unchangedsince
    )
    return [(seqs[e.uid], e) for e in done], [seqs[e.uid] for e in modified]


def _remove_all(
    folder: Folder, entries: list[MessageEntry], flagged: str = ""
) -> list[MessageEntry]:
    return folder.remove_many(entries, flagged)
