"""Port-25 policy: mail from the internet for local domains only, never relayed (RFC 5321 §3.6).

RCPT to a local user or alias is accepted (C{250 2.1.5}); an unknown name in a local domain
gets C{550 5.1.1}; any other domain C{554 5.7.1 Relay access denied} (no open relay,
RFC 5321 §7.1 / RFC 2505); the remote part of an alias's expansion is queued for the
outbound relay (forwarding, RFC 5321 §3.9.1; without a relay it gets C{450 4.7.1}).
No AUTH is offered on this port.  After the final dot the message is stored durably in
each user's INBOX (and the queue) before C{250 2.0.0}.

With an L{Authenticator}, each message is checked first (SPF, DKIM, DMARC:
L{twistedmail.mailauth}); the stored copy gets an C{Authentication-Results:} field under our
hostname on top and loses any incoming one claiming that hostname (RFC 8601 §5).  With
C{dmarc_reject}, a DMARC fail under C{p=reject} is answered C{550 5.7.1} and nothing is
stored (RFC 7489 §6.7, §10).  A DNS failure never loses mail: the result says temperror.

With a spam filter (C{[antispam] rspamd}, L{twistedmail.rspamd}), each message is then sent
to rspamd with the envelope, the client's IP, HELO and reverse-DNS name and our
Authentication-Results, and its action applied: C{reject} -> C{550 5.7.1}, nothing stored;
C{soft reject} / C{greylist} -> C{451 4.7.1}; C{add header} / C{rewrite subject} -> rspamd's
headers and the users' Junk folder; C{no action} -> INBOX.  A filter that fails never
refuses mail.  Sieve runs after the verdict, at delivery.

With DNS blocklists (C{[antispam] dnsbl}, L{twistedmail.dnsbl}), the client IP is looked up
at connect and a listed client gets C{554 5.7.1} at RCPT, but for postmaster (RFC 5321
§4.5.1: mail to postmaster must be accepted).

Forwarding (C{[forwarding]}, L{twistedmail.srs}): a bounce to one of our SRS addresses is
checked at RCPT (a forged or expired one gets C{550 5.1.1}) and goes on to the original
sender.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger

from twistedmail import metrics
from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.delivery import LocalDelivery
from twistedmail.dnsbl import Blocklists
from twistedmail.mailauth import (
    Authenticator,
    authentication_results,
    remove_authentication_results,
)
from twistedmail.maildir import StorageReserve
from twistedmail.metrics import Metrics
from twistedmail.rate import HourlyRate
from twistedmail.reply import (
    REPLY_451_IP_RATE_LIMIT,
    REPLY_451_SPAM_LATER,
    REPLY_550_DMARC_REJECT,
    REPLY_550_SPAM,
    REPLY_550_SRS_INVALID,
    REPLY_554_RELAY_DENIED,
    reply_554_blocklisted,
)
from twistedmail.rspamd import TEMPORARY_ACTIONS, CheckRequest, Rspamd, apply_headers
from twistedmail.settings import SMTPSettings
from twistedmail.smtp.server import (
    Client,
    Envelope,
    LocalRecipients,
    Relay,
    SMTPReplyError,
    SMTPSession,
)
from twistedmail.srs import SenderRewriting, SRSError, is_srs
from twistedmail.throttle import ip_key
from twistedmail.wire import SessionFactory

log = Logger(namespace="twistedmail.smtp")


class InboundPolicy:
    """L{twistedmail.smtp.server.SessionPolicy} of the MX listener.

    @param authenticator: checks SPF/DKIM/DMARC of each message; C{None}: no checks and no
        Authentication-Results field.
    @param authserv_id: our hostname, the authserv-id of the field (RFC 8601 §2.5).
    @param dmarc_reject: refuse a DMARC fail under C{p=reject} with C{550 5.7.1}.
    @param spam_filter: rspamd (L{twistedmail.rspamd}); C{None}: no filter.
    @param blocklists: the DNS block and allow lists; C{None}: none.
    @param reverse_name: the client's reverse-DNS name, for the filter (an async
        function of the IP, C{""} when unknown); C{None}: not looked up.
    """

    service = "smtp"
    spam_filter: Rspamd | None = None
    blocklists: Blocklists | None = None
    reverse_name: Callable[[str], Awaitable[str]] | None = None
    ip_rate: HourlyRate | None = None
    """Messages per client IP (IPv6: /64) and hour (C{[antispam] smtp_messages_per_ip_hour})."""
    srs: SenderRewriting | None = None
    """Reverses bounces to our SRS addresses (C{[forwarding] srs}); C{None}: none taken."""
    srs_domain: str = ""
    """The domain of our SRS addresses when it is not a local one (C{[forwarding] srs_domain})."""

    def __init__(
        self,
        store: AccountStore,
        delivery: LocalDelivery,
        relay: Relay | None = None,
        authenticator: Authenticator | None = None,
        authserv_id: str = "",
        dmarc_reject: bool = False,
        *,
        spam_filter: Rspamd | None = None,
        blocklists: Blocklists | None = None,
        reverse_name: Callable[[str], Awaitable[str]] | None = None,
        ip_rate: HourlyRate | None = None,
        srs: SenderRewriting | None = None,
        srs_domain: str = "",
    ) -> None:
        self.store = store
        self.local = LocalRecipients(store, delivery, relay)
        self.authenticator = authenticator
        self.authserv_id = authserv_id
        self.dmarc_reject = dmarc_reject
        self.spam_filter = spam_filter
        self.blocklists = blocklists
        self.reverse_name = reverse_name
        self.ip_rate = ip_rate
        self.srs = srs
        self.srs_domain = srs_domain

    async def check_sender(self, client: Client, reverse_path: Mailbox | None) -> None:
        """Any syntactically valid reverse-path, the null path included (RFC 5321 §4.5.5).

        @raise SMTPReplyError: C{451 4.7.1} for a client IP over its hourly message rate."""
        if self.ip_rate is not None and not self.ip_rate.allows(ip_key(client.peer_ip)):
            log.warn(
                "session {session}: client [{ip}] over {limit} messages per hour",
                session=client.session_id,
                ip=client.peer_ip,
                limit=self.ip_rate.limit,
            )
            raise SMTPReplyError(REPLY_451_IP_RATE_LIMIT)

    def connected(self, client: Client) -> None:
        """At connect: start the DNSBL lookups of the client's IP."""
        if self.blocklists is not None:
            self.blocklists.prefetch(client.peer_ip)

    async def check_recipient(self, client: Client, recipient: Mailbox) -> None:
        """@raise SMTPReplyError: 554 5.7.1 for a non-local domain, or for a client on a
        DNS blocklist; see L{LocalRecipients}."""
        srs = self._is_ours_srs(recipient)
        if not srs and not self.store.is_local_domain(recipient.domain):
            raise SMTPReplyError(REPLY_554_RELAY_DENIED)
        if self.blocklists is not None and recipient.local != "postmaster":
            # RFC 5321 §4.5.1: postmaster is taken from anyone, listed or not.
            listing = await self.blocklists.check(client.peer_ip)
            if listing.blocked and listing.blocked_by is not None:
                log.info(
                    "session {session}: client [{ip}] blocked using {zone} (rcpt <{rcpt}>)",
                    session=client.session_id,
                    ip=client.peer_ip,
                    zone=listing.blocked_by,
                    rcpt=str(recipient),
                )
                raise SMTPReplyError(reply_554_blocklisted(client.peer_ip, listing.blocked_by))
        if srs:
            self._reverse(client, recipient)  # 550 5.1.1 if forged or expired
            return
        resolved = self.local.check(recipient)  # aliases expanded once per RCPT
        await self.local.check_quota(recipient, client.declared_size, resolved)  # 552 5.2.2

    def _is_ours_srs(self, recipient: Mailbox) -> bool:
        """Whether C{recipient} is an SRS address in one of the domains we rewrite to."""
        return (
            self.srs is not None
            and is_srs(recipient)
            and (
                recipient.domain == self.srs_domain or self.store.is_local_domain(recipient.domain)
            )
        )

    def _reverse(self, client: Client, recipient: Mailbox) -> Mailbox:
        """The address an SRS C{recipient} goes on to.  @raise SMTPReplyError: 550 5.1.1."""
        assert self.srs is not None
        try:
            original = self.srs.reverse(recipient)
        except SRSError as e:
            log.info(
                "session {session}: client [{ip}] rcpt <{rcpt}> refused: {error}",
                session=client.session_id,
                ip=client.peer_ip,
                rcpt=str(recipient),
                error=str(e),
            )
            raise SMTPReplyError(REPLY_550_SRS_INVALID) from None
        return original

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        """Check the message (when configured), then store it (see L{LocalRecipients}).

        @raise SMTPReplyError: C{550 5.7.1} for a DMARC reject (with C{dmarc_reject}).
        """
        if self.srs is not None:
            # A bounce to our SRS addresses goes on to the original sender (checked at RCPT).
            recipients = [
                self._reverse(envelope.client, r) if self._is_ours_srs(r) else r
                for r in envelope.recipients
            ]
            envelope = attrs.evolve(envelope, recipients=tuple(dict.fromkeys(recipients)))
        if self.authenticator is not None:
            message = await self._authenticate(envelope, message)
        junk = False
        if self.spam_filter is not None:
            message, junk = await filter_message(
                self.spam_filter, envelope, message, self.reverse_name
            )
        await self.local.deliver(envelope, message, junk=junk)
        if self.ip_rate is not None:
            self.ip_rate.record(ip_key(envelope.client.peer_ip))

    async def _authenticate(self, envelope: Envelope, message: bytes) -> bytes:
        assert self.authenticator is not None
        client = envelope.client
        results = await self.authenticator.check(
            client.peer_ip, client.helo, envelope.reverse_path, message
        )
        # RFC 8601 §5: fields claiming to be ours were forged upstream.
        message = remove_authentication_results(message, self.authserv_id)
        if results is None:
            return message
        log.info(
            "session {session} message {id}: spf={spf} dkim={dkim} dmarc={dmarc}",
            session=client.session_id,
            id=envelope.transaction_id,
            spf=results.spf.result,
            dkim=",".join(d.result for d in results.dkim) or "none",
            dmarc=results.dmarc.result,
        )
        metrics.of(self.authenticator).authenticated(results)
        if self.dmarc_reject and results.dmarc.rejects:
            raise SMTPReplyError(REPLY_550_DMARC_REJECT)  # RFC 7489 §6.7, §10
        return authentication_results(self.authserv_id, results) + message


async def filter_message(
    spam_filter: Rspamd,
    envelope: Envelope,
    message: bytes,
    reverse_name: Callable[[str], Awaitable[str]] | None = None,
) -> tuple[bytes, bool]:
    """Ask rspamd about C{message}; return it with rspamd's header changes, and whether it
    goes to Junk.  rspamd failing: the message unchanged, not junk.

    @raise SMTPReplyError: C{550 5.7.1} for C{reject}; C{451 4.7.1} for C{soft reject} and
        C{greylist} (the client tries again later, RFC 5321 §4.2.5).
    """
    client = envelope.client
    hostname = await reverse_name(client.peer_ip) if reverse_name is not None else ""
    request = CheckRequest(
        sender=str(envelope.reverse_path or ""),
        recipients=tuple(str(r) for r in envelope.recipients),
        ip=client.peer_ip,
        helo=client.helo,
        hostname=hostname,
        queue_id=envelope.transaction_id,
        user=client.user or "",
    )
    verdict = await spam_filter.check(request, message)
    if verdict is None:
        return message, False
    log.info(
        "session {session} message {id}: rspamd {action} score={score:.2f}",
        session=client.session_id,
        id=envelope.transaction_id,
        action=verdict.action,
        score=verdict.score,
    )
    if verdict.action == "reject":
        raise SMTPReplyError(REPLY_550_SPAM)
    if verdict.action in TEMPORARY_ACTIONS:
        raise SMTPReplyError(REPLY_451_SPAM_LATER)
    return apply_headers(message, verdict), verdict.junk


def inbound_factory(
    *,
    hostname: str,
    store: AccountStore,
    delivery: LocalDelivery,
    tls: IOpenSSLContextFactory | None,
    settings: SMTPSettings,
    clock: IReactorTime,
    relay: Relay | None = None,
    authenticator: Authenticator | None = None,
    dmarc_reject: bool = False,
    spam_filter: Rspamd | None = None,
    blocklists: Blocklists | None = None,
    reverse_name: Callable[[str], Awaitable[str]] | None = None,
    ip_rate: HourlyRate | None = None,
    srs: SenderRewriting | None = None,
    srs_domain: str = "",
    storage_reserve: StorageReserve | None = None,
    metrics: Metrics | None = None,
) -> SessionFactory[SMTPSession]:
    """The factory for the port-25 listener.

    @param hostname: the greeting / EHLO / Received: name.
    @param tls: the server TLS context; STARTTLS is offered when given (RFC 3207).
    @param settings: the listener's limits (max_message_size is advertised as SIZE and
        enforced, RFC 1870).
    @param clock: the reactor (idle timeout, Received: dates).
    @param relay: the outbound queue, for aliases that forward to remote addresses.
    @param authenticator: SPF/DKIM/DMARC checks; C{None}: none (see L{InboundPolicy}).
    @param dmarc_reject: C{550 5.7.1} for a DMARC fail under C{p=reject}.
    @param spam_filter: rspamd; with C{blocklists}, C{reverse_name} and C{ip_rate}, see
        L{InboundPolicy}.
    @param srs: reverses bounces to our SRS addresses, in C{srs_domain} or a local domain.
    @param storage_reserve: no new mail while the data dir is short of space.
    @param metrics: the server's counters.
    """
    return SessionFactory(
        SMTPSession,
        settings,
        policy=InboundPolicy(
            store,
            delivery,
            relay,
            authenticator=authenticator,
            authserv_id=hostname,
            dmarc_reject=dmarc_reject,
            spam_filter=spam_filter,
            blocklists=blocklists,
            reverse_name=reverse_name,
            ip_rate=ip_rate,
            srs=srs,
            srs_domain=srs_domain,
        ),
        hostname=hostname,
        clock=clock,
        tls_context=tls,
        implicit_tls=False,
        portal=None,
        storage_reserve=storage_reserve,
        metrics=metrics,
    )
