"""Connection accounting end to end (issue 9): every session, however it ends, gives back its
descriptor, its per-IP connection slot (L{twistedmail.limits.ConnectionLimit}) and its
per-user slot (L{twistedmail.limits.UserSessionLimit}); counted from outside through
C{/proc/PID/fd} and the control socket's C{connections} request."""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import time

import pytest
from e2e_server import PASSWORDS, Server, client_tls

from twistedmail import control

ALICE, BOB = "alice@example.test", "bob@example.test"

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors"
)


def open_fds(server: Server) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def connections(server: Server) -> dict[str, int]:
    """The server's open connections per listener and logged-in sessions (control socket)."""
    return control.connections(server.data_dir / "control")


def deliver_many(server: Server, to: str, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for i in range(count):
            s.sendmail("x@elsewhere.test", [to], b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))


def settled(server: Server, fds: int, counts: dict[str, int], within: float = 20) -> None:
    """Wait (bounded) until descriptors and connection counts are back at C{fds}/C{counts};
    then assert it, showing the difference."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if open_fds(server) <= fds and connections(server) == counts:
            return
        time.sleep(0.1)
    assert (open_fds(server), connections(server)) == (fds, counts)


def test_pop3_sessions_that_retrieve_and_delete_give_back_their_slot(server: Server) -> None:
    """25 POP3S sessions of one IP, each RETR + DELE + QUIT, all get +OK: more than the per-IP
    limit of 20, so each QUIT frees its connection (issue 9: the 21st was refused)."""
    deliver_many(server, ALICE, 25)
    for _ in range(25):
        p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls(), timeout=10)
        assert p.user(ALICE).startswith(b"+OK")
        assert p.pass_(PASSWORDS[ALICE]) == b"+OK Logged in"
        assert p.retr(1)[0].startswith(b"+OK")
        assert p.dele(1) == b"+OK message deleted"
        assert p.quit() == b"+OK twistedmail POP3 server signing off"
    assert server.messages(ALICE) == []


def test_imaps_login_logout_sessions_of_one_user_give_back_their_slot(server: Server) -> None:
    """12 IMAPS LOGIN/LOGOUT sessions of one user from one IP all log in: more than the 10
    sessions per user and IP (RFC 5530 §3 UNAVAILABLE only when 10 are really open)."""
    for _ in range(12):
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        assert m.login(BOB, PASSWORDS[BOB])[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        assert m.logout()[0] == "BYE"
