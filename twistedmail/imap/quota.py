"""The IMAP QUOTA extension (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA and OVERQUOTA.

Each user has one quota root, C{""}, covering all their mailboxes (as Dovecot's default
"User quota"), with the resources STORAGE (RFC 9208 §5.1, in units of 1024 octets) and
MESSAGE (§5.2) when the administrator set a limit for them (C{twistedmail user quota}); a
user without any limit has no quota root, so GETQUOTAROOT answers C{* QUOTAROOT <mailbox>}
alone (§4.2.2).  SETQUOTA is refused (C{NO [NOPERM]}): limits are the administrator's.

APPEND and COPY that would take the user over a limit are refused with C{NO [OVERQUOTA]}
(§4.3.1) before anything is stored.  MOVE is not checked: it does not grow the usage of a
quota root (Dovecot does the same), so a user over quota can still move mail to Trash.

L{QuotaCommands} is a mixin of L{twistedmail.imap.server.IMAPServer}; its handlers run under
that server's dispatcher, which answers a C{MailboxError} with C{NO [code] text}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred
from twisted.mail import imap4

from twistedmail.accounts import Quota
from twistedmail.imap.account import MailboxError
from twistedmail.imap.message import encode_string
from twistedmail.imap.protocol import decode_mailbox_name
from twistedmail.quota import QuotaExceeded, QuotaTracker, Usage

ROOT = b""
"""The one quota root of a user (RFC 9208 §3.1: a name, here empty, as Dovecot's)."""

CAPABILITIES: dict[bytes, Any] = {
    b"QUOTA": None,
    b"QUOTA=RES-STORAGE": None,
    b"QUOTA=RES-MESSAGE": None,
}
"""RFC 9208 §3.2.1: QUOTA plus one QUOTA=RES-<name> per resource supported."""


def resources(quota: Quota, usage: Usage) -> bytes:
    """The parenthesised list of a QUOTA response (RFC 9208 §4.2.1): C{STORAGE used limit}
    in KiB (§5.1: units of 1024 octets, rounded down) and C{MESSAGE used limit}, for the
    resources that have a limit."""
    items = []
    if quota.storage:
        items.append(b"STORAGE %d %d" % (usage.storage // 1024, quota.storage // 1024))
    if quota.messages:
        items.append(b"MESSAGE %d %d" % (usage.messages, quota.messages))
    return b"(" + b" ".join(items) + b")"


def over_quota() -> MailboxError:
    """C{NO [OVERQUOTA] Quota exceeded} (RFC 9208 §4.3.1)."""
    return MailboxError("Quota exceeded", b"OVERQUOTA")


class QuotaCommands:
    """GETQUOTA, GETQUOTAROOT, SETQUOTA (RFC 9208 §4.1) and the APPEND/COPY check."""

    quota: QuotaTracker | None
    user: str | None
    account: Any

    if TYPE_CHECKING:  # provided by IMAPServer

        def sendUntaggedResponse(self, message: bytes, isAsync: Any = None) -> None: ...

        def arg_astring(self, line: bytes, final: bool = False) -> Any: ...

    def _quota_arg(self, line: bytes) -> Any:
        return self.arg_astring(line, final=True)

    def _root_arg(self, line: bytes) -> Any:
        return self.arg_astring(line)

    def _quota_of_user(self) -> Quota:
        if self.quota is None or self.user is None:
            return Quota()
        return self.quota.quota(self.user)

    async def check_quota(self, size: int, count: int) -> None:
        """Refuse storing C{count} messages of C{size} octets in all when they would take the
        user over quota.  @raise MailboxError: C{NO [OVERQUOTA]} (RFC 9208 §4.3.1)."""
        if self.quota is None or self.user is None:
            return
        try:
            await self.quota.check(self.user, size, count)
        except QuotaExceeded:
            raise over_quota() from None

    async def do_GETQUOTAROOT(self, tag: bytes, name: bytes) -> bytes:
        """RFC 9208 §4.1.2: the mailbox's quota roots, then each root's QUOTA response."""
        mbox = await maybeDeferred(self.account.select, decode_mailbox_name(name), False)
        if mbox is None:
            raise MailboxError("No such mailbox", b"NONEXISTENT")
        closeable: Any = imap4.ICloseableMailbox(mbox, None)
        if closeable is not None:
            closeable.close()
        quota = self._quota_of_user()
        if quota.unlimited or self.quota is None or self.user is None:
            self.sendUntaggedResponse(b"QUOTAROOT " + encode_string(name))
            return b"GETQUOTAROOT completed"
        usage = await self.quota.usage(self.user)
        root = encode_string(ROOT)
        self.sendUntaggedResponse(b"QUOTAROOT " + encode_string(name) + b" " + root)
        self.sendUntaggedResponse(b"QUOTA " + root + b" " + resources(quota, usage))
        return b"GETQUOTAROOT completed"

    auth_GETQUOTAROOT = (do_GETQUOTAROOT, _quota_arg)
    select_GETQUOTAROOT = auth_GETQUOTAROOT

    async def do_GETQUOTA(self, tag: bytes, root: bytes) -> bytes:
        """RFC 9208 §4.1.1: the usage and limits of quota root C{root} (only C{""} exists,
        and only for a user with a limit)."""
        quota = self._quota_of_user()
        if root != ROOT or quota.unlimited or self.quota is None or self.user is None:
            raise MailboxError("No such quota root", b"NONEXISTENT")
        usage = await self.quota.usage(self.user)
        self.sendUntaggedResponse(b"QUOTA " + encode_string(ROOT) + b" " + resources(quota, usage))
        return b"GETQUOTA completed"

    auth_GETQUOTA = (do_GETQUOTA, _quota_arg)
    select_GETQUOTA = auth_GETQUOTA

    async def do_SETQUOTA(self, tag: bytes, root: bytes, limits: list[Any]) -> bytes:
        """RFC 9208 §4.1.3: limits are set by the administrator (C{twistedmail user quota})."""
        raise MailboxError("Quota limits are set by the administrator", b"NOPERM")

    auth_SETQUOTA = (do_SETQUOTA, _root_arg, imap4.IMAP4Server.arg_plist)
    select_SETQUOTA = auth_SETQUOTA
