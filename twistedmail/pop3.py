"""POP3 over the user's Maildir INBOX: RFC 1939, CAPA (RFC 2449), STLS (RFC 2595 §4),
SASL AUTH PLAIN (RFC 5034, RFC 4616) and implicit TLS on 995 (RFC 8314).

L{POP3Server} keeps Twisted's C{pop3.POP3} (its timeout mixin, its C{IMailbox} contract) and
replaces what is broken in stock Twisted 26.10 (reproduced over loopback; each a test in
C{tests/test_attacks_pop3.py}): it has no STLS, its CAPA lists joke entries, C{AUTH PLAIN}
and C{USER} without an argument dropped the connection, C{DELE 0} deleted the last message,
DELE removed the file at once (not at QUIT), and RETR lost the dot-stuffing of a line that
starts at a 16 KiB chunk boundary.  Here:

  - lines come from L{StrictLineReceiver} (bounded, CRLF only), and C{STLS} drops every byte
    pipelined after it before the handshake (the STARTTLS command-injection fix);
  - C{CAPA} lists only what is implemented; no APOP timestamp in the greeting (passwords are
    stored hashed, so APOP cannot be offered);
  - no password before TLS: C{USER}/C{PASS}/C{AUTH} answer C{-ERR TLS required} on a
    cleartext connection (unless the listener explicitly allows it, e.g. loopback tests);
  - C{AUTH PLAIN} with and without an initial response, C{*} cancels (RFC 5034 §4);
  - every command is checked for arity and state before it runs: bad input gets C{-ERR},
    never a traceback or a dropped connection;
  - message numbers are strict decimals: C{DELE 0}, out of range, deleted or non-numeric get
    C{-ERR no such message}; deleted messages vanish from STAT/LIST/UIDL/RETR/TOP
    (RFC 1939 §5), and are removed only by C{QUIT} in the UPDATE state (RFC 1939 §6);
  - RETR/TOP dot-stuff every line wherever it falls across read chunks (L{DotStuffer}), so
    message content can never end the response early (the chunk-boundary injection);
  - one command at a time: while a command's Deferred runs, later pipelined lines wait
    (RFC 2449 §6.6 PIPELINING), so replies come back in order.

L{MaildirPOP3Mailbox} is the C{pop3.IMailbox} avatar: a snapshot of the INBOX taken at login,
UIDLs from the Maildir unique names, deletions applied at C{sync()} (QUIT).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, cast

import attrs
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLContextFactory,
    IReactorTime,
    ISSLTransport,
)
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail import auth, sasl
from twistedmail.auth import RunInThread
from twistedmail.maildir import (
    ChangeNotifier,
    CRLFReader,
    FlagChange,
    Folder,
    MaildirError,
    MessageEntry,
    UserMaildir,
)
from twistedmail.settings import POP3Settings
from twistedmail.wire import CRLF, SessionFactory, StrictLineReceiver

log = Logger(namespace="twistedmail.pop3")

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"

DEFAULT_TIMEOUT = POP3Settings().idle_timeout
"""Seconds of inactivity before the session is closed: at least 10 minutes, RFC 1939 §3."""

# Replies: whole lines without CRLF.  Texts are generic: nothing the client sent is echoed.
GREETING = b"+OK twistedmail POP3 server ready"
OK = b"+OK"
OK_CAPA = b"+OK Capability list follows"
OK_STLS = b"+OK Begin TLS negotiation"
OK_USER = b"+OK send PASS"
OK_LOGGED_IN = b"+OK Logged in"
OK_DELETED = b"+OK message deleted"
OK_TOP = b"+OK top of message follows"
OK_BYE = b"+OK twistedmail POP3 server signing off"
ERR_UNKNOWN = "unknown command"
ERR_SYNTAX = "syntax error"
ERR_NOT_AUTHENTICATED = "not authenticated"
ERR_WRONG_STATE = "command not valid in this state"
ERR_TLS_REQUIRED = "TLS required"
ERR_ALREADY_TLS = "TLS already active"
ERR_NO_TLS = "STLS not available"
ERR_USER_FIRST = "send USER first"
ERR_AUTH_FAILED = "[AUTH] Authentication failed"  # RFC 3206 §4 (AUTH-RESP-CODE)
ERR_AUTH_CANCELLED = "authentication cancelled"
ERR_BAD_BASE64 = "invalid base64 data"
ERR_MECHANISM = "unsupported SASL mechanism"
ERR_APOP = "APOP not supported"
ERR_NO_SUCH_MESSAGE = "no such message"
ERR_LINE_COUNT = "invalid line count"
ERR_LINE_TOO_LONG = "line too long"
ERR_SERVER = "[SYS/TEMP] internal server error"  # RFC 3206 §3
ERR_MAILDROP = "[SYS/TEMP] unable to open maildrop"
ERR_LOGIN_BLOCKED = "[SYS/TEMP] too many failed logins, try again later"  # RFC 3206 §4
ERR_NOT_REMOVED = "[SYS/TEMP] some deleted messages not removed"  # RFC 1939 §6
ERR_GONE = "[SYS/PERM] some deleted messages not removed: the mailbox was deleted"

SASL_MECHANISMS = (b"PLAIN",)
_SASL_OFFERED = tuple(m.decode("ascii") for m in SASL_MECHANISMS)
_NUMBER = re.compile(rb"[0-9]{1,9}\Z")
_TOP_READ_LIMIT = 65536


class NegativeResponse(Exception):
    """A command refused with C{-ERR <text>} (RFC 1939 §3); C{text} is ASCII, safe to send."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def line(self) -> bytes:
        return b"-ERR " + self.text.encode("ascii")


@attrs.frozen
class _Command:
    """How a command is dispatched: its method, argument counts and the states it runs in."""

    method: str
    min_args: int
    max_args: int
    states: frozenset[str]


_AUTH = frozenset({AUTHORIZATION})
_TRANS = frozenset({TRANSACTION})
_BOTH = frozenset({AUTHORIZATION, TRANSACTION})

_COMMANDS: dict[bytes, _Command] = {
    b"CAPA": _Command("do_CAPA", 0, 0, _BOTH),  # RFC 2449 §5
    b"STLS": _Command("do_STLS", 0, 0, _AUTH),  # RFC 2595 §4
    b"USER": _Command("do_USER", 1, 1, _AUTH),  # RFC 1939 §7
    b"PASS": _Command("do_PASS", 1, 1, _AUTH),  # the whole rest of the line, spaces included
    b"AUTH": _Command("do_AUTH", 0, 2, _AUTH),  # RFC 5034 §4
    b"APOP": _Command("do_APOP", 0, 99, _AUTH),
    b"STAT": _Command("do_STAT", 0, 0, _TRANS),  # RFC 1939 §5
    b"LIST": _Command("do_LIST", 0, 1, _TRANS),
    b"UIDL": _Command("do_UIDL", 0, 1, _TRANS),  # RFC 1939 §7
    b"RETR": _Command("do_RETR", 1, 1, _TRANS),
    b"TOP": _Command("do_TOP", 2, 2, _TRANS),  # RFC 1939 §7
    b"DELE": _Command("do_DELE", 1, 1, _TRANS),
    b"RSET": _Command("do_RSET", 0, 0, _TRANS),
    b"NOOP": _Command("do_NOOP", 0, 0, _TRANS),
    b"QUIT": _Command("do_QUIT", 0, 0, _BOTH),  # RFC 1939 §4, §6
}


def uidl_for(base: str) -> str:
    """The UIDL of a message whose Maildir unique name is C{base} (RFC 1939 §7).

    The unique name itself when it is a valid unique-id (1 to 70 characters in 0x21-0x7E),
    else the MD5 hex digest of it: either way it never changes when flags change the file name.
    """
    if 1 <= len(base) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in base):
        return base
    return hashlib.md5(base.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()


class DotStuffer:
    """Stateful transformation of a message into a POP3 multi-line response body (RFC 1939 §3).

    Feed the message in chunks of any size; every line that starts with C{.} gets one more
    C{.} wherever the chunk boundaries fall, and a bare LF becomes CRLF (a client that splits
    lines on LF would otherwise see C{"\\n.\\r\\n"} as the terminator).  A bare CR is kept.
    L{finish} returns the termination: CRLF if the message did not end with one, then C{.CRLF}.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._held_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            # The CR may begin a CRLF split across chunks: decide with the next chunk.
            chunk = chunk[:-1]
            self._held_cr = True
        if not chunk:
            return b""
        chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        # RFC 1939 §3: a line beginning with the termination octet is byte-stuffed.
        chunk = chunk.replace(b"\n.", b"\n..")
        if self._line_start and chunk.startswith(b"."):
            chunk = b"." + chunk
        self._line_start = chunk.endswith(b"\n")
        return chunk

    def finish(self) -> bytes:
        tail = b""
        if self._held_cr:
            tail, self._held_cr, self._line_start = b"\r", False, False
        if not self._line_start:
            tail += CRLF
        return tail + b"." + CRLF


class _TopReader:
    """A file-like view of the header, the blank line and the first C{lines} body lines of a
    message (RFC 1939 §7 TOP).  Lines end at LF; the header ends at the first empty line."""

    def __init__(self, file: IO[bytes], lines: int) -> None:
        self._file = file
        self._left = lines
        self._in_header = True
        self._line_start = True
        self._done = False

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        total = 0
        while not self._done and (size < 0 or total < size):
            if not self._in_header and self._line_start and self._left <= 0:
                self._done = True
                break
            line = self._file.readline(_TOP_READ_LIMIT)
            if not line:
                self._done = True
                break
            ends = line.endswith(b"\n")
            if self._in_header:
                if self._line_start and line in (b"\r\n", b"\n"):
                    self._in_header = False
            elif ends:
                self._left -= 1
            self._line_start = ends
            out.append(line)
            total += len(line)
        return b"".join(out)

    def close(self) -> None:
        self._file.close()


class _ClientGone(Exception):
    """The connection was lost while a RETR/TOP streamed: nothing to answer, no error."""


class _Sender(FileSender):
    """A C{FileSender} that tells a stop by the transport (the connection was lost) from a
    failure to read the file."""

    stopped = False

    def stopProducing(self) -> None:
        self.stopped = True
        super().stopProducing()


def _message_number(arg: bytes) -> int:
    """A 1-based message-number argument as an int (strict decimal, RFC 1939 §5).

    @raise NegativeResponse: C{no such message} when it is not a decimal or is 0.
    """
    if not _NUMBER.match(arg) or int(arg) == 0:
        raise NegativeResponse(ERR_NO_SUCH_MESSAGE)
    return int(arg)


class POP3Server(StrictLineReceiver, pop3.POP3):
    """One POP3 session (RFC 1939) with CAPA, STLS, AUTH PLAIN and PIPELINING.

    @param portal: logs in C{UsernamePassword(bytes, bytes)} for a C{pop3.IMailbox} avatar.
        If the avatar has C{open_maildrop() -> Deferred}, it is awaited before C{+OK}; if it
        has C{retrieved(index)}, it is told of each message sent whole by RETR.
    @param tls: the context for STLS, or C{None} (then no STLS).
    @param implicit_tls: the connection is already TLS (port 995, RFC 8314): no STLS.
    @param clock: time source for the inactivity timeout.
    @param settings: C{allow_plaintext_auth}, accept USER/PASS/AUTH without TLS (tests,
        loopback only), and C{idle_timeout}, seconds of inactivity before the connection is
        closed (RFC 1939 §3).
    """

    # Attributes of pop3.POP3 / Protocol, typed (the stock class declares them as None).
    portal: Any  # a twisted.cred Portal
    mbox: Any
    factory: Any
    _onLogout: Any
    transport: Any

    def __init__(
        self,
        *,
        portal: Portal,
        tls: IOpenSSLContextFactory | None,
        implicit_tls: bool,
        clock: IReactorTime,
        settings: POP3Settings = POP3Settings(),
    ) -> None:
        self.portal = portal
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.clock = clock
        self.allow_plaintext_auth = settings.allow_plaintext_auth
        self.timeOut = settings.idle_timeout
        self.session = secrets.token_hex(4)
        self.pop3_state = AUTHORIZATION
        self.peer_ip = "?"
        self.user: str | None = None
        self._user_arg: bytes | None = None
        self._sasl_pending = False
        self._sasl: sasl.Exchange | None = None
        self._tls_started = False
        self._lost = False
        self._streaming = False
        self._deleted: set[int] = set()
        self._retrieved = 0
        self._removed = 0

    # Twisted plumbing

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.clock.callLater(period, func)

    def generateMagic(self) -> bytes:
        """No APOP challenge: passwords are hashed, so APOP cannot be verified."""
        return b""

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = str(getattr(peer, "host", "?"))
        # No APOP timestamp in the greeting: APOP needs the plaintext password, and ours
        # are stored hashed (stock Twisted always puts one in).
        self._send(GREETING)
        self.setTimeout(self.timeOut)

    def connectionLost(self, reason: Failure | None = None) -> None:
        # A dropped connection never reaches the UPDATE state: nothing is deleted (RFC 1939 §6).
        self._lost = True
        self.setTimeout(None)
        if self._onLogout is not None:
            logout, self._onLogout = self._onLogout, None
            logout()
        log.info(
            "pop3 session {session} ip={ip} user={user} closed in state {state}: "
            "retrieved={retrieved} removed={removed}",
            session=self.session,
            ip=self.peer_ip,
            user=self.user or "-",
            state=self.pop3_state,
            retrieved=self._retrieved,
            removed=self._removed,
        )

    def timeoutConnection(self) -> None:
        # RFC 1939 §3: on the autologout timer, close without UPDATE and without a response.
        if self._streaming:
            # A RETR/TOP the client stopped reading: what is queued can never be sent
            # (a clean TLS close would wait for it), so the connection is cut.
            self.transport.abortConnection()
            return
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        # RFC 2449 §4 bounds command lines; answer and keep the session (never drop it).
        self._sasl_pending = False
        self._send(NegativeResponse(ERR_LINE_TOO_LONG).line())

    def _send(self, *lines: bytes) -> None:
        self.transport.write(b"".join(line + CRLF for line in lines))

    def is_secure(self) -> bool:
        """Whether the connection is TLS (implicit, after STLS, or an SSL transport)."""
        return self.implicit_tls or self._tls_started or ISSLTransport.providedBy(self.transport)

    def _may_authenticate(self) -> bool:
        return self.allow_plaintext_auth or self.is_secure()

    def _stls_available(self) -> bool:
        return self.tls is not None and not self.is_secure() and self.pop3_state == AUTHORIZATION

    # dispatch: one command at a time, errors answered once here

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        if self._sasl_pending:
            self._sasl_pending = False
            self._run(self._sasl_response, line)
        else:
            self.state_COMMAND(line)

    def state_COMMAND(self, line: bytes) -> None:
        """Parse C{KEYWORD [args]} and run it, checking state and arity (RFC 1939 §3)."""
        keyword, _, rest = line.partition(b" ")
        command = _COMMANDS.get(keyword.upper())
        if command is None:
            self._send(NegativeResponse(ERR_UNKNOWN).line())
            return
        if self.pop3_state not in command.states:
            text = ERR_NOT_AUTHENTICATED if self.pop3_state == AUTHORIZATION else ERR_WRONG_STATE
            self._send(NegativeResponse(text).line())
            return
        if command.method == "do_PASS":
            # RFC 1939 §7: PASS has one argument, which may contain spaces.
            args: list[bytes] = [rest] if rest else []
        else:
            args = rest.split()
        if not command.min_args <= len(args) <= command.max_args:
            self._send(NegativeResponse(ERR_SYNTAX).line())
            return
        self._run(getattr(self, command.method), *args)

    def processCommand(self, command: bytes, *args: bytes) -> None:
        """Compatibility with C{pop3.POP3}: run C{command args} through L{state_COMMAND}."""
        self.state_COMMAND(b" ".join((command,) + args))

    def _run(self, method: Callable[..., Any], *args: bytes) -> None:
        """Run one command; hold later lines until its Deferred (if any) has fired."""
        try:
            result = method(*args)
        except Exception:
            self._failed(Failure())
            return
        if isinstance(result, Coroutine):
            result = Deferred.fromCoroutine(result)
        if not isinstance(result, Deferred):
            return
        finished = False
        paused = False
        timeout: int | None = None

        def done(_: object) -> None:
            nonlocal finished
            finished = True
            if paused and not self._lost:
                self.setTimeout(timeout)
                self.resume_lines()

        result.addErrback(self._failed).addBoth(done)
        if not finished:
            paused = True
            # The server's own work on a command is not idleness; a client that stops
            # reading a RETR/TOP is (L{_stream} keeps the timer running for that).
            timeout = self.setTimeout(None)
            if self._streaming:
                self.setTimeout(timeout)
            self.pause_lines()

    def _failed(self, failure: Failure) -> None:
        if self._lost or failure.check(_ClientGone):
            return
        if isinstance(failure.value, NegativeResponse):
            self._send(failure.value.line())
            return
        log.failure("pop3 session {session}: command failed", failure, session=self.session)
        self._send(NegativeResponse(ERR_SERVER).line())

    # AUTHORIZATION state

    def listCapabilities(self) -> list[bytes]:
        """The CAPA list (RFC 2449 §6): only what is implemented, in this state."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._may_authenticate():
            # RFC 2595 §4 / RFC 8314: no cleartext passwords offered before TLS.
            caps += [b"USER", b"SASL " + b" ".join(SASL_MECHANISMS)]
        if self._stls_available():
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION twistedmail")
        return caps

    def do_CAPA(self) -> None:
        self._send(OK_CAPA, *self.listCapabilities(), b".")

    def do_STLS(self) -> None:
        if self.is_secure():
            raise NegativeResponse(ERR_ALREADY_TLS)
        if self.tls is None:
            raise NegativeResponse(ERR_NO_TLS)
        self._send(OK_STLS)
        # RFC 2595 §4 (and RFC 3207 §4.2): nothing the client sent before the handshake may
        # be acted on after it; drop the rest of the packet (the command-injection fix).
        self.discard_pending_input()
        self._tls_started = True
        self._user_arg = None
        self.transport.startTLS(self.tls)

    def do_USER(self, name: bytes) -> None:
        if not self._may_authenticate():
            raise NegativeResponse(ERR_TLS_REQUIRED)
        self._user_arg = name
        self._send(OK_USER)

    async def do_PASS(self, password: bytes) -> None:
        if not self._may_authenticate():
            raise NegativeResponse(ERR_TLS_REQUIRED)
        user, self._user_arg = self._user_arg, None
        if user is None:
            raise NegativeResponse(ERR_USER_FIRST)
        try:
            credentials = sasl.credentials(user, password)
        except sasl.Malformed as e:
            auth.refused("pop3", e, self.peer_ip)
            raise NegativeResponse(ERR_AUTH_FAILED) from None
        await self._login(credentials)

    def do_APOP(self, *args: bytes) -> None:
        raise NegativeResponse(ERR_APOP)

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> Any:
        if not self._may_authenticate():
            raise NegativeResponse(ERR_TLS_REQUIRED)
        if mechanism is None:
            # The RFC 1734 listing form, still sent by some clients to probe.
            self._send(OK, *SASL_MECHANISMS, b".")
            return None
        try:
            self._sasl = sasl.Exchange(mechanism, _SASL_OFFERED)
        except sasl.UnsupportedMechanism:
            raise NegativeResponse(ERR_MECHANISM) from None
        # RFC 5034 §4: "=" is an initial response of zero length.
        return self._sasl_step(lambda exchange: exchange.start(initial))

    def _sasl_response(self, line: bytes) -> Any:
        """The client's answer to a challenge of the exchange under way."""
        return self._sasl_step(lambda exchange: exchange.respond(line))

    def _sasl_step(self, step: Callable[[sasl.Exchange], bytes | sasl.Credentials]) -> Any:
        """One step of the SASL exchange (L{twistedmail.sasl}), answered as RFC 5034 §4 says."""
        exchange = self._sasl
        assert exchange is not None
        try:
            outcome = step(exchange)
        except sasl.Cancelled:
            self._sasl = None
            raise NegativeResponse(ERR_AUTH_CANCELLED) from None  # RFC 5034 §4: MUST -ERR
        except sasl.BadBase64:
            self._sasl = None
            raise NegativeResponse(ERR_BAD_BASE64) from None  # RFC 5034 §4: MUST reject
        except sasl.Malformed as e:
            self._sasl = None
            auth.refused("pop3", e, self.peer_ip)
            raise NegativeResponse(ERR_AUTH_FAILED) from None
        if isinstance(outcome, sasl.Credentials):
            self._sasl = None
            return self._login(outcome)
        # RFC 5034 §4: "+ " and the base64 challenge (empty for PLAIN, RFC 4616 §2).
        self._send(b"+ " + sasl.encode_challenge(outcome))
        self._sasl_pending = True
        return None

    async def _login(self, credentials: sasl.Credentials) -> None:
        try:
            result = await auth.login(
                self.portal, pop3.IMailbox, credentials, service="pop3", peer_ip=self.peer_ip
            )
        except auth.LoginFailed:
            raise NegativeResponse(ERR_AUTH_FAILED) from None
        except auth.LoginBlocked:
            raise NegativeResponse(ERR_LOGIN_BLOCKED) from None  # the failed-login throttle
        except auth.LoginUnavailable:
            raise NegativeResponse(ERR_SERVER) from None
        avatar, logout = result.avatar, result.logout
        if self._lost:
            logout()
            return
        opener = getattr(avatar, "open_maildrop", None)
        if opener is not None:
            try:
                await maybeDeferred(opener)
            except Exception:
                log.failure("pop3 session {session}: cannot open maildrop", session=self.session)
                logout()
                raise NegativeResponse(ERR_MAILDROP) from None
            if self._lost:
                logout()
                return
        self.mbox = avatar
        self._onLogout = logout
        self.user = result.address
        self.pop3_state = TRANSACTION
        self._send(OK_LOGGED_IN)

    # TRANSACTION state

    async def _sizes(self) -> list[int]:
        return list(await maybeDeferred(self.mbox.listMessages))

    def _visible(self, sizes: list[int]) -> list[tuple[int, int]]:
        """(1-based number, octets) of every message not marked deleted (RFC 1939 §5)."""
        return [(i + 1, size) for i, size in enumerate(sizes) if i not in self._deleted]

    async def _index(self, arg: bytes) -> tuple[int, int]:
        """(0-based index, octets) of message-number C{arg}.

        @raise NegativeResponse: C{no such message} for 0, non-numeric, out of range or
            deleted (RFC 1939 §5: "may not refer to a message marked as deleted").
        """
        number = _message_number(arg)
        sizes = await self._sizes()
        if number > len(sizes) or number - 1 in self._deleted:
            raise NegativeResponse(ERR_NO_SUCH_MESSAGE)
        return number - 1, sizes[number - 1]

    async def do_STAT(self) -> None:
        visible = self._visible(await self._sizes())
        self._send(b"+OK %d %d" % (len(visible), sum(size for _, size in visible)))

    async def do_LIST(self, arg: bytes | None = None) -> None:
        if arg is not None:
            index, size = await self._index(arg)
            self._send(b"+OK %d %d" % (index + 1, size))
            return
        visible = self._visible(await self._sizes())
        total = sum(size for _, size in visible)
        lines = [b"%d %d" % pair for pair in visible]
        self._send(b"+OK %d messages (%d octets)" % (len(visible), total), *lines, b".")

    async def _uidl(self, index: int) -> bytes:
        uid = await maybeDeferred(self.mbox.getUidl, index)
        return uid if isinstance(uid, bytes) else str(uid).encode("ascii")

    async def do_UIDL(self, arg: bytes | None = None) -> None:
        if arg is not None:
            index, _ = await self._index(arg)
            self._send(b"+OK %d %s" % (index + 1, await self._uidl(index)))
            return
        lines = [
            b"%d %s" % (number, await self._uidl(number - 1))
            for number, _ in self._visible(await self._sizes())
        ]
        self._send(OK, *lines, b".")

    async def _open_message(self, index: int) -> IO[bytes]:
        try:
            return await maybeDeferred(self.mbox.getMessage, index)
        except MaildirError as e:
            raise NegativeResponse(str(e)) from None
        except ValueError:
            raise NegativeResponse(ERR_NO_SUCH_MESSAGE) from None

    async def _stream(self, source: IO[bytes] | _TopReader) -> None:
        """Send C{source} dot-stuffed and terminated (RFC 1939 §3), pulled by the transport."""
        stuffer = DotStuffer()

        def feed(chunk: bytes) -> bytes:
            self.resetTimeout()  # the client read the previous chunk
            return stuffer.feed(chunk)

        # The idle timer is off while a command runs (L{_run}), but not while the client is
        # the one to make progress: one that stops reading is closed (RFC 1939 §3).
        self._streaming = True
        self.setTimeout(self.timeOut)
        sender = _Sender()
        try:
            await sender.beginFileTransfer(source, self.transport, feed)
        except Exception:
            if sender.stopped:
                raise _ClientGone() from None  # a client closing mid-RETR is no server error
            raise
        finally:
            source.close()
            self._streaming = False
            self.setTimeout(None)
        self.transport.write(stuffer.finish())

    async def do_RETR(self, arg: bytes) -> None:
        index, size = await self._index(arg)
        message = await self._open_message(index)
        self._send(b"+OK %d octets" % size)
        await self._stream(message)
        self._retrieved += 1
        retrieved = getattr(self.mbox, "retrieved", None)
        if retrieved is not None:
            retrieved(index)

    async def do_TOP(self, arg: bytes, lines: bytes) -> None:
        index, _ = await self._index(arg)
        if not _NUMBER.match(lines):
            raise NegativeResponse(ERR_LINE_COUNT)
        message = await self._open_message(index)
        self._send(OK_TOP)
        await self._stream(_TopReader(message, int(lines)))

    async def do_DELE(self, arg: bytes) -> None:
        index, _ = await self._index(arg)
        # Only marked here; removed at QUIT in the UPDATE state (RFC 1939 §6).
        await maybeDeferred(self.mbox.deleteMessage, index)
        self._deleted.add(index)
        self._send(OK_DELETED)

    async def do_RSET(self) -> None:
        await maybeDeferred(self.mbox.undeleteMessages)
        self._deleted.clear()
        self._send(OK)

    def do_NOOP(self) -> None:
        self._send(OK)

    async def do_QUIT(self) -> None:
        if self.pop3_state != TRANSACTION:
            self._send(OK_BYE)
            self.transport.loseConnection()
            return
        # RFC 1939 §6: QUIT from TRANSACTION enters UPDATE, which removes the marked messages.
        self.pop3_state = UPDATE
        try:
            await maybeDeferred(self.mbox.sync)
        except Exception:
            root = getattr(self.mbox, "root", None)
            if isinstance(root, Path) and not root.is_dir():
                # twistedmail user del moved the Maildir aside meanwhile, messages and all:
                # a retry cannot remove them (RFC 2449 §8.1.2), and nothing broke
                log.info(
                    "pop3 session {session}: mailbox was deleted: {count} message(s) marked"
                    " deleted not removed",
                    session=self.session,
                    count=len(self._deleted),
                )
                self._send(NegativeResponse(ERR_GONE).line())
            else:
                log.failure("pop3 session {session}: UPDATE failed", session=self.session)
                self._send(NegativeResponse(ERR_NOT_REMOVED).line())
        else:
            self._removed = len(self._deleted)
            self._send(OK_BYE)
        self.transport.loseConnection()

    # stock commands this server does not offer

    def do_LAST(self) -> None:
        raise NegativeResponse(ERR_UNKNOWN)

    def do_RPOP(self, user: bytes) -> None:
        raise NegativeResponse(ERR_UNKNOWN)


def pop3_factory(
    *,
    portal: Portal,
    tls: IOpenSSLContextFactory | None,
    implicit_tls: bool,
    clock: IReactorTime,
    settings: POP3Settings,
) -> SessionFactory[POP3Server]:
    """The protocol factory for a POP3 listener.

    @param portal: the POP3 portal; its realm must give C{pop3.IMailbox} avatars
        (L{MaildirPOP3Mailbox}).
    @param tls: server TLS context for STLS (port 110); C{None}: no STLS and, unless
        C{settings.allow_plaintext_auth}, no login on a cleartext connection.
    @param implicit_tls: port 995 (RFC 8314 §3.3): the caller listens through TLS (wraps
        this factory in C{TLSMemoryBIOFactory} or uses an SSL endpoint); sessions then count
        as secure from the first byte and offer no STLS.  This factory does not wrap itself.
    @param clock: the reactor (C{IReactorTime}) for timeouts.
    @param settings: the inactivity timeout (RFC 1939 §3: at least 600 seconds) and whether
        passwords are accepted without TLS (L{POP3Settings}).
    """
    return SessionFactory(
        POP3Server, settings, portal=portal, tls=tls, implicit_tls=implicit_tls, clock=clock
    )


@implementer(pop3.IMailbox)
class MaildirPOP3Mailbox:
    """C{pop3.IMailbox} over a user's Maildir INBOX (the folder IMAP calls INBOX).

    L{open_maildrop} takes the snapshot the session works on (RFC 1939 §4); it scans the
    folder, which moves C{new/} mail to C{cur/} as Dovecot does.  Message indices are
    0-based (the interface's); sizes are octets with CRLF line ends (as sent).  Deletions and
    the C{S} (seen) flag of retrieved messages are applied by L{sync}, at QUIT only.

    @param root: the INBOX directory (C{maildir.mailbox_root(mail_dir, address)}).
    @param run_in_thread: runs the blocking folder work off the reactor thread.
    @param notifier: told after C{sync} changed the folder (IMAP sessions then see it).
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(
        self,
        root: Path,
        run_in_thread: RunInThread,
        notifier: ChangeNotifier | None = None,
    ) -> None:
        self.root = root
        self.folder = Folder(root)
        self.run_in_thread = run_in_thread
        self.notifier = notifier
        self._entries: tuple[MessageEntry, ...] | None = None
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()

    def open_maildrop(self) -> Deferred[None]:
        """Take the snapshot (creating an empty INBOX on a first login).

        @raise MaildirError: (in the Deferred) when the folder cannot be read.
        """
        return Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        self._entries = await self.run_in_thread(self._scan)

    def _scan(self) -> tuple[MessageEntry, ...]:
        UserMaildir(self.root).ensure()
        # on a full disk, messages not yet given a UID are listed too: POP3 needs none
        scan = self.folder.scan(provisional=True)
        entries = scan.messages + scan.unsaved
        # STAT and LIST count the octets of every message (RFC 1939 §5): sizes not known
        # yet (files named without ,W=) are measured here, once for every session
        if any(e.size < 0 for e in entries):
            sizes = self.folder.sizes(entries)  # (0: gone meanwhile, RETR answers -ERR)
            entries = tuple(
                e._replace(size=sizes.get(e.base, 0)) if e.size < 0 else e for e in entries
            )
        return entries

    def _snapshot(self) -> tuple[MessageEntry, ...]:
        if self._entries is None:
            # Used without open_maildrop (e.g. by the stock protocol): scan here, blocking.
            self._entries = self._scan()
        return self._entries

    def _entry(self, index: int) -> MessageEntry:
        entries = self._snapshot()
        if not 0 <= index < len(entries):
            raise ValueError("no such message")
        return entries[index]

    def listMessages(self, i: int | None = None) -> Any:
        """Octets of message C{i}, or of every message; 0 for a deleted one.

        @raise ValueError: for an index out of range.
        """
        if i is None:
            return [0 if n in self._deleted else e.size for n, e in enumerate(self._snapshot())]
        entry = self._entry(i)
        return 0 if i in self._deleted else entry.size

    def getMessage(self, i: int) -> IO[bytes]:
        """A binary file of message C{i} with CRLF line ends (RFC 1939 §3): as stored, bare
        LF line ends of a file another program wrote made CRLF (L{CRLFReader}), so RETR
        sends the octets LIST counts.

        @raise ValueError: out of range or deleted.
        @raise MaildirError: the message was removed by another session.
        """
        entry = self._entry(i)
        if i in self._deleted:
            raise ValueError("message deleted")
        # an io.BufferedIOBase, which typeshed does not count as IO[bytes]
        return cast(IO[bytes], CRLFReader(open(self.folder.open_fd(entry), "rb")))

    def getUidl(self, i: int) -> bytes:
        """The unique-id of message C{i} from its Maildir unique name (RFC 1939 §7)."""
        return uidl_for(self._entry(i).base).encode("ascii")

    def deleteMessage(self, i: int) -> None:
        self._entry(i)
        self._deleted.add(i)

    def undeleteMessages(self) -> None:
        self._deleted.clear()

    def retrieved(self, i: int) -> None:
        """Message C{i} was sent whole by RETR: it gets the seen flag at L{sync}."""
        self._entry(i)
        self._retrieved.add(i)

    def sync(self) -> Deferred[None]:
        """The UPDATE state (RFC 1939 §6): remove the messages marked deleted, flag the
        retrieved ones seen.  @raise OSError: (in the Deferred) when a removal failed."""
        return Deferred.fromCoroutine(self._sync())

    async def _sync(self) -> None:
        entries = self._snapshot()
        doomed = [entries[i] for i in sorted(self._deleted)]
        seen = [entries[i] for i in sorted(self._retrieved - self._deleted)]
        if not doomed and not seen:
            return
        try:
            await self.run_in_thread(self._update, doomed, seen)
        finally:
            if self.notifier is not None:
                self.notifier.changed(self.root)

    def _update(self, doomed: list[MessageEntry], seen: list[MessageEntry]) -> None:
        errors: list[OSError] = []
        for entry in doomed:
            try:
                self.folder.remove(entry)
            except OSError as e:
                errors.append(e)
        if seen:
            try:  # a delta under the folder lock: flags set meanwhile by IMAP are kept
                self.folder.change_flags_many([(entry, FlagChange(add="S")) for entry in seen])
            except (MaildirError, OSError):
                pass  # the flag is a courtesy
        if errors:
            raise errors[0]

    def logout(self) -> None:
        """End of session: forget the snapshot (nothing is written here)."""
        self._entries = None
        self._deleted.clear()
        self._retrieved.clear()
