"""The first gates on port 25 end to end (issue 14): a DNS blocklist served by a local
twisted.names server (remote_world.py) as the server's C{[relay] nameservers}, and the
pregreet test (C{[antispam] greet_pause}) with a raw socket."""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, free_ports
from test_e2e_outbound import World

ALICE = "alice@example.test"
FILTER = Path(__file__).parents[2] / "etc" / "fail2ban" / "filter.d" / "twistedmail-smtp.conf"


def fail2ban_matches(log: Path) -> int | None:
    """How many lines of C{log} the shipped filter matches (fail2ban-regex), C{None} when
    fail2ban is not installed."""
    if shutil.which("fail2ban-regex") is None:
        return None
    out = subprocess.run(
        ["fail2ban-regex", str(log), str(FILTER)], capture_output=True, text=True, timeout=60
    ).stdout
    m = re.search(r"Failregex: (\d+) total", out)
    assert m is not None, out
    return int(m.group(1))


MESSAGE = b"From: x@elsewhere.test\r\nTo: alice@example.test\r\nSubject: gate\r\n\r\nhi\r\n"


@pytest.fixture(scope="module")
def listed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose DNSBL bl.test lists 127.0.0.1 (the test client) and whose second
    list down.test has no server (every query fails)."""
    root = tmp_path_factory.mktemp("dnsbl")
    zones = [{"origin": "bl.test", "a": {"1.0.0.127.bl.test": ["127.0.0.2"]}}]
    world = World(root, [], zones)
    server = Server(root / "server")
    try:
        for address, password in PASSWORDS.items():
            server.add_user(address, password)
        server.config.write_text(
            server.config.read_text()
            + f'\n[relay]\nnameservers = ["127.0.0.1:{world.dns_port}"]\n'
            + '\n[antispam]\ndnsbl = ["down.test", "bl.test"]\n'
        )
        server.start()
        yield server
    finally:
        server.stop()
        world.stop()


def test_listed_client_refused_at_rcpt(listed_server: Server) -> None:
    """A client on a DNSBL gets 554 5.7.1 naming the list at RCPT, logged; nothing stored."""
    with smtplib.SMTP("127.0.0.1", listed_server.ports["smtp"]) as s:
        s.ehlo("client.test")
        s.mail("x@elsewhere.test")
        assert s.rcpt(ALICE) == (
            554,
            b"5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test",
        )
    assert listed_server.messages(ALICE) == []
    assert "client [127.0.0.1] blocked using bl.test" in listed_server.log.read_text()
    assert fail2ban_matches(listed_server.log) in (None, 1)


def test_listed_client_may_still_write_to_postmaster(listed_server: Server) -> None:
    """RFC 5321 §4.5.1: mail to postmaster is accepted from a listed client too."""
    with smtplib.SMTP("127.0.0.1", listed_server.ports["smtp"]) as s:
        s.ehlo("client.test")
        s.mail("x@elsewhere.test")
        assert s.rcpt("postmaster@example.test")[0] == 250
        assert s.data(MESSAGE)[0] == 250


def test_dns_failure_never_refuses(tmp_path: Path) -> None:
    """A blocklist whose DNS does not answer: the mail is accepted."""
    (closed,) = free_ports(1)
    server = Server(tmp_path)
    server.add_user(ALICE, PASSWORDS[ALICE])
    server.config.write_text(
        server.config.read_text()
        + f'\n[relay]\nnameservers = ["127.0.0.1:{closed}"]\n'
        + '\n[antispam]\ndnsbl = ["bl.test"]\n'
    )
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
            s.sendmail("x@elsewhere.test", [ALICE], MESSAGE)
        assert len(server.wait_for_messages(ALICE, 1)) == 1
    finally:
        server.stop()


@pytest.fixture
def pausing_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path)
    server.add_user(ALICE, PASSWORDS[ALICE])
    server.config.write_text(server.config.read_text() + '\n[antispam]\ngreet_pause = "3s"\n')
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_pregreet_client_refused(pausing_server: Server) -> None:
    """A client that talks before the 220 gets 554 5.5.1 and is disconnected; the log line
    names its IP (for fail2ban)."""
    with socket.create_connection(("127.0.0.1", pausing_server.ports["smtp"]), timeout=30) as c:
        c.sendall(b"EHLO spambot.test\r\n")
        received = b""
        while chunk := c.recv(4096):
            received += chunk
    assert received == b"554 5.5.1 Protocol error: talked before greeting\r\n"
    log = pausing_server.log.read_text()
    assert "client [127.0.0.1] talked before greeting (pregreet)" in log
    assert pausing_server.messages(ALICE) == []
    assert fail2ban_matches(pausing_server.log) in (None, 1)


def test_patient_client_served(pausing_server: Server) -> None:
    """A client that waits for the greeting gets 220 and delivers as usual."""
    with smtplib.SMTP("127.0.0.1", pausing_server.ports["smtp"], timeout=30) as s:
        s.sendmail("x@elsewhere.test", [ALICE], MESSAGE)
    assert len(pausing_server.wait_for_messages(ALICE, 1)) == 1


def test_messages_per_ip_and_hour(tmp_path: Path) -> None:
    """[antispam] smtp_messages_per_ip_hour = 2: the third MAIL from the same IP in the hour
    gets 451 4.7.1, logged with the IP (fail2ban)."""
    server = Server(tmp_path)
    server.add_user(ALICE, PASSWORDS[ALICE])
    server.config.write_text(
        server.config.read_text() + "\n[antispam]\nsmtp_messages_per_ip_hour = 2\n"
    )
    server.start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
            s.sendmail("x@elsewhere.test", [ALICE], MESSAGE)
            s.sendmail("x@elsewhere.test", [ALICE], MESSAGE)
            assert s.mail("x@elsewhere.test") == (
                451,
                b"4.7.1 Too many messages from your address, try again later",
            )
        assert len(server.wait_for_messages(ALICE, 2)) == 2
        assert "client [127.0.0.1] over 2 messages per hour" in server.log.read_text()
        assert fail2ban_matches(server.log) in (None, 1)
    finally:
        server.stop()
