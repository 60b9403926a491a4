"""Issue 9: the server started the way twistd starts it by default (no C{-n}: it forks into
the background), end to end.  Every database, thread pool and lock is opened after the fork
(in C{startService}), so account changes made with the CLI while it runs are seen at once."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import BIN, PASSWORDS, Server, client_tls, imap_login

CAROL = "carol@example.test"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    srv.start(daemon=True)
    try:
        yield srv
    finally:
        srv.stop()


def rcpt(server: Server, address: str) -> tuple[int, bytes]:
    """The reply to C{RCPT TO:<address>} on port 25."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
        s.ehlo("client.example.net")
        assert s.mail("someone@remote.test")[0] == 250
        return s.rcpt(address)


def pop3_login(server: Server, address: str, password: str) -> str:
    """C{+OK ...} or C{-ERR ...} of USER/PASS on 995."""
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls(), timeout=10)
    try:
        p.user(address)
        reply = p.pass_(password).decode()
        p.quit()
        return reply
    except poplib.error_proto as e:
        p.close()
        return e.args[0].decode()


FAILED_IMAP = "[AUTHENTICATIONFAILED] Authentication failed"
FAILED_POP3 = "-ERR [AUTH] Authentication failed"


def test_daemon_sees_user_add_passwd_del_at_once(daemon: Server) -> None:
    """Without -n, a user added, re-passworded and deleted with the CLI while the server runs
    is seen at once on SMTP RCPT, IMAP and POP3 (the store is opened after the fork)."""
    assert daemon.running() and daemon.pid is not None
    assert daemon.pid == int(daemon.pidfile.read_text())
    assert rcpt(daemon, CAROL) == (550, b"5.1.1 No such user here")

    daemon.add_user(CAROL, "carol-first-1")
    assert rcpt(daemon, CAROL) == (250, b"2.1.5 Recipient OK")
    assert imap_login(daemon, CAROL, "carol-first-1") == "OK"
    assert pop3_login(daemon, CAROL, "carol-first-1").startswith("+OK")

    daemon.cli("user", "passwd", CAROL, "--password-stdin", stdin="carol-second-2\n")
    assert imap_login(daemon, CAROL, "carol-first-1") == FAILED_IMAP
    assert pop3_login(daemon, CAROL, "carol-first-1") == FAILED_POP3
    assert imap_login(daemon, CAROL, "carol-second-2") == "OK"
    assert pop3_login(daemon, CAROL, "carol-second-2").startswith("+OK")

    daemon.cli("user", "del", CAROL)
    assert rcpt(daemon, CAROL) == (550, b"5.1.1 No such user here")
    assert imap_login(daemon, CAROL, "carol-second-2") == FAILED_IMAP
    assert pop3_login(daemon, CAROL, "carol-second-2") == FAILED_POP3
    # The users that were there before the start keep working.
    alice = "alice@example.test"
    assert imap_login(daemon, alice, PASSWORDS[alice]) == "OK"


def test_daemon_stops_by_pid_file(daemon: Server) -> None:
    """SIGTERM to the PID in the pid file stops the daemon cleanly: the pid file is removed
    and the throttle state saved."""
    daemon.stop()
    assert not daemon.running()
    assert not daemon.pidfile.exists()
    assert (daemon.data_dir / "throttle.json").exists()


def test_daemon_start_error_is_reported_not_hung(tmp_path: Path) -> None:
    """Without -n, a listen error after the fork ends twistd with status 1 and the error on
    its stderr and in the log (a SystemExit in the child left twistd waiting forever)."""
    server = Server(tmp_path)
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.0.0.1", server.ports["imap"]))
    taken.listen()
    try:
        out = subprocess.run(
            [
                str(BIN / "twistd"),
                f"--pidfile={server.pidfile}",
                f"--logfile={server.log}",
                "twistedmail",
                "--config",
                str(server.config),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=server.root,
        )
    finally:
        taken.close()
    reason = f"cannot listen on 127.0.0.1:{server.ports['imap']}: Address already in use"
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (
        f"An error has occurred: b'StartError: [listen] imap: {reason}'"
    )
    assert f"twistedmail: error: {server.config}: [listen] imap: {reason}" in (
        server.log.read_text()
    )
    assert not server.pidfile.exists()


def test_deleted_users_mail_never_reaches_the_next_owner(daemon: Server) -> None:
    """Issue 9: user del moves the Maildir aside; a new user of the same address starts with
    an empty INBOX over IMAP and POP3 (and an empty quota usage), while the old mail is
    kept under DATA_DIR/deleted/."""
    alice = "alice@example.test"
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=10) as s:
        s.sendmail("someone@remote.test", [alice], b"Subject: for the old alice\r\n\r\nsecret\r\n")
    assert len(daemon.wait_for_messages(alice, 1)) == 1
    imap = imaplib.IMAP4_SSL("127.0.0.1", daemon.ports["imaps"], ssl_context=client_tls())
    imap.login(alice, PASSWORDS[alice])
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()

    out = daemon.cli("user", "del", alice).stdout
    [moved] = (daemon.data_dir / "deleted").iterdir()
    assert out == f"deleted user {alice}; its mail is moved to {moved}\n"
    [kept] = [p for sub in ("new", "cur") for p in (moved / sub).iterdir()]
    assert kept.read_bytes().endswith(b"Subject: for the old alice\r\n\r\nsecret\r\n")
    daemon.add_user(alice, "new-alice-pw-5")
    daemon.cli("user", "quota", alice, "1MiB")
    imap = imaplib.IMAP4_SSL("127.0.0.1", daemon.ports["imaps"], ssl_context=client_tls())
    imap.login(alice, "new-alice-pw-5")
    assert imap.select("INBOX") == ("OK", [b"0"])
    assert imap.getquotaroot("INBOX")[1][1] == [b'"" (STORAGE 0 1024)']
    imap.logout()
    p = poplib.POP3_SSL("127.0.0.1", daemon.ports["pop3s"], context=client_tls(), timeout=10)
    p.user(alice)
    p.pass_("new-alice-pw-5")
    assert p.stat() == (0, 0)
    p.quit()
