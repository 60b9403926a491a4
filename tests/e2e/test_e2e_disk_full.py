"""A full disk, end to end on a 2 MiB tmpfs: SMTP refuses new mail below the free-space
reserve with 452 4.3.1 (RFC 3463 §3.4; Postfix's queue_minfree), while IMAP and POP3 keep
reading and deleting, and APPEND says NO [OVERQUOTA] (RFC 5530 §3) leaving nothing behind."""

from __future__ import annotations

import errno
import imaplib
import os
import poplib
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, deliver

ALICE = "alice@example.test"


def fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def files(server: Server) -> list[str]:
    root = server.maildir(ALICE)
    return sorted(p.name for sub in ("cur", "new", "tmp") for p in (root / sub).iterdir())


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    srv = Server(tmp_path)
    text = srv.config.read_text()
    srv.config.write_text(
        text.replace(
            'max_message_size = "1MiB"\n', 'max_message_size = "64KiB"\nmin_free_space = "256KiB"\n'
        )
    )
    srv.data_dir.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(srv.data_dir)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.strip()}")
    try:
        srv.add_user(ALICE, PASSWORDS[ALICE])
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()
    finally:
        subprocess.run(["umount", str(srv.data_dir)], check=True)


def test_full_disk_keeps_reading_and_deleting(small_server: Server) -> None:
    """On a full disk: 452 4.3.1 for SMTP, IMAP SELECT/FETCH/STORE/EXPUNGE and POP3
    STAT/RETR/DELE/QUIT work, APPEND is NO [OVERQUOTA] with nothing written; with room
    again, everything is back, the message that arrived before without a UID included."""
    srv = small_server
    first = deliver(srv, ALICE, "one")
    deliver(srv, ALICE, "two")
    deliver(srv, ALICE, "three")
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
    c.login(ALICE, PASSWORDS[ALICE])
    assert c.select("INBOX") == ("OK", [b"3"])  # UIDs 1-3 saved
    c.logout()
    late = deliver(srv, ALICE, "four")  # in new/, no UID yet
    filler = fill(srv.data_dir)

    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as s:
        s.ehlo()
        assert s.mail("x@elsewhere.test") == (452, b"4.3.1 Insufficient system storage")

    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
    c.login(ALICE, PASSWORDS[ALICE])
    assert c.select("INBOX") == ("OK", [b"3"])
    typ, data = c.uid("FETCH", "1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1].endswith(first)
    assert c.uid("STORE", "1", "+FLAGS", "(\\Seen)")[0] == "OK"
    assert c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")[0] == "OK"
    typ, data = c.expunge()
    assert (typ, data) == ("OK", [b"2"])
    before = files(srv)
    assert sum(name.endswith(":2,S") for name in before) == 1
    typ, data = c.append("INBOX", None, None, b"Subject: no room\r\n\r\nx\r\n")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), data
    assert files(srv) == before
    c.logout()

    p = poplib.POP3_SSL("127.0.0.1", srv.ports["pop3s"], context=client_tls())
    p.user(ALICE)
    p.pass_(PASSWORDS[ALICE])
    assert p.stat()[0] == 3  # two with UIDs, and the one without
    assert b"\r\n".join(p.retr(3)[1]).endswith(late.rstrip(b"\r\n"))
    p.dele(1)
    assert p.quit().startswith(b"+OK")
    assert len(files(srv)) == 2

    filler.unlink()
    deliver(srv, ALICE, "five")
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
    c.login(ALICE, PASSWORDS[ALICE])
    assert c.select("INBOX") == ("OK", [b"3"])
    typ, data = c.uid("SEARCH", "ALL")
    assert data == [b"3 4 5"]
    c.logout()
