"""Local delivery: final recipients -> each user's Maildir INBOX, durably (RFC 5321 §4.4).

The SMTP layer builds the Received: header (it knows the session); this module adds
Return-Path (RFC 5321 §4.4: the final delivery MTA records the reverse-path), expands aliases
(L{AccountStore.expand}) and writes one file per distinct user with
L{twistedmail.maildir.write_durably}, in a thread.  When C{deliver} returns, every copy is on
disk (fsynced), so the caller may acknowledge with 250.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import Logger

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.auth import RunInThread
from twistedmail.maildir import ChangeNotifier, mailbox_root, make_maildir, write_durably

log = Logger(namespace="twistedmail.delivery")


def return_path_header(reverse_path: Mailbox | None) -> bytes:
    """C{Return-Path: <addr>} with CRLF (RFC 5321 §4.4; C{<>} for the null reverse-path)."""
    return b"Return-Path: <%s>\r\n" % (str(reverse_path).encode() if reverse_path else b"")


class LocalDelivery:
    """Delivers messages to local users' INBOXes.

    @param mail_dir: C{DATA_DIR/mail}.
    @param notifier: told (on the reactor thread) which folders received mail.
    """

    def __init__(
        self,
        store: AccountStore,
        mail_dir: Path,
        notifier: ChangeNotifier,
        run_in_thread: RunInThread,
    ) -> None:
        self.store = store
        self.mail_dir = mail_dir
        self.notifier = notifier
        self.run_in_thread = run_in_thread

    def local_users(self, recipients: list[Mailbox]) -> tuple[list[Mailbox], list[Mailbox]]:
        """Expand aliases; return (distinct local users, remote addresses), order kept."""
        users: dict[str, Mailbox] = {}
        remote: dict[str, Mailbox] = {}
        for rcpt in recipients:
            for final in self.store.expand(rcpt):
                target = users if self.store.is_user(str(final)) else remote
                target.setdefault(str(final), final)
        return list(users.values()), list(remote.values())

    async def deliver(
        self, reverse_path: Mailbox | None, recipients: list[Mailbox], message: bytes
    ) -> list[Mailbox]:
        """Store C{message} (bytes, CRLF lines, trace headers already on top) for each local
        user behind C{recipients}, with a Return-Path header first.

        @return: the remote addresses found by alias expansion (not delivered here).
        @raise OSError: on a disk failure; some copies may already be stored.
        """
        users, remote = self.local_users(recipients)
        data = return_path_header(reverse_path) + message
        roots = [mailbox_root(self.mail_dir, str(u)) for u in users]
        names: list[Any] = await self.run_in_thread(_store_all, roots, data)
        for user, root, name in zip(users, roots, names, strict=True):
            log.info(
                "delivered: to={to} from={sender} size={size} file={name}",
                to=str(user),
                sender=str(reverse_path) if reverse_path else "<>",
                size=len(data),
                name=name,
            )
            self.notifier.changed(root)
        return remote


def _store_all(roots: list[Path], data: bytes) -> list[str]:
    names = []
    for root in roots:
        make_maildir(root)
        names.append(write_durably(root / "new", data))
    return names
