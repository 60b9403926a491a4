"""Concurrent-connection limits of one listener, in total and per client IP, and of one
user's logged-in sessions (issue 5).

L{ConnectionLimit} wraps a listener's protocol factory.  A connection over either limit is
answered with the protocol's own polite refusal and closed, never silently dropped: SMTP
C{421 4.7.0} (RFC 5321 §3.1: a server may refuse a session with 421), IMAP
C{* BYE [UNAVAILABLE]} (RFC 3501 §7.1.5, RFC 5530 §3), POP3 C{-ERR [SYS/TEMP]}
(RFC 3206 §4); see L{refusal_for}.  IPv6 clients count by their /64 prefix, as in the
failed-login throttle.  Like Postfix's C{smtpd_client_connection_count_limit} and Dovecot's
C{process_limit}.

A connection I{rate} per client IP (port 25, C{[antispam] smtp_connections_per_ip_hour}):
each connection attempt of the last hour counts, refused ones too; over the limit the
client gets C{421 4.7.0} (RFC 5321 §3.1) and a log line fail2ban matches, like Postfix's
C{smtpd_client_connection_rate_limit} (anvil).

L{UserSessionLimit} counts logged-in sessions per user and client IP, as Dovecot's
C{mail_max_userip_connections} (default 10) does for IMAP; the protocol refuses the login
over it (IMAP C{NO [UNAVAILABLE]}, RFC 5530 §3).

Closing (issue 9): the wrapper also makes every close of every listener end, so that a
slot and a descriptor are given back however a session ends.  Once the server closes
(QUIT, LOGOUT, a BYE, an idle timeout) nothing more the client sends is acted on
(RFC 3501 §6.1.3), but the connection keeps reading: over TLS the server's C{close_notify}
waits for the peer's C{close_notify} or FIN (RFC 8446 §6.1), which a paused transport
(a command still running when QUIT came, POP3 RETR/DELE then QUIT) never saw, so the
connection stayed open forever.  Our TCP FIN follows our C{close_notify} at once (RFC 8446
§6.1: the closer need not wait for the peer's), so a client that waits for the end of the
connection after LOGOUT/QUIT does not hang.  A peer that neither answers nor closes, or that
reads nothing, is cut off L{CLOSE_GRACE} seconds after the close began; so is a refused
connection whose client never finishes the TLS handshake.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableDescriptor,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from twistedmail import metrics
from twistedmail.metrics import Metrics
from twistedmail.rate import HourlyRate
from twistedmail.throttle import ip_key

log = Logger(namespace="twistedmail.limits")

DEFAULT_MAX_CONNECTIONS = 500
DEFAULT_MAX_CONNECTIONS_PER_IP = 20
CLOSE_GRACE = 30.0
"""Seconds a closing connection may take to finish (flush, TLS close_notify, the peer's
FIN) before it is aborted."""


def refusal_for(service: str, hostname: str) -> bytes:
    """The line a refused client gets, by service name (C{smtp}, C{submission},
    C{submissions}, C{imap}, C{imaps}, C{pop3}, C{pop3s}, C{managesieve}), CRLF-terminated."""
    if service.startswith("imap"):
        return b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
    if service.startswith("pop3"):
        return b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
    if service == "managesieve":  # RFC 5804 §1.3 TRYLATER
        return b'BYE (TRYLATER) "Too many connections, try again later"\r\n'
    if service.startswith("http") or service == "metrics":
        return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    # RFC 5321 §4.2: the greeting (here a 421 in its place) starts with our domain.
    return b"421 4.7.0 %s Too many connections, try again later\r\n" % hostname.encode("ascii")


def rate_refusal(hostname: str) -> bytes:
    """The SMTP greeting of a client over its connection rate (RFC 5321 §3.1: 421)."""
    return b"421 4.7.0 %s Too many connections from your address, try again later\r\n" % (
        hostname.encode("ascii")
    )


class _Refused(Protocol):
    """Writes the refusal and closes; whatever the client sends is ignored.  Aborted after
    C{grace} seconds if the close has not finished (over TLS the refusal waits for a
    handshake the client may never do)."""

    def __init__(self, refusal: bytes, clock: IReactorTime | None, grace: float) -> None:
        self.refusal = refusal
        self.clock = clock
        self.grace = grace
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        if self.clock is not None:
            self._timer = self.clock.callLater(self.grace, self._abort)
        self.transport.write(self.refusal)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _abort(self) -> None:
        self._timer = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Counted(ProtocolWrapper):
    """One counted connection; makes the wrapped protocol's close always finish (see the
    module docstring)."""

    # The TCP or TLS transport: it also pauses, resumes and aborts (Twisted types a
    # ProtocolWrapper's transport as ITransport | None).
    transport: Any
    peer_key: str = ""
    _grace: IDelayedCall | None = None
    _lost = False
    _paused = False

    def dataReceived(self, data: bytes) -> None:
        if self.disconnecting:
            return  # closing: nothing more the client sends is acted on
        super().dataReceived(data)

    def pauseProducing(self) -> None:
        # A command that pauses input after the close began must not stop the reading
        # that sees the peer's close.
        if not self.disconnecting:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()

    def loseConnection(self) -> None:
        if self.disconnecting or self._lost:
            return
        clock = self.factory.clock
        if clock is not None:
            self._grace = clock.callLater(self.factory.close_grace, self._abort)
        super().loseConnection()
        if self._paused and not self._lost:
            # Read again (a command that was running paused the input): over TLS the
            # close finishes only when the peer's close_notify or FIN is seen.
            self.resumeProducing()
        if not self._lost:
            _fin_after_close_notify(self.transport)

    def _abort(self) -> None:
        self._grace = None
        log.info(
            "{service}: connection from {ip} did not finish closing in {grace} s: aborted",
            service=self.factory.service,
            ip=self.peer_key,
            grace=self.factory.close_grace,
        )
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        super().connectionLost(reason)


def _fin_after_close_notify(transport: Any) -> None:
    """Half-close the TCP connection under C{transport} once TLS has queued its
    close_notify: the peer sees the FIN right after it, and we go on reading its answer.

    Twisted's TLS layer (implicit TLS: the C{TLSMemoryBIOProtocol} under us; STARTTLS: the
    protocol of the TCP transport) otherwise keeps TCP open until the peer's close_notify.
    Nothing is done while the close_notify is not written yet (a handshake or a producer
    still running, data buffered): the L{CLOSE_GRACE} timer bounds that wait.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        tls, tcp = transport, transport.transport
    elif getattr(transport, "TLS", False) and isinstance(
        getattr(transport, "protocol", None), TLSMemoryBIOProtocol
    ):
        tls, tcp = transport.protocol, transport
    else:
        return  # plain TCP: its loseConnection sends the FIN once the buffer is written
    queued = (
        getattr(tls, "_handshakeDone", False)
        and getattr(tls, "_producer", True) is None
        and not getattr(tls, "_appSendBuffer", True)
        and not getattr(tls, "_lostTLSConnection", True)
    )
    if (
        queued
        and IHalfCloseableDescriptor.providedBy(tcp)
        and tcp.connected
        and not tcp.disconnecting
    ):
        tcp.loseWriteConnection()


class ConnectionLimit(WrappingFactory):
    """A listener's factory, limited to C{max_connections} open connections in all and
    C{max_per_ip} from one client IP.

    @param wrapped: the listener's own factory.
    @param max_connections: concurrent connections in all.
    @param max_per_ip: concurrent connections from one IP (one IPv6 /64).
    @param refusal: the bytes sent to a refused client before closing (L{refusal_for}).
    @param service: the listener's name, for the log.
    @param clock: for the L{CLOSE_GRACE} timer of closing connections; C{None}: no timer.
    @param metrics: the server's counters (L{twistedmail.metrics.of}); C{None}: uncounted.
    @param rate: connection attempts per client IP and hour; C{None}: no limit.
    @param rate_refusal: what a client over C{rate} gets (L{rate_refusal}).
    """

    protocol = _Counted
    noisy = False

    def __init__(
        self,
        wrapped: Factory,
        *,
        max_connections: int,
        max_per_ip: int,
        refusal: bytes,
        service: str,
        clock: IReactorTime | None = None,
        metrics: Metrics | None = None,
        rate: HourlyRate | None = None,
        rate_refusal: bytes = b"",
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        self.metrics = metrics
        self.rate = rate
        self.rate_refusal = rate_refusal
        self.close_grace = CLOSE_GRACE
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.refusal = refusal
        self.service = service
        self.per_ip: Counter[str] = Counter()

    rate: HourlyRate | None = None
    """Connection attempts per client IP (IPv6: /64) and hour; C{None}: no limit."""
    rate_refusal: bytes = b""
    """What a client over L{rate} gets (L{rate_refusal})."""

    def buildProtocol(self, addr: IAddress | None) -> Any:
        ip = str(getattr(addr, "host", addr))
        key = ip_key(ip)
        if self.rate is not None:
            self.rate.record(key)  # attempts count, refused ones too (as Postfix's anvil)
            if self.rate.count(key) > self.rate.limit:
                log.warn(
                    "{service}: client [{ip}] over {limit} connections per hour",
                    service=self.service,
                    ip=ip,
                    limit=self.rate.limit,
                )
                return _Refused(self.rate_refusal, self.clock, self.close_grace)
        if len(self.protocols) >= self.max_connections or self.per_ip[key] >= self.max_per_ip:
            log.warn(
                "{service}: refused a connection from {ip}: {count} open from it, {total} in all",
                service=self.service,
                ip=key,
                count=self.per_ip[key],
                total=len(self.protocols),
            )
            return _Refused(self.refusal, self.clock, self.close_grace)
        wrapper = cast(_Counted, super().buildProtocol(addr))
        wrapper.peer_key = key
        metrics.of(self).connection(self.service)
        return wrapper

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self.per_ip[p.peer_key] += 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self.per_ip[p.peer_key] -= 1
        if self.per_ip[p.peer_key] <= 0:
            del self.per_ip[p.peer_key]


class UserSessionLimit:
    """At most C{max_per_user} logged-in sessions of one user from one client IP.

    Shared by every listener of a protocol (IMAP 143 and 993).  A session calls L{acquire}
    after a successful login, and L{release} once when it ends if that returned C{True}.

    @param max_per_user: sessions of one (user, IP) open at once.
    @param service: protocol name, for the log.
    """

    def __init__(self, max_per_user: int, service: str) -> None:
        self.max_per_user = max_per_user
        self.service = service
        self.open: Counter[tuple[str, str]] = Counter()

    def acquire(self, user: str, ip: str) -> bool:
        """Count a new session of C{user} from C{ip}; C{False} (and a log line) when that
        would be more than C{max_per_user}."""
        key = (user, ip)
        if self.open[key] >= self.max_per_user:
            log.warn(
                "{service}: refused a login: user={user} ip={ip} has {count} sessions open"
                " (limit {limit})",
                service=self.service,
                user=user,
                ip=ip,
                count=self.open[key],
                limit=self.max_per_user,
            )
            return False
        self.open[key] += 1
        return True

    def release(self, user: str, ip: str) -> None:
        """Forget one session counted by L{acquire}."""
        key = (user, ip)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]
