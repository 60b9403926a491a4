"""The IMAP view of one user's folder tree (RFC 3501 §6.3, RFC 2342 NAMESPACE, RFC 3348
CHILDREN, RFC 5258 LIST-EXTENDED, RFC 6154 SPECIAL-USE).

L{MaildirAccount} implements Twisted's C{IAccount} and C{INamespacePresenter} over a
L{twistedmail.maildir.UserMaildir}: one personal namespace C{""} with delimiter C{"."},
INBOX plus Maildir++ subfolders.  The mutators (C{create}, C{delete}, C{rename},
C{subscribe}, C{unsubscribe}) are synchronous as the interface demands; our server calls them
through C{run_in_thread}.  Errors are C{imap4.MailboxException} subclasses whose text is safe
to show a client, with the RFC 5530 response code in L{MailboxError.code}.

Special-use folders (RFC 6154 §2) are recognised by name (L{SPECIAL_USE}: C{Sent},
C{Drafts}, C{Trash}, C{Junk}, C{Archive}, i.e. Maildir++ C{.Sent} ...) and created and
subscribed by L{MaildirAccount.prepare} on the user's first login.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs
from twisted.mail import imap4
from zope.interface import implementer

from twistedmail.auth import RunInThread
from twistedmail.imap.mailbox import MaildirMailbox
from twistedmail.imap.protocol import IMAPError
from twistedmail.maildir import (
    DELIMITER,
    INBOX,
    ChangeNotifier,
    FolderNameError,
    MaildirError,
    UserMaildir,
)

SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
"""Folder name -> RFC 6154 §2 special-use attribute."""

PREPARED_MARKER = "twistedmail-special-use"
"""File in the Maildir root: the special-use folders were created once (a user may then
delete or rename them and they stay so)."""


@attrs.frozen
class ListEntry:
    """One mailbox of an extended LIST answer (RFC 5258 §3).

    @ivar attributes: name attributes: C{\\NonExistent}/C{\\Noselect}, C{\\HasChildren}/
        C{\\HasNoChildren} (RFC 3348), C{\\Subscribed}, special-use (RFC 6154).
    @ivar child_subscribed: RECURSIVEMATCH found a subscribed descendant (the
        C{CHILDINFO ("SUBSCRIBED")} extended data item, RFC 5258 §3.5).
    """

    name: str
    attributes: tuple[str, ...]
    child_subscribed: bool = False


class MailboxError(imap4.MailboxException):
    """A folder operation refused; C{code} is an RFC 5530 response code (bytes)."""

    def __init__(self, text: str, code: bytes = b"") -> None:
        super().__init__(text)
        self.code = code


@implementer(imap4.IMailboxInfo)
@attrs.frozen
class MailboxInfo:
    """LIST attributes of one folder (RFC 3501 §7.2.2, RFC 3348), separate from the FLAGS of
    a selected mailbox."""

    attributes: tuple[str, ...]

    def getFlags(self) -> list[str]:
        return list(self.attributes)

    def getHierarchicalDelimiter(self) -> str:
        return DELIMITER


def canonical(name: str) -> str:
    """INBOX in any case is INBOX (RFC 3501 §5.1); other names are case-sensitive."""
    return INBOX if name.upper() == INBOX else name


@attrs.frozen
class ListPattern:
    """A LIST reference + mailbox pattern (RFC 3501 §6.3.8: C{*} matches anything, C{%}
    anything but the hierarchy delimiter), as tokens: a literal character, or C{"*"} /
    C{"%"} for a run of wildcards (a run holding a C{*} is C{*}).

    Matched by stepping a set of token positions over the name (an NFA), so a pattern
    costs at most len(tokens) steps per character: a regex would backtrack exponentially
    on a client's C{a*a*a*...b}, on the reactor thread.
    """

    tokens: tuple[tuple[bool, str], ...]  # (is_wildcard, char)
    literals: int

    def matches(self, name: str, ignore_case: bool = False) -> bool:
        tokens = self.tokens
        if self.literals > len(name):
            return False
        if ignore_case:
            name = name.lower()
            tokens = tuple((w, c.lower()) for w, c in tokens)
        end = len(tokens)

        def close(states: set[int]) -> set[int]:
            # a wildcard matches the empty string: its successor is reachable too
            out = set(states)
            for i in states:
                while i < end and tokens[i][0]:
                    i += 1
                    out.add(i)
            return out

        states = close({0})
        for ch in name:
            step = set()
            for i in states:
                if i == end:
                    continue
                wild, c = tokens[i]
                if wild:
                    if c == "*" or ch != DELIMITER:
                        step.add(i)  # the wildcard takes this character too
                elif c == ch:
                    step.add(i + 1)
            if not step:
                return False
            states = close(step)
        return end in states


def list_pattern(reference: str, pattern: str) -> ListPattern:
    """LIST reference + mailbox pattern (RFC 3501 §6.3.8) as a L{ListPattern}."""
    tokens: list[tuple[bool, str]] = []
    for c in reference + pattern:
        if c in "*%":
            if tokens and tokens[-1][0]:
                if c == "*":
                    tokens[-1] = (True, "*")
                continue
            tokens.append((True, c))
        else:
            tokens.append((False, c))
    return ListPattern(tuple(tokens), sum(1 for w, _ in tokens if not w))


def list_match(pattern: ListPattern, name: str) -> bool:
    # RFC 3501 §5.1: INBOX is case-insensitive
    return pattern.matches(name, ignore_case=name == INBOX)


@implementer(imap4.IAccount, imap4.INamespacePresenter)
class MaildirAccount:
    """The folders of C{address} (the avatar the realm hands IMAP sessions).

    @param address: the normalised login (C{"alice@example.test"}), for logs.
    @param maildir: the user's Maildir++ tree (INBOX is created on login).
    @param notifier: shared with delivery, so SELECTed mailboxes see new mail.
    @param run_in_thread: C{run(f, *args) -> Deferred} for blocking disk work.
    """

    def __init__(
        self,
        address: str,
        maildir: UserMaildir,
        notifier: ChangeNotifier,
        run_in_thread: RunInThread,
    ) -> None:
        self.address = address
        self.maildir = maildir
        self.notifier = notifier
        self.run_in_thread = run_in_thread

    async def prepare(self) -> None:
        """At login: create INBOX and, the first time, the special-use folders (subscribed),
        RFC 6154 §2 (the names Thunderbird, Apple Mail and K-9 look for)."""
        await self.run_in_thread(self._prepare)

    def _prepare(self) -> None:
        self.maildir.ensure()
        marker = self.maildir.root / PREPARED_MARKER
        if marker.exists():
            return
        existing = set(self.maildir.folders())
        for name in SPECIAL_USE:
            if name not in existing:
                try:
                    self.maildir.create(name)
                except MaildirError:
                    pass  # another session's first login made it meanwhile
            self.maildir.subscribe(name)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)

    def _still_there(self) -> None:
        """Before a command makes anything in the Maildir: the login made it, so a missing
        one means the user was deleted meanwhile (C{twistedmail user del} moved it aside);
        making it again would give the deleted user's address a fresh Maildir.

        @raise IMAPError: NO [NONEXISTENT] and BYE, as Dovecot ends the sessions of a user
            an admin removed (C{doveadm kick})."""
        if not self.maildir.root.is_dir():
            raise IMAPError(
                b"NO", b"Account was deleted, have to disconnect.", b"NONEXISTENT", close=True
            )

    def _ensure_inbox(self) -> None:
        self._still_there()
        self.maildir.ensure()

    # IAccount

    def folder_path(self, name: str) -> Path | None:
        """The directory of folder C{name}, or C{None} for a name that is not valid."""
        try:
            return self.maildir.folder_path(canonical(name))
        except FolderNameError:
            return None

    async def select(self, name: str, readwrite: bool = True) -> MaildirMailbox | None:
        """SELECT/EXAMINE/STATUS/APPEND/COPY target: the opened mailbox, or C{None} when it
        does not exist or is not a valid name."""
        name = canonical(name)
        try:
            folder = self.maildir.folder(name)
        except FolderNameError:
            return None
        mailbox = MaildirMailbox(name, folder, self.notifier, self.run_in_thread, bool(readwrite))
        try:
            # (one thread hop: making the INBOX, the check that the folder is there and its
            # scan were three, bench/imap_cmd_cost.py)
            return await mailbox.open(self._ensure_inbox if name == INBOX else None)
        except MaildirError:
            return None

    def append_target(self, name: str) -> MaildirMailbox | None:
        """APPEND's target when it is not the selected folder: its mailbox, not opened (no
        scan: APPEND needs no view of the messages, and the scan, which lists C{cur/} and
        C{new/} while the folder changes, and its thread hop were half an APPEND's system
        calls, issue 10); C{None} for a name that is not valid.  Its L{MaildirMailbox.append}
        makes the INBOX when missing and raises L{FolderGoneError} for a folder that is not
        there, in the thread hop that stores the message."""
        name = canonical(name)
        try:
            folder = self.maildir.folder(name)
        except FolderNameError:
            return None
        mailbox = MaildirMailbox(name, folder, self.notifier, self.run_in_thread, False)
        mailbox.make = self._inbox_to_append if name == INBOX else None
        return mailbox

    def _inbox_to_append(self) -> None:
        """L{_ensure_inbox} when the INBOX lacks C{cur/} or C{tmp/}, what an APPEND writes
        to: two C{stat}s in the usual case, not a C{mkdir} and a C{stat} per directory."""
        root = self.maildir.root
        if not ((root / "cur").is_dir() and (root / "tmp").is_dir()):
            self._ensure_inbox()

    def addMailbox(self, name: str, mbox: object = None) -> bool:
        return self.create(name)

    def create(self, pathspec: str) -> bool:
        """CREATE (RFC 3501 §6.3.3), with missing parents; a trailing delimiter is dropped.

        @raise MailboxError: C{[ALREADYEXISTS]} or C{[CANNOT]} for a bad name.
        """
        name = canonical(pathspec.rstrip(DELIMITER))
        if not name:
            raise MailboxError("Invalid mailbox name", b"CANNOT")
        if name == INBOX:
            raise MailboxError("Mailbox already exists", b"ALREADYEXISTS")
        try:
            self.maildir.folder_path(name)  # validate the whole name before creating parents
        except FolderNameError:
            raise MailboxError("Invalid mailbox name", b"CANNOT") from None
        self._still_there()
        existing = set(self.maildir.folders())
        if name in existing:
            raise MailboxError("Mailbox already exists", b"ALREADYEXISTS")
        parts = name.split(DELIMITER)
        try:
            for i in range(1, len(parts) + 1):
                partial = DELIMITER.join(parts[:i])
                if partial not in existing:
                    self.maildir.create(partial)
        except FolderNameError:
            raise MailboxError("Invalid mailbox name", b"CANNOT") from None
        except MaildirError as e:
            raise MailboxError(str(e), b"CANNOT") from None
        return True

    def delete(self, name: str) -> None:
        """DELETE (RFC 3501 §6.3.4).  @raise MailboxError: [CANNOT] for INBOX, [NONEXISTENT]."""
        name = canonical(name)
        if name == INBOX:
            raise MailboxError("INBOX cannot be deleted", b"CANNOT")
        try:
            self.maildir.delete(name)
        except FolderNameError:
            raise MailboxError("No such mailbox", b"NONEXISTENT") from None
        except MaildirError:
            raise MailboxError("No such mailbox", b"NONEXISTENT") from None

    def rename(self, oldname: str, newname: str) -> None:
        """RENAME (RFC 3501 §6.3.5) with children; renaming INBOX moves its messages.

        @raise MailboxError: [NONEXISTENT], [ALREADYEXISTS] or [CANNOT].
        """
        old, new = canonical(oldname), canonical(newname.rstrip(DELIMITER))
        self._still_there()
        folders = set(self.maildir.folders())
        if old not in folders:
            raise MailboxError("No such mailbox", b"NONEXISTENT")
        if new in folders or new == INBOX:
            raise MailboxError("Mailbox already exists", b"ALREADYEXISTS")
        if new.startswith(old + DELIMITER):
            raise MailboxError("Cannot rename a mailbox into itself", b"CANNOT")
        parent = new.rpartition(DELIMITER)[0]
        try:
            self.maildir.folder_path(new)  # a refused name must not leave its parent behind
            children = self.maildir.renamed_children(old, new)  # nor a child's too long
            if parent and parent not in folders:
                self.create(parent)
            self.maildir.rename(old, new, children)
        except FolderNameError:
            raise MailboxError("Invalid mailbox name", b"CANNOT") from None
        except MaildirError as e:
            raise MailboxError(str(e), b"CANNOT") from None
        subs = self.maildir.subscriptions()
        for sub in subs:
            if sub == old or sub.startswith(old + DELIMITER):
                self.maildir.unsubscribe(sub)
                self.maildir.subscribe(new + sub[len(old) :])

    def isSubscribed(self, name: str) -> bool:
        name = canonical(name)
        return name == INBOX or name in self.maildir.subscriptions()

    def subscribe(self, name: str) -> None:
        """SUBSCRIBE (RFC 3501 §6.3.6), persisted in the Maildir C{subscriptions} file."""
        name = canonical(name)
        try:
            self.maildir.folder_path(name)
        except FolderNameError:
            raise MailboxError("Invalid mailbox name", b"CANNOT") from None
        self._still_there()
        self.maildir.subscribe(name)

    def unsubscribe(self, name: str) -> None:
        self.maildir.unsubscribe(canonical(name))

    async def listMailboxes(self, ref: str, wildcard: str) -> list[tuple[str, MailboxInfo]]:
        """LIST (RFC 3501 §6.3.8): matching folders with C{\\HasChildren}/C{\\HasNoChildren}
        (RFC 3348); parents that exist only as a hierarchy level are C{\\Noselect}."""
        names: list[str] = await self.run_in_thread(self.maildir.folders)
        return self.match(names, ref, wildcard)

    def match(self, names: list[str], ref: str, wildcard: str) -> list[tuple[str, MailboxInfo]]:
        entries = list_entries(names, [], ref, [wildcard])
        return [
            (e.name, MailboxInfo(tuple(a for a in e.attributes if a != "\\Subscribed")))
            for e in entries
        ]

    async def list_folders(
        self,
        ref: str,
        patterns: Sequence[str],
        *,
        subscribed: bool = False,
        recursive: bool = False,
        special_use: bool = False,
    ) -> list[ListEntry]:
        """Extended LIST (RFC 5258 §3): the folders matching any of C{patterns}.

        @param subscribed: the SUBSCRIBED selection option (subscribed names only, including
            ones that no longer exist, C{\\NonExistent}).
        @param recursive: RECURSIVEMATCH: also parents with a subscribed descendant.
        @param special_use: the SPECIAL-USE selection option (RFC 6154 §3).
        """
        names, subs = await self.run_in_thread(self._names_and_subscriptions)
        return list_entries(
            names,
            subs,
            ref,
            patterns,
            subscribed=subscribed,
            recursive=recursive,
            special_use=special_use,
        )

    def _names_and_subscriptions(self) -> tuple[list[str], list[str]]:
        return self.maildir.folders(), self.maildir.subscriptions()

    async def list_subscribed(self, ref: str, wildcard: str) -> list[tuple[str, MailboxInfo]]:
        """LSUB (RFC 3501 §6.3.9): subscribed names matching; missing ones are C{\\Noselect}."""
        names: list[str] = await self.run_in_thread(self.maildir.folders)
        subs: list[str] = await self.run_in_thread(self.maildir.subscriptions)
        existing = set(names)
        regex = list_pattern(ref, wildcard)
        subscribed = set(subs) | {INBOX}
        found: dict[str, tuple[str, ...]] = {}
        for name in subscribed:
            if list_match(regex, name):
                found[name] = () if name in existing else ("\\Noselect",)
                continue
            # RFC 3501 §6.3.9: "foo/%" with only "foo/bar/zap" subscribed lists "foo/bar"
            # \Noselect (a level the pattern reaches on the way to a subscribed name)
            parts = name.split(DELIMITER)
            for i in range(len(parts) - 1, 0, -1):
                parent = DELIMITER.join(parts[:i])
                if parent not in subscribed and list_match(regex, parent):
                    found[parent] = ("\\Noselect",)
                    break
        return [
            (name, MailboxInfo(found[name]))
            for name in sorted(found, key=lambda n: (n != INBOX, n))
        ]

    # INamespacePresenter (RFC 2342)

    def getPersonalNamespaces(self) -> list[list[bytes]]:
        return [[b"", DELIMITER.encode()]]

    def getSharedNamespaces(self) -> None:
        return None

    def getUserNamespaces(self) -> None:
        return None

    def getOtherNamespaces(self) -> None:
        return None

    def logout(self) -> None:
        """Called by the realm's logout callback when the session ends."""


def list_entries(
    names: Sequence[str],
    subscriptions: Sequence[str],
    ref: str,
    patterns: Sequence[str],
    *,
    subscribed: bool = False,
    recursive: bool = False,
    special_use: bool = False,
) -> list[ListEntry]:
    """The LIST answer over existing folder C{names} (INBOX first, then by name).

    Attributes (RFC 5258 §3.4, RFC 3348, RFC 6154 §2): levels that exist only as a parent
    are C{\\Noselect}; subscribed names that do not exist are C{\\NonExistent}; every
    existing level gets C{\\HasChildren} or C{\\HasNoChildren}; subscribed names
    C{\\Subscribed} (INBOX always is); special-use folders their attribute.
    """
    existing = set(names)
    every = set(existing)
    for name in names:
        parts = name.split(DELIMITER)
        every |= {DELIMITER.join(parts[:i]) for i in range(1, len(parts))}
    subs = {canonical(n) for n in subscriptions} | {INBOX}
    regexes = [list_pattern(ref, p) for p in patterns]
    pool = subs if subscribed else every
    candidates = pool | every if subscribed and recursive else pool
    out = []
    for name in sorted(candidates, key=lambda n: (n != INBOX, n)):
        if not any(list_match(r, name) for r in regexes):
            continue
        # RFC 5258 §3.5: CHILDINFO tells of a subscribed descendant the patterns do not
        # return themselves (as Dovecot: one a pattern matches is listed on its own)
        child_subscribed = (
            subscribed
            and recursive
            and any(
                s.startswith(name + DELIMITER) and not any(list_match(r, s) for r in regexes)
                for s in subs
            )
        )
        if name not in pool and not child_subscribed:
            continue
        special = SPECIAL_USE.get(name) if name in existing else None
        if special_use and special is None:
            continue
        attributes: list[str] = []
        if name not in every:
            attributes.append("\\NonExistent")  # RFC 5258 §3.4: implies \\Noselect
        else:
            if name not in existing:
                attributes.append("\\Noselect")
            has_children = any(o.startswith(name + DELIMITER) for o in every)
            attributes.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if name in subs:
            attributes.append("\\Subscribed")
        if special is not None:
            attributes.append(special)
        out.append(ListEntry(name, tuple(attributes), child_subscribed))
    return out
