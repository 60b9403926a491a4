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

Several processes (C{[server] workers}, issue 10): the limits hold for the whole server, as
with Postfix's and Dovecot's C{anvil}.  The parent keeps the counts (L{Anvil}); its own
connections count there at once (L{LocalShare}), a worker asks the parent before it greets
a client and tells it when the connection ends (C{ConnectionLimit.shared}, answered over
the worker's channel, L{twistedmail.workers}); a dead worker's counts are dropped at once.
A refused client gets the same reply either way.

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
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
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


Admission = tuple[bool, int, int]
"""The answer to a connection: (admitted, open from the client's IP, open in all), the
counts as they were before this connection; L{RATE_REFUSED} as the counts: refused over
the connection rate (L{ConnectionLimit.over_rate})."""

RATE_REFUSED = -1


class Share(TypingProtocol):
    """Where a process's connection and session counts are kept for the whole server: the
    parent's L{Anvil} (L{LocalShare}), or the parent asked by a worker."""

    remote: bool
    """Whether the counts are another process's (a worker asks the parent, which also
    counts the connection rate, L{ConnectionLimit.over_rate})."""

    def connect(
        self, service: str, key: str, max_connections: int, max_per_ip: int, ip: str = ""
    ) -> Admission | Deferred[Admission]: ...

    def disconnect(self, service: str, key: str) -> None: ...

    def session(self, user: str, ip: str, max_per_user: int) -> Admission | Deferred[Admission]: ...

    def release(self, user: str, ip: str) -> None: ...


class Anvil:
    """The server-wide counts of open connections (per listener, in all and per client IP)
    and of logged-in IMAP sessions (per user and IP), kept by the parent; each count
    remembers its owner (a process), whose counts L{drop} forgets at once."""

    def __init__(self) -> None:
        self.connections: Counter[tuple[str, str]] = Counter()  # (service, ip key)
        self.totals: Counter[str] = Counter()  # service
        self.sessions: Counter[tuple[str, str]] = Counter()  # (user, ip)
        self._owned: dict[object, Counter[tuple[str, str, str]]] = {}

    def connect(
        self, owner: object, service: str, key: str, max_connections: int, max_per_ip: int
    ) -> Admission:
        count, total = self.connections[(service, key)], self.totals[service]
        if total >= max_connections or count >= max_per_ip:
            return False, count, total
        self.connections[(service, key)] += 1
        self.totals[service] += 1
        self._owned.setdefault(owner, Counter())[("c", service, key)] += 1
        return True, count, total

    def disconnect(self, owner: object, service: str, key: str) -> None:
        if self._take(owner, ("c", service, key)):
            _decrement(self.connections, (service, key))
            _decrement(self.totals, service)

    def session(self, owner: object, user: str, ip: str, max_per_user: int) -> Admission:
        count = self.sessions[(user, ip)]
        if count >= max_per_user:
            return False, count, count
        self.sessions[(user, ip)] += 1
        self._owned.setdefault(owner, Counter())[("s", user, ip)] += 1
        return True, count, count

    def release(self, owner: object, user: str, ip: str) -> None:
        if self._take(owner, ("s", user, ip)):
            _decrement(self.sessions, (user, ip))

    def drop(self, owner: object) -> None:
        """Forget every count of C{owner} (a worker that died)."""
        for (kind, a, b), n in self._owned.pop(owner, Counter()).items():
            for _ in range(n):
                if kind == "c":
                    _decrement(self.connections, (a, b))
                    _decrement(self.totals, a)
                else:
                    _decrement(self.sessions, (a, b))

    def owned(self, owner: object) -> tuple[int, int]:
        """(open connections, logged-in IMAP sessions) counted for C{owner}."""
        owned = self._owned.get(owner, Counter())
        connections = sum(n for (kind, _, _), n in owned.items() if kind == "c")
        return connections, sum(owned.values()) - connections

    def _take(self, owner: object, item: tuple[str, str, str]) -> bool:
        owned = self._owned.get(owner)
        if owned is None or owned[item] <= 0:
            return False
        _decrement(owned, item)
        return True


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class LocalShare:
    """The parent's own view of its L{Anvil}: counted at once, without a round trip."""

    remote = False

    def __init__(self, anvil: Anvil, owner: object = "parent") -> None:
        self.anvil, self.owner = anvil, owner

    def connect(
        self, service: str, key: str, max_connections: int, max_per_ip: int, ip: str = ""
    ) -> Admission:
        return self.anvil.connect(self.owner, service, key, max_connections, max_per_ip)

    def disconnect(self, service: str, key: str) -> None:
        self.anvil.disconnect(self.owner, service, key)

    def session(self, user: str, ip: str, max_per_user: int) -> Admission:
        return self.anvil.session(self.owner, user, ip, max_per_user)

    def release(self, user: str, ip: str) -> None:
        self.anvil.release(self.owner, user, ip)


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
    admission: Deferred[Admission] | None = None  # a worker's question to the parent
    shared_slot = False  # counted in the server-wide L{Anvil}: tell it at the end
    _registered = False
    _early = b""
    _grace: IDelayedCall | None = None
    _lost = False
    _paused = False

    def makeConnection(self, transport: Any) -> None:
        if self.admission is None:
            self._registered = True
            super().makeConnection(transport)
            return
        # Not greeted until the parent has counted the connection (or refused it).
        self.transport = transport
        transport.pauseProducing()
        self.admission.addCallback(self._admit, transport)
        self.admission.addErrback(
            lambda f: log.failure("{service}: admission", f, service=self.factory.service)
        )

    def _admit(self, answer: Admission, transport: Any) -> None:
        self.admission = None
        ok, count, total = answer
        factory = self.factory
        if self._lost:  # the client left while the parent was asked
            if ok:
                factory.shared.disconnect(factory.service, self.peer_key)
            return
        transport.resumeProducing()  # over TLS the handshake goes on (the refusal is in it)
        if not ok:
            if count == RATE_REFUSED:  # over the connection rate: the parent logged it
                refusal = factory.rate_refusal
            else:
                factory.refused(self.peer_key, count, total)
                refusal = factory.refusal
            clock = factory.clock
            if clock is not None:
                self._grace = clock.callLater(factory.close_grace, self._abort)
            transport.write(refusal)
            transport.loseConnection()
            return
        self.shared_slot = True
        factory.counted(self)
        self._registered = True
        super().makeConnection(transport)
        early, self._early = self._early, b""
        if early:
            self.dataReceived(early)

    def dataReceived(self, data: bytes) -> None:
        if not self._registered:
            if self.admission is not None:
                self._early += data  # before the parent's answer: kept for the session
            return
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
        if self._registered:  # else never greeted (refused, or still waiting)
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

    shared: Share | None = None
    """Where the counts are kept for the whole server (C{[server] workers}); C{None}: in this
    process alone."""
    rate: HourlyRate | None = None
    """Connection attempts per client IP (IPv6: /64) and hour; C{None}: no limit."""
    rate_refusal: bytes = b""
    """What a client over L{rate} gets (L{rate_refusal})."""

    def over_rate(self, key: str, ip: str) -> bool:
        """Count a connection attempt from C{ip} (its key C{key}) against L{rate}, refused
        ones too (as Postfix's anvil counts them), and say whether it is over the limit (the
        line fail2ban matches is logged).  With workers the parent counts every process's
        attempts here, asked with the admission (L{twistedmail.workers}): one count, exact
        for the whole server, where replaying each process's events in the others let a
        connection through while the others' events were on their way."""
        if self.rate is None:
            return False
        self.rate.record(key)
        if self.rate.count(key) <= self.rate.limit:
            return False
        log.warn(
            "{service}: client [{ip}] over {limit} connections per hour",
            service=self.service,
            ip=ip,
            limit=self.rate.limit,
        )
        return True

    def buildProtocol(self, addr: IAddress | None) -> Any:
        ip = str(getattr(addr, "host", addr))
        key = ip_key(ip)
        remote = self.shared is not None and self.shared.remote
        if not remote and self.over_rate(key, ip):
            return _Refused(self.rate_refusal, self.clock, self.close_grace)
        if self.shared is not None:
            answer = self.shared.connect(
                self.service, key, self.max_connections, self.max_per_ip, ip
            )
            if isinstance(answer, Deferred):  # a worker: greeted once the parent answers
                wrapper = cast(_Counted, super().buildProtocol(addr))
                wrapper.peer_key = key
                wrapper.admission = answer
                return wrapper
            ok, count, total = answer
            if not ok:
                self.refused(key, count, total)
                return _Refused(self.refusal, self.clock, self.close_grace)
            wrapper = cast(_Counted, super().buildProtocol(addr))
            wrapper.peer_key = key
            wrapper.shared_slot = True
            self.counted(wrapper)
            return wrapper
        if len(self.protocols) >= self.max_connections or self.per_ip[key] >= self.max_per_ip:
            self.refused(key, self.per_ip[key], len(self.protocols))
            return _Refused(self.refusal, self.clock, self.close_grace)
        wrapper = cast(_Counted, super().buildProtocol(addr))
        wrapper.peer_key = key
        self.counted(wrapper)
        return wrapper

    def refused(self, key: str, count: int, total: int) -> None:
        """Log a connection refused over the limits (fail2ban matches the line)."""
        log.warn(
            "{service}: refused a connection from {ip}: {count} open from it, {total} in all",
            service=self.service,
            ip=key,
            count=count,
            total=total,
        )

    def counted(self, wrapper: _Counted) -> None:
        metrics.of(self).connection(self.service)

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        self.per_ip[p.peer_key] += 1

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        self.per_ip[p.peer_key] -= 1
        if self.per_ip[p.peer_key] <= 0:
            del self.per_ip[p.peer_key]
        if p.shared_slot and self.shared is not None:
            p.shared_slot = False
            self.shared.disconnect(self.service, p.peer_key)


class UserSessionLimit:
    """At most C{max_per_user} logged-in sessions of one user from one client IP.

    Shared by every listener of a protocol (IMAP 143 and 993).  A session calls L{acquire}
    after a successful login, and L{release} once when it ends if that returned C{True}.

    @param max_per_user: sessions of one (user, IP) open at once.
    @param service: protocol name, for the log.
    """

    shared: Share | None = None
    """Where the counts are kept for the whole server (C{[server] workers}); C{None}: in this
    process alone."""

    def __init__(self, max_per_user: int, service: str) -> None:
        self.max_per_user = max_per_user
        self.service = service
        self.open: Counter[tuple[str, str]] = Counter()  # this process's sessions

    def acquire(self, user: str, ip: str) -> bool | Deferred[bool]:
        """Count a new session of C{user} from C{ip}; C{False} (and a log line) when that
        would be more than C{max_per_user} (for the whole server: a worker's answer comes
        from the parent, as a Deferred)."""
        key = (user, ip)
        if self.shared is None:
            return self._admit((self.open[key] < self.max_per_user, self.open[key], 0), key)
        answer = self.shared.session(user, ip, self.max_per_user)
        if isinstance(answer, Deferred):
            return answer.addCallback(self._admit, key)
        return self._admit(answer, key)

    def _admit(self, answer: Admission, key: tuple[str, str]) -> bool:
        ok, count, _ = answer
        if not ok:
            log.warn(
                "{service}: refused a login: user={user} ip={ip} has {count} sessions open"
                " (limit {limit})",
                service=self.service,
                user=key[0],
                ip=key[1],
                count=count,
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
        if self.shared is not None:
            self.shared.release(user, ip)
