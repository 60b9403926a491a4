"""Port-25 policy: mail from the internet for local domains only, never relayed (RFC 5321 §3.6).

RCPT to a local user or alias is accepted (C{250 2.1.5}); an unknown name in a local domain
gets C{550 5.1.1}; any other domain C{554 5.7.1 Relay access denied} (no open relay,
RFC 5321 §7.1 / RFC 2505); the remote part of an alias's expansion is queued for the
outbound relay (forwarding, RFC 5321 §3.9.1; without a relay it gets C{450 4.7.1}).
No AUTH is offered on this port.  After the final dot the message is stored durably in
each user's INBOX (and the queue) before C{250 2.0.0}.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import CertificateOptions

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.delivery import LocalDelivery
from twistedmail.reply import REPLY_554_RELAY_DENIED
from twistedmail.smtp.server import (
    Client,
    Envelope,
    LocalRecipients,
    Relay,
    SMTPReplyError,
    SMTPServerFactory,
)


class InboundPolicy:
    """L{twistedmail.smtp.server.SessionPolicy} of the MX listener."""

    service = "smtp"

    def __init__(
        self, store: AccountStore, delivery: LocalDelivery, relay: Relay | None = None
    ) -> None:
        self.store = store
        self.local = LocalRecipients(store, delivery, relay)

    async def check_sender(self, client: Client, reverse_path: Mailbox | None) -> None:
        """Any syntactically valid reverse-path, the null path included (RFC 5321 §4.5.5)."""

    async def check_recipient(self, client: Client, recipient: Mailbox) -> None:
        """@raise SMTPReplyError: 554 5.7.1 for a non-local domain; see L{LocalRecipients}."""
        if not self.store.is_local_domain(recipient.domain):
            raise SMTPReplyError(REPLY_554_RELAY_DENIED)
        self.local.check(recipient)

    async def deliver(self, envelope: Envelope, message: bytes) -> None:
        await self.local.deliver(envelope, message)


def inbound_factory(
    *,
    hostname: str,
    store: AccountStore,
    delivery: LocalDelivery,
    tls: CertificateOptions | None,
    max_message_size: int,
    clock: IReactorTime,
    relay: Relay | None = None,
) -> ServerFactory:
    """The factory for the port-25 listener.

    @param hostname: the greeting / EHLO / Received: name.
    @param tls: the server TLS context; STARTTLS is offered when given (RFC 3207).
    @param max_message_size: octets, advertised as SIZE and enforced (RFC 1870).
    @param clock: the reactor (idle timeout, Received: dates).
    @param relay: the outbound queue, for aliases that forward to remote addresses.
    """
    return SMTPServerFactory(
        policy=InboundPolicy(store, delivery, relay),
        hostname=hostname,
        clock=clock,
        max_message_size=max_message_size,
        tls_context=tls,
        implicit_tls=False,
        portal=None,
    )
