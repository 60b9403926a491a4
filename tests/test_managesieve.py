"""Unit tests for twistedmail.managesieve: the command grammar (RFC 5804 §4) and every
command and refusal of a session (RFC 5804 §2), over StringTransport and a Clock, with the
real password checker, throttle and script store in a temp dir."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import pytest
from test_wire import quickack, tcp_connection
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twistedmail import passwords
from twistedmail.accounts import AccountStore
from twistedmail.auth import MailRealm, PasswordChecker
from twistedmail.managesieve import (
    MAX_LINE_LENGTH,
    SIEVE_CAPABILITY,
    Atom,
    Command,
    CommandReader,
    ISieveUser,
    ManageSieveServer,
    ParseError,
    SieveUser,
    response,
    string,
)
from twistedmail.settings import ManageSieveSettings
from twistedmail.sieve.store import SieveStore
from twistedmail.sieve.validate import EXTENSIONS
from twistedmail.throttle import LoginThrottle, ThrottlePolicy

USER = "alice@example.test"
PASSWORD = "secret pass"
TLS_CONTEXT: Any = object()  # a stand-in: the transport only records it
SCRIPT = b'require "fileinto";\r\nif header :contains "list-id" "dev" { fileinto "Lists"; }\r\n'


def run_now(f: Any, *args: Any) -> Deferred[Any]:
    """A RunInThread that runs synchronously (tests only)."""
    return defer.maybeDeferred(f, *args)


class TLSStringTransport(StringTransport):
    tls_context: Any = None

    def startTLS(self, context: Any) -> None:
        self.tls_context = context


def plain(user: str = USER, password: str = PASSWORD) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


class Session:
    """One server session over a StringTransport; L{send} returns what the server wrote."""

    def __init__(
        self, tmp: Path, *, tls: bool = True, limits: ManageSieveSettings | None = None, **kw: Any
    ):
        self.clock = Clock()
        self.mail = tmp / "mail"
        self.accounts = AccountStore(tmp / "accounts.sqlite3")
        if not self.accounts.is_user(USER):
            self.accounts.add_user(USER, passwords.hash_password(PASSWORD))
        self.throttle = kw.pop("throttle", None)
        realm = MailRealm({ISieveUser: lambda address: SieveUser(address, self.home)})
        portal = Portal(realm, [PasswordChecker(self.accounts, run_now, self.throttle)])
        self.proto = ManageSieveServer(
            portal=portal,
            tls=TLS_CONTEXT if tls else None,
            clock=self.clock,
            run_in_thread=run_now,
            settings=limits or ManageSieveSettings(),
            **kw,
        )
        self.transport = TLSStringTransport()
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()

    @property
    def home(self) -> Path:
        return self.mail / "example.test" / "alice"

    @property
    def store(self) -> SieveStore:
        return SieveStore(self.home)

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        self.clock.advance(0)
        return self.take()

    def login(self) -> None:
        assert self.send(b"STARTTLS\r\n").startswith(b'OK "Begin TLS negotiation now"\r\n')
        assert self.send(b'AUTHENTICATE "PLAIN" "' + plain() + b'"\r\n') == b'OK "Logged in"\r\n'


@pytest.fixture
def session(tmp_path: Path) -> Session:
    s = Session(tmp_path)
    s.login()
    return s


def capabilities(sasl: bytes, starttls: bool, owner: str = "") -> bytes:
    return (
        b'"IMPLEMENTATION" "twistedmail ' + _version() + b'"\r\n'
        b'"SASL" "' + sasl + b'"\r\n'
        b'"SIEVE" "'
        + SIEVE_CAPABILITY.encode()
        + b'"\r\n'
        + (b'"STARTTLS"\r\n' if starttls else b"")
        + b'"MAXREDIRECTS" "4"\r\n'
        + (b'"OWNER" "' + owner.encode() + b'"\r\n' if owner else b"")
        + b'"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\n'
    )


def _version() -> bytes:
    import twistedmail

    return twistedmail.version().encode()


# -- the grammar (RFC 5804 §4) --------------------------------------------------------


def read_all(data: bytes, max_script_size: int = 100) -> list[Command | ParseError]:
    reader = CommandReader(max_script_size)
    reader.feed(data)
    out = []
    while (event := reader.next()) is not None:
        out.append(event)
    return out


def test_atoms_quoted_strings_and_escapes() -> None:
    """Atoms, quoted strings with \\" and \\\\ escapes and UTF-8 (RFC 5804 §4 quoted)."""
    assert read_all(b'putscript "a \\"b\\" \\\\c" "\xc3\xa9t\xc3\xa9"\r\nNOOP\r\n') == [
        Command((Atom("putscript"), b'a "b" \\c', "été".encode())),
        Command((Atom("NOOP"),)),
    ]


def test_literals_with_and_without_plus_need_no_continuation() -> None:
    """{n+} and {n} literals are both read at once, as Pigeonhole does (RFC 5804 §4: the
    client literal is non-synchronizing; ManageSieve has no continuation request)."""
    assert read_all(b"PUTSCRIPT {3+}\r\nabc {4}\r\nx\r\ny\r\nCAPABILITY\r\n") == [
        Command((Atom("PUTSCRIPT"), b"abc", b"x\r\ny")),
        Command((Atom("CAPABILITY"),)),
    ]


def test_literal_split_across_reads() -> None:
    """A literal arriving one octet at a time is the same literal."""
    reader = CommandReader(100)
    events = []
    for octet in b"CHECKSCRIPT {5+}\r\nkeep;\r\n":
        reader.feed(bytes([octet]))
        if (event := reader.next()) is not None:
            events.append(event)
    assert events == [Command((Atom("CHECKSCRIPT"), b"keep;"))]


@pytest.mark.parametrize(
    "line, error",
    [
        (b'NOOP "a\\x"', "Invalid escape in quoted string"),
        (b'NOOP "abc', "Unterminated quoted string"),
        (b'NOOP "a\x00b"', "NUL in quoted string"),
        (b'NOOP "' + b"x" * 1025 + b'"', "Quoted string too long (use a literal)"),
        (b"NOOP {3x}", "Invalid literal"),
        (b'NOOP "a"b', "Expected a space between arguments"),
        (b"A B C D E F G H I", "Too many arguments"),
        (b"", "Empty command"),
    ],
)
def test_syntax_errors(line: bytes, error: str) -> None:
    """Malformed input is one ParseError, and the next command still parses."""
    assert read_all(line + b"\r\nNOOP\r\n") == [ParseError(error), Command((Atom("NOOP"),))]


def test_script_literal_over_the_limit_is_thrown_away() -> None:
    """A PUTSCRIPT literal over max_script_size is read (not taken for commands) and the
    command refused with QUOTA/MAXSIZE (RFC 5804 §1.3)."""
    assert read_all(b'PUTSCRIPT "s" {101+}\r\n' + b"x" * 101 + b"\r\nNOOP\r\n") == [
        ParseError("Script is too large: at most 100 bytes", "QUOTA/MAXSIZE"),
        Command((Atom("NOOP"),)),
    ]


def test_literal_larger_than_announced_is_an_error() -> None:
    """Octets after the announced literal that are not SP / CRLF make the command fail."""
    assert read_all(b'PUTSCRIPT "s" {4+}\r\nkeep;\r\nNOOP\r\n') == [
        ParseError("Expected a space after a literal"),
        Command((Atom("NOOP"),)),
    ]


def test_error_then_literal_still_skips_the_literal() -> None:
    """After an error in a command its literal data is skipped, never run as commands."""
    assert read_all(b'PUTSCRIPT "a\\q" {8+}\r\nLOGOUT\r\n\r\nNOOP\r\n') == [
        ParseError("Invalid escape in quoted string"),
        Command((Atom("NOOP"),)),
    ]


def test_name_literal_over_the_line_limit() -> None:
    """A literal that is not a script is bounded by the line length."""
    big = MAX_LINE_LENGTH + 1
    data = b"GETSCRIPT {%d+}\r\n" % big + b"n" * big + b"\r\nNOOP\r\n"
    assert read_all(data) == [ParseError("String literal too long"), Command((Atom("NOOP"),))]


def test_line_too_long_is_fatal() -> None:
    """A command line over MAX_LINE_LENGTH cannot be framed: BYE (as Pigeonhole)."""
    assert read_all(b"NOOP " + b"x" * MAX_LINE_LENGTH) == [ParseError("Line too long", fatal=True)]


@pytest.mark.parametrize("size", [b"9999999999", b"9" * 5000, b"67108865"])
def test_huge_literal_is_fatal(size: bytes) -> None:
    """A literal announced over 64 MiB ends the session rather than being read."""
    assert read_all(b'PUTSCRIPT "s" {' + size + b"+}\r\n") == [
        ParseError("Literal too large", fatal=True)
    ]


def test_response_strings() -> None:
    """Response text is quoted with escapes, or a literal when it has CR/LF (RFC 5804 §4)."""
    assert string('a"b\\') == b'"a\\"b\\\\"'
    assert string("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert response("NO", "QUOTA", "x") == b'NO (QUOTA) "x"\r\n'


# -- the session --------------------------------------------------------------------


def test_greeting_lists_capabilities_without_sasl_before_tls(tmp_path: Path) -> None:
    """RFC 5804 §1.7: the greeting is the capability list; SASL is empty until STARTTLS,
    SIEVE is every extension require accepts, no NOTIFY (no enotify)."""
    s = Session(tmp_path)
    assert s.greeting == capabilities(b"", True) + b'OK "twistedmail ManageSieve ready"\r\n'
    assert set(SIEVE_CAPABILITY.split()) == EXTENSIONS
    assert b"NOTIFY" not in s.greeting


@pytest.mark.parametrize(
    "command",
    [b'AUTHENTICATE "PLAIN" "' + plain() + b'"', b"LISTSCRIPTS", b'PUTSCRIPT "a" {5+}\r\nkeep;'],
)
def test_nothing_but_four_commands_before_tls(tmp_path: Path, command: bytes) -> None:
    """Before TLS only CAPABILITY, STARTTLS, LOGOUT and NOOP (Pigeonhole, ssl=required):
    the rest is NO (ENCRYPT-NEEDED) (RFC 5804 §1.3)."""
    s = Session(tmp_path)
    assert s.send(command + b"\r\n") == b'NO (ENCRYPT-NEEDED) "STARTTLS first"\r\n'
    assert s.send(b"NOOP\r\n") == b'OK "Done"\r\n'
    assert s.send(b"CAPABILITY\r\n") == capabilities(b"", True) + b'OK "Capability completed"\r\n'


def test_starttls_drops_pipelined_input_and_resends_capabilities(tmp_path: Path) -> None:
    """RFC 5804 §2.2: OK, TLS, then the capabilities again (SASL now offered, no STARTTLS);
    a command pipelined after STARTTLS is never run."""
    s = Session(tmp_path)
    out = s.send(b'STARTTLS\r\nAUTHENTICATE "PLAIN" "' + plain() + b'"\r\n')
    assert out == (
        b'OK "Begin TLS negotiation now"\r\n'
        + capabilities(b"PLAIN LOGIN", False)
        + b'OK "TLS negotiation successful"\r\n'
    )
    assert s.transport.tls_context is TLS_CONTEXT
    assert s.send(b"STARTTLS\r\n") == b'NO "TLS already active"\r\n'
    assert s.send(b"LISTSCRIPTS\r\n") == b'NO "Authenticate first"\r\n'


def test_no_starttls_without_a_context(tmp_path: Path) -> None:
    """Without a TLS context STARTTLS is neither advertised nor accepted (RFC 5804 §1.7)."""
    s = Session(tmp_path, tls=False)
    assert b"STARTTLS" not in s.greeting
    assert s.send(b"STARTTLS\r\n") == b'NO "STARTTLS not available"\r\n'


def test_authenticate_plain_with_a_literal_initial_response(tmp_path: Path) -> None:
    """sieve-connect's form: the initial response as a literal {n+} (RFC 5804 §2.1)."""
    s = Session(tmp_path)
    s.send(b"STARTTLS\r\n")
    token = plain()
    out = s.send(b'AUTHENTICATE "PLAIN" {%d+}\r\n%s\r\n' % (len(token), token))
    assert out == b'OK "Logged in"\r\n'
    assert s.send(b"CAPABILITY\r\n").endswith(
        b'"OWNER" "alice@example.test"\r\n"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\n'
        b'OK "Capability completed"\r\n'
    )


def test_authenticate_plain_with_continuation(tmp_path: Path) -> None:
    """Without an initial response PLAIN gets an empty challenge "" (RFC 4616 §2)."""
    s = Session(tmp_path)
    s.send(b"STARTTLS\r\n")
    assert s.send(b'AUTHENTICATE "PLAIN"\r\n') == b'""\r\n'
    assert s.send(b'"' + plain() + b'"\r\n') == b'OK "Logged in"\r\n'


def test_authenticate_login(tmp_path: Path) -> None:
    """LOGIN asks Username: and Password: as base64 strings (as Pigeonhole offers it)."""
    s = Session(tmp_path)
    s.send(b"STARTTLS\r\n")
    assert s.send(b'AUTHENTICATE "LOGIN"\r\n') == b'"VXNlcm5hbWU6"\r\n'
    assert s.send(b'"' + base64.b64encode(USER.encode()) + b'"\r\n') == b'"UGFzc3dvcmQ6"\r\n'
    assert s.send(b"{16+}\r\n" + base64.b64encode(PASSWORD.encode()) + b"\r\n") == (
        b'OK "Logged in"\r\n'
    )


@pytest.mark.parametrize(
    "exchange, reply",
    [
        ((b'AUTHENTICATE "PLAIN"', b'"*"'), b'NO "Authentication cancelled"'),
        ((b'AUTHENTICATE "PLAIN"', b'"!!"'), b'NO "Invalid base64 data in SASL response"'),
        ((b'AUTHENTICATE "PLAIN"', b"NOOP"), b'NO "Expected a string as SASL response"'),
        (
            (b'AUTHENTICATE "PLAIN" "' + plain(password="wrong") + b'"',),
            b'NO "Authentication failed"',
        ),
        (
            (b'AUTHENTICATE "PLAIN" "' + base64.b64encode(b"x") + b'"',),
            b'NO "Authentication failed"',
        ),
        ((b'AUTHENTICATE "CRAM-MD5"',), b'NO "Unsupported authentication mechanism"'),
        ((b"AUTHENTICATE PLAIN",), b'NO "AUTHENTICATE takes strings"'),
        ((b"AUTHENTICATE",), b'NO "Wrong number of arguments for AUTHENTICATE"'),
    ],
)
def test_authenticate_refusals(tmp_path: Path, exchange: tuple[bytes, ...], reply: bytes) -> None:
    """A cancel "*" (RFC 5804 §2.1), bad base64, a wrong password, a malformed PLAIN
    message, an unknown mechanism: NO, and the session stays unauthenticated."""
    s = Session(tmp_path)
    s.send(b"STARTTLS\r\n")
    for line in exchange[:-1]:
        s.send(line + b"\r\n")
    assert s.send(exchange[-1] + b"\r\n") == reply + b"\r\n"
    assert s.send(b"LISTSCRIPTS\r\n") == b'NO "Authenticate first"\r\n'


def test_blocked_login_is_trylater(tmp_path: Path) -> None:
    """The shared failed-login throttle: once blocked, NO (TRYLATER) (RFC 5804 §1.3)."""
    clock = Clock()
    throttle = LoginThrottle(clock, ThrottlePolicy(block_after=1, base_delay=0.0))
    s = Session(tmp_path, throttle=throttle)
    s.send(b"STARTTLS\r\n")
    wrong = b'AUTHENTICATE "PLAIN" "' + plain(password="wrong") + b'"\r\n'
    assert s.send(wrong) == b'NO "Authentication failed"\r\n'
    right = b'AUTHENTICATE "PLAIN" "' + plain() + b'"\r\n'
    assert s.send(right) == b'NO (TRYLATER) "Too many failed logins, try again later"\r\n'


def test_unknown_and_misused_commands(session: Session) -> None:
    """Errors are NO with a text: ManageSieve has no BAD (RFC 5804 §1.2)."""
    assert session.send(b"FROB\r\n") == b'NO "Unknown command"\r\n'
    assert session.send(b'"quoted"\r\n') == b'NO "Expected a command name"\r\n'
    assert session.send(b"GETSCRIPT\r\n") == b'NO "Wrong number of arguments for GETSCRIPT"\r\n'
    assert session.send(b"GETSCRIPT name\r\n") == b'NO "Script name must be a string"\r\n'
    assert session.send(b'HAVESPACE "a" x\r\n') == b'NO "Expected a number"\r\n'
    assert session.send(b'HAVESPACE "a" 9999999999\r\n') == b'NO "Number too large"\r\n'
    assert session.send(b'AUTHENTICATE "PLAIN"\r\n') == b'NO "Already authenticated"\r\n'
    assert session.send(b"STARTTLS\r\n") == b'NO "Already authenticated"\r\n'


def test_putscript_list_get_activate_rename_delete(session: Session) -> None:
    """The script commands of RFC 5804 §2.6 - §2.11 on Pigeonhole's layout."""
    s = session
    put = b'PUTSCRIPT "main" {%d+}\r\n%s\r\n' % (len(SCRIPT), SCRIPT)
    assert s.send(put) == b'OK "Script stored"\r\n'
    assert (s.home / "sieve" / "main.sieve").read_bytes() == SCRIPT
    assert s.send(b'PUTSCRIPT "other" "keep;"\r\n') == b'OK "Script stored"\r\n'
    assert s.send(b"LISTSCRIPTS\r\n") == b'"main"\r\n"other"\r\nOK "Listscripts completed"\r\n'
    assert s.send(b'SETACTIVE "main"\r\n') == b'OK "Activated"\r\n'
    assert (s.home / ".dovecot.sieve").readlink() == Path("sieve/main.sieve")
    assert s.send(b"LISTSCRIPTS\r\n") == (
        b'"main" ACTIVE\r\n"other"\r\nOK "Listscripts completed"\r\n'
    )
    assert s.send(b'GETSCRIPT "main"\r\n') == (
        b'{%d}\r\n%s\r\nOK "Getscript completed"\r\n' % (len(SCRIPT), SCRIPT)
    )
    assert s.send(b'DELETESCRIPT "main"\r\n') == (
        b'NO (ACTIVE) "You may not delete the active script"\r\n'
    )
    assert s.send(b'RENAMESCRIPT "main" "other"\r\n') == (
        b'NO (ALREADYEXISTS) "A script by that name already exists"\r\n'
    )
    assert s.send(b'RENAMESCRIPT "nope" "x"\r\n') == (
        b'NO (NONEXISTENT) "There is no script by that name"\r\n'
    )
    assert s.send(b'RENAMESCRIPT "main" "filters"\r\n') == b'OK "Renamescript completed"\r\n'
    assert s.store.active() == "filters"
    assert s.send(b'SETACTIVE ""\r\n') == b'OK "Deactivated"\r\n'
    assert s.store.active() is None
    assert s.send(b'DELETESCRIPT "filters"\r\n') == b'OK "Deletescript completed"\r\n'
    assert s.send(b'DELETESCRIPT "filters"\r\n') == (
        b'NO (NONEXISTENT) "There is no script by that name"\r\n'
    )
    assert s.send(b'GETSCRIPT "filters"\r\n') == (
        b'NO (NONEXISTENT) "There is no script by that name"\r\n'
    )
    assert s.send(b'SETACTIVE "filters"\r\n') == (
        b'NO (NONEXISTENT) "There is no script by that name"\r\n'
    )
    assert sorted(p.name for p in (s.home / "sieve").iterdir()) == ["other.sieve"]


def test_invalid_script_refused_with_line_and_message(session: Session) -> None:
    """RFC 5804 §2.6: a script that does not compile is refused with NO and the line and
    message of the error, and not stored; CHECKSCRIPT (§2.12) says the same."""
    bad = b'require "fileinto";\r\nfileinto "A"\r\nkeep;\r\n'
    reply = session.send(b'PUTSCRIPT "bad" {%d+}\r\n%s\r\n' % (len(bad), bad))
    assert reply == b"NO \"line 2: command 'fileinto' takes no test\"\r\n"
    assert session.send(b"CHECKSCRIPT {%d+}\r\n%s\r\n" % (len(bad), bad)) == reply
    assert session.send(b'CHECKSCRIPT "keep;"\r\n') == b'OK "Script is valid"\r\n'
    assert session.send(b'PUTSCRIPT "v" "require \\"vacation2\\";"\r\n') == (
        b"NO \"line 1: unsupported extension 'vacation2'\"\r\n"
    )
    assert not (session.home / "sieve").exists()


def test_fileinto_outside_the_maildir_is_refused(session: Session) -> None:
    """fileinto "../../x" could never be stored: refused at upload with the line."""
    src = b'require "fileinto";\r\nfileinto "../../x";\r\n'
    assert session.send(b'PUTSCRIPT "evil" {%d+}\r\n%s\r\n' % (len(src), src)) == (
        b"NO \"line 2: fileinto: invalid folder name '../../x': invalid folder name\"\r\n"
    )
    assert not (session.home / "sieve").exists()


@pytest.mark.parametrize(
    "name, reply",
    [
        (b"{3+}\r\na\x00b", b'NO "Invalid script name: control character in script name"'),
        (b'"a/b"', b"NO \"Invalid script name: script name contains '/' or starts with '.'\""),
        (b'"../x"', b"NO \"Invalid script name: script name contains '/' or starts with '.'\""),
        (b'"\xff"', b'NO "Invalid script name: not UTF-8"'),
        (b'""', b'NO "Invalid script name: empty script name"'),
    ],
)
def test_bad_script_names(session: Session, name: bytes, reply: bytes) -> None:
    """RFC 5804 §1.6 names: NUL and control characters, '/', a leading '.', not UTF-8."""
    assert session.send(b"PUTSCRIPT " + name + b' "keep;"\r\n') == reply + b"\r\n"
    assert not (session.home / "sieve").exists()


def test_quota_on_count_size_and_storage(tmp_path: Path) -> None:
    """HAVESPACE and PUTSCRIPT: QUOTA/MAXSIZE, QUOTA/MAXSCRIPTS and QUOTA (storage)
    (RFC 5804 §1.3, §2.5); replacing a script counts its new size only."""
    s = Session(
        tmp_path, limits=ManageSieveSettings(max_scripts=2, max_script_size=100, max_storage=150)
    )
    s.login()
    assert s.send(b'HAVESPACE "a" 100\r\n') == b"OK\r\n"
    assert s.send(b'HAVESPACE "a" 101\r\n') == (
        b'NO (QUOTA/MAXSIZE) "Script is too large: at most 100 bytes"\r\n'
    )
    big = b"#" * 90 + b"\r\nkeep;"
    assert s.send(b'PUTSCRIPT "a" {%d+}\r\n%s\r\n' % (len(big), big)) == b'OK "Script stored"\r\n'
    assert s.send(b'PUTSCRIPT "b" {%d+}\r\n%s\r\n' % (len(big), big)) == (
        b'NO (QUOTA) "Script storage quota exceeded: at most 150 bytes"\r\n'
    )
    assert s.send(b'PUTSCRIPT "a" {%d+}\r\n%s\r\n' % (len(big), big)) == b'OK "Script stored"\r\n'
    assert s.send(b'PUTSCRIPT "b" "keep;"\r\n') == b'OK "Script stored"\r\n'
    assert s.send(b'HAVESPACE "c" 1\r\n') == (
        b'NO (QUOTA/MAXSCRIPTS) "Script count quota exceeded: at most 2 scripts"\r\n'
    )
    assert s.send(b'PUTSCRIPT "c" {101+}\r\n' + b"x" * 101 + b"\r\n") == (
        b'NO (QUOTA/MAXSIZE) "Script is too large: at most 100 bytes"\r\n'
    )
    assert s.send(b"NOOP\r\n") == b'OK "Done"\r\n'


def test_noop_tag_unauthenticate_and_logout(session: Session) -> None:
    """NOOP echoes its tag (RFC 5804 §2.13), UNAUTHENTICATE goes back (§2.14), LOGOUT
    answers OK and closes (§2.3)."""
    assert session.send(b'NOOP "STARTTLS-RESYNC-CAPA"\r\n') == (
        b'OK (TAG "STARTTLS-RESYNC-CAPA") "Done"\r\n'
    )
    assert session.send(b"UNAUTHENTICATE\r\n") == b'OK "Unauthenticated"\r\n'
    assert session.send(b"LISTSCRIPTS\r\n") == b'NO "Authenticate first"\r\n'
    assert session.send(b"LOGOUT\r\nNOOP\r\n") == b'OK "Logout completed"\r\n'
    assert session.transport.disconnecting


def test_idle_timeout_says_bye(tmp_path: Path) -> None:
    """An idle session gets BYE at the idle timeout, not a second before, and is closed."""
    s = Session(tmp_path, limits=ManageSieveSettings(idle_timeout=60))
    s.clock.advance(59)
    assert s.take() == b""
    s.clock.advance(1)
    assert s.take() == b'BYE "Disconnected for inactivity"\r\n'
    assert s.transport.disconnecting


def test_overlong_line_says_bye(tmp_path: Path) -> None:
    """A command line over the limit gets BYE "Line too long" and the connection closes."""
    s = Session(tmp_path)
    assert s.send(b"NOOP " + b"x" * MAX_LINE_LENGTH) == b'BYE "Line too long"\r\n'
    assert s.transport.disconnecting


def test_a_command_in_part_is_acknowledged_at_once(tmp_path: Path) -> None:
    """RFC 5804 §4: a PUTSCRIPT whose literal has come in part gets a TCP ACK at once
    (wire.ack_now), so that a client's Nagle does not hold the rest for our delayed ACK; a
    whole command does not need one (its reply carries the ACK)."""
    s = Session(tmp_path)
    s.login()
    with tcp_connection() as sock:
        s.transport.socket = sock  # type: ignore[attr-defined]
        assert s.send(b"NOOP\r\n") == b'OK "Done"\r\n'
        assert quickack(sock) == 0
        assert s.send(b'PUTSCRIPT "a" {5+}\r\nke') == b""
        assert quickack(sock) == 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        assert s.send(b"ep;\r\n") == b'OK "Script stored"\r\n'
        assert quickack(sock) == 0
        assert s.store.get("a") == b"keep;"
