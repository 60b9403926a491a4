"""Configuration: a TOML file (stdlib tomllib) -> a frozen attrs tree (DESIGN §3).

Discovery (L{find_config}): C{--config PATH}, else C{$TWISTEDMAIL_CONFIG}, else
C{./twistedmail.toml} if present, else built-in defaults.  Every key is optional; unknown
sections and keys are errors, so a typo never silently falls back to a default.  Every
error is a L{ConfigError} whose text is one line naming the file and the key.
Relative paths in a file (and the default data dir C{twistedmail-data} when a file does not
set C{data_dir}) are resolved against the file's directory, in one place (L{_Reader.path});
without a config file, the default data dir is C{./twistedmail-data} in the working directory.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from twistedmail.address import AddressError, normalize_domain
from twistedmail.settings import (
    BARE_LF_MODES,
    MAX_MESSAGE_SIZE,
    IMAPSettings,
    ManageSieveSettings,
    POP3Settings,
    SMTPSettings,
)
from twistedmail.sieve.interpret import SieveLimits
from twistedmail.units import (
    MAX_COUNT,
    bare_octets,
    format_size,
    parse_duration,
    parse_quota,
    parse_size,
)

DEFAULT_FILE = "twistedmail.toml"
ENV_VAR = "TWISTEDMAIL_CONFIG"
DEFAULT_DATA_DIR = "twistedmail-data"
DEFAULT_WORKERS = os.cpu_count() or 1  # [server] workers (issue 10): one process per CPU
SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve")
DEFAULT_LISTEN = {
    "smtp": "0.0.0.0:25",
    "submission": "0.0.0.0:587",
    "submissions": "0.0.0.0:465",
    "imap": "0.0.0.0:143",
    "imaps": "0.0.0.0:993",
    "pop3": "0.0.0.0:110",
    "pop3s": "0.0.0.0:995",
    "managesieve": "0.0.0.0:4190",  # RFC 5804 §1.8
}
MAX_SIEVE_SCRIPT_SIZE = 512 * 1024  # twistedmail.sieve.grammar.MAX_SCRIPT_SIZE
WEB_SERVICES = ("http", "https")
"""The HTTP listener (autoconfig, autodiscover, MTA-STS policy): off unless configured."""
MTA_STS_MODES = ("enforce", "testing", "none")  # RFC 8461 §3.2
MTA_STS_MAX_AGE = 31557600  # RFC 8461 §3.2: at most one year, in seconds
LOG_FORMATS = ("text", "json")
# The listeners' defaults are their settings classes' (twistedmail.settings): one source.
_SMTP, _IMAP, _POP3 = SMTPSettings(), IMAPSettings(), POP3Settings()
_SIEVE = ManageSieveSettings()
DEFAULT_MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
DEFAULT_MAX_HEADER_SIZE = _SMTP.max_header_size
DEFAULT_MIN_FREE_SPACE = 100 * 1024 * 1024
"""Free octets the data dir keeps: below it SMTP refuses new mail (Postfix's queue_minfree)."""
MIN_LINE_LENGTH = 998  # RFC 5321 §4.5.3.1.6: 1000 octets with the CRLF
MAX_LINE_LENGTH = 65536
SIZE_LIMITS = {
    "max_message_size": DEFAULT_MAX_MESSAGE_SIZE,
    "max_header_size": DEFAULT_MAX_HEADER_SIZE,
}
DEFAULT_QUEUE = {
    "first_retry": "5m",
    "max_retry": "1h",
    "lifetime": "5d",
    "delay_warning": "4h",
}


ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
"""Let's Encrypt's production ACME directory, the default of C{[tls] acme_directory}."""


class ConfigError(Exception):
    """A configuration problem; C{str()} is one line: C{FILE: [section] key: what is wrong}."""


@attrs.frozen
class ListenAddress:
    """One C{host:port} to listen on (C{host} may be an IPv6 literal, unbracketed here)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@attrs.frozen
class ServerConfig:
    hostname: str
    data_dir: Path
    workers: int = DEFAULT_WORKERS  # processes serving the listeners (twistedmail.workers)


@attrs.frozen
class TLSConfig:
    """Certificate and key PEM files; both C{None} means a self-signed cert in the data dir,
    or with C{acme}, one obtained by ACME (RFC 8555) from C{acme_directory} in its place."""

    cert: Path | None
    key: Path | None
    acme: bool = False
    acme_contact: str = ""  # an email address, registered with the account (RFC 8555 §7.3)
    acme_directory: str = ACME_DIRECTORY
    acme_ca: Path | None = None  # CA certificates to trust for acme_directory (a test CA)


@attrs.frozen
class LimitsConfig:
    """C{[limits]}: sizes in octets, durations in seconds, counts per listener.

    Defaults like Postfix and Dovecot: 1000 recipients (C{smtpd_recipient_limit}), idle
    timeouts of RFC 5321 §4.5.3.2.7 (5 min), RFC 3501 §5.4 (30 min) and RFC 1939 §3 (10 min).
    """

    max_message_size: int  # octets (RFC 1870 SIZE)
    max_recipients: int = _SMTP.max_recipients  # per message; RFC 5321 §4.5.3.1.8: >= 100
    max_connections: int = 500  # per listener, open at once
    max_connections_per_ip: int = 20  # per listener and client IP (IPv6: per /64)
    smtp_idle_timeout: int = _SMTP.idle_timeout  # RFC 5321 §4.5.3.2.7: at least 5 minutes
    imap_idle_timeout: int = _IMAP.idle_timeout  # after login; RFC 3501 §5.4: >= 30 minutes
    pop3_idle_timeout: int = _POP3.idle_timeout  # RFC 1939 §3: at least 10 minutes
    login_failure_window: int = 600  # failed logins are counted over this many seconds
    login_block_after: int = 10  # failures of one account from one IP that block the pair
    login_ip_block_after: int = 100  # failures from one IP on any accounts that block it
    login_account_block_after: int = 30  # failures on one account that block it
    login_block_time: int = 900  # how long a block lasts
    default_quota: int = 0  # octets of storage for users added from now on; 0 = unlimited
    max_line_length: int = _SMTP.max_line_length  # octets of an SMTP text line, no CRLF
    max_header_size: int = DEFAULT_MAX_HEADER_SIZE  # octets of a message's header section
    imap_max_connections_per_user: int = 10  # logged-in IMAP sessions per user and IP
    # networks whose clients the failed-login throttle never delays, blocks or counts
    login_throttle_exempt: tuple[str, ...] = ()
    min_free_space: int = DEFAULT_MIN_FREE_SPACE  # octets free in data_dir to take SMTP mail
    submission_messages_per_hour: int = 500  # per user on 587/465 (issue 14)
    submission_recipients_per_hour: int = 2000  # per user on 587/465 (issue 14)


SMARTHOST_TLS = ("starttls", "implicit")


@attrs.frozen
class RelayConfig:
    """C{[relay]}.  The smarthost always uses TLS (C{smarthost_tls}: required STARTTLS or
    implicit), its certificate checked against the system CAs or C{smarthost_ca}; AUTH when
    C{smarthost_username} is set, with the password read from C{smarthost_password_file}
    (owner-only: the config file itself may be world-readable), see L{smarthost_password}."""

    smarthost: ListenAddress | None
    nameservers: tuple[ListenAddress, ...]
    routes: tuple[tuple[str, ListenAddress], ...]
    port: int = 25  # TCP port of MX hosts; anything but 25 is for tests
    smarthost_tls: str = "starttls"
    smarthost_username: str | None = None
    smarthost_password_file: Path | None = None
    smarthost_ca: Path | None = None


@attrs.frozen
class QueueConfig:
    """The outbound queue's retry schedule (seconds) and connection limits."""

    first_retry: int = 300
    max_retry: int = 3600
    lifetime: int = 5 * 86400
    delay_warning: int = 4 * 3600
    max_connections: int = 20
    max_per_destination: int = 5


@attrs.frozen
class SubmissionConfig:
    """587/465 policy knobs.  C{check_from_header}: every From: header address must be one the
    authenticated user owns, as MAIL FROM must (else 550 5.7.1)."""

    check_from_header: bool = True


@attrs.frozen
class InboundConfig:
    """Port-25 authentication (RFC 7208 SPF, RFC 6376 DKIM, RFC 7489 DMARC, RFC 8601)."""

    check_authentication: bool = True  # add Authentication-Results to each message
    dmarc_reject: bool = False  # 550 5.7.1 for a DMARC fail under p=reject


@attrs.frozen
class AntispamConfig:
    """C{[antispam]}: the spam filter (rspamd, L{twistedmail.rspamd}) and the first gates on
    port 25 (DNS block and allow lists, L{twistedmail.dnsbl}; the pregreet test).

    C{rspamd}: the URL of rspamd's normal worker (C{""}: no filter); C{rspamd_controller}:
    its controller, for learning from IMAP moves into and out of Junk (C{""}: no learning);
    C{rspamd_password}: the controller's password; C{timeout}: seconds a check may take
    before the message is accepted unchecked; C{check_submission}: filter 587/465 too.
    C{dnsbl}, C{dnswl}: list zones (a client in a C{dnswl} zone skips the C{dnsbl}s);
    C{greet_pause}: seconds the 220 greeting waits, a client talking first gets
    C{554 5.5.1} (0: off); C{smtp_messages_per_ip_hour}: messages one client IP (IPv6: /64)
    may send on port 25 in an hour, more get C{451 4.7.1} at MAIL (0: no limit);
    C{smtp_connections_per_ip_hour}: connections one client IP may open to port 25 in an
    hour, more get C{421 4.7.0} at connect (0: no limit)."""

    rspamd: str = ""
    rspamd_controller: str = ""
    rspamd_password: str = ""
    timeout: int = 20
    check_submission: bool = False
    dnsbl: tuple[str, ...] = ()
    dnswl: tuple[str, ...] = ()
    greet_pause: int = _SMTP.greet_pause
    smtp_messages_per_ip_hour: int = 0
    smtp_connections_per_ip_hour: int = 0


@attrs.frozen
class ForwardingConfig:
    """C{[forwarding]}: mail an alias or a Sieve redirect sends on to an outside address
    (L{twistedmail.srs}).  C{srs}: rewrite its envelope sender (SRS0 in our domain) so it
    passes SPF at the next hop, and take bounces to those addresses back; C{srs_domain}:
    the domain of the SRS addresses (its MX and SPF must be ours; C{""}: the alias's own
    domain); C{arc}: seal it with an ARC set (RFC 8617) signed by the alias domain's DKIM
    key."""

    srs: bool = True
    srs_domain: str = ""
    arc: bool = True


@attrs.frozen
class SMTPConfig:
    """C{[smtp]}: wire behaviour of every SMTP listener (25, 587, 465).  C{bare_lf}:
    C{"reject"} a message with a bare CR or LF (550 5.6.0), or C{"normalize"} a bare LF
    to CRLF; either way only CRLF.CRLF ends DATA (RFC 5321 §2.3.8, §4.1.1.4)."""

    bare_lf: str = _SMTP.bare_lf


SIEVE_COUNTS = {
    "sieve_max_actions": "max_actions",
    "sieve_max_redirects": "max_redirects",
    "sieve_max_steps": "max_steps",
}
"""C{[delivery]} keys -> L{SieveLimits} fields (Pigeonhole's C{sieve_max_actions} and
C{sieve_max_redirects}; C{sieve_max_steps} is ours, the CPU bound of one run)."""


@attrs.frozen
class DeliveryConfig:
    """C{[delivery]}: recipient addressing.  C{recipient_delimiter} splits C{user+detail}
    (RFC 5233; C{""} turns it off); with C{plus_folder}, mail to C{user+detail} goes into
    the user's existing folder named C{detail} (case-insensitive), else INBOX."""

    recipient_delimiter: str = "+"
    plus_folder: bool = False
    sieve: SieveLimits = SieveLimits()
    """C{sieve_max_script_size}, C{sieve_max_actions}, C{sieve_max_redirects},
    C{sieve_max_steps}: what a user's Sieve script may cost at delivery."""


MANAGESIEVE_SIZES = {"max_script_size": "256KiB", "max_storage": "2MiB"}


@attrs.frozen
class ManageSieveConfig:
    """C{[managesieve]}: each user's quota on Sieve scripts (RFC 5804 §1.3 QUOTA codes, like
    Pigeonhole's C{sieve_quota_max_scripts} / C{sieve_quota_max_storage} and
    C{sieve_max_script_size}) and the session's idle timeout in seconds."""

    max_scripts: int = _SIEVE.max_scripts
    max_script_size: int = _SIEVE.max_script_size  # octets; at most the parser's 512 KiB
    max_storage: int = _SIEVE.max_storage  # octets of all of a user's scripts
    idle_timeout: int = _SIEVE.idle_timeout  # Pigeonhole: 30 minutes


@attrs.frozen
class MTASTSConfig:
    """C{[mta_sts]}: the policy served at C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt}
    for every local domain (RFC 8461 §3.2).  C{max_age} in seconds."""

    mode: str = "testing"
    max_age: int = 7 * 86400


@attrs.frozen
class AuthConfig:
    """C{[auth]} (issue 10): the login cache, like Dovecot's C{auth_cache}
    (L{twistedmail.auth.AuthCache}), and how many password hashes run at once."""

    cache_ttl: int = 300  # seconds a successful login is remembered; 0: no cache
    cache_size: int = 10_000  # logins remembered at most (least recently used dropped)
    max_parallel_hashes: int = 0  # hash computations at once; 0: the number of CPUs


@attrs.frozen
class LogConfig:
    """C{[log]}: C{format} C{"text"} (twistd's lines) or C{"json"} (one JSON object a line)."""

    format: str = "text"


@attrs.frozen
class MetricsConfig:
    """Prometheus C{/metrics} (issue 13): C{[metrics] token_file}, whose first line is the
    bearer token scrapers must send (owner-only, like the smarthost password; see
    L{metrics_token}).  Its own listener is C{[listen] metrics} (none by default)."""

    token_file: Path | None = None


@attrs.frozen
class Config:
    """The whole configuration.  C{source} is the file it came from, or C{None} for defaults."""

    source: Path | None
    server: ServerConfig
    listen: dict[str, tuple[ListenAddress, ...]]
    tls: TLSConfig
    limits: LimitsConfig
    relay: RelayConfig
    queue: QueueConfig = QueueConfig()
    submission: SubmissionConfig = SubmissionConfig()
    inbound: InboundConfig = InboundConfig()
    smtp: SMTPConfig = SMTPConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    managesieve: ManageSieveConfig = ManageSieveConfig()
    mta_sts: MTASTSConfig = MTASTSConfig()
    log: LogConfig = LogConfig()
    auth: AuthConfig = AuthConfig()
    antispam: AntispamConfig = AntispamConfig()
    metrics: MetricsConfig = MetricsConfig()
    forwarding: ForwardingConfig = ForwardingConfig()
    # What loads but is likely wrong, one line each (C{FILE: [section] key: why}), for
    # check-config: a size without a unit, a hostname that is not fully qualified.
    warnings: tuple[str, ...] = ()


def find_config(path: Path | None) -> Path | None:
    """The config file to use (see module docstring), or C{None} for built-in defaults."""
    if path is not None:
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    local = Path(DEFAULT_FILE)
    return local if local.is_file() else None


def load_config(path: Path | None = None) -> Config:
    """Find, read and validate the configuration.

    @raise ConfigError: unreadable file, TOML syntax error, unknown or invalid key.
    """
    source = find_config(path)
    if source is None:
        return parse_config({}, None)
    try:
        raw = source.read_bytes()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    return parse_config(data, source)


class _Reader:
    def __init__(self, source: Path | None) -> None:
        self.name = str(source) if source else "built-in defaults"
        self.base = source.parent if source else Path.cwd()

    def fail(self, where: str, what: str) -> ConfigError:
        return ConfigError(f"{self.name}: {where}: {what}")

    def section(self, data: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise self.fail(f"[{name}]", "must be a table")
        for key in section:
            if key not in keys:
                raise self.fail(f"[{name}] {key}", "unknown key")
        return section

    def string(self, section: dict[str, Any], name: str, key: str, default: str) -> str:
        value = section.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"[{name}] {key}", "must be a string")
        return value

    def path(self, value: str) -> Path:
        return (self.base / os.path.expanduser(value)).resolve()

    def address(self, where: str, value: object, default_port: int | None = None) -> ListenAddress:
        if not isinstance(value, str):
            raise self.fail(where, 'must be a "host:port" string')
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
        if m is None and default_port is not None and re.fullmatch(r"[^:\[\]\s]+", value.strip()):
            return ListenAddress(value.strip(), default_port)
        if m is None:
            raise self.fail(where, f'"{value}" is not "host:port"')
        host = m.group(1) or m.group(3)
        port = int(m.group(2) or m.group(4))
        if not 0 <= port <= 65535:
            raise self.fail(where, f"port {port} out of range")
        return ListenAddress(host, port)


def _nameserver(r: _Reader, value: object) -> ListenAddress:
    """A C{[relay] nameservers} entry: an IP address, with an optional port (default 53);
    twisted.names sends to addresses, so a name here would fail every query at run time
    (found by QA: C{"not-an-ip"} passed check-config)."""
    address = r.address("[relay] nameservers", value, 53)
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        raise r.fail("[relay] nameservers", f'"{address.host}" is not an IP address') from None
    return address


def _unitless_size_warning(r: _Reader, where: str, value: object) -> list[str]:
    """A warning for a size given without a unit (see L{parse_size}), with the same size
    written with the largest unit that divides it."""
    octets = bare_octets(value)
    if not octets:
        return []
    with_unit = format_size(octets)
    with_unit += "B" if with_unit == str(octets) else ""
    return [
        f"{r.name}: {where}: {octets} has no unit and is read as octets;"
        f' write it with one, e.g. "{with_unit}"'
    ]


def _hostname_warning(r: _Reader, hostname: str) -> list[str]:
    """A warning for a hostname that is not a fully qualified domain name (RFC 5321 §2.3.5):
    other servers check the EHLO name (RFC 5321 §4.1.1.1), the PTR record and the
    certificate against it, and a single label or a private suffix matches none of them."""
    labels = hostname.split(".")
    if len(labels) >= 2 and labels[-1] not in ("localhost", "localdomain", "local"):
        return []
    return [
        f'{r.name}: [server] hostname: "{hostname}" is not a fully qualified domain name;'
        " other servers check the EHLO name and the certificate against it (RFC 5321 §4.1.1.1)"
    ]


def _positive_int(
    r: _Reader,
    section: dict[str, Any],
    where: str,
    key: str,
    default: int,
    low: int = 1,
    high: int = MAX_COUNT,
    message: str = "",
) -> int:
    """The TOML integer C{[where] key} (else C{default}), from C{low} to C{high}.

    @raise ConfigError: C{message}, else "must be a positive integer" (or "must be at most
        C{high}" for a larger integer).
    """
    value = section.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    if not message:
        too_big = isinstance(value, int) and not isinstance(value, bool) and value > high
        message = f"must be at most {high}" if too_big else "must be a positive integer"
    raise r.fail(f"[{where}] {key}", message)


def _parsed(
    r: _Reader,
    section: dict[str, Any],
    where: str,
    key: str,
    default: object,
    parse: Callable[[object], int],
    hint: str = "",
) -> int:
    """C{parse} (L{parse_size}, L{parse_quota}, L{parse_duration}) of C{[where] key}, else of
    C{default}.  @raise ConfigError: C{parse}'s ValueError text, then C{hint}."""
    try:
        return parse(section.get(key, default))
    except ValueError as e:
        raise r.fail(f"[{where}] {key}", f"{e}{hint}") from None


def parse_config(data: dict[str, Any], source: Path | None) -> Config:
    """Validate parsed TOML C{data} into a L{Config}.  @raise ConfigError: see L{load_config}."""
    r = _Reader(source)
    known = {"server", "listen", "tls", "limits", "relay", "queue", "submission", "inbound", "smtp"}
    known.add("delivery")
    known.add("managesieve")
    known.update(("mta_sts", "log"))
    known.add("auth")
    known.add("antispam")
    known.add("metrics")
    known.add("forwarding")
    for key in data:
        if key not in known:
            raise r.fail(f"[{key}]", "unknown section")

    server = r.section(data, "server", {"hostname", "data_dir", "workers"})
    hostname = r.string(server, "server", "hostname", "") or socket.getfqdn() or "localhost"
    try:
        hostname = normalize_domain(hostname)
    except AddressError as e:
        raise r.fail("[server] hostname", str(e)) from None
    warnings = _hostname_warning(r, hostname)
    data_dir_text = r.string(server, "server", "data_dir", "")
    # Like every relative path of a config file, the default is resolved against the
    # file's directory (issue 9: against the cwd, a CLI run elsewhere with the same --config
    # wrote a second account store); without a config file, against the cwd.
    data_dir = r.path(data_dir_text or DEFAULT_DATA_DIR)

    listen_section = r.section(data, "listen", {*SERVICES, *WEB_SERVICES, "metrics"})
    listen: dict[str, tuple[ListenAddress, ...]] = {}
    for service in (*SERVICES, *WEB_SERVICES, "metrics"):  # metrics: issue 13
        value = listen_section.get(service, DEFAULT_LISTEN.get(service, []))
        values = value if isinstance(value, list) else [value]
        listen[service] = tuple(r.address(f"[listen] {service}", v) for v in values)
        for address in listen[service]:
            try:
                ipaddress.ip_address(address.host)
            except ValueError:
                raise r.fail(
                    f"[listen] {service}", f'"{address.host}" is not an IP address'
                ) from None
    seen: dict[tuple[str, int], str] = {}
    for service, addresses in listen.items():
        for address in addresses:
            bound = (address.host, address.port)
            if address.port and bound in seen:
                raise r.fail(f"[listen] {service}", f"{address} is also used by {seen[bound]}")
            seen[bound] = service

    tls = r.section(
        data, "tls", {"cert", "key", "acme", "acme_contact", "acme_directory", "acme_ca"}
    )
    cert, key = r.string(tls, "tls", "cert", ""), r.string(tls, "tls", "key", "")
    if bool(cert) != bool(key):
        raise r.fail("[tls]", "cert and key must be given together")
    acme = tls.get("acme", False)
    if not isinstance(acme, bool):
        raise r.fail("[tls] acme", "must be true or false")
    acme_contact = r.string(tls, "tls", "acme_contact", "")
    acme_directory = r.string(tls, "tls", "acme_directory", ACME_DIRECTORY)
    acme_ca = r.string(tls, "tls", "acme_ca", "")
    if acme and cert:
        raise r.fail("[tls] acme", "cert and key are obtained by ACME: leave them unset")
    if acme and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", acme_contact):
        raise r.fail("[tls] acme_contact", "an email address is required with acme = true")
    if acme and not acme_directory.startswith("https://"):
        raise r.fail("[tls] acme_directory", "must be an https:// URL (RFC 8555 §6.1)")
    if acme and not listen["http"]:
        raise r.fail("[tls] acme", "needs [listen] http: HTTP-01 challenges are answered there")

    limit_defaults = attrs.asdict(LimitsConfig(max_message_size=DEFAULT_MAX_MESSAGE_SIZE))
    limits = r.section(data, "limits", set(limit_defaults))
    limit_values: dict[str, int] = {}
    for limit, size in SIZE_LIMITS.items():
        limit_values[limit] = _parsed(r, limits, "limits", limit, size, parse_size)
        warnings += _unitless_size_warning(r, f"[limits] {limit}", limits.get(limit))
    max_size = limit_values.pop("max_message_size")
    limit_values["default_quota"] = _parsed(r, limits, "limits", "default_quota", 0, parse_quota)
    warnings += _unitless_size_warning(r, "[limits] default_quota", limits.get("default_quota"))
    exempt = limits.get("login_throttle_exempt", [])
    if not isinstance(exempt, list) or not all(isinstance(n, str) for n in exempt):
        raise r.fail("[limits] login_throttle_exempt", 'must be a list of networks ("10.0.0.0/8")')
    for network in exempt:
        try:
            ipaddress.ip_network(network.strip(), strict=False)
        except ValueError:
            raise r.fail(
                "[limits] login_throttle_exempt", f'"{network}" is not an IP network'
            ) from None
    limit_values["min_free_space"] = _parsed(  # "0" / "none": no reserve
        r, limits, "limits", "min_free_space", DEFAULT_MIN_FREE_SPACE, parse_quota
    )
    for limit, default in limit_defaults.items():  # not "key": that is the [tls] key path
        if limit in SIZE_LIMITS or limit in (
            "default_quota",
            "login_throttle_exempt",
            "min_free_space",
        ):
            continue
        limit_values[limit] = _positive_int(r, limits, "limits", limit, default)
    if limit_values["max_recipients"] < 100:
        raise r.fail("[limits] max_recipients", "must be at least 100 (RFC 5321 §4.5.3.1.8)")
    if not MIN_LINE_LENGTH <= limit_values["max_line_length"] <= MAX_LINE_LENGTH:
        raise r.fail(
            "[limits] max_line_length",
            f"must be from {MIN_LINE_LENGTH} (RFC 5321 §4.5.3.1.6) to {MAX_LINE_LENGTH}",
        )

    relay = r.section(
        data,
        "relay",
        {
            "smarthost",
            "nameservers",
            "routes",
            "port",
            "smarthost_tls",
            "smarthost_username",
            "smarthost_password_file",
            "smarthost_ca",
        },
    )
    relay_port = relay.get("port", 25)
    if (
        not isinstance(relay_port, int)
        or isinstance(relay_port, bool)
        or not 0 < relay_port < 65536
    ):
        raise r.fail("[relay] port", "must be a TCP port number (1-65535)")
    smarthost_text = r.string(relay, "relay", "smarthost", "")
    smarthost_tls = r.string(relay, "relay", "smarthost_tls", "starttls")
    if smarthost_tls not in SMARTHOST_TLS:
        raise r.fail("[relay] smarthost_tls", 'must be "starttls" or "implicit"')
    default_port = 465 if smarthost_tls == "implicit" else 25  # RFC 8314 §7.3 / RFC 5321
    smarthost = (
        r.address("[relay] smarthost", smarthost_text, default_port) if smarthost_text else None
    )
    username = r.string(relay, "relay", "smarthost_username", "")
    password_file = r.string(relay, "relay", "smarthost_password_file", "")
    smarthost_ca = r.string(relay, "relay", "smarthost_ca", "")
    if any(ord(c) < 0x20 or c == "\x7f" for c in username):
        # RFC 4616 §2: NUL separates the PLAIN fields; CR/LF would break the AUTH line
        raise r.fail("[relay] smarthost_username", "must not contain control characters")
    if bool(username) != bool(password_file):
        raise r.fail(
            "[relay] smarthost_username", "and smarthost_password_file must be given together"
        )
    if (username or smarthost_ca) and smarthost is None:
        key = "smarthost_username" if username else "smarthost_ca"
        raise r.fail(f"[relay] {key}", "needs [relay] smarthost")
    nameservers = relay.get("nameservers", [])
    if not isinstance(nameservers, list):
        raise r.fail("[relay] nameservers", 'must be a list of "host:port"')
    routes = relay.get("routes", {})
    if not isinstance(routes, dict):
        raise r.fail("[relay.routes]", 'must be a table of domain = "host:port"')
    route_list = []
    for domain, target in routes.items():
        try:
            name = normalize_domain(domain)
        except AddressError as e:
            raise r.fail(f"[relay.routes] {domain}", str(e)) from None
        route_list.append((name, r.address(f"[relay.routes] {domain}", target, 25)))

    queue = r.section(data, "queue", {*DEFAULT_QUEUE, "max_connections", "max_per_destination"})
    durations = {
        name: _parsed(r, queue, "queue", name, duration, parse_duration)
        for name, duration in DEFAULT_QUEUE.items()
    }
    if durations["max_retry"] < durations["first_retry"]:
        raise r.fail("[queue] max_retry", "must not be shorter than first_retry")
    queue_config = QueueConfig(
        **durations,
        max_connections=_positive_int(r, queue, "queue", "max_connections", 20),
        max_per_destination=_positive_int(r, queue, "queue", "max_per_destination", 5),
    )

    submission = r.section(data, "submission", {"check_from_header"})
    check_from = submission.get("check_from_header", True)
    if not isinstance(check_from, bool):
        raise r.fail("[submission] check_from_header", "must be true or false")

    inbound_defaults = attrs.asdict(InboundConfig())
    inbound = r.section(data, "inbound", set(inbound_defaults))
    for flag, default in inbound_defaults.items():
        if not isinstance(inbound.get(flag, default), bool):
            raise r.fail(f"[inbound] {flag}", "must be true or false")

    smtp = r.section(data, "smtp", {"bare_lf"})
    bare_lf = smtp.get("bare_lf", _SMTP.bare_lf)
    if bare_lf not in BARE_LF_MODES:
        raise r.fail("[smtp] bare_lf", 'must be "reject" or "normalize"')

    delivery = r.section(
        data,
        "delivery",
        {"recipient_delimiter", "plus_folder", "sieve_max_script_size", *SIEVE_COUNTS},
    )
    delimiter = delivery.get("recipient_delimiter", "+")
    if not isinstance(delimiter, str) or len(delimiter) > 1 or delimiter in ("@", '"', " "):
        raise r.fail("[delivery] recipient_delimiter", "must be one character or empty, not @")
    plus_folder = delivery.get("plus_folder", False)
    if not isinstance(plus_folder, bool):
        raise r.fail("[delivery] plus_folder", "must be true or false")
    sieve_defaults = SieveLimits()
    sieve_size = _parsed(
        r, delivery, "delivery", "sieve_max_script_size", sieve_defaults.max_script_size, parse_size
    )
    warnings += _unitless_size_warning(
        r, "[delivery] sieve_max_script_size", delivery.get("sieve_max_script_size")
    )
    sieve_counts: dict[str, int] = {}
    for sieve_key, field in SIEVE_COUNTS.items():
        sieve_counts[field] = _positive_int(
            r,
            delivery,
            "delivery",
            sieve_key,
            getattr(sieve_defaults, field),
            message=f"must be a whole number from 1 to {MAX_COUNT}",
        )

    managesieve = r.section(
        data, "managesieve", {"max_scripts", "idle_timeout", *MANAGESIEVE_SIZES}
    )
    sieve_sizes = {
        name: _parsed(r, managesieve, "managesieve", name, size, parse_size)
        for name, size in MANAGESIEVE_SIZES.items()
    }
    if sieve_sizes["max_script_size"] > MAX_SIEVE_SCRIPT_SIZE:
        raise r.fail("[managesieve] max_script_size", "must be at most 512KiB")
    managesieve_config = ManageSieveConfig(
        max_scripts=_positive_int(r, managesieve, "managesieve", "max_scripts", 20),
        idle_timeout=_positive_int(r, managesieve, "managesieve", "idle_timeout", 1800),
        **sieve_sizes,
    )
    mta_sts = r.section(data, "mta_sts", {"mode", "max_age"})
    mta_sts_mode = mta_sts.get("mode", "testing")
    if mta_sts_mode not in MTA_STS_MODES:
        raise r.fail("[mta_sts] mode", 'must be "enforce", "testing" or "none"')
    mta_sts_max_age = _parsed(r, mta_sts, "mta_sts", "max_age", "7d", parse_duration)
    if mta_sts_max_age > MTA_STS_MAX_AGE:
        raise r.fail("[mta_sts] max_age", "must be at most one year (RFC 8461 §3.2)")

    log_section = r.section(data, "log", {"format"})
    log_format = log_section.get("format", "text")
    if log_format not in LOG_FORMATS:
        raise r.fail("[log] format", 'must be "text" or "json"')
    antispam = _antispam(r, data)

    auth = r.section(data, "auth", {"cache_ttl", "cache_size", "max_parallel_hashes"})
    cache_ttl = 0
    if auth.get("cache_ttl", "5m") not in (0, "0"):
        cache_ttl = _parsed(
            r, auth, "auth", "cache_ttl", "5m", parse_duration, ', or "0" for no cache'
        )
    parallel = _positive_int(
        r, auth, "auth", "max_parallel_hashes", 0, 0, 1024, "must be 0 (the number of CPUs) to 1024"
    )
    auth_config = AuthConfig(
        cache_ttl=cache_ttl,
        cache_size=_positive_int(r, auth, "auth", "cache_size", 10_000),
        max_parallel_hashes=parallel,
    )

    return Config(
        source=source,
        server=ServerConfig(
            hostname, data_dir, _positive_int(r, server, "server", "workers", DEFAULT_WORKERS)
        ),
        listen=listen,
        tls=TLSConfig(
            r.path(cert) if cert else None,
            r.path(key) if key else None,
            acme=acme,
            acme_contact=acme_contact,
            acme_directory=acme_directory,
            acme_ca=r.path(acme_ca) if acme_ca else None,
        ),
        limits=LimitsConfig(
            max_message_size=max_size,
            login_throttle_exempt=tuple(n.strip() for n in exempt),
            **limit_values,
        ),
        relay=RelayConfig(
            smarthost=smarthost,
            nameservers=tuple(_nameserver(r, n) for n in nameservers),
            routes=tuple(route_list),
            port=relay_port,
            smarthost_tls=smarthost_tls,
            smarthost_username=username or None,
            smarthost_password_file=r.path(password_file) if password_file else None,
            smarthost_ca=r.path(smarthost_ca) if smarthost_ca else None,
        ),
        queue=queue_config,
        submission=SubmissionConfig(check_from_header=check_from),
        inbound=InboundConfig(**{k: inbound.get(k, v) for k, v in inbound_defaults.items()}),
        smtp=SMTPConfig(bare_lf=bare_lf),
        delivery=DeliveryConfig(
            recipient_delimiter=delimiter,
            plus_folder=plus_folder,
            sieve=SieveLimits(max_script_size=sieve_size, **sieve_counts),
        ),
        managesieve=managesieve_config,
        mta_sts=MTASTSConfig(mode=mta_sts_mode, max_age=mta_sts_max_age),
        log=LogConfig(format=log_format),
        auth=auth_config,
        antispam=antispam,
        metrics=_metrics_config(r, data),
        forwarding=_forwarding(r, data),
        warnings=tuple(warnings),
    )


def _antispam(r: _Reader, data: dict[str, Any]) -> AntispamConfig:
    """C{[antispam]}, checked (see L{AntispamConfig})."""
    defaults = AntispamConfig()
    section = r.section(data, "antispam", set(attrs.asdict(defaults)))
    urls = {}
    for key in ("rspamd", "rspamd_controller"):
        url = r.string(section, "antispam", key, "")
        if url and not re.fullmatch(r"https?://[^/\s]+/?", url):
            raise r.fail(
                f"[antispam] {key}", f'"{url}" is not a URL such as "http://127.0.0.1:11333"'
            )
        urls[key] = url
    password = r.string(section, "antispam", "rspamd_password", "")
    check_submission = section.get("check_submission", False)
    if not isinstance(check_submission, bool):
        raise r.fail("[antispam] check_submission", "must be true or false")
    timeout = _positive_int(r, section, "antispam", "timeout", defaults.timeout)
    greet_pause = 0
    if section.get("greet_pause", 0) not in (0, "0", "0s"):
        greet_pause = _parsed(
            r, section, "antispam", "greet_pause", 0, parse_duration, ", or 0 for off"
        )
    zones: dict[str, tuple[str, ...]] = {}
    for key in ("dnsbl", "dnswl"):
        value = section.get(key, [])
        if not isinstance(value, list) or not all(isinstance(z, str) and z for z in value):
            raise r.fail(f"[antispam] {key}", 'must be a list of zones such as ["zen.example"]')
        try:
            zones[key] = tuple(normalize_domain(z.strip().rstrip(".")) for z in value)
        except AddressError as e:
            raise r.fail(f"[antispam] {key}", str(e)) from None
    counts = {
        key: _positive_int(
            r, section, "antispam", key, 0, 0, message="must be a count, 0 for no limit"
        )
        for key in ("smtp_messages_per_ip_hour", "smtp_connections_per_ip_hour")
    }
    return AntispamConfig(
        rspamd=urls["rspamd"],
        rspamd_controller=urls["rspamd_controller"],
        rspamd_password=password,
        timeout=timeout,
        check_submission=check_submission,
        dnsbl=zones["dnsbl"],
        dnswl=zones["dnswl"],
        greet_pause=greet_pause,
        **counts,
    )


def _forwarding(r: _Reader, data: dict[str, Any]) -> ForwardingConfig:
    """C{[forwarding]}, checked (see L{ForwardingConfig})."""
    section = r.section(data, "forwarding", set(attrs.asdict(ForwardingConfig())))
    flags = {}
    for key in ("srs", "arc"):
        flags[key] = section.get(key, True)
        if not isinstance(flags[key], bool):
            raise r.fail(f"[forwarding] {key}", "must be true or false")
    domain = r.string(section, "forwarding", "srs_domain", "")
    if domain:
        try:
            domain = normalize_domain(domain)
        except AddressError as e:
            raise r.fail("[forwarding] srs_domain", str(e)) from None
    return ForwardingConfig(srs=flags["srs"], srs_domain=domain, arc=flags["arc"])


def _metrics_config(r: _Reader, data: dict[str, Any]) -> MetricsConfig:
    token_file = r.string(r.section(data, "metrics", {"token_file"}), "metrics", "token_file", "")
    return MetricsConfig(token_file=r.path(token_file) if token_file else None)


def store_path(config: Config) -> Path:
    """C{DATA_DIR/accounts.sqlite3}: the credential store."""
    return config.server.data_dir / "accounts.sqlite3"


def mail_dir(config: Config) -> Path:
    """C{DATA_DIR/mail}: the root of every user's Maildir."""
    return config.server.data_dir / "mail"


def queue_dir(config: Config) -> Path:
    """C{DATA_DIR/queue}: the outbound spool."""
    return config.server.data_dir / "queue"


def smarthost_password(config: Config) -> str | None:
    """The smarthost password: the first line of C{[relay] smarthost_password_file}, which
    must be readable by its owner only (it is a credential; the config file may not be).

    @return: C{None} when no username is configured.
    @raise ConfigError: the file is missing, unreadable, empty, or open to group/others.
    """
    path = config.relay.smarthost_password_file
    if path is None:
        return None
    where = f"{config.source or 'built-in defaults'}: [relay] smarthost_password_file"
    password = _secret_line(where, path)
    if not password:
        raise ConfigError(f"{where}: {path} is empty")
    if "\x00" in password:  # RFC 4616 §2: NUL separates the PLAIN fields
        raise ConfigError(f"{where}: {path}: the password contains NUL")
    return password


def metrics_token(config: Config) -> str | None:
    """The bearer token of C{/metrics}: the first line of C{[metrics] token_file}, which must
    be readable by its owner only (as L{smarthost_password}).

    @return: C{None} when no token file is configured (no token asked).
    @raise ConfigError: the file is missing, unreadable, empty, or open to group/others.
    """
    path = config.metrics.token_file
    if path is None:
        return None
    where = f"{config.source or 'built-in defaults'}: [metrics] token_file"
    token = _secret_line(where, path).strip()
    if not token:
        raise ConfigError(f"{where}: {path} is empty")
    return token


def _secret_line(where: str, path: Path) -> str:
    """The first line of the credential file C{path} (C{""} when it has none), which must be
    readable by its owner only.  @raise ConfigError: it is missing, unreadable, open to
    group/others, or not UTF-8; C{where} (file and key) begins the message."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{where}: {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8") from None
    return lines[0] if lines else ""


def control_path(config: Config) -> Path:
    """C{DATA_DIR/control}: the control socket of the running server (mode 0600)."""
    return config.server.data_dir / "control"


def tls_paths(config: Config) -> tuple[Path, Path]:
    """(cert, key): the configured files, else the self-signed pair in C{DATA_DIR/tls/}."""
    if config.tls.cert and config.tls.key:
        return config.tls.cert, config.tls.key
    return config.server.data_dir / "tls" / "cert.pem", config.server.data_dir / "tls" / "key.pem"


def ensure_data_dir(config: Config) -> None:
    """Create the data dir and C{mail/} (mode 0700) if missing.

    Also sets the process umask to 077, so every file and directory the server or the CLI
    creates in the data dir (Maildirs, the store, the queue, the self-signed key) is
    owner-only (0600/0700), whatever mode the creating code asked for (issue 5).

    @raise ConfigError: when it cannot be created.
    """
    os.umask(0o077)
    try:
        config.server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mail_dir(config).mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        where = config.source or "built-in defaults"
        raise ConfigError(
            f"{where}: [server] data_dir: cannot create {config.server.data_dir}: {e.strerror}"
        ) from None


def user_name(uid: int) -> str | None:
    """The name of user C{uid} in the password database, or C{None} when it has none here
    (twistd's switch to a user, initgroups, needs one)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def user_groups(uid: int, gid: int) -> tuple[str, set[int]]:
    """(the name of user C{uid}, else the number as text; the groups of that user with
    primary group C{gid}, or C{gid} alone when it has no name): who owns the data dir, in
    the words of a message, and which groups the server running as it is in."""
    name = user_name(uid)
    if name is None:
        return str(uid), {gid}
    return name, set(os.getgrouplist(name, gid))
