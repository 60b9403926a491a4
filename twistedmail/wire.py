"""The connection plumbing every protocol shares: one session factory (SMTP, IMAP, POP3 and
ManageSieve), and a CRLF line receiver that is safe on hostile input (SMTP and POP3).

L{SessionFactory} builds one session per connection from the listener's settings value
(L{twistedmail.settings}) and the server-wide objects it is given once, at construction: no
attribute is set on a factory or a session after it is built.

The line receiver

It replaces C{twisted.protocols.basic.LineOnlyReceiver.dataReceived}, which never clears its
buffer after an over-long line and re-splits an unterminated buffer on every read (quadratic
CPU, unbounded memory: 40 MiB without a CRLF cost 34 s of reactor CPU), answers an over-long
line once per read and drops the rest of that read, and keeps running lines that were
pipelined after STARTTLS/STLS (it has already split the packet into a local list, so
clearing its buffer is not enough).  Here:

  - only CRLF ends a line (RFC 5321 §2.3.8: bare CR and LF are not line ends), unless
    C{lf_ends_lines} is set (SMTP DATA with C{bare_lf = "normalize"}): then a bare LF
    ends a line too, and C{line_ended_bare} / C{previous_line_ended_bare} tell how the
    current and the previous line ended, so that only CRLF "." CRLF ends the data;
  - a line longer than C{MAX_LENGTH} calls C{lineLengthExceeded(prefix)} once, then the rest
    of that line is discarded up to its CRLF, in linear time and constant memory;
  - C{discard_pending_input()} drops every byte already received and not yet processed:
    the STARTTLS/STLS fix (RFC 3207 §4.2, RFC 2595 §4: nothing sent before the handshake may
    be acted on after it);
  - C{pause_lines()}/C{resume_lines()} hold back pipelined lines while a command's Deferred
    runs, so replies come back in command order (RFC 2920 §3, RFC 2449 §6.6);
  - while C{take_bulk} is set, C{bulk_lines(buffer, start)} is offered the received bytes
    before each line and may take any number of complete lines at once (SMTP DATA as a
    stream); the lines it leaves are delivered one by one as usual.
"""

from __future__ import annotations

import socket
from types import MethodType
from typing import Any, Callable, Generic, TypeVar
from typing import Protocol as TypingProtocol

from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import abstract, tcp
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol

SessionT = TypeVar("SessionT", bound=Protocol)

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

CRLF = b"\r\n"


class StrictLineReceiver(Protocol):
    """Mixin/base: delivers CRLF-terminated lines (without the CRLF) to C{lineReceived}."""

    delimiter = CRLF
    MAX_LENGTH = 16384
    transport: Any  # a connected TCP/TLS transport: pause/resumeProducing and disconnecting
    _buffer = b""
    _discarding = False
    _discard_pending = False
    _lines_paused = False
    _transport_paused = False
    _processing = False
    _reentrant_input = b""
    lf_ends_lines = False
    take_bulk = False
    line_ended_bare = False
    previous_line_ended_bare = False

    def lineReceived(self, line: bytes) -> None:
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """Called once per over-long line with (a prefix of) it; the default closes."""
        self.transport.loseConnection()

    def bulk_lines(self, buf: bytes, start: int) -> int:
        """While C{take_bulk}: take complete lines of C{buf} from offset C{start} (a line
        start) at once; return the offset where line-by-line delivery goes on (C{start}
        when nothing was taken)."""
        return start

    def discard_pending_input(self) -> None:
        """Forget all received, unprocessed bytes (call before starting TLS)."""
        self._buffer = b""
        self._reentrant_input = b""
        self._discarding = False
        self._discard_pending = True
        self.line_ended_bare = self.previous_line_ended_bare = False

    def pause_lines(self) -> None:
        """Hold further lines (buffered) until L{resume_lines}.  The transport is paused
        only once bytes are held (not for a command answered before the client sends more,
        which saves two epoll changes per command)."""
        self._lines_paused = True

    def resume_lines(self) -> None:
        """Process held lines, then read from the transport again.

        Safe to call from inside C{lineReceived} (a command whose Deferred fired at once):
        the running loop then simply goes on with the next held line.
        """
        if self._lines_paused:
            self._lines_paused = False
            if self._transport_paused:
                self._transport_paused = False
                if not self.transport.disconnecting:
                    self.transport.resumeProducing()
            if not self._processing:
                self.dataReceived(b"")

    def dataReceived(self, data: bytes) -> None:
        if self._processing:
            # Re-entered from lineReceived (a transport delivering while we write): the
            # running loop takes these bytes after the ones it holds, in order.
            self._reentrant_input += data
            return
        self._processing = True
        try:
            self._discard_pending = False
            self._consume(data)
            while self._reentrant_input and not self._lines_paused:
                data, self._reentrant_input = self._reentrant_input, b""
                self._consume(data)
            if self._buffer or self.take_bulk:  # a line or the DATA not yet complete
                ack_now(self.transport)
            if self._reentrant_input:  # paused meanwhile: keep them for resume_lines
                self._buffer += self._reentrant_input
                self._reentrant_input = b""
        finally:
            self._processing = False
        if self._lines_paused and self._buffer and not self._transport_paused:
            self._transport_paused = True  # bytes are held: read no more until resumed
            self.transport.pauseProducing()

    def _line_end(self, buf: bytes, start: int) -> tuple[int, int, bool] | None:
        """(end of the line's content, start of the next line, ended by a bare LF), or
        C{None} when C{buf[start:]} holds no complete line; linear in what it scans."""
        if not self.lf_ends_lines:
            end = buf.find(CRLF, start)
            return None if end < 0 else (end, end + 2, False)
        end = buf.find(b"\n", start)
        if end < 0:
            return None
        if end > start and buf[end - 1] == 0x0D:
            return end - 1, end + 1, False
        return end, end + 1, True

    def _ended(self, bare: bool) -> None:
        self.previous_line_ended_bare, self.line_ended_bare = self.line_ended_bare, bare

    def _consume(self, data: bytes) -> None:
        if self._discarding:
            data = self._buffer + data
            found = self._line_end(data, 0)
            if found is None:
                self._buffer = b"\r" if data.endswith(b"\r") else b""
                return
            self._discarding = False
            self._ended(found[2])
            self._buffer, data = b"", data[found[1] :]
        buf = self._buffer + data
        start = 0
        while not self._lines_paused:
            if self._discard_pending or self.transport.disconnecting:
                self._discard_pending = False
                return
            if self.take_bulk:
                start = self.bulk_lines(buf, start)
            found = self._line_end(buf, start)
            if found is None:
                break
            line, start = buf[start : found[0]], found[1]
            self._ended(found[2])
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line[: self.MAX_LENGTH])
            else:
                self.lineReceived(line)
        if self._discard_pending:
            self._discard_pending = False
            return
        rest = buf[start:]
        # A trailing CR may start the CRLF of a line of exactly MAX_LENGTH: not too long yet.
        pending = len(rest) - (1 if rest.endswith(b"\r") else 0)
        if not self._lines_paused and pending > self.MAX_LENGTH:
            self._discarding = True
            self._buffer = b"\r" if rest.endswith(b"\r") else b""
            self.lineLengthExceeded(rest[: self.MAX_LENGTH])
        else:
            self._buffer = rest


class SessionFactory(ServerFactory, Generic[SessionT]):
    """Builds C{session(settings=settings, **arguments)} per connection and gives it
    C{.factory}; the same keywords for every connection of the listener.

    @param session: the protocol class (L{twistedmail.smtp.session.SMTPSession},
        L{twistedmail.imap.server.IMAPServer}, L{twistedmail.pop3.POP3Server},
        L{twistedmail.managesieve.ManageSieveServer}).
    @param settings: the listener's frozen settings value (L{twistedmail.settings}).
    @param metrics: the server's counters (L{twistedmail.metrics.of} reads them from
        C{session.factory}); C{None}: uncounted.
    @param arguments: the session's other keywords (portal, clock, TLS context, ...).
    """

    noisy = False  # each session logs its own line per connection

    def __init__(
        self,
        session: Callable[..., SessionT],
        settings: object,
        *,
        metrics: object | None = None,
        **arguments: Any,
    ) -> None:
        self.session = session
        self.settings = settings
        self.metrics = metrics
        self.arguments = arguments

    def buildProtocol(self, addr: object) -> SessionT:
        protocol = self.session(settings=self.settings, **self.arguments)
        protocol.factory = self
        return protocol


# The four OpenSSL calls release_tls_buffers needs, all bound by pyOpenSSL's lib today; a
# later binding without one of them makes it a no-op rather than an error in a session.
_CAN_SWAP_BIOS = all(
    hasattr(_lib, name) for name in ("BIO_get_mem_data", "BIO_new", "BIO_s_mem", "SSL_set_bio")
)


def release_tls_buffers(transport: object) -> None:
    """Replace the memory BIOs of the TLS layer below C{transport} by empty ones, when the
    handshake is done and both are empty (nothing received and not yet decrypted, nothing
    encrypted and not yet sent); otherwise, or without TLS, do nothing.

    pyOpenSSL has no call for this: its C{Connection} keeps the two BIOs it gave
    C{SSL_set_bio} as C{_into_ssl} and C{_from_ssl}, so both are replaced together.
    C{SSL_set_bio} frees the old pair and points OpenSSL's record layer at the new one.
    """
    if not _CAN_SWAP_BIOS:
        return
    layer = transport
    while layer is not None and not isinstance(layer, TLSMemoryBIOProtocol):
        # down through ProtocolWrappers (vars: their __getattr__ forwards to the transport)
        layer = vars(layer).get("transport")
    if layer is None or not layer._handshakeDone or layer._lostTLSConnection:
        return
    connection = layer._tlsConnection
    into = getattr(connection, "_into_ssl", None)
    out = getattr(connection, "_from_ssl", None)
    if into is None or out is None:  # a socket BIO, or not pyOpenSSL's layout
        return
    if _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
        return
    fresh_into = _lib.BIO_new(_lib.BIO_s_mem())
    fresh_out = _lib.BIO_new(_lib.BIO_s_mem())
    if fresh_into == _ffi.NULL or fresh_out == _ffi.NULL:
        for bio in (fresh_into, fresh_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return
    _lib.SSL_set_bio(connection._ssl, fresh_into, fresh_out)
    connection._into_ssl, connection._from_ssl = fresh_into, fresh_out


class SlottedServer(tcp.Server):
    """Twisted's accepted TCP connection with the attributes every connection sets in
    slots (issue 10, memory per idle connection): in C{tcp.Server}'s instance dict they
    came to 832 bytes a connection once CPython gave up sharing its keys.  A slot hides a
    base class's default, so L{__init__} starts those at it.  A name not listed still works
    (it goes to the instance dict)."""

    __slots__ = (
        "reactor",
        "_tempDataBuffer",
        "_tempDataLen",
        "socket",
        "fileno",
        "protocol",
        "server",
        "client",
        "sessionno",
        "hostname",
        "logstr",
        "repstr",
        "connected",
        "disconnected",
        "disconnecting",
        "dataBuffer",
        "offset",
        "producer",
        "streamingProducer",
        "producerPaused",
        "_writeDisconnecting",
        "_writeDisconnected",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        for name, value in _SERVER_DEFAULTS.items():
            setattr(self, name, value)
        super().__init__(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # An emptied slot hides the base class's attribute of that name, which tcp.Server
        # falls back to: Twisted's connectionLost deletes fileno, after which stopReading,
        # pauseProducing and the reactor's removeReader call FileDescriptor.fileno (-1).
        if name == "fileno":
            return MethodType(abstract.FileDescriptor.fileno, self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_SERVER_DEFAULTS = {
    name: vars(base)[name]
    for name in SlottedServer.__slots__
    for base in [next((b for b in tcp.Server.__mro__ if name in vars(b)), None)]
    if base is not None and not callable(vars(base)[name])
}


def use_slotted_connections(port: object) -> None:
    """Have a listening TCP port (C{listenTCP}, C{adoptStreamPort}) accept its connections
    as L{SlottedServer}s; any other port is left alone."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = SlottedServer


def ack_now(transport: object) -> None:
    """Acknowledge at once, at the TCP level, what the client has sent so far: call when
    a request has arrived in part and the session waits for the rest of it.

    A client that writes one request in two pieces (Python's imaplib sends an APPEND's
    literal and its closing CRLF in two C{send}s; a client may send an SMTP message and its
    final "." apart) has Nagle's algorithm hold the second, small piece until the first is
    acknowledged, and the receiving kernel delays that ACK (40 ms on Linux) because the
    server has nothing to send yet: every such request took 40-48 ms on loopback. Linux's
    C{TCP_QUICKACK} sends the pending ACK now (RFC 1122 §4.2.3.2 lets the receiver
    acknowledge at once). Elsewhere, or on a transport without a TCP socket, nothing
    happens.
    """
    if _TCP_QUICKACK is None:
        return
    layer = transport
    while layer is not None:
        # (a TCP connection's socket may be in a slot, L{SlottedServer}; none once closed)
        if isinstance(layer, tcp.Connection):
            sock = getattr(layer, "socket", None)
        else:
            sock = vars(layer).get("socket")
        if isinstance(sock, socket.socket):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                pass  # closed meanwhile, or not TCP
            return
        # down through TLS and ProtocolWrappers (vars: their __getattr__ forwards)
        layer = vars(layer).get("transport")


BEFORE_WRITE: list[Callable[[], None]] = []
"""Called before a reply is sent at once (L{write_at_once}): the parent's log lines of this
reactor turn are written first (L{twistedmail.loglines.batch_log}), as they are before
Twisted sends what was queued in the turn, so a line still comes before its reply."""


def plain_tcp(transport: object) -> tcp.Connection | None:
    """The TCP connection under C{transport} when every layer between passes writes through
    unchanged (C{ProtocolWrapper.write}: the connection counting of L{twistedmail.limits}),
    else C{None} (TLS, or a wrapper of its own): what L{write_at_once} may write to."""
    layer = transport
    while not isinstance(layer, tcp.Connection):
        if not isinstance(layer, ProtocolWrapper) or type(layer).write is not _WRAPPER_WRITE:
            return None
        layer = vars(layer).get("transport")
    return layer


_WRAPPER_WRITE = ProtocolWrapper.write


def write_at_once(connection: tcp.Connection, data: bytes) -> bool:
    """Send C{data} on C{connection} now, when nothing is queued before it (issue 10).

    Twisted's C{write} queues the bytes and asks epoll for writability; the reply goes out
    at the next reactor turn (an C{epoll_ctl} to watch for it, a turn of the loop, its
    logging context, C{send}, an C{epoll_ctl} to stop watching): per SMTP reply, a share of
    the CPU of a message as large as the reply's handling.  Here, with the connection's
    buffers empty, not closing and not TLS, one C{send}; what the socket does not take
    (a full send buffer) is queued behind it the usual way, so the order of the bytes is
    kept; L{BEFORE_WRITE} runs first.  C{False} (nothing sent): the caller writes through
    Twisted (queued data, a connection closing or closed, or a C{send} error, which
    Twisted's write path then meets and reports as it does)."""
    if (
        connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnected
        and not connection.dataBuffer
        and not connection._tempDataBuffer
        and not connection.TLS
    ):
        for before in BEFORE_WRITE:
            before()
        try:
            sent = connection.socket.send(data)
        except OSError:
            return False  # EAGAIN, EINTR or an error: Twisted's path retries or reports it
        if sent < len(data):
            connection.write(data[sent:])
        return True
    return False


ACCEPT_PAUSE = 0.05
"""Seconds a process over its share of connections leaves a new one to the others at most
before it takes it itself (L{balance_accepts}): the bound on the wait a hung or busy
process causes."""

ACCEPT_TICK = 0.005
"""While it leaves new connections to the others, a process looks at its share again every
this many seconds (L{balance_accepts})."""


class AcceptShare(TypingProtocol):
    """What L{balance_accepts} asks and tells: whether this process holds more than its
    share; how many connections it holds."""

    open: int
    """Connections open on the balanced ports (kept by L{balance_accepts})."""

    def changed(self) -> None:
        """L{open} changed."""

    def over_share(self) -> bool:
        """Whether this process holds more than its share of connections now."""


def balance_accepts(
    port: object,
    share: AcceptShare,
    clock: Any,
    pause: float = ACCEPT_PAUSE,
    tick: float = ACCEPT_TICK,
) -> None:
    """Have a listening TCP port shared by several processes (C{[server] workers}) take its
    share of new connections and no more (issue 10; nginx's and Postfix's accept mutex, by
    counts).  It accepts one connection a wakeup, not Twisted's burst of up to
    C{numberAccepts} (the process that woke first took every connection of a burst), and
    counts its open connections in C{share.open} (from the accept to the end of the TCP
    connection, the admission of L{twistedmail.limits} not waited for).  While
    C{share.over_share()} it stops reading the socket, leaving new connections to the
    others (each is woken by them too), and looks again every C{tick} seconds: back within
    its share, or after C{pause} seconds in all, it reads again and takes a connection still
    waiting (so a hung or busy process delays one by C{pause} at most).  Any other port is
    left alone."""
    if not isinstance(port, tcp.Port):
        return
    accept = port.doRead
    base = port.transport

    class Counted(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            share.open += 1
            share.changed()

        def connectionLost(self, reason: Any) -> None:
            share.open -= 1
            share.changed()
            super().connectionLost(reason)

    def accept_one() -> None:
        port.numberAccepts = 1
        accept()

    looks = max(1, round(pause / tick))

    def look_again(left: int) -> None:
        if not (port.connected and not port.disconnecting):
            return
        if left > 1 and share.over_share():
            clock.callLater(tick, look_again, left - 1)
            return
        port.startReading()
        accept_one()  # nothing waiting: EAGAIN, nothing accepted

    def doRead() -> None:
        if share.over_share():
            port.stopReading()
            clock.callLater(tick, look_again, looks)
            return
        accept_one()

    port.transport = Counted
    port.doRead = doRead  # type: ignore[method-assign]
