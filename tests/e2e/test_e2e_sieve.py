"""Sieve at delivery end to end: scripts placed with twistedmail.sieve.store in the users'
homes (Pigeonhole's layout), mail sent over SMTP port 25 to the real server: list mail filed
with its flags, the boss flagged, one vacation reply per sender through the outbound queue
(routed to a closed port, so it waits in the spool), none for list mail, a broken script
keeps mail in INBOX."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import Server, free_ports

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
