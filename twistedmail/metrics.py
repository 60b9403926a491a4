"""Prometheus metrics of the running server (issue 13), served over HTTP (RFC 9110) with an
optional bearer token (RFC 6750 §2.1).

One L{Metrics} per server, with its own C{CollectorRegistry} (a test builds its own and reads
the values back with C{registry.get_sample_value}).  Events are counted where they happen,
by one line each: C{metrics.of(owner).login(...)}, where C{owner} is a server-owned object
the service gave its L{Metrics} as C{owner.metrics} (the password checker, the SMTP
factories, the local delivery, the queue, the authenticator, the listeners' connection
limits); an object without one (built by a unit test) counts into a throw-away instance.

Figures that are state, not events (open sessions, the queue's size and oldest entry, what
each domain stores), are read at scrape time by L{ServerState}, from callables the service
passes in; none walks message files (the stored bytes come from the quota's cached per-folder
listing).  Labels are bounded: listener and service names, fixed outcome and result words,
and local domains; never a user or an IP address.

The exposition runs in the reactor's thread pool (C{prometheus_client}'s WSGI app, as its
C{prometheus_client.twisted.MetricsResource} does, with the reactor passed in), so the
scrape-time reads never block the reactor.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.samples import Sample
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from twisted.web.wsgi import WSGIResource

LOGIN_OUTCOMES = ("ok", "failed", "throttled", "error")
OUTBOUND_RESULTS = ("relayed", "deferred", "bounced")
AUTH_METHODS = ("spf", "dkim", "dmarc")
# RFC 8601 §2.7 result words (SPF §2.7.2, DKIM §2.7.1, DMARC RFC 7489 §11.2); anything
# else is counted as "other", so a label never carries text from the network.
AUTH_RESULTS = (
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "policy",
    "temperror",
    "permerror",
)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400)
"""Seconds, for both paths: local (DATA end to stored) is milliseconds, queue (enqueued to
the remote 250) minutes to days."""


class Metrics:
    """The server's counters and histograms, in C{registry}.

    @param clock: the time of the latency histograms' end points (the reactor); the start
        points come from the same clock (C{Envelope.received_at}, C{QueueEntry.created}).
    """

    def __init__(self, clock: Any = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._now: Callable[[], float] = clock.seconds if clock is not None else time.time
        r = self.registry
        self.connections = Counter(
            "twistedmail_connections", "Connections accepted, per listener", ["service"], registry=r
        )
        self.logins = Counter(
            "twistedmail_logins",
            "Login attempts by outcome (ok, failed, throttled: refused by the failed-login"
            " throttle, error: could not be checked)",
            ["service", "outcome"],
            registry=r,
        )
        self.received = Counter(
            "twistedmail_messages_received",
            "Messages accepted after DATA (250), per service (smtp: port 25, submission)",
            ["service"],
            registry=r,
        )
        self.stored = Counter(
            "twistedmail_messages_delivered",
            "Copies stored in local mailboxes (one per local recipient)",
            registry=r,
        )
        self.queued = Counter(
            "twistedmail_messages_queued", "Messages put in the outbound queue", registry=r
        )
        self.outbound = Counter(
            "twistedmail_outbound_recipients",
            "Outbound recipient results: relayed (a remote 250), deferred (a temporary failure,"
            " retried), bounced (given up: a permanent failure or expired; DSN sent)",
            ["result"],
            registry=r,
        )
        self.latency = Histogram(
            "twistedmail_delivery_seconds",
            "Delivery latency: local (end of DATA to stored), queue (queued to the remote 250)",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.authentication = Counter(
            "twistedmail_inbound_authentication",
            "Inbound message authentication results on port 25 (RFC 8601 result words)",
            ["method", "result"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_*: CPU, memory, open descriptors (Linux /proc)
        for service in ("smtp", "imap", "pop3"):
            for outcome in LOGIN_OUTCOMES:
                self.logins.labels(service, outcome)
        for result in OUTBOUND_RESULTS:
            self.outbound.labels(result)
        for service in ("smtp", "submission"):
            self.received.labels(service)
        # the labelled children of the per-message hooks, looked up once (issue 10:
        # prometheus_client's labels() validates and locks at each call)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _labels(self, metric: Any, *values: str) -> Any:
        """C{metric.labels(*values)}, the same child, from a dict after the first call."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- the hooks (one call at each place an event happens) -----------------------------

    def connection(self, service: str) -> None:
        """A connection accepted by listener C{service} (C{smtp}, C{imaps}, ...)."""
        self._labels(self.connections, service).inc()

    def login(self, service: str, outcome: str) -> None:
        """A login attempt on C{service} (C{smtp}, C{imap}, C{pop3}); C{outcome} one of
        L{LOGIN_OUTCOMES}."""
        self.logins.labels(service, outcome).inc()

    def message_received(self, service: str) -> None:
        """A message answered 250 after DATA on C{service} (C{smtp} or C{submission})."""
        self._labels(self.received, service).inc()

    def delivered_locally(self, copies: int, received_at: float) -> None:
        """C{copies} stored for local users of a message whose DATA ended at C{received_at}."""
        if copies:
            self.stored.inc(copies)
            self._labels(self.latency, "local").observe(max(self._now() - received_at, 0.0))

    def message_queued(self) -> None:
        self.queued.inc()

    def outbound_result(self, result: Any, queued_at: float) -> None:
        """One recipient's result of a delivery attempt (a C{RecipientResult}): relayed, with
        its latency since C{queued_at}, or deferred; permanent failures are counted when
        bounced (L{bounced})."""
        if result.delivered:
            self.outbound.labels("relayed").inc()
            self.latency.labels("queue").observe(max(self._now() - queued_at, 0.0))
        elif not result.permanent:
            self.outbound.labels("deferred").inc()

    def bounced(self, recipients: int) -> None:
        """C{recipients} given up on (a permanent failure, or the queue lifetime)."""
        self.outbound.labels("bounced").inc(recipients)

    def authenticated(self, results: Any) -> None:
        """The SPF, DKIM and DMARC results of one inbound message (an
        C{AuthenticationResults}); DKIM counts once per message: C{pass} when a signature
        passed, else the first signature's result, C{none} without one."""
        dkim = [d.result for d in results.dkim]
        best = "pass" if "pass" in dkim else (dkim[0] if dkim else "none")
        for method, result in (("spf", results.spf.result), ("dkim", best)):
            self._labels(self.authentication, method, _result_word(result)).inc()
        self._labels(self.authentication, "dmarc", _result_word(results.dmarc.result)).inc()


def _result_word(result: str) -> str:
    return result if result in AUTH_RESULTS else "other"


_uncounted: Metrics | None = None


def of(owner: object) -> Metrics:
    """The L{Metrics} the service gave C{owner} (C{owner.metrics}), else a throw-away one."""
    metrics = getattr(owner, "metrics", None)
    if isinstance(metrics, Metrics):
        return metrics
    global _uncounted
    if _uncounted is None:
        _uncounted = Metrics()
    return _uncounted


# -- state read at scrape time -------------------------------------------------------------


class ServerState:
    """A collector of the server's state, read at each scrape (in the exposition thread).

    @param sessions: open connections per listener (C{len} of each listener's set: safe
        from another thread).
    @param queue: the queued entries' creation times (seconds since the epoch).
    @param domains: per local domain C{(users, octets stored, messages)}; blocking (it
        stats folder directories, listing only those that changed).
    @param started: when the server started (seconds since the epoch).
    @param clock: now, for the oldest entry's age.
    """

    def __init__(
        self,
        *,
        sessions: Callable[[], Mapping[str, int]],
        queue: Callable[[], Iterable[float]],
        domains: Callable[[], Mapping[str, tuple[int, int, int]]],
        started: Callable[[], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.queue = queue
        self.domains = domains
        self.started = started
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # nothing asked at registration; collect() runs at scrape time only

    def collect(self) -> Iterable[Metric]:
        open_sessions = GaugeMetricFamily(
            "twistedmail_sessions_open", "Connections open now, per listener", labels=["service"]
        )
        for service, count in sorted(self.sessions().items()):
            open_sessions.add_metric([service], count)
        yield open_sessions
        created = list(self.queue())
        yield GaugeMetricFamily(
            "twistedmail_queue_messages", "Messages in the outbound queue", value=len(created)
        )
        oldest = max(self.clock() - min(created), 0.0) if created else 0.0
        yield GaugeMetricFamily(
            "twistedmail_queue_oldest_age_seconds",
            "Age of the oldest message in the outbound queue (0 when empty)",
            value=oldest,
        )
        users = GaugeMetricFamily("twistedmail_users", "Users per local domain", labels=["domain"])
        stored = GaugeMetricFamily(
            "twistedmail_stored_bytes",
            "Octets stored in the mailboxes of each local domain (the quota's STORAGE)",
            labels=["domain"],
        )
        messages = GaugeMetricFamily(
            "twistedmail_stored_messages",
            "Messages stored in the mailboxes of each local domain",
            labels=["domain"],
        )
        for domain, (n_users, octets, n_messages) in sorted(self.domains().items()):
            users.add_metric([domain], n_users)
            stored.add_metric([domain], octets)
            messages.add_metric([domain], n_messages)
        yield from (users, stored, messages)
        yield GaugeMetricFamily(
            "twistedmail_start_time_seconds",
            "When the server started, seconds since the epoch",
            value=self.started(),
        )


# -- several processes (C{[server] workers}) -------------------------------------------------

Samples = list[tuple[str, dict[str, str], float]]
"""One process's samples: C{(sample name, labels, value)}."""


def samples(registry: CollectorRegistry) -> Samples:
    """What a worker process adds to the parent's figures: every sample of C{registry} but
    the C{process_*} ones (each process's own) and the C{_created} times."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in registry.collect()
        if not family.name.startswith("process_")
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


def _belongs(family: str, sample: str) -> bool:
    suffixes = ("total", "bucket", "sum", "count")
    return sample == family or sample in {f"{family}_{s}" for s in suffixes}


class CombinedRegistry:
    """C{registry}'s metrics with the other processes' samples added in at each scrape, so
    that counters, histograms and open sessions count every worker (C{[server] workers}).

    @ivar others: set by L{twistedmail.workers} in the parent: returns each worker's
        L{samples}; it runs in the exposition thread and may block on the reactor.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.others: Callable[[], list[Samples]] | None = None

    def restricted_registry(self, names: Iterable[str]) -> CombinedRegistry:
        return self  # C{name[]} filters are not offered: every family is served

    def collect(self) -> Iterable[Metric]:
        totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for other in self.others() if self.others is not None else []:
            for name, labels, value in other:
                key = (name, tuple(sorted(labels.items())))
                totals[key] = totals.get(key, 0.0) + value
        for family in self.registry.collect():
            if totals and not family.name.startswith("process_"):
                seen = set()
                merged = []
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    seen.add(key)
                    if key in totals:
                        sample = sample._replace(value=sample.value + totals[key])
                    merged.append(sample)
                for (name, pairs), value in totals.items():
                    if (name, pairs) not in seen and _belongs(family.name, name):
                        merged.append(Sample(name, dict(pairs), value))
                family.samples = merged
            yield family


# -- serving ---------------------------------------------------------------------------------


class BearerToken(Resource):
    """Serves C{wrapped} to requests with C{Authorization: Bearer TOKEN} (RFC 6750 §2.1),
    compared in constant time; others get C{401} with C{WWW-Authenticate: Bearer}
    (RFC 6750 §3; C{error="invalid_token"} when a wrong token was given)."""

    isLeaf = True

    def __init__(self, wrapped: IResource, token: str) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.token = token.encode("utf-8")

    def render(self, request: Request) -> Any:
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return self.wrapped.render(request)
        request.setResponseCode(401)
        challenge = b'Bearer realm="twistedmail"'
        if header:
            challenge += b', error="invalid_token"'
        request.setHeader(b"www-authenticate", challenge)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"401 Unauthorized\n"


def metrics_resource(
    registry: CollectorRegistry | CombinedRegistry, reactor: Any, token: str | None
) -> IResource:
    """The C{/metrics} resource: Prometheus's text exposition of C{registry} (any path),
    behind L{BearerToken} when C{token} is given.  Scrapes run in C{reactor}'s thread pool."""
    resource: IResource = WSGIResource(reactor, reactor.getThreadPool(), make_wsgi_app(registry))
    if token is not None:
        resource = BearerToken(resource, token)
    return resource
