"""The IMAP4rev1 session (RFC 3501) on Twisted's C{IMAP4Server}, with STARTTLS (RFC 3501
§6.2.1, RFC 2595), IDLE (RFC 2177), NAMESPACE (RFC 2342), CHILDREN (RFC 3348), UIDPLUS
(RFC 4315), MOVE (RFC 6851), LIST-EXTENDED (RFC 5258), SPECIAL-USE (RFC 6154), ID
(RFC 2971), ENABLE (RFC 5161), UNSELECT (RFC 3691), LITERAL+ (RFC 7888), COMPRESS=DEFLATE
(RFC 4978, L{twistedmail.imap.compress}), ESEARCH (RFC 4731), LIST-STATUS (RFC 5819), SORT
(RFC 5256, L{twistedmail.imap.sort}), UTF8=ACCEPT (RFC 6855), CONDSTORE and QRESYNC (RFC 7162, in
L{IMAPServer}'s C{condstore} methods) and the response codes of
RFC 5530.

Twisted keeps the parser and the per-state command tables (C{unauth_X}, C{auth_X},
C{select_X}); every command handler here is an C{async def} run by one dispatcher
(L{IMAPServer._run}), which:

  - holds back pipelined input while a command runs (the line receiver is paused), so
    replies stay in command order even when a command waits on a thread (twisted #9282);
  - turns L{IMAPError} and C{MailboxError} into C{NO}/C{BAD} with a response code, and any
    other exception into C{NO [SERVERBUG]} after logging it (never a traceback or a
    dropped connection);
  - reports EXPUNGEs noticed from other sessions only where RFC 3501 §7.4.1 allows, and
    queued EXISTS / FETCH FLAGS before the tagged reply.

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

import inspect
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from OpenSSL import SSL
from twisted.cred.portal import Portal
from twisted.internet import interfaces
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedmail import auth, sasl
from twistedmail.auth import log_login
from twistedmail.imap import grammar
from twistedmail.imap.compress import CompressionError, DeflateTransport, Inflater
from twistedmail.imap.mailbox import SearchError, parse_sequence_set
from twistedmail.imap.message import (
    bodystructure,
    encode_sexp,
    encode_string,
    envelope,
    format_internaldate,
    parse_entity,
    parse_internaldate,
    partial,
    render_parts,
    section_data,
    section_label,
    split_message,
)
from twistedmail.imap.quota import CAPABILITIES as QUOTA_CAPABILITIES
from twistedmail.imap.quota import QuotaCommands
from twistedmail.imap.sort import SortError, parse_criteria
from twistedmail.index import CachedParts
from twistedmail.limits import UserSessionLimit
from twistedmail.maildir import MaildirError
from twistedmail.quota import QuotaTracker
from twistedmail.settings import IMAPSettings

log = Logger(namespace="twistedmail.imap")


def mailbox_name(raw: bytes | str) -> str:
    """A mailbox name from the wire, decoded from modified UTF-7 (RFC 3501 §5.1.3).

    Strict, unlike Twisted's C{_parseMbox} (which logs a traceback and, for some malformed
    input such as C{bad&}, returns a different name): the name must re-encode to exactly the
    bytes sent.  @raise imap4.IllegalMailboxEncoding: otherwise (answered C{NO [CANNOT]}).
    """
    if isinstance(raw, str):
        return raw
    try:
        name = raw.decode("imap4-utf-7")
        if name.encode("imap4-utf-7") != raw:
            raise ValueError("not canonical modified UTF-7")
    except (UnicodeError, ValueError):
        raise imap4.IllegalMailboxEncoding(raw) from None
    return name


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"}
STATUS_ITEMS |= {"DELETED", "DELETED-STORAGE"}  # RFC 9208 §4.1.4 (QUOTA=RES-*)
STATUS_ITEMS |= {"APPENDLIMIT"}  # RFC 7889 §3.2
_ATOM_SPECIALS = frozenset(b'(){%*"\\]' + bytes(range(0x21)) + b"\x7f")
"""RFC 3501 §9: octets not allowed in an atom (atom-specials, SP, CTL; "]" is resp-specials)."""
SASL_MECHANISMS = ("PLAIN",)
"""AUTHENTICATE mechanisms offered (L{twistedmail.sasl}), only under TLS (RFC 3501 §6.2.2)."""
UID_COMMANDS = {b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE", b"EXPUNGE", b"SORT"}
UTF8_ACCEPT = b"UTF8=ACCEPT"
ENABLEABLE: frozenset[bytes] = frozenset({UTF8_ACCEPT, b"CONDSTORE", b"QRESYNC"})
"""Capabilities ENABLE (RFC 5161) can turn on (RFC 6855, RFC 7162 §3.1.8, §3.2.3)."""
MAX_MODSEQ = 2**63 - 1  # RFC 7162 §7: mod-sequence-value is at most 2^63-1
LIST_SELECT_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
LIST_RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}
ESEARCH_RETURN_OPTIONS = {b"MIN", b"MAX", b"ALL", b"COUNT"}
"""RFC 4731 §3.1 return options (SAVE, RFC 5182 SEARCHRES, is not offered)."""
ID_FIELDS = 30  # RFC 2971 §3.3: at most 30 field-value pairs
# RFC 3501 §7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH.
NO_EXPUNGE_COMMANDS = {b"FETCH", b"STORE", b"SEARCH", b"SORT"}
FETCH_BATCH = 1000


class IMAPError(Exception):
    """A command's failure, answered as C{tag <status> [<code>] <text>} (RFC 5530 codes);
    with C{close}, the server then says BYE and closes the connection."""

    def __init__(self, status: bytes, text: bytes, code: bytes = b"", close: bool = False) -> None:
        super().__init__(text.decode("ascii", "replace"))
        self.status = status
        self.text = text
        self.code = code
        self.close = close

    def message(self) -> bytes:
        return (b"[" + self.code + b"] " if self.code else b"") + self.text


class _Gone(IMAPError):
    """The connection closed while the command ran: it ends, and nothing is sent."""

    def __init__(self) -> None:
        super().__init__(b"NO", b"Connection closed")


def _no(text: bytes, code: bytes = b"") -> IMAPError:
    return IMAPError(b"NO", text, code)


def _bad(text: bytes, code: bytes = b"") -> IMAPError:
    return IMAPError(b"BAD", text, code)


def _safe(text: str) -> bytes:
    """Our own error text for a client: printable ASCII, bounded."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200].encode("ascii")


def _mailbox_name(name: str) -> bytes:
    return encode_string(name.encode("imap4-utf-7"))


def utf8_mailbox(raw: bytes) -> bytes:
    """A UTF-8 mailbox name (RFC 6855 §3) in its modified UTF-7 form (C{"Café & Co"} ->
    C{b"Caf&AOk- &- Co"}), for L{mailbox_name}.

    @raise imap4.IllegalMailboxEncoding: not UTF-8 (answered C{NO [CANNOT]}).
    """
    try:
        return raw.decode("utf-8").encode("imap4-utf-7")
    except UnicodeError:
        raise imap4.IllegalMailboxEncoding(raw) from None


_TRAILING_LITERAL = re.compile(rb"(\{\d+\+?\})\Z")


def literal_size(token: bytes) -> tuple[int, bool]:
    """C{{n}} or C{{n+}} (RFC 7888 §3 non-synchronizing) -> (n, synchronizing).

    @raise imap4.IllegalClientResponse: anything else.
    """
    if token[:1] != b"{" or token[-1:] != b"}":
        raise imap4.IllegalClientResponse("Literal expected")
    digits = token[1:-1]
    sync = not digits.endswith(b"+")
    if not sync:
        digits = digits[:-1]
    if not digits.isdigit() or len(digits) > 12:
        raise imap4.IllegalClientResponse("Bad literal size")
    return int(digits), sync


def uid_set(uids: Sequence[int]) -> bytes:
    """A UID list as a compact sequence set, order kept (RFC 4315 §3 uid-set): 1:3,7."""
    runs: list[list[int]] = []
    for uid in uids:
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in runs)


def _paren_group(line: bytes) -> tuple[bytes, bytes]:
    """Split C{(a (b) "c)")rest} into (C{a (b) "c)"}, C{rest}); quotes respected.

    @raise imap4.IllegalClientResponse: unbalanced parentheses.
    """
    depth, quoted, escaped = 0, False, False
    for i, c in enumerate(line):
        if quoted:
            if escaped:
                escaped = False
            elif c == 0x5C:
                escaped = True
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return line[1:i], line[i + 1 :].lstrip(b" ")
    raise imap4.IllegalClientResponse("Mismatched parenthesis")


def _atoms(inner: bytes) -> list[bytes]:
    """The upper-cased atoms of an option list (nested lists are refused)."""
    out = []
    for item in imap4.parseNestedParens(inner):
        if not isinstance(item, bytes):
            raise imap4.IllegalClientResponse("Unexpected list")
        out.append(item.upper())
    return out


class _NoScheduler:
    """Stock spewMessage/MessageProducer are not used; this keeps the global reactor out."""

    def __call__(self, iterator: Any) -> Deferred[None]:
        for _ in iterator:
            pass
        return succeed(None)


@implementer(interfaces.IPushProducer)
class _FlowGate:
    """Registered on the transport during FETCH so a slow reader pauses the output loop."""

    def __init__(self) -> None:
        self.waiting: Deferred[None] | None = None
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    async def wait(self) -> None:
        if self.paused:
            self.waiting = Deferred()
            await self.waiting


class IMAPServer(QuotaCommands, imap4.IMAP4Server):
    """One IMAP connection.

    @param portal: logs users in; the realm must return C{imap4.IAccount} avatars.
    @param tls: the STARTTLS context (port 143); C{None} on the implicit-TLS port.
    @param implicit_tls: the transport is already TLS (port 993, RFC 8314).
    @param clock: for the autologout timers (RFC 3501 §5.4: 30 minutes after login).
    @param max_literal_size: octets; a larger APPEND literal gets C{NO [TOOBIG]} before
        the continuation request.
    @param quota: the users' quotas (RFC 9208, L{QuotaCommands}); C{None}: no QUOTA.
    """

    IDENT = b"twistedmail IMAP4rev1 ready"
    user_limit: UserSessionLimit | None = None  # logged-in sessions per user+IP (factory)
    _user_slot: tuple[str, str] | None = None
    _lost = False  # connectionLost ran: a command still running must take nothing more
    _gate: _FlowGate | None = None  # a FETCH's flow control, while it runs
    MAX_LENGTH = 65536
    timeOut = 60
    POSTAUTH_TIMEOUT = IMAPSettings().idle_timeout

    def __init__(
        self,
        *,
        portal: Portal | None,
        tls: IOpenSSLContextFactory | None,
        implicit_tls: bool,
        clock: IReactorTime,
        max_literal_size: int,
        quota: QuotaTracker | None = None,
    ) -> None:
        super().__init__({}, None if implicit_tls else tls, scheduler=_NoScheduler())
        self.quota = quota
        self.portal = portal
        self.implicit_tls = implicit_tls
        self.clock = clock
        self.callLater = clock.callLater
        self.max_literal_size = max_literal_size
        self.session = uuid.uuid4().hex[:8]
        self.peer = "?"
        self.user: str | None = None
        self._busy = False
        self._idling = False
        self._line_waiter: Deferred[bytes] | None = None
        self._pending_exists = False
        self._pending_flags: dict[int, list[str]] = {}
        self._pending_keywords = False
        self._pending_highestmodseq = False
        self.enabled: set[bytes] = set()
        self._inflater: Inflater | None = None  # COMPRESS=DEFLATE active (RFC 4978)

    # connection

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
                pending.errback(_Gone())
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

    def secure(self) -> bool:
        """Whether the connection is encrypted (RFC 8314 implicit TLS or after STARTTLS)."""
        return self.implicit_tls or self.startedTLS

    def capabilities(self) -> dict[bytes, Any]:
        cap: dict[bytes, Any] = {}
        if self.secure():
            cap[b"AUTH"] = [m.encode("ascii") for m in SASL_MECHANISMS]
        else:
            if self.ctx is not None and self.canStartTLS:
                cap[b"STARTTLS"] = None
            cap[b"LOGINDISABLED"] = None  # RFC 3501 §6.2.3: no plaintext passwords
        cap[b"NAMESPACE"] = None
        cap[b"IDLE"] = None
        cap[b"CHILDREN"] = None
        cap[b"ID"] = None
        cap[b"ENABLE"] = None
        cap[b"UNSELECT"] = None
        cap[b"LITERAL+"] = None
        cap[b"UIDPLUS"] = None
        cap[b"MOVE"] = None
        cap[b"SPECIAL-USE"] = None
        cap[b"LIST-EXTENDED"] = None
        cap[b"CONDSTORE"] = None
        cap[b"QRESYNC"] = None
        cap[b"ESEARCH"] = None
        cap[b"LIST-STATUS"] = None
        cap[b"SORT"] = None
        cap[b"UTF8"] = [b"ACCEPT"]
        # RFC 7889 §3.1: one limit for every mailbox, so the capability carries it; a larger
        # APPEND gets NO [TOOBIG] before its literal is read.
        cap[b"APPENDLIMIT"] = [b"%d" % self.max_literal_size]
        if self.state in ("auth", "select") and self._inflater is None:
            cap[b"COMPRESS"] = [b"DEFLATE"]  # RFC 4978 §3: after login, once
        cap.update(QUOTA_CAPABILITIES if self.quota is not None else {})
        return cap

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"* BYE [TOOBIG] Command line too long")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._lost or (self.transport is not None and self.transport.disconnecting):
            return  # after LOGOUT/BYE nothing more is executed (RFC 3501 §6.1.3)
        if self._inflater is None:
            super().dataReceived(data)
            return
        super().dataReceived(b"")  # lines already inflated first (after a pause)
        try:
            self._inflater.feed(data, super().dataReceived, self._input_stopped)
        except CompressionError as e:
            log.info("imap bad deflate data session={session}: {e}", session=self.session, e=e)
            self.sendLine(b"* BYE [CLIENTBUG] Invalid compressed data")
            self.clearLineBuffer()
            self.transport.loseConnection()

    def setLineMode(self, extra: bytes = b"") -> Any:
        """Back to lines after a literal; C{extra}, the rest of the chunk the literal ended
        in, is already inflated (RFC 4978 §3): it goes to the line parser, never through
        L{dataReceived} to the inflater again."""
        self.line_mode = 1
        if extra:
            return super().dataReceived(extra)
        return None

    def _input_stopped(self) -> bool:
        return bool(self.paused or self.transport is None or self.transport.disconnecting)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:
            log.failure("imap line failed session={session}", session=self.session)
            self.sendBadResponse(None, b"[SERVERBUG] Internal error")

    def parse_command(self, line: bytes) -> None:
        args = line.split(None, 2)
        if not args:
            self.sendBadResponse(None, b"Null command")
            return
        if len(args) == 1:
            self.sendBadResponse(args[0], b"Missing command")
            return
        if not grammar.is_tag(args[0]):
            # RFC 3501 §9 tag: ASTRING-CHARs but "+"; answered untagged, as it has no tag
            self.sendBadResponse(None, b"Invalid tag")
            m = _TRAILING_LITERAL.search(line)
            if m and m.group(1).endswith(b"+}"):  # its literal's data must not run
                self.sendLine(b"* BYE [CLIENTBUG] Closing the connection")
                self.clearLineBuffer()
                self.transport.loseConnection()
            return
        rest = args[2] if len(args) == 3 else None
        self.dispatchCommand(args[0], args[1].upper(), rest)

    def parse_waiting(self, line: bytes) -> None:
        """A continuation line (AUTHENTICATE response, IDLE's DONE): hand it to the waiting
        command, pausing input first so nothing after it runs before the command ends."""
        self.parseState = "command"
        waiter, self._line_waiter = self._line_waiter, None
        self.pauseProducing()
        assert waiter is not None
        waiter.callback(line)

    async def read_line(self) -> bytes:
        """Wait for the client's next line while the current command is in progress."""
        waiter: Deferred[bytes] = Deferred()
        self._line_waiter = waiter
        self.parseState = "waiting"
        self.resumeProducing()
        return await waiter

    # dispatch

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes | None, uid: Any = None) -> None:
        Deferred.fromCoroutine(self._run(tag, cmd, rest))

    async def _run(self, tag: bytes, cmd: bytes, rest: bytes | None) -> None:
        paused = False
        uid = False
        unread = rest  # the part of the line not parsed yet: its literal is unread
        try:
            if cmd == b"UID" and self.state == "select":
                sub, _, rest = (rest or b"").partition(b" ")
                cmd = sub.upper()
                if cmd not in UID_COMMANDS:
                    raise _bad(b"Unknown UID command")
                uid = True
            if uid and cmd == b"EXPUNGE":
                spec: Any = self.select_UID_EXPUNGE  # RFC 4315 §2.1: takes a UID set
            else:
                spec = self.lookupCommand(cmd) if cmd.isalpha() else None
            if spec is None:
                raise _bad(b"Command unknown or not valid in this state")
            handler, parsers = spec[0], spec[1:]
            args: list[Any] = []
            line = rest if rest is not None else b""  # parsers expect bytes
            for parser in parsers:
                if not callable(parser):
                    args.append(parser)
                    continue
                unread = line
                result = parser(self, line)
                if isinstance(result, Deferred):
                    unread = None  # a literal it awaits is read, even if it then fails
                    result = await result
                arg, line = result
                line = line if line is not None else b""  # arg_atom leaves None at the end
                args.append(arg)
            unread = line
            if line:
                raise _bad(b"Too many arguments")
            unread = None
            self._busy = paused = True
            self.pauseProducing()
            kwargs = {"uid": uid} if uid else {}
            outcome = handler(self, tag, *args, **kwargs)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome is not None:
                if self.mbox is not None and cmd not in NO_EXPUNGE_COMMANDS:
                    self._send_expunges()
                self.sendPositiveResponse(tag, outcome)
        except IMAPError as e:
            self._respond(e.status, tag, e.message())
            if e.close:
                self.sendLine(b"* BYE [" + (e.code or b"CLIENTBUG") + b"] Closing the connection")
                self.clearLineBuffer()
                self.transport.loseConnection()
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, b"Syntax error: " + _safe(str(e)))
        except imap4.IllegalMailboxEncoding:
            self.sendNegativeResponse(tag, b"[CANNOT] Invalid mailbox name")
        except imap4.MailboxException as e:
            code = getattr(e, "code", b"")
            self.sendNegativeResponse(tag, (b"[" + code + b"] " if code else b"") + _safe(str(e)))
        except Exception:
            log.failure(
                "imap {command} failed session={session}", command=cmd, session=self.session
            )
            self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error")
        finally:
            self._busy = False
            self._idling = False
            m = _TRAILING_LITERAL.search(unread) if unread else None
            if (
                m
                and m.group(1).endswith(b"+}")
                and self.transport
                and not self.transport.disconnecting
            ):
                # RFC 7888 §4: the refused command's non-synchronizing literal is already
                # on its way; never read it as commands (as for an oversized literal)
                self.sendLine(b"* BYE [CLIENTBUG] Closing the connection")
                self.clearLineBuffer()
                self.transport.loseConnection()
            if paused and self.transport is not None:
                if self.transport.disconnecting:
                    # LOGOUT or BYE: keep reading so the peer's close (TLS close_notify, FIN)
                    # is seen and the connection freed; commands are no longer run.
                    self.clearLineBuffer()
                    self.transport.resumeProducing()
                    _close_below_tls(self.transport)
                else:
                    self.resumeProducing()

    async def _blocking(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run an IAccount mutator off the reactor thread when the account allows it."""
        run = getattr(self.account, "run_in_thread", None)
        if run is None:
            return f(*args)
        return await run(f, *args)

    # argument parsers (stock ones raise bare Exceptions on bad input)

    def arg_literal(self, line: bytes) -> Any:
        size, sync = literal_size(line or b"")
        if size > self.max_literal_size:
            # a synchronizing literal is refused before the continuation request, so the
            # client sends no data; a non-synchronizing one (RFC 7888 §4) is already on its
            # way, so the connection is closed rather than read its data as commands
            raise IMAPError(b"NO", b"Message too large", b"TOOBIG", close=not sync)
        return self._literal(imap4.LiteralFile(size, Deferred()), sync, b"data")

    def arg_literal_or_utf8(self, line: bytes) -> Any:
        """APPEND's message: a literal, or with UTF8=ACCEPT enabled C{UTF8 (~{n}...)}
        (RFC 6855 §4, a literal8 in parentheses)."""
        if (line or b"")[:5].upper() != b"UTF8 ":
            return self.arg_literal(line)
        if not self.utf8_accept():
            raise _bad(b"UTF8 APPEND needs ENABLE UTF8=ACCEPT")
        rest = line[5:]
        if rest[:2] != b"(~":
            raise imap4.IllegalClientResponse("UTF8 (~{n}) literal expected")
        result = self.arg_literal(rest[2:])

        def closed(r: tuple[Any, bytes]) -> tuple[Any, bytes]:
            if r[1][:1] != b")":
                raise imap4.IllegalClientResponse("Missing parenthesis after the literal")
            return r[0], r[1][1:]

        return result.addCallback(closed)

    def utf8_accept(self) -> bool:
        """Whether the client sent ENABLE UTF8=ACCEPT (RFC 6855 §3)."""
        return UTF8_ACCEPT in self.enabled

    def arg_astring(self, line: bytes, final: bool = False) -> Any:
        """An astring; after ENABLE UTF8=ACCEPT a UTF-8 mailbox name (RFC 6855 §3), turned
        into its RFC 3501 §5.1.3 form here so every command decodes names one way (after
        login, astrings are only mailbox names and patterns)."""
        result = self._astring(line, final)
        if not self.utf8_accept():
            return result
        if isinstance(result, Deferred):
            return result.addCallback(lambda r: (utf8_mailbox(r[0]), r[1]))
        return utf8_mailbox(result[0]), result[1]

    def _astring(self, line: bytes, final: bool = False) -> Any:
        """An astring, quoted, atom or literal (C{{n}} or LITERAL+ C{{n+}}, RFC 7888)."""
        stripped = (line or b"").strip()
        if stripped[:1] != b"{":
            return grammar.astring(stripped)  # RFC 3501 §9: quoted or atom
        size, sync = literal_size(stripped)
        if final and sync and not size:
            return (b"", b"")
        if size > self._literalStringLimit:
            raise IMAPError(b"BAD", b"Literal too large", b"TOOBIG", close=not sync)
        return self._literal(imap4.LiteralString(size, Deferred()), sync, b"text")

    def arg_seqset(self, line: bytes) -> tuple[imap4.MessageSet, bytes]:
        if not line:
            raise imap4.IllegalClientResponse("Missing argument")
        arg, _, rest = line.partition(b" ")
        try:
            return parse_sequence_set(arg), rest  # RFC 3501 §9: 32-bit numbers only
        except ValueError as e:
            raise imap4.IllegalClientResponse(f"Bad message number {e}") from None

    def arg_finalastring(self, line: bytes) -> Any:
        return self.arg_astring(line, final=True)

    def _literal(self, pending: Any, sync: bool, kind: bytes) -> Deferred[Any]:
        """Read C{pending.size} raw octets; ask for them first unless non-synchronizing."""
        self.parseState = "pending"
        self._pendingLiteral = pending
        if sync:
            self.sendContinuationRequest(b"Ready for %d octets of %s" % (pending.size, kind))
        self.setRawMode()
        d: Deferred[Any] = pending.defer
        # The rest of the command follows the literal after one SP (RFC 3501 §9, e.g.
        # "STATUS {5}CRLF INBOX (MESSAGES)"): drop it, as after a quoted string.
        d.addCallback(lambda r: (r[0], r[1][1:]) if r[1][:1] == b" " else r)
        return d

    def arg_searchkeys(self, line: bytes) -> Any:
        """Search keys (RFC 3501 §6.4.4), whose strings may be literals: clients send
        C{SEARCH CHARSET UTF-8 SUBJECT {n}} for non-ASCII text."""
        if _TRAILING_LITERAL.search(line or b""):
            return Deferred.fromCoroutine(self._searchkeys_with_literals(line))
        return grammar.parse_list(line or b""), b""

    async def _searchkeys_with_literals(self, line: bytes) -> tuple[Any, bytes]:
        """Read each literal, re-quote it into the line, then parse the whole line."""
        assembled = b""
        while (m := _TRAILING_LITERAL.search(line)) is not None:
            size, sync = literal_size(m.group(1))
            if size > self._literalStringLimit:
                raise IMAPError(b"BAD", b"Literal too large", b"TOOBIG", close=not sync)
            head = line[: m.start()]
            data, line = await self._literal(imap4.LiteralString(size, Deferred()), sync, b"text")
            if b"\r" in data or b"\n" in data or b"\0" in data:
                # RFC 3501 §9: a literal is CHAR8 (no NUL); CR LF cannot be re-quoted
                raise imap4.IllegalClientResponse("NUL or line breaks in a search string")
            quoted = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            assembled += head + b'"' + quoted + b'" '
        return grammar.parse_list(assembled + line), b""

    def arg_rest(self, line: bytes | None) -> tuple[bytes | None, bytes]:
        return (line or None), b""

    def arg_rest_required(self, line: bytes | None) -> tuple[bytes, bytes]:
        if not line:
            raise imap4.IllegalClientResponse("Missing argument")
        return line, b""

    # unsolicited responses

    def sendUntaggedResponse(self, message: bytes, isAsync: Any = None) -> None:
        self._respond(message, None, None)

    def _respond(self, state: bytes, tag: bytes | None, message: bytes | None) -> None:
        if tag is not None:
            self._flush_unsolicited()
        if not tag:
            tag = b"*"
        self.sendLine(b" ".join([tag, state] + ([message] if message else [])))

    def _flush_unsolicited(self) -> None:
        mbox = self.mbox
        if mbox is None:
            self._pending_exists, self._pending_flags = False, {}
            self._pending_keywords = self._pending_highestmodseq = False
            return
        if self._pending_highestmodseq:
            self._pending_highestmodseq = False
            # (once a session: the view's own changes may be newer than the last scan)
            seqs = range(1, mbox.getMessageCount() + 1)
            highest = max([mbox.getHighestModSeq()] + [mbox.modseq_of(n) for n in seqs])
            self.sendLine(b"* OK [HIGHESTMODSEQ %d] Highest" % highest)
        self._flush_keywords()
        if self._pending_exists:
            self._pending_exists = False
            # the mailbox learns what the client knows (RFC 3501 §7.4.1: no EXPUNGE or FETCH
            # may name a number above the last EXISTS); nothing to say when it knows it
            announce = getattr(mbox, "announce", None)
            count = announce() if announce is not None else mbox.getMessageCount()
            if count is not None:
                self.sendLine(b"* %d EXISTS" % count)
                self.sendLine(b"* %d RECENT" % mbox.getRecentCount())
        if self._pending_flags:
            pending, self._pending_flags = self._pending_flags, {}
            by_uid = {mbox.getUID(n): n for n in range(1, mbox.getMessageCount() + 1)}
            for message_uid, flags in sorted(pending.items()):
                seq = by_uid.get(message_uid)
                if seq is not None:
                    extra = self._condstore_items(seq)
                    self.sendLine(b"* %d FETCH (FLAGS (%s)%s)" % (seq, _flag_list(flags), extra))

    def _flush_keywords(self) -> None:
        """RFC 3501 §7.2.6: a new keyword in the folder changes its FLAGS; send FLAGS and
        PERMANENTFLAGS again (as Dovecot does) before any FETCH that shows the keyword."""
        if not self._pending_keywords or self.mbox is None:
            return
        self._pending_keywords = False
        self.sendLine(b"* FLAGS (" + _flag_list(self.mbox.getFlags()) + b")")
        if self.mbox.isWriteable():
            permanent = _flag_list(_permanent_flags(self.mbox))
            self.sendLine(b"* OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted")

    def _send_expunges(self) -> None:
        take = getattr(self.mbox, "take_expunged", None)
        if take is not None:
            self._report_expunged(take())

    def _report_expunged(self, seqs: Sequence[int]) -> None:
        """C{* n EXPUNGE} for each (already adjusted) sequence number; once QRESYNC is
        enabled, one C{* VANISHED uid-set} instead (RFC 7162 §3.2.10)."""
        if not seqs:
            return
        uids = getattr(self.mbox, "expunged_uids", None)
        if b"QRESYNC" in self.enabled and uids:
            self.sendLine(b"* VANISHED " + uid_set(sorted(uids)))
            return
        for seq in seqs:
            self.sendLine(b"* %d EXPUNGE" % seq)

    # IMailboxListener

    def newMessages(self, exists: int | None, recent: int | None) -> None:
        self._pending_exists = True
        if self._idling:
            self._flush_unsolicited()

    def flagsChanged(self, newFlags: dict[int, Sequence[str]]) -> None:
        if self.mbox is None:
            return
        for seq, flags in newFlags.items():
            self._pending_flags[self.mbox.getUID(seq)] = list(flags)
        if self._idling:
            self._flush_unsolicited()

    def keywordsChanged(self) -> None:
        self._pending_keywords = True
        if self._idling:
            self._flush_unsolicited()

    def expungesPending(self) -> None:
        if self._idling:
            self._send_expunges()
            self._flush_unsolicited()

    def modeChanged(self, writeable: bool) -> None:
        self.sendUntaggedResponse(b"OK [READ-WRITE] mode" if writeable else b"OK [READ-ONLY] mode")

    # any state

    def do_LOGOUT(self, tag: bytes) -> None:
        """RFC 3501 §6.1.3: BYE, then the tagged OK, and no update between them: changes
        other sessions made are not reported to a client that is leaving (imaptest's stress
        mode failed "seq too high ... state=LOGOUT" on a FETCH sent before the OK)."""
        self._pending_exists, self._pending_flags = False, {}
        self._pending_keywords = self._pending_highestmodseq = False
        super().do_LOGOUT(tag)

    unauth_LOGOUT = (do_LOGOUT,)
    auth_LOGOUT = select_LOGOUT = logout_LOGOUT = unauth_LOGOUT

    async def do_NOOP(self, tag: bytes) -> bytes:
        await self._refresh()
        return b"NOOP completed"

    unauth_NOOP = (do_NOOP,)
    auth_NOOP = unauth_NOOP
    select_NOOP = unauth_NOOP
    logout_NOOP = unauth_NOOP

    async def _refresh(self) -> None:
        refresh = getattr(self.mbox, "refresh", None)
        if refresh is not None:
            await refresh()

    # not authenticated (RFC 3501 §6.2)

    def do_STARTTLS(self, tag: bytes) -> None:
        if self.secure():
            raise _bad(b"TLS already active")
        if self.ctx is None or not self.canStartTLS:
            raise _no(b"TLS not available")
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        # RFC 3501 §6.2.1 / RFC 2595 §3.1: nothing the client sent after STARTTLS, before
        # the handshake, may be acted on.  Stock Twisted kept those lines in its buffer and
        # answered them inside TLS, as if sent there (STARTTLS command injection).
        self.clearLineBuffer()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    unauth_STARTTLS = (do_STARTTLS,)

    async def do_LOGIN(self, tag: bytes, user: bytes, password: bytes) -> bytes:
        if not self.secure():
            log_login("imap", user, self.peer, False)
            raise _no(b"Plaintext authentication disallowed without TLS", b"PRIVACYREQUIRED")
        try:
            credentials = sasl.credentials(user, password)
        except sasl.Malformed as e:
            auth.refused("imap", e, self.peer)
            raise _no(b"Authentication failed", b"AUTHENTICATIONFAILED") from None
        await self._login(credentials)
        return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

    unauth_LOGIN = (do_LOGIN, arg_astring, arg_finalastring)

    async def do_AUTHENTICATE(self, tag: bytes, mechanism: bytes, initial: bytes | None) -> bytes:
        if not self.secure():
            raise _no(b"Authentication disallowed without TLS", b"PRIVACYREQUIRED")
        try:
            exchange = sasl.Exchange(mechanism, SASL_MECHANISMS)
            # RFC 4959 §3: an initial response ("=" for an empty one) saves a round trip.
            outcome = exchange.start(initial)
            while not isinstance(outcome, sasl.Credentials):
                # RFC 3501 §6.2.2: "+ " and the base64 challenge (empty for PLAIN).
                self.sendContinuationRequest(sasl.encode_challenge(outcome))
                outcome = exchange.respond(await self.read_line())
        except sasl.UnsupportedMechanism:
            raise _no(b"Unsupported authentication mechanism", b"CANNOT") from None
        except sasl.Cancelled:
            raise _bad(b"Authentication cancelled") from None  # RFC 3501 §6.2.2
        except sasl.BadBase64:
            raise _bad(b"Invalid base64 response") from None  # RFC 3501 §6.2.2
        except sasl.Malformed as e:
            auth.refused("imap", e, self.peer)
            # RFC 5530 §3: the credentials are wrong, whatever the reason.
            raise _no(b"Authentication failed", b"AUTHENTICATIONFAILED") from None
        await self._login(outcome)
        return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

    unauth_AUTHENTICATE = (do_AUTHENTICATE, imap4.IMAP4Server.arg_atom, arg_rest)

    def sendContinuationRequest(
        self, msg: bytes | None = b"Ready for additional command text"
    ) -> None:
        self.sendLine(b"+ " + (msg or b""))

    async def _login(self, credentials: sasl.Credentials) -> None:
        if self.portal is None:
            raise _no(b"Temporary authentication failure", b"UNAVAILABLE")
        try:
            result = await auth.login(
                self.portal, imap4.IAccount, credentials, service="imap", peer_ip=self.peer
            )
        except auth.LoginFailed:
            raise _no(b"Authentication failed", b"AUTHENTICATIONFAILED") from None
        except auth.LoginBlocked:
            # RFC 5530 §3: UNAVAILABLE, a temporary failure (the failed-login throttle).
            raise _no(b"Too many failed logins, try again later", b"UNAVAILABLE") from None
        except auth.LoginUnavailable:
            raise _no(b"Temporary authentication failure", b"UNAVAILABLE") from None
        avatar, logout, address = result.avatar, result.logout, result.address
        if self._lost:  # the client left during the check: no slot nobody would release
            logout()
            raise _Gone()
        if self.user_limit is not None:
            if not self.user_limit.acquire(address, self.peer):
                logout()
                # RFC 5530 §3: UNAVAILABLE; as Dovecot's mail_max_userip_connections.
                raise _no(b"Maximum number of connections from user+IP exceeded", b"UNAVAILABLE")
            self._user_slot = (address, self.peer)
        prepare = getattr(avatar, "prepare", None)
        if prepare is not None:
            try:
                await prepare()  # INBOX, and the special-use folders on first login
            except Exception:
                log.failure("imap folder setup failed session={session}", session=self.session)
            if self._lost:  # the close gave the slot back; log out here, start no timer
                logout()
                raise _Gone()
        self.user = address
        self.account = avatar
        self._onLogout = logout
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)

    # authenticated (RFC 3501 §6.3)

    def do_NAMESPACE(self, tag: bytes) -> bytes:
        presenter = imap4.INamespacePresenter(self.account, None)
        spaces: list[Any] = [None, None, None]
        if presenter is not None:
            spaces = [
                presenter.getPersonalNamespaces(),
                presenter.getSharedNamespaces(),
                presenter.getUserNamespaces(),
            ]
        # RFC 2342 §5: personal, other users', shared
        encoded = [
            b"(" + b"".join(b"(" + encode_sexp(list(ns)) + b")" for ns in group) + b")"
            if group
            else b"NIL"
            for group in (spaces[0], spaces[2], spaces[1])
        ]
        self.sendUntaggedResponse(b"NAMESPACE " + b" ".join(encoded))
        return b"NAMESPACE completed"

    auth_NAMESPACE = (do_NAMESPACE,)
    select_NAMESPACE = auth_NAMESPACE

    def arg_id_params(self, line: bytes) -> tuple[list[Any] | None, bytes]:
        """RFC 2971 §4: C{NIL} or a list of string pairs."""
        if (line or b"")[:3].upper() == b"NIL":
            return None, line[3:].lstrip(b" ")
        if (line or b"")[:1] != b"(":
            raise imap4.IllegalClientResponse("NIL or a parameter list expected")
        inner, rest = _paren_group(line)
        params = imap4.parseNestedParens(inner)
        if len(params) % 2 or len(params) > 2 * ID_FIELDS:
            raise imap4.IllegalClientResponse("Bad ID parameter list")
        return params, rest

    def do_ID(self, tag: bytes, params: list[Any] | None) -> bytes:
        """RFC 2971: log what the client says it is; say what we are."""
        if params:
            fields = {
                _safe(k.decode("utf-8", "replace"))[:30].lower(): _safe(
                    v.decode("utf-8", "replace")
                )[:60]
                for k, v in zip(params[::2], params[1::2], strict=True)
                if isinstance(k, bytes) and isinstance(v, bytes)
            }
            log.info(
                "imap id session={session} name={name} version={version}",
                session=self.session,
                name=fields.get(b"name", b"-").decode(),
                version=fields.get(b"version", b"-").decode(),
            )
        self.sendLine(b'* ID ("name" "twistedmail")')
        return b"ID completed"

    unauth_ID = (do_ID, arg_id_params)
    auth_ID = unauth_ID
    select_ID = unauth_ID

    def do_ENABLE(self, tag: bytes, names: bytes) -> bytes:
        """RFC 5161 §3.1: answer C{* ENABLED} with the capabilities turned on by this
        command (only ones in L{ENABLEABLE}; in the authenticated state only)."""
        asked = [n.upper() for n in names.split(b" ")]
        # RFC 5161 §4: enable = "ENABLE" 1*(SP capability); a capability is an atom
        if not names or not all(asked) or any(_ATOM_SPECIALS.intersection(n) for n in asked):
            raise _bad(b"Capability names expected")
        turned_on = [n for n in dict.fromkeys(asked) if n in ENABLEABLE and n not in self.enabled]
        self.enabled |= set(turned_on)
        if b"QRESYNC" in self.enabled:
            self.enabled.add(b"CONDSTORE")  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
        self.sendLine(b" ".join([b"* ENABLED"] + turned_on))
        return b"ENABLE completed"

    auth_ENABLE = (do_ENABLE, arg_rest_required)

    def do_COMPRESS(self, tag: bytes, mechanism: bytes) -> None:
        """COMPRESS DEFLATE (RFC 4978 §3): the tagged OK goes out uncompressed, everything
        after it (both ways) is raw DEFLATE; input the client pipelined after the command is
        already compressed."""
        if self._inflater is not None:
            raise _no(b"DEFLATE already active", b"COMPRESSIONACTIVE")
        if mechanism.upper() != b"DEFLATE":
            raise _bad(b"Unknown compression mechanism", b"CANNOT")
        self.sendPositiveResponse(tag, b"DEFLATE active")
        leftover = self.clearLineBuffer()
        self._inflater = Inflater()
        self.transport = DeflateTransport(self.transport)
        # inflated when the dispatcher resumes input (dataReceived(b""))
        self._inflater.queue(leftover)
        log.info("imap compress session={session} deflate", session=self.session)

    auth_COMPRESS = (do_COMPRESS, imap4.IMAP4Server.arg_atom)
    select_COMPRESS = auth_COMPRESS

    def _close_mailbox(self) -> None:
        mbox, self.mbox = self.mbox, None
        self._pending_exists, self._pending_flags = False, {}
        if mbox is not None:
            mbox.removeListener(self)
            closeable = imap4.ICloseableMailbox(mbox, None)
            if closeable is not None:
                maybeDeferred(closeable.close).addErrback(lambda f: log.failure("close failed", f))
        if self.state == "select":
            self.state = "auth"

    async def _open(self, name: bytes, readwrite: bool) -> Any:
        mbox = await maybeDeferred(self.account.select, mailbox_name(name), readwrite)
        if mbox is None:
            raise _no(b"No such mailbox", b"NONEXISTENT")
        return mbox

    async def do_SELECT(
        self, tag: bytes, name: bytes, params: list[Any] | None, readwrite: int, command: bytes
    ) -> bytes:
        if self.mbox is not None and b"QRESYNC" in self.enabled:
            self.sendLine(b"* OK [CLOSED] Previous mailbox closed")  # RFC 7162 §3.2.11
        self._close_mailbox()  # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected
        qresync = self._select_params(params)
        mbox = await self._open(name, bool(readwrite))
        if self._lost:  # the client left during the scan: watch nothing for nobody
            closeable = imap4.ICloseableMailbox(mbox, None)
            if closeable is not None:
                await maybeDeferred(closeable.close)
            raise _Gone()
        if "\\noselect" in [f.lower() for f in mbox.getFlags()]:
            raise _no(b"Mailbox cannot be selected", b"CANNOT")
        flags = _flag_list(mbox.getFlags())
        # RFC 3501 §6.3.1: FLAGS, EXISTS, RECENT, UNSEEN, PERMANENTFLAGS, UIDNEXT, UIDVALIDITY
        self.sendLine(b"* FLAGS (" + flags + b")")
        self.sendLine(b"* %d EXISTS" % mbox.getMessageCount())
        self.sendLine(b"* %d RECENT" % mbox.getRecentCount())
        first_unseen = getattr(mbox, "first_unseen", lambda: None)()
        if first_unseen is not None:
            self.sendLine(b"* OK [UNSEEN %d] First unseen" % first_unseen)
        writeable = mbox.isWriteable()
        permanent = _flag_list(_permanent_flags(mbox)) if writeable else b""
        self.sendLine(b"* OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted")
        self.sendLine(b"* OK [UIDNEXT %d] Predicted next UID" % mbox.getUIDNext())
        self.sendLine(b"* OK [UIDVALIDITY %d] UIDs valid" % mbox.getUIDValidity())
        highest = getattr(mbox, "getHighestModSeq", None)
        if highest is not None:
            # RFC 7162 §3.1.2.1: sent on every SELECT/EXAMINE by a server keeping modseqs
            self.sendLine(b"* OK [HIGHESTMODSEQ %d] Highest" % highest())
        mbox.addListener(self)
        self.mbox = mbox
        self.state = "select"
        if qresync is not None:
            await self._qresync(*qresync)
        mode = b"[READ-WRITE] " if writeable else b"[READ-ONLY] "
        return mode + command + b" completed"

    def opt_select_params(self, line: bytes) -> tuple[list[Any] | None, bytes]:
        """RFC 4466 §2.1 select parameters: C{(CONDSTORE)}, C{(QRESYNC (...))}."""
        if (line or b"")[:1] != b"(":
            return None, line
        inner, rest = _paren_group(line)
        return imap4.parseNestedParens(inner), rest

    auth_SELECT = (do_SELECT, arg_astring, opt_select_params, 1, b"SELECT")
    select_SELECT = auth_SELECT
    auth_EXAMINE = (do_SELECT, arg_astring, opt_select_params, 0, b"EXAMINE")
    select_EXAMINE = auth_EXAMINE

    async def do_CREATE(self, tag: bytes, name: bytes) -> bytes:
        if not await self._blocking(self.account.create, mailbox_name(name)):
            raise _no(b"Mailbox not created", b"CANNOT")
        return b"CREATE completed"

    auth_CREATE = (do_CREATE, arg_finalastring)
    select_CREATE = auth_CREATE

    async def do_DELETE(self, tag: bytes, name: bytes) -> bytes:
        await self._blocking(self.account.delete, mailbox_name(name))
        return b"DELETE completed"

    auth_DELETE = (do_DELETE, arg_finalastring)
    select_DELETE = auth_DELETE

    async def do_RENAME(self, tag: bytes, old: bytes, new: bytes) -> bytes:
        await self._blocking(self.account.rename, mailbox_name(old), mailbox_name(new))
        return b"RENAME completed"

    auth_RENAME = (do_RENAME, arg_astring, arg_finalastring)
    select_RENAME = auth_RENAME

    async def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> bytes:
        await self._blocking(self.account.subscribe, mailbox_name(name))
        return b"SUBSCRIBE completed"

    auth_SUBSCRIBE = (do_SUBSCRIBE, arg_finalastring)
    select_SUBSCRIBE = auth_SUBSCRIBE

    async def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> bytes:
        await self._blocking(self.account.unsubscribe, mailbox_name(name))
        return b"UNSUBSCRIBE completed"

    auth_UNSUBSCRIBE = (do_UNSUBSCRIBE, arg_finalastring)
    select_UNSUBSCRIBE = auth_UNSUBSCRIBE

    async def do_LIST(
        self, tag: bytes, ref: bytes, pattern: bytes, subscribed: int, command: bytes
    ) -> bytes:
        reference, wildcard = _list_name(ref), _list_name(pattern)
        if reference is None or wildcard is None:
            return command + b" completed"  # no mailbox name matches (see _list_name)
        if not wildcard and not subscribed:
            # RFC 3501 §6.3.8: the hierarchy delimiter and root name
            self.sendLine(b'* LIST (\\Noselect) "." ""')
            return b"LIST completed"
        lister = getattr(self.account, "list_subscribed", None) if subscribed else None
        if lister is not None:
            boxes = await lister(reference, wildcard)
        else:
            boxes = await maybeDeferred(self.account.listMailboxes, reference, wildcard)
            if subscribed:
                boxes = [(n, b) for n, b in boxes if self.account.isSubscribed(n)]
        for name, info in boxes:
            attributes = _flag_list(info.getFlags())
            delimiter = encode_string(info.getHierarchicalDelimiter())
            self.sendLine(
                b"* "
                + command
                + b" ("
                + attributes
                + b") "
                + delimiter
                + b" "
                + self.wire_name(name)
            )
        return command + b" completed"

    auth_LSUB = (do_LIST, arg_astring, arg_astring, 1, b"LSUB")
    select_LSUB = auth_LSUB

    def opt_list_select(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """RFC 5258 §3: optional C{(selection options)} before the reference name."""
        if (line or b"")[:1] != b"(":
            return None, line
        inner, rest = _paren_group(line)
        return _atoms(inner), rest

    def arg_list_patterns(self, line: bytes) -> Any:
        """One mailbox pattern, or RFC 5258 §3 C{(pattern pattern ...)}."""
        if (line or b"")[:1] != b"(":
            result = self.arg_astring(line)
            if isinstance(result, Deferred):
                return result.addCallback(lambda r: ([r[0]], r[1]))
            return [result[0]], result[1]
        inner, rest = _paren_group(line)
        patterns = grammar.parse_list(inner)
        if not patterns or not all(isinstance(p, bytes) for p in patterns):
            raise imap4.IllegalClientResponse("Bad mailbox patterns")
        if self.utf8_accept():
            patterns = [utf8_mailbox(p) for p in patterns]
        return patterns, rest

    def opt_list_return(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """RFC 5258 §3: optional C{RETURN (return options)} at the end."""
        if not line:
            return None, b""
        keyword, _, rest = line.partition(b" ")
        if keyword.upper() != b"RETURN" or rest[:1] != b"(":
            raise imap4.IllegalClientResponse("RETURN expected")
        inner, rest = _paren_group(rest)
        return _list_return_options(inner), rest

    async def do_LIST_EXTENDED(
        self,
        tag: bytes,
        selection: list[bytes] | None,
        ref: bytes,
        patterns: list[bytes],
        returns: list[bytes] | None,
    ) -> bytes:
        """LIST with RFC 5258 selection and return options, RFC 6154 special-use."""
        status_items = _status_option(returns)
        chosen, wanted = set(selection or ()), {r for r in returns or () if r != b"STATUS"}
        if chosen - LIST_SELECT_OPTIONS:
            raise _bad(b"Unknown LIST selection option")
        if wanted - LIST_RETURN_OPTIONS:
            raise _bad(b"Unknown LIST return option")
        if b"RECURSIVEMATCH" in chosen and not chosen - {b"RECURSIVEMATCH", b"REMOTE"}:
            raise _bad(b"RECURSIVEMATCH needs another selection option")  # RFC 5258 §3.1
        reference = _list_name(ref)
        wildcards = [w for w in map(_list_name, patterns) if w is not None]
        if reference is None or not wildcards:
            return b"LIST completed"  # no mailbox name matches (see _list_name)
        if selection is None and wildcards == [""]:
            # RFC 3501 §6.3.8: the hierarchy delimiter and root name
            self.sendLine(b'* LIST (\\Noselect) "." ""')
            return b"LIST completed"
        lister = getattr(self.account, "list_folders", None)
        if lister is None:
            if selection or returns:
                raise _bad(b"Extended LIST not supported here")
            boxes = await maybeDeferred(self.account.listMailboxes, reference, wildcards[0])
            for name, info in boxes:
                self._list_line(b"LIST", name, info.getFlags(), info.getHierarchicalDelimiter())
            return b"LIST completed"
        entries = await lister(
            reference,
            [w for w in wildcards if w],
            subscribed=b"SUBSCRIBED" in chosen,
            recursive=b"RECURSIVEMATCH" in chosen,
            special_use=b"SPECIAL-USE" in chosen,
        )
        # RFC 5258 §3.1: the SUBSCRIBED selection option implies the SUBSCRIBED return option
        show_subscribed = b"SUBSCRIBED" in chosen or b"SUBSCRIBED" in wanted
        for entry in entries:
            attributes = [a for a in entry.attributes if show_subscribed or a != "\\Subscribed"]
            extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if entry.child_subscribed else b""
            self._list_line(b"LIST", entry.name, attributes, ".", extra)
            lowered = {a.lower() for a in attributes}
            if status_items and not lowered & {"\\noselect", "\\nonexistent"}:
                await self._list_status(entry.name, status_items)  # RFC 5819 §2
        return b"LIST completed"

    async def _list_status(self, name: str, items: list[str]) -> None:
        """The STATUS line after a LIST line (RFC 5819 §2); a mailbox that cannot be
        opened (deleted meanwhile) gets none."""
        mbox = await maybeDeferred(self.account.select, name, False)
        if mbox is None:
            return
        try:
            status = await _status(mbox, items, self.max_literal_size)
        finally:
            _close_quietly(mbox)
        data = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in status.items())
        self.sendLine(b"* STATUS " + self.wire_name(name) + b" (" + data + b")")

    def wire_name(self, name: str) -> bytes:
        """A mailbox name for a response: modified UTF-7 (RFC 3501 §5.1.3), or UTF-8 once
        UTF8=ACCEPT is enabled (RFC 6855 §3), quoted when it can be."""
        if not self.utf8_accept():
            return _mailbox_name(name)
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) < 1000 and not any(b < 0x20 or b == 0x7F for b in raw):
            return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return b"{%d}\r\n" % len(raw) + raw

    def _list_line(
        self,
        command: bytes,
        name: str,
        attributes: Sequence[str],
        delimiter: str,
        extra: bytes = b"",
    ) -> None:
        self.sendLine(
            b"* %s (%s) %s %s%s"
            % (
                command,
                _flag_list(attributes),
                encode_string(delimiter),
                self.wire_name(name),
                extra,
            )
        )

    auth_LIST = (do_LIST_EXTENDED, opt_list_select, arg_astring, arg_list_patterns, opt_list_return)
    select_LIST = auth_LIST

    async def do_STATUS(self, tag: bytes, name: bytes, items: list[Any]) -> bytes:
        names = []
        for item in items:
            if (
                not isinstance(item, bytes)
                or item.upper().decode("ascii", "replace") not in STATUS_ITEMS
            ):
                raise _bad(b"Unknown STATUS item")
            names.append(item.upper().decode("ascii"))
        if "HIGHESTMODSEQ" in names:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
        mailbox = mailbox_name(name)
        mbox = await self._open(name, False)
        try:
            status = await _status(mbox, names, self.max_literal_size)
        finally:
            _close_quietly(mbox)
        data = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in status.items())
        self.sendLine(b"* STATUS " + self.wire_name(mailbox) + b" (" + data + b")")
        return b"STATUS completed"

    def arg_plist(self, line: bytes) -> tuple[list[Any], bytes]:
        """A parenthesised list; Twisted's raises C{MismatchedNesting} (not a client error)
        for C{(A[B (C)])}, found by the fuzz test."""
        try:
            result: tuple[list[Any], bytes] = super().arg_plist(line)
        except imap4.MismatchedNesting:
            raise imap4.IllegalClientResponse("Mismatched parenthesis") from None
        return result

    auth_STATUS = (do_STATUS, arg_astring, arg_plist)
    select_STATUS = auth_STATUS

    async def do_APPEND(
        self, tag: bytes, name: bytes, flags: list[Any] | None, date: bytes | None, message: Any
    ) -> bytes:
        # RFC 3501 §6.3.11; the flag list and date are optional (stock Twisted iterated a
        # missing flag list, None, and answered BAD)
        if date is not None and parse_internaldate(date) is None:
            raise _bad(b"Invalid date-time")
        flag_names = [f.decode("ascii", "replace") for f in flags or () if isinstance(f, bytes)]
        # opened as for EXAMINE: the target's \Recent messages stay for a SELECT (RFC 3501 §2.3.2)
        mbox = await maybeDeferred(self.account.select, mailbox_name(name), False)
        if mbox is None:
            raise _no(b"No such mailbox", b"TRYCREATE")
        try:
            data = message.read()
            if not data:
                raise _no(b"Empty message", b"CANNOT")
            await self.check_quota(len(data), 1)  # RFC 9208 §4.3.1: NO [OVERQUOTA]
            new_uid = await mbox.addMessage(data, flag_names, date)
        finally:
            _close_quietly(mbox)
        await self._refresh_if_selected(mbox)
        if isinstance(new_uid, int) and mbox.getUIDValidity():
            # RFC 4315 §3: APPENDUID <uidvalidity> <uid>
            return b"[APPENDUID %d %d] APPEND completed" % (mbox.getUIDValidity(), new_uid)
        return b"APPEND completed"

    auth_APPEND = (
        do_APPEND,
        arg_astring,
        imap4.IMAP4Server.opt_plist,
        imap4.IMAP4Server.opt_datetime,
        arg_literal_or_utf8,
    )
    select_APPEND = auth_APPEND

    async def _refresh_if_selected(self, target: Any) -> None:
        if self.mbox is not None and getattr(self.mbox, "path", None) == getattr(target, "path", 0):
            await self._refresh()

    async def do_IDLE(self, tag: bytes) -> bytes:
        """RFC 2177: push EXISTS/EXPUNGE/FETCH until the client sends DONE."""
        await self._refresh()
        if self.mbox is not None:
            self._send_expunges()
        self._flush_unsolicited()
        self.sendContinuationRequest(b"idling")
        self._idling = True
        line = await self.read_line()
        self._idling = False
        if line.strip().upper() != b"DONE":
            raise _bad(b"Expected DONE")  # RFC 2177 §3: only DONE ends IDLE
        return b"IDLE terminated"

    auth_IDLE = (do_IDLE,)
    select_IDLE = auth_IDLE

    # CONDSTORE and QRESYNC (RFC 7162)

    def _enable_condstore(self) -> None:
        """A CONDSTORE enabling command ran (RFC 7162 §3.1); the first one while a mailbox
        is selected gets C{* OK [HIGHESTMODSEQ n]} for it (§3.1.2.1, as Dovecot sends)."""
        if b"CONDSTORE" in self.enabled:
            return
        self.enabled.add(b"CONDSTORE")
        # sent before the tagged reply, with the value after the command's own changes
        self._pending_highestmodseq = hasattr(self.mbox, "getHighestModSeq")

    def _condstore_items(self, seq: int) -> bytes:
        """C{ UID n MODSEQ (m)} for an untagged FETCH once CONDSTORE is enabled (RFC 7162
        §3.1.3, §3.2.4: UID and MODSEQ in every FETCH about flag changes), else C{b""}."""
        modseq_of = getattr(self.mbox, "modseq_of", None)
        if b"CONDSTORE" not in self.enabled or modseq_of is None:
            return b""
        return b" UID %d MODSEQ (%d)" % (self.mbox.getUID(seq), modseq_of(seq))

    def _select_params(self, params: list[Any] | None) -> tuple[int, int, Any] | None:
        """Check SELECT/EXAMINE parameters: C{CONDSTORE} (RFC 7162 §3.1.8) enables
        CONDSTORE; C{QRESYNC (uidvalidity modseq [known-uids [seq-match]])} (§3.2.5) gives
        (uidvalidity, modseq, known-uids or None).  @raise IMAPError: BAD otherwise."""
        if params is None:
            return None
        items = list(params)
        qresync = None
        while items:
            name = items.pop(0)
            if not isinstance(name, bytes):
                raise _bad(b"Select parameter expected")
            if name.upper() == b"CONDSTORE":
                self.enabled.add(b"CONDSTORE")
            elif name.upper() == b"QRESYNC":
                if b"QRESYNC" not in self.enabled:
                    raise _bad(b"QRESYNC is not enabled")  # RFC 7162 §3.2.5
                args = items.pop(0) if items else None
                if not isinstance(args, list) or not 2 <= len(args) <= 4:
                    raise _bad(b"QRESYNC (uidvalidity modseq [known-uids [seq-match]])")
                uidvalidity, modseq = _number(args[0], 1), _number(args[1], 1)
                known = _uid_set_arg(args[2]) if len(args) > 2 else None
                if len(args) > 3:
                    match = args[3]  # RFC 7162 §3.2.5.2 seq-match-data: checked, not needed
                    if not isinstance(match, list) or len(match) != 2:
                        raise _bad(b"Bad sequence match data")
                    _uid_set_arg(match[0]), _uid_set_arg(match[1])
                qresync = (uidvalidity, modseq, known)
            else:
                raise _bad(b"Unknown select parameter")
        return qresync

    async def _qresync(self, uidvalidity: int, modseq: int, known: Any) -> None:
        """RFC 7162 §3.2.5.2: after SELECT (QRESYNC ...), C{VANISHED (EARLIER)} for UIDs
        expunged since C{modseq} and C{FETCH (UID FLAGS MODSEQ)} for messages changed since,
        both limited to the client's known UIDs; nothing when UIDVALIDITY changed."""
        mbox = self.mbox
        if uidvalidity != mbox.getUIDValidity() or not hasattr(mbox, "vanished_since"):
            return
        vanished = await mbox.vanished_since(modseq, known)
        if vanished:
            self.sendLine(b"* VANISHED (EARLIER) " + uid_set(vanished))
        every = imap4.MessageSet(1, None)
        for seq, msg in mbox.fetch(every if known is None else known, True):
            if msg.entry.modseq > modseq:
                self.sendLine(
                    b"* %d FETCH (UID %d FLAGS (%s) MODSEQ (%d))"
                    % (seq, msg.getUID(), _flag_list(msg.getFlags()), msg.entry.modseq)
                )

    def opt_fetch_modifiers(self, line: bytes) -> tuple[dict[bytes, Any], bytes]:
        """RFC 7162 §3.1.4.1 C{(CHANGEDSINCE n)}, §3.2.6 C{VANISHED}, after the items."""
        return self._modifiers(line, {b"CHANGEDSINCE": 1, b"VANISHED": 0})

    def opt_store_modifiers(self, line: bytes) -> tuple[dict[bytes, Any], bytes]:
        """RFC 7162 §3.1.3 C{(UNCHANGEDSINCE n)} between the set and the action."""
        return self._modifiers(line, {b"UNCHANGEDSINCE": 0})

    def _modifiers(self, line: bytes, known: dict[bytes, int]) -> tuple[dict[bytes, Any], bytes]:
        """A parenthesised modifier list (RFC 4466 §2.2/§2.3); C{known} maps each name to
        the lowest number it takes, 0 for a flag without value where the name is VANISHED."""
        line = (line or b"").lstrip(b" ")
        if line[:1] != b"(":
            return {}, line
        inner, rest = _paren_group(line)
        items = imap4.parseNestedParens(inner)
        out: dict[bytes, Any] = {}
        while items:
            name = items.pop(0)
            key = name.upper() if isinstance(name, bytes) else b""
            if key not in known or key in out:
                raise imap4.IllegalClientResponse("Unknown or repeated modifier")
            if key == b"VANISHED":
                out[key] = True
                continue
            if not items:
                raise imap4.IllegalClientResponse("Modifier value expected")
            try:
                out[key] = _number(items.pop(0), known[key])
            except IMAPError:
                raise imap4.IllegalClientResponse("Bad modifier value") from None
        return out, rest

    def arg_fetchatt(self, line: bytes) -> tuple[Any, bytes]:
        """FETCH items, with RFC 7162 §3.1.4.1 C{MODSEQ} among them, and what follows
        (the modifiers)."""
        line = line or b""
        if line[:1] == b"(":
            inner, rest = _paren_group(line)
            items = _top_level(inner)
            wants = any(i.upper() == b"MODSEQ" for i in items)
            items = [i for i in items if i.upper() != b"MODSEQ"]
            atts = b"(" + b" ".join(items) + b")" if items else b""
        else:
            head = _top_level(line)
            atts, rest = (head[0] if head else b""), b" ".join(head[1:])
            wants = atts.upper() == b"MODSEQ"
            atts = b"" if wants else atts
        result: list[Any] = []
        if atts:
            try:
                result = list(super().arg_fetchatt(atts)[0])
            except Exception:
                raise imap4.IllegalClientResponse("Invalid FETCH attributes") from None
        elif not wants:
            raise imap4.IllegalClientResponse("Invalid FETCH attributes")
        if wants:
            result.append(_ModSeqItem())
        return result, rest

    async def _fetch_changedsince(
        self,
        targets: list[Any],
        messages: imap4.MessageSet,
        query: list[Any],
        modifiers: dict[bytes, Any],
        uid: bool,
    ) -> list[Any]:
        """RFC 7162 §3.1.4.1: keep only messages changed after CHANGEDSINCE (and report
        MODSEQ); §3.2.6: UID FETCH with VANISHED first sends C{VANISHED (EARLIER)}."""
        changedsince = modifiers.get(b"CHANGEDSINCE")
        if changedsince is None and b"VANISHED" in modifiers:
            raise _bad(b"VANISHED needs CHANGEDSINCE")
        if b"VANISHED" in modifiers and (not uid or b"QRESYNC" not in self.enabled):
            raise _bad(b"VANISHED needs UID FETCH and ENABLE QRESYNC")  # RFC 7162 §3.2.6
        wants = any(p.type == "modseq" for p in query)
        if wants or changedsince is not None:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
        if changedsince is None:
            return targets
        if not wants:
            query.append(_ModSeqItem())
        if b"VANISHED" in modifiers and hasattr(self.mbox, "vanished_since"):
            vanished = await self.mbox.vanished_since(changedsince, messages)
            if vanished:
                self.sendLine(b"* VANISHED (EARLIER) " + uid_set(vanished))
        return [
            (seq, msg)
            for seq, msg in targets
            if getattr(getattr(msg, "entry", None), "modseq", changedsince + 1) > changedsince
        ]

    # selected (RFC 3501 §6.4)

    async def do_CHECK(self, tag: bytes) -> bytes:
        await self._refresh()
        return b"CHECK completed"

    select_CHECK = (do_CHECK,)

    async def do_CLOSE(self, tag: bytes) -> bytes:
        mbox = self.mbox
        if mbox.isWriteable():
            await maybeDeferred(mbox.expunge)  # RFC 3501 §6.4.2: silently, no EXPUNGE responses
        self._close_mailbox()
        return b"CLOSE completed"

    select_CLOSE = (do_CLOSE,)

    async def do_EXPUNGE(self, tag: bytes) -> bytes:
        if not self.mbox.isWriteable():
            raise _no(b"Mailbox is read-only", b"READ-ONLY")
        self._report_expunged(await maybeDeferred(self.mbox.expunge))
        return b"EXPUNGE completed"

    select_EXPUNGE = (do_EXPUNGE,)

    async def do_SEARCH(
        self,
        tag: bytes,
        returns: list[bytes] | None,
        charset: bytes | None,
        query: list[Any],
        uid: bool = False,
    ) -> bytes:
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            raise _no(b"Unsupported charset", b"BADCHARSET (US-ASCII UTF-8)")
        searchable = imap4.ISearchableMailbox(self.mbox, None)
        if searchable is None:
            raise _no(b"SEARCH not supported here", b"CANNOT")
        try:
            found = await maybeDeferred(searchable.search, query, uid=uid)
        except SearchError as e:
            raise _bad(_safe(str(e))) from None
        numbers = [self.mbox.getUID(n) for n in found] if uid else list(found)
        modseq_tail = b""
        if getattr(self.mbox, "searched_modseq", False):
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
            reported = list(found)
            if returns and found and set(returns) <= {b"MIN", b"MAX"}:
                # RFC 4731 §3.2: with only MIN/MAX, the MODSEQ of the messages returned
                picks = {b"MIN": min(found), b"MAX": max(found)}
                reported = [picks[r] for r in returns]
            if reported:  # RFC 7162 §3.1.5: the highest MODSEQ of the messages found
                modseq_tail = b"MODSEQ %d" % max(self.mbox.modseq_of(n) for n in reported)
        if returns is not None:
            line = esearch_response(tag, returns, numbers, uid)
            self.sendLine(line + (b" " + modseq_tail if modseq_tail else b""))
            return b"SEARCH completed"
        tail = [b"(" + modseq_tail + b")"] if modseq_tail else []
        self.sendLine(b" ".join([b"* SEARCH"] + [b"%d" % n for n in numbers] + tail))
        return b"SEARCH completed"

    def opt_search_return(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """RFC 4731 §3.1: optional C{RETURN (options)} before the search keys; C{RETURN ()}
        means ALL.  @raise imap4.IllegalClientResponse: an unknown option."""
        keyword, _, rest = (line or b"").partition(b" ")
        if keyword.upper() != b"RETURN" or rest[:1] != b"(":
            return None, line
        inner, rest = _paren_group(rest)
        options = _atoms(inner) or [b"ALL"]
        if set(options) - ESEARCH_RETURN_OPTIONS:
            raise imap4.IllegalClientResponse("Unknown SEARCH return option")
        return options, rest

    async def do_SORT(
        self,
        tag: bytes,
        criteria: list[Any],
        charset: bytes,
        query: list[Any],
        uid: bool = False,
    ) -> bytes:
        """SORT / UID SORT (RFC 5256 §3): C{* SORT n n ...} in the order of the criteria."""
        try:
            parsed = parse_criteria(criteria)
        except SortError as e:
            raise _bad(_safe(str(e))) from None
        if charset.upper() not in (b"US-ASCII", b"UTF-8"):
            raise _no(b"Unsupported charset", b"BADCHARSET (US-ASCII UTF-8)")
        sorter = getattr(self.mbox, "sort", None)
        if sorter is None:
            raise _no(b"SORT not supported here", b"CANNOT")
        try:
            found = await sorter(parsed, query)
        except SearchError as e:
            raise _bad(_safe(str(e))) from None
        numbers = [self.mbox.getUID(n) for n in found] if uid else found
        self.sendLine(b" ".join([b"* SORT"] + [b"%d" % n for n in numbers]))
        return b"SORT completed"

    def arg_sort_criteria(self, line: bytes) -> tuple[list[Any], bytes]:
        """RFC 5256 §4: C{(sort-criterion ...)}."""
        if (line or b"")[:1] != b"(":
            raise imap4.IllegalClientResponse("Sort criteria expected")
        inner, rest = _paren_group(line)
        return imap4.parseNestedParens(inner), rest

    def arg_charset(self, line: bytes) -> Any:
        """The charset SORT requires (RFC 5256 §3), an astring (a literal too), and the
        search keys after it."""

        def keys_follow(result: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
            if not result[0] or not result[1]:
                raise imap4.IllegalClientResponse("Charset and search keys expected")
            return result

        if not line:
            raise imap4.IllegalClientResponse("Charset and search keys expected")
        result = self._astring(line)
        if isinstance(result, Deferred):
            return result.addCallback(keys_follow)
        return keys_follow(result)

    def opt_charset(self, line: bytes) -> Any:
        """SEARCH's optional C{CHARSET astring} (RFC 3501 §6.4.4, §9: a literal too, which
        must be read here, never run as the next command)."""
        if (line or b"")[:8].upper() != b"CHARSET ":
            return None, line
        return self._astring(line[8:])

    select_SORT = (do_SORT, arg_sort_criteria, arg_charset, arg_searchkeys)
    select_SEARCH = (do_SEARCH, opt_search_return, opt_charset, arg_searchkeys)

    async def do_FETCH(
        self,
        tag: bytes,
        messages: imap4.MessageSet,
        query: list[Any],
        modifiers: dict[bytes, Any] | None = None,
        uid: bool = False,
    ) -> bytes:
        self._check_numbers(messages, uid)
        mbox = self.mbox
        targets = await maybeDeferred(mbox.fetch, messages, uid)
        targets = await self._fetch_changedsince(targets, messages, query, modifiers or {}, uid)
        needs_content = any(
            p.type not in ("flags", "uid", "internaldate", "rfc822size", "modseq") for p in query
        )
        # RFC 3501 §6.4.5: BODY[...] without PEEK, RFC822 and RFC822.TEXT set \Seen
        sets_seen = mbox.isWriteable() and any(
            p.type in ("rfc822", "rfc822text")
            or (p.type == "body" and not p.peek and _has_section(p))
            for p in query
        )
        wants_flags = any(p.type == "flags" for p in query)
        # ENVELOPE, BODYSTRUCTURE and BODY come from the folder index once rendered
        part_kinds = {p.type for p in query if _cacheable(p)}
        from_cache = needs_content and all(_cacheable(p) or p.type in _CHEAP for p in query)
        cache: dict[int, CachedParts] = {}
        if from_cache and hasattr(mbox, "cached_parts"):
            cache = await mbox.cached_parts([msg.getUID() for _, msg in targets])
        rendered: dict[tuple[int, str], CachedParts] = {}
        gate = _FlowGate()
        try:
            self.transport.registerProducer(gate, True)
        except RuntimeError:
            gate = None  # type: ignore[assignment]
        self._gate = gate
        try:
            for count, (seq, msg) in enumerate(targets):
                if self._lost:
                    break  # nobody to send the rest to: read no more messages
                flags_changed = False
                if sets_seen and "\\Seen" not in msg.getFlags() and hasattr(mbox, "store_entries"):
                    result = await mbox.store_entries([(seq, msg.entry)], "S", 1)
                    if seq in result:
                        msg = mbox.message(seq)
                        flags_changed = True
                raw = None
                parts = cache.get(msg.getUID())
                if parts is not None and not _has_parts(parts, part_kinds):
                    parts = None
                if needs_content and (parts is None or not from_cache):
                    try:
                        raw = await _content(msg, mbox)
                    except MaildirError:
                        continue  # expunged by another session meanwhile: nothing to send
                    if part_kinds and parts is None:
                        parts = render_parts(raw, part_kinds)
                        entry = getattr(msg, "entry", None)
                        if entry is not None:
                            rendered[(entry.uid, entry.base)] = parts
                items = self._fetch_items(
                    msg, query, raw, uid, flags_changed and not wants_flags, parts
                )
                self.transport.write(b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n")
                if gate is not None:
                    await gate.wait()
                if count % FETCH_BATCH == FETCH_BATCH - 1:
                    await _next_turn(self.clock)
        finally:
            self._gate = None
            if gate is not None:
                self.transport.unregisterProducer()
            if rendered and hasattr(mbox, "cache_parts"):
                try:
                    await mbox.cache_parts(rendered)
                except Exception:
                    log.failure("caching FETCH parts failed session={s}", s=self.session)
        return b"FETCH completed"

    select_FETCH = (do_FETCH, arg_seqset, arg_fetchatt, opt_fetch_modifiers)

    def _fetch_items(
        self,
        msg: Any,
        query: list[Any],
        raw: bytes | None,
        uid: bool,
        add_flags: bool,
        parts: CachedParts | None = None,
    ) -> list[bytes]:
        items: list[bytes] = []
        seen_uid = False
        for part in query:
            kind = part.type
            if kind == "flags":
                items.append(b"FLAGS (" + _flag_list(msg.getFlags()) + b")")
            elif kind == "uid":
                seen_uid = True
                items.append(b"UID %d" % msg.getUID())
            elif kind == "internaldate":
                mtime = getattr(getattr(msg, "entry", None), "mtime", None)
                if mtime is None:
                    items.append(b"INTERNALDATE " + encode_string(msg.getInternalDate()))
                else:
                    items.append(b"INTERNALDATE " + format_internaldate(mtime))
            elif kind == "rfc822size":
                items.append(b"RFC822.SIZE %d" % msg.getSize())
            elif kind == "modseq":
                items.append(b"MODSEQ (%d)" % getattr(getattr(msg, "entry", None), "modseq", 0))
            elif kind == "envelope" and parts is not None and parts.envelope is not None:
                items.append(b"ENVELOPE (" + parts.envelope + b")")
            elif kind == "bodystructure" and parts is not None and parts.bodystructure is not None:
                items.append(b"BODYSTRUCTURE (" + parts.bodystructure + b")")
            elif kind == "body" and not _has_section(part) and parts and parts.body is not None:
                items.append(b"BODY (" + parts.body + b")")
            elif kind == "envelope":
                assert raw is not None
                items.append(b"ENVELOPE (" + encode_sexp(envelope(split_message(raw)[0])) + b")")
            elif kind == "bodystructure":
                assert raw is not None
                items.append(
                    b"BODYSTRUCTURE (" + encode_sexp(bodystructure(parse_entity(raw), True)) + b")"
                )
            elif kind == "rfc822":
                assert raw is not None
                items.append(b"RFC822 " + _literal(raw))
            elif kind == "rfc822header":
                assert raw is not None
                items.append(b"RFC822.HEADER " + _literal(split_message(raw)[0]))
            elif kind == "rfc822text":
                assert raw is not None
                items.append(b"RFC822.TEXT " + _literal(split_message(raw)[1]))
            elif kind == "body" and not _has_section(part):
                assert raw is not None
                items.append(
                    b"BODY (" + encode_sexp(bodystructure(parse_entity(raw), False)) + b")"
                )
            elif kind == "body":
                assert raw is not None
                data = section_data(raw, part)
                label = section_label(part)
                if data is None:
                    items.append(label + b" NIL")
                else:
                    # RFC 3501 §7.4.2: a partial answer echoes only the origin, BODY[...]<0>
                    data, origin = partial(data, part)
                    items.append(label + origin + b" " + _literal(data))
        if add_flags:
            items.append(b"FLAGS (" + _flag_list(msg.getFlags()) + b")")
            if b"CONDSTORE" in self.enabled and not any(p.type == "modseq" for p in query):
                # RFC 7162 §3.1.4: the FETCH that set \Seen reports the new MODSEQ
                items.append(b"MODSEQ (%d)" % getattr(getattr(msg, "entry", None), "modseq", 0))
        if uid and not seen_uid:
            items.append(b"UID %d" % msg.getUID())  # RFC 3501 §6.4.8: UID FETCH includes UID
        return items

    async def do_STORE(
        self,
        tag: bytes,
        messages: imap4.MessageSet,
        modifiers: dict[bytes, Any] | None,
        mode: bytes,
        flags: list[bytes],
        uid: bool = False,
    ) -> bytes:
        action = mode.upper()
        silent = action.endswith(b".SILENT")
        if silent:
            action = action[: -len(b".SILENT")]
        modes = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}
        if action not in modes:
            raise _bad(b"Invalid STORE data item")
        self._check_numbers(messages, uid)
        if not self.mbox.isWriteable():
            raise _no(b"Mailbox is read-only", b"READ-ONLY")
        names = [f.decode("ascii", "replace") for f in flags]
        kwargs: dict[str, Any] = {"uid": uid}
        unchangedsince = (modifiers or {}).get(b"UNCHANGEDSINCE")
        if unchangedsince is not None:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
            kwargs["unchangedsince"] = unchangedsince
        result = await maybeDeferred(self.mbox.store, messages, names, modes[action], **kwargs)
        self._flush_unsolicited()  # EXISTS before a FETCH that names a new message number
        condstore = b"CONDSTORE" in self.enabled
        for seq in sorted(result):
            extra = b" UID %d" % self.mbox.getUID(seq) if uid else b""
            if condstore:
                # RFC 7162 §3.1.3: with CONDSTORE even .SILENT reports the new MODSEQ
                extra = self._condstore_items(seq)
            if not silent:
                self.sendLine(b"* %d FETCH (FLAGS (%s)%s)" % (seq, _flag_list(result[seq]), extra))
            elif condstore:
                self.sendLine(b"* %d FETCH (%s)" % (seq, extra.lstrip(b" ")))
        modified = getattr(self.mbox, "modified", []) if unchangedsince is not None else []
        if modified:
            # RFC 7162 §3.1.3: the messages that failed the UNCHANGEDSINCE test
            listed = [self.mbox.getUID(n) for n in modified] if uid else modified
            return b"[MODIFIED " + uid_set(listed) + b"] Conditional STORE failed"
        return b"STORE completed"

    def _check_numbers(self, messages: imap4.MessageSet, uid: bool) -> None:
        """RFC 3501 §9 seq-number: a message sequence number names a message the client
        knows (1..EXISTS, C{*} the last); one beyond is BAD (as Dovecot answers), never
        silently nothing.  A set with C{*} in an empty mailbox (C{1:*}, what a client that
        syncs sends) names nothing and is answered OK.  UIDs need not exist (§6.4.8)."""
        if uid:
            return
        count = self.mbox.getMessageCount()
        ends = [n for low, high in messages.ranges for n in (low, high)]
        if not count and None in ends:
            return
        if any((count if n is None else n) > count for n in ends):
            raise _bad(b"Invalid message sequence number")

    def arg_flags(self, line: bytes) -> tuple[list[bytes], bytes]:
        """STORE's flags (RFC 3501 §9 store-att-flags: a flag list or flags without one)."""
        return grammar.flag_list(line or b"")

    select_STORE = (
        do_STORE,
        arg_seqset,
        opt_store_modifiers,
        imap4.IMAP4Server.arg_atom,
        arg_flags,
    )

    async def do_COPY(
        self, tag: bytes, messages: imap4.MessageSet, name: bytes, uid: bool = False
    ) -> bytes:
        self._check_numbers(messages, uid)
        if self.quota is not None:  # RFC 9208 §4.3.1: NO [OVERQUOTA], nothing copied
            sources = await maybeDeferred(self.mbox.fetch, messages, uid)
            await self.check_quota(sum(m.getSize() for _, m in sources), len(sources))
        code, _ = await self._copy(messages, name, uid)
        return code + b"COPY completed"

    async def _copy(
        self, messages: imap4.MessageSet, name: bytes, uid: bool
    ) -> tuple[bytes, list[Any]]:
        """Copy into mailbox C{name}; return the C{[COPYUID ...] } code (RFC 4315 §3, empty
        when nothing was copied) and the source messages copied."""
        # opened as for EXAMINE: the target's \Recent messages stay for a SELECT (RFC 3501 §2.3.2)
        target = await maybeDeferred(self.account.select, mailbox_name(name), False)
        if target is None:
            raise _no(b"No such mailbox", b"TRYCREATE")  # RFC 3501 §6.4.7
        copied: list[Any] = []
        new_uids: list[int] = []
        try:
            copier = imap4.IMessageCopier(target, None)
            if copier is None:
                raise _no(b"Cannot copy into this mailbox", b"CANNOT")
            for _seq, msg in await maybeDeferred(self.mbox.fetch, messages, uid):
                try:
                    new_uid = await maybeDeferred(copier.copy, msg)
                except MaildirError:
                    continue  # expunged meanwhile
                copied.append(msg)
                new_uids.append(new_uid)
        finally:
            _close_quietly(target)
        await self._refresh_if_selected(target)
        self._observe_copy(target, copied)
        code = b""
        if copied and target.getUIDValidity() and all(isinstance(u, int) for u in new_uids):
            code = b"[COPYUID %d %s %s] " % (
                target.getUIDValidity(),
                uid_set([m.getUID() for m in copied]),
                uid_set(new_uids),
            )
        return code, copied

    copy_observer: CopyObserver | None = None
    """Told of every COPY and MOVE (and UID forms): the spam filter learns from moves into
    and out of Junk (L{twistedmail.rspamd.JunkLearner})."""

    def _observe_copy(self, target: Any, copied: list[Any]) -> None:
        if self.copy_observer is None or not copied:
            return
        try:
            self.copy_observer.copied(
                str(getattr(self.account, "address", "")),
                str(getattr(self.mbox, "name", "")),
                str(getattr(target, "name", "")),
                copied,
                getattr(self.account, "run_in_thread", None),
            )
        except Exception:
            log.failure("copy observer failed")

    async def do_MOVE(
        self, tag: bytes, messages: imap4.MessageSet, name: bytes, uid: bool = False
    ) -> bytes:
        """RFC 6851 §3: copy, then expunge the sources; COPYUID goes in an untagged OK
        before the EXPUNGE responses (§4.3)."""
        self._check_numbers(messages, uid)
        mbox = self.mbox
        if not mbox.isWriteable() or not hasattr(mbox, "remove_entries"):
            raise _no(b"Mailbox is read-only", b"READ-ONLY")
        code, copied = await self._copy(messages, name, uid)
        if code:
            self.sendLine(b"* OK " + code + b"Moved")
        self._report_expunged(await mbox.remove_entries([m.entry for m in copied]))
        return b"MOVE completed"

    select_MOVE = (do_MOVE, arg_seqset, arg_finalastring)

    async def do_UID_EXPUNGE(
        self, tag: bytes, messages: imap4.MessageSet, uid: bool = True
    ) -> bytes:
        """UID EXPUNGE (RFC 4315 §2.1): expunge only the C{\\Deleted} messages in the set."""
        if not self.mbox.isWriteable():
            raise _no(b"Mailbox is read-only", b"READ-ONLY")
        self._report_expunged(await maybeDeferred(self.mbox.expunge, messages))
        return b"EXPUNGE completed"

    select_UID_EXPUNGE = (do_UID_EXPUNGE, arg_seqset)

    async def do_UNSELECT(self, tag: bytes) -> bytes:
        """RFC 3691: leave the selected state without expunging."""
        self._close_mailbox()
        return b"UNSELECT completed"

    select_UNSELECT = (do_UNSELECT,)

    select_COPY = (do_COPY, arg_seqset, arg_finalastring)


class CopyObserver(Protocol):
    """Told, after COPY or MOVE, that C{messages} of folder C{source} were copied into
    C{target} for C{user} (the messages can be read with C{run_in_thread})."""

    def copied(
        self, user: str, source: str, target: str, messages: Sequence[Any], run_in_thread: Any
    ) -> None: ...


def _list_name(raw: bytes) -> str | None:
    """A LIST/LSUB reference or pattern decoded as a mailbox name; C{None} when it is not
    valid modified UTF-7 (RFC 3501 §5.1.3): it is a well-formed list-mailbox (§9) that no
    mailbox name matches, so LIST answers OK with nothing, as Dovecot does."""
    try:
        return mailbox_name(raw)
    except imap4.IllegalMailboxEncoding:
        return None


def _list_return_options(inner: bytes) -> list[Any]:
    """RFC 5258 §3 return options, upper-cased; C{STATUS (items)} (RFC 5819 §2) becomes
    C{b"STATUS"} followed by the item list.  @raise imap4.IllegalClientResponse: nesting
    elsewhere, or STATUS without its list."""
    items = imap4.parseNestedParens(inner)
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, list):
            if not out or out[-1] != b"STATUS" or not all(isinstance(x, bytes) for x in item):
                raise imap4.IllegalClientResponse("Unexpected list")
            out.append([x.upper() for x in item])
        elif isinstance(item, bytes):
            out.append(item.upper())
            if item.upper() == b"STATUS" and not isinstance(
                items[i + 1] if i + 1 < len(items) else None, list
            ):
                raise imap4.IllegalClientResponse("STATUS needs a list of items")
        else:
            raise imap4.IllegalClientResponse("Bad LIST return option")
    return out


def _status_option(returns: list[Any] | None) -> list[str]:
    """The STATUS items of a LIST RETURN (RFC 5819), C{[]} when not asked; the item lists
    are removed from C{returns}.  @raise IMAPError: BAD for an unknown STATUS item."""
    if not returns:
        return []
    out: list[str] = []
    for item in [r for r in returns if isinstance(r, list)]:
        returns.remove(item)
        if not item:  # RFC 5819 §3: "STATUS" SP "(" status-att *(SP status-att) ")"
            raise _bad(b"STATUS items expected")
        for name in item:
            if not isinstance(name, bytes):
                raise _bad(b"Unknown STATUS item")
            text = name.decode("ascii", "replace").upper()  # atoms are case-insensitive
            if text not in STATUS_ITEMS:
                raise _bad(b"Unknown STATUS item")
            if text not in out:
                out.append(text)
    return out


def esearch_response(
    tag: bytes, returns: Sequence[bytes], numbers: Sequence[int], uid: bool
) -> bytes:
    """C{* ESEARCH (TAG "a") [UID] MIN n MAX n ALL set COUNT n} (RFC 4731 §3.1): the
    requested items in that order; with no match only COUNT (RFC 4731 §3.1: no MIN, MAX
    or ALL).  C{ALL} is a compact sequence set (C{1:3,7})."""
    out = [b"* ESEARCH (TAG " + encode_string(tag) + b")"]
    if uid:
        out.append(b"UID")
    if numbers:
        ordered = sorted(numbers)
        if b"MIN" in returns:
            out.append(b"MIN %d" % ordered[0])
        if b"MAX" in returns:
            out.append(b"MAX %d" % ordered[-1])
        if b"ALL" in returns:
            out.append(b"ALL " + uid_set(ordered))
    if b"COUNT" in returns:
        out.append(b"COUNT %d" % len(numbers))
    return b" ".join(out)


class _ModSeqItem:
    """The FETCH item C{MODSEQ} (RFC 7162 §3.1.4.1), beside Twisted's parsed items."""

    type = "modseq"
    peek = True
    header = None
    text = False
    mime = False
    empty = False


def _top_level(text: bytes) -> list[bytes]:
    """Split on spaces outside brackets and parentheses: C{BODY[HEADER.FIELDS (A B)] X}
    is two items."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in b"[(":
            depth += 1
        elif c in b"])":
            depth -= 1
        elif c == 0x20 and depth == 0:
            if i > start:
                items.append(text[start:i])
            start = i + 1
    if start < len(text):
        items.append(text[start:])
    return items


def _number(value: Any, low: int) -> int:
    """A number from a parsed argument, at least C{low}, at most 2^63-1 (RFC 7162 §7).

    @raise IMAPError: BAD otherwise."""
    if not isinstance(value, bytes) or not value.isdigit() or len(value) > 19:
        raise _bad(b"Number expected")
    number = int(value)
    if not low <= number <= MAX_MODSEQ:
        raise _bad(b"Number out of range")
    return number


def _uid_set_arg(value: Any) -> imap4.MessageSet:
    """A sequence set from a parsed argument.  @raise IMAPError: BAD otherwise."""
    try:
        if not isinstance(value, bytes):
            raise ValueError(value)
        return parse_sequence_set(value)
    except ValueError:
        raise _bad(b"Bad sequence set") from None


_CHEAP = ("flags", "uid", "internaldate", "rfc822size", "modseq")
"""FETCH items answered from the index alone."""


def _has_parts(parts: CachedParts, kinds: set[str]) -> bool:
    return all(getattr(parts, kind) is not None for kind in kinds)


def _cacheable(part: Any) -> bool:
    """ENVELOPE, BODYSTRUCTURE, BODY: rendered once, then answered from the folder index."""
    return part.type in ("envelope", "bodystructure") or (
        part.type == "body" and not _has_section(part)
    )


def _has_section(part: Any) -> bool:
    return bool(part.header is not None or part.text or part.mime or part.empty)


def _permanent_flags(mbox: Any) -> list[str]:
    """PERMANENTFLAGS (RFC 3501 §7.1): the mailbox's own list (with C{\\*} while keywords can
    be created), or its FLAGS for a mailbox that has none."""
    permanent = getattr(mbox, "permanent_flags", None)
    return list(permanent()) if permanent is not None else list(mbox.getFlags())


def _flag_list(flags: Sequence[str]) -> bytes:
    return b" ".join(f.encode("ascii", "replace") for f in flags)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


async def _content(msg: Any, mbox: Any) -> bytes:
    load = getattr(msg, "load", None)
    run = getattr(mbox, "run_in_thread", None)
    if load is not None and run is not None:
        data: bytes = await load(run)
        return data
    return imap4.IMessageFile(msg).open().read()


async def _next_turn(clock: IReactorTime) -> None:
    """Let other connections run between batches of a long FETCH."""
    d: Deferred[None] = Deferred()
    clock.callLater(0, d.callback, None)
    await d


async def _status(mbox: Any, names: Sequence[str], appendlimit: int) -> dict[str, int]:
    """The STATUS items C{names} of C{mbox}, in that order: the mailbox's own, plus DELETED
    and DELETED-STORAGE (RFC 9208 §4.1.4) and APPENDLIMIT (RFC 7889 §3.2: C{appendlimit},
    the largest APPEND in octets)."""
    extra = ("DELETED", "DELETED-STORAGE", "APPENDLIMIT")
    wanted = [n for n in names if n not in extra]
    status: dict[str, int] = await maybeDeferred(mbox.requestStatus, wanted)
    if len(wanted) < len(names):
        if "DELETED" in names or "DELETED-STORAGE" in names:
            status = {**status, **await _deleted_status(mbox)}
        status = {**status, "APPENDLIMIT": appendlimit}
        status = {n: status[n] for n in names}
    return status


async def _deleted_status(mbox: Any) -> dict[str, int]:
    """STATUS DELETED and DELETED-STORAGE (RFC 9208 §4.1.4): the messages flagged
    C{\\Deleted} and the sum of their RFC822.SIZE (what EXPUNGE would free)."""
    if not mbox.getMessageCount():
        return {"DELETED": 0, "DELETED-STORAGE": 0}
    messages = await maybeDeferred(mbox.fetch, imap4.MessageSet(1, None), False)
    doomed = [m for _, m in messages if "\\Deleted" in m.getFlags()]
    return {"DELETED": len(doomed), "DELETED-STORAGE": sum(m.getSize() for m in doomed)}


def _close_below_tls(transport: Any) -> None:
    """After LOGOUT or BYE over TLS, close the TCP connection once our close_notify is written.

    RFC 3501 §6.1.3: the server closes the connection after LOGOUT.  Twisted's TLS layer sends
    close_notify and then waits for the peer's before it closes TCP; a client that instead
    waits for our close (imaptest, about every other LOGOUT, when the close_notify came in one
    read with the tagged OK) then waits forever.  RFC 8446 §6.1 lets the side that closes
    first not wait for the reply, as Dovecot does.  Nothing is done before close_notify went
    out (a producer still writing): the close then finishes the usual way.
    """
    layer = transport
    while layer is not None and not isinstance(layer, TLSMemoryBIOProtocol):
        # down through ProtocolWrappers (vars: their __getattr__ forwards to the transport)
        layer = vars(layer).get("transport")
    if layer is None:
        return
    try:
        sent = bool(layer.getHandle().get_shutdown() & SSL.SENT_SHUTDOWN)
    except SSL.Error:
        return
    tcp = layer.transport
    if sent and tcp is not None:
        tcp.loseConnection()  # flushes what is written (close_notify included), then FIN


def _close_quietly(mbox: Any) -> None:
    closeable = imap4.ICloseableMailbox(mbox, None)
    if closeable is not None:
        maybeDeferred(closeable.close).addErrback(lambda f: log.failure("close failed", f))


class IMAPFactory(ServerFactory):
    """Builds one L{IMAPServer} per connection (port 143 with STARTTLS, or 993); see
    L{imap_factory} for the parameters."""

    noisy = False  # the session logs its own line per connection

    def __init__(
        self,
        *,
        portal: Portal,
        tls: IOpenSSLContextFactory | None,
        implicit_tls: bool,
        clock: IReactorTime,
        settings: IMAPSettings,
        quota: QuotaTracker | None = None,
        user_limit: UserSessionLimit | None = None,
        copy_observer: CopyObserver | None = None,
    ) -> None:
        self.settings = settings
        self.quota = quota
        self.user_limit = user_limit
        self.copy_observer = copy_observer
        self.portal = portal
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.clock = clock

    def buildProtocol(self, addr: Any) -> IMAPServer:
        protocol = IMAPServer(
            portal=self.portal,
            tls=self.tls,
            implicit_tls=self.implicit_tls,
            clock=self.clock,
            max_literal_size=self.settings.max_literal_size,
            quota=self.quota,
        )
        protocol.POSTAUTH_TIMEOUT = self.settings.idle_timeout
        protocol.user_limit = self.user_limit
        protocol.copy_observer = self.copy_observer
        protocol.factory = self
        return protocol


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
) -> ServerFactory:
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
    return IMAPFactory(
        portal=portal,
        tls=tls,
        implicit_tls=implicit_tls,
        clock=clock,
        settings=settings,
        quota=quota,
        user_limit=user_limit,
        copy_observer=copy_observer,
    )
