"""One outbound delivery attempt: the hosts of a domain -> connect -> EHLO -> STARTTLS ->
MAIL / RCPT per recipient -> DATA, with a result per recipient (RFC 5321 §3.3, §5.1, §4.5.3.2).

L{Outbound.send} finds the hosts to try (a static route, the smarthost, or the MX hosts
from L{twistedmail.dns.resolve_mx}) and tries them in order until one session gives an answer
for the recipients (RFC 5321 §5.1: a connection failure or a temporary failure before RCPT
tries the next host).  The session is L{RelaySender}, Twisted's C{ESMTPClient} state machine
with what stock Twisted's client side gets wrong fixed:

  - dot-stuffing survives the 16 KiB chunk boundaries of C{FileSender} (the stock
    C{transformChunk} forgets that the previous chunk ended a line, so a "." line at a
    boundary ended the message early and the rest of the body ran as a second envelope on
    the receiving server: SMTP smuggling); lone CR and LF are sent as CRLF (RFC 5321 §2.3.8);
  - STARTTLS is opportunistic and unverified for MX hosts (RFC 3207; RFC 7435): used when
    offered, never with a certificate check (there is no name to check against without DANE or
    MTA-STS); plaintext only when the server does not offer STARTTLS;
  - to a smarthost (L{Smarthost}) TLS is mandatory, STARTTLS (RFC 3207) or implicit (RFC 8314
    §3), with the certificate verified against the system CAs or a configured CA file: no
    plaintext fallback, nothing of the transaction is sent before TLS is up; then AUTH PLAIN
    (RFC 4616) or LOGIN (RFC 4954) when a username is configured;
  - SIZE (RFC 1870) and BODY=8BITMIME (RFC 6152) are declared on MAIL when offered;
  - PIPELINING (RFC 2920): when offered, MAIL, every RCPT and DATA go in one write and the
    replies are matched to them in order;
  - each command waits as long as RFC 5321 §4.5.3.2 says (L{TIMEOUTS}).

A session that has its answers (the reply to the final dot) hands them over at once; its QUIT
finishes in the background, so the queue records a 250 without waiting for the 221.
L{Outbound.abort} cuts every open session (server shutdown).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import random
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, endpoints, ssl
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IResolver,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.python.failure import Failure

from twistedmail.dns import (
    DNSLookupError,
    PermanentDNSError,
    TemporaryDNSError,
    host_addresses,
    resolve_mx,
)

log = Logger(namespace="twistedmail.outbound")

# RFC 5321 §4.5.3.2: how long the client waits for each reply, in seconds.
TIMEOUTS = {
    b"": 300,  # §4.5.3.2.1 initial 220 greeting: 5 minutes
    b"MAIL": 300,  # §4.5.3.2.2: 5 minutes
    b"RCPT": 300,  # §4.5.3.2.3: 5 minutes
    b"DATA": 120,  # §4.5.3.2.4 DATA initiation: 2 minutes
    b"BLOCK": 180,  # §4.5.3.2.5 data block: 3 minutes
    b".": 600,  # §4.5.3.2.6 DATA termination: 10 minutes
}
CONNECT_TIMEOUT = 30  # seconds per address (not in RFC 5321; Postfix's default)
# SMTPClient's _expected when every reply code goes to the same handler (pipelining)
_ANY_REPLY = list(range(0, 1000))
STARTTLS, IMPLICIT = "starttls", "implicit"  # how a smarthost session gets its TLS

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@attrs.frozen
class RecipientResult:
    """The outcome of one attempt for one recipient.

    @ivar code: the SMTP reply code (RFC 5321 §4.2): 2xx delivered, 4xx try again later,
        5xx permanent.  Local failures (DNS, no connection) get a code of our own.
    @ivar status: the RFC 3463 enhanced status code (from the reply, or derived).
    @ivar diagnostic: the remote reply as text (C{"550 5.1.1 No such user"}) or our own
        explanation; one line, for logs and the DSN Diagnostic-Code.
    @ivar remote_mta: the host that answered, or C{None} when none did.
    """

    address: str
    code: int
    status: str
    diagnostic: str
    remote_mta: str | None = None

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500


def enhanced_status(code: int, text: str) -> str:
    """The RFC 3463 code at the start of C{text}, else C{"X.0.0"} from the reply code."""
    m = _ENHANCED.match(text)
    if m and m.group(1) == str(code)[0]:
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return f"{str(code)[0]}.0.0" if 200 <= code < 600 else "4.0.0"


def _one_line(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return " ".join(text.split())


@attrs.frozen
class Smarthost:
    """The relay host everything goes through (Postfix's C{relayhost}), with mandatory TLS.

    @ivar host: its name, checked against its certificate (a name or an IP address).
    @ivar tls: L{STARTTLS} (RFC 3207, required: no plaintext fallback) or L{IMPLICIT}
        (RFC 8314 §3, TLS from the first byte, port 465 usually).
    @ivar username: the AUTH identity (RFC 4954), or C{None} to send without AUTH.
    @ivar trust: the CAs its certificate must chain to (an C{IOpenSSLTrustRoot}, see
        L{trust_root}); C{None}: the system's (C{ssl.platformTrust()}).
    """

    host: str
    port: int
    tls: str = STARTTLS
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    trust: Any = None

    def client_tls(self) -> IOpenSSLClientConnectionCreator:
        """A verifying TLS client for C{host}, as C{twisted.mail.smtp.sendmail} builds one
        (C{optionsForClientTLS}: the name and the chain are checked; no plaintext fallback)."""
        trust = self.trust if self.trust is not None else ssl.platformTrust()
        return ssl.optionsForClientTLS(self.host, trustRoot=trust)


def trust_root(ca_file: Path) -> Any:
    """The CA certificates of a PEM file (one or more) as a trust root.

    @raise ValueError: the file holds no PEM certificate.  @raise OSError: unreadable.
    """
    certificates = x509.load_pem_x509_certificates(ca_file.read_bytes())
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certificates]
    )


class HostFailure(Exception):
    """A session ended before it gave an answer per recipient: try the next host.

    @ivar code: the reply code that ended it (C{451} for a local reason: refused, timeout).
    @ivar status: the RFC 3463 detail of the reply that ended it, as a temporary status
        (C{535 5.7.8} -> C{4.7.8}), or C{None} when it had none.
    """

    def __init__(self, code: int, text: str, status: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.status = status


class RelaySender(smtp.ESMTPClient):
    """One SMTP client session carrying one message to the recipients of one destination.

    @ivar done: fires with the list of L{RecipientResult}s once the server has answered
        every recipient (and DATA), or fails with L{HostFailure}.
    """

    # SMTPClient says `timeout = None` with no annotation, so mypy takes None for its type;
    # it is TimeoutMixin's idle timeout in seconds, None for none.
    timeout = TIMEOUTS[b""]  # type: ignore[assignment]
    debug = False  # Twisted's session log would keep message text in memory

    def __init__(
        self,
        *,
        identity: str,
        sender: str | None,
        recipients: Sequence[str],
        message: bytes,
        remote_mta: str,
        tls_context: CertificateOptions | IOpenSSLClientConnectionCreator | None,
        clock: Any = None,
        require_tls: bool = False,
        implicit_tls: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(None, tls_context, identity.encode("ascii"))
        # A smarthost: TLS (and AUTH when configured) before anything else; no HELO fallback.
        self.requireTransportSecurity = require_tls
        self.requireAuthentication = credentials is not None
        self.implicit_tls = implicit_tls
        self.credentials = credentials
        self.sender = sender
        self.recipients = list(recipients)
        self.message = message
        self.remote_mta = remote_mta
        self.done: defer.Deferred[list[RecipientResult]] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.extensions: dict[bytes, bytes | None] = {}
        self._sent_from = False
        self._line_start = True  # the previous chunk ended a line (or nothing was sent)
        self._held_cr = b""  # a CR at the end of a chunk, whose LF may start the next one
        if clock is not None:
            # TimeoutMixin documents callLater as the attribute to replace for another clock.
            self.callLater = clock.callLater  # type: ignore[method-assign]

    # -- the client state machine (twisted.mail.smtp.SMTPClient) ------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.implicit_tls:
            self._tlsMode = True  # RFC 8314 §3: TLS from the start; no STARTTLS

    def sendLine(self, line: bytes) -> None:
        # RFC 5321 §4.5.3.2: each command has its own reply timeout.
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
        self.setTimeout(TIMEOUTS.get(verb, TIMEOUTS[b"MAIL"]))
        super().sendLine(line)

    def esmtpState_serverConfig(self, code: int, resp: bytes) -> None:
        self.extensions = {}
        for line in resp.splitlines():
            parts = line.split(None, 1)
            if parts:
                self.extensions[parts[0].upper()] = parts[1] if len(parts) > 1 else None
        super().esmtpState_serverConfig(code, resp)

    def authenticate(self, code: int, resp: bytes, items: dict[bytes, bytes | None]) -> None:
        """AUTH with the configured credentials, else straight to MAIL (replaces Twisted's,
        which retries a refused PLAIN in another form: two failures per attempt)."""
        if self.credentials is None:
            self.smtpState_from(code, resp)
            return
        if not self._tlsMode:  # RFC 4954 §4: never a password over an unprotected session
            self.esmtpTLSRequired()
            return
        mechanisms = (self.extensions.get(b"AUTH") or b"").upper().split()
        user, password = (c.encode("utf-8") for c in self.credentials)
        self._failresponse = self.esmtpAUTHDeclined
        if b"PLAIN" in mechanisms:
            # RFC 4616 §2: [authzid] NUL authcid NUL passwd, with an initial response.
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            self._expected = [235]
            self._okresponse = self.smtpState_from
            self.sendLine(b"AUTH PLAIN " + token)
        elif b"LOGIN" in mechanisms:
            self._expected = [334]
            self._okresponse = self._login_step
            self._login_answers = [base64.b64encode(user), base64.b64encode(password)]
            self.sendLine(b"AUTH LOGIN")
        else:
            self.esmtpAUTHRequired()

    def _write(self, data: bytes) -> None:
        """Send C{data} as it is (the reply handlers only run while connected)."""
        assert self.transport is not None
        self.transport.write(data)

    def abort(self) -> None:
        """Cut the connection now, without QUIT (no-op once it is closed)."""
        if self.transport is not None:
            # Protocol.transport is typed as the plain ITransport; ours is a TCP connection
            # (or TLS over one), whose ITCPTransport has abortConnection.
            cast(ITCPTransport, self.transport).abortConnection()

    def _login_step(self, code: int, resp: bytes) -> None:
        # AUTH LOGIN: the server asks for the user name, then the password (334 each).
        answer = self._login_answers.pop(0)
        if not self._login_answers:
            self._expected = [235]
            self._okresponse = self.smtpState_from
        self._write(answer + b"\r\n")

    def esmtpAUTHRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        self.sendError(
            smtp.AUTHRequiredError(451, b"4.7.0 No AUTH PLAIN or LOGIN offered after TLS")
        )

    def esmtpTLSRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        # Nothing of the transaction has been sent; QUIT and try later (no plaintext).
        self.sendError(smtp.TLSRequiredError(451, b"4.7.0 STARTTLS not offered; TLS is required"))

    def _mail_command(self) -> bytes:
        line = b"MAIL FROM:<" + (self.sender or "").encode("utf-8") + b">"
        if b"SIZE" in self.extensions:
            line += b" SIZE=%d" % len(self.message)  # RFC 1870 §6
        if b"8BITMIME" in self.extensions and _has_8bit(self.message):
            line += b" BODY=8BITMIME"  # RFC 6152 §3
        return line

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if self._sent_from:
            self._disconnectFromServer()  # one message per session
            return
        self._sent_from = True
        self._from = self.sender or ""
        self._failresponse = self.smtpTransferFailed
        if b"PIPELINING" in self.extensions:
            self._send_pipelined()
            return
        self.sendLine(self._mail_command())
        self._expected = [250]
        self._okresponse = self.smtpState_to

    # -- RFC 2920 pipelining ------------------------------------------------------------

    def _send_pipelined(self) -> None:
        """RFC 2920 §3.1: MAIL, the RCPTs and DATA (the last of the group) in one write."""
        lines = [self._mail_command()]
        lines += [b"RCPT TO:<" + r.encode("utf-8") + b">" for r in self.recipients]
        lines.append(b"DATA")
        self.toAddressesResult = []
        self.successAddresses = []
        self._pipeline_step = 0
        self._mail_reply: tuple[int, bytes] = (0, b"")
        self._expected = _ANY_REPLY
        self._okresponse = self._pipelined_reply
        self._failresponse = self._pipelined_reply
        self.setTimeout(TIMEOUTS[b"RCPT"])
        self._write(b"".join(line + b"\r\n" for line in lines))

    def _pipelined_reply(self, code: int, resp: bytes) -> None:
        """One reply of the group, in order (RFC 2920 §3.1): MAIL, each RCPT, then DATA."""
        step = self._pipeline_step
        self._pipeline_step += 1
        if step == 0:
            self._mail_reply = (code, resp)
            return
        if step <= len(self.recipients):
            address = self.recipients[step - 1]
            self.toAddressesResult.append((address, code, resp))
            if 200 <= code < 300:
                self.successAddresses.append(address)
            return
        mail_code, mail_resp = self._mail_reply
        if not 200 <= mail_code < 300:
            # MAIL refused: its reply is the answer for every recipient.
            self.toAddressesResult, self.successAddresses = [], []
            result = (mail_code, mail_resp)
        elif not self.successAddresses:
            result = (-1, b"No recipient accepted")
        elif code == 354:
            self.smtpState_data(code, resp)
            return
        else:
            result = (code, resp)  # DATA refused: the answer for the accepted recipients
        if code == 354:
            # RFC 2920 §3.1: DATA was accepted although there is nothing to send: end it
            # with an empty message and report the earlier failures.
            self._expected = _ANY_REPLY
            self._okresponse = self._failresponse = lambda c, r: self.smtpState_msgSent(*result)
            self.sendLine(b".")
            return
        self.smtpState_msgSent(*result)

    def smtpState_data(self, code: int, resp: bytes) -> None:
        super().smtpState_data(code, resp)
        self.setTimeout(TIMEOUTS[b"BLOCK"])

    def getMailTo(self) -> list[str]:
        return self.recipients

    def getMailData(self) -> io.BytesIO:
        return io.BytesIO(self.message)

    def transformChunk(self, chunk: bytes) -> bytes:
        """Dot-stuff one chunk of the message, remembering where the last one ended.

        RFC 5321 §4.5.2: a line starting with "." gets one more "." — including a line that
        starts at the beginning of this chunk, which the stock method misses: it does not
        remember that the previous 16 KiB chunk ended a line, so a "." line there ended the
        message early and the rest ran as a second transaction on the receiver (outbound SMTP
        smuggling).  RFC 5321 §2.3.8: CR and LF are sent only as CRLF.
        """
        self.resetTimeout()
        data = self._held_cr + chunk
        self._held_cr = b""
        if data.endswith(b"\r"):
            data, self._held_cr = data[:-1], b"\r"
        if not data:
            return b""
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        data = data.replace(b"\r\n.", b"\r\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        return data

    def finishedFileTransfer(self, lastsent: bytes) -> None:
        if self._held_cr:
            self._write(b"\r\n")
            self._held_cr, self._line_start = b"", True
        # RFC 5321 §4.1.1.4: the data ends with CRLF "." CRLF; a message whose last line
        # has no line end gets one.
        self.sendLine(b"." if self._line_start else b"\r\n.")

    def sentMail(
        self,
        code: int,
        resp: bytes,
        numOk: int,
        addresses: list[tuple[Any, int, bytes]],
        log: object,
    ) -> None:
        results = []
        answered = {str(a): (c, r) for a, c, r in addresses}
        for rcpt in self.recipients:
            if rcpt in answered and not 200 <= answered[rcpt][0] < 300:
                rcode, rtext = answered[rcpt]
            elif code < 0:
                rcode, rtext = 451, b"4.3.0 No recipient accepted"
            else:
                rcode, rtext = code, resp  # MAIL refused, or the reply to the final dot
            text = _one_line(rtext)
            results.append(
                RecipientResult(
                    rcpt,
                    rcode,
                    enhanced_status(rcode, text),
                    f"{rcode} {text}",
                    self.remote_mta,
                )
            )
        if not self.done.called:
            self.done.callback(results)

    def sendError(self, exc: BaseException) -> None:
        if not self.done.called:
            code = getattr(exc, "code", -1)
            resp = getattr(exc, "resp", b"") or str(exc)
            text = _one_line(resp)
            if isinstance(code, int) and 400 <= code < 600:
                self.done.errback(Failure(HostFailure(code, f"{code} {text}")))
            else:
                self.done.errback(Failure(HostFailure(451, text or type(exc).__name__)))
        super().sendError(exc)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason or Failure(ConnectionError("connection lost")))
        if not self.done.called:
            text = "Connection lost"
            if reason is not None and reason.check(SSL.Error, VerificationError):
                # A certificate that does not verify (chain or name), or no common protocol.
                text = f"TLS handshake failed: {_one_line(str(reason.value))}"
            self.done.errback(Failure(HostFailure(451, text)))
        self.closed.callback(None)


def _has_8bit(message: bytes) -> bool:
    return any(b > 127 for b in message)


@attrs.frozen
class Hop:
    """One address to connect to: C{address} (IP text), C{port}, C{name} (for logs/DSN)."""

    address: str
    port: int
    name: str


Connect = Callable[[Hop], IStreamClientEndpoint]


class Outbound:
    """Delivers one message to the recipients of one domain, trying its hosts in order.

    @param reactor: connects (C{IReactorTCP}) and times out (C{IReactorTime}).
    @param resolver: an C{IResolver} for MX, A and AAAA lookups.
    @param hostname: our EHLO name (RFC 5321 §4.1.1.1).
    @param port: the TCP port of MX hosts: 25, other values only for tests.
    @param smarthost: the L{Smarthost} to send everything through instead of MX lookup
        (mandatory, verified TLS; AUTH when it has a username).
    @param routes: domain -> (host, port), checked first (a transport map).
    @param tls_context: the client context for STARTTLS; C{None} builds one that does not
        verify certificates (opportunistic TLS, RFC 3207 / RFC 7435).
    @param connect: builds the endpoint for a L{Hop} (tests); default TCP with a 30 s
        connect timeout.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        resolver: IResolver,
        hostname: str,
        port: int = 25,
        smarthost: Smarthost | None = None,
        routes: Mapping[str, tuple[str, int]] | None = None,
        tls_context: CertificateOptions | None = None,
        connect: Connect | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.hostname = hostname
        self.port = port
        self.smarthost = smarthost
        self.routes = dict(routes or {})
        self.tls_context = tls_context if tls_context is not None else CertificateOptions()
        self.connect = connect or self._tcp_endpoint
        self.rng = rng or random.Random()
        self._smarthost_tls = smarthost.client_tls() if smarthost is not None else None
        self.sessions: set[RelaySender] = set()
        self.stopping = False

    def _tcp_endpoint(self, hop: Hop) -> IStreamClientEndpoint:
        if ":" in hop.address:
            return endpoints.TCP6ClientEndpoint(
                self.reactor, hop.address, hop.port, timeout=CONNECT_TIMEOUT
            )
        return endpoints.TCP4ClientEndpoint(
            self.reactor, hop.address, hop.port, timeout=CONNECT_TIMEOUT
        )

    def destination(self, domain: str) -> str:
        """The key concurrency is limited by: the route, the smarthost or the domain."""
        if domain in self.routes:
            host, port = self.routes[domain]
            return f"{host}:{port}"
        if self.smarthost is not None:
            return f"{self.smarthost.host}:{self.smarthost.port}"
        return domain

    def closing(self) -> defer.Deferred[list[Any]]:
        """Fires once every session open now has closed (after its QUIT, or cut)."""
        return defer.DeferredList([s.closed for s in self.sessions])

    def _forget(self, result: None, session: RelaySender) -> None:
        """C{session} has closed: it is no longer open."""
        self.sessions.discard(session)

    def abort(self) -> None:
        """Server shutdown: start no new session, cut the open ones (their recipients get a
        451 result and stay queued)."""
        self.stopping = True
        for session in list(self.sessions):
            session.abort()

    async def hops(self, domain: str) -> list[Hop]:
        """The addresses to try for C{domain}, in order.

        @raise DNSLookupError: the hosts cannot be found (permanently or for now).
        """
        target = self.routes.get(domain)
        if target is None and self.smarthost is not None:
            target = (self.smarthost.host, self.smarthost.port)
        if target is not None:
            host, port = target
            try:
                ipaddress.ip_address(host)
                return [Hop(host, port, host)]
            except ValueError:
                pass
            addresses, temporary = await host_addresses(self.resolver, host)
            if not addresses:
                if temporary:
                    raise TemporaryDNSError(f"Address lookup for {host} failed temporarily")
                raise PermanentDNSError(f"Relay host {host} has no address")
            return [Hop(a, port, host) for a in addresses]
        mxs = await resolve_mx(self.resolver, domain, self.rng)
        return [Hop(a, self.port, mx.name) for mx in mxs for a in mx.addresses]

    async def send(
        self, sender: str | None, domain: str, recipients: Sequence[str], message: bytes
    ) -> list[RecipientResult]:
        """Try to deliver C{message} (bytes, CRLF lines) to C{recipients}: all in C{domain},
        or all with the same L{destination} as C{domain} (the smarthost, a shared route).

        @param sender: the reverse-path, C{None} for C{<>} (bounces).
        @return: one L{RecipientResult} per recipient, in order; never raises for a
            delivery problem (DNS failures and unreachable hosts become 4xx/5xx results).
        """
        try:
            hops = await self.hops(domain)
        except DNSLookupError as e:
            code = 550 if e.status.startswith("5") else 451
            if e.status == "5.1.10":
                code = 556  # RFC 7505 §4.2
            text = f"{code} {e.status} {e}"
            return [RecipientResult(r, code, e.status, text) for r in recipients]
        last = HostFailure(451, "No host to try")
        smarthost = self.smarthost if domain not in self.routes else None
        for hop in hops:
            if self.stopping:
                last = HostFailure(451, "Not tried: the server is shutting down")
                break
            session = self._session(sender, recipients, message, hop, smarthost)
            endpoint = self.connect(hop)
            if smarthost is not None and smarthost.tls == IMPLICIT:
                assert self._smarthost_tls is not None  # built from self.smarthost
                endpoint = endpoints.wrapClientTLS(self._smarthost_tls, endpoint)
            try:
                await endpoints.connectProtocol(endpoint, session)
            except Exception as e:  # ConnectError, timeouts: RFC 5321 §5.1 try the next host
                last = HostFailure(451, f"Cannot connect to {hop.name}[{hop.address}]: {e}")
                log.info("outbound: {domain}: {error}", domain=domain, error=_one_line(str(last)))
                continue
            self.sessions.add(session)
            session.closed.addBoth(self._forget, session)
            if self.stopping:
                session.abort()
            try:
                results = await session.done
            except HostFailure as e:
                remote = enhanced_status(e.code, e.text[4:]) if e.text[:4] == f"{e.code} " else ""
                last = HostFailure(
                    e.code,
                    f"{hop.name}[{hop.address}] said: {e.text}",
                    "4" + remote[1:] if remote and not remote.endswith(".0.0") else None,
                )
                log.info("outbound: {domain}: {error}", domain=domain, error=last.text)
                assert session.transport is not None
                session.transport.loseConnection()
                await session.closed
                continue
            # The answers are in: hand them over now, so the queue records a 250 at once;
            # the QUIT (sent already) finishes in the background, cut by abort().
            return results
        # Every host failed before answering for the recipients: try again later
        # (RFC 5321 §4.5.4.1), even after a 5xx greeting from one host (Postfix does too).
        # RFC 3463: the remote's detail (4.7.8 for a refused AUTH), else no answer / bad
        # connection.
        status = last.status or ("4.4.1" if last.code == 451 else "4.4.2")
        return [RecipientResult(r, 451, status, f"451 {status} {last.text}") for r in recipients]

    def _session(
        self,
        sender: str | None,
        recipients: Sequence[str],
        message: bytes,
        hop: Hop,
        smarthost: Smarthost | None,
    ) -> RelaySender:
        if smarthost is None:  # an MX host or a route: opportunistic, unverified STARTTLS
            return RelaySender(
                identity=self.hostname,
                sender=sender,
                recipients=recipients,
                message=message,
                remote_mta=hop.name,
                tls_context=self.tls_context,
                clock=self.reactor,
            )
        credentials = None
        if smarthost.username is not None:
            credentials = (smarthost.username, smarthost.password or "")
        return RelaySender(
            identity=self.hostname,
            sender=sender,
            recipients=recipients,
            message=message,
            remote_mta=hop.name,
            tls_context=self._smarthost_tls if smarthost.tls == STARTTLS else None,
            clock=self.reactor,
            require_tls=True,
            implicit_tls=smarthost.tls == IMPLICIT,
            credentials=credentials,
        )
