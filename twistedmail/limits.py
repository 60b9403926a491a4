"""Concurrent-connection limits of one listener, in total and per client IP, and of one
user's logged-in sessions (issue 5).

L{ConnectionLimit} wraps a listener's protocol factory.  A connection over either limit is
answered with the protocol's own polite refusal and closed, never silently dropped: SMTP
C{421 4.7.0} (RFC 5321 §3.1: a server may refuse a session with 421), IMAP
C{* BYE [UNAVAILABLE]} (RFC 3501 §7.1.5, RFC 5530 §3), POP3 C{-ERR [SYS/TEMP]}
(RFC 3206 §4); see L{refusal_for}.  IPv6 clients count by their /64 prefix, as in the
failed-login throttle.  Like Postfix's C{smtpd_client_connection_count_limit} and Dovecot's
C{process_limit}.

L{UserSessionLimit} counts logged-in sessions per user and client IP, as Dovecot's
C{mail_max_userip_connections} (default 10) does for IMAP; the protocol refuses the login
over it (IMAP C{NO [UNAVAILABLE]}, RFC 5530 §3).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from twistedmail.throttle import ip_key

log = Logger(namespace="twistedmail.limits")

DEFAULT_MAX_CONNECTIONS = 500
DEFAULT_MAX_CONNECTIONS_PER_IP = 20


def refusal_for(service: str, hostname: str) -> bytes:
    """The line a refused client gets, by service name (C{smtp}, C{submission},
    C{submissions}, C{imap}, C{imaps}, C{pop3}, C{pop3s}), CRLF-terminated."""
    if service.startswith("imap"):
        return b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
    if service.startswith("pop3"):
        return b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
    # RFC 5321 §4.2: the greeting (here a 421 in its place) starts with our domain.
    return b"421 4.7.0 %s Too many connections, try again later\r\n" % hostname.encode("ascii")


class _Refused(Protocol):
    """Writes the refusal and closes; whatever the client sends is ignored."""

    def __init__(self, refusal: bytes) -> None:
        self.refusal = refusal

    def connectionMade(self) -> None:
        self.transport.write(self.refusal)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class _Counted(ProtocolWrapper):
    peer_key: str = ""


class ConnectionLimit(WrappingFactory):
    """A listener's factory, limited to C{max_connections} open connections in all and
    C{max_per_ip} from one client IP.

    @param wrapped: the listener's own factory.
    @param max_connections: concurrent connections in all.
    @param max_per_ip: concurrent connections from one IP (one IPv6 /64).
    @param refusal: the bytes sent to a refused client before closing (L{refusal_for}).
    @param service: the listener's name, for the log.
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
    ) -> None:
        super().__init__(wrapped)
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.refusal = refusal
        self.service = service
        self.per_ip: Counter[str] = Counter()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        key = ip_key(str(getattr(addr, "host", addr)))
        if len(self.protocols) >= self.max_connections or self.per_ip[key] >= self.max_per_ip:
            log.warn(
                "{service}: refused a connection from {ip}: {count} open from it, {total} in all",
                service=self.service,
                ip=key,
                count=self.per_ip[key],
                total=len(self.protocols),
            )
            return _Refused(self.refusal)
        wrapper = super().buildProtocol(addr)
        wrapper.peer_key = key
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
