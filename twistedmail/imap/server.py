"""The IMAP4rev1 session (RFC 3501) on Twisted's C{IMAP4Server}, with STARTTLS (RFC 3501
§6.2.1, RFC 2595), IDLE (RFC 2177), NAMESPACE (RFC 2342), CHILDREN (RFC 3348), UIDPLUS
(RFC 4315), MOVE (RFC 6851), LIST-EXTENDED (RFC 5258), SPECIAL-USE (RFC 6154), ID
(RFC 2971), ENABLE (RFC 5161), UNSELECT (RFC 3691), LITERAL+ (RFC 7888), COMPRESS=DEFLATE
(RFC 4978, L{twistedmail.imap.compress}), ESEARCH (RFC 4731), LIST-STATUS (RFC 5819), SORT
(RFC 5256, L{twistedmail.imap.sort}), UTF8=ACCEPT (RFC 6855), CONDSTORE and QRESYNC (RFC 7162),
QUOTA (RFC 9208) and the response codes of RFC 5530.

L{IMAPServer} is composed of one part per concern, as RFC 3501 groups them:

  - L{twistedmail.imap.protocol}: the wire grammar (command lines, literals, arguments,
    responses, the one error path) and the dispatcher every command runs under;
  - L{twistedmail.imap.updates}: the selected mailbox and the untagged updates about it;
  - L{twistedmail.imap.not_authenticated}: any state and the not authenticated state
    (CAPABILITY, NOOP, STARTTLS, LOGIN, AUTHENTICATE, ID, ENABLE);
  - L{twistedmail.imap.authenticated}: the authenticated state (SELECT, mailbox management,
    LIST, STATUS, APPEND, IDLE, COMPRESS);
  - L{twistedmail.imap.selected} and L{twistedmail.imap.fetch}: the selected state;
  - L{twistedmail.imap.quota}: QUOTA.

This module keeps the connection (greeting, autologout, the per-user session limit) and
L{imap_factory}.

Fixes of stock Twisted 26.10 behaviour, reproduced over loopback, each with a regression
test in C{tests/test_attacks_imap.py}: STARTTLS command injection (commands in the same
packet as STARTTLS ran and were answered inside TLS); AUTH= and LOGIN before TLS (AUTHENTICATE
PLAIN succeeded in cleartext); literal size limit before the continuation (stock sent
C{+ Ready} for a 1 GB APPEND literal and spooled it); IDLE ended by any line, not only DONE;
partial FETCH (C{BODY[]<0.20>} sent the whole message, twisted #5613); FETCH of raw 8-bit
headers, ENVELOPE and BODYSTRUCTURE rendered from the stored bytes (stock dropped the
connection on a non-ASCII header); implicit C{\\Seen} on a non-PEEK BODY[] (stock never set
it); APPEND without flags (stock: BAD from a C{TypeError}); NO instead of BAD for missing
mailboxes (stock's str/bytes mix-ups turned C{NO [TRYCREATE]} into BAD); SELECT's UIDNEXT,
PERMANENTFLAGS and UNSEEN, which RFC 3501 §6.3.1 requires and stock never sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IOpenSSLContextFactory, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedmail.imap.authenticated import AuthenticatedCommands
from twistedmail.imap.compress import Inflater
from twistedmail.imap.fetch import FetchCommand
from twistedmail.imap.not_authenticated import NotAuthenticatedCommands
from twistedmail.imap.protocol import ConnectionGone, IMAPError, literal_size, uid_set
from twistedmail.imap.quota import QuotaCommands
from twistedmail.imap.selected import CopyObserver, SelectedCommands, esearch_response
from twistedmail.limits import UserSessionLimit
from twistedmail.quota import QuotaTracker
from twistedmail.settings import IMAPSettings
from twistedmail.wire import SessionFactory

log = Logger(namespace="twistedmail.imap")

__all__ = [
    "CopyObserver",
    "IMAPError",
    "IMAPServer",
    "esearch_response",
    "imap_factory",
    "literal_size",
    "uid_set",
]


class _NoScheduler:
    """Stock spewMessage/MessageProducer are not used; this keeps the global reactor out."""

    def __call__(self, iterator: Any) -> Deferred[None]:
        for _ in iterator:
            pass
        return succeed(None)


_NO_SCHEDULER = _NoScheduler()  # one for all sessions (issue 10: memory per connection)
_NO_CHALLENGERS: dict[bytes, Any] = {}  # stock's AUTH= table: unused (never registered into)
NO_CAPABILITIES: frozenset[bytes] = frozenset()  # ENABLE (RFC 5161) not used yet: shared


class IMAPServer(
    QuotaCommands,
    FetchCommand,
    SelectedCommands,
    AuthenticatedCommands,
    NotAuthenticatedCommands,
):
    """One IMAP connection.

    @param portal: logs users in; the realm must return C{imap4.IAccount} avatars.
    @param tls: the STARTTLS context (port 143); C{None} on the implicit-TLS port.
    @param implicit_tls: the transport is already TLS (port 993, RFC 8314).
    @param clock: for the autologout timers (RFC 3501 §5.4: 30 minutes after login).
    @param settings: C{max_literal_size}, octets (a larger APPEND literal gets C{NO [TOOBIG]}
        before the continuation request), and the autologout timer after login.
    @param quota: the users' quotas (RFC 9208, L{QuotaCommands}); C{None}: no QUOTA.
    @param user_limit: logged-in sessions per user and IP (one count for 143 and 993).
    @param copy_observer: told of moves into and out of Junk (spam learning).
    """

    IDENT = b"twistedmail IMAP4rev1 ready"
    MAX_LENGTH = 65536

    # Every attribute a session sets lives in a slot, not in the instance __dict__ (issue 10,
    # memory per idle connection): 45 names made CPython give up key sharing and allocate a
    # 1.5 KiB dict per session.  A name missing here still works (it goes to the __dict__).
    # A slot hides a class default of a base class, so __init__ starts every slot that has
    # one (_SLOT_DEFAULTS) at that value.
    __slots__ = (
        # Twisted's IMAP4Server, LineReceiver, TimeoutMixin, Protocol
        "challengers",
        "ctx",
        "_scheduler",
        "_queuedAsync",
        "connected",
        "transport",
        "factory",
        "tags",
        "canStartTLS",
        "startedTLS",
        "timeOut",
        "_TimeoutMixin__timeoutCall",
        "_buffer",
        "_busyReceiving",
        "line_mode",
        "paused",
        "account",
        "_onLogout",
        "state",
        "mbox",
        "parseState",
        "_pendingLiteral",
        # ours
        "quota",
        "user_limit",
        "copy_observer",
        "POSTAUTH_TIMEOUT",
        "portal",
        "implicit_tls",
        "clock",
        "max_literal_size",
        "session",
        "peer",
        "user",
        "_busy",
        "_idling",
        "_idle_tag",
        "_line_waiter",
        "_pending_exists",
        "_pending_flags",
        "_pending_keywords",
        "_pending_highestmodseq",
        "enabled",
        "_inflater",
        "_lost",  # connectionLost ran: a command still running must take nothing more
        "_gate",
        "_held",
        "_user_slot",
    )
    _SLOT_DEFAULTS: dict[str, object]  # set below the class

    def __init__(
        self,
        *,
        portal: Portal | None,
        tls: IOpenSSLContextFactory | None,
        implicit_tls: bool,
        clock: IReactorTime,
        settings: IMAPSettings = IMAPSettings(),
        quota: QuotaTracker | None = None,
        user_limit: UserSessionLimit | None = None,
        copy_observer: CopyObserver | None = None,
    ) -> None:
        for name, value in self._SLOT_DEFAULTS.items():
            setattr(self, name, value)
        super().__init__(_NO_CHALLENGERS, None if implicit_tls else tls, scheduler=_NO_SCHEDULER)
        self.quota = quota
        self.user_limit = user_limit
        self.copy_observer = copy_observer
        self.POSTAUTH_TIMEOUT = settings.idle_timeout
        self.portal = portal
        self.implicit_tls = implicit_tls
        self.clock = clock
        self.max_literal_size = settings.max_literal_size
        self.session = uuid.uuid4().hex[:8]
        self.peer = "?"
        self.user: str | None = None
        self._busy = False
        self._idling = False
        self._idle_tag: bytes | None = None
        self._line_waiter: Deferred[bytes] | None = None
        self._pending_exists = False
        self._pending_flags: dict[int, list[str]] = {}
        self._pending_keywords = False
        self._pending_highestmodseq = False
        self.enabled = NO_CAPABILITIES  # rebound, never changed in place (issue 10)
        self._inflater: Inflater | None = None  # COMPRESS=DEFLATE active (RFC 4978)

    # connection

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """TimeoutMixin's timers (autologout, RFC 3501 §5.4) on the session's clock."""
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        log.info(
            "imap connect session={session} ip={ip} tls={tls}",
            session=self.session,
            ip=self.peer,
            tls=self.implicit_tls,
        )
        super().connectionMade()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        # A command waiting for input that will never come (IDLE's DONE, an AUTHENTICATE
        # response, a literal) ends now instead of holding the session forever.
        waiter, self._line_waiter = self._line_waiter, None
        literal, self._pendingLiteral = getattr(self, "_pendingLiteral", None), None
        for pending in (waiter, getattr(literal, "defer", None)):
            if pending is not None and not pending.called:
                pending.errback(ConnectionGone())
        self._close_mailbox()
        if self._user_slot is not None and self.user_limit is not None:
            self.user_limit.release(*self._user_slot)
            self._user_slot = None
        log.info(
            "imap disconnect session={session} ip={ip} user={user}",
            session=self.session,
            ip=self.peer,
            user=self.user or "-",
        )
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        if self._gate is not None and self._gate.paused:
            # A FETCH the client stopped reading (RFC 3501 §5.4 autologout): its output
            # can never be sent and a clean TLS close would wait for it, so cut it.
            log.info("imap stalled reader timed out session={session}", session=self.session)
            self.transport.abortConnection()
            return
        super().timeoutConnection()


def _slot_defaults(cls: type) -> dict[str, object]:
    """The class defaults (of the bases) that C{cls}'s slots hide, by slot name."""
    defaults: dict[str, object] = {
        "_lost": False,
        "timeOut": 60,
        "POSTAUTH_TIMEOUT": IMAPSettings().idle_timeout,
    }
    for name in cls.__slots__:  # type: ignore[attr-defined]
        for base in cls.__mro__[1:]:
            if name in vars(base):
                defaults.setdefault(name, vars(base)[name])
                break
    return defaults


IMAPServer._SLOT_DEFAULTS = _slot_defaults(IMAPServer)


def imap_factory(
    *,
    portal: Portal,
    tls: IOpenSSLContextFactory | None,
    implicit_tls: bool,
    clock: IReactorTime,
    settings: IMAPSettings,
    quota: QuotaTracker | None = None,
    user_limit: UserSessionLimit | None = None,
    copy_observer: CopyObserver | None = None,
) -> SessionFactory[IMAPServer]:
    """The IMAP listener's factory.

    @param tls: STARTTLS context for port 143 (C{None}: no STARTTLS, so no login at all).
    @param implicit_tls: C{True} for port 993, whose endpoint the service wraps in TLS.
    @param clock: the reactor (timeouts).
    @param settings: the largest APPEND and the autologout timer (L{IMAPSettings}).
    @param quota: the users' quotas: QUOTA (RFC 9208) and OVERQUOTA on APPEND/COPY.
    @param user_limit: logged-in sessions per user and IP, shared by 143 and 993; one
        more gets C{NO [UNAVAILABLE]} at LOGIN/AUTHENTICATE.
    @param copy_observer: told of moves into and out of Junk (spam learning, issue 14).
    """
    return SessionFactory(
        IMAPServer,
        settings,
        portal=portal,
        tls=tls,
        implicit_tls=implicit_tls,
        clock=clock,
        quota=quota,
        user_limit=user_limit,
        copy_observer=copy_observer,
    )
