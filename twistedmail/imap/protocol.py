"""The IMAP wire protocol (RFC 3501 §2.2, §4, §7, §9): reading command lines and their
literals (RFC 3501 §4.3, LITERAL+ RFC 7888), parsing the arguments, and answering, on
Twisted's C{IMAP4Server}.

Twisted keeps the parser and the per-state command tables (C{unauth_X}, C{auth_X},
C{select_X}); every command handler is an C{async def} run by one dispatcher
(L{IMAPProtocol._run}), which:

  - holds back pipelined input while a command runs (the line receiver is paused), so
    replies stay in command order even when a command waits on a thread (twisted #9282);
  - turns L{IMAPError} and C{MailboxError} into C{NO}/C{BAD} with a response code (RFC 5530),
    and any other exception into C{NO [SERVERBUG]} after logging it (never a traceback or a
    dropped connection);
  - reports EXPUNGEs noticed from other sessions only where RFC 3501 §7.4.1 allows, and
    queued EXISTS / FETCH FLAGS before the tagged reply (L{twistedmail.imap.updates}).

Also here: mailbox names on the wire (modified UTF-7, RFC 3501 §5.1.3; UTF-8 after
ENABLE UTF8=ACCEPT, RFC 6855 §3), sequence sets (§9, RFC 4315 §3 uid-set), command
modifiers (RFC 4466 §2), and COMPRESS=DEFLATE input (RFC 4978 §3).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.protocols.tls import TLSMemoryBIOProtocol

from twistedmail.imap import grammar
from twistedmail.imap.compress import CompressionError, Inflater
from twistedmail.imap.grammar import parse_sequence_set
from twistedmail.imap.message import encode_string
from twistedmail.quota import QuotaTracker
from twistedmail.wire import ack_now, release_tls_buffers

log = Logger(namespace="twistedmail.imap")


def decode_mailbox_name(raw: bytes | str) -> str:
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


UID_COMMANDS = {b"COPY", b"FETCH", b"STORE", b"SEARCH", b"MOVE", b"EXPUNGE", b"SORT"}
UTF8_ACCEPT = b"UTF8=ACCEPT"

MAX_MODSEQ = grammar.MAX_MODSEQ

# RFC 3501 §7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH.
NO_EXPUNGE_COMMANDS = {b"FETCH", b"STORE", b"SEARCH", b"SORT"}


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


class ConnectionGone(IMAPError):
    """The connection closed while the command ran: it ends, and nothing is sent."""

    def __init__(self) -> None:
        super().__init__(b"NO", b"Connection closed")


def no(text: bytes, code: bytes = b"") -> IMAPError:
    """C{tag NO [code] text}: the command failed (RFC 3501 §7.1.2)."""
    return IMAPError(b"NO", text, code)


def bad(text: bytes, code: bytes = b"") -> IMAPError:
    """C{tag BAD [code] text}: the command was not valid (RFC 3501 §7.1.3)."""
    return IMAPError(b"BAD", text, code)


def safe_text(text: str) -> bytes:
    """Our own error text for a client: printable ASCII, bounded."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200].encode("ascii")


def encode_mailbox_name(name: str) -> bytes:
    """A mailbox name for the wire: modified UTF-7 (RFC 3501 §5.1.3), quoted or a literal;
    the inverse of L{decode_mailbox_name}."""
    return encode_string(name.encode("imap4-utf-7"))


def utf8_mailbox(raw: bytes) -> bytes:
    """A UTF-8 mailbox name (RFC 6855 §3) in its modified UTF-7 form (C{"Café & Co"} ->
    C{b"Caf&AOk- &- Co"}), for L{decode_mailbox_name}.

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


def paren_group(line: bytes) -> tuple[bytes, bytes]:
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


def option_atoms(inner: bytes) -> list[bytes]:
    """The upper-cased atoms of an option list (nested lists are refused)."""
    out = []
    for item in imap4.parseNestedParens(inner):
        if not isinstance(item, bytes):
            raise imap4.IllegalClientResponse("Unexpected list")
        out.append(item.upper())
    return out


def number_arg(value: Any, low: int, high: int = MAX_MODSEQ) -> int:
    """A number from a parsed argument, at least C{low}, at most C{high} (by default
    2^63-1, RFC 7162 §7).

    @raise IMAPError: BAD otherwise."""
    if not isinstance(value, bytes) or not value.isdigit() or len(value) > 19:
        raise bad(b"Number expected")
    number = int(value)
    if not low <= number <= high:
        raise bad(b"Number out of range")
    return number


def uid_set_arg(value: Any) -> imap4.MessageSet:
    """A sequence set from a parsed argument.  @raise IMAPError: BAD otherwise."""
    try:
        if not isinstance(value, bytes):
            raise ValueError(value)
        return parse_sequence_set(value)
    except ValueError:
        raise bad(b"Bad sequence set") from None


def format_flags(flags: Sequence[str]) -> bytes:
    """The inside of a flag list in a response (RFC 3501 §7.2.6): C{\\Seen \\Answered}."""
    return b" ".join(f.encode("ascii", "replace") for f in flags)


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


def command(handler: Callable[..., Any], *parsers: object) -> Any:
    """A command table entry, C{(handler, parser, ...)}, as Twisted's C{IMAP4Server} looks
    them up by state and name (C{auth_SELECT}, C{select_FETCH}): each parser (a function
    taking the session and the unparsed rest of the line, or a constant) gives one
    argument of C{handler}.  Typed C{Any}: the handlers and parsers take this server's
    own argument types, not those of the stock tables they replace."""
    return (handler, *parsers)


class IMAPProtocol(imap4.IMAP4Server):
    """The wire layer of an IMAP session: lines, literals, arguments, the dispatcher and
    its responses.  The state the session's parts share is declared here and set by
    L{twistedmail.imap.server.IMAPServer}."""

    portal: Portal | None  # type: ignore[assignment]  # stock declares None
    transport: Any  # a connected TCP/TLS transport: pause/resumeProducing and disconnecting
    session: str  # an identifier for the logs
    peer: str  # the client's IP address
    user: str | None  # the logged-in address
    clock: IReactorTime
    max_literal_size: int  # the largest APPEND (RFC 7889 APPENDLIMIT)
    implicit_tls: bool
    enabled: frozenset[bytes]  # capabilities turned on by ENABLE (RFC 5161)
    quota: QuotaTracker | None  # the users' quotas (RFC 9208); None: no QUOTA
    _lost: bool  # connectionLost ran: a command still running must take nothing more
    _busy: bool
    _idling: bool  # in IDLE (RFC 2177): updates are sent at once
    _idle_tag: bytes | None  # the IDLE command's tag, while in IDLE
    _line_waiter: Deferred[bytes] | None
    _inflater: Inflater | None  # COMPRESS=DEFLATE active (RFC 4978)
    _held: list[bytes] | None = None  # lines held for one write (L{hold_output})

    def sendLine(self, line: bytes) -> None:
        """C{line} and CRLF to the client, or to the lines held (L{hold_output})."""
        held = self._held
        if held is None:
            self.transport.write(line + b"\r\n")
        else:
            held.append(line)
            held.append(b"\r\n")

    def hold_output(self) -> list[bytes]:
        """From now on every line sent (L{sendLine}, and what the caller appends to the list
        returned, in order) is held, until L{release_output} writes them all in one
        C{transport.write}: a FETCH of many messages made one write per message, each
        through the connection's wrappers, the TLS layer and its aggregation (issue 10)."""
        if self._held is None:
            self._held = []
        return self._held

    def release_output(self, hold: bool = False) -> None:
        """Write the lines held in one C{transport.write}; with C{hold}, keep holding what
        follows (the same list, emptied), else send it as it comes again."""
        held = self._held
        if held:
            data = b"".join(held)
            held.clear()
            if self.transport is not None:
                self.transport.write(data)
        if not hold:
            self._held = None

    def _flush_unsolicited(self) -> None:
        """Send the updates queued for the client, before a tagged reply (overridden by
        L{twistedmail.imap.updates.MailboxUpdates})."""

    def _send_expunges(self) -> None:
        """Send the EXPUNGE responses queued, where RFC 3501 §7.4.1 allows them (overridden
        by L{twistedmail.imap.updates.MailboxUpdates})."""

    def _completed(self, tag: bytes, text: bytes, cmd: bytes = b"") -> None:
        """A command's tagged OK, after the EXPUNGE responses queued when C{cmd} allows
        them (RFC 3501 §7.4.1: not after FETCH, STORE, SEARCH, nor SORT, RFC 5256 §3):
        the end of every command, IDLE's too (after DONE)."""
        if self.mbox is not None and cmd not in NO_EXPUNGE_COMMANDS:
            self._send_expunges()
        self.sendPositiveResponse(tag, text)

    def bye(self, text: bytes) -> None:
        """C{* BYE text} and the close: nothing the client sent after it is run (RFC 3501
        §7.1.5); the one way every BYE but LOGOUT's and an overlong line's is said."""
        self.release_output()
        self.sendLine(b"* BYE " + text)
        self.clearLineBuffer()
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.release_output()
        self.sendLine(b"* BYE [TOOBIG] Command line too long")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._lost or (self.transport is not None and self.transport.disconnecting):
            return  # after LOGOUT/BYE nothing more is executed (RFC 3501 §6.1.3)
        if self._inflater is None:
            super().dataReceived(data)
        else:
            super().dataReceived(b"")  # lines already inflated first (after a pause)
            try:
                self._inflater.feed(data, super().dataReceived, self._input_stopped)
            except CompressionError as e:
                log.info("imap bad deflate data session={session}: {e}", session=self.session, e=e)
                self.bye(b"[CLIENTBUG] Invalid compressed data")
                return
        if data and (self.parseState == "pending" or self._buffer):
            # A literal, the rest of its command line, or a line came in part: ACK now,
            # or the client's Nagle holds the rest for our delayed ACK (wire.ack_now).
            # Not when input resumes after a command (no data): what is buffered then was
            # acknowledged as it came (a setsockopt per pipelined command, issue 10).
            ack_now(self.transport)

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
        if not grammar.is_tag(args[0]):
            # RFC 3501 §9 tag: ASTRING-CHARs but "+"; answered untagged, as it has no tag
            # (its octets are not echoed, alone on the line or not: Dovecot does the same)
            self.sendBadResponse(None, b"Invalid tag")
            m = _TRAILING_LITERAL.search(line)
            if m and m.group(1).endswith(b"+}"):  # its literal's data must not run
                self.bye(b"[CLIENTBUG] Closing the connection")
            return
        if len(args) == 1:
            self.sendBadResponse(args[0], b"Missing command")
            return
        rest = args[2] if len(args) == 3 else None
        self.dispatchCommand(args[0], args[1].upper(), rest)

    def parse_waiting(self, line: bytes) -> None:
        """A continuation line (AUTHENTICATE's response): hand it to the waiting
        command, pausing input first so nothing after it runs before the command ends."""
        self.parseState = "command"
        waiter, self._line_waiter = self._line_waiter, None
        self.pauseProducing()
        assert waiter is not None
        waiter.callback(line)

    def read_line(self) -> Deferred[bytes]:
        """Wait for the client's next line while the current command is in progress
        (AUTHENTICATE's response, RFC 3501 §6.2.2; IDLE's DONE goes to L{parse_idle})."""
        waiter: Deferred[bytes] = Deferred()
        self._line_waiter = waiter
        self.parseState = "waiting"
        self.resumeProducing()
        release_tls_buffers(self.transport)
        return waiter

    # dispatch

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes | None, uid: Any = None) -> None:
        # The command's first step runs here: one that needs no thread nor literal (NOOP,
        # a FETCH of what the process holds, SEARCH in memory...) ends in it, and makes no
        # Deferred nor inlineCallbacks driver (issue 10).  One that waits is handed to
        # Deferred.fromCoroutine at the Deferred it awaits, whose first send only yields
        # that Deferred again (Deferred.__await__ gives a result once it has one).
        run = self._run(tag, cmd, rest)
        try:
            run.send(None)
        except StopIteration:
            return
        Deferred.fromCoroutine(run)

    async def _run(self, tag: bytes, cmd: bytes, rest: bytes | None) -> None:
        paused = False
        uid = False
        unread = rest  # the part of the line not parsed yet: its literal is unread
        try:
            if cmd == b"UID" and self.state == "select":
                sub, _, rest = (rest or b"").partition(b" ")
                cmd = sub.upper()
                if cmd not in UID_COMMANDS:
                    raise bad(b"Unknown UID command")
                uid = True
            if uid and cmd == b"EXPUNGE":
                spec = self.lookupCommand(b"UID_EXPUNGE")  # RFC 4315 §2.1: takes a UID set
            else:
                spec = self.lookupCommand(cmd) if cmd.isalpha() else None
            if spec is None:
                raise bad(b"Command unknown or not valid in this state")
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
                raise bad(b"Too many arguments")
            unread = None
            self._busy = paused = True
            self.pauseProducing()
            kwargs = {"uid": uid} if uid else {}
            outcome = handler(self, tag, *args, **kwargs)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome is not None:
                self._completed(tag, outcome, cmd)
        except IMAPError as e:
            self._respond(e.status, tag, e.message())
            if e.close:
                self.bye(b"[" + (e.code or b"CLIENTBUG") + b"] Closing the connection")
        except imap4.IllegalClientResponse as e:
            self.sendBadResponse(tag, b"Syntax error: " + safe_text(str(e)))
        except imap4.IllegalMailboxEncoding:
            self.sendNegativeResponse(tag, b"[CANNOT] Invalid mailbox name")
        except imap4.MailboxException as e:
            code = getattr(e, "code", b"")
            self.sendNegativeResponse(
                tag, (b"[" + code + b"] " if code else b"") + safe_text(str(e))
            )
        except Exception:
            log.failure(
                "imap {command} failed session={session}", command=cmd, session=self.session
            )
            self.sendNegativeResponse(tag, b"[SERVERBUG] Internal error")
        finally:
            self._busy = False
            m = _TRAILING_LITERAL.search(unread) if unread else None
            if (
                m
                and m.group(1).endswith(b"+}")
                and self.transport
                and not self.transport.disconnecting
            ):
                # RFC 7888 §4: the refused command's non-synchronizing literal is already
                # on its way; never read it as commands (as for an oversized literal)
                self.bye(b"[CLIENTBUG] Closing the connection")
            if paused and self.transport is not None:
                if self.transport.disconnecting:
                    # LOGOUT or BYE: keep reading so the peer's close (TLS close_notify, FIN)
                    # is seen and the connection freed; commands are no longer run.
                    self.clearLineBuffer()
                    self.transport.resumeProducing()
                    _close_below_tls(self.transport)
                else:
                    self.resumeProducing()
                    release_tls_buffers(self.transport)  # the session may idle now

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
            raise bad(b"UTF8 APPEND needs ENABLE UTF8=ACCEPT")
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

    def sendContinuationRequest(
        self, msg: bytes | None = b"Ready for additional command text"
    ) -> None:
        self.release_output()  # the client answers it: nothing may stay held
        self.sendLine(b"+ " + (msg or b""))

    def arg_plist(self, line: bytes) -> tuple[list[Any], bytes]:
        """A parenthesised list; Twisted's raises C{MismatchedNesting} (not a client error)
        for C{(A[B (C)])}, found by the fuzz test."""
        try:
            result: tuple[list[Any], bytes] = super().arg_plist(line)
        except imap4.MismatchedNesting:
            raise imap4.IllegalClientResponse("Mismatched parenthesis") from None
        return result

    def _modifiers(self, line: bytes, known: dict[bytes, int]) -> tuple[dict[bytes, Any], bytes]:
        """A parenthesised modifier list (RFC 4466 §2.2/§2.3); C{known} maps each name to
        the lowest number it takes, 0 for a flag without value where the name is VANISHED."""
        line = (line or b"").lstrip(b" ")
        if line[:1] != b"(":
            return {}, line
        inner, rest = paren_group(line)
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
                out[key] = number_arg(items.pop(0), known[key])
            except IMAPError:
                raise imap4.IllegalClientResponse("Bad modifier value") from None
        return out, rest
