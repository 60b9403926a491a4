"""The ESMTP session, policy-free: the SMTP wire protocol and the extensions twistedmail offers.

Implements RFC 5321 (§4.1 commands, §4.5.2 transparency, §4.4 trace information, §4.5.3
limits), RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 2920 PIPELINING, RFC 2034 / RFC 3463
ENHANCEDSTATUSCODES, RFC 3207 STARTTLS, RFC 4954 AUTH with PLAIN (RFC 4616) and LOGIN, and
the RFC 3848 with-protocol keywords of the Received: header.

The session is C{twisted.mail.smtp.ESMTP} (its COMMAND/DATA/AUTH modes and C{do_X}/C{ext_X}
command lookup) on top of L{twistedmail.wire.StrictLineReceiver}, with the commands Twisted
gets wrong replaced.  Each item says what stock C{ESMTP} (Twisted 26.10) did, as reproduced
over loopback; C{tests/test_attacks_smtp.py} sends the same bytes:

  - (a) only CRLF.CRLF ends DATA (RFC 5321 §4.1.1.4: never <LF>.<LF>, <CRLF>.<LF>,
    <LF>.<CRLF>, ...); a bare CR or LF in message data fails the transaction with
    C{550 5.6.0} after the final dot, nothing stored; with C{bare_lf="normalize"} a bare LF
    is stored as CRLF instead (a bare CR still fails), and still never ends the data.  Stock
    Twisted passed bare CR and LF through to the message, where they became line breaks;
  - (b) an over-long command line is answered C{500 5.5.6} once; an unterminated flood is
    discarded in constant memory, answered once and disconnected.  Stock Twisted answered
    once per TCP read and kept the whole unterminated buffer, re-splitting it on every read
    (40 MiB without a CRLF cost 34 s of reactor CPU and the connection stayed open);
  - (b') an over-long line inside DATA fails the transaction and the session stays in DATA
    (body lines never run as commands).  Stock Twisted went back to command mode there, so
    a body line "MAIL FROM:..." started a second, delivered transaction;
  - (c) AUTH only after TLS (C{530 5.7.0} before), undecodable AUTH input gets C{501}, a
    malformed SASL message C{535} (L{twistedmail.sasl}).  Stock Twisted accepted AUTH PLAIN
    in cleartext and dropped the connection on AUTH without a mechanism or a PLAIN response
    without NULs;
  - (d) STARTTLS drops every byte pipelined after it and resets the session (RFC 3207 §4.2).
    Stock Twisted ran commands sent in the same packet as STARTTLS, and their replies were
    the first lines read inside TLS (command injection); MAIL before STARTTLS survived it;
  - NOOP, VRFY, HELP (stock: C{500}); MAIL before HELO/EHLO refused (stock: accepted); SIZE
    and BODY parameters handled (stock: silently ignored).

What a listener accepts (who may send, to whom, where the message goes) is a
L{twistedmail.smtp.policy.SessionPolicy}: L{twistedmail.smtp.inbound} (port 25) and
L{twistedmail.smtp.submission} (587/465); local recipients are L{twistedmail.smtp.recipients}
and the Received: header L{twistedmail.smtp.trace}.  Refusals take one path: a command,
an AUTH step or a policy raises L{twistedmail.smtp.policy.SMTPReplyError} with its reply
(L{twistedmail.reply}), and the dispatcher (L{SMTPSession.lineReceived}, or the errback of a
command's coroutine in L{SMTPSession._run}) sends it; RFC 5321 §4.2 replies, RFC 3463 codes.

Limits (RFC 5321 §4.5.3.1): command lines may be up to L{MAX_LINE_LENGTH} octets (16 KiB),
message text lines up to the session's C{max_line_length} (default the same 16 KiB), more
than the 512/1000 octets of §4.5.3.1.4 and §4.5.3.1.6, because real mail (generated HTML,
long base64 lines from broken clients) exceeds 1000 octets and the RFC lets a server accept
more.  A longer text line fails the transaction (C{500 5.6.0} after the dot, §4.5.3.1.10:
500 "line too long"): Postfix would accept it and split it, but a stored message is kept
exactly as received, so it is refused rather than altered.  The header section (up to the
first empty line, or the first line that is not a header field) may be up to
C{max_header_size} octets (C{552 5.3.4} beyond).  Either check is one pass over the lines
(linear), and a failed transaction stores nothing.  An unterminated line is disconnected
after L{FLOOD_LIMIT} octets.  Message data is held in memory up to the session's
C{max_message_size}, then discarded (C{552 5.3.4}).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLContextFactory, IReactorTime, ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from twistedmail import auth, metrics, sasl
from twistedmail.address import (
    AddressError,
    Mailbox,
    NonASCIIAddressError,
    ParameterSyntaxError,
    PathTooLongError,
    normalize_domain,
    parse_parameters,
    parse_path,
)
from twistedmail.maildir import StorageReserve
from twistedmail.reply import (
    REPLY_214_HELP,
    REPLY_220_READY,
    REPLY_220_TLS_READY,
    REPLY_221_BYE,
    REPLY_235_AUTH_OK,
    REPLY_250_NOOP,
    REPLY_250_QUEUED,
    REPLY_250_RECIPIENT_OK,
    REPLY_250_RESET,
    REPLY_250_SENDER_OK,
    REPLY_252_CANNOT_VRFY,
    REPLY_354_DATA,
    REPLY_421_AUTH_FAILURES,
    REPLY_421_TIMEOUT,
    REPLY_451_LOCAL_ERROR,
    REPLY_452_STORAGE,
    REPLY_452_TOO_MANY_RECIPIENTS,
    REPLY_454_AUTH_TEMP,
    REPLY_454_LOGIN_BLOCKED,
    REPLY_454_TLS_UNAVAILABLE,
    REPLY_500_AUTH_LINE_TOO_LONG,
    REPLY_500_BARE_LF_COMMAND,
    REPLY_500_LINE_TOO_LONG,
    REPLY_500_TEXT_LINE_TOO_LONG,
    REPLY_500_UNKNOWN_COMMAND,
    REPLY_501_AUTH_CANCELLED,
    REPLY_501_BAD_ADDRESS,
    REPLY_501_BAD_BASE64,
    REPLY_501_BAD_BODY,
    REPLY_501_BAD_NOTIFY,
    REPLY_501_BAD_SENDER,
    REPLY_501_PATH_TOO_LONG,
    REPLY_501_SENDER_PATH_TOO_LONG,
    REPLY_501_SYNTAX,
    REPLY_502_NOT_IMPLEMENTED,
    REPLY_503_ALREADY_AUTH,
    REPLY_503_AUTH_IN_TRANSACTION,
    REPLY_503_EHLO_FIRST,
    REPLY_503_MAIL_FIRST,
    REPLY_503_NESTED_MAIL,
    REPLY_503_RCPT_FIRST,
    REPLY_503_TLS_ACTIVE,
    REPLY_504_AUTH_MECHANISM,
    REPLY_530_TLS_REQUIRED,
    REPLY_535_AUTH_FAILED,
    REPLY_550_BARE_LF,
    REPLY_552_HEADER_TOO_BIG,
    REPLY_552_TOO_BIG,
    REPLY_553_NON_ASCII_ADDRESS,
    REPLY_554_PREGREET,
    REPLY_555_BAD_PARAMETER,
    Reply,
)
from twistedmail.settings import SMTPSettings
from twistedmail.smtp.policy import (
    Client,
    Envelope,
    IAuthenticatedUser,
    SessionPolicy,
    SMTPReplyError,
)
from twistedmail.smtp.trace import received_header
from twistedmail.wire import CRLF, StrictLineReceiver, plain_tcp, write_at_once

log = Logger(namespace="twistedmail.smtp")

MAX_LINE_LENGTH = 16384  # octets without CRLF, for command, AUTH and data lines
FLOOD_LIMIT = 1 << 20  # octets of one unterminated line before the session is closed
IDLE_TIMEOUT = SMTPSettings().idle_timeout  # the class default before a session's own
MAX_AUTH_FAILURES = 3  # failed AUTH attempts per session before 421
MAX_HELO_LENGTH = 255  # RFC 5321 §4.5.3.1.2

COMMAND, DATA, AUTH = smtp.COMMAND, smtp.DATA, smtp.AUTH

_VERB = re.compile(rb"[A-Za-z]{1,16}")
_MAIL_FROM = re.compile(rb"FROM:(.*)", re.I | re.S)
_RCPT_TO = re.compile(rb"TO:(.*)", re.I | re.S)
_POSTMASTER = re.compile(r"\s*<postmaster>(.*)", re.I | re.S)
_PRINTABLE = re.compile(rb"[\x21-\x7e]+")
_SASL_MECHANISMS = (b"PLAIN", b"LOGIN")
_SASL_OFFERED = tuple(m.decode("ascii") for m in _SASL_MECHANISMS)
# RFC 5322 §2.2: a header field starts with its name (printable ASCII but ":") and ":",
# a folded continuation line with WSP (§2.2.3).
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:|[ \t]")


async def _resume(work: Coroutine[Any, Any, Reply], awaited: Any) -> Reply:
    """The rest of C{work}, which has just yielded C{awaited} (the Deferred it waits on):
    drives it as C{Deferred.fromCoroutine} would have from the start (L{SMTPSession._run})."""
    while True:
        value: Any = None
        error: BaseException | None = None
        try:
            value = await awaited
        except BaseException as e:  # into the command's coroutine, at its await
            error = e
        try:
            awaited = work.send(value) if error is None else work.throw(error)
        except StopIteration as done:
            result: Reply = done.value
            return result


_BAD_PARAMETER_VALUE = {"BODY": REPLY_501_BAD_BODY, "NOTIFY": REPLY_501_BAD_NOTIFY}
"""The replies naming the parameter whose value is malformed (Postfix's words)."""


def _check_parameters(params: str) -> None:
    """@raise SMTPReplyError: 501 5.5.4 when C{params} is no list of RFC 5321 §4.1.2
    C{esmtp-param} words (an unknown but well-formed one is for the caller: 555); it names
    BODY or NOTIFY when that parameter's value is the malformed part."""
    try:
        parse_parameters(params)
    except ParameterSyntaxError as e:
        raise SMTPReplyError(_BAD_PARAMETER_VALUE.get(e.keyword or "", REPLY_501_SYNTAX)) from None


def _path_argument(raw: bytes, sender: bool) -> tuple[Mailbox | None, str]:
    """The path and parameters of C{MAIL FROM:} (C{sender}) or C{RCPT TO:} (RFC 5321 §4.1.2).

    @raise SMTPReplyError: 501 5.1.7 / 5.1.3 for a malformed path, C{501 Path too long}
        (§4.5.3.1.10), 553 5.6.7 for a non-ASCII address (no SMTPUTF8 is offered, RFC 6531
        §3.5), 501 5.5.4 for malformed parameters.
    """
    try:
        # octets that are not UTF-8 spoil the path, or else the parameters (501 5.5.4)
        path, params = parse_path(raw.decode("utf-8", "surrogateescape"))
    except PathTooLongError:
        too_long = REPLY_501_SENDER_PATH_TOO_LONG if sender else REPLY_501_PATH_TOO_LONG
        raise SMTPReplyError(too_long) from None
    except NonASCIIAddressError:
        raise SMTPReplyError(REPLY_553_NON_ASCII_ADDRESS) from None
    except AddressError:
        raise SMTPReplyError(REPLY_501_BAD_SENDER if sender else REPLY_501_BAD_ADDRESS) from None
    _check_parameters(params)
    return path, params


class SMTPSession(StrictLineReceiver, smtp.ESMTP):
    """One ESMTP server session (RFC 5321), policy-free.

    @param policy: who may send what to whom (L{SessionPolicy}).
    @param hostname: our name in the greeting, EHLO reply and Received: header.
    @param clock: for the idle timeout (L{IDLE_TIMEOUT} seconds) and Received: dates.
    @param tls_context: offers STARTTLS when given and the transport can start TLS.
    @param implicit_tls: the listener is already TLS (port 465, RFC 8314 §3.3): no
        STARTTLS, AUTH allowed at once.
    @param portal: offers AUTH PLAIN LOGIN under TLS when given; logins ask it for
        L{IAuthenticatedUser} (see L{auth_portal}).
    @param settings: the listener's L{SMTPSettings}: C{max_message_size} (RFC 1870 SIZE);
        C{idle_timeout}, seconds without a command before C{421 4.4.2} and close; past
        C{max_recipients} RCPTs get C{452 4.5.3} (RFC 5321 §4.5.3.1.10); a text line over
        C{max_line_length} fails the transaction with C{500 5.6.0}, a header section over
        C{max_header_size} (lines with their CRLF) with C{552 5.3.4}; C{bare_lf}
        C{"reject"} (a bare CR or LF fails the message, C{550 5.6.0}) or C{"normalize"} (a
        bare LF is stored as CRLF; a bare CR still fails), in both modes only CRLF "." CRLF
        ends the data (RFC 5321 §2.3.8, §4.1.1.4); C{greet_pause}, seconds before the 220.
    @param storage_reserve: when given, no new mail while the data dir is short of space.
    """

    MAX_LENGTH = MAX_LINE_LENGTH
    timeout = IDLE_TIMEOUT
    portal: Portal | None  # type: ignore[assignment]  # SMTP declares it as None
    has_sender: bool
    reverse_path: Mailbox | None
    recipients: list[Mailbox]
    body_type: str
    declared_size: int  # MAIL FROM SIZE= (RFC 1870), 0 when not given
    _data_lines: list[bytes]
    _data_size: int
    _data_failed: Reply | None
    _in_header: bool
    _header_size: int

    def __init__(
        self,
        *,
        policy: SessionPolicy,
        hostname: str,
        clock: IReactorTime,
        settings: SMTPSettings,
        tls_context: IOpenSSLContextFactory | None = None,
        implicit_tls: bool = False,
        portal: Portal | None = None,
        storage_reserve: StorageReserve | None = None,
    ) -> None:
        smtp.ESMTP.__init__(self, chal={}, contextFactory=tls_context)
        self.timeout = settings.idle_timeout
        self.max_recipients = settings.max_recipients
        self.max_line_length = settings.max_line_length
        self.MAX_LENGTH = max(MAX_LINE_LENGTH, settings.max_line_length)
        self.max_header_size = settings.max_header_size
        self.bare_lf = settings.bare_lf
        self.greet_pause = settings.greet_pause
        self.storage_reserve = storage_reserve
        self.host = hostname
        self.hostname = hostname
        self.policy = policy
        self.clock = clock
        self.callLater = clock.callLater  # type: ignore[method-assign,assignment]  # TimeoutMixin
        self.portal = portal
        self.implicit_tls = implicit_tls
        self.max_message_size = settings.max_message_size
        self.session_id = secrets.token_hex(6)
        self.peer_ip = "unknown"
        self.tls = implicit_tls
        self.helo: str | None = None
        self.esmtp = False
        self.user: str | None = None
        self._auth_failures = 0
        self._transactions = 0
        self._closed = False
        self._unterminated = 0
        self._auth_exchange: sasl.Exchange | None = None
        self._tcp: Any = None  # the plain TCP connection replies go to at once (L{_write})
        self._reset_transaction()

    # -- connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = str(getattr(peer, "host", peer))
        self._tcp = plain_tcp(self.transport)
        self.canStartTLS = (
            self.ctx is not None and not self.tls and ITLSTransport.providedBy(self.transport)
        )
        log.info(
            "session {session} from {ip} on {service} (tls={tls})",
            session=self.session_id,
            ip=self.peer_ip,
            service=self.policy.service,
            tls=self.tls,
        )
        self.policy.connected(self.client())
        if self.greet_pause > 0:
            self._greeting = self.clock.callLater(self.greet_pause, self._send_greeting)
        else:
            self._send_greeting()
        self.setTimeout(self.timeout)

    greet_pause: float = 0
    """Seconds the greeting waits; a client that talks first is refused (L{_pregreet})."""
    _greeting: Any = None

    def _send_greeting(self) -> None:
        self._greeting = None
        # RFC 5321 §4.2: the greeting starts with our domain.
        self._write(b"220 %s %s\r\n" % (self.host, REPLY_220_READY.message()))

    def _pregreet(self) -> None:
        """The client sent before our 220 (Postfix postscreen's pregreet test): a spambot
        that does not wait for the greeting (RFC 5321 §4.3.1: the client waits for it)."""
        self._greeting.cancel()
        self._greeting = None
        log.warn(
            "session {session}: client [{ip}] talked before greeting (pregreet)",
            session=self.session_id,
            ip=self.peer_ip,
        )
        self.transport.write(REPLY_554_PREGREET.line() + CRLF)
        self._closed = True
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.mode == DATA and not self._closed and not self.transport.disconnecting:
            # The client went away before the end-of-data line: no transaction (RFC 5321
            # §4.1.1.4), nothing stored; said once, as Postfix's "lost connection after DATA".
            log.info(
                "session {session}: lost connection after DATA from [{ip}]"
                " ({octets} octets received)",
                session=self.session_id,
                ip=self.peer_ip,
                octets=self._data_size + len(self._buffer),
            )
        if self._greeting is not None:
            self._greeting.cancel()
            self._greeting = None
        self._closed = True
        self.setTimeout(None)
        self._data_lines = []

    def timeoutConnection(self) -> None:
        log.info("session {session}: idle timeout", session=self.session_id)
        self.send_reply(REPLY_421_TIMEOUT)

    _client: tuple[tuple[object, ...], Client] | None = None

    def client(self) -> Client:
        """A snapshot of the session for the policy: the same (immutable) one while none of
        its fields changed (issue 10: made anew it was four frozen objects a message)."""
        key = (self.peer_ip, self.helo, self.esmtp, self.tls, self.user, self.declared_size)
        made = self._client
        if made is not None and made[0] == key:
            return made[1]
        client = Client(
            session_id=self.session_id,
            peer_ip=self.peer_ip,
            helo=self.helo or "",
            esmtp=self.esmtp,
            tls=self.tls,
            user=self.user,
            declared_size=self.declared_size,
        )
        self._client = (key, client)
        return client

    # -- output ----------------------------------------------------------------------

    def send_reply(self, reply: Reply) -> None:
        """Write one reply; a 421 closes the connection (RFC 5321 §3.8)."""
        if self._closed:
            return
        self._write(reply.wire)
        if reply.code == 421:
            self.transport.loseConnection()

    def send_lines(self, code: int, lines: list[bytes]) -> None:
        """A multiline reply (RFC 5321 §4.2.1): C{code-} on every line but the last."""
        out = [b"%d-%s\r\n" % (code, line) for line in lines[:-1]]
        out.append(b"%d %s\r\n" % (code, lines[-1]))
        self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        """Send C{data} now when nothing is queued before it, on a plain TCP connection
        (L{twistedmail.wire.write_at_once}: no reactor turn per reply, issue 10); else
        through the transport (TLS, or bytes already queued)."""
        tcp = self._tcp
        if tcp is None or not write_at_once(tcp, data):
            self.transport.write(data)

    # -- input -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._greeting is not None:
            self._pregreet()
            return
        if self._closed:
            return
        if self._discarding:
            self._unterminated += len(data)
        super().dataReceived(data)
        if (
            self._discarding
            and self._unterminated > FLOOD_LIMIT
            and not self.transport.disconnecting
        ):
            # (b) of the module docstring: an unterminated line was discarded in constant
            # memory (stock Twisted buffered it all, quadratic CPU); one reply in all (in
            # COMMAND mode it was sent when the line got too long), then disconnect.
            log.warn("session {session}: unterminated line flood", session=self.session_id)
            if self.mode == DATA:
                self.send_reply(REPLY_500_TEXT_LINE_TOO_LONG)
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._discarding:
            self._unterminated = len(line)
        if self.mode == DATA:
            # RFC 5321 §4.5.3.1.6 text line limit.  Stay in DATA and answer after the dot:
            # stock Twisted switched to command mode here, and the rest of the body ran as
            # SMTP commands (module docstring, (b')).
            self._fail_data(REPLY_500_TEXT_LINE_TOO_LONG)
        elif self.mode == AUTH:
            self._end_auth()
            self.send_reply(REPLY_500_AUTH_LINE_TOO_LONG)  # RFC 4954 §4
        else:
            self.send_reply(REPLY_500_LINE_TOO_LONG)  # RFC 5321 §4.5.3.1.4, §4.2.2

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        try:
            getattr(self, "state_" + self.mode)(line)
        except SMTPReplyError as e:
            # The one refusal path: a command (or an AUTH step) raises its reply, sent here.
            self.send_reply(e.reply)
        except Exception:
            log.failure(
                "session {session}: error in {mode}", session=self.session_id, mode=self.mode
            )
            if self.mode == DATA:
                self._fail_data(REPLY_451_LOCAL_ERROR)  # stay in DATA: answer after the dot
            else:
                self.mode = COMMAND
                self._end_auth()
                self._reset_transaction()
                self.send_reply(REPLY_451_LOCAL_ERROR)

    def state_COMMAND(self, line: bytes) -> None:
        if b"\r" in line or b"\n" in line:
            # RFC 5321 §2.3.8: CR and LF appear only together, as the line end.
            raise SMTPReplyError(REPLY_500_BARE_LF_COMMAND)
        parts = line.strip().split(None, 1)
        if not parts or not _VERB.fullmatch(parts[0]):
            raise SMTPReplyError(REPLY_500_UNKNOWN_COMMAND)
        method = self.lookupMethod(parts[0]) or self.do_UNKNOWN
        method(parts[1].strip() if len(parts) == 2 else b"")

    def _run(self, work: Coroutine[Any, Any, Reply]) -> None:
        """Run a command's coroutine; send its reply (or its L{SMTPReplyError}'s: a refusal
        raised after the command returned to L{lineReceived}).

        While it is pending, later pipelined lines are held (RFC 2920 §3: replies in
        command order).  A coroutine that finishes without waiting (MAIL, and RCPT with
        every lookup in memory) is run here, without a Deferred (issue 10: that machinery
        was most of such a command's cost).
        """
        try:
            awaited = work.send(None)
        except StopIteration as done:
            self.send_reply(done.value)
            return
        except Exception:
            self._command_failed(Failure())
            return
        d = Deferred.fromCoroutine(_resume(work, awaited))
        d.addCallbacks(self.send_reply, self._command_failed)
        if not d.called:
            self.pause_lines()
            d.addBoth(self._command_finished)

    def _command_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, SMTPReplyError):
            self.send_reply(failure.value.reply)
            return
        log.failure("session {session}: command failed", failure, session=self.session_id)
        self.send_reply(REPLY_451_LOCAL_ERROR)

    def _command_finished(self, result: object) -> None:
        if not self._closed:
            self.resetTimeout()
            self.resume_lines()

    # -- commands (RFC 5321 §4.1.1) ----------------------------------------------------

    def do_UNKNOWN(self, rest: bytes) -> None:
        raise SMTPReplyError(REPLY_500_UNKNOWN_COMMAND)

    def do_HELO(self, rest: bytes) -> None:
        self._greet(rest, esmtp=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._greet(rest, esmtp=True)

    def _greet(self, rest: bytes, esmtp: bool) -> None:
        if not _PRINTABLE.fullmatch(rest) or len(rest) > MAX_HELO_LENGTH:
            raise SMTPReplyError(REPLY_501_SYNTAX)
        self.helo = rest.decode("ascii")
        self.esmtp = esmtp
        self._reset_transaction()  # RFC 5321 §4.1.4: HELO/EHLO implies RSET
        # RFC 2034 §3: no enhanced status code in the HELO/EHLO reply.
        if esmtp:
            extensions = self.listExtensions().split(b"\n")
            self.send_lines(250, [self.host, *extensions])
        else:
            self._write(b"250 %s\r\n" % (self.host,))

    def extensions(self) -> dict[bytes, list[bytes] | None]:
        """The EHLO keywords (RFC 5321 §4.1.1.1), as C{ESMTP.listExtensions} wants them."""
        ext: dict[bytes, list[bytes] | None] = {
            b"PIPELINING": None,  # RFC 2920
            b"SIZE": [b"%d" % self.max_message_size],  # RFC 1870 §4
            b"8BITMIME": None,  # RFC 6152
            b"ENHANCEDSTATUSCODES": None,  # RFC 2034
        }
        if self.canStartTLS and not self.tls:
            ext[b"STARTTLS"] = None  # RFC 3207 §4.2: not after TLS is active
        if self._auth_offered():
            ext[b"AUTH"] = list(_SASL_MECHANISMS)  # RFC 4954 §3, only under TLS
        return ext

    def _auth_offered(self) -> bool:
        return self.portal is not None and self.tls

    def do_NOOP(self, rest: bytes) -> None:
        self.send_reply(REPLY_250_NOOP)  # RFC 5321 §4.1.1.9: parameters ignored

    def do_RSET(self, rest: bytes) -> None:
        self._reset_transaction()
        self.send_reply(REPLY_250_RESET)

    def do_VRFY(self, rest: bytes) -> None:
        if not rest:
            raise SMTPReplyError(REPLY_501_SYNTAX)
        # RFC 5321 §3.5.3: 252 when we do not verify (no address harvesting).
        self.send_reply(REPLY_252_CANNOT_VRFY)

    def do_EXPN(self, rest: bytes) -> None:
        raise SMTPReplyError(REPLY_502_NOT_IMPLEMENTED)  # RFC 5321 §3.5.2: may be disabled

    def do_HELP(self, rest: bytes) -> None:
        self.send_reply(REPLY_214_HELP)

    def do_QUIT(self, rest: bytes) -> None:
        self.send_reply(REPLY_221_BYE)
        self.transport.loseConnection()  # RFC 5321 §4.1.1.10

    # -- mail transaction (RFC 5321 §3.3) ----------------------------------------------

    def _reset_transaction(self) -> None:
        self.has_sender = False
        self.reverse_path = None
        self.recipients = []
        self.body_type = "7BIT"
        self.declared_size = 0
        self._data_lines = []
        self._data_size = 0
        self._data_failed = None
        self._in_header = True
        self._header_size = 0
        self.lf_ends_lines = False
        self.take_bulk = False

    def do_MAIL(self, rest: bytes) -> None:
        if self.helo is None:
            raise SMTPReplyError(REPLY_503_EHLO_FIRST)  # RFC 5321 §4.1.4
        if self.has_sender:
            raise SMTPReplyError(REPLY_503_NESTED_MAIL)  # RFC 5321 §4.1.4
        m = _MAIL_FROM.fullmatch(rest)
        if m is None:
            raise SMTPReplyError(REPLY_501_SYNTAX)
        reverse_path, params = _path_argument(m.group(1), sender=True)
        body, size = self._mail_parameters(params)
        self._run(self._mail(reverse_path, body, size))

    def _mail_parameters(self, params: str) -> tuple[str, int]:
        """Check MAIL FROM parameters; return the BODY type and the SIZE (0: not given).

        @raise SMTPReplyError: 555 for an unknown parameter or value (RFC 5321 §4.1.1.11),
            501 for a malformed one, 552 for a SIZE over the limit (RFC 1870 §6).
        """
        body, size = "7BIT", 0
        seen: set[str] = set()
        for word in params.split():
            keyword, eq, value = word.partition("=")
            keyword = keyword.upper()
            if keyword in seen:
                raise SMTPReplyError(REPLY_501_SYNTAX)
            seen.add(keyword)
            if keyword == "SIZE":
                if not (value.isascii() and value.isdigit()) or len(value) > 20:
                    raise SMTPReplyError(REPLY_501_SYNTAX)
                if int(value) > self.max_message_size:
                    raise SMTPReplyError(REPLY_552_TOO_BIG)  # RFC 1870 §6.2
                size = int(value)
            elif keyword == "BODY":
                if value.upper() not in ("7BIT", "8BITMIME"):  # RFC 6152 §2
                    raise SMTPReplyError(REPLY_555_BAD_PARAMETER)
                body = value.upper()
            elif keyword == "AUTH" and self._auth_offered():
                # RFC 4954 §5: a server offering AUTH accepts AUTH=; we do not trust it.
                if not eq or not value:
                    raise SMTPReplyError(REPLY_501_SYNTAX)
            else:
                raise SMTPReplyError(REPLY_555_BAD_PARAMETER)
        return body, size

    storage_reserve: StorageReserve | None = None
    """Free space kept in the data dir: below it new mail gets C{452 4.3.1} (RFC 3463
    §3.4 "mail system full"; Postfix's queue_minfree)."""

    def _check_room(self, size: int = 0) -> None:
        """@raise SMTPReplyError: C{452 4.3.1} below the storage reserve (RFC 5321 §4.2.5:
        a temporary failure, the client tries again later)."""
        if self.storage_reserve is not None and not self.storage_reserve.has_room(size):
            raise SMTPReplyError(REPLY_452_STORAGE)

    async def _mail(self, reverse_path: Mailbox | None, body: str, size: int = 0) -> Reply:
        self._check_room(size)
        await self.policy.check_sender(self.client(), reverse_path)
        self.has_sender = True
        self.reverse_path = reverse_path
        self.body_type = body
        self.declared_size = size
        self.recipients = []
        return REPLY_250_SENDER_OK

    def do_RCPT(self, rest: bytes) -> None:
        if not self.has_sender:
            raise SMTPReplyError(REPLY_503_MAIL_FIRST)  # RFC 5321 §4.1.4
        m = _RCPT_TO.fullmatch(rest)
        if m is None:
            raise SMTPReplyError(REPLY_501_SYNTAX)
        postmaster = _POSTMASTER.fullmatch(m.group(1).decode("ascii", "replace"))
        if postmaster:
            # RFC 5321 §4.5.1: <Postmaster> without a domain MUST be accepted.
            recipient: Mailbox | None = self.policy.postmaster(self.hostname) or Mailbox(
                "postmaster", normalize_domain(self.hostname)
            )
            params = postmaster.group(1)
            _check_parameters(params)
        else:
            recipient, params = _path_argument(m.group(1), sender=False)
        if recipient is None:
            # RFC 5321 §4.1.1.3: no null forward-path
            raise SMTPReplyError(REPLY_501_BAD_ADDRESS)
        if params.strip():
            raise SMTPReplyError(REPLY_555_BAD_PARAMETER)  # no RCPT parameters are offered
        if len(self.recipients) >= self.max_recipients:
            raise SMTPReplyError(REPLY_452_TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10
        self._run(self._rcpt(recipient))

    async def _rcpt(self, recipient: Mailbox) -> Reply:
        self._check_room(self.declared_size)
        await self.policy.check_recipient(self.client(), recipient)
        if recipient not in self.recipients:
            self.recipients.append(recipient)
        return REPLY_250_RECIPIENT_OK

    def do_DATA(self, rest: bytes) -> None:
        if rest:
            raise SMTPReplyError(REPLY_501_SYNTAX)
        if not self.has_sender:
            raise SMTPReplyError(REPLY_503_MAIL_FIRST)
        if not self.recipients:
            raise SMTPReplyError(REPLY_503_RCPT_FIRST)  # RFC 5321 §3.3: no valid recipients
        self.mode = DATA
        self._data_lines = []
        self._data_size = 0
        self._data_failed = None
        self._in_header = True
        self._header_size = 0
        # "normalize": the wire layer ends lines at a bare LF too, and says which did.
        self.lf_ends_lines = self.bare_lf == "normalize"
        self.take_bulk = not self.lf_ends_lines  # DATA as a stream: bulk_lines
        self.send_reply(REPLY_354_DATA)

    def bulk_lines(self, buf: bytes, start: int) -> int:
        """DATA as a stream: take every complete line of C{buf} before the end-of-data line
        at once, checked and dot-unstuffed on bytes (one idle-timer reset per read, not per
        line).  Only with C{bare_lf="reject"}, where only CRLF ends a line, so the end of data
        is the first CRLF "." CRLF (RFC 5321 §4.1.1.4) and every CRLF "." starts a
        dot-stuffed line (§4.5.2).  The final dot line is left to L{state_DATA}; a region
        with anything unusual (bare CR or LF, an over-long line, the header section, the size
        limit reached) goes line by line through L{state_DATA}, so every check and reply is
        exactly that of the line-by-line path.
        """
        if buf.startswith(b".\r\n", start):
            return start  # the end of data, for state_DATA
        end = buf.find(b"\r\n.\r\n", start)
        if end >= 0:
            cut = end + 2
        else:
            last = buf.rfind(CRLF, start)
            if last < 0:
                return start  # no complete line yet
            cut = last + 2
        self.resetTimeout()
        if self._data_failed is None:  # after a failure, lines are only counted to the dot
            try:
                self._data_region(buf[start:cut])
            except Exception:
                log.failure("session {session}: error in DATA", session=self.session_id)
                self._fail_data(REPLY_451_LOCAL_ERROR)
        return cut

    def _data_region(self, region: bytes) -> None:
        """Complete message lines (CRLF-terminated, no end-of-data line among them)."""
        pos = 0
        while self._in_header and pos < len(region) and self._data_failed is None:
            pos = self._data_line(region, pos)  # the header section is checked line by line
        if pos:
            region = region[pos:]
        if not region or self._data_failed is not None:
            return
        lines = region.count(CRLF)
        if (
            region.count(b"\r") == lines
            and region.count(b"\n") == lines  # RFC 5321 §2.3.8: no bare CR or LF
            and (
                len(region) <= self.max_line_length + 2
                or max(map(len, region.split(CRLF))) <= self.max_line_length
            )
        ):
            text = region[1:] if region[:1] == b"." else region  # §4.5.2 transparency
            if b"\r\n." in text:
                text = text.replace(b"\r\n.", CRLF)
            if self._data_size + len(text) <= self.max_message_size:
                self._data_size += len(text)
                self._data_lines.append(text)
                return
        pos = 0
        while pos < len(region):
            pos = self._data_line(region, pos)

    def _data_line(self, region: bytes, pos: int) -> int:
        """The line of C{region} at C{pos}, as the wire layer would deliver it; returns the
        offset of the next line."""
        end = region.index(CRLF, pos)
        if end - pos > self.MAX_LENGTH:
            self.lineLengthExceeded(region[pos : pos + self.MAX_LENGTH])
        else:
            self.lineReceived(region[pos:end])
        return end + 2

    def state_DATA(self, line: bytes) -> None:
        # Both False unless bare_lf="normalize" (then a bare LF ended the line / the one before).
        bare, after_bare = self.line_ended_bare, self.previous_line_ended_bare
        if line == b".":
            if not bare and not after_bare:
                # RFC 5321 §4.1.1.4: only CRLF "." CRLF ends the data (module docstring, (a));
                # <LF>.<LF>, <CRLF>.<LF>, <LF>.<CRLF> never do (§2.3.8, SMTP smuggling):
                # in "normalize" mode such a dot line is kept as text.
                self._end_of_data()
                return
        elif line[:1] == b"." and not after_bare:
            line = line[1:]  # RFC 5321 §4.5.2 transparency, at a line start after CRLF
        if self._data_failed is not None:
            return
        if b"\r" in line or b"\n" in line:
            # RFC 5321 §2.3.8: a bare CR or LF is not a line end and MUST NOT be stored as one
            # ("normalize" stores a bare LF as CRLF: the wire layer split the line there).
            self._fail_data(REPLY_550_BARE_LF)
            return
        if len(line) > self.max_line_length:
            self._fail_data(REPLY_500_TEXT_LINE_TOO_LONG)  # RFC 5321 §4.5.3.1.6
            return
        if self._in_header:
            if line and _HEADER_LINE.match(line):
                self._header_size += len(line) + 2
                if self._header_size > self.max_header_size:
                    self._fail_data(REPLY_552_HEADER_TOO_BIG)
                    return
            else:
                self._in_header = False  # RFC 5322 §2.1: the body starts after the header
        self._data_size += len(line) + 2
        if self._data_size > self.max_message_size:
            self._fail_data(REPLY_552_TOO_BIG)  # RFC 1870 §6.3
            return
        self._data_lines.append(line + CRLF)

    def _fail_data(self, reply: Reply) -> None:
        """Fail the transaction being received; its reply is sent after the final dot."""
        if self._data_failed is None:
            self._data_failed = reply
        self._data_lines = []

    def _end_of_data(self) -> None:
        self.mode = COMMAND
        self.lf_ends_lines = False
        self.take_bulk = False
        self._transactions += 1
        envelope = Envelope(
            client=self.client(),
            reverse_path=self.reverse_path,
            recipients=tuple(self.recipients),
            body=self.body_type,
            transaction_id=f"{self.session_id}-{self._transactions}",
            received_at=self.clock.seconds(),
        )
        lines, size, failed = self._data_lines, self._data_size, self._data_failed
        self._reset_transaction()  # RFC 5321 §4.1.1.4: the transaction ends at the dot
        if failed is not None:
            self._log_outcome(envelope, size, failed)
            self.send_reply(failed)
            return
        message = received_header(envelope, self.hostname) + b"".join(lines)
        del lines
        self._run(self._accept_message(envelope, message, size))

    async def _accept_message(self, envelope: Envelope, message: bytes, size: int) -> Reply:
        try:
            self._check_room(len(message))
            await self.policy.accept_message(envelope, message)
        except SMTPReplyError as e:
            self._log_outcome(envelope, size, e.reply)
            raise
        except BaseException:
            self._log_outcome(envelope, size, REPLY_451_LOCAL_ERROR)
            raise
        self._log_outcome(envelope, size, REPLY_250_QUEUED)
        metrics.of(self.factory).message_received(self.policy.service)
        return REPLY_250_QUEUED

    def _log_outcome(self, envelope: Envelope, size: int, reply: Reply) -> None:
        log.info(
            "session {session} message {id}: from=<{sender}> to={recipients} size={size}"
            " result={result}",
            session=self.session_id,
            id=envelope.transaction_id,
            sender=str(envelope.reverse_path or ""),
            recipients=",".join(f"<{r}>" for r in envelope.recipients),
            size=size,
            result=reply.line().decode("ascii"),
            ip=self.peer_ip,  # for [log] format = "json" (not in the text line)
            service=self.policy.service,
            user=self.user,
        )

    # -- STARTTLS (RFC 3207) -----------------------------------------------------------

    def ext_STARTTLS(self, rest: bytes) -> None:
        if self.tls:
            raise SMTPReplyError(REPLY_503_TLS_ACTIVE)
        if not self.canStartTLS:
            raise SMTPReplyError(REPLY_454_TLS_UNAVAILABLE)
        if rest:
            raise SMTPReplyError(REPLY_501_SYNTAX)  # RFC 3207 §4: STARTTLS takes no parameters
        self.send_reply(REPLY_220_TLS_READY)
        # Nothing pipelined after STARTTLS may run after the handshake: stock Twisted
        # ran it, and its replies came back inside TLS as if the client had sent them
        # there (command injection).  RFC 3207 §4.2: forget everything learnt before TLS.
        self.discard_pending_input()
        self.helo = None
        self.esmtp = False
        self.user = None
        self.authenticated = False
        self._end_auth()
        self._reset_transaction()
        self._tcp = None  # TLS from here: every byte through the TLS layer
        self.transport.startTLS(self.ctx)
        self.tls = True
        self.canStartTLS = False

    # -- AUTH (RFC 4954) -----------------------------------------------------------------

    def ext_AUTH(self, rest: bytes) -> None:
        if self.portal is None:
            raise SMTPReplyError(REPLY_502_NOT_IMPLEMENTED)  # AUTH is not offered here
        if not self.tls:
            # RFC 4954 §4 / RFC 8314: no password in cleartext (stock Twisted accepted
            # AUTH PLAIN before STARTTLS).
            raise SMTPReplyError(REPLY_530_TLS_REQUIRED)
        if self.helo is None:
            raise SMTPReplyError(REPLY_503_EHLO_FIRST)
        if self.user is not None:
            raise SMTPReplyError(REPLY_503_ALREADY_AUTH)  # RFC 4954 §4
        if self.has_sender:
            raise SMTPReplyError(REPLY_503_AUTH_IN_TRANSACTION)  # RFC 4954 §4
        words = rest.split()
        if not words or len(words) > 2:
            raise SMTPReplyError(REPLY_501_SYNTAX)
        try:
            exchange = sasl.Exchange(words[0], _SASL_OFFERED)
        except sasl.UnsupportedMechanism:
            raise SMTPReplyError(REPLY_504_AUTH_MECHANISM) from None
        self._auth_exchange = exchange
        self.mode = AUTH
        # RFC 4954 §4: an initial response ("=" for an empty one) saves the first challenge.
        self._auth_step(lambda: exchange.start(words[1] if len(words) == 2 else None))

    def state_AUTH(self, line: bytes) -> None:
        exchange = self._auth_exchange
        assert exchange is not None
        self._auth_step(lambda: exchange.respond(line))

    def _end_auth(self) -> None:
        if self.mode == AUTH:
            self.mode = COMMAND
        self._auth_exchange = None

    def _auth_step(self, step: Callable[[], bytes | sasl.Credentials]) -> None:
        """One step of the SASL exchange (L{twistedmail.sasl}): a challenge (C{334}), or
        the end of it, answered as RFC 4954 §4 and §6 say."""
        try:
            outcome = step()
        except sasl.Cancelled:
            self._end_auth()
            # RFC 4954 §4: the server MUST reject the cancelled exchange with 501.
            raise SMTPReplyError(REPLY_501_AUTH_CANCELLED) from None
        except sasl.BadBase64:
            self._end_auth()
            raise SMTPReplyError(REPLY_501_BAD_BASE64) from None  # RFC 4954 §4, §6: 5.5.2
        except sasl.Malformed as e:
            self._end_auth()
            auth.refused("smtp", e, self.peer_ip)
            # RFC 4954 §6: no password was tried.
            raise SMTPReplyError(REPLY_535_AUTH_FAILED) from None
        if isinstance(outcome, sasl.Credentials):
            self._end_auth()
            self._run(self._login(outcome))
        else:
            # RFC 4954 §4: "334 " and the base64 challenge (empty for PLAIN, RFC 4616 §2).
            self.transport.write(b"334 " + sasl.encode_challenge(outcome) + CRLF)

    async def _login(self, credentials: sasl.Credentials) -> Reply:
        assert self.portal is not None
        try:
            result = await auth.login(
                self.portal,
                IAuthenticatedUser,
                credentials,
                service="smtp",
                peer_ip=self.peer_ip,
            )
        except auth.LoginFailed:
            self._auth_failures += 1
            if self._auth_failures >= MAX_AUTH_FAILURES:
                raise SMTPReplyError(REPLY_421_AUTH_FAILURES) from None
            raise SMTPReplyError(REPLY_535_AUTH_FAILED) from None
        except auth.LoginBlocked:
            # RFC 4954 §6: a temporary failure.
            raise SMTPReplyError(REPLY_454_LOGIN_BLOCKED) from None
        except auth.LoginUnavailable:
            raise SMTPReplyError(REPLY_454_AUTH_TEMP) from None  # RFC 4954 §6
        self.user = result.avatar.address
        self.authenticated = True
        return REPLY_235_AUTH_OK
