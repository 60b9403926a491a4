"""ManageSieve server (RFC 5804): users upload, list, activate and delete their Sieve scripts.

One session per connection, in Pigeonhole's default shape (C{ssl = required}):

  - the greeting is the capability list (RFC 5804 §1.7): C{IMPLEMENTATION}, C{SASL} (empty
    before TLS, C{"PLAIN LOGIN"} after), C{SIEVE} (exactly what C{require} accepts:
    L{twistedmail.sieve.validate.EXTENSIONS}), C{STARTTLS}, C{MAXREDIRECTS}, C{VERSION "1.0"},
    C{UNAUTHENTICATE}, and C{OWNER} once logged in; no C{NOTIFY} (no C{enotify});
  - before TLS only CAPABILITY, STARTTLS, LOGOUT and NOOP run; AUTHENTICATE gets
    C{NO (ENCRYPT-NEEDED)} (RFC 5804 §1.3); STARTTLS drops every byte pipelined after it
    and sends the capabilities again under TLS (RFC 5804 §2.2);
  - AUTHENTICATE PLAIN and LOGIN (RFC 5804 §2.1) through L{twistedmail.sasl} and the one
    login path L{twistedmail.auth.login} (password store, failed-login throttle, log line);
    a C{"*"} response cancels with C{NO};
  - the script commands of §2.5 to §2.13 act on the user's L{SieveStore} (Pigeonhole's
    layout in the Maildir home); PUTSCRIPT and CHECKSCRIPT compile the script with our
    validator and refuse an invalid one with C{NO} and the line and message (§2.6), and a
    C{fileinto} of a folder name that could never be stored;
  - strings are quoted (at most 1024 octets, C{\\"} and C{\\\\} escapes) or literals
    (RFC 5804 §4); a client literal C{{n+}} and, as Pigeonhole takes it, C{{n}} are read
    without a continuation (ManageSieve has none);
  - limits: a command line of L{MAX_LINE_LENGTH} octets (over it: C{BYE}, as Pigeonhole),
    a string literal of the same, a script of C{max_script_size} octets (a bigger literal
    is read and thrown away, then C{NO (QUOTA/MAXSIZE)}; one over L{MAX_LITERAL} ends the
    session), C{max_scripts} scripts and C{max_storage} octets per user (C{QUOTA/...}
    codes of §1.3), an idle timeout (C{BYE});
  - ManageSieve has no BAD: every refused command gets C{NO} and a short text (§1.2),
    never a traceback.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IOpenSSLContextFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import Interface

import twistedmail
from twistedmail import auth, sasl
from twistedmail.auth import RunInThread
from twistedmail.maildir import FolderNameError, encode_folder_name
from twistedmail.settings import ManageSieveSettings
from twistedmail.sieve.grammar import SieveError
from twistedmail.sieve.interpret import MAX_REDIRECTS
from twistedmail.sieve.store import (
    ActiveScriptError,
    ScriptExistsError,
    ScriptNameError,
    ScriptNotFoundError,
    SieveStore,
    validate_name,
)
from twistedmail.sieve.validate import EXTENSIONS, Node, Script, compile_script
from twistedmail.wire import ack_now

log = Logger(namespace="twistedmail.managesieve")

CRLF = b"\r\n"
MAX_LINE_LENGTH = 8192
"""Octets of a command line (literal contents not counted) and of a string literal that is
not a script; Pigeonhole's C{managesieve_max_line_length} is 64 KiB."""
MAX_QUOTED = 1024
"""Octets of a quoted string (RFC 5804 §4: C{*1024QUOTED-CHAR})."""
MAX_ARGUMENTS = 8
MAX_LITERAL = 64 * 1024 * 1024
"""A literal announced larger than this ends the session (C{BYE}) instead of being read and
thrown away."""
MAX_NUMBER = 4294967295  # RFC 5804 §4: number < 4,294,967,296
SASL_MECHANISMS = ("PLAIN", "LOGIN")

NONAUTH = "NONAUTH"
AUTH = "AUTH"

SIEVE_CAPABILITY = " ".join(sorted(EXTENSIONS))
"""RFC 5804 §1.7 SIEVE: every extension C{require} accepts, from the validator's one list."""


class ISieveUser(Interface):
    """The avatar interface of a ManageSieve login (L{SieveUser})."""


@attrs.frozen
class SieveUser:
    """A logged-in user's scripts.  @ivar address: the login address.  @ivar home: the
    user's Maildir home, where L{SieveStore} keeps the scripts."""

    address: str
    home: Path

    @property
    def store(self) -> SieveStore:
        return SieveStore(self.home)


@attrs.frozen
class Atom:
    """An unquoted word of a command (RFC 5804 §4 C{atom}), e.g. a command name or number."""

    text: str


Argument = Atom | bytes
"""An atom, or a string (quoted or literal) as its octets."""


@attrs.frozen
class Command:
    """A complete command line: its arguments in order, the first being the name."""

    arguments: tuple[Argument, ...]


@attrs.frozen
class ParseError:
    """A command that cannot be parsed, answered C{NO [(code)] "text"}; C{fatal}: answered
    C{BYE} and the session ends (the rest of the input cannot be framed)."""

    text: str
    code: str = ""
    fatal: bool = False


_LITERAL_AT_END = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
_ATOM_CHAR = re.compile(rb"[^(){ \x00-\x1f\x7f\"\\%*]+")
_NUMBER = re.compile(r"[0-9]{1,10}\Z")


class CommandReader:
    """Frames client input into L{Command}s (RFC 5804 §4), without I/O.

    Feed bytes with L{feed}; take complete commands (or L{ParseError}s) with L{next}.  A
    command is one or more CRLF-ended line segments, each but the last ending in a literal
    C{{n+}} / C{{n}} whose C{n} octets follow the CRLF.  An error in a command is reported
    once the whole command (its literals included) has been read, so its literal data is
    never taken for commands.

    @param max_script_size: the largest literal accepted as the script of PUTSCRIPT or
        CHECKSCRIPT; a larger one is thrown away and the command answered
        C{NO (QUOTA/MAXSIZE)}.
    """

    def __init__(self, max_script_size: int, max_line_length: int = MAX_LINE_LENGTH) -> None:
        self.max_script_size = max_script_size
        self.max_line_length = max_line_length
        self._buffer = bytearray()
        self._reset()
        self._dead = False

    def _reset(self) -> None:
        self._arguments: list[Argument] = []
        self._line_used = 0
        self._error: ParseError | None = None
        self._literal_left = -1  # >= 0 while reading a literal's data
        self._literal_keep = True
        self._literal: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if not self._dead:
            self._buffer += data

    @property
    def partial(self) -> bool:
        """A command has arrived in part (a line without its CRLF, a literal or the line
        after it still to come)."""
        return bool(self._buffer or self._arguments or self._literal_left >= 0)

    def discard(self) -> None:
        """Forget everything received and not yet taken (STARTTLS: RFC 5804 §2.2)."""
        self._buffer.clear()
        self._reset()

    def pending(self) -> int:
        return len(self._buffer)

    def next(self) -> Command | ParseError | None:
        """The next complete command or error, or C{None} until more input arrives."""
        while not self._dead:
            if self._literal_left >= 0:
                take = min(self._literal_left, len(self._buffer))
                if self._literal_keep:
                    self._literal.append(bytes(self._buffer[:take]))
                del self._buffer[:take]
                self._literal_left -= take
                if self._literal_left > 0:
                    return None
                self._literal_left = -1
                if self._literal_keep:
                    self._arguments.append(b"".join(self._literal))
                self._literal = []
                continue
            end = self._buffer.find(CRLF)
            if end < 0:
                if len(self._buffer) + self._line_used > self.max_line_length:
                    return self._fatal("Line too long")
                return None
            segment = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._line_used += len(segment)
            if self._line_used > self.max_line_length:
                return self._fatal("Line too long")
            literal = self._segment(segment)
            if literal is None:
                done: Command | ParseError = self._error or Command(tuple(self._arguments))
                if not self._arguments and self._error is None:
                    done = ParseError("Empty command")
                self._reset()
                return done
            size, limit, code = literal
            if size > MAX_LITERAL:
                return self._fatal("Literal too large")
            self._literal_left = size
            self._literal_keep = self._error is None and size <= limit
            if self._error is None and size > limit:
                if code:
                    self._error = ParseError(
                        f"Script is too large: at most {self.max_script_size} bytes", code
                    )
                else:
                    self._error = ParseError("String literal too long")
        return None

    def _fatal(self, text: str) -> ParseError:
        self._dead = True
        self._buffer.clear()
        return ParseError(text, fatal=True)

    def _fail(self, text: str) -> None:
        if self._error is None:
            self._error = ParseError(text)

    def _segment(self, segment: bytes) -> tuple[int, int, str] | None:
        """Parse one line segment into C{_arguments}; return (size, limit, code) of the
        literal it ends with, else C{None} (the command is complete)."""
        at_end = _LITERAL_AT_END.search(segment)
        if self._error is not None:  # only look for the literal to skip
            return (_size(at_end), 0, "") if at_end else None
        pos = 0
        n = len(segment)
        if self._arguments:  # after a literal: SP and more arguments, or the end
            if n == 0:
                return None
            if segment[0:1] != b" ":
                self._fail("Expected a space after a literal")
                return (_size(at_end), 0, "") if at_end else None
        while True:
            while pos < n and segment[pos] == 0x20:
                pos += 1
            if pos >= n:
                return None
            if len(self._arguments) >= MAX_ARGUMENTS:
                self._fail("Too many arguments")
                return (_size(at_end), 0, "") if at_end else None
            c = segment[pos]
            if c == 0x22:  # '"'
                value, pos, error = _quoted(segment, pos + 1)
                if error:
                    self._fail(error)
                    return (_size(at_end), 0, "") if at_end else None
                self._arguments.append(value)
            elif c == 0x7B:  # '{'
                if at_end is None or at_end.start() != pos:
                    self._fail("Invalid literal")
                    return None
                return _size(at_end), *self._literal_limit()
            else:
                m = _ATOM_CHAR.match(segment, pos)
                if m is None or m.end() - pos > MAX_QUOTED:
                    self._fail("Invalid characters in command")
                    return (_size(at_end), 0, "") if at_end else None
                self._arguments.append(Atom(m.group().decode("ascii", "replace")))
                pos = m.end()
            if pos < n and segment[pos] != 0x20:
                self._fail("Expected a space between arguments")
                return (_size(at_end), 0, "") if at_end else None

    def _literal_limit(self) -> tuple[int, str]:
        """(largest size, response code when over) of the literal that comes next."""
        args = self._arguments
        name = args[0].text.upper() if args and isinstance(args[0], Atom) else ""
        if (name == "PUTSCRIPT" and len(args) == 2) or (name == "CHECKSCRIPT" and len(args) == 1):
            return self.max_script_size, "QUOTA/MAXSIZE"
        return self.max_line_length, ""


def _size(literal: re.Match[bytes]) -> int:
    """The octet count of a literal; one of more than 10 digits counts as too large."""
    digits = literal.group(1)
    return int(digits) if len(digits) <= 10 else MAX_LITERAL + 1


def _quoted(segment: bytes, pos: int) -> tuple[bytes, int, str]:
    """A quoted string from just after its opening quote: (value, position after the
    closing quote, error or "").  RFC 5804 §4: QUOTED-CHAR = SAFE-UTF8-CHAR / "\\"
    QUOTED-SPECIALS."""
    out = bytearray()
    n = len(segment)
    while pos < n:
        c = segment[pos]
        if c == 0x22:
            if len(out) > MAX_QUOTED:
                return b"", pos, "Quoted string too long (use a literal)"
            return bytes(out), pos + 1, ""
        if c == 0x5C:
            if pos + 1 >= n or segment[pos + 1] not in (0x22, 0x5C):
                return b"", pos, "Invalid escape in quoted string"
            out.append(segment[pos + 1])
            pos += 2
            continue
        if c == 0:
            return b"", pos, "NUL in quoted string"
        out.append(c)
        pos += 1
    return b"", pos, "Unterminated quoted string"


def string(value: str | bytes) -> bytes:
    """A response string (RFC 5804 §4): quoted when it can be, else a literal C{{n}}."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= MAX_QUOTED and not any(c in data for c in (0, 10, 13)):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def response(kind: str, code: str = "", text: str | bytes = "") -> bytes:
    """C{OK} / C{NO} / C{BYE} with an optional response code and text, CRLF-ended
    (RFC 5804 §4 response-oknobye)."""
    line = kind.encode("ascii")
    if code:
        line += b" (" + code.encode("utf-8") + b")"
    if text:
        line += b" " + string(text)
    return line + CRLF


class AccountGone(Exception):
    """The user's Maildir home, made at login, is gone: the user was deleted (C{twistedmail
    user del} moved it aside) while the session was logged in."""


class Refused(Exception):
    """A command answered C{NO [(code)] "text"}; the text is generic, safe to send."""

    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def _name(value: Argument) -> str:
    """A script name argument as text.  @raise Refused: not a valid name (RFC 5804 §1.6)."""
    if not isinstance(value, bytes):
        raise Refused("Script name must be a string")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("Invalid script name: not UTF-8") from None
    try:
        return validate_name(text)
    except ScriptNameError as e:
        raise Refused(f"Invalid script name: {e}") from None


def _number(value: Argument) -> int:
    if not isinstance(value, Atom) or not _NUMBER.match(value.text):
        raise Refused("Expected a number")
    number = int(value.text)
    if number > MAX_NUMBER:
        raise Refused("Number too large")
    return number


def _walk(nodes: Sequence[Node]) -> Any:
    for node in nodes:
        yield node
        yield from _walk(node.tests)
        if node.block is not None:
            yield from _walk(node.block)


def check_script(source: bytes, include_exists: Callable[[str, str], bool]) -> Script:
    """Compile C{source} as delivery will run it, and refuse what could never work.

    @raise SieveError: the validator's error (line and message), or a C{fileinto} of a
        constant folder name that is not a valid folder (C{"../../x"}: nothing is ever
        stored outside the user's Maildir).
    """
    script = compile_script(source, include_exists)
    for node in _walk(script.commands):
        if node.name != "fileinto" or not node.positional:
            continue
        folder = node.positional[0]
        if not isinstance(folder, str) or "${" in folder or folder.upper() == "INBOX":
            continue
        try:
            encode_folder_name(folder)
        except FolderNameError as e:
            raise SieveError(node.line, f"fileinto: invalid folder name '{folder}': {e}") from None
    return script


def _make_home(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)


def _space(store: SieveStore, name: str, size: int, limits: ManageSieveSettings) -> None:
    """@raise Refused: C{QUOTA/MAXSIZE}, C{QUOTA/MAXSCRIPTS} or C{QUOTA} (storage) when a
    script C{name} of C{size} octets would not fit (RFC 5804 §2.3).  Blocking: a thread."""
    if size > limits.max_script_size:
        raise Refused(
            f"Script is too large: at most {limits.max_script_size} bytes", "QUOTA/MAXSIZE"
        )
    names = store.names()
    if name not in names and len(names) >= limits.max_scripts:
        raise Refused(
            f"Script count quota exceeded: at most {limits.max_scripts} scripts", "QUOTA/MAXSCRIPTS"
        )
    used = 0
    for other in names:
        if other != name:
            try:
                used += store.path(other).stat().st_size
            except OSError:
                continue
    if used + size > limits.max_storage:
        raise Refused(f"Script storage quota exceeded: at most {limits.max_storage} bytes", "QUOTA")


@attrs.frozen
class _Spec:
    method: str
    states: frozenset[str]
    min_args: int
    max_args: int
    before_tls: bool = False


_ANY = frozenset({NONAUTH, AUTH})
_NON = frozenset({NONAUTH})
_AUTHED = frozenset({AUTH})

COMMANDS: dict[str, _Spec] = {
    "CAPABILITY": _Spec("do_CAPABILITY", _ANY, 0, 0, True),  # RFC 5804 §2.4
    "STARTTLS": _Spec("do_STARTTLS", _NON, 0, 0, True),  # §2.2
    "LOGOUT": _Spec("do_LOGOUT", _ANY, 0, 0, True),  # §2.3
    "NOOP": _Spec("do_NOOP", _ANY, 0, 1, True),  # §2.13
    "AUTHENTICATE": _Spec("do_AUTHENTICATE", _NON, 1, 2),  # §2.1
    "UNAUTHENTICATE": _Spec("do_UNAUTHENTICATE", _AUTHED, 0, 0),  # §2.14
    "HAVESPACE": _Spec("do_HAVESPACE", _AUTHED, 2, 2),  # §2.5
    "PUTSCRIPT": _Spec("do_PUTSCRIPT", _AUTHED, 2, 2),  # §2.6
    "LISTSCRIPTS": _Spec("do_LISTSCRIPTS", _AUTHED, 0, 0),  # §2.7
    "SETACTIVE": _Spec("do_SETACTIVE", _AUTHED, 1, 1),  # §2.8
    "GETSCRIPT": _Spec("do_GETSCRIPT", _AUTHED, 1, 1),  # §2.9
    "DELETESCRIPT": _Spec("do_DELETESCRIPT", _AUTHED, 1, 1),  # §2.10
    "RENAMESCRIPT": _Spec("do_RENAMESCRIPT", _AUTHED, 2, 2),  # §2.11
    "CHECKSCRIPT": _Spec("do_CHECKSCRIPT", _AUTHED, 1, 1),  # §2.12
}


class ManageSieveServer(TimeoutMixin, Protocol):
    """One ManageSieve session (RFC 5804).

    @param portal: logs in for L{ISieveUser} avatars (L{SieveUser}).
    @param tls: the context for STARTTLS, or C{None} (then no STARTTLS).
    @param clock: time source of the idle timeout.
    @param run_in_thread: runs compiling and file work off the reactor thread.
    @param settings: per-user quota, the idle timeout, and whether AUTHENTICATE is taken
        without TLS (unit tests only).
    """

    transport: Any

    def __init__(
        self,
        *,
        portal: Portal,
        tls: IOpenSSLContextFactory | None,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        settings: ManageSieveSettings = ManageSieveSettings(),
    ) -> None:
        self.portal = portal
        self.tls = tls
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.limits = settings
        self.allow_plaintext_auth = settings.allow_plaintext_auth
        self.reader = CommandReader(settings.max_script_size)
        self.session = secrets.token_hex(4)
        self.state = NONAUTH
        self.peer_ip = "?"
        self.user: SieveUser | None = None
        self._logout: Callable[[], None] | None = None
        self._tls_started = False
        self._sasl: sasl.Exchange | None = None
        self._busy = False
        self._closing = False
        self._lost = False
        self._commands = 0

    # Twisted plumbing

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        self.peer_ip = str(getattr(self.transport.getPeer(), "host", "?"))
        self.setTimeout(self.limits.idle_timeout)
        self._write(self._capabilities() + response("OK", "", "twistedmail ManageSieve ready"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self.setTimeout(None)
        self._end_login()
        log.info(
            "managesieve session {session} ip={ip} user={user} closed after {n} commands",
            session=self.session,
            ip=self.peer_ip,
            user=self.user.address if self.user else "-",
            n=self._commands,
        )

    def timeoutConnection(self) -> None:
        self._bye("", "Disconnected for inactivity")

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self.reader.feed(data)
        self._process()
        if self.reader.partial and not self._closing:
            ack_now(self.transport)  # the client's Nagle waits on our ACK for the rest

    # framing and dispatch

    def _write(self, data: bytes) -> None:
        if not self._lost:
            self.transport.write(data)

    def _bye(self, code: str, text: str) -> None:
        self._write(response("BYE", code, text))
        self._close()

    def _close(self) -> None:
        self._closing = True
        self.setTimeout(None)
        self.transport.loseConnection()

    def _process(self) -> None:
        while not self._busy and not self._closing:
            event = self.reader.next()
            if event is None:
                return
            self._commands += 1
            if isinstance(event, ParseError):
                if self._sasl is not None:
                    self._sasl = None
                if event.fatal:
                    self._bye("", event.text)
                    return
                self._write(response("NO", event.code, event.text))
                continue
            self._busy = True
            d = Deferred.fromCoroutine(self._run(event))
            d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._busy = False
        if not self._closing and not self._lost:
            self.transport.resumeProducing()
            self._process()

    async def _run(self, command: Command) -> None:
        try:
            if self._sasl is not None:
                await self._sasl_response(command)
            else:
                await self._dispatch(command)
        except Refused as e:
            self._write(response("NO", e.code, e.text))
        except AccountGone:
            self._bye("", "Account was deleted, have to disconnect.")
        except Exception:
            log.failure("managesieve session {session}: command failed", session=self.session)
            self._write(response("NO", "TRYLATER", "Internal server error"))

    async def _dispatch(self, command: Command) -> None:
        first, args = command.arguments[0], command.arguments[1:]
        if not isinstance(first, Atom):
            raise Refused("Expected a command name")
        name = first.text.upper()
        spec = COMMANDS.get(name)
        if spec is None:
            raise Refused("Unknown command")
        if not spec.before_tls and not self._may_authenticate():
            # Pigeonhole with ssl=required: nothing but these four before TLS.
            raise Refused("STARTTLS first", "ENCRYPT-NEEDED")
        if self.state not in spec.states:
            raise Refused(
                "Authenticate first" if self.state == NONAUTH else "Already authenticated"
            )
        if not spec.min_args <= len(args) <= spec.max_args:
            raise Refused(f"Wrong number of arguments for {name}")
        self.transport.pauseProducing()
        result = getattr(self, spec.method)(*args)
        if result is not None:
            await result

    # RFC 5804 §1.7 capabilities

    def is_secure(self) -> bool:
        return self._tls_started

    def _may_authenticate(self) -> bool:
        return self.allow_plaintext_auth or self.is_secure()

    def _capabilities(self) -> bytes:
        lines = [
            (b"IMPLEMENTATION", f"twistedmail {twistedmail.version()}"),
            # §1.7: the SASL list may be empty when STARTTLS is offered (ssl=required).
            (b"SASL", " ".join(SASL_MECHANISMS) if self._may_authenticate() else ""),
            (b"SIEVE", SIEVE_CAPABILITY),
        ]
        out = b"".join(string(k) + b" " + string(v) + CRLF for k, v in lines)
        if self.tls is not None and not self.is_secure() and self.state == NONAUTH:
            out += b'"STARTTLS"\r\n'
        out += b'"MAXREDIRECTS" ' + string(str(MAX_REDIRECTS)) + CRLF
        if self.user is not None:
            out += b'"OWNER" ' + string(self.user.address) + CRLF
        out += b'"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\n'
        return out

    def do_CAPABILITY(self) -> None:
        self._write(self._capabilities() + response("OK", "", "Capability completed"))

    def do_NOOP(self, tag: Argument | None = None) -> None:
        if tag is None:
            self._write(response("OK", "", "Done"))
            return
        if not isinstance(tag, bytes):
            raise Refused("NOOP takes a string")
        self._write(b"OK (TAG " + string(tag) + b') "Done"\r\n')  # §2.13

    def do_LOGOUT(self) -> None:
        self._write(response("OK", "", "Logout completed"))  # §2.3
        self._close()

    def do_STARTTLS(self) -> None:
        if self.tls is None:
            raise Refused("STARTTLS not available")
        if self.is_secure():
            raise Refused("TLS already active")
        self._write(response("OK", "", "Begin TLS negotiation now"))
        # §2.2: nothing the client pipelined after STARTTLS may be acted on under TLS.
        self.reader.discard()
        self.transport.startTLS(self.tls)
        self._tls_started = True
        # §2.2: the server MUST re-issue the capabilities after the handshake.
        self._write(self._capabilities() + response("OK", "", "TLS negotiation successful"))

    # RFC 5804 §2.1 AUTHENTICATE

    async def do_AUTHENTICATE(self, mechanism: Argument, initial: Argument | None = None) -> None:
        if not isinstance(mechanism, bytes) or (
            initial is not None and not isinstance(initial, bytes)
        ):
            raise Refused("AUTHENTICATE takes strings")
        try:
            exchange = sasl.Exchange(mechanism, SASL_MECHANISMS)
        except sasl.UnsupportedMechanism:
            raise Refused("Unsupported authentication mechanism") from None
        await self._sasl_step(exchange, lambda: exchange.start(initial))

    async def _sasl_response(self, command: Command) -> None:
        exchange, self._sasl = self._sasl, None
        assert exchange is not None
        args = command.arguments
        if len(args) != 1 or not isinstance(args[0], bytes):
            raise Refused("Expected a string as SASL response")
        answer = args[0]
        await self._sasl_step(exchange, lambda: exchange.respond(answer))

    async def _sasl_step(
        self, exchange: sasl.Exchange, step: Callable[[], bytes | sasl.Credentials]
    ) -> None:
        try:
            outcome = step()
        except sasl.Cancelled:
            raise Refused("Authentication cancelled") from None
        except sasl.BadBase64:
            raise Refused("Invalid base64 data in SASL response") from None
        except sasl.Malformed as e:
            auth.refused("managesieve", e, self.peer_ip)
            raise Refused("Authentication failed") from None
        if isinstance(outcome, bytes):
            # §2.1: a challenge is a string of the base64 data.
            self._sasl = exchange
            self._write(string(sasl.encode_challenge(outcome)) + CRLF)
            return
        await self._login(outcome)

    async def _login(self, credentials: sasl.Credentials) -> None:
        try:
            result = await auth.login(
                self.portal, ISieveUser, credentials, service="managesieve", peer_ip=self.peer_ip
            )
        except auth.LoginFailed:
            raise Refused("Authentication failed") from None
        except auth.LoginBlocked:
            raise Refused("Too many failed logins, try again later", "TRYLATER") from None
        except auth.LoginUnavailable:
            raise Refused("Authentication temporarily unavailable", "TRYLATER") from None
        try:
            # the home the scripts live in, made now as IMAP's login makes the Maildir: a
            # write later finds it gone only when the user was deleted meanwhile
            await self.run_in_thread(_make_home, result.avatar.home)
        except OSError:
            result.logout()
            raise Refused("Cannot open your Sieve scripts, try again later", "TRYLATER") from None
        if self._lost:
            result.logout()
            return
        self.user = result.avatar
        self._logout = result.logout
        self.state = AUTH
        self._write(response("OK", "", "Logged in"))

    def _end_login(self) -> None:
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def do_UNAUTHENTICATE(self) -> None:
        self._end_login()  # §2.14: back to the non-authenticated state
        self.user = None
        self.state = NONAUTH
        self._write(response("OK", "", "Unauthenticated"))

    # RFC 5804 §2.5 - §2.12: the scripts

    @property
    def store(self) -> SieveStore:
        assert self.user is not None
        return self.user.store

    async def _still_there(self, store: SieveStore) -> None:
        """Before a write: @raise AccountGone: the home made at login is gone (making it
        again would give the deleted user's address a new home, and C{user add} of it
        would then refuse)."""
        if not await self.run_in_thread(store.home.is_dir):
            raise AccountGone()

    async def _check(self, store: SieveStore, source: bytes) -> None:
        def include_exists(name: str, where: str) -> bool:
            try:
                return where == "personal" and store.path(name).is_file()
            except ScriptNameError:
                return False

        try:
            await self.run_in_thread(check_script, source, include_exists)
        except SieveError as e:
            raise Refused(str(e)) from None  # §2.6: the line and the message

    async def do_HAVESPACE(self, name: Argument, size: Argument) -> None:
        script, octets = _name(name), _number(size)
        await self.run_in_thread(_space, self.store, script, octets, self.limits)
        self._write(response("OK"))

    async def do_PUTSCRIPT(self, name: Argument, content: Argument) -> None:
        script = _name(name)
        if not isinstance(content, bytes):
            raise Refused("The script must be a string")
        store = self.store
        await self.run_in_thread(_space, store, script, len(content), self.limits)
        await self._check(store, content)
        await self._still_there(store)
        await self.run_in_thread(store.put, script, content)
        log.info(
            "managesieve: user={user} stored script {name!r} ({size} octets)",
            user=self.user.address if self.user else "-",
            name=script,
            size=len(content),
        )
        self._write(response("OK", "", "Script stored"))

    async def do_CHECKSCRIPT(self, content: Argument) -> None:
        if not isinstance(content, bytes):
            raise Refused("The script must be a string")
        await self._check(self.store, content)
        self._write(response("OK", "", "Script is valid"))

    async def do_LISTSCRIPTS(self) -> None:
        scripts = await self.run_in_thread(self.store.list)
        out = b"".join(string(n) + (b" ACTIVE" if active else b"") + CRLF for n, active in scripts)
        self._write(out + response("OK", "", "Listscripts completed"))

    async def do_SETACTIVE(self, name: Argument) -> None:
        store = self.store
        await self._still_there(store)
        if name == b"":
            await self.run_in_thread(store.deactivate)  # §2.8: "" deactivates
            self._write(response("OK", "", "Deactivated"))
            return
        script = _name(name)
        try:
            source = await self.run_in_thread(store.get, script)
        except ScriptNotFoundError:
            raise Refused("There is no script by that name", "NONEXISTENT") from None
        await self._check(store, source)  # as Pigeonhole: a broken script is not activated
        try:
            await self.run_in_thread(store.activate, script)
        except ScriptNotFoundError:
            raise Refused("There is no script by that name", "NONEXISTENT") from None
        self._write(response("OK", "", "Activated"))

    async def do_GETSCRIPT(self, name: Argument) -> None:
        script = _name(name)
        try:
            source = await self.run_in_thread(self.store.get, script)
        except ScriptNotFoundError:
            raise Refused("There is no script by that name", "NONEXISTENT") from None
        # §2.9: the script as a literal, then OK.
        self._write(
            b"{%d}\r\n" % len(source) + source + CRLF + response("OK", "", "Getscript completed")
        )

    async def do_DELETESCRIPT(self, name: Argument) -> None:
        script = _name(name)
        try:
            await self.run_in_thread(self.store.delete, script)
        except ActiveScriptError:
            raise Refused("You may not delete the active script", "ACTIVE") from None
        except ScriptNotFoundError:
            raise Refused("There is no script by that name", "NONEXISTENT") from None
        self._write(response("OK", "", "Deletescript completed"))

    async def do_RENAMESCRIPT(self, old: Argument, new: Argument) -> None:
        source, target = _name(old), _name(new)
        await self._still_there(self.store)
        try:
            await self.run_in_thread(self.store.rename, source, target)
        except ScriptNotFoundError:
            raise Refused("There is no script by that name", "NONEXISTENT") from None
        except (ScriptExistsError, FileExistsError):
            raise Refused("A script by that name already exists", "ALREADYEXISTS") from None
        self._write(response("OK", "", "Renamescript completed"))
