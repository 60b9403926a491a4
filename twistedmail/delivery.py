"""Local delivery: final recipients -> each user's Maildir INBOX, durably (RFC 5321 §4.4).

The SMTP layer builds the Received: header (it knows the session); this module adds
Return-Path (RFC 5321 §4.4: the final delivery MTA records the reverse-path), expands aliases
(L{AccountStore.expand}) and writes one file per distinct user with
L{twistedmail.maildir.write_durably}, in a thread.  When C{deliver} returns, every copy is on
disk (fsynced), so the caller may acknowledge with 250.

Quota (L{twistedmail.quota}): a user whose quota the message would exceed gets no copy; the
caller learns who (L{Delivered.over_quota}) and answers C{552 5.2.2} or sends a bounce.

Sieve (RFC 5228): a user with an active script (Pigeonhole's C{~/.dovecot.sieve}, see
L{twistedmail.sieve.store}) gets the message filed as the script says, in the thread, before
the caller answers: keep and fileinto (with RFC 5232 flags; C{:create} per RFC 5490, else a
missing folder falls back to INBOX as Pigeonhole does), discard, and one copy per folder.  Every
copy, script or not, carries C{Delivered-To: user} after Return-Path (as Postfix's local
delivery and Dovecot's LMTP write it; a redirect checks it for a loop).  Redirect (RFC 5228 §4.2),
vacation replies (RFC 5230) and rejections (RFC 5429 §2.1, sent after acceptance) leave
through L{LocalDelivery.outbound} (the outbound queue, set by the service), before C{deliver}
returns.  A script that fails to compile or run never loses the message: it is kept in INBOX
and the error logged with the user and the line.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from twistedmail.accounts import AccountStore, Quota
from twistedmail.address import Mailbox
from twistedmail.auth import RunInThread
from twistedmail.maildir import (
    ChangeNotifier,
    Folder,
    MaildirError,
    UserMaildir,
    mailbox_root,
    make_maildir,
    write_durably,
)
from twistedmail.metrics import Metrics
from twistedmail.quota import QuotaExceeded, QuotaTracker
from twistedmail.sieve.grammar import MAX_SCRIPT_SIZE, SieveError
from twistedmail.sieve.interpret import (
    Envelope,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    SieveLimits,
    Vacation,
    evaluate,
    vacation_reply_allowed,
)
from twistedmail.sieve.responses import (
    VacationMemory,
    rejection,
    vacation_handle,
    vacation_reply,
)
from twistedmail.sieve.store import ACTIVE_LINK, SieveStore
from twistedmail.sieve.validate import Script, compile_script
from twistedmail.srs import Forwarding

log = Logger(namespace="twistedmail.delivery")

MAX_ROOTS = 10000
"""Users whose mailbox root L{LocalDelivery} keeps (all forgotten at once beyond)."""


def delivered_to_header(user: Mailbox) -> bytes:
    """C{Delivered-To: user@domain} with CRLF: the final recipient, as Postfix's local
    delivery and Dovecot's LMTP record it (and check it against mail loops)."""
    return b"Delivered-To: %s\r\n" % str(user).encode()


def return_path_header(reverse_path: Mailbox | None) -> bytes:
    """C{Return-Path: <addr>} with CRLF (RFC 5321 §4.4; C{<>} for the null reverse-path)."""
    return b"Return-Path: <%s>\r\n" % (str(reverse_path).encode() if reverse_path else b"")


Resolution = tuple[list[Mailbox], list[Mailbox], dict[str, str], dict[str, str]]
"""L{LocalDelivery.resolve}: (local users, remote addresses, user -> RFC 5233 detail,
user -> the envelope recipient that reached them)."""


@attrs.frozen
class Delivered:
    """The outcome of L{LocalDelivery.deliver_all}.

    @ivar stored: the local users who got a copy.
    @ivar remote: the remote addresses aliases expanded to (not delivered here).
    @ivar over_quota: the local users whose quota the message would exceed (no copy).
    @ivar refused: the reason of the Sieve C{reject}/C{ereject} to answer at SMTP time
        (RFC 5429 §2.1.1), when the caller asked for it (C{refuse}); nothing was stored or
        sent for it.  None otherwise.
    """

    stored: tuple[Mailbox, ...]
    remote: tuple[Mailbox, ...]
    over_quota: tuple[Mailbox, ...]
    refused: str | None = None


class LocalDelivery:
    """Delivers messages to local users' INBOXes.

    @param mail_dir: C{DATA_DIR/mail}.
    @param notifier: told (on the reactor thread) which folders received mail.
    @param quota: the users' quotas; C{None} stores without limit.
    @param plus_folder: mail to C{user+detail} goes into the user's existing folder named
        C{detail} (case-insensitive), else INBOX (C{[delivery] plus_folder}, RFC 5233).
    @param sieve_limits: what a user's script may cost (C{[delivery] sieve_max_*}).

    The subaddress separator of Sieve's C{:user}/C{:detail} and of vacation's own-address
    check is the store's (C{[delivery] recipient_delimiter}, RFC 5233).
    """

    def __init__(
        self,
        store: AccountStore,
        mail_dir: Path,
        notifier: ChangeNotifier,
        run_in_thread: RunInThread,
        quota: QuotaTracker | None = None,
        hostname: str = "localhost",
        outbound: Outbound | None = None,
        plus_folder: bool = False,
        sieve_limits: SieveLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics  # read by the SMTP side (C{metrics.of(delivery)})
        self.store = store
        self.mail_dir = mail_dir
        self.notifier = notifier
        self.run_in_thread = run_in_thread
        self.quota = quota
        self.hostname = hostname
        self.outbound = outbound
        """Sends what Sieve scripts produce (the outbound queue's C{enqueue}); without it,
        a redirect keeps the message instead and vacation and reject send nothing."""
        self.sieve_limits = sieve_limits = sieve_limits or SieveLimits()
        self.scripts = ScriptCache(max_script_size=sieve_limits.max_script_size)
        self.plus_folder = plus_folder
        self._maildirs: set[Path] = set()  # the users' Maildirs made (or found) already
        # Each user's mailbox_root, one Path object per user: pathlib keeps its text and
        # hash, computed again for every new Path (issue 10: ~3% of the CPU per message).
        self._roots: dict[str, Path] = {}
        self.forwarding: Forwarding | None = None
        """SRS and the ARC seal of mail forwarded to outside addresses (issue 14); C{None}:
        forwarded with the original sender, unsealed."""

    async def forwarded(
        self, reverse_path: Mailbox | None, via: str | None, message: bytes
    ) -> tuple[Mailbox | None, bytes]:
        """The reverse-path and message a message forwarded to outside addresses through
        a local domain C{via} (an alias's, a redirecting user's) leaves with: an SRS
        sender in our domain and an ARC seal (L{twistedmail.srs.Forwarding}), for a sender
        in a domain not ours; others (ours, the null path of a bounce) unchanged."""
        if (
            self.forwarding is None
            or reverse_path is None
            or self.store.is_local_domain(reverse_path.domain)
        ):
            return reverse_path, message
        forwarded: tuple[Mailbox | None, bytes] = await self.run_in_thread(
            self.forwarding.prepare, reverse_path, via, message
        )
        return forwarded

    def local_users(self, recipients: list[Mailbox]) -> tuple[list[Mailbox], list[Mailbox]]:
        """Expand aliases; return (distinct local users, remote addresses), order kept."""
        users, remote, _details, _given = self._resolve(recipients)
        return users, remote

    def resolve(self, recipients: list[Mailbox]) -> Resolution:
        """L{local_users} with the details and recipients as given: the one expansion a
        caller hands to L{deliver_all} so that aliases are not expanded twice."""
        return self._resolve(recipients)

    def _resolve(self, recipients: list[Mailbox]) -> Resolution:
        """L{local_users}; user -> the RFC 5233 detail of the first recipient that named
        them directly (C{alice+lists@} -> C{lists}; L{AccountStore.resolve}); and user -> the
        envelope recipient as given (the first that reached them, for Sieve's envelope test).
        Each recipient is resolved once."""
        users: dict[str, Mailbox] = {}
        remote: dict[str, Mailbox] = {}
        details: dict[str, str] = {}
        given: dict[str, str] = {}
        for rcpt in recipients:
            for final, detail in self.store.resolve(rcpt):
                local = self.store.is_local_domain(final.domain)
                (users if local else remote).setdefault(str(final), final)
                given.setdefault(str(final), str(rcpt))
                if detail:
                    details.setdefault(str(final), detail)
        return list(users.values()), list(remote.values()), details, given

    async def check_quota(
        self,
        recipient: Mailbox,
        size: int = 0,
        resolved: tuple[list[Mailbox], list[Mailbox]] | None = None,
    ) -> None:
        """RCPT time: refuse a recipient whose every local user is already at or over their
        quota, or has no room for C{size} octets when the client announced the size (an
        alias with one user who has room is accepted).

        @param resolved: L{local_users} of C{recipient} when the caller has it already.
        @raise QuotaExceeded: for the first full user, when all are full.
        """
        if self.quota is None:
            return
        users, remote = resolved if resolved is not None else self.local_users([recipient])
        if remote or not users:
            return
        first: QuotaExceeded | None = None
        for user in users:
            try:
                if size:
                    await self.quota.check(str(user), size)
                else:
                    await self.quota.check_not_full(str(user))
            except QuotaExceeded as e:
                first = first or e
            else:
                return
        assert first is not None
        raise first

    async def deliver(
        self, reverse_path: Mailbox | None, recipients: list[Mailbox], message: bytes
    ) -> list[Mailbox]:
        """L{deliver_all} for a caller that reports nothing (delivery status notifications:
        a user over quota gets no copy, which is logged, as a bounce is never bounced).

        @return: the remote addresses found by alias expansion (not delivered here).
        """
        delivered = await self.deliver_all(reverse_path, recipients, message)
        return list(delivered.remote)

    async def deliver_all(
        self,
        reverse_path: Mailbox | None,
        recipients: list[Mailbox],
        message: bytes,
        *,
        resolution: Resolution | None = None,
        junk: bool = False,
        refuse: bool = False,
    ) -> Delivered:
        """Store C{message} (bytes, CRLF lines, trace headers already on top) for each local
        user behind C{recipients} who has room for it (L{QuotaTracker.check}), with a
        Return-Path header first.

        @param junk: the spam filter's verdict (L{twistedmail.rspamd}): the message goes to
            the user's C{Junk} folder (created if missing) instead of INBOX; a Sieve script
            still runs (after the verdict: it sees the X-Spam header), and its implicit or
            explicit C{keep} files into Junk.
        @param refuse: the caller can still refuse the message (SMTP, one recipient, before
            its reply to DATA): a Sieve C{reject} is returned in L{Delivered.refused} for a
            C{550 5.7.1} instead of sent as a rejection notice (RFC 5429 §2.1.1, as Pigeonhole
            does through LMTP).
        @param resolution: L{resolve} of C{recipients}, when the caller has it already.

        @raise OSError: on a disk failure; some copies may already be stored.
        """
        users, remote, details, given = (
            resolution if resolution is not None else self._resolve(recipients)
        )
        data = return_path_header(reverse_path) + message
        refused: str | None = None
        over: list[Mailbox] = []
        if not self.plus_folder:
            details = {}
        sender = str(reverse_path) if reverse_path else "<>"
        for user in users:
            root = self._root(str(user))
            limit = self.quota.quota(str(user)) if self.quota is not None else None
            envelope = Envelope(
                sender=str(reverse_path) if reverse_path else "",
                recipient=_sieve_recipient(
                    user, given.get(str(user), str(user)), self.store.recipient_delimiter
                ),
                original_recipient=given.get(str(user), ""),
            )
            # One hop to a thread per user: the quota's usage listing, the script and the
            # durable write (the listing was a hop of its own).
            outcome: _Outcome = await self.run_in_thread(
                self._deliver_made,
                user,
                root,
                limit,
                reverse_path,
                message,
                data,
                envelope,
                details.get(str(user)),
                junk,
                refuse,
            )
            if outcome.over_quota:
                log.info(
                    "not delivered: to={to} from={sender} size={size}: {resource} quota exceeded",
                    to=str(user),
                    sender=sender,
                    size=len(data) + len(delivered_to_header(user)),
                    resource=outcome.over_quota,
                )
                over.append(user)
                continue
            if outcome.refusal is not None:
                refused = outcome.refusal
            if outcome.error:
                log.warn(
                    "sieve: user={user} script={script}: {error}; message kept in INBOX",
                    user=str(user),
                    script=outcome.script,
                    error=outcome.error,
                )
            for folder, name in outcome.stored:
                log.info(
                    "delivered: to={to} from={sender} size={size} file={name}",
                    to=str(user),
                    sender=sender,
                    size=len(data) + len(delivered_to_header(user)),
                    name=name if folder == "INBOX" else f"{folder}/{name}",
                )
            if outcome.script and not outcome.stored:
                log.info(
                    "sieve: user={user}: not stored ({why})",
                    user=str(user),
                    why=outcome.dropped or "discard",
                )
            for folder_path in outcome.changed:
                self.notifier.changed(folder_path)
            for why, envelope_from, to, outgoing in outcome.outgoing:
                # DKIM: what we write (vacation reply, rejection) is signed, a redirect not.
                sign = why != "redirect"
                await self._send(envelope_from, to, outgoing, via=user.domain, sign=sign)
                log.info(
                    "sieve: user={user}: {why} queued to {to}",
                    user=str(user),
                    why=why,
                    to=",".join(f"<{m}>" for m in to),
                )
        stored = tuple(u for u in users if u not in over)
        return Delivered(stored, tuple(remote), tuple(over), refused)

    async def _send(
        self,
        reverse_path: Mailbox | None,
        to: list[Mailbox],
        message: bytes,
        via: str,
        sign: bool = False,
    ) -> None:
        """What a script sends: local recipients are delivered here (as submission does),
        the others queued (a redirect as forwarded mail, through the user's domain C{via})."""
        local = [m for m in to if self.store.is_local_domain(m.domain)]
        remote = [m for m in to if m not in local]
        if local:
            remote += list((await self.deliver_all(reverse_path, local, message)).remote)
        if remote:
            assert self.outbound is not None
            reverse_path, message = await self.forwarded(reverse_path, via, message)
            await self.outbound(reverse_path, remote, message, sign=sign)

    def _root(self, address: str) -> Path:
        """L{mailbox_root} of C{address}, the same Path object each time."""
        root = self._roots.get(address)
        if root is None:
            root = mailbox_root(self.mail_dir, address)
            if len(self._roots) >= MAX_ROOTS:
                self._roots.clear()
            self._roots[address] = root
        return root

    def _deliver_made(
        self,
        user: Mailbox,
        root: Path,
        limit: Quota | None,
        reverse_path: Mailbox | None,
        message: bytes,
        data: bytes,
        *rest: Any,
    ) -> _Outcome:
        """L{_deliver_one}, after the quota check against C{limit} (the user's, read by the
        caller; over it, nothing is stored: L{_Outcome.over_quota}), the user's Maildir made
        at its first delivery only: six syscalls a message fewer, each of which lets the
        reactor thread take the GIL.  A Maildir removed by hand since is made again: its
        absence means nothing was stored there, so the delivery is simply run again."""
        if limit is not None and self.quota is not None:
            size = len(data) + len(delivered_to_header(user))  # as _deliver_one writes it
            resource = self.quota.exceeded_at(limit, root, size)
            if resource is not None:
                return _Outcome(over_quota=resource)
        if root not in self._maildirs:
            make_maildir(root)
            self._maildirs.add(root)
        args = (reverse_path, message, data, *rest)
        try:
            return self._deliver_one(user, root, *args)
        except FileNotFoundError:
            if (root / "tmp").is_dir():
                raise
            self._maildirs.discard(root)
            make_maildir(root)
            self._maildirs.add(root)
            return self._deliver_one(user, root, *args)

    def _deliver_one(
        self,
        user: Mailbox,
        root: Path,
        reverse_path: Mailbox | None,
        message: bytes,
        data: bytes,
        envelope: Envelope,
        detail: str | None = None,
        junk: bool = False,
        refuse: bool = False,
    ) -> _Outcome:
        """In a thread: run the user's script (if any) and store durably; without a script,
        into the folder named by C{detail} when it exists (C{[delivery] plus_folder}); a
        C{junk} message's keep goes to the Junk folder.
        Every copy carries C{Delivered-To: user} after Return-Path, as Postfix and Dovecot
        LMTP write it: what a Sieve redirect checks for a loop (RFC 5228 §4.2).
        The Maildir C{root} exists (L{_deliver_made})."""
        user_text = str(user)
        data = data.replace(b"\r\n", b"\r\n" + delivered_to_header(user), 1)
        script_path = active_script(root)
        keep = JUNK if junk else "INBOX"
        if junk:
            _ensure_junk(root)
        if script_path is None and junk:
            into = UserMaildir(root).folder_path(JUNK)
            return _Outcome(stored=[(JUNK, write_durably(into / "new", data))], changed=[into])
        if script_path is None:
            into = _detail_folder(root, detail) if detail else root
            if into is not root:
                make_maildir(into, folder=True)  # a folder with only cur/ still takes mail
                name = write_durably(into / "new", data)
                return _Outcome(stored=[(into.name[1:], name)], changed=[into])
            # the path as text: no Path object per message (issue 10)
            name = write_durably(os.path.join(root, "new"), data)
            return _Outcome(stored=[("INBOX", name)], changed=[root])
        maildir = UserMaildir(root)
        outcome = _Outcome(script=str(script_path))
        try:
            script = self.scripts.get(script_path)
        except (SieveError, OSError, UnicodeError) as e:
            outcome.error = str(e)
            result = Result((), Keep())
        else:
            result = evaluate(
                script,
                data,
                envelope,
                mailbox_exists=lambda name: _folder_exists(maildir, name),
                load_script=lambda name, where: self._include(root, name, where),
                max_actions=self.sieve_limits.max_actions,
                max_redirects=self.sieve_limits.max_redirects,
                recipient_delimiter=self.store.recipient_delimiter,
                max_steps=self.sieve_limits.max_steps,
            )
            if result.error:
                outcome.error = f"runtime error: {result.error}"
        targets: dict[str, list[str]] = {}
        create: set[str] = set()
        for action in result.all_actions:
            if isinstance(action, Keep):
                _merge(targets, keep, action.flags)
            elif isinstance(action, FileInto):
                folder = action.folder
                try:
                    path = maildir.folder_path(folder)
                except MaildirError as e:
                    outcome.error = f"fileinto {folder!r}: {e}; kept in INBOX"
                    folder, path = "INBOX", root
                if path == root:
                    folder = "INBOX"
                elif not (path / "cur").is_dir() and not action.create:
                    log.info(
                        "sieve: user={user}: fileinto {folder!r}: no such folder; INBOX",
                        user=user_text,
                        folder=folder,
                    )
                    folder = "INBOX"
                elif action.create:
                    create.add(folder)
                _merge(targets, folder, action.flags)
            elif isinstance(action, Redirect):
                if self.outbound is None:
                    outcome.error = "redirect: no outbound queue; kept in INBOX"
                    _merge(targets, "INBOX", ())
                elif _delivered_to(message, user_text) or _hops(message) >= MAX_REDIRECT_HOPS:
                    # A loop: never lose the message, keep it here instead.
                    _merge(targets, "INBOX", ())
                    log.warn(
                        "sieve: user={user}: not redirected to {to}: the message already"
                        " carries Delivered-To: {user} (mail loop); kept in INBOX",
                        user=user_text,
                        to=action.address,
                    )
                else:
                    try:
                        target = Mailbox.parse(action.address)
                    except ValueError:
                        outcome.error = f"redirect: invalid address {action.address!r}"
                        _merge(targets, "INBOX", ())
                        continue
                    copy = delivered_to_header(user) + message
                    outcome.outgoing.append(("redirect", reverse_path, [target], copy))
            elif isinstance(action, Vacation):
                self._vacation(outcome, action, user_text, root, reverse_path, data, envelope)
            elif isinstance(action, Reject):
                outcome.dropped = "rejected"
                if refuse:
                    outcome.refusal = action.reason  # answered 550 5.7.1 by the caller
                elif reverse_path is not None and self.outbound is not None:
                    refusal = rejection(
                        message, action.reason, user_text, str(reverse_path), self.hostname
                    )
                    outcome.outgoing.append(("rejection", None, [reverse_path], refusal))
        for folder, flags in targets.items():
            if folder in create:
                try:
                    maildir.create(folder)
                except MaildirError:
                    pass  # created meanwhile
            path = maildir.folder_path(folder)
            outcome.stored.append((folder, _store(Folder(path), data, flags)))
            outcome.changed.append(path)
        return outcome

    def _vacation(
        self,
        outcome: _Outcome,
        vacation: Vacation,
        user: str,
        root: Path,
        reverse_path: Mailbox | None,
        data: bytes,
        envelope: Envelope,
    ) -> None:
        if reverse_path is None or self.outbound is None:
            return
        addresses = sorted(self.store.owned_addresses(user))
        if not vacation_reply_allowed(
            data, envelope, addresses, vacation, self.store.recipient_delimiter
        ):
            log.info("sieve: user={user}: no vacation reply (RFC 5230 §4.5)", user=user)
            return
        sender = str(reverse_path)
        if not VacationMemory(root).claim(sender, vacation_handle(vacation), vacation.seconds):
            log.info(
                "sieve: user={user}: vacation reply to {sender} already sent this period",
                user=user,
                sender=sender,
            )
            return
        reply = vacation_reply(data, vacation, user, sender, self.hostname)
        outcome.outgoing.append(("vacation reply", None, [reverse_path], reply))

    def _include(self, root: Path, name: str, where: str) -> Script | None:
        """RFC 6609 C{:personal} includes from the user's C{~/sieve}; no global scripts."""
        if where != "personal":
            return None
        try:
            path = SieveStore(root).path(name)
        except ValueError:
            return None
        try:
            return self.scripts.get(path)
        except FileNotFoundError:
            return None


Outbound = Callable[..., Awaitable[object]]
"""C{(reverse path, recipients, message, *, sign)}: queue a message durably (the outbound
queue's C{enqueue}); C{sign}: DKIM-sign it (mail we generate, never a redirect)."""


@attrs.define
class _Outcome:
    stored: list[tuple[str, str]] = attrs.Factory(list)
    changed: list[Path] = attrs.Factory(list)
    outgoing: list[tuple[str, Mailbox | None, list[Mailbox], bytes]] = attrs.Factory(list)
    script: str = ""
    error: str = ""
    dropped: str = ""
    refusal: str | None = None
    over_quota: str = ""  # the resource the message would exceed; nothing stored


SYSTEM_FLAG_LETTERS = {
    "\\answered": "R",
    "\\deleted": "T",
    "\\draft": "D",
    "\\flagged": "F",
    "\\seen": "S",
}
"""IMAP system flags (RFC 3501 §2.3.2) -> Maildir info letters."""


JUNK = "Junk"
"""The folder spam goes to: the name SPECIAL-USE marks C{\\Junk} (RFC 6154 §2,
L{twistedmail.imap.account.SPECIAL_USE})."""


def _ensure_junk(root: Path) -> None:
    """Create and subscribe the user's Junk folder if it is missing (in the thread)."""
    maildir = UserMaildir(root)
    if (maildir.folder_path(JUNK) / "cur").is_dir():
        return
    try:
        maildir.create(JUNK)
    except MaildirError:
        return  # created meanwhile
    maildir.subscribe(JUNK)


def _merge(targets: dict[str, list[str]], folder: str, flags: Sequence[str]) -> None:
    """One copy per folder (RFC 5228 §2.10.3), with the union of the flags."""
    have = targets.setdefault(folder, [])
    for flag in flags:
        if flag.lower() not in {f.lower() for f in have}:
            have.append(flag)


def _store(folder: Folder, data: bytes, flags: Sequence[str]) -> str:
    """Store durably in C{new/}, or in C{cur/} with the flags' letters (keywords get
    letters in the folder's C{dovecot-keywords})."""
    letters = "".join(SYSTEM_FLAG_LETTERS.get(f.lower(), "") for f in flags)
    keywords = [f for f in flags if not f.startswith("\\")]
    if keywords:
        letters += folder.keyword_letters(keywords)
    if not letters:
        return write_durably(folder.path / "new", data)
    before = set(os.listdir(folder.path / "cur"))
    folder.add(data, letters)
    added = sorted(set(os.listdir(folder.path / "cur")) - before)
    return added[0] if added else ""


def _folder_exists(maildir: UserMaildir, name: str) -> bool:
    try:
        return (maildir.folder_path(name) / "cur").is_dir()
    except MaildirError:
        return False


_DELIVERED_TO = re.compile(rb"^Delivered-To:[ \t]*<?([^\r\n>]*?)>?[ \t]*\r?$", re.I | re.M)


def _sieve_recipient(user: Mailbox, given: str, delimiter: str = "+") -> str:
    """The Sieve envelope "to" (RFC 5228 §5.4): the recipient as the client gave it when
    it is the user's own address with a detail after C{delimiter} (RFC 5233 C{:detail}
    needs it; C{""}: no detail), else the user (an alias or catch-all was expanded, as
    Postfix does before LMTP)."""
    local, _, domain = given.rpartition("@")
    base = local.split(delimiter, 1)[0] if delimiter else local
    if domain.lower() == user.domain and base.lower() == user.local:
        return given
    return str(user)


MAX_REDIRECT_HOPS = 10
"""Delivered-To headers beyond which a message is not redirected again (a hop count for
redirect chains through several users, like Postfix's)."""


def _hops(message: bytes) -> int:
    end = message.find(b"\r\n\r\n")
    return len(_DELIVERED_TO.findall(message if end < 0 else message[: end + 2]))


def _delivered_to(message: bytes, user: str) -> bool:
    """Whether the header section already carries our C{Delivered-To: user} (a loop)."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    wanted = user.lower().encode()
    return any(m.group(1).strip().lower() == wanted for m in _DELIVERED_TO.finditer(head))


def active_script(home: Path) -> Path | None:
    """The user's active script: the C{~/.dovecot.sieve} link into C{~/sieve}, or the file
    itself when it is a regular file (Pigeonhole accepts both).  Most users have neither:
    one C{lstat} says so (each call in a delivery thread lets the reactor take the GIL)."""
    try:
        mode = os.lstat(os.path.join(home, ACTIVE_LINK)).st_mode  # no Path made per message
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        store = SieveStore(home)
        name = store.active()
        return store.path(name) if name is not None else None
    return home / ACTIVE_LINK if stat.S_ISREG(mode) else None


class ScriptCache:
    """Compiled scripts by path, recompiled when the file's mtime, size or inode change;
    at most C{size} entries (least recently used go first).  Thread-safe.

    @param max_script_size: bytes; a larger script is an error, not read
        (C{[delivery] sieve_max_script_size})."""

    def __init__(self, size: int = 256, max_script_size: int = MAX_SCRIPT_SIZE) -> None:
        self.size = size
        self.max_script_size = max_script_size
        self._entries: OrderedDict[Path, tuple[tuple[int, int, int], Script | SieveError]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, path: Path) -> Script:
        """@raise SieveError: the script does not compile.  @raise OSError: unreadable."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            with self._lock:
                cached = self._entries.get(path)
                if cached is not None and cached[0] == key:
                    self._entries.move_to_end(path)
                    compiled = cached[1]
                else:
                    compiled = None
            if compiled is None:
                try:
                    if st.st_size > self.max_script_size:
                        raise SieveError(0, f"script larger than {self.max_script_size} bytes")
                    compiled = compile_script(f.read(), max_size=self.max_script_size)
                except SieveError as e:
                    compiled = e
                with self._lock:
                    self._entries[path] = (key, compiled)
                    self._entries.move_to_end(path)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
        if isinstance(compiled, SieveError):
            raise compiled
        return compiled


def _detail_folder(root: Path, detail: str | None) -> Path:
    """The existing folder of C{root} named C{detail} (case-insensitive), else C{root}."""
    if detail:
        maildir = UserMaildir(root)
        for name in maildir.folders()[1:]:
            if name.lower() == detail.lower():
                return maildir.folder_path(name)
    return root
