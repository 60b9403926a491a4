"""The shipped deployment files: the systemd unit and the fail2ban jail and filter agree
(the server logs to the journal, fail2ban reads the journal), and the real tools accept them
(C{systemd-analyze verify}, C{fail2ban-client -t}); each test skips, saying why, when its
tool is not installed (Debian packages systemd and fail2ban)."""

from __future__ import annotations

import configparser
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import cast

from twisted.logger import FileLogObserver, ILogObserver, textFileLogObserver
from twisted.trial.unittest import SkipTest, TestCase

from twistedmail import auth
from twistedmail.tap import json_line

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "etc" / "twistedmail.service"
JAIL = ROOT / "etc" / "fail2ban" / "jail.d" / "twistedmail.conf"
FILTER = ROOT / "etc" / "fail2ban" / "filter.d" / "twistedmail.conf"
# Where the unit expects the virtualenv (README "Running it for real").
INSTALLED_TWISTD = "/opt/twistedmail/.venv/bin/twistd"
SYSTEM_FAIL2BAN = Path("/etc/fail2ban")

# Runs under the system python3 (where Debian's fail2ban lives, not in our virtualenv):
# loads the shipped filter as fail2ban does and feeds it lines as fail2ban's systemd
# backend builds them from journal entries (fail2ban/server/filtersystemd.py,
# formatJournalEntry: "HOSTNAME IDENTIFIER[PID]: MESSAGE", the date from the journal).
_JOURNAL_PROBE = """
import json, sys, time
from fail2ban.client.filterreader import FilterReader
from fail2ban.server.filter import Filter

class Jail:
    name = "twistedmail"
    def putFailTicket(self, ticket):
        pass

reader = FilterReader("twistedmail", "twistedmail", {}, basedir=sys.argv[1])
assert reader.read()
reader.getOptions({})
probe = Filter(Jail())
probe.checkFindTime = False
for command in reader.convert():
    if command[2] == "addfailregex":  # one regex, or a list of them
        for regex in command[3] if isinstance(command[3], list) else [command[3]]:
            probe.addFailRegex(regex)
hosts = []
for message in json.load(sys.stdin):
    line = "mail.example.org twistedmail[4242]: " + message
    for failure in probe.processLine(("", "2026-12-06 12:00:00 ", line), time.time()):
        hosts.append(str(failure[1]))
print(json.dumps(hosts))
"""


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    return unit


def _jail() -> configparser.SectionProxy:
    jail = configparser.ConfigParser(interpolation=None)
    jail.read(JAIL)
    return jail["twistedmail"]


def _twistd_lines(json_format: bool = False) -> list[str]:
    """Log lines as twistd writes them to its stdout (the journal): three failed logins, a
    successful one, and a user name that tries to plant a second "ip=" (auth.log_login);
    with C{json_format}, as C{[log] format = "json"} writes them (tap.json_line)."""
    out = io.StringIO()
    old = auth.log.observer
    auth.log.observer = cast(
        ILogObserver,
        FileLogObserver(out, json_line) if json_format else textFileLogObserver(out),
    )
    try:
        auth.log_login("imap", "alice@example.org", "192.0.2.7", ok=False)
        auth.log_login("smtp", b"bob@example.org", "2001:db8::5", ok=False)
        auth.log_login("pop3", "x ip=203.0.113.9", "198.51.100.3", ok=False)
        auth.log_login("imap", "alice@example.org", "192.0.2.8", ok=True)
    finally:
        auth.log.observer = old
    return out.getvalue().splitlines()


class AgreementTests(TestCase):
    def test_unit_logs_to_the_journal_the_jail_reads(self) -> None:
        """The unit sends twistd's log to the journal (no --logfile, stdout to journal) and
        the jail reads that unit's journal entries (backend systemd, journalmatch)."""
        service = _unit()["Service"]
        self.assertNotIn("--logfile", service["ExecStart"])
        self.assertIn("--nodaemon", service["ExecStart"].split())
        self.assertEqual(service.get("StandardOutput", "journal"), "journal")
        self.assertEqual(service["SyslogIdentifier"], "twistedmail")
        jail = _jail()
        self.assertEqual(jail["backend"], "systemd")
        self.assertEqual(jail["journalmatch"], f"_SYSTEMD_UNIT={UNIT.name}")
        self.assertNotIn("logpath", jail)
        self.assertEqual(jail["filter"], FILTER.stem)


class SystemdTests(TestCase):
    def test_unit_verifies(self) -> None:
        """systemd-analyze verify accepts the unit, with its ExecStart binary present."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze not installed (Debian package systemd)")
        text = UNIT.read_text()
        self.assertIn(f"ExecStart={INSTALLED_TWISTD} ", text)
        # The unit names the documented install path; verify it with this virtualenv's
        # twistd there instead (verify checks that the binary is executable).
        here = Path(self.mktemp()).resolve()
        here.mkdir()
        unit = here / UNIT.name
        unit.write_text(text.replace(INSTALLED_TWISTD, str(Path(sys.executable).parent / "twistd")))
        result = subprocess.run(
            [analyze, "verify", "--man=no", "--generators=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""), result.stdout)


class Fail2banTests(TestCase):
    def config_dir(self) -> Path:
        """A copy of the system's fail2ban configuration with only our jail and filter."""
        if shutil.which("fail2ban-client") is None or not SYSTEM_FAIL2BAN.is_dir():
            raise SkipTest("fail2ban not installed (Debian package fail2ban)")
        conf = Path(self.mktemp()).resolve()
        shutil.copytree(SYSTEM_FAIL2BAN, conf, symlinks=True)
        for enabled in (conf / "jail.d").iterdir():  # e.g. Debian's sshd jail, not ours
            enabled.unlink()
        shutil.copy(JAIL, conf / "jail.d" / JAIL.name)
        shutil.copy(FILTER, conf / "filter.d" / FILTER.name)
        return conf

    def test_client_accepts_the_shipped_jail_and_filter(self) -> None:
        """fail2ban-client -t passes with the shipped jail and filter (a jail whose log file
        does not exist made fail2ban refuse to start at all)."""
        conf = self.config_dir()
        result = subprocess.run(
            ["fail2ban-client", "-c", str(conf), "-t"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("OK: configuration test is successful", result.stdout)

    def test_filter_matches_journal_entries(self) -> None:
        """The filter finds the client IP of every failed login in the journal entries
        fail2ban's systemd backend reads, and never an IP planted in a user name."""
        conf = self.config_dir()
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None or subprocess.run([python, "-c", "import fail2ban"]).returncode:
            raise SkipTest("fail2ban's Python package is not importable by /usr/bin/python3")
        result = subprocess.run(
            [python, "-c", _JOURNAL_PROBE, str(conf)],
            input=json.dumps(_twistd_lines()),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), ["192.0.2.7", "2001:db8::5", "198.51.100.3"])

    def test_filter_matches_json_journal_entries(self) -> None:
        """With [log] format = "json" the same filter finds the same IPs, and still never one
        planted in a user name."""
        conf = self.config_dir()
        python = shutil.which("python3", path="/usr/bin:/bin")
        if python is None or subprocess.run([python, "-c", "import fail2ban"]).returncode:
            raise SkipTest("fail2ban's Python package is not importable by /usr/bin/python3")
        lines = _twistd_lines(json_format=True)
        self.assertTrue(all(line.startswith('{"time": ') for line in lines), lines)
        result = subprocess.run(
            [python, "-c", _JOURNAL_PROBE, str(conf)],
            input=json.dumps(lines),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), ["192.0.2.7", "2001:db8::5", "198.51.100.3"])
