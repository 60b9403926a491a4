"""Local delivery: final recipients -> each user's Maildir INBOX, durably (RFC 5321 §4.4).

The SMTP layer builds the Received: header (it knows the session); this module adds
Return-Path (RFC 5321 §4.4: the final delivery MTA records the reverse-path), expands aliases
(L{AccountStore.expand}) and writes one file per distinct user with
L{twistedmail.maildir.write_durably}, in a thread.  When C{deliver} returns, every copy is on
disk (fsynced), so the caller may acknowledge with 250.

Quota (L{twistedmail.quota}): a user whose quota the message would exceed gets no copy; the
caller learns who (L{Delivered.over_quota}) and answers C{552 5.2.2} or sends a bounce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.auth import RunInThread
from twistedmail.maildir import (
    ChangeNotifier,
    UserMaildir,
    mailbox_root,
    make_maildir,
    write_durably,
)
from twistedmail.quota import QuotaExceeded, QuotaTracker

log = Logger(namespace="twistedmail.delivery")


def return_path_header(reverse_path: Mailbox | None) -> bytes:
    """C{Return-Path: <addr>} with CRLF (RFC 5321 §4.4; C{<>} for the null reverse-path)."""
    return b"Return-Path: <%s>\r\n" % (str(reverse_path).encode() if reverse_path else b"")


@attrs.frozen
class Delivered:
    """The outcome of L{LocalDelivery.deliver_all}.

    @ivar stored: the local users who got a copy.
    @ivar remote: the remote addresses aliases expanded to (not delivered here).
    @ivar over_quota: the local users whose quota the message would exceed (no copy).
    """

    stored: tuple[Mailbox, ...]
    remote: tuple[Mailbox, ...]
    over_quota: tuple[Mailbox, ...]


class LocalDelivery:
    """Delivers messages to local users' INBOXes.

    @param mail_dir: C{DATA_DIR/mail}.
    @param notifier: told (on the reactor thread) which folders received mail.
    @param quota: the users' quotas; C{None} stores without limit.
    @param plus_folder: mail to C{user+detail} goes into the user's existing folder named
        C{detail} (case-insensitive), else INBOX (C{[delivery] plus_folder}, RFC 5233).
    """

    def __init__(
        self,
        store: AccountStore,
        mail_dir: Path,
        notifier: ChangeNotifier,
        run_in_thread: RunInThread,
        quota: QuotaTracker | None = None,
        plus_folder: bool = False,
    ) -> None:
        self.store = store
        self.mail_dir = mail_dir
        self.notifier = notifier
        self.run_in_thread = run_in_thread
        self.quota = quota
        self.plus_folder = plus_folder

    def local_users(self, recipients: list[Mailbox]) -> tuple[list[Mailbox], list[Mailbox]]:
        """Expand aliases; return (distinct local users, remote addresses), order kept."""
        users, remote, _details = self._resolve(recipients)
        return users, remote

    def _resolve(
        self, recipients: list[Mailbox]
    ) -> tuple[list[Mailbox], list[Mailbox], dict[str, str]]:
        """L{local_users}, and user -> the RFC 5233 detail of the first recipient that named
        them directly (C{alice+lists@} -> C{lists}; L{AccountStore.resolve}), each recipient
        resolved once."""
        users: dict[str, Mailbox] = {}
        remote: dict[str, Mailbox] = {}
        details: dict[str, str] = {}
        for rcpt in recipients:
            for final, detail in self.store.resolve(rcpt):
                local = self.store.is_local_domain(final.domain)
                (users if local else remote).setdefault(str(final), final)
                if detail:
                    details.setdefault(str(final), detail)
        return list(users.values()), list(remote.values()), details

    async def check_quota(self, recipient: Mailbox, size: int = 0) -> None:
        """RCPT time: refuse a recipient whose every local user is already at or over their
        quota, or has no room for C{size} octets when the client announced the size (an
        alias with one user who has room is accepted).

        @raise QuotaExceeded: for the first full user, when all are full.
        """
        if self.quota is None:
            return
        users, remote = self.local_users([recipient])
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
        self, reverse_path: Mailbox | None, recipients: list[Mailbox], message: bytes
    ) -> Delivered:
        """Store C{message} (bytes, CRLF lines, trace headers already on top) for each local
        user behind C{recipients} who has room for it (L{QuotaTracker.check}), with a
        Return-Path header first.

        @raise OSError: on a disk failure; some copies may already be stored.
        """
        users, remote, details = self._resolve(recipients)
        data = return_path_header(reverse_path) + message
        over: list[Mailbox] = []
        if self.quota is not None:
            for user in users:
                try:
                    await self.quota.check(str(user), len(data))
                except QuotaExceeded as e:
                    log.info(
                        "not delivered: to={to} from={sender} size={size}: {resource} quota"
                        " exceeded",
                        to=str(user),
                        sender=str(reverse_path) if reverse_path else "<>",
                        size=len(data),
                        resource=e.resource,
                    )
                    over.append(user)
            users = [u for u in users if u not in over]
        if not self.plus_folder:
            details = {}
        roots = [mailbox_root(self.mail_dir, str(u)) for u in users]
        stored: list[Any] = await self.run_in_thread(
            _store_all, roots, data, [details.get(str(u)) for u in users]
        )
        for user, (root, name) in zip(users, stored, strict=True):
            log.info(
                "delivered: to={to} from={sender} size={size} file={name}",
                to=str(user),
                sender=str(reverse_path) if reverse_path else "<>",
                size=len(data),
                name=name,
            )
            self.notifier.changed(root)
        return Delivered(tuple(users), tuple(remote), tuple(over))


def _detail_folder(root: Path, detail: str | None) -> Path:
    """The existing folder of C{root} named C{detail} (case-insensitive), else C{root}."""
    if detail:
        maildir = UserMaildir(root)
        for name in maildir.folders()[1:]:
            if name.lower() == detail.lower():
                return maildir.folder_path(name)
    return root


def _store_all(
    roots: list[Path], data: bytes, details: list[str | None]
) -> list[tuple[Path, str]]:
    stored = []
    for root, detail in zip(roots, details, strict=True):
        make_maildir(root)
        folder = _detail_folder(root, detail)
        if folder != root:
            make_maildir(folder, folder=True)  # a folder with only cur/ still takes mail
        stored.append((folder, write_durably(folder / "new", data)))
    return stored
