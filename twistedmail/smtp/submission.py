"""Message submission policy for 587 (STARTTLS) and 465 (implicit TLS): RFC 6409, RFC 8314.

AUTH is required before MAIL (RFC 6409 §4.3: C{530 5.7.0 Authentication required}); there
is no anonymous fallback (stock Twisted's C{SMTP.validateFrom} tries an anonymous
C{portal.login} when nobody has authenticated, which would let anyone submit).  AUTH itself
is offered only under TLS.  The MAIL FROM address must be one the user owns (the user or an
alias expanding to it, or a subaddress of one, RFC 5233; RFC 6409 §6.1: C{553 5.7.1}
otherwise).
Local recipients are delivered as on port 25; recipients in other domains are queued
durably for the outbound relay (L{twistedmail.smtp.queue}) before C{250}; without a relay
(tests only) they get C{450 4.7.1} at RCPT.
"""

from __future__ import annotations

from email.utils import getaddresses

import attrs
from twisted.cred.portal import Portal
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.delivery import LocalDelivery
from twistedmail.maildir import StorageReserve, is_enospc
from twistedmail.metrics import Metrics
from twistedmail.rate import SubmissionRate
from twistedmail.reply import (
    REPLY_450_RELAY_UNAVAILABLE,
    REPLY_451_RATE_LIMIT,
    REPLY_452_STORAGE,
    REPLY_530_AUTH_REQUIRED,
    REPLY_550_FROM_NOT_OWNED,
    REPLY_553_SENDER_NOT_OWNED,
)
from twistedmail.rspamd import Rspamd
from twistedmail.settings import SMTPSettings
from twistedmail.smtp.inbound import filter_message
from twistedmail.smtp.server import (
    Client,
    Envelope,
    LocalRecipients,
    Relay,
    SMTPReplyError,
    SMTPSession,
    auth_portal,
)
from twistedmail.wire import SessionFactory

log = Logger(namespace="twistedmail.smtp")


class SubmissionPolicy:
    """L{twistedmail.smtp.server.SessionPolicy} of the submission listeners."""

    service = "submission"
    spam_filter: Rspamd | None = None
    """rspamd, with C{[antispam] check_submission} (L{filter_message})."""
    rate: SubmissionRate | None = None
    """Messages and recipients per user and hour (C{[limits] submission_*_per_hour})."""

    def _over_rate(self, client: Client, what: str, limit: int) -> SMTPReplyError:
        log.warn(
            "session {session}: submission rate: user {user} from [{ip}] over {limit} {what}"
            " per hour",
            session=client.session_id,
            user=client.user,
            ip=client.peer_ip,
            limit=limit,
            what=what,
        )
        return SMTPReplyError(REPLY_451_RATE_LIMIT)

    def __init__(
        self,
        store: AccountStore,
        delivery: LocalDelivery,
        relay: Relay | None = None,
        check_from_header: bool = True,
        *,
        spam_filter: Rspamd | None = None,
        rate: SubmissionRate | None = None,
    ) -> None:
        self.store = store
        self.relay = relay
        self.local = LocalRecipients(store, delivery, relay)
        self.check_from_header = check_from_header
        self.spam_filter = spam_filter
        self.rate = rate

    async def check_sender(self, client: Client, reverse_path: Mailbox | None) -> None:
        """@raise SMTPReplyError: 530 5.7.0 before AUTH; 553 5.7.1 for an address (or the
        null path) the user does not own."""
        if client.user is None:
            raise SMTPReplyError(REPLY_530_AUTH_REQUIRED)  # RFC 6409 §4.3
        if reverse_path is None or not self.store.owns(client.user, str(reverse_path)):
            raise SMTPReplyError(REPLY_553_SENDER_NOT_OWNED)  # RFC 6409 §6.1
        if self.rate is not None and not self.rate.messages.allows(client.user):
            raise self._over_rate(client, "messages", self.rate.messages.limit)

    async def check_recipient(self, client: Client, recipient: Mailbox) -> None:
        """Any remote recipient (RFC 6409 §5: the MSA relays for authenticated users).

        @raise SMTPReplyError: 530 before AUTH; 450 4.7.1 for a remote domain without a
            relay; see L{LocalRecipients} for local domains."""
        if client.user is None:
            raise SMTPReplyError(REPLY_530_AUTH_REQUIRED)
        if self.rate is not None and not self.rate.recipients.allows(client.user):
            raise self._over_rate(client, "recipients", self.rate.recipients.limit)
        if not self.store.is_local_domain(recipient.domain):
            if self.relay is None:
                raise SMTPReplyError(REPLY_450_RELAY_UNAVAILABLE)
        else:
            resolved = self.local.check(recipient)  # aliases expanded once per RCPT
            await self.local.check_quota(recipient, client.declared_size, resolved)  # 552 5.2.2
        if self.rate is not None:
            self.rate.recipients.record(client.user)

    def check_from(self, user: str, message: bytes) -> None:
        """Every address in the From: header(s) must be one C{user} owns, as for MAIL FROM
        (RFC 6409 §8.1 lets the MSA check the message's originator fields; without this, a
        user could sign mail "From:" a colleague).  A message without From: passes.

        @raise SMTPReplyError: C{550 5.7.1} for an address the user does not own.
        """
        header_end = message.find(b"\r\n\r\n")
        header = message if header_end < 0 else message[:header_end]
        # Split by hand, as readers do (our IMAP ENVELOPE, MUAs): email's parser stops at a
        # line without a colon and misses "From :" (RFC 5322 §4.5.3 obsolete syntax allows
        # white space before the colon), which would let such a From: through unchecked.
        fields: list[str] = []
        current: str | None = None
        for line in header.decode("utf-8", "replace").split("\r\n"):
            if line[:1] in (" ", "\t"):
                if current is not None:
                    current += line
                continue
            if current is not None:
                fields.append(current)
            name, colon, value = line.partition(":")
            current = value if colon and name.strip().lower() == "from" else None
        if current is not None:
            fields.append(current)
        for _name, address in getaddresses(fields):
            if not self.store.owns(user, address):
                raise SMTPReplyError(REPLY_550_FROM_NOT_OWNED)

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        """Local recipients into their INBOX, remote ones into the queue, both durably
        before the session answers 250 (RFC 5321 §6.1).

        @raise SMTPReplyError: 550 5.7.1 when From: names an address the user does not own
            (L{check_from}, unless disabled); nothing is stored then."""
        if self.check_from_header and envelope.client.user is not None:
            self.check_from(envelope.client.user, message)
        junk = False
        if self.spam_filter is not None:
            # [antispam] check_submission: a compromised account's spam (issue 14).
            message, junk = await filter_message(self.spam_filter, envelope, message)
        if self.rate is not None and envelope.client.user is not None:
            self.rate.messages.record(envelope.client.user)
        local = tuple(r for r in envelope.recipients if self.store.is_local_domain(r.domain))
        remote = [r for r in envelope.recipients if r not in local]
        if local:
            await self.local.deliver(
                attrs.evolve(envelope, recipients=local), message, others=bool(remote), junk=junk
            )
        if remote and self.relay is not None:
            try:
                await self.relay.enqueue(envelope.reverse_path, remote, message)
            except OSError as e:
                if is_enospc(e):
                    raise SMTPReplyError(REPLY_452_STORAGE) from None
                raise


def submission_factory(
    *,
    hostname: str,
    store: AccountStore,
    delivery: LocalDelivery,
    portal: Portal,
    tls: IOpenSSLContextFactory | None,
    implicit_tls: bool,
    settings: SMTPSettings,
    clock: IReactorTime,
    relay: Relay | None = None,
    check_from_header: bool = True,
    spam_filter: Rspamd | None = None,
    rate: SubmissionRate | None = None,
    storage_reserve: StorageReserve | None = None,
    metrics: Metrics | None = None,
) -> SessionFactory[SMTPSession]:
    """The factory for a submission listener (587 with C{implicit_tls=False}, 465 with True).

    @param portal: logins use its credential checkers (L{auth_portal}); the avatar is the
        authenticated address.
    @param tls: the TLS context for STARTTLS on 587; ignored with C{implicit_tls} (the
        service wraps the 465 listener in TLS, and STARTTLS is never offered there).
    @param settings: the listener's limits (max_message_size is advertised as SIZE and
        enforced, RFC 1870).
    @param clock: the reactor (idle timeout, Received: dates).
    @param relay: the outbound queue for remote recipients (L{twistedmail.smtp.queue}).
    @param check_from_header: refuse From: addresses the user does not own (L{check_from}).
    @param spam_filter: rspamd (C{[antispam] check_submission}); C{None}: no filter.
    @param rate: messages and recipients per user and hour; C{None}: unlimited.
    @param storage_reserve: no new mail while the data dir is short of space.
    @param metrics: the server's counters.
    """
    return SessionFactory(
        SMTPSession,
        settings,
        policy=SubmissionPolicy(
            store, delivery, relay, check_from_header, spam_filter=spam_filter, rate=rate
        ),
        hostname=hostname,
        clock=clock,
        tls_context=None if implicit_tls else tls,
        implicit_tls=implicit_tls,
        portal=auth_portal(portal),
        storage_reserve=storage_reserve,
        metrics=metrics,
    )
