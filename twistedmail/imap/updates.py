"""The selected mailbox and its updates (RFC 3501 §5.2 "Mailbox Size and Message Status
Updates", §7.3, §7.4): EXISTS, RECENT, EXPUNGE and FETCH FLAGS that other sessions (and
deliveries) cause, queued and sent before the next tagged reply, or at once while IDLE
(RFC 2177); C{* VANISHED} instead of EXPUNGE once QRESYNC is enabled (RFC 7162 §3.2.10);
FLAGS and PERMANENTFLAGS again when a new keyword appears (RFC 3501 §7.2.6); the
CONDSTORE bookkeeping shared by SELECT, FETCH, STORE and SEARCH (RFC 7162 §3.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.mail import imap4

from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.mailbox import MaildirMailbox
from twistedmail.imap.protocol import (
    IMAPError,
    IMAPProtocol,
    _close_below_tls,
    bad,
    format_flags,
    no,
    uid_set,
)
from twistedmail.maildir import FolderGoneError, FolderLockedError

log = Logger(namespace="twistedmail.imap")


def close_quietly(mbox: Any) -> None:
    """Close a mailbox opened for one command (STATUS, APPEND, COPY); a failure is logged."""
    closeable = imap4.ICloseableMailbox(mbox, None)
    if closeable is not None:
        maybeDeferred(closeable.close).addErrback(lambda f: log.failure("close failed", f))


class MailboxUpdates(IMAPProtocol):
    """The selected mailbox of a session and the untagged updates about it."""

    # Twisted's IMAP4Server declares both as None; ours are set at login and SELECT.
    account: MaildirAccount | None
    mbox: MaildirMailbox | None
    _pending_exists: bool  # an EXISTS to send before the next tagged reply
    _pending_flags: dict[int, list[str]]  # UID -> flags changed by another session
    _pending_keywords: bool  # a new keyword: FLAGS and PERMANENTFLAGS again
    _pending_highestmodseq: bool  # CONDSTORE just enabled: HIGHESTMODSEQ once

    @property
    def mail_account(self) -> MaildirAccount:
        """The logged-in user's folders: the authenticated and selected states' handlers
        (RFC 3501 §6.3, §6.4) run only after login, which sets it."""
        if self.account is None:
            raise no(b"Not logged in")
        return self.account

    @property
    def selected(self) -> MaildirMailbox:
        """The selected mailbox: the selected state's handlers (RFC 3501 §6.4) run only
        while one is selected."""
        if self.mbox is None:
            raise bad(b"No mailbox selected")
        return self.mbox

    async def _in_thread(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run C{f(*args)}, a change to the user's folders, off the reactor thread."""
        return await self.mail_account.run_in_thread(f, *args)

    def _flush_unsolicited(self) -> None:
        mbox = self.mbox
        if mbox is None:
            self._pending_exists, self._pending_flags = False, {}
            self._pending_keywords = self._pending_highestmodseq = False
            return
        if self._pending_highestmodseq:
            self._pending_highestmodseq = False
            # (once a session: the view's own changes may be newer than the last scan)
            seqs = range(1, mbox.getMessageCount() + 1)
            highest = max([mbox.getHighestModSeq()] + [mbox.modseq_of(n) for n in seqs])
            self.sendLine(b"* OK [HIGHESTMODSEQ %d] Highest" % highest)
        self._flush_keywords()
        if self._pending_exists:
            self._pending_exists = False
            # the mailbox learns what the client knows (RFC 3501 §7.4.1: no EXPUNGE or FETCH
            # may name a number above the last EXISTS); nothing to say when it knows it
            count = mbox.announce()
            if count is not None:
                self.sendLine(b"* %d EXISTS" % count)
                self.sendLine(b"* %d RECENT" % mbox.getRecentCount())
        if self._pending_flags:
            pending, self._pending_flags = self._pending_flags, {}
            for message_uid, flags in sorted(pending.items()):
                seq = mbox.sequence_of(message_uid)  # (not a map of the whole view)
                if seq is not None:
                    extra = self._condstore_items(seq)
                    shown = self._fetch_flags(flags)
                    self.sendLine(b"* %d FETCH (FLAGS (%s)%s)" % (seq, shown, extra))

    def _flush_keywords(self) -> None:
        """RFC 3501 §7.2.6: a new keyword in the folder changes its FLAGS; send FLAGS and
        PERMANENTFLAGS again (as Dovecot does) before any FETCH that shows the keyword."""
        if not self._pending_keywords or self.mbox is None:
            return
        self._pending_keywords = False
        self.sendLine(b"* FLAGS (" + format_flags(self.mbox.flags_announced()) + b")")
        if self.mbox.isWriteable():
            permanent = format_flags(self.mbox.permanent_flags())
            self.sendLine(b"* OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted")

    def _fetch_flags(self, flags: Sequence[str]) -> bytes:
        """The inside of C{FLAGS (...)} in a FETCH response about to be sent (tagged FETCH,
        STORE's, an update's, QRESYNC's).  RFC 3501 §7.2.6: when it shows a keyword the
        client's last FLAGS did not list, FLAGS and PERMANENTFLAGS go first, now: the map
        may have grown during the command or since the last tagged reply (a rescan after
        another session's or worker's STORE), which a pending FLAGS would only tell the
        client after this FETCH."""
        if self.mbox is not None and not self.mbox.knows_keywords(flags):
            self._pending_keywords = True
            self._flush_keywords()
        return format_flags(flags)

    def _send_expunges(self) -> None:
        if self.mbox is not None:
            self._report_expunged(self.mbox.take_expunged())

    def _report_expunged(self, seqs: Sequence[int]) -> None:
        """C{* n EXPUNGE} for each (already adjusted) sequence number; once QRESYNC is
        enabled, one C{* VANISHED uid-set} instead (RFC 7162 §3.2.10)."""
        if not seqs:
            return
        uids = self.mbox.expunged_uids if self.mbox is not None else None
        if b"QRESYNC" in self.enabled and uids:
            self.sendLine(b"* VANISHED " + uid_set(sorted(uids)))
            return
        for seq in seqs:
            self.sendLine(b"* %d EXPUNGE" % seq)

    # IMailboxListener

    def newMessages(self, exists: int | None, recent: int | None) -> None:
        self._pending_exists = True
        if self._idling:
            self._flush_unsolicited()

    def flagsChanged(self, newFlags: dict[int, Sequence[str]]) -> None:
        if self.mbox is None:
            return
        for seq, flags in newFlags.items():
            self._pending_flags[self.mbox.getUID(seq)] = list(flags)
        if self._idling:
            self._flush_unsolicited()

    def keywordsChanged(self) -> None:
        self._pending_keywords = True
        if self._idling:
            self._flush_unsolicited()

    def expungesPending(self) -> None:
        if self._idling:
            self._send_expunges()
            self._flush_unsolicited()

    def mailboxDeleted(self) -> None:
        """The selected folder was deleted (or deleted and made again) under the session:
        an idling client is told at once, as Dovecot tells it, and the connection closed;
        otherwise the next command answers NO [NONEXISTENT] and BYE (L{_refresh})."""
        if not self._idling:
            return
        self._idling, self._idle_tag, self.parseState = False, None, "command"
        self._close_mailbox()
        self.bye(b"[NONEXISTENT] Selected mailbox was deleted, have to disconnect.")
        _close_below_tls(self.transport)

    def modeChanged(self, writeable: bool) -> None:
        self.sendUntaggedResponse(b"OK [READ-WRITE] mode" if writeable else b"OK [READ-ONLY] mode")

    async def _refresh(self) -> None:
        """Bring the selected mailbox up to date.

        @raise IMAPError: it was deleted under the session (DELETE in another session,
            C{twistedmail user del}): NO and BYE, the connection closed, as Dovecot's
            'Selected mailbox was deleted, have to disconnect.' (RFC 2180 §3.3); NO [INUSE]
            (RFC 5530 §3) when another program held the UID list's lock too long."""
        if self.mbox is not None:
            try:
                await self.mbox.refresh()
            except FolderGoneError:  # not a lock another program held too long
                self._close_mailbox()
                raise IMAPError(
                    b"NO",
                    b"Selected mailbox was deleted, have to disconnect.",
                    b"NONEXISTENT",
                    close=True,
                ) from None
            except FolderLockedError:  # Dovecot or an MDA held dovecot-uidlist.lock too long
                raise IMAPError(
                    b"NO", b"Mailbox is locked by another program, try again", b"INUSE"
                ) from None

    def _close_mailbox(self) -> None:
        mbox, self.mbox = self.mbox, None
        self._pending_exists, self._pending_flags = False, {}
        if mbox is not None:
            mbox.removeListener(self)
            closeable = imap4.ICloseableMailbox(mbox, None)
            if closeable is not None:
                maybeDeferred(closeable.close).addErrback(lambda f: log.failure("close failed", f))
        if self.state == "select":
            self.state = "auth"

    async def _refresh_if_selected(self, target: MaildirMailbox) -> None:
        if self.mbox is not None and self.mbox.path == target.path:
            await self._refresh()

    # CONDSTORE and QRESYNC (RFC 7162)

    def _enable_condstore(self) -> None:
        """A CONDSTORE enabling command ran (RFC 7162 §3.1); the first one while a mailbox
        is selected gets C{* OK [HIGHESTMODSEQ n]} for it (§3.1.2.1, as Dovecot sends)."""
        if b"CONDSTORE" in self.enabled:
            return
        self.enabled |= {b"CONDSTORE"}
        # sent before the tagged reply, with the value after the command's own changes
        self._pending_highestmodseq = self.mbox is not None

    def _condstore_items(self, seq: int) -> bytes:
        """C{ UID n MODSEQ (m)} for an untagged FETCH once CONDSTORE is enabled (RFC 7162
        §3.1.3, §3.2.4: UID and MODSEQ in every FETCH about flag changes), else C{b""}."""
        if b"CONDSTORE" not in self.enabled or self.mbox is None:
            return b""
        return b" UID %d MODSEQ (%d)" % (self.mbox.getUID(seq), self.mbox.modseq_of(seq))

    def _check_numbers(self, messages: imap4.MessageSet, uid: bool) -> None:
        """RFC 3501 §9 seq-number: a message sequence number names a message the client
        knows (1..EXISTS, C{*} the last); one beyond is BAD (as Dovecot answers), never
        silently nothing.  A set with C{*} in an empty mailbox (C{1:*}, what a client that
        syncs sends) names nothing and is answered OK.  UIDs need not exist (§6.4.8)."""
        if uid:
            return
        count = self.selected.getMessageCount()
        ends = [n for low, high in messages.ranges for n in (low, high)]
        if not count and None in ends:
            return
        if any((count if n is None else n) > count for n in ends):
            raise bad(b"Invalid message sequence number")
