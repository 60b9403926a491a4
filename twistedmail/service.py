"""Builds the running server from a L{Config}: one MultiService with every listener.

Listeners (DESIGN §1): SMTP 25 (STARTTLS), submission 587 (STARTTLS) and 465 (implicit TLS,
RFC 8314 §3.3), IMAP 143 (STARTTLS) and 993 (implicit TLS), POP3 110 (STLS) and 995
(implicit TLS), ManageSieve 4190 (STARTTLS, RFC 5804).  All of them share one account store,
one password checker (one twisted.cred portal for the logins), one Maildir tree and one change
notifier, so a delivery on 25 is pushed at once to an IMAP session in IDLE.

Outbound: one durable queue (L{twistedmail.smtp.queue}) in C{DATA_DIR/queue/}, fed by
submission (remote recipients) and by port 25 (aliases forwarding to remote addresses),
delivered by L{twistedmail.smtp.outbound.Outbound} (MX lookup over twisted.names, or the
configured routes / smarthost).  The control socket C{DATA_DIR/control} (AMP, mode 0600)
lets C{twistedmail queue flush} reach the running queue.

Operations (issue 5): SIGHUP rereads the TLS certificate and key (L{MailServer.reload_tls}),
for new connections on every listener, without dropping open ones; a bad new pair is logged
and the old one kept.  Under C{twistd -u USER -g GROUP} the ports are bound as root in
C{privilegedStartService}, the data dir is handed to USER:GROUP before that
(L{twistedmail.tap.hand_over_data_dir}), and everything that needs no privilege (the control
socket, the queue) starts after twistd has dropped them.

Both cores (issue 10, C{[server] workers}): the same L{MailServer} is built in the parent
(the twistd process) and, with C{adopted} sockets, in each worker process
(L{twistedmail.workers}); a worker serves the parent's listening sockets and leaves to the
parent what must happen once: the queue runner, the control socket, ACME, the metrics
listener, the tmp/ sweep and saving the throttle state.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import weakref
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet import defer, endpoints, threads
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.mail import imap4, pop3
from twisted.names import client as dns_client
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

import twistedmail
from twistedmail import acme
from twistedmail import tls as tlsmod
from twistedmail.accounts import AccountStore
from twistedmail.auth import AuthCache, LoginThrottle, MailRealm, PasswordChecker
from twistedmail.config import (
    Config,
    ConfigError,
    control_path,
    ensure_data_dir,
    mail_dir,
    metrics_token,
    queue_dir,
    smarthost_password,
    store_path,
    tls_paths,
)
from twistedmail.control import control_factory, socket_address
from twistedmail.delivery import LocalDelivery
from twistedmail.dkim import KeyStore
from twistedmail.dns import reverse_name
from twistedmail.dnsbl import Blocklists
from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.server import imap_factory
from twistedmail.imap.watch import FolderWatcher
from twistedmail.limits import ConnectionLimit, UserSessionLimit, rate_refusal, refusal_for
from twistedmail.mailauth import Authenticator
from twistedmail.maildir import (
    StorageReserve,
    UserMaildir,
    clean_tmp,
    mailbox_root,
)
from twistedmail.managesieve import ISieveUser, ManageSieveServer, SieveUser
from twistedmail.metrics import CombinedRegistry, Metrics, ServerState, metrics_resource
from twistedmail.pop3 import MaildirPOP3Mailbox, pop3_factory
from twistedmail.quota import QuotaTracker, usage_by_domain
from twistedmail.rate import HourlyRate, SubmissionRate
from twistedmail.rspamd import JunkLearner, Rspamd
from twistedmail.settings import IMAPSettings, ManageSieveSettings, POP3Settings, SMTPSettings
from twistedmail.smtp.inbound import inbound_factory
from twistedmail.smtp.outbound import Outbound, Smarthost, trust_root
from twistedmail.smtp.queue import QueueRunner, RetrySchedule, Spool
from twistedmail.smtp.submission import submission_factory
from twistedmail.srs import SECRET_FILE, Forwarding, SenderRewriting
from twistedmail.threadhop import ThreadHop
from twistedmail.throttle import ThrottlePolicy, load_throttle, parse_networks, save_throttle
from twistedmail.web import MailService, MailSettings, build_site, mount, mtasts, web_factory
from twistedmail.web.mailsettings import IMPLICIT, STARTTLS
from twistedmail.wire import SessionFactory, use_slotted_connections

log = Logger(namespace="twistedmail.service")

IMPLICIT_TLS = {"submissions", "imaps", "pop3s", "https"}
CLIENT_SERVICES = (  # what autoconfig offers, implicit TLS first (RFC 8314 §3)
    ("imaps", "imap", IMPLICIT),
    ("imap", "imap", STARTTLS),
    ("pop3s", "pop3", IMPLICIT),
    ("pop3", "pop3", STARTTLS),
    ("submissions", "smtp", IMPLICIT),
    ("submission", "smtp", STARTTLS),
)


def mail_settings(config: Config, store: AccountStore) -> MailSettings:
    """What autoconfig, autodiscover and the Apple profile tell clients: the hostname and
    the port of each client listener that is configured (the first, when several)."""
    services = tuple(
        MailService(protocol, config.listen[name][0].port, tls)
        for name, protocol, tls in CLIENT_SERVICES
        if config.listen[name]
    )
    return MailSettings(config.server.hostname, services, store.is_local_domain)


def mta_sts_policy(config: Config) -> bytes:
    """The MTA-STS policy text from C{[mta_sts]} (RFC 8461 §3.2)."""
    return mtasts.policy(config.server.hostname, config.mta_sts.mode, config.mta_sts.max_age)


def server_tls_context(config: Config) -> tlsmod.ServerTLS:
    """The configured certificate, or a self-signed one created on first start.

    @raise twistedmail.tls.TLSConfigError: when the files cannot be loaded.
    """
    cert, key = tls_paths(config)
    if config.tls.acme:  # a crash while a new ACME pair was put in place (twistedmail.acme)
        acme.complete_replacement(cert, key)
    if config.tls.cert is None and not (cert.exists() and key.exists()):
        tlsmod.create_self_signed(cert, key, config.server.hostname)
        log.info(
            "created a self-signed certificate for {host} in {cert}",
            host=config.server.hostname,
            cert=str(cert),
        )
    return tlsmod.ServerTLS.load(cert, key)


def certificate_keeper(
    config: Config, store: AccountStore, reload: Any, reactor: Any
) -> acme.CertificateKeeper:
    """The ACME client keeping the server certificate (C{[tls] acme}): for the hostname and
    the autoconfig./mta-sts. (and, with C{[listen] https}, autodiscover.) names of the local
    domains as they are at each check."""
    cert, key = tls_paths(config)
    settings = acme.AcmeSettings(
        config.tls.acme_directory, config.tls.acme_contact, config.tls.acme_ca
    )
    return acme.CertificateKeeper(
        settings,
        acme.StateDir(config.server.data_dir / "acme"),
        cert,
        key,
        lambda: acme.wanted_names(
            config.server.hostname, store.domains(), https=bool(config.listen["https"])
        ),
        reload,
        reactor,
        lambda f, *args: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *args),
    )


class _Listener(StreamServerEndpointService):
    """A listener that remembers its listening port (workers adopt its socket)."""

    port: Any = None
    shared = True  # served by the workers too

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._waitingForPort is not None:
            self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        self.port = port
        use_slotted_connections(port)  # issue 10: memory per connection
        return port


class _AdoptedListener(Service):
    """In a worker: serves a listening socket the parent bound (descriptor C{fd}), with
    C{reactor.adoptStreamPort} (Twisted's documented way to share one between processes)."""

    def __init__(self, reactor: Any, fd: int, family: int, factory: Factory[Any]) -> None:
        self.reactor, self.fd, self.family, self.factory = reactor, fd, family, factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        self.port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        use_slotted_connections(self.port)  # issue 10: memory per connection
        os.close(self.fd)  # adoptStreamPort serves a duplicate

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


PARENT_ONLY = {"metrics"}
"""Listeners only the parent serves (what they show is the parent's to gather)."""


class _UnprivilegedEndpointService(StreamServerEndpointService):
    """Listens in C{startService}, after twistd dropped root (a UNIX socket needs none),
    so the socket belongs to the user the server runs as."""

    _started = False

    def privilegedStartService(self) -> None:
        if self._started:
            super().privilegedStartService()

    def startService(self) -> None:
        self._started = True
        super().startService()


def dns_resolver(config: Config, reactor: Any) -> Any:
    """A twisted.names resolver: C{[relay] nameservers}, else the system's resolv.conf."""
    servers = [(a.host, a.port) for a in config.relay.nameservers]
    if servers:
        return dns_client.Resolver(servers=servers, reactor=reactor)
    return dns_client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)


def smarthost(config: Config) -> Smarthost | None:
    """C{[relay] smarthost} and its TLS/AUTH keys.  @raise ConfigError: a bad CA or password
    file."""
    relay = config.relay
    if relay.smarthost is None:
        return None
    trust = None
    if relay.smarthost_ca is not None:
        try:
            trust = trust_root(relay.smarthost_ca)
        except (OSError, ValueError) as e:
            where = config.source or "built-in defaults"
            raise ConfigError(
                f"{where}: [relay] smarthost_ca: no CA certificate in {relay.smarthost_ca}: {e}"
            ) from None
    return Smarthost(
        relay.smarthost.host,
        relay.smarthost.port,
        tls=relay.smarthost_tls,
        username=relay.smarthost_username,
        password=smarthost_password(config),
        trust=trust,
    )


AUTHENTICATION_THREADS = 8  # DKIM verifications at once (CPU only: no thread waits on DNS)


def inbound_authenticator(
    config: Config, reactor: Any, pool: ThreadPool, metrics: Metrics | None = None
) -> Authenticator | None:
    """SPF/DKIM/DMARC checks for port 25 (C{[inbound] check_authentication}), with DNS from
    the relay's resolver (C{[relay] nameservers}), asynchronous; DKIM verification runs in
    its own thread C{pool}, so it never holds the threads that store mail and check
    passwords."""
    if not config.inbound.check_authentication:
        return None
    return Authenticator(
        dns_resolver(config, reactor),
        reactor,
        partial(threads.deferToThreadPool, reactor, pool),
        metrics=metrics,
    )


def spam_filter(config: Config, reactor: Any) -> Rspamd | None:
    """rspamd (C{[antispam] rspamd}), or C{None} when off."""
    settings = config.antispam
    if not settings.rspamd:
        return None
    return Rspamd(
        reactor,
        settings.rspamd,
        controller=settings.rspamd_controller,
        password=settings.rspamd_password,
        timeout=settings.timeout,
    )


def smtp_settings(config: Config, name: str) -> SMTPSettings:
    """SMTP listener C{name}'s settings: C{[limits]}, C{[smtp]}, and on port 25 the greeting
    pause of C{[antispam]}."""
    limits = config.limits
    return SMTPSettings(
        max_message_size=limits.max_message_size,
        idle_timeout=limits.smtp_idle_timeout,
        max_recipients=limits.max_recipients,
        max_line_length=limits.max_line_length,
        max_header_size=limits.max_header_size,
        bare_lf=config.smtp.bare_lf,
        greet_pause=config.antispam.greet_pause if name == "smtp" else 0,
    )


def imap_settings(config: Config) -> IMAPSettings:
    """The IMAP listeners' settings, from C{[limits]}."""
    limits = config.limits
    return IMAPSettings(
        max_literal_size=limits.max_message_size, idle_timeout=limits.imap_idle_timeout
    )


def pop3_settings(config: Config) -> POP3Settings:
    """The POP3 listeners' settings, from C{[limits]}."""
    return POP3Settings(idle_timeout=config.limits.pop3_idle_timeout)


def managesieve_settings(config: Config) -> ManageSieveSettings:
    """The ManageSieve listener's settings, from C{[managesieve]}."""
    sieve = config.managesieve
    return ManageSieveSettings(
        max_scripts=sieve.max_scripts,
        max_script_size=sieve.max_script_size,
        max_storage=sieve.max_storage,
        idle_timeout=sieve.idle_timeout,
    )


def inbound_antispam(config: Config, reactor: Any, rspamd: Rspamd | None) -> dict[str, Any]:
    """Port 25's part of C{[antispam]} (issue 14), as L{inbound_factory} keywords: the
    filter, the DNS lists, reverse DNS for the filter and the messages per IP and hour."""
    settings = config.antispam
    checks: dict[str, Any] = {}
    if settings.smtp_messages_per_ip_hour:
        checks["ip_rate"] = HourlyRate(settings.smtp_messages_per_ip_hour, reactor)
    resolver = None
    if settings.dnsbl or settings.dnswl:
        resolver = dns_resolver(config, reactor)
        checks["blocklists"] = Blocklists(resolver, reactor, settings.dnsbl, settings.dnswl)
    if rspamd is not None:
        checks["spam_filter"] = rspamd
        resolver = resolver or dns_resolver(config, reactor)
        checks["reverse_name"] = partial(reverse_name, resolver)
    return checks


def forwarding(config: Config, reactor: Any, delivery: LocalDelivery) -> SenderRewriting | None:
    """C{[forwarding]} (issue 14): set C{delivery}'s SRS rewriting and ARC seal of mail
    forwarded to outside addresses; return the SRS rewriter (C{None} when off), whose
    secret is C{DATA_DIR/srs.secret} (made on first use, mode 0600)."""
    settings = config.forwarding
    srs = SenderRewriting(config.server.data_dir / SECRET_FILE, reactor) if settings.srs else None
    keys = KeyStore(config.server.data_dir / "dkim") if settings.arc else None
    if srs is not None or keys is not None:
        delivery.forwarding = Forwarding(
            srs, keys, config.server.hostname, srs_domain=settings.srs_domain
        )
    return srs


def outbound_queue(
    config: Config,
    reactor: Any,
    store: AccountStore,
    delivery: LocalDelivery,
    run: Any,
    metrics: Metrics | None = None,
) -> QueueRunner:
    """The outbound queue runner and its delivery agent, from C{[relay]} and C{[queue]}."""
    relay, queue = config.relay, config.queue
    outbound = Outbound(
        reactor=reactor,
        resolver=dns_resolver(config, reactor),
        hostname=config.server.hostname,
        port=relay.port,
        smarthost=smarthost(config),
        routes={domain: (a.host, a.port) for domain, a in relay.routes},
    )
    return QueueRunner(
        spool=Spool(queue_dir(config)),
        outbound=outbound,
        store=store,
        local=delivery,
        clock=reactor,
        run_in_thread=run,
        hostname=config.server.hostname,
        signer=KeyStore(config.server.data_dir / "dkim").sign,
        schedule=RetrySchedule(
            first=queue.first_retry,
            maximum=queue.max_retry,
            lifetime=queue.lifetime,
            delay_warning=queue.delay_warning,
        ),
        max_connections=queue.max_connections,
        max_per_destination=queue.max_per_destination,
        metrics=metrics,
    )


def endpoint_for(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP endpoint on C{host:port} (IPv6 when the host is an IPv6 literal)."""
    if ":" in host:
        return endpoints.TCP6ServerEndpoint(reactor, port, interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, interface=host)


TMP_CLEANUP_INTERVAL = 86400.0
"""Seconds between two sweeps of the tmp/ folders (and one at start)."""


class MailServer(MultiService):
    """The whole server: the shared state and one StreamServerEndpointService per listener.

    Attributes for tests and the control socket: C{store}, C{delivery}, C{notifier}, C{portal},
    C{queue} (the L{QueueRunner}).
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        adopted: Mapping[str, Sequence[tuple[int, int]]] | None = None,
        tls: tlsmod.ServerTLS | None = None,
    ) -> None:
        """@param adopted: in a worker process (L{twistedmail.workers}), per listener the
            C{(descriptor, address family)} of the sockets the parent bound; C{None} in the
            parent (the twistd process).
        @param tls: the certificate and key, loaded already (a worker's, read as root by
            its zygote); C{None}: loaded here (L{server_tls_context}).
        @raise ConfigError: see L{ensure_data_dir}.
        @raise twistedmail.tls.TLSConfigError: the certificate cannot be loaded."""
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.adopted = adopted
        self.workers: Any = None  # the parent's twistedmail.workers.Supervisor, if any
        self.rates: dict[str, HourlyRate] = {}  # shared with the other processes (workers)
        ensure_data_dir(config)
        # Opened in startService, after twistd's fork and privilege drop (issue 9).
        self.store = AccountStore(
            store_path(config),
            connect=False,
            recipient_delimiter=config.delivery.recipient_delimiter,
            reactor=reactor,  # asks whether the store changed once per reactor turn
        )
        self.mail_dir = mail_dir(config)
        # outside changes too (Dovecot, an MDA, by hand), by inotify on new/ and cur/
        self.notifier = FolderWatcher(reactor)
        # one MaildirAccount per logged-in user, shared by their sessions (issue 10)
        self._imap_accounts: weakref.WeakValueDictionary[str, MaildirAccount] = (
            weakref.WeakValueDictionary()
        )
        self.tls_context = tls if tls is not None else server_tls_context(config)
        self._previous_sighup: Any = None
        self._queue_starting: defer.Deferred[Any] | None = None  # stopService waits for it
        self._throttle_loaded = False
        self.metrics = Metrics(reactor)  # issue 13: hooks reach it as owner.metrics
        self.started = reactor.seconds()

        # Maildir, index and store I/O in threads: a lighter hop than deferToThreadPool
        run_in_thread = ThreadHop(reactor)
        self.run_in_thread = run_in_thread
        # Maildir: tmp/ files a crash left behind go after 36 hours; at start, then daily
        if adopted is None:  # the parent's job
            cleanup = TimerService(TMP_CLEANUP_INTERVAL, self.clean_tmp)
            cleanup.clock = reactor
            cleanup.setName("tmp-cleanup")
            cleanup.setServiceParent(self)
        limits = config.limits
        # One failed-login throttle for SMTP AUTH, IMAP and POP3 (issue 5).
        self.throttle = LoginThrottle(
            reactor,
            ThrottlePolicy(
                window=limits.login_failure_window,
                block_after=limits.login_block_after,
                ip_block_after=limits.login_ip_block_after,
                account_block_after=limits.login_account_block_after,
                block_time=limits.login_block_time,
                exempt=parse_networks(limits.login_throttle_exempt),
            ),
        )
        self.throttle_path = config.server.data_dir / "throttle.json"
        auth = config.auth
        # Issue 10: successful logins cached (Dovecot's auth_cache); hashes bounded.
        self.auth_cache = (
            AuthCache(reactor, auth.cache_ttl, auth.cache_size) if auth.cache_ttl else None
        )
        checker = PasswordChecker(
            self.store,
            run_in_thread,
            self.throttle,
            cache=self.auth_cache,
            max_parallel_hashes=auth.max_parallel_hashes or None,
            metrics=self.metrics,
        )
        self.quota = QuotaTracker(self.store, self.mail_dir, run_in_thread)
        self.delivery = LocalDelivery(
            self.store,
            self.mail_dir,
            self.notifier,
            run_in_thread,
            self.quota,
            hostname=config.server.hostname,
            plus_folder=config.delivery.plus_folder,
            sieve_limits=config.delivery.sieve,
            metrics=self.metrics,
        )
        self.queue = outbound_queue(
            config, reactor, self.store, self.delivery, run_in_thread, self.metrics
        )
        self.srs = forwarding(config, reactor, self.delivery)
        # Sieve redirect, vacation and reject leave through the same queue as submission.
        self.delivery.outbound = self.queue.enqueue
        realm = MailRealm(
            {
                imap4.IAccount: self._imap_account,
                pop3.IMailbox: lambda address: MaildirPOP3Mailbox(
                    mailbox_root(self.mail_dir, address), run_in_thread, self.notifier
                ),
                ISieveUser: lambda address: SieveUser(
                    address, mailbox_root(self.mail_dir, address)
                ),
            }
        )
        self.portal = Portal(realm, [checker])
        self.auth_reactor = reactor
        # Its threads start in startService: a thread does not survive twistd's fork.
        self.auth_pool = ThreadPool(0, AUTHENTICATION_THREADS, "twistedmail-mailauth")
        self.authenticator = inbound_authenticator(config, reactor, self.auth_pool, self.metrics)
        self.spam_filter = spam_filter(config, reactor)
        hostname = config.server.hostname
        # One count per user for 587 and 465 (issue 14).
        self.submission_rate = SubmissionRate(
            limits.submission_messages_per_hour, limits.submission_recipients_per_hour, reactor
        )
        self.rates["submission.messages"] = self.submission_rate.messages
        self.rates["submission.recipients"] = self.submission_rate.recipients
        reserve = StorageReserve(config.server.data_dir, limits.min_free_space, reactor.seconds)
        rspamd = self.spam_filter
        submission = partial(
            submission_factory,
            hostname=hostname,
            store=self.store,
            delivery=self.delivery,
            portal=self.portal,
            clock=reactor,
            queue=self.queue,
            check_from_header=config.submission.check_from_header,
            spam_filter=rspamd if config.antispam.check_submission else None,
            rate=self.submission_rate,
            storage_reserve=reserve,
            metrics=self.metrics,
        )
        # One count for 143 and 993 (issue 5; Dovecot's mail_max_userip_connections).
        self.imap_user_limit = UserSessionLimit(limits.imap_max_connections_per_user, "imap")
        self.connection_limits: dict[str, ConnectionLimit] = {}
        imap = partial(
            imap_factory,
            portal=self.portal,
            clock=reactor,
            settings=imap_settings(config),
            quota=self.quota,
            user_limit=self.imap_user_limit,
            # issue 14: learning from moves into and out of Junk
            copy_observer=JunkLearner(rspamd)
            if rspamd is not None and config.antispam.rspamd_controller
            else None,
        )
        pop = partial(
            pop3_factory, portal=self.portal, clock=reactor, settings=pop3_settings(config)
        )
        antispam = inbound_antispam(config, reactor, rspamd)
        if "ip_rate" in antispam:
            self.rates["smtp.messages_per_ip"] = antispam["ip_rate"]
        factories: dict[str, Factory[Any]] = {
            "smtp": inbound_factory(
                hostname=hostname,
                store=self.store,
                delivery=self.delivery,
                tls=self.tls_context,
                settings=smtp_settings(config, "smtp"),
                clock=reactor,
                queue=self.queue,
                authenticator=self.authenticator,
                dmarc_reject=config.inbound.dmarc_reject,
                srs=self.srs,  # bounces to SRS addresses (issue 14)
                srs_domain=config.forwarding.srs_domain,
                storage_reserve=reserve,
                metrics=self.metrics,
                **antispam,
            ),
        }
        # The HTTP listener (issue 13); other paths mount on self.web_root with putChild.
        self.web_root = build_site(mail_settings(config, self.store), mta_sts_policy(config))
        factories["http"] = factories["https"] = web_factory(self.web_root, reactor)
        self.acme: acme.CertificateKeeper | None = None
        parent_only = set(PARENT_ONLY)
        if config.tls.acme:
            parent_only.add("http")  # the parent holds the http-01 challenges
        if config.metrics.token_file is not None:
            parent_only |= {"http", "https"}  # their /metrics is the parent's
        if config.tls.acme and adopted is None:
            self.acme = certificate_keeper(config, self.store, self.reload_tls, reactor)
            mount(self.web_root, acme.CHALLENGE_PATH, self.acme.challenges)
            # RFC 8555 has no schedule; renew 30 days ahead, checked at start, then daily
            renewal = TimerService(acme.CHECK_INTERVAL, self.acme.check)
            renewal.clock = reactor
            renewal.setName("acme-renewal")
            renewal.setServiceParent(self)
        if adopted is None:
            factories["metrics"] = self._metrics_site(config, reactor)  # [listen] metrics
        # Each service twice: STARTTLS on the plain port, implicit TLS (RFC 8314) on the other.
        factories["submission"] = submission(
            tls=self.tls_context, implicit_tls=False, settings=smtp_settings(config, "submission")
        )
        factories["submissions"] = submission(
            tls=None, implicit_tls=True, settings=smtp_settings(config, "submissions")
        )
        for plain, implicit, make in (("imap", "imaps", imap), ("pop3", "pop3s", pop)):
            factories[plain] = make(tls=self.tls_context, implicit_tls=False)
            factories[implicit] = make(tls=None, implicit_tls=True)
        factories["managesieve"] = SessionFactory(  # RFC 5804: STARTTLS on 4190
            ManageSieveServer,
            managesieve_settings(config),
            portal=self.portal,
            tls=self.tls_context,
            clock=reactor,
            run_in_thread=run_in_thread,
        )
        per_ip_hour = config.antispam.smtp_connections_per_ip_hour
        for name, factory in factories.items():
            # (not shared as the other rates: with workers the parent counts every attempt)
            rate = HourlyRate(per_ip_hour, reactor) if name == "smtp" and per_ip_hour else None
            # Connections over [limits] get the protocol's polite refusal (issue 5).
            limited = ConnectionLimit(
                factory,
                max_connections=limits.max_connections,
                max_per_ip=limits.max_connections_per_ip,
                refusal=refusal_for(name, hostname),
                service=name,
                clock=reactor,
                metrics=self.metrics,
                # issue 14: connection rate on port 25
                rate=rate,
                rate_refusal=rate_refusal(hostname),
            )
            self.connection_limits[name] = limited
            if adopted is not None and name in parent_only:
                continue
            for i, address in enumerate(config.listen[name]):
                wrapped = (
                    TLSMemoryBIOFactory(self.tls_context, False, limited)
                    if name in IMPLICIT_TLS
                    else limited
                )
                svc: Service
                if adopted is not None:
                    svc = _AdoptedListener(reactor, *adopted[name][i], wrapped)
                else:
                    svc = _Listener(endpoint_for(reactor, address.host, address.port), wrapped)
                    svc._raiseSynchronously = True  # a port in use stops the start (exit 1)
                    svc.shared = name not in parent_only
                svc.setName(f"{name}@{address}")
                svc.setServiceParent(self)
        if adopted is not None:
            return  # the control socket is the parent's
        control = _UnprivilegedEndpointService(
            endpoints.UNIXServerEndpoint(
                reactor, socket_address(control_path(config)), mode=0o600, wantPID=True
            ),
            control_factory(
                self.queue.flush,
                throttle=self.throttle,
                flush_logins=self.flush_logins if self.auth_cache is not None else None,
                connection_counts=self.all_connection_counts,  # issue 9
                status=self.status,  # issue 13
                clock=reactor,
            ),
        )
        control._raiseSynchronously = True
        control.setName(f"control@{control_path(config)}")
        control.setServiceParent(self)

    def _metrics_site(self, config: Config, reactor: Any) -> Factory[Any]:
        """The Site of C{[listen] metrics}, serving C{/metrics} at any path (issue 13); with a
        C{[metrics] token_file}, also C{/metrics} on the http/https listeners.  Registers the
        scrape-time state (L{ServerState}).  @raise ConfigError: a bad token file."""
        self.metrics.registry.register(
            ServerState(
                sessions=lambda: {n: len(c.protocols) for n, c in self.connection_limits.items()},
                queue=lambda: [e.created for e in list(self.queue.entries.values())],
                domains=lambda: {
                    d: (u.users, u.storage, u.messages) for d, u in self.domain_usage().items()
                },
                started=lambda: self.started,
                clock=reactor.seconds,
            )
        )
        token = metrics_token(config)
        self.metrics_combined = CombinedRegistry(self.metrics.registry)  # + the workers'
        self.metrics_resource = metrics_resource(self.metrics_combined, reactor, token)
        if token is not None:  # never on a public listener without a token
            self.web_root.putChild(b"metrics", self.metrics_resource)
        site = web_factory(self.metrics_resource, reactor)  # type: ignore[arg-type]
        site.log = lambda request: None  # type: ignore[method-assign]  # no line per scrape
        return site

    def domain_usage(self) -> dict[str, Any]:
        """Per local domain its users and what they store (L{usage_by_domain}, blocking)."""
        return usage_by_domain(self.store, self.mail_dir, self.quota.cache)

    async def status(self) -> dict[str, Any]:
        """What C{twistedmail status} shows (issue 13): version, start time and uptime,
        listeners, open connections, the queue, the throttle's IP blocks and, per domain,
        users and octets stored (measured in a thread)."""
        now = self.reactor.seconds()
        created = [e.created for e in self.queue.entries.values()]
        domains = await self.run_in_thread(self.domain_usage)
        connections = await self.all_connection_counts()
        listeners: dict[str, list[str]] = {}
        for svc in self:
            kind, _, where = (svc.name or "").partition("@")
            if where:  # the listeners and the control socket, named NAME@ADDRESS
                listeners.setdefault(kind, []).append(where)
        blocks = self.throttle.blocks()
        return {
            "version": twistedmail.version(),
            "started": self.started,
            "uptime": round(now - self.started),
            "listeners": listeners,
            "connections": connections,
            "workers": self.processes_status(),
            "queue": {
                "messages": len(created),
                "oldest": min(created) if created else None,
                "oldest_age": round(now - min(created)) if created else 0,
            },
            "blocked_ips": [
                {"ip": b.ip, "seconds_left": round(b.seconds_left), "failures": b.failures}
                for b in blocks
                if b.kind == "ip"
            ],
            "other_blocks": sum(1 for b in blocks if b.kind != "ip"),
            "domains": {
                d: {"users": u.users, "bytes": u.storage, "messages": u.messages}
                for d, u in sorted(domains.items())
            },
        }

    def processes_status(self) -> list[dict[str, Any]]:
        """The processes serving the listeners (C{status}'s C{workers}): pid, C{parent} or
        C{worker}, open connections and logged-in IMAP sessions of each."""
        if self.workers is not None:
            return self.workers.processes_status()
        open_ = sum(len(limit.protocols) for limit in self.connection_limits.values())
        sessions = sum(self.imap_user_limit.open.values())
        me = {"pid": os.getpid(), "role": "parent", "connections": open_}
        return [{**me, "imap_sessions": sessions}]

    def listening_sockets(self) -> list[tuple[str, int, int]]:
        """The parent's listening sockets the workers serve too: C{(listener, descriptor,
        address family)} in the order of the config (after C{privilegedStartService})."""
        sockets = []
        for svc in self:
            if isinstance(svc, _Listener) and svc.shared and svc.port is not None:
                port = svc.port  # a twisted.internet.tcp.Port
                name = (svc.name or "").partition("@")[0]
                sockets.append((name, port.fileno(), port.addressFamily))
        return sockets

    def shared_ports(self) -> list[Any]:
        """The listening ports this process serves that the other processes serve too
        (C{[server] workers}; after C{startService})."""
        return [
            svc.port
            for svc in self
            if isinstance(svc, (_Listener, _AdoptedListener))
            and svc.port is not None
            and (svc.name or "").partition("@")[0] not in PARENT_ONLY
        ]

    async def flush_logins(self, user: str) -> int:
        """Forget C{user}'s cached logins in every process (the CLI's password change or
        deletion, L{twistedmail.auth.AuthCache.flush}); return how many were."""
        flushed = self.auth_cache.flush(user) if self.auth_cache is not None else 0
        if self.workers is not None:
            flushed += sum(await self.workers.ask("auth_flush", user=user))
        return flushed

    async def all_connection_counts(self) -> dict[str, int]:
        """L{connection_counts} summed over this process and every worker's."""
        counts = self.connection_counts()
        if self.workers is not None:
            for other in await self.workers.ask("counts"):
                for name, n in other.items():
                    counts[name] = counts.get(name, 0) + n
        return counts

    def connection_counts(self) -> dict[str, int]:
        """Open connections per listener, logged-in IMAP sessions and selected-folder
        watchers (the control socket's C{connections}: an operator's view, and what the
        soak test checks returns to its start)."""
        counts = {name: len(limit.protocols) for name, limit in self.connection_limits.items()}
        counts["imap_sessions"] = sum(self.imap_user_limit.open.values())
        counts["folder_watchers"] = self.notifier.subscriptions()
        return counts

    def _imap_account(self, address: str) -> MaildirAccount:
        """The user's account object: the one their open sessions already share (it holds
        no per-session state: issue 10, memory per idle connection), else a new one.  No
        disk work here, on the reactor: the login makes INBOX (L{MaildirAccount.prepare},
        in a thread)."""
        account = self._imap_accounts.get(address)
        if account is None:
            maildir = UserMaildir(mailbox_root(self.mail_dir, address))
            account = MaildirAccount(address, maildir, self.notifier, self.run_in_thread)
            self._imap_accounts[address] = account
        return account

    def clean_tmp(self, now: float | None = None) -> defer.Deferred[int]:
        """Remove crash leftovers from every folder's C{tmp/} (L{maildir.clean_tmp}), in a
        thread; a failure is logged, never raised (the timer must keep running)."""

        def done(removed: int) -> int:
            if removed:
                log.info("removed {n} stale files from tmp/ folders", n=removed)
            return removed

        def failed(failure: Any) -> int:
            log.failure("tmp/ cleanup failed", failure)
            return 0

        d: defer.Deferred[int] = self.run_in_thread(clean_tmp, self.mail_dir, now)
        d.addCallback(done)
        d.addErrback(failed)
        return d

    def startService(self) -> None:
        """Open what belongs to the process that serves (issue 9): twistd builds the service,
        then forks into the background (without C{-n}) and drops root (C{-u}/C{-g}), then
        calls this.  So the account store, the login throttle's saved state, the check
        threads, the reactor's thread pool, the control socket and its lock, and the queue
        are all opened here, never in C{__init__}.

        @raise ConfigError: the account store cannot be opened (one line).
        """
        try:
            self.store.open()
        except (sqlite3.Error, OSError) as e:
            where = f"{self.config.source or 'built-in defaults'}: [server] data_dir"
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ConfigError(
                f"{where}: cannot open the account store {self.store.path}: {reason}"
            ) from None
        if self.adopted is None:  # a worker has the parent's state from the parent
            load_throttle(self.throttle, self.throttle_path)
            self._throttle_loaded = True
        self.started = self.reactor.seconds()  # after twistd's fork (uptime, metrics)
        self.auth_pool.start()
        super().startService()
        self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        if self.adopted is not None:
            return  # the queue and the rest are the parent's
        d = defer.Deferred.fromCoroutine(self.queue.start())
        d.addErrback(lambda f: log.failure("the outbound queue did not start", f))
        self._queue_starting = d
        for svc in self:
            log.info("listening: {name}", name=svc.name)
        log.info(
            "twistedmail started: hostname={host} data_dir={data}",
            host=self.config.server.hostname,
            data=str(self.config.server.data_dir),
        )

    def _sighup(self, signum: int, frame: Any) -> None:
        # In a signal handler: only hand the work to the reactor, then chain the handler that
        # was there before (twistd installs none for SIGHUP; a plugin or a future twistd may).
        self.reactor.callFromThread(self._reload_tls_now)
        if callable(self._previous_sighup):
            self._previous_sighup(signum, frame)

    def _reload_tls_now(self) -> None:
        defer.Deferred.fromCoroutine(self.reload_tls())

    async def reload_tls(self) -> bool:
        """Reread the certificate and key (SIGHUP): new TLS connections on every listener
        get them; open sessions keep theirs.  A bad pair is logged and the old one kept.

        @return: whether the new pair is in use.
        """
        if self.workers is not None:
            self.workers.signal_all("HUP")  # each worker rereads them too
        ctx = self.tls_context
        try:
            options = await self.run_in_thread(ctx.reread)
        except tlsmod.TLSConfigError as e:
            log.error("TLS reload failed, keeping the current certificate: {error}", error=str(e))
            return False
        except Exception:
            log.failure("TLS reload failed, keeping the current certificate")
            return False
        ctx.replace(options)
        log.info(
            "TLS certificate reloaded from {cert}: sha256 {fingerprint}",
            cert=str(ctx.cert_path),
            fingerprint=tlsmod.fingerprint(options),
        )
        return True

    async def _stop_queue(self) -> None:
        """The queue's shutdown, after its start (three thread hops reading the spool) has
        run: a stop right after the start would otherwise stop the thread hop under it."""
        starting, self._queue_starting = self._queue_starting, None
        if starting is not None:
            await starting  # never fails: its errback logged a failure
        await self.queue.shutdown()

    def stopService(self) -> Any:
        if self.authenticator is not None:
            self.authenticator.stop()  # no check thread may stay blocked on the reactor
        if signal.getsignal(signal.SIGHUP) == self._sighup:
            signal.signal(signal.SIGHUP, self._previous_sighup or signal.SIG_DFL)
        if self._throttle_loaded:  # never overwrite the saved state with a never-loaded one
            save_throttle(self.throttle, self.throttle_path)
        # Deliveries under way get a bounded time to record their results (QueueRunner.
        # shutdown) while the listeners close; the store closes after both.
        queue = defer.Deferred.fromCoroutine(self._stop_queue())
        queue.addErrback(lambda f: log.failure("the outbound queue did not stop cleanly", f))
        d = defer.DeferredList([queue, super().stopService()], consumeErrors=True)
        # Join the check threads off the reactor thread (a check may still be finishing).
        d.addBoth(
            lambda r: threads.deferToThreadPool(
                self.auth_reactor, self.auth_reactor.getThreadPool(), self.auth_pool.stop
            ).addBoth(lambda _: r)
        )

        def close_store(result: object) -> object:
            self.store.close()
            return result

        d.addBoth(close_store)
        return d


def data_dir_of(config: Config) -> Path:
    return config.server.data_dir
