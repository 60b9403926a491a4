"""Thunderbird itself against the real server: sync over 143+STARTTLS and 993, send through 465.

Uses the Thunderbird driver ``tests/e2e/tools/tb_imap_sync.py`` (a byte-identical copy of
the team's tool, kept in the repository so CI has it).  Skips only when Thunderbird is not
installed.
"""

from __future__ import annotations

import json
import os
import shutil
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, free_ports, make_test_ca

HERE = Path(__file__).parent
SHARED = HERE.parents[2] / "shared" / "tools" / "thunderbird" / "tb_imap_sync.py"
DRIVER = Path(
    os.environ.get(
        "TB_IMAP_SYNC", SHARED if SHARED.exists() else HERE / "tools" / "tb_imap_sync.py"
    )
)
ALICE, BOB = "alice@example.test", "bob@example.test"

pytestmark = pytest.mark.skipif(
    shutil.which("thunderbird") is None,
    reason="Thunderbird is not installed (apt-get install thunderbird); .ci/run installs it",
)


def _seed(server: Server, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for i in range(count):
            body = b"".join(b"line %d of message %d\r\n" % (n, i) for n in range(200))
            s.sendmail(
                "news@elsewhere.test",
                [ALICE],
                b"From: News <news@elsewhere.test>\r\nTo: alice@example.test\r\n"
                b"Subject: seeded %d\r\nMessage-ID: <seed-%d@elsewhere.test>\r\n\r\n"
                % (i, i)
                + body,
            )


def _run(server: Server, tmp_path: Path, port_name: str, security: str, *extra: str) -> dict:
    workdir = tmp_path / f"tb-{port_name}"
    sink, marionette = free_ports(2)
    cmd = [
        sys.executable,
        str(DRIVER),
        "127.0.0.1",
        str(server.ports[port_name]),
        ALICE,
        PASSWORDS[ALICE],
        security,
        str(workdir),
        "--timeout",
        "90",
        "--sink-port",
        str(sink),
        "--marionette-port",
        str(marionette),
        *extra,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(
            f"driver printed no JSON: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ) from e
    return summary


def test_thunderbird_syncs_over_starttls(server: Server, tmp_path: Path) -> None:
    """Thunderbird logs in over STARTTLS on 143 and syncs every header and body with no IMAP
    error reply."""
    _seed(server, 5)
    summary = _run(server, tmp_path, "imap", "starttls")
    assert summary["login_ok"], summary.get("login_failures")
    assert summary["inbox_headers_synced"] == 5, summary
    assert summary["messages_bodies_downloaded"].get("INBOX", 0) == 5, summary
    assert not summary["imap_error_replies"], summary["imap_error_replies"]


def _sync_and_send(server: Server, tmp_path: Path, ca: Path, *extra: str) -> dict:
    """Sync over 993 and send one message to Bob through 465, trusting the test CA."""
    return _run(
        server,
        tmp_path,
        "imaps",
        "tls",
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        str(server.ports["submissions"]),
        "--smtp-security",
        "tls",
        "--send-to",
        BOB,
        "--ca-file",
        str(ca),
        *extra,
    )


@pytest.fixture
def ca_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    """A server with a configured certificate from a test CA that Thunderbird trusts
    (the driver's certificate override covers the IMAP port only, not SMTP)."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca, cert, key = make_test_ca(tls_dir)
    srv = Server(tmp_path / "srv", tls=(cert, key))
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    srv.start()
    try:
        yield srv, ca
    finally:
        srv.stop()


def test_thunderbird_syncs_over_tls_and_sends_through_465(
    ca_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """Thunderbird syncs over 993 with a CA-signed certificate and sends through 465."""
    server, ca = ca_server
    _seed(server, 3)
    summary = _sync_and_send(server, tmp_path, ca)
    assert summary["login_ok"], summary.get("login_failures")
    assert summary["inbox_headers_synced"] == 3, summary
    assert summary["smtp"]["sent_ok"], summary["smtp"]
    assert summary["ok"], summary
    received = server.wait_for_messages(BOB, 1)
    assert len(received) == 1
    data = received[0].read_bytes()
    assert data.startswith(b"Return-Path: <alice@example.test>\r\nDelivered-To: ")
    assert b"with ESMTPSA" in data


def test_thunderbird_exercise_with_extensions(
    ca_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """Thunderbird with LIST-EXTENDED, SPECIAL-USE, UIDPLUS, MOVE, LITERAL+, COMPRESS=DEFLATE
    and UTF8=ACCEPT advertised: mark read/unread, flag, create a folder, copy, delete (UID
    MOVE to Trash), send (APPEND to Sent); then the Maildir is what a person expects."""
    server, ca = ca_server
    _seed(server, 3)
    summary = _sync_and_send(server, tmp_path, ca, "--exercise")
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))
    assert summary["login_ok"], summary.get("login_failures")
    assert summary["ok"], summary
    assert not summary["imap_error_replies"], summary["imap_error_replies"]
    exercise = summary["exercise"]
    assert all("error" not in step for step in exercise["log"]), exercise
    seq = summary["imap_command_sequence"]
    commands = [c.split(" ", 1)[1].lower() for c in seq if " " in c]
    # Thunderbird used the extensions: extended LIST, UID MOVE, COMPRESS, UTF8=ACCEPT,
    # LITERAL+ APPEND
    assert 'list (subscribed) "" "*" return (special-use)' in commands, seq
    assert 'uid move 3 "trash"' in commands, seq
    assert "compress deflate" in commands, seq  # RFC 4978, Thunderbird's default
    assert "enable utf8=accept" in commands, seq  # RFC 6855, then APPEND UTF8 (~{n+}
    assert any(
        c.startswith('append "sent" (\\seen) utf8 (~{') and c.endswith("+}") for c in commands
    ), seq
    assert not any("\\deleted" in c or c == "expunge" for c in commands), seq

    def flags(path: Path) -> str:
        return path.name.rpartition(":2,")[2]

    def subject(path: Path) -> bytes:
        data = path.read_bytes()
        return data.split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0]

    # INBOX: the oldest flagged, the newest (read, then unread) moved to Trash
    inbox = {subject(p): flags(p) for p in server.messages(ALICE)}
    assert inbox == {b"seeded 0": "F", b"seeded 1": ""}
    (trashed,) = server.messages(ALICE, "Trash")
    assert (subject(trashed), flags(trashed)) == (b"seeded 2", "")
    # the new folder, with the copy of the oldest (flags kept)
    (copied,) = server.messages(ALICE, exercise["folder"])
    assert (subject(copied), flags(copied)) == (b"seeded 0", "F")
    assert (server.maildir(ALICE, exercise["folder"]) / "maildirfolder").exists()
    # the sent copy in Sent, \Seen; the message itself reached Bob
    (sent,) = server.messages(ALICE, "Sent")
    assert flags(sent) == "S"
    (received,) = server.wait_for_messages(BOB, 1)
    # the UTF8 (~{n}) wrapper is not part of the stored copy (RFC 6855 §4)
    assert not sent.read_bytes().startswith(b"UTF8") and not sent.read_bytes().endswith(b")")
    assert subject(sent) == subject(received)
    # APPENDUID and COPYUID (MOVE) told Thunderbird the new UIDs: it fetched nothing from
    # Sent or Trash, and nothing after the APPEND on that connection
    for folder in ("Sent", "Trash"):
        assert folder not in summary["messages_headers_synced"], summary
        assert folder not in summary["messages_bodies_downloaded"], summary
    for connection in summary["imap_commands_by_connection"]:
        lowered = [c.lower() for c in connection]
        for i, command in enumerate(lowered):
            if ' append "sent"' in command:
                assert not any(" fetch " in c and "flags)" not in c for c in lowered[i:]), lowered
