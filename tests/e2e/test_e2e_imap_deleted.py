"""A session whose selected mailbox is deleted under it (DELETE in another session, the
user's Maildir moved aside by C{twistedmail user del}) is told so with BYE and closed, as
Dovecot does ('Selected mailbox was deleted, have to disconnect.'; RFC 2180 §3.3 lets the
server end such a session).  It answered NO [SERVERBUG] with a traceback in the log, went
on in the dead folder, and an APPEND there made the deleted user's Maildir again."""

from __future__ import annotations

import socket
from pathlib import Path

from e2e_server import LineClient, Server, client_tls, imap_client, running

GONE = [
    b"n NO [NONEXISTENT] Selected mailbox was deleted, have to disconnect.",
    b"* BYE [NONEXISTENT] Closing the connection",
]


def _session(server: Server, folder: str) -> LineClient:
    sock = client_tls().wrap_socket(
        socket.create_connection(("127.0.0.1", server.ports["imaps"])), server_hostname="x"
    )
    sock.settimeout(60)  # a server that keeps the session fails the test, not hangs it
    c = LineClient(sock)
    c.line()
    c.send(b"a LOGIN alice@example.test alice-secret-1\r\n")
    assert c.until(lambda line: line.startswith(b"a ")).startswith(b"a OK")
    c.send(b's SELECT "%s"\r\n' % folder.encode())
    assert c.until(lambda line: line.startswith(b"s ")).startswith(b"s OK")
    return c


def _rest(c: LineClient) -> list[bytes]:
    lines = []
    try:
        while True:
            lines.append(c.line())
    except (EOFError, TimeoutError):
        return lines


def test_selected_mailbox_deleted_by_another_session(tmp_path: Path) -> None:
    """DELETE of a folder another session has selected: that session's next command gets
    NO [NONEXISTENT] and BYE, and the connection is closed (RFC 2180 §3.3)."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        other.create_folder("Work")
        c = _session(server, "Work")
        other.delete_folder("Work")
        other.logout()
        c.send(b"n NOOP\r\n")
        assert _rest(c) == GONE
        assert "Traceback" not in server.log.read_text()


def test_user_deleted_while_idling(tmp_path: Path) -> None:
    """C{twistedmail user del} while the user idles on INBOX and on a folder: each session
    gets BYE at once, without sending DONE first (the CLI makes and removes a dot file in
    each moved folder's new/, which the sessions' watchers hear of: the move alone changes
    nothing they watch; they were told only at their next command), and nothing makes the
    moved Maildir again."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        other.create_folder("Work")
        other.logout()
        idlers = [_session(server, "INBOX"), _session(server, "Work")]
        for c in idlers:
            c.send(b"i IDLE\r\n")
            assert c.line() == b"+ idling"
        server.cli("user", "del", "alice@example.test")
        for c in idlers:
            assert _rest(c) == [
                b"* BYE [NONEXISTENT] Selected mailbox was deleted, have to disconnect."
            ]
        assert not server.maildir("alice@example.test").exists()
        assert "Traceback" not in server.log.read_text()
