"""Config parsing: defaults, the example file, discovery and one-line errors naming file and key."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from twisted.trial.unittest import TestCase

from twistedmail import config as config_module
from twistedmail.config import (
    DEFAULT_LISTEN,
    AuthConfig,
    ConfigError,
    DeliveryConfig,
    ListenAddress,
    MetricsConfig,
    QueueConfig,
    find_config,
    load_config,
    metrics_token,
    parse_config,
    parse_size,
    smarthost_password,
    store_path,
    tls_paths,
)
from twistedmail.sieve.interpret import SieveLimits

ROOT = Path(__file__).resolve().parents[1]


class ConfigFileTestCase(TestCase):
    """Writes a config file and loads it; C{error} is the one-line ConfigError with the file
    named C{FILE}."""

    def write(self, text: str) -> Path:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def error(self, text: str) -> str:
        path = self.write(text)
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        return str(cm.exception).replace(str(path), "FILE")

    def secret_file(self, text: str, mode: int) -> Path:
        """A credential file (smarthost password, metrics token) with C{text} and C{mode}."""
        secret = Path(self.mktemp()).resolve()
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(text)
        secret.chmod(mode)
        return secret


class ConfigTests(ConfigFileTestCase):
    def test_example_file_equals_the_defaults(self) -> None:
        """etc/twistedmail.example.toml lists every key with its default value."""
        example = load_config(ROOT / "etc" / "twistedmail.example.toml")
        defaults = parse_config({}, None)
        self.assertEqual(example.listen, defaults.listen)
        self.assertEqual(example.limits, defaults.limits)
        self.assertEqual(example.relay, defaults.relay)
        self.assertEqual(example.queue, defaults.queue)
        self.assertEqual(example.submission, defaults.submission)
        self.assertEqual(example.smtp, defaults.smtp)
        self.assertEqual(example.tls, defaults.tls)
        self.assertEqual(example.delivery, defaults.delivery)
        self.assertEqual(example.managesieve, defaults.managesieve)
        self.assertEqual(example.mta_sts, defaults.mta_sts)
        self.assertEqual(example.log, defaults.log)
        self.assertEqual(example.auth, defaults.auth)
        self.assertEqual(example.antispam, defaults.antispam)
        self.assertEqual(example.metrics, defaults.metrics)

    def test_defaults(self) -> None:
        """An empty config gives the built-in data dir, 25 MiB messages, the default listeners
        and the store and key paths under the data dir."""
        config = parse_config({}, None)
        self.assertEqual(config.server.data_dir, Path("twistedmail-data").resolve())
        self.assertEqual(config.limits.max_message_size, 25 * 1024 * 1024)
        self.assertEqual(
            {k: tuple(str(a) for a in v) for k, v in config.listen.items()},
            {
                **{k: (v,) for k, v in DEFAULT_LISTEN.items()},
                **{"http": (), "https": (), "metrics": ()},
            },
        )
        self.assertEqual(store_path(config), config.server.data_dir / "accounts.sqlite3")
        self.assertEqual(tls_paths(config)[1], config.server.data_dir / "tls" / "key.pem")

    def test_web_listeners_mta_sts_and_log(self) -> None:
        """[listen] http/https are off by default and take "host:port" like the others;
        [mta_sts] mode and max_age (RFC 8461 §3.2: at most a year) and [log] format."""
        config = load_config(
            self.write(
                '[listen]\nhttp = "127.0.0.1:8080"\nhttps = ["127.0.0.1:8443"]\n'
                '[mta_sts]\nmode = "enforce"\nmax_age = "1d"\n[log]\nformat = "json"\n'
            )
        )
        self.assertEqual(str(config.listen["http"][0]), "127.0.0.1:8080")
        self.assertEqual(str(config.listen["https"][0]), "127.0.0.1:8443")
        self.assertEqual((config.mta_sts.mode, config.mta_sts.max_age), ("enforce", 86400))
        self.assertEqual(config.log.format, "json")
        defaults = parse_config({}, None)
        self.assertEqual((defaults.mta_sts.mode, defaults.mta_sts.max_age), ("testing", 604800))
        self.assertEqual(defaults.log.format, "text")
        self.assertEqual(
            self.error('[mta_sts]\nmode = "on"\n'),
            'FILE: [mta_sts] mode: must be "enforce", "testing" or "none"',
        )
        self.assertEqual(
            self.error('[mta_sts]\nmax_age = "400d"\n'),
            "FILE: [mta_sts] max_age: must be at most one year (RFC 8461 §3.2)",
        )
        self.assertEqual(
            self.error('[log]\nformat = "xml"\n'), 'FILE: [log] format: must be "text" or "json"'
        )
        self.assertEqual(
            self.error('[listen]\nhttp = "127.0.0.1:25"\nsmtp = "127.0.0.1:25"\n'),
            "FILE: [listen] http: 127.0.0.1:25 is also used by smtp",
        )

    def test_login_throttle_exempt(self) -> None:
        """[limits] login_throttle_exempt: a list of IPv4/IPv6 networks (or addresses)."""
        config = load_config(
            self.write('[limits]\nlogin_throttle_exempt = ["192.0.2.0/24", "2001:db8::/32"]\n')
        )
        self.assertEqual(config.limits.login_throttle_exempt, ("192.0.2.0/24", "2001:db8::/32"))
        self.assertEqual(parse_config({}, None).limits.login_throttle_exempt, ())
        self.assertEqual(
            self.error('[limits]\nlogin_throttle_exempt = ["office"]\n'),
            'FILE: [limits] login_throttle_exempt: "office" is not an IP network',
        )
        self.assertEqual(
            self.error('[limits]\nlogin_throttle_exempt = "10.0.0.0/8"\n'),
            'FILE: [limits] login_throttle_exempt: must be a list of networks ("10.0.0.0/8")',
        )
        self.assertEqual(
            self.error("[limits]\nlogin_ip_block_after = 0\n"),
            "FILE: [limits] login_ip_block_after: must be a positive integer",
        )

    def test_relative_paths_resolve_against_the_file(self) -> None:
        """A relative data_dir resolves against the config file's folder, and the hostname is
        lower-cased."""
        path = self.write('[server]\ndata_dir = "data"\nhostname = "Mail.Example.ORG"\n')
        config = load_config(path)
        self.assertEqual(config.server.data_dir, path.parent.resolve() / "data")
        self.assertEqual(config.server.hostname, "mail.example.org")

    def test_every_relative_path_resolves_against_the_file_from_any_cwd(self) -> None:
        """Issue 9: data_dir (also its default when the file sets none), the TLS pair, the
        smarthost CA and password file resolve against the config file's directory, not
        the working directory, for a relative --config too."""
        path = self.write(
            '[server]\ndata_dir = "data"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n'
            '[relay]\nsmarthost = "smtp.example.net"\nsmarthost_ca = "ca.pem"\n'
            'smarthost_username = "u"\nsmarthost_password_file = "secret"\n'
        )
        here = path.parent.resolve()
        without = here / "without-data-dir.toml"
        without.write_text('[server]\nhostname = "mail.example.org"\n')
        old = os.getcwd()
        self.addCleanup(os.chdir, old)
        os.chdir(here.parent)
        config = load_config(Path(here.name) / path.name)
        os.chdir("/")
        self.assertEqual(config.server.data_dir, here / "data")
        self.assertEqual((config.tls.cert, config.tls.key), (here / "c.pem", here / "k.pem"))
        self.assertEqual(config.relay.smarthost_ca, here / "ca.pem")
        self.assertEqual(config.relay.smarthost_password_file, here / "secret")
        self.assertEqual(load_config(without).server.data_dir, here / "twistedmail-data")

    def test_idna2008_hostname_and_routes(self) -> None:
        """[server] hostname and [relay.routes] domains are IDNA2008 (UTS #46) A-labels."""
        config = load_config(
            self.write(
                '[server]\nhostname = "Mail.Faß.TEST"\n'
                '[relay.routes]\n"faß.test" = "127.0.0.1:2525"\n'
            )
        )
        self.assertEqual(config.server.hostname, "mail.xn--fa-hia.test")
        self.assertEqual([d for d, _ in config.relay.routes], ["xn--fa-hia.test"])

    def test_listen_lists_ipv6_and_disabled(self) -> None:
        """[listen] takes a list of addresses, IPv6 in brackets, and [] turns a service off."""
        config = load_config(
            self.write('[listen]\nsmtp = ["127.0.0.1:2525", "[::1]:2525"]\npop3 = []\n')
        )
        self.assertEqual(
            config.listen["smtp"], (ListenAddress("127.0.0.1", 2525), ListenAddress("::1", 2525))
        )
        self.assertEqual(config.listen["pop3"], ())

    def test_errors_name_file_and_key(self) -> None:
        """Config errors name the file, the section and the key: a bad address, port or IP, an
        unknown key or section, a bad size, cert without key, invalid TOML."""
        self.assertEqual(
            self.error('[listen]\nsmtp = "nonsense"\n'),
            'FILE: [listen] smtp: "nonsense" is not "host:port"',
        )
        self.assertEqual(
            self.error('[listen]\nsmpt = "1.2.3.4:25"\n'), "FILE: [listen] smpt: unknown key"
        )
        self.assertEqual(self.error("[srever]\n"), "FILE: [srever]: unknown section")
        self.assertEqual(
            self.error('[limits]\nmax_message_size = "lots"\n'),
            "FILE: [limits] max_message_size: must be a positive size such as 25MiB",
        )
        self.assertEqual(
            self.error('[tls]\ncert = "a.pem"\n'),
            "FILE: [tls]: cert and key must be given together",
        )
        self.assertEqual(
            self.error('[listen]\nimap = "1.2.3.4:70000"\n'),
            "FILE: [listen] imap: port 70000 out of range",
        )
        self.assertTrue(self.error("[server\n").startswith("FILE: invalid TOML: "))

    def test_listen_hosts_are_ip_addresses_used_once(self) -> None:
        """Found by a new user: these passed check-config and failed at start."""
        self.assertEqual(
            self.error('[listen]\nsmtp = "999.1.1.1:25"\n'),
            'FILE: [listen] smtp: "999.1.1.1" is not an IP address',
        )
        self.assertEqual(
            self.error('[listen]\nsubmission = "0.0.0.0:25"\n'),
            "FILE: [listen] submission: 0.0.0.0:25 is also used by smtp",
        )
        self.assertEqual(
            self.error('[listen]\npop3 = ["127.0.0.1:2110", "127.0.0.1:2110"]\n'),
            "FILE: [listen] pop3: 127.0.0.1:2110 is also used by pop3",
        )

    def test_delivery_addressing(self) -> None:
        """[delivery]: recipient_delimiter "+" (RFC 5233) and plus_folder off by default."""
        self.assertEqual(parse_config({}, None).delivery, DeliveryConfig("+", False))
        text = '[delivery]\nrecipient_delimiter = ""\nplus_folder = true\n'
        config = load_config(self.write(text))
        self.assertEqual(config.delivery, DeliveryConfig("", True))
        self.assertEqual(
            self.error('[delivery]\nrecipient_delimiter = "++"\n'),
            "FILE: [delivery] recipient_delimiter: must be one character or empty, not @",
        )
        self.assertEqual(
            self.error('[delivery]\nrecipient_delimiter = "@"\n'),
            "FILE: [delivery] recipient_delimiter: must be one character or empty, not @",
        )
        self.assertEqual(
            self.error('[delivery]\nplus_folder = "yes"\n'),
            "FILE: [delivery] plus_folder: must be true or false",
        )

    def test_delivery_sieve_limits(self) -> None:
        """[delivery] sieve_max_*: Pigeonhole's defaults (32 actions, 4 redirects), 512KiB
        scripts, 1000000 steps; a size takes units, a count a whole number from 1."""
        self.assertEqual(
            parse_config({}, None).delivery.sieve, SieveLimits(512 * 1024, 32, 4, 1_000_000)
        )
        text = (
            '[delivery]\nsieve_max_script_size = "64KiB"\nsieve_max_actions = 8\n'
            "sieve_max_redirects = 1\nsieve_max_steps = 5000\n"
        )
        self.assertEqual(
            load_config(self.write(text)).delivery.sieve, SieveLimits(65536, 8, 1, 5000)
        )
        self.assertEqual(
            self.error("[delivery]\nsieve_max_actions = 0\n"),
            "FILE: [delivery] sieve_max_actions: must be a whole number from 1 to 2147483647",
        )
        self.assertEqual(
            self.error('[delivery]\nsieve_max_steps = "many"\n'),
            "FILE: [delivery] sieve_max_steps: must be a whole number from 1 to 2147483647",
        )
        self.assertIn(
            "sieve_max_script_size",
            self.error('[delivery]\nsieve_max_script_size = "big"\n'),
        )

    def test_submission_from_header_check(self) -> None:
        """[submission] check_from_header defaults to true, takes false, and refuses a
        non-boolean."""
        self.assertTrue(parse_config({}, None).submission.check_from_header)
        config = load_config(self.write("[submission]\ncheck_from_header = false\n"))
        self.assertFalse(config.submission.check_from_header)
        self.assertEqual(
            self.error('[submission]\ncheck_from_header = "no"\n'),
            "FILE: [submission] check_from_header: must be true or false",
        )

    def test_inbound_authentication_keys(self) -> None:
        """[inbound] check_authentication defaults to true and dmarc_reject to false; both take
        booleans only."""
        inbound = parse_config({}, None).inbound
        self.assertEqual((inbound.check_authentication, inbound.dmarc_reject), (True, False))
        config = load_config(
            self.write("[inbound]\ncheck_authentication = false\ndmarc_reject = true\n")
        )
        self.assertEqual(
            (config.inbound.check_authentication, config.inbound.dmarc_reject), (False, True)
        )
        self.assertEqual(
            self.error("[inbound]\ndmarc_reject = 1\n"),
            "FILE: [inbound] dmarc_reject: must be true or false",
        )
        self.assertEqual(self.error("[inbound]\nspf = true\n"), "FILE: [inbound] spf: unknown key")

    def test_missing_file(self) -> None:
        """A missing config file is a ConfigError naming it and the OS reason."""
        with self.assertRaises(ConfigError) as cm:
            load_config(Path("/nonexistent/twistedmail.toml"))
        self.assertEqual(
            str(cm.exception),
            "/nonexistent/twistedmail.toml: cannot read config file: No such file or directory",
        )

    def test_sizes(self) -> None:
        """parse_size reads binary and decimal units and bare byte counts from 1 KiB; below that,
        0 and booleans are refused."""
        self.assertEqual(parse_size("25MiB"), 26214400)
        self.assertEqual(parse_size("10 MB"), 10_000_000)
        self.assertEqual(parse_size(4096), 4096)
        self.assertRaises(ValueError, parse_size, 1000)  # unit-less below 1 KiB: a mistake
        self.assertRaises(ValueError, parse_size, "0")
        self.assertRaises(ValueError, parse_size, True)

    def test_discovery_order(self) -> None:
        """The config is --config, else $TWISTEDMAIL_CONFIG, else ./twistedmail.toml, else none."""
        explicit = Path("/x.toml")
        self.assertEqual(find_config(explicit), explicit)
        old_env, old_cwd = os.environ.get("TWISTEDMAIL_CONFIG"), os.getcwd()
        tmp = Path(self.mktemp()).resolve()
        tmp.mkdir(parents=True)
        try:
            os.chdir(tmp)
            os.environ.pop("TWISTEDMAIL_CONFIG", None)
            self.assertIsNone(find_config(None))
            (tmp / "twistedmail.toml").write_text("")
            self.assertEqual(find_config(None), Path("twistedmail.toml"))
            os.environ["TWISTEDMAIL_CONFIG"] = "/etc/tm.toml"
            self.assertEqual(find_config(None), Path("/etc/tm.toml"))
        finally:
            os.chdir(old_cwd)
            if old_env is None:
                os.environ.pop("TWISTEDMAIL_CONFIG", None)
            else:
                os.environ["TWISTEDMAIL_CONFIG"] = old_env


class QueueConfigTests(ConfigFileTestCase):
    def test_queue_and_relay_port(self) -> None:
        """[relay] port and the [queue] durations and per-destination limit are read into
        QueueConfig."""
        path = self.write(
            '[relay]\nport = 2525\n[queue]\nfirst_retry = 2\nmax_retry = "30s"\n'
            'lifetime = "1d"\ndelay_warning = "4h"\nmax_per_destination = 1\n'
        )
        config = load_config(path)
        self.assertEqual(config.relay.port, 2525)
        self.assertEqual(
            config.queue,
            QueueConfig(
                first_retry=2,
                max_retry=30,
                lifetime=86400,
                delay_warning=14400,
                max_connections=20,
                max_per_destination=1,
            ),
        )
        self.assertEqual(parse_config({}, None).queue, QueueConfig())

    def test_queue_errors(self) -> None:
        """[queue] refuses a duration that does not parse, max_retry shorter than first_retry,
        and bad numbers, naming the key."""
        self.assertEqual(
            self.error('[queue]\nlifetime = "soon"\n'),
            'FILE: [queue] lifetime: must be a positive duration such as "30s", "5m", "1h" or "5d"',
        )
        self.assertEqual(
            self.error('[queue]\nfirst_retry = "2h"\n'),
            "FILE: [queue] max_retry: must not be shorter than first_retry",
        )
        self.assertEqual(
            self.error("[queue]\nmax_connections = 0\n"),
            "FILE: [queue] max_connections: must be a positive integer",
        )
        self.assertEqual(
            self.error("[relay]\nport = 0\n"),
            "FILE: [relay] port: must be a TCP port number (1-65535)",
        )
        self.assertEqual(self.error("[queue]\nretry = 1\n"), "FILE: [queue] retry: unknown key")


class SmarthostConfigTests(ConfigFileTestCase):
    def test_smarthost_tls_auth_keys(self) -> None:
        """[relay] smarthost with implicit TLS, username, password file (first line read, never
        in repr) and a CA path relative to the file."""
        secret = self.secret_file("s3cret pass\nignored\n", 0o600)
        path = self.write(
            '[relay]\nsmarthost = "relay.example.net:465"\nsmarthost_tls = "implicit"\n'
            f'smarthost_username = "me@example.org"\nsmarthost_password_file = "{secret}"\n'
            'smarthost_ca = "ca.pem"\n'
        )
        config = load_config(path)
        self.assertEqual(
            (config.relay.smarthost, config.relay.smarthost_tls, config.relay.smarthost_username),
            (ListenAddress("relay.example.net", 465), "implicit", "me@example.org"),
        )
        self.assertEqual(config.relay.smarthost_ca, path.parent.resolve() / "ca.pem")
        self.assertEqual(smarthost_password(config), "s3cret pass")
        self.assertNotIn("s3cret", repr(config))
        self.assertEqual(parse_config({}, None).relay.smarthost_tls, "starttls")
        self.assertIsNone(smarthost_password(parse_config({}, None)))

    def test_password_file_must_be_owner_only(self) -> None:
        """A smarthost password file readable by others is refused with 'chmod 600 it'."""
        secret = self.secret_file("pw\n", 0o644)
        path = self.write(
            '[relay]\nsmarthost = "relay.example.net"\n'
            f'smarthost_username = "me"\nsmarthost_password_file = "{secret}"\n'
        )
        config = load_config(path)
        with self.assertRaises(ConfigError) as cm:
            smarthost_password(config)
        self.assertEqual(
            str(cm.exception).replace(str(path), "FILE").replace(str(secret), "SECRET"),
            "FILE: [relay] smarthost_password_file: SECRET is readable by others (mode 644);"
            " chmod 600 it",
        )
        secret.unlink()
        with self.assertRaises(ConfigError) as cm:
            smarthost_password(config)
        self.assertIn("cannot read", str(cm.exception))

    def test_smarthost_credentials_without_nul_or_line_breaks(self) -> None:
        """RFC 4616 §2: NUL separates the PLAIN fields, so it cannot be in the user name or
        the password; a CR or LF in the user name would not survive AUTH either."""
        for name in ("m\\u0000e", "me\\r\\nx"):
            self.assertEqual(
                self.error(
                    f'[relay]\nsmarthost = "r.example"\nsmarthost_username = "{name}"\n'
                    'smarthost_password_file = "pw"\n'
                ),
                "FILE: [relay] smarthost_username: must not contain control characters",
            )
        secret = self.secret_file("pw\x00AUTHZ\n", 0o600)
        path = self.write(
            '[relay]\nsmarthost = "relay.example.net"\n'
            f'smarthost_username = "me"\nsmarthost_password_file = "{secret}"\n'
        )
        with self.assertRaises(ConfigError) as cm:
            smarthost_password(load_config(path))
        self.assertEqual(
            str(cm.exception).replace(str(path), "FILE").replace(str(secret), "SECRET"),
            "FILE: [relay] smarthost_password_file: SECRET: the password contains NUL",
        )

    def test_smarthost_default_port_follows_the_tls_mode(self) -> None:
        """The smarthost port defaults to 25 with STARTTLS and 465 with implicit TLS."""
        for tls_mode, port in (("starttls", 25), ("implicit", 465)):
            path = self.write(
                f'[relay]\nsmarthost = "relay.example.net"\nsmarthost_tls = "{tls_mode}"\n'
            )
            self.assertEqual(
                load_config(path).relay.smarthost, ListenAddress("relay.example.net", port)
            )

    def test_smarthost_errors(self) -> None:
        """[relay] refuses an unknown smarthost_tls, a username without a password file, and
        other bad smarthost keys, naming them."""
        self.assertEqual(
            self.error('[relay]\nsmarthost = "r.example"\nsmarthost_tls = "none"\n'),
            'FILE: [relay] smarthost_tls: must be "starttls" or "implicit"',
        )
        self.assertEqual(
            self.error('[relay]\nsmarthost = "r.example"\nsmarthost_username = "me"\n'),
            "FILE: [relay] smarthost_username: and smarthost_password_file must be given together",
        )
        self.assertEqual(
            self.error('[relay]\nsmarthost_ca = "ca.pem"\n'),
            "FILE: [relay] smarthost_ca: needs [relay] smarthost",
        )


class DefaultQuotaTests(TestCase):
    """[limits] default_quota: the storage quota of users added from now on (0: unlimited)."""

    def load(self, value: str) -> int:
        path = Path(self.mktemp())
        path.write_text(f"[limits]\ndefault_quota = {value}\n")
        return load_config(path).limits.default_quota

    def test_values(self) -> None:
        """[limits] default_quota is 0 (unlimited) by default and reads 0, none, sizes with units
        and byte counts."""
        self.assertEqual(parse_config({}, None).limits.default_quota, 0)
        self.assertEqual(self.load('"0"'), 0)
        self.assertEqual(self.load('"none"'), 0)
        self.assertEqual(self.load("0"), 0)
        self.assertEqual(self.load('"1GiB"'), 2**30)
        self.assertEqual(self.load('"500MB"'), 500 * 10**6)
        self.assertEqual(self.load("4096"), 4096)

    def test_invalid(self) -> None:
        """An invalid or negative default_quota is one error naming the file and key."""
        for value in ('"lots"', "-1", "true", '"-5MiB"'):
            path = Path(self.mktemp())
            path.write_text(f"[limits]\ndefault_quota = {value}\n")
            with self.assertRaises(ConfigError) as cm:
                load_config(path)
            self.assertEqual(
                str(cm.exception),
                f'{path}: [limits] default_quota: must be a size such as "1GiB", or "0" /'
                ' "none" for unlimited',
            )


class HardeningKeyTests(ConfigFileTestCase):
    """[limits] max_line_length / max_header_size / imap_max_connections_per_user and
    [smtp] bare_lf (issue 5)."""

    def test_defaults(self) -> None:
        """The hardening keys default to 16384-byte lines, 256 KiB headers, 10 IMAP connections a
        user and bare_lf = reject."""
        config = parse_config({}, None)
        self.assertEqual(config.limits.max_line_length, 16384)
        self.assertEqual(config.limits.max_header_size, 256 * 1024)
        self.assertEqual(config.limits.imap_max_connections_per_user, 10)
        self.assertEqual(config.smtp.bare_lf, "reject")

    def test_values(self) -> None:
        """max_line_length, max_header_size, imap_max_connections_per_user and [smtp] bare_lf are
        read from the file."""
        config = load_config(
            self.write(
                '[limits]\nmax_line_length = 998\nmax_header_size = "64KiB"\n'
                'imap_max_connections_per_user = 3\n[smtp]\nbare_lf = "normalize"\n'
            )
        )
        self.assertEqual(config.limits.max_line_length, 998)
        self.assertEqual(config.limits.max_header_size, 65536)
        self.assertEqual(config.limits.imap_max_connections_per_user, 3)
        self.assertEqual(config.smtp.bare_lf, "normalize")

    def test_errors(self) -> None:
        """Hardening keys out of range (max_line_length below 998, RFC 5321 §4.5.3.1.6, or over
        65536) or of a bad value are refused, naming the key."""
        for text, message in (
            (
                "[limits]\nmax_line_length = 997\n",
                "FILE: [limits] max_line_length: must be from 998 (RFC 5321 §4.5.3.1.6) to 65536",
            ),
            (
                "[limits]\nmax_line_length = 65537\n",
                "FILE: [limits] max_line_length: must be from 998 (RFC 5321 §4.5.3.1.6) to 65536",
            ),
            (
                '[limits]\nmax_header_size = "big"\n',
                "FILE: [limits] max_header_size: must be a positive size such as 25MiB",
            ),
            (
                "[limits]\nimap_max_connections_per_user = 0\n",
                "FILE: [limits] imap_max_connections_per_user: must be a positive integer",
            ),
            ('[smtp]\nbare_lf = "fix"\n', 'FILE: [smtp] bare_lf: must be "reject" or "normalize"'),
            ("[smtp]\nbare_cr = 1\n", "FILE: [smtp] bare_cr: unknown key"),
        ):
            self.assertEqual(self.error(text), message)


class BareSizeTests(TestCase):
    """Sizes carry a unit: a bare integer below 1 KiB is refused, a larger one warned about
    (issue 9: C{max_message_size = 25} was 25 octets and passed check-config)."""

    def write(self, text: str) -> Path:
        path = Path(self.mktemp())
        path.write_text(f'[server]\nhostname = "mail.example.org"\n{text}')
        return path

    def test_small_bare_integer_is_refused_naming_file_and_key(self) -> None:
        """A unit-less size below 1 KiB in any size key is a one-line error."""
        for key, value in (
            ("max_message_size", "25"),
            ("max_message_size", '"25"'),
            ("max_header_size", "512"),
            ("default_quota", "1"),
            ("default_quota", '"100"'),
        ):
            path = self.write(f"[limits]\n{key} = {value}\n")
            e = self.assertRaises(ConfigError, load_config, path)
            number = value.strip('"')
            self.assertEqual(
                str(e),
                f"{path}: [limits] {key}: {number} has no unit, so it would be {number} octets;"
                f' write "{number}MiB" (units B, KB, KiB, MB, MiB, GB, GiB)',
            )

    def test_nameserver_must_be_an_ip_address(self) -> None:
        """[relay] nameservers are IP addresses (twisted.names queries addresses, never names)."""
        path = self.write('[relay]\nnameservers = ["not-an-ip"]\n')
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(e), f'{path}: [relay] nameservers: "not-an-ip" is not an IP address')
        ok = load_config(
            self.write('[relay]\nnameservers = ["127.0.0.1:5353", "[::1]:53", "10.0.0.1"]\n')
        )
        self.assertEqual(
            [(a.host, a.port) for a in ok.relay.nameservers],
            [("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53)],
        )

    def test_absurd_sizes_and_counts_are_refused_in_one_line(self) -> None:
        """A size over 1 PiB or a count/timeout over 2**31-1 is a one-line error naming file
        and key (QA: C{default_quota = "99999999999999999999GiB"} passed check-config, then
        C{user add} died in SQLite with a traceback, and SIZE advertised 33 digits)."""
        for key, value, message in (
            ("default_quota", '"99999999999999999999GiB"', "too large: at most 1PiB"),
            ("max_message_size", '"2000000TiB"', "must be a positive size such as 25MiB"),
            ("max_message_size", '"2000000GiB"', "too large: at most 1PiB"),
            ("smtp_idle_timeout", "99999999999999999999", "must be at most 2147483647"),
        ):
            path = self.write(f"[limits]\n{key} = {value}\n")
            e = self.assertRaises(ConfigError, load_config, path)
            self.assertEqual(str(e), f"{path}: [limits] {key}: {message}")

    def test_unit_bytes_and_large_bare_integers_load(self) -> None:
        """The unit "B" says octets on purpose; a bare integer from 1 KiB up loads, warned."""
        config = load_config(self.write('[limits]\nmax_message_size = "2000B"\n'))
        self.assertEqual(config.limits.max_message_size, 2000)
        self.assertEqual(config.warnings, ())
        path = self.write("[limits]\nmax_message_size = 26214400\ndefault_quota = 4096\n")
        config = load_config(path)
        self.assertEqual(config.limits.max_message_size, 26214400)
        self.assertEqual(config.limits.default_quota, 4096)
        self.assertEqual(
            config.warnings,
            (
                f"{path}: [limits] max_message_size: 26214400 has no unit and is read as octets;"
                ' write it with one, e.g. "25MiB"',
                f"{path}: [limits] default_quota: 4096 has no unit and is read as octets;"
                ' write it with one, e.g. "4KiB"',
            ),
        )

    def test_unlimited_quota_needs_no_unit(self) -> None:
        """default_quota = 0 means unlimited and is neither refused nor warned about."""
        config = load_config(self.write("[limits]\ndefault_quota = 0\n"))
        self.assertEqual((config.limits.default_quota, config.warnings), (0, ()))


class HostnameWarningTests(TestCase):
    """RFC 5321 §2.3.5, §4.1.1.1: the EHLO name is a fully qualified domain name."""

    def test_not_fqdn_is_warned(self) -> None:
        """A hostname without a dot, or under a non-public suffix, gets a warning."""
        for name in ("mail", "localhost", "mail.localdomain", "box.local"):
            path = Path(self.mktemp())
            path.write_text(f'[server]\nhostname = "{name}"\n')
            self.assertEqual(
                load_config(path).warnings,
                (
                    f'{path}: [server] hostname: "{name}" is not a fully qualified domain name;'
                    " other servers check the EHLO name and the certificate against it"
                    " (RFC 5321 §4.1.1.1)",
                ),
            )

    def test_fqdn_is_not_warned(self) -> None:
        """mail.example.org is fully qualified: no warning."""
        path = Path(self.mktemp())
        path.write_text('[server]\nhostname = "Mail.Example.ORG"\n')
        self.assertEqual(load_config(path).warnings, ())


class AcmeConfigTests(ConfigFileTestCase):
    """C{[tls] acme}: certificates by ACME (RFC 8555) need a contact and the HTTP listener."""

    ACME = '[listen]\nhttp = "127.0.0.1:8080"\n[tls]\nacme = true\n'

    def test_defaults(self) -> None:
        """Off by default; the directory defaults to Let's Encrypt's production one."""
        tls = parse_config({}, None).tls
        self.assertEqual(
            (tls.acme, tls.acme_contact, tls.acme_directory, tls.acme_ca),
            (False, "", "https://acme-v02.api.letsencrypt.org/directory", None),
        )

    def test_keys(self) -> None:
        """acme_ca resolves against the config file's directory like every path."""
        path = self.write(
            self.ACME + 'acme_contact = "hostmaster@example.org"\n'
            'acme_directory = "https://127.0.0.1:14000/dir"\nacme_ca = "pebble.pem"\n'
        )
        tls = load_config(path).tls
        self.assertEqual(
            (tls.acme, tls.acme_contact, tls.acme_directory, tls.acme_ca, tls.cert),
            (
                True,
                "hostmaster@example.org",
                "https://127.0.0.1:14000/dir",
                path.parent.resolve() / "pebble.pem",
                None,
            ),
        )

    def test_errors(self) -> None:
        """Each mistake is one line naming the key."""
        contact = 'acme_contact = "hostmaster@example.org"\n'
        self.assertEqual(
            self.error(self.ACME),
            "FILE: [tls] acme_contact: an email address is required with acme = true",
        )
        self.assertEqual(
            self.error('[tls]\nacme = "yes"\n'), "FILE: [tls] acme: must be true or false"
        )
        self.assertEqual(
            self.error("[tls]\nacme = true\n" + contact),
            "FILE: [tls] acme: needs [listen] http: HTTP-01 challenges are answered there",
        )
        self.assertEqual(
            self.error(self.ACME + contact + 'cert = "c.pem"\nkey = "k.pem"\n'),
            "FILE: [tls] acme: cert and key are obtained by ACME: leave them unset",
        )
        self.assertEqual(
            self.error(self.ACME + contact + 'acme_directory = "http://ca.example/dir"\n'),
            "FILE: [tls] acme_directory: must be an https:// URL (RFC 8555 §6.1)",
        )


class MetricsConfigTests(ConfigFileTestCase):
    """Issue 13: C{[listen] metrics} (off by default) and C{[metrics] token_file}."""

    def test_listener_and_token(self) -> None:
        """The listener is parsed like the others and checked against them; the token is
        the file's first line."""
        self.assertEqual(parse_config({}, None).metrics, MetricsConfig())
        secret = self.secret_file("tok-123\nignored\n", 0o600)
        config = load_config(
            self.write(
                f'[listen]\nmetrics = "127.0.0.1:9154"\n[metrics]\ntoken_file = "{secret}"\n'
            )
        )
        self.assertEqual(config.listen["metrics"], (ListenAddress("127.0.0.1", 9154),))
        self.assertEqual(metrics_token(config), "tok-123")
        self.assertIsNone(metrics_token(parse_config({}, None)))
        self.assertEqual(
            self.error('[listen]\nsmtp = "127.0.0.1:25"\nmetrics = "127.0.0.1:25"\n'),
            "FILE: [listen] metrics: 127.0.0.1:25 is also used by smtp",
        )
        self.assertEqual(self.error("[metrics]\ntoken = 1\n"), "FILE: [metrics] token: unknown key")

    def test_token_file_must_be_owner_only(self) -> None:
        """A token file group or others can read is refused with one line (like the
        smarthost password); so is an empty one."""
        secret = self.secret_file("tok\n", 0o640)
        path = self.write(f'[metrics]\ntoken_file = "{secret}"\n')
        with self.assertRaises(ConfigError) as cm:
            metrics_token(load_config(path))
        self.assertEqual(
            str(cm.exception).replace(str(path), "FILE").replace(str(secret), "SECRET"),
            "FILE: [metrics] token_file: SECRET is readable by others (mode 640); chmod 600 it",
        )
        secret.chmod(0o600)
        secret.write_text("\n")
        with self.assertRaises(ConfigError) as cm:
            metrics_token(load_config(path))
        self.assertEqual(
            str(cm.exception).replace(str(path), "FILE").replace(str(secret), "SECRET"),
            "FILE: [metrics] token_file: SECRET is empty",
        )


class AuthConfigTests(ConfigFileTestCase):
    """C{[auth]} (issue 10): the login cache and the bound on hashes at once."""

    def test_defaults(self) -> None:
        """By default logins are cached 5 minutes, 10,000 at most, one hash per CPU."""
        self.assertEqual(parse_config({}, None).auth, AuthConfig(300, 10_000, 0))

    def test_values(self) -> None:
        """A duration, a size and a count are read; "0" turns the cache off."""
        config = load_config(
            self.write('[auth]\ncache_ttl = "1h"\ncache_size = 5\nmax_parallel_hashes = 3\n')
        )
        self.assertEqual(config.auth, AuthConfig(3600, 5, 3))
        self.assertEqual(load_config(self.write('[auth]\ncache_ttl = "0"\n')).auth.cache_ttl, 0)
        self.assertEqual(load_config(self.write("[auth]\ncache_ttl = 0\n")).auth.cache_ttl, 0)

    def test_errors(self) -> None:
        """Bad values name the key."""
        self.assertEqual(
            self.error('[auth]\ncache_ttl = "soon"\n'),
            'FILE: [auth] cache_ttl: must be a positive duration such as "30s", "5m", "1h" or'
            ' "5d", or "0" for no cache',
        )
        self.assertEqual(
            self.error("[auth]\nmax_parallel_hashes = -1\n"),
            "FILE: [auth] max_parallel_hashes: must be 0 (the number of CPUs) to 1024",
        )
        self.assertEqual(
            self.error("[auth]\ncache_size = 0\n"),
            "FILE: [auth] cache_size: must be a positive integer",
        )
        self.assertEqual(self.error("[auth]\nttl = 1\n"), "FILE: [auth] ttl: unknown key")


class UserGroupsTests(TestCase):
    def test_named_user(self) -> None:
        """A user with a name: its name and its groups (getgrouplist) with the gid given."""
        me = pwd.getpwuid(os.getuid())
        name, gids = config_module.user_groups(me.pw_uid, me.pw_gid)
        self.assertEqual((name, gids), (me.pw_name, set(os.getgrouplist(me.pw_name, me.pw_gid))))
        self.assertEqual(config_module.user_name(me.pw_uid), me.pw_name)

    def test_unnamed_uid(self) -> None:
        """A uid the password database does not know: the number as text, the gid alone."""
        uid = next(u for u in range(54321, 60000) if u not in {p.pw_uid for p in pwd.getpwall()})
        self.assertIsNone(config_module.user_name(uid))
        self.assertEqual(config_module.user_groups(uid, 4321), (str(uid), {4321}))
