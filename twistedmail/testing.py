"""Fakes shipped for tests: a DNS resolver, a DNS zone, a remote MTA, and the in-process
protocol harness (a synchronous thread runner, a transport that can start TLS).

  - L{FakeResolver}: an C{IResolver} answering MX/A/AAAA/TXT from dicts, with NXDOMAIN,
    SERVFAIL and timeouts on demand (unit tests of L{twistedmail.dns}, no sockets);
  - L{TestZone}: a twisted.names authority for test zones, to serve with
    C{twisted.names.server.DNSServerFactory} on a loopback port (end-to-end tests);
  - L{ScriptedMTA}: a receiving SMTP server (a factory) that answers MAIL, RCPT and DATA as
    scripted (250/451/550 per recipient, per attempt) and records every transaction; with
    STARTTLS or implicit TLS and AUTH PLAIN/LOGIN when asked (to stand in for a smarthost);
  - L{create_test_ca}: a throw-away CA and a server certificate it signed, for tests of
    certificate verification;
  - L{run_now}, L{TLSStringTransport}, L{pump}, L{sasl_plain}: what the unit tests of the
    SMTP, IMAP and POP3 sessions drive a protocol over (StringTransport, no threads);
  - L{SynchronousReactor}: a MemoryReactorClock whose thread pool runs each call at once,
    so a whole L{twistedmail.service.MailServer} can be built and driven in process;
  - L{inbound_for}, L{submission_for}: the port 25 and 587/465 factories for a test host;
  - L{autoconfig_servers}: the servers an autoconfig document lists;
  - L{run_cli}: the C{twistedmail} admin command run in process, its output captured.

Nothing here is used by the server itself.
"""

from __future__ import annotations

import base64
import datetime
import io
import ipaddress
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import ServerFactory
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import authority, common, dns
from twisted.names import error as dns_error
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

# -- DNS ---------------------------------------------------------------------------------

NXDOMAIN = "nxdomain"
SERVFAIL = "servfail"
TIMEOUT = "timeout"

_FAILURES = {
    NXDOMAIN: dns_error.DNSNameError,
    SERVFAIL: dns_error.DNSServerError,
    TIMEOUT: dns_error.DNSQueryTimeoutError,
}


def _records(
    mx: Mapping[str, Sequence[tuple[int, str]]],
    a: Mapping[str, Sequence[str]],
    aaaa: Mapping[str, Sequence[str]],
    txt: Mapping[str, Sequence[str]],
    srv: Mapping[str, Sequence[tuple[int, int, int, str]]] | None = None,
    cname: Mapping[str, str] | None = None,
    ptr: Mapping[str, Sequence[str]] | None = None,
) -> dict[bytes, list[Any]]:
    records: dict[bytes, list[Any]] = {}

    def add(name: str, record: Any) -> None:
        records.setdefault(name.lower().rstrip(".").encode("ascii"), []).append(record)

    for name, hosts in mx.items():
        for preference, host in hosts:
            add(name, dns.Record_MX(preference, host.encode("ascii"), ttl=60))
    for name, addresses in a.items():
        for address in addresses:
            add(name, dns.Record_A(address, ttl=60))
    for name, addresses in aaaa.items():
        for address in addresses:
            add(name, dns.Record_AAAA(address, ttl=60))
    for name, texts in txt.items():
        for text in texts:
            # RFC 1035 §3.3.14: strings of at most 255 octets (a DKIM key is longer)
            data = text.encode("ascii")
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            add(name, dns.Record_TXT(*chunks, ttl=60))
    for name, services in (srv or {}).items():
        for priority, weight, port, target in services:
            add(name, dns.Record_SRV(priority, weight, port, target.encode("ascii"), ttl=60))
    for name, target in (cname or {}).items():
        add(name, dns.Record_CNAME(target.encode("ascii"), ttl=60))
    for name, targets in (ptr or {}).items():
        for target in targets:
            add(name, dns.Record_PTR(target.encode("ascii"), ttl=60))
    return records


class FakeResolver(common.ResolverBase):
    """An C{IResolver} over dicts: C{mx={"example.net": [(10, "mx1.example.net")]}},
    C{a={"mx1.example.net": ["127.0.0.1"]}}, C{aaaa}, C{txt}.

    A name present in no map is NXDOMAIN; a name present in some map but without records
    of the asked type gets an empty answer (NODATA).  C{failures} forces an outcome per
    (name, type): C{{("example.net", "MX"): SERVFAIL}} (or L{NXDOMAIN}, L{TIMEOUT}).
    C{queries} records each (name, type) asked, in order.
    """

    def __init__(
        self,
        mx: Mapping[str, Sequence[tuple[int, str]]] | None = None,
        a: Mapping[str, Sequence[str]] | None = None,
        aaaa: Mapping[str, Sequence[str]] | None = None,
        txt: Mapping[str, Sequence[str]] | None = None,
        failures: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        super().__init__()
        self.records = _records(mx or {}, a or {}, aaaa or {}, txt or {})
        self.failures = {(n.lower(), t.upper()): f for (n, t), f in (failures or {}).items()}
        self.queries: list[tuple[str, str]] = []

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: Any = None
    ) -> defer.Deferred[tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]]:
        text = name.decode("ascii").lower().rstrip(".")
        type_name = dns.QUERY_TYPES.get(type, str(type))
        self.queries.append((text, type_name))
        forced = self.failures.get((text, type_name))
        if forced is not None:
            return defer.fail(Failure(_FAILURES[forced](text)))
        records = self.records.get(text.encode("ascii"))
        if records is None:
            return defer.fail(Failure(dns_error.DNSNameError(text)))
        answers = [
            dns.RRHeader(text.encode("ascii"), r.TYPE, dns.IN, r.ttl or 60, r, auth=True)
            for r in records
            if r.TYPE == type
        ]
        return defer.succeed((answers, [], []))


class TestZone(authority.FileAuthority):
    """An authoritative zone built in code, for C{twisted.names.server.DNSServerFactory}.

    C{TestZone("example.test", mx=..., a=..., aaaa=..., txt=...)}: the maps are as for
    L{FakeResolver}, names absolute without the trailing dot; names under the zone without
    records are answered NXDOMAIN (authoritatively).  Also C{srv={"_imaps._tcp.example.test":
    [(0, 1, 993, "mail.example.test")]}}, C{cname={"autoconfig.example.test":
    "mail.example.test"}} and C{ptr={"10.2.0.192.in-addr.arpa": ["mail.example.test"]}}.
    """

    __test__ = False  # not a pytest test class

    # FileAuthority sets soa and records to None in its class body, with no annotation, so
    # mypy takes None for their type; loadFile is documented to fill them in.
    soa: tuple[bytes, dns.Record_SOA]  # type: ignore[assignment]
    records: dict[bytes, list[Any]]  # type: ignore[assignment]

    def __init__(
        self,
        origin: str,
        mx: Mapping[str, Sequence[tuple[int, str]]] | None = None,
        a: Mapping[str, Sequence[str]] | None = None,
        aaaa: Mapping[str, Sequence[str]] | None = None,
        txt: Mapping[str, Sequence[str]] | None = None,
        srv: Mapping[str, Sequence[tuple[int, int, int, str]]] | None = None,
        cname: Mapping[str, str] | None = None,
        ptr: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._origin = origin.lower().rstrip(".")
        self._maps = (mx or {}, a or {}, aaaa or {}, txt or {}, srv, cname, ptr)
        super().__init__(origin)

    def loadFile(self, filename: Any) -> None:
        origin = self._origin.encode("ascii")
        self.soa = (
            origin,
            dns.Record_SOA(
                mname=b"ns." + origin,
                rname=b"hostmaster." + origin,
                serial=1,
                refresh=60,
                retry=60,
                expire=60,
                minimum=1,
                ttl=1,
            ),
        )
        self.records = _records(*self._maps)
        self.records.setdefault(origin, []).append(self.soa[1])


# -- a scripted remote MTA ----------------------------------------------------------------


@attrs.frozen
class Transaction:
    """One mail transaction a L{ScriptedMTA} completed with 250 after DATA.

    @ivar data: the message as received, dot-unstuffed, CRLF line ends, without the final
        C{.} line.
    """

    helo: str
    sender: str
    mail_parameters: str
    recipients: tuple[str, ...]
    data: bytes
    tls: bool
    auth: tuple[str, str, str] | None = None  # (mechanism, username, password) that passed


def _address(argument: bytes, prefix: bytes) -> tuple[str, str]:
    rest = argument[len(prefix) :].strip()
    if rest.startswith(b"<") and b">" in rest:
        end = rest.index(b">")
        return rest[1:end].decode("utf-8", "replace").lower(), rest[end + 1 :].strip().decode()
    return rest.decode("utf-8", "replace").lower(), ""


class ScriptedSMTP(LineReceiver):
    """One connection to a L{ScriptedMTA}: a minimal, strict ESMTP server."""

    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20
    factory: ScriptedMTA

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.helo = ""
        self.tls = self.factory.implicit_tls
        self.auth: tuple[str, str, str] | None = None
        self._auth_step: Callable[[bytes], None] | None = None
        self._reset()
        self.reply(self.factory.greeting)

    def _reset(self) -> None:
        self.sender: str | None = None
        self.parameters = ""
        self.recipients: list[str] = []
        self.data: list[bytes] | None = None

    def reply(self, text: str) -> None:
        assert self.transport is not None, "replies are sent while connected"
        self.transport.write(text.encode("ascii") + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            self._data_line(line)
            return
        if self._auth_step is not None:
            step, self._auth_step = self._auth_step, None
            step(line)
            return
        self.factory.commands.append(line)
        if self.factory.on_command is not None:
            self.factory.on_command(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            self.helo = line[5:].decode("ascii", "replace")
            extensions = list(self.factory.extensions)
            if self.factory.tls is not None and not self.tls:
                extensions.append("STARTTLS")
            if self.factory.accounts is not None and self.tls:
                extensions.append("AUTH " + " ".join(self.factory.auth_mechanisms))
            lines = ["mx.scripted.test", *extensions]
            for text in lines[:-1]:
                self.reply("250-" + text)
            self.reply("250 " + lines[-1])
        elif verb == b"HELO":
            self.helo = line[5:].decode("ascii", "replace")
            self.reply("250 mx.scripted.test")
        elif verb == b"STARTTLS" and self.factory.tls is not None and not self.tls:
            self.reply("220 2.0.0 Go ahead")
            # Protocol.transport is typed as the plain ITransport; a listening TCP port's
            # connections also provide ITLSTransport (startTLS).
            cast(ITLSTransport, self.transport).startTLS(self.factory.tls)
            self.tls = True
            self.helo = ""
            self._reset()
        elif verb == b"AUTH" and self.factory.accounts is not None and self.tls:
            self._auth_command(line.split()[1:])
        elif verb == b"MAIL":
            self.sender, self.parameters = _address(line, b"MAIL FROM:")
            self.reply(self.factory.next_reply("MAIL", self.factory.mail_replies))
        elif verb == b"RCPT":
            address, _ = _address(line, b"RCPT TO:")
            script = self.factory.rcpt.get(address, [])
            text = self.factory.next_reply(address, script) if script else "250 2.1.5 OK"
            if text.startswith("2"):
                self.recipients.append(address)
            self.reply(text)
        elif verb == b"DATA":
            if self.sender is None or not self.recipients:
                self.reply("503 5.5.1 Bad sequence of commands")
            else:
                self.data = []
                self.reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self._reset()
            self.reply("250 2.0.0 OK")
        elif verb == b"NOOP":
            self.reply("250 2.0.0 OK")
        elif verb == b"QUIT":
            if self.factory.answer_quit:
                self.reply("221 2.0.0 Bye")
                assert self.transport is not None
                self.transport.loseConnection()
        else:
            self.reply("500 5.5.2 Command not recognized")

    # -- AUTH (RFC 4954; PLAIN RFC 4616, LOGIN) ---------------------------------------

    def _auth_command(self, words: list[bytes]) -> None:
        mechanism = words[0].upper().decode("ascii", "replace") if words else ""
        if mechanism == "PLAIN" and len(words) > 1:
            self._auth_plain(words[1])
        elif mechanism == "PLAIN":
            self._auth_step = self._auth_plain
            self.reply("334 ")
        elif mechanism == "LOGIN":
            self._auth_step = self._auth_login_user
            self.reply("334 VXNlcm5hbWU6")
        else:
            self.reply("504 5.5.4 Unrecognized authentication type")

    def _auth_plain(self, token: bytes) -> None:
        try:
            _, user, password = base64.b64decode(token, validate=True).split(b"\0")
        except ValueError:
            self.reply("501 5.5.2 Malformed AUTH PLAIN")
            return
        self._auth_check("PLAIN", user, password)

    def _auth_login_user(self, token: bytes) -> None:
        user = base64.b64decode(token)
        self._auth_step = lambda t: self._auth_check("LOGIN", user, base64.b64decode(t))
        self.reply("334 UGFzc3dvcmQ6")

    def _auth_check(self, mechanism: str, user: bytes, password: bytes) -> None:
        attempt = (mechanism, user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
        self.factory.auth_attempts.append(attempt)
        assert self.factory.accounts is not None
        if self.factory.accounts.get(attempt[1]) == attempt[2]:
            self.auth = attempt
            self.reply("235 2.7.0 Authentication successful")
        else:
            self.reply("535 5.7.8 Authentication credentials invalid")

    def _data_line(self, line: bytes) -> None:
        assert self.data is not None
        if line != b".":
            self.data.append(line[1:] if line.startswith(b".") else line)
            return
        data = b"".join(part + b"\r\n" for part in self.data)
        text = self.factory.next_reply("DATA", self.factory.data_replies)
        if text.startswith("2"):
            transaction = Transaction(
                helo=self.helo,
                sender=self.sender or "",
                mail_parameters=self.parameters,
                recipients=tuple(self.recipients),
                data=data,
                tls=self.tls,
                auth=self.auth,
            )
            self.factory.transactions.append(transaction)
            if self.factory.on_transaction is not None:
                self.factory.on_transaction(transaction)
        self._reset()
        self.reply(text)


class ScriptedMTA(ServerFactory[ScriptedSMTP]):
    """A receiving SMTP server whose replies are scripted; it records what it received.

    @param rcpt: address -> replies to RCPT for it, one per attempt (the last one repeats):
        C{{"bob@example.net": ["451 4.3.0 Try later", "250 2.1.5 OK"]}}.  Unlisted: 250.
    @param mail_replies: replies to MAIL, one per transaction (the last repeats).
    @param data_replies: replies after the final dot, likewise.
    @param tls: when given, STARTTLS is offered and done with this server context.
    @param implicit_tls: the sessions are TLS from the start (the test wraps the factory in
        C{TLSMemoryBIOFactory}); STARTTLS is then not offered.
    @param accounts: username -> password; AUTH (C{auth_mechanisms}, PLAIN and LOGIN by
        default) is offered after TLS only and checked against it (235, else 535 5.7.8).
        C{None}: no AUTH.
    @param answer_quit: C{False} leaves QUIT unanswered and the connection open.
    @param on_transaction: called with each L{Transaction} as it is recorded.
    @param on_command: called with each command line as it arrives.
    @ivar transactions: the L{Transaction}s answered 2xx after DATA.
    @ivar commands: every command line received (not message data, not AUTH responses).
    @ivar auth_attempts: every (mechanism, username, password) tried.
    """

    protocol = ScriptedSMTP
    noisy = False

    def __init__(
        self,
        rcpt: Mapping[str, Sequence[str]] | None = None,
        mail_replies: Sequence[str] = ("250 2.1.0 OK",),
        data_replies: Sequence[str] = ("250 2.0.0 Queued",),
        extensions: Iterable[str] = ("PIPELINING", "SIZE 52428800", "8BITMIME"),
        tls: CertificateOptions | None = None,
        greeting: str = "220 mx.scripted.test ESMTP",
        on_transaction: Callable[[Transaction], object] | None = None,
        implicit_tls: bool = False,
        accounts: Mapping[str, str] | None = None,
        answer_quit: bool = True,
        auth_mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
        on_command: Callable[[bytes], object] | None = None,
    ) -> None:
        self.on_transaction = on_transaction
        self.on_command = on_command
        self.implicit_tls = implicit_tls
        self.accounts = dict(accounts) if accounts is not None else None
        self.answer_quit = answer_quit
        self.auth_mechanisms = list(auth_mechanisms)
        self.auth_attempts: list[tuple[str, str, str]] = []
        self.rcpt = {k.lower(): list(v) for k, v in (rcpt or {}).items()}
        self.mail_replies = list(mail_replies)
        self.data_replies = list(data_replies)
        self.extensions = list(extensions)
        self.tls = tls
        self.greeting = greeting
        self.transactions: list[Transaction] = []
        self.commands: list[bytes] = []
        self.connections = 0
        self._counters: dict[str, int] = {}

    def next_reply(self, key: str, script: Sequence[str]) -> str:
        n = self._counters.get(key, 0)
        self._counters[key] = n + 1
        return script[min(n, len(script) - 1)]


# -- a test certificate authority -----------------------------------------------------------


def create_test_ca(
    directory: Path, hostname: str, ip_addresses: tuple[str, ...] = ()
) -> tuple[Path, Path, Path]:
    """A new CA and a certificate for C{hostname} (and C{ip_addresses}, as IP subject
    alternative names) it signed (RSA 2048, valid 10 days).

    @return: (the CA certificate, the server certificate, its key), PEM files in
        C{directory}: C{ca.pem}, C{<hostname>.pem}, C{<hostname>.key}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twistedmail test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=10))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname)]
                + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / f"{hostname}.pem"
    key_path = directory / f"{hostname}.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


# -- in-process protocol harness ----------------------------------------------------------


def run_now(f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """A C{run_in_thread} that runs C{f} at once on the calling thread (tests only): its
    result, or its exception as a failed Deferred."""
    return defer.maybeDeferred(f, *args)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]  # no TCP options to fake
    """A StringTransport that can "start TLS": it records the context factory, and what had
    been written before (so a test can check that nothing leaked after the go-ahead reply)."""

    tls_context: Any = None
    written_before_tls: bytes | None = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_context = contextFactory
        self.written_before_tls = self.value()


def pump(transport: StringTransport) -> None:
    """Let a registered pull producer (a FileSender of POP3 RETR/TOP) run to its end."""
    while transport.producer is not None:
        transport.producer.resumeProducing()


def sasl_plain(user: str, password: str, authzid: str = "") -> bytes:
    """The base64 SASL PLAIN initial response (RFC 4616 §2): authzid NUL authcid NUL passwd."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


class _SynchronousPool:
    """The part of a ThreadPool that C{deferToThreadPool} uses, running C{f} on the caller."""

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        try:
            result = f(*a, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class SynchronousReactor(MemoryReactorClock):
    """A MemoryReactorClock whose C{getThreadPool()} runs work at once and whose
    C{callFromThread} calls at once: what the server hands to its thread pool (Maildir and
    account store I/O) completes before the call returns.  No sockets, no threads."""

    def __init__(self) -> None:
        super().__init__()
        self._pool = _SynchronousPool()

    def getThreadPool(self) -> Any:
        return self._pool

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def inbound_for(host: Any, **overrides: Any) -> Any:
    """The port 25 factory (L{inbound_factory}) for a test C{host}: an object with C{store},
    C{delivery} and C{clock}; mail.example.test, 10,000-byte messages, no TLS unless
    C{overrides} say otherwise."""
    from twistedmail.settings import SMTPSettings
    from twistedmail.smtp.inbound import inbound_factory

    settings: dict[str, Any] = {
        "hostname": "mail.example.test",
        "store": host.store,
        "delivery": host.delivery,
        "tls": None,
        "settings": SMTPSettings(max_message_size=10000),
        "clock": host.clock,
    }
    return inbound_factory(**{**settings, **overrides})


def submission_for(host: Any, **overrides: Any) -> Any:
    """The 587/465 factory (L{submission_factory}) for a test C{host}: an object with
    C{store}, C{delivery}, C{portal} and C{clock}; mail.example.test, 10,000-byte messages,
    implicit TLS (465) and no STARTTLS context unless C{overrides} say otherwise."""
    from twistedmail.settings import SMTPSettings
    from twistedmail.smtp.submission import submission_factory

    settings: dict[str, Any] = {
        "hostname": "mail.example.test",
        "store": host.store,
        "delivery": host.delivery,
        "portal": host.portal,
        "tls": None,
        "implicit_tls": True,
        "settings": SMTPSettings(max_message_size=10000),
        "clock": host.clock,
    }
    return submission_factory(**{**settings, **overrides})


# -- HTTP --------------------------------------------------------------------------------


def autoconfig_servers(document: bytes) -> list[tuple[str | None, ...]]:
    """The servers of a Thunderbird autoconfig document (config-v1.1.xml), in order: (tag,
    type, hostname, port, socketType, authentication, username) each."""
    from xml.etree import ElementTree  # our own served document, not input from a peer

    provider = ElementTree.fromstring(document).find("emailProvider")
    assert provider is not None
    return [
        (
            s.tag,
            s.get("type"),
            s.findtext("hostname"),
            s.findtext("port"),
            s.findtext("socketType"),
            s.findtext("authentication"),
            s.findtext("username"),
        )
        for s in provider
        if s.tag.endswith("Server")
    ]


# -- the admin command -------------------------------------------------------------------


def run_cli(
    case: SynchronousTestCase, argv: Sequence[str], stdin: bytes = b""
) -> tuple[int, str, str]:
    """Run the C{twistedmail} command in process: C{cli.main(argv)} reading C{stdin}, its
    standard output and error captured (patched on C{case}, so undone after the test).

    @return: (exit status, stdout, stderr).
    """
    from twistedmail import cli  # the top layer: imported only by the tests that run it

    out, err = io.StringIO(), io.StringIO()
    case.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    case.patch(sys, "stdout", out)
    case.patch(sys, "stderr", err)
    return cli.main(list(argv)), out.getvalue(), err.getvalue()
