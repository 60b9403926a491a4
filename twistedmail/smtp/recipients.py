"""Local recipients, shared by the port-25 and submission policies: RCPT checks against the
account store (RFC 5321 §3.3, §4.1.1.3: C{550 5.1.1} for no such user), quota at RCPT (RFC
1870 SIZE, RFC 3463 C{552 5.2.2}), and durable delivery after DATA (RFC 5321 §6.1: stored
before C{250}) with forwarding of aliases' remote addresses to the outbound queue (§3.9.1),
bounces for users over quota (RFC 3464) and Sieve rejects refused in the transaction
(RFC 5429 §2.1.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from twistedmail import metrics
from twistedmail.accounts import AccountStore
from twistedmail.address import (
    Mailbox,
)
from twistedmail.delivery import LocalDelivery
from twistedmail.maildir import is_enospc
from twistedmail.quota import QuotaExceeded
from twistedmail.reply import (
    REPLY_450_RELAY_UNAVAILABLE,
    REPLY_452_STORAGE,
    REPLY_550_NO_SUCH_USER,
    REPLY_552_MAILBOX_FULL,
    Reply,
)
from twistedmail.smtp.policy import Client, Envelope, OutboundQueue, SMTPReplyError

log = Logger(namespace="twistedmail.smtp")


class LocalPolicy:
    """The base of the two listeners' policies (L{twistedmail.smtp.policy.SessionPolicy}):
    the account store, the outbound queue and the L{LocalRecipients} they share.

    @param queue: the outbound queue (forwarding, bounces, remote recipients of submission);
        C{None}: such recipients get C{450 4.7.1}.
    """

    def __init__(
        self, store: AccountStore, delivery: LocalDelivery, queue: OutboundQueue | None = None
    ) -> None:
        self.store = store
        self.queue = queue
        self.local = LocalRecipients(store, delivery, queue)

    def connected(self, client: Client) -> None:
        """Nothing to do at connect."""

    def postmaster(self, hostname: str) -> Mailbox | None:
        """The local mailbox for a bare C{<Postmaster>} (RFC 5321 §4.5.1)."""
        return self.local.postmaster(hostname)


class LocalRecipients:
    """Recipient checks and delivery for local mailboxes, shared by inbound and submission.

    @param queue: the outbound queue, for aliases that expand to remote addresses
        (forwarding); without it such an alias gets C{450 4.7.1}.
    """

    def __init__(
        self, store: AccountStore, delivery: LocalDelivery, queue: OutboundQueue | None = None
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.queue = queue

    def check(self, recipient: Mailbox) -> tuple[list[Mailbox], list[Mailbox]]:
        """Accept a recipient in a local domain at RCPT time (RFC 5321 §3.3, §4.1.1.3).

        @return: the local users and remote addresses it expands to (aliases resolved once
            at RCPT; hand them to L{check_quota}).
        @raise SMTPReplyError: C{550 5.1.1} for no such user or alias; C{450 4.7.1} for an
            alias that expands to a remote address when there is no queue.
        """
        users, remote = self.delivery.local_users([recipient])  # resolved once (route)
        if remote and self.queue is None:
            raise SMTPReplyError(REPLY_450_RELAY_UNAVAILABLE)
        if not users and not remote:
            raise SMTPReplyError(REPLY_550_NO_SUCH_USER)
        return users, remote

    def postmaster(self, hostname: str) -> Mailbox | None:
        """The local mailbox for a bare C{<Postmaster>} (see L{AccountStore.postmaster})."""
        return self.store.postmaster(hostname)

    async def check_quota(
        self,
        recipient: Mailbox,
        size: int = 0,
        resolved: tuple[list[Mailbox], list[Mailbox]] | None = None,
    ) -> None:
        """RCPT time, after L{check}: refuse a user already over quota, as Dovecot's LMTP
        does with C{lmtp_rcpt_check_quota} (and its default C{quota_full_tempfail=no}), or
        one who has no room for the C{size} octets MAIL FROM announced (RFC 1870 SIZE).

        @param resolved: what L{check} returned for C{recipient}.
        @raise SMTPReplyError: C{552 5.2.2} (RFC 3463 mailbox full).
        """
        try:
            await self.delivery.check_quota(recipient, size, resolved)
        except QuotaExceeded:
            raise SMTPReplyError(REPLY_552_MAILBOX_FULL) from None

    async def store_and_forward(
        self, envelope: Envelope, message: bytes, others: bool = False, junk: bool = False
    ) -> None:
        """Store C{message} durably for every local recipient, and queue it for the remote
        addresses aliases expand to (RFC 5321 §6.1, §3.9.1 forwarding); C{junk}: into each
        user's Junk folder (the spam filter's verdict, L{LocalDelivery.deliver_all}).

        A user whose quota the message would exceed gets no copy: when nobody else gets the
        message (and not C{others}, recipients the caller delivers itself), the whole
        transaction is refused with C{552 5.2.2}; otherwise the others get it and the sender
        gets a bounce for the users over quota (SMTP has one reply for DATA; Postfix's
        local delivery does the same).

        @raise SMTPReplyError: C{550 5.1.1} when no recipient is a local user or a
            forwarding alias any more (all deleted since RCPT: refuse rather than
            acknowledge and drop, RFC 5321 §6.1); C{452 4.3.1} when the disk is full;
            C{552 5.2.2} as above.
        @raise OSError: any other disk failure (the session answers 451).
        """
        # Resolved again (once) here, not taken from RCPT: an alias or user deleted since
        # then must not get mail; the same expansion is handed to deliver_all.
        resolution = self.delivery.resolve(list(envelope.recipients))
        users, remote = resolution[0], resolution[1]
        if not users and not (remote and self.queue is not None):
            raise SMTPReplyError(REPLY_550_NO_SUCH_USER)
        # RFC 5429 §2.1.1: a Sieve reject is refused in the transaction when the reply to
        # DATA speaks for that one user alone.
        refuse = len(envelope.recipients) == 1 and len(users) == 1 and not remote and not others
        try:
            if users:
                delivered = await self.delivery.deliver_all(
                    envelope.reverse_path,
                    list(envelope.recipients),
                    message,
                    junk=junk,
                    refuse=refuse,
                    resolution=resolution,
                )
                metrics.of(self.delivery).delivered_locally(
                    len(delivered.stored), envelope.received_at
                )
                if delivered.refused is not None:
                    raise SMTPReplyError(sieve_refusal(delivered.refused))
                remote = list(delivered.remote)
                if delivered.over_quota:
                    if not (delivered.stored or others or (remote and self.queue is not None)):
                        raise SMTPReplyError(REPLY_552_MAILBOX_FULL)
                    await self._bounce(envelope, delivered.over_quota, message)
            if remote and self.queue is not None:
                # Forwarding (issue 14): SRS sender and ARC seal, through the alias's domain.
                via = next((r.domain for r in envelope.recipients if r not in remote), None)
                sender, message = await self.delivery.forwarded(envelope.reverse_path, via, message)
                # DKIM-signed only when an authenticated user submitted it: a message from
                # the internet is forwarded as it came, whatever domain its From: claims.
                user = envelope.client.user is not None
                await self.queue.enqueue(sender, remote, message, sign=user)
        except OSError as e:
            if is_enospc(e):
                raise SMTPReplyError(REPLY_452_STORAGE) from None
            raise
        if remote and self.queue is None:
            log.warn(
                "session {session}: alias now expands to remote {remote}; not relayed",
                session=envelope.client.session_id,
                remote=[str(m) for m in remote],
            )

    async def _bounce(
        self, envelope: Envelope, over_quota: Sequence[Mailbox], message: bytes
    ) -> None:
        if self.queue is None:
            log.warn(
                "session {session}: no bounce for {users} over quota (no queue)",
                session=envelope.client.session_id,
                users=[str(m) for m in over_quota],
            )
            return
        failures = [(user, REPLY_552_MAILBOX_FULL) for user in over_quota]
        try:
            await self.queue.bounce(envelope.reverse_path, failures, message)
        except Exception:
            # The others have their copies: a 4xx now would make the client send it again.
            log.failure("session {session}: bounce failed", session=envelope.client.session_id)


def sieve_refusal(reason: str) -> Reply:
    """C{550 5.7.1 <reason>} for a Sieve reject at SMTP time (RFC 5429 §2.1.1, RFC 3463
    5.7.1): the reason on one line, printable ASCII (others as '?'), at most 400 characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in " ".join(reason.split()))[:400]
    return Reply(550, "5.7.1", text or "Message rejected")
