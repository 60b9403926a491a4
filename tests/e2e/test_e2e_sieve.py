"""Sieve at delivery end to end: scripts placed with twistedmail.sieve.store in the users'
homes (Pigeonhole's layout), mail sent over SMTP port 25 to the real server: list mail filed
with its flags, the boss flagged, one vacation reply per sender through the outbound queue
(routed to a closed port, so it waits in the spool), none for list mail, a broken script
keeps mail in INBOX."""

from __future__ import annotations

import os
import pwd
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import Server, free_ports
from test_e2e_outbound import World
from test_e2e_ownership import as_nobody, not_owned_by

from twistedmail.sieve.store import SieveStore

ALICE = "alice@example.test"
BOB = "bob@example.test"
SCRIPT = b"""require ["fileinto", "imap4flags", "vacation", "mailbox"];
if header :contains "list-id" "dev.lists.example" {
    fileinto :create :flags ["\\\\Seen", "$list"] "Lists.dev";
    stop;
}
if address :is "from" "boss@corp.example" {
    addflag "\\\\Flagged";
}
vacation :days 3 :subject "Away until Monday" "I am away.";
"""


def message(sender: str, to: str, subject: str, extra: str = "") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <{subject.replace(' ', '.')}@e2e>\r\n\r\nbody\r\n"
    ).encode()


@pytest.fixture
def sieve_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    (closed,) = free_ports(1)
    with srv.config.open("a") as f:
        # Replies to corp.example wait in the queue: the route points at a closed port.
        f.write(f'\n[relay.routes]\n"corp.example" = "127.0.0.1:{closed}"\n')
    srv.add_user(ALICE, "alice-password")
    srv.add_user(BOB, "bob-password")
    alice = SieveStore(srv.maildir(ALICE))
    alice.put("main", SCRIPT)
    alice.activate("main")
    bob = SieveStore(srv.maildir(BOB))
    bob.put("broken", b'require "fileinto";\nfileinto "A"\nkeep;\n')
    bob.activate("broken")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def send(srv: Server, sender: str, to: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail(sender, [to], data)


def test_list_mail_filed_with_flags_and_not_answered(sieve_server: Server) -> None:
    """RFC 5228 §4.1, RFC 5490 :create, RFC 5232 :flags: the list message lands in the
    folder with \\Seen and $list (':2,Sa' on disk); RFC 5230 §4.5: no reply to a list."""
    srv = sieve_server
    send(
        srv,
        "list@lists.example",
        ALICE,
        message(
            "list@lists.example", "dev@lists.example", "release", "List-Id: <dev.lists.example>\r\n"
        ),
    )
    (path,) = srv.wait_for_messages(ALICE, 1, folder="Lists.dev")
    assert path.parent.name == "cur"
    assert path.name.endswith(":2,Sa")
    assert (srv.maildir(ALICE, "Lists.dev") / "dovecot-keywords").read_text() == "0 $list\n"
    assert srv.messages(ALICE) == []
    assert srv.cli("queue", "list").stdout == ""


def test_boss_flagged_and_vacation_once_per_sender(sieve_server: Server) -> None:
    """RFC 5232 addflag: the boss's mail is \\Flagged (':2,F'); RFC 5230 §4.2: exactly one
    vacation reply per sender within :days (also after a restart), from <> via the queue."""
    srv = sieve_server
    for subject in ("first", "second"):
        send(srv, "boss@corp.example", ALICE, message("boss@corp.example", ALICE, subject))
    paths = srv.wait_for_messages(ALICE, 2)
    assert [p.name.endswith(":2,F") for p in paths] == [True, True]
    assert all(
        p.read_bytes().startswith(
            b"Return-Path: <boss@corp.example>\r\nDelivered-To: alice@example.test\r\n"
        )
        for p in paths
    )
    lines = srv.cli("queue", "list").stdout.splitlines()
    assert len(lines) == 1, lines
    assert " from=<> to=boss@corp.example " in lines[0]
    queue_id = lines[0].split()[0]
    shown = srv.cli("queue", "show", queue_id).stdout
    assert "Subject: Away until Monday" in shown
    assert "Auto-Submitted: auto-replied" in shown
    assert "In-Reply-To: <first@e2e>" in shown
    # Remembered across a restart: no second reply to the boss.
    srv.restart()
    send(srv, "boss@corp.example", ALICE, message("boss@corp.example", ALICE, "after restart"))
    assert len(srv.wait_for_messages(ALICE, 3)) == 3
    assert len(srv.cli("queue", "list").stdout.splitlines()) == 1
    # Another sender gets their own reply.
    send(srv, "peer@corp.example", ALICE, message("peer@corp.example", ALICE, "third"))
    lines = srv.cli("queue", "list").stdout.splitlines()
    assert sorted(line.split(" to=")[1].split()[0] for line in lines) == [
        "boss@corp.example",
        "peer@corp.example",
    ]


def test_broken_script_keeps_mail_in_inbox(sieve_server: Server) -> None:
    """A script that does not compile never loses mail: INBOX, and the error in the log."""
    srv = sieve_server
    send(srv, "someone@corp.example", BOB, message("someone@corp.example", BOB, "hello"))
    (path,) = srv.wait_for_messages(BOB, 1)
    assert path.parent.name == "new"
    log = srv.log.read_text()
    assert "sieve: user=bob@example.test" in log
    assert "line 2: command 'fileinto' takes no test" in log


FILED = b"""require ["fileinto", "mailbox"];
if header :contains "subject" "report" { fileinto :create "Reports"; }
"""


def test_cli_scripts_used_by_the_running_server(sieve_server: Server) -> None:
    """Issue 12: what C{twistedmail sieve put --activate} and C{twistedmail vacation} write
    while the server runs decides the very next delivery; C{vacation --off} brings the
    user's own script back and no more replies leave."""
    srv = sieve_server
    bad = srv.cli("sieve", "put", BOB, "fixed", "-", stdin='fileinto "x";', check=False)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == (
        "twistedmail: error: script 'fixed' not stored: line 1: command 'fileinto' requires"
        " extension 'fileinto' (missing require)\n"
    )
    put = srv.cli("sieve", "put", BOB, "fixed", "-", "--activate", stdin=FILED.decode())
    assert put.stdout == f"stored and activated script fixed of {BOB}\n"
    send(srv, "someone@corp.example", BOB, message("someone@corp.example", BOB, "report 1"))
    (path,) = srv.wait_for_messages(BOB, 1, folder="Reports")
    assert path.read_bytes().endswith(b"\r\n\r\nbody\r\n")

    refused = srv.cli("vacation", BOB, "--subject", "Away", "--message-file", "-", check=False)
    assert refused.returncode == 1 and "'fixed' is active" in refused.stderr
    on = srv.cli(
        "vacation", BOB, "--subject", "Away", "--message-file", "-", "--replace", stdin="Gone.\n"
    )
    assert on.returncode == 0
    send(srv, "someone@corp.example", BOB, message("someone@corp.example", BOB, "report 2"))
    assert len(srv.wait_for_messages(BOB, 1)) == 1  # the vacation script keeps in INBOX
    lines = srv.cli("queue", "list").stdout.splitlines()
    assert len(lines) == 1 and " from=<> to=someone@corp.example " in lines[0], lines
    assert "Subject: Away" in srv.cli("queue", "show", lines[0].split()[0]).stdout

    off = srv.cli("vacation", BOB, "--off")
    assert off.stdout == f"vacation reply of {BOB} off; script fixed is active again\n"
    send(srv, "other@corp.example", BOB, message("other@corp.example", BOB, "report 3"))
    assert len(srv.wait_for_messages(BOB, 2, folder="Reports")) == 2
    assert len(srv.cli("queue", "list").stdout.splitlines()) == 1
    assert srv.cli("sieve", "list", BOB).stdout == "broken\nfixed (active)\n"


def test_reject_refused_in_the_smtp_transaction(sieve_server: Server) -> None:
    """RFC 5429 §2.1.1: a Sieve reject of the message's one recipient is the reply to DATA,
    550 5.7.1 with the script's reason; nothing stored, no notice queued.  With a second
    recipient the message is accepted and the sender gets the rejection notice (§2.1)."""
    srv = sieve_server
    srv.cli(
        "sieve",
        "put",
        BOB,
        "no",
        "-",
        "--activate",
        stdin='require "reject";\nreject "Not here.";\n',
    )
    data = message("someone@corp.example", BOB, "hello")
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail("someone@corp.example")[0] == 250
        assert smtp.rcpt(BOB)[0] == 250
        assert smtp.data(data) == (550, b"5.7.1 Not here.")
    assert srv.messages(BOB) == []
    assert srv.cli("queue", "list").stdout == ""
    # Two recipients: one reply for both, so accepted; the refusal goes out as a notice.
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as smtp:
        assert smtp.sendmail("someone@corp.example", [BOB, ALICE], data) == {}
    lines = srv.cli("queue", "list").stdout.splitlines()
    assert any(" from=<> to=someone@corp.example " in line for line in lines), lines
    assert srv.messages(BOB) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (twistd -u, chown)")
def test_root_cli_scripts_belong_to_the_server_user(as_nobody: tuple[World, Server]) -> None:
    """Run as root against a server running as nobody (issue 9), sieve put and vacation
    leave every file to nobody (scripts 0600 in a 0700 sieve/), and the server reads them."""
    _, srv = as_nobody
    alice = "alice@example.test"
    srv.cli("sieve", "put", alice, "main", "-", "--activate", stdin=FILED.decode())
    srv.cli(
        "vacation", "bob@example.test", "--subject", "Away", "--message-file", "-", stdin="Gone.\n"
    )
    nobody = pwd.getpwnam("nobody")
    assert not_owned_by(srv.data_dir, nobody.pw_uid, nobody.pw_gid) == []
    scripts = srv.maildir(alice) / "sieve"
    assert scripts.stat().st_mode & 0o777 == 0o700
    assert (scripts / "main.sieve").stat().st_mode & 0o777 == 0o600
    send(srv, "someone@corp.example", alice, message("someone@corp.example", alice, "report"))
    assert len(srv.wait_for_messages(alice, 1, folder="Reports")) == 1


_ = as_nobody  # a fixture, used by name
