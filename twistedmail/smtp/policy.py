"""What a listener accepts, as the session asks it: the seam between the SMTP wire protocol
(L{twistedmail.smtp.session}) and the listeners' policies (L{twistedmail.smtp.inbound} on
port 25, L{twistedmail.smtp.submission} on 587/465).

A policy (L{SessionPolicy}) is asked at MAIL (RFC 5321 §4.1.1.2), RCPT (§4.1.1.3) and after
the final dot of DATA (§4.1.1.4), with a snapshot of the session (L{Client}: HELO, TLS of
RFC 3207, the user authenticated with RFC 4954 AUTH, the RFC 1870 SIZE) and, after DATA, the
transaction's L{Envelope} (RFC 5321 §2.3.1, the RFC 6152 BODY type).  It refuses by raising
L{SMTPReplyError} with the reply to send (RFC 5321 §4.2, RFC 3463 enhanced codes); the
session sends it as is.  The outbound queue is seen through L{OutboundQueue}; SMTP AUTH logs
in through L{auth_portal} (RFC 4954 §4, one credential store for every protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.cred.portal import IRealm, Portal
from zope.interface import Attribute, Interface, implementer

from twistedmail.address import (
    Mailbox,
)
from twistedmail.reply import (
    Reply,
)


class SMTPReplyError(Exception):
    """A refusal carrying the reply to send (L{twistedmail.reply}), the one refusal path of
    SMTP: raised anywhere in a command (the session's checks, a policy, L{LocalRecipients})
    and caught once by the session's dispatcher (C{SMTPSession.lineReceived}, or the
    errback of a command's coroutine), which sends the reply as is."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.line().decode("ascii"))
        self.reply = reply


@attrs.frozen
class Client:
    """What the session knows about the SMTP client when a policy is asked.

    @ivar session_id: random hex, in every log line of the session.
    @ivar peer_ip: the client's IP address (text).
    @ivar helo: the HELO/EHLO argument (ASCII), C{""} before HELO/EHLO.
    @ivar esmtp: whether the client greeted with EHLO.
    @ivar tls: whether the session is under TLS (STARTTLS done, or implicit TLS).
    @ivar user: the authenticated address (RFC 4954), or C{None}.
    @ivar declared_size: the C{SIZE=} of the current MAIL FROM (RFC 1870 §6: the client's
        estimate, in octets), 0 when not given.
    """

    session_id: str
    peer_ip: str
    helo: str
    esmtp: bool
    tls: bool
    user: str | None
    declared_size: int = 0


@attrs.frozen
class Envelope:
    """One mail transaction's envelope, as received (RFC 5321 §2.3.1).

    @ivar reverse_path: the MAIL FROM mailbox, C{None} for the null path C{<>}.
    @ivar recipients: the accepted RCPT TO mailboxes, in order, without duplicates.
    @ivar body: C{"7BIT"} or C{"8BITMIME"} (RFC 6152 BODY parameter).
    @ivar transaction_id: the Received: header's id, unique per transaction.
    @ivar received_at: seconds since the epoch, from the session's clock.
    """

    client: Client
    reverse_path: Mailbox | None
    recipients: tuple[Mailbox, ...]
    body: str
    transaction_id: str
    received_at: float


class SessionPolicy(Protocol):
    """What one listener accepts; the session asks it at MAIL, RCPT and after DATA.

    Each method raises L{SMTPReplyError} to refuse (the reply is sent as is); any other
    exception is logged and answered C{451 4.3.0}.
    """

    service: str
    """Listener name for log lines: C{"smtp"}, C{"submission"}."""

    def connected(self, client: Client) -> None:
        """At connect, before the greeting (the port-25 policy starts its DNSBL lookups)."""

    def postmaster(self, hostname: str) -> Mailbox | None:
        """The mailbox a bare C{<Postmaster>} goes to (RFC 5321 §4.5.1: it MUST be
        accepted); C{None}: C{postmaster@hostname}."""

    async def check_sender(self, client: Client, reverse_path: Mailbox | None) -> None:
        """Accept or refuse MAIL FROM (RFC 5321 §4.1.1.2)."""

    async def check_recipient(self, client: Client, recipient: Mailbox) -> None:
        """Accept or refuse RCPT TO (RFC 5321 §4.1.1.3)."""

    async def accept_message(self, envelope: Envelope, message: bytes) -> None:
        """Take responsibility for C{message} (CRLF lines, Received: on top): return only
        when it is durably stored (RFC 5321 §6.1), so the session may answer 250."""


class IAuthenticatedUser(Interface):
    """The avatar SMTP AUTH asks the portal for: who the client authenticated as."""

    address = Attribute("The authenticated address (str), the checker's avatar ID.")


@implementer(IAuthenticatedUser)
@attrs.frozen
class AuthenticatedUser:
    """L{IAuthenticatedUser}: the normalised address a client proved with SMTP AUTH."""

    address: str


@implementer(IRealm)
class AuthenticatedUserRealm:
    """C{IRealm} returning an L{AuthenticatedUser} for the checker's avatar ID."""

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: type[Interface]
    ) -> tuple[type[Interface], object, Callable[[], None]]:
        if IAuthenticatedUser in interfaces:
            return IAuthenticatedUser, AuthenticatedUser(str(avatarId)), lambda: None
        raise NotImplementedError("SMTP AUTH only provides IAuthenticatedUser")


def auth_portal(portal: Portal) -> Portal:
    """A portal with C{portal}'s credential checkers and the L{AuthenticatedUserRealm}.

    SMTP AUTH needs only the avatar ID (the address); the shared portal's realm builds IMAP
    and POP3 avatars, so the checkers (one password store for every protocol) are reused
    with a realm of our own.
    """
    return Portal(AuthenticatedUserRealm(), list(dict.fromkeys(portal.checkers.values())))


class OutboundQueue(Protocol):
    """The outbound queue, as the policies see it (L{twistedmail.smtp.queue.QueueRunner})."""

    async def enqueue(
        self,
        reverse_path: Mailbox | None,
        recipients: Sequence[Mailbox],
        message: bytes,
        *,
        sign: bool = False,
    ) -> object:
        """Queue C{message} durably for remote C{recipients}; return once it is on disk;
        C{sign}: DKIM-sign it (only mail an authenticated user submitted, RFC 6376 §5).
        @raise OSError: nothing was queued."""

    async def bounce(
        self,
        reverse_path: Mailbox | None,
        failures: Sequence[tuple[Mailbox, Reply]],
        message: bytes,
    ) -> None:
        """Send C{reverse_path} a delivery status notification that C{failures} (recipient,
        reply) failed for C{message}; nothing for the null reverse-path (RFC 5321 §6.1)."""
