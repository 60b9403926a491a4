"""Sessions whose mail goes away under them: the user deleted (C{twistedmail user del})
while a session is logged in without a selected folder, a selected folder deleted while its
session idles, and a selected folder deleted and created again by another session.  The
session is told and closed, as Dovecot closes it ('Selected mailbox was deleted, have to
disconnect.'); it never makes the deleted user's Maildir again, and never goes on under the
old UIDVALIDITY in a folder that is a new one (RFC 3501 §2.3.1.1)."""

from __future__ import annotations

import socket
from pathlib import Path

from e2e_server import LineClient, Server, client_tls, imap_client, running
from test_e2e_imap_deleted import _rest

USER_GONE = [
    b"NO [NONEXISTENT] Account was deleted, have to disconnect.",
    b"* BYE [NONEXISTENT] Closing the connection",
]


def _session(server: Server, folder: str | None = None) -> LineClient:
    sock = client_tls().wrap_socket(
        socket.create_connection(("127.0.0.1", server.ports["imaps"])), server_hostname="x"
    )
    sock.settimeout(60)  # a server that keeps the session fails the test, not hangs it
    c = LineClient(sock)
    c.line()
    c.send(b"a LOGIN alice@example.test alice-secret-1\r\n")
    assert c.until(lambda line: line.startswith(b"a ")).startswith(b"a OK")
    if folder is not None:
        c.send(b's SELECT "%s"\r\n' % folder.encode())
        assert c.until(lambda line: line.startswith(b"s ")).startswith(b"s OK")
    return c


def test_user_deleted_then_append_create_and_select(tmp_path: Path) -> None:
    """C{user del} while sessions are logged in and have nothing selected: their APPEND,
    CREATE and SELECT INBOX get NO [NONEXISTENT] and BYE, and none makes the Maildir again."""
    with running(Server(tmp_path)) as server:
        sessions = [_session(server) for _ in range(3)]
        server.cli("user", "del", "alice@example.test")
        commands = [
            b"x APPEND INBOX {5+}\r\nhello\r\n",
            b"x CREATE Foo\r\n",
            b"x SELECT INBOX\r\n",
        ]
        for c, command in zip(sessions, commands, strict=True):
            c.send(command)
            assert _rest(c) == [b"x " + USER_GONE[0], USER_GONE[1]], command
        assert not server.maildir("alice@example.test").exists()
        assert "Traceback" not in server.log.read_text()


def test_idling_client_told_at_once_when_its_folder_is_deleted(tmp_path: Path) -> None:
    """A session idling on a folder another session deletes gets BYE at once, without
    sending DONE first (RFC 2177 §3: the server may send any untagged response during IDLE;
    Dovecot sends this BYE), and the server logs no failed rescan."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        other.create_folder("Work")
        c = _session(server, "Work")
        c.send(b"i IDLE\r\n")
        assert c.line() == b"+ idling"
        other.delete_folder("Work")
        other.logout()
        assert _rest(c) == [
            b"* BYE [NONEXISTENT] Selected mailbox was deleted, have to disconnect."
        ]
        assert "Traceback" not in server.log.read_text()


def test_idling_client_told_at_once_when_its_folder_is_renamed(tmp_path: Path) -> None:
    """A session idling on a folder another session renames (its child too) gets BYE at
    once, as for a deletion: the renamed folder's files change in no way inotify sees, so
    the rename makes and removes a dot file in each moved folder's new/."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        other.create_folder("Work")
        other.create_folder("Work.Sub")
        idlers = [_session(server, "Work"), _session(server, "Work.Sub")]
        for c in idlers:
            c.send(b"i IDLE\r\n")
            assert c.line() == b"+ idling"
        other.rename_folder("Work", "Play")
        names = {f[2] for f in other.list_folders()}
        assert {"Play", "Play.Sub"} <= names and not {"Work", "Work.Sub"} & names
        other.logout()
        for c in idlers:
            assert _rest(c) == [
                b"* BYE [NONEXISTENT] Selected mailbox was deleted, have to disconnect."
            ]
        assert "Traceback" not in server.log.read_text()


def test_selected_folder_deleted_and_created_again(tmp_path: Path) -> None:
    """A folder deleted and made again (new UIDVALIDITY) by another session while selected:
    the session's next command gets NO [NONEXISTENT] and BYE, not the new folder's messages
    under the old UIDVALIDITY (RFC 3501 §2.3.1.1)."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        other.create_folder("Work")
        other.append("Work", b"Subject: old\r\n\r\nold\r\n")
        c = _session(server, "Work")
        other.delete_folder("Work")
        other.create_folder("Work")
        other.append("Work", b"Subject: new\r\n\r\nnew\r\n")
        other.logout()
        c.send(b"n NOOP\r\n")
        assert _rest(c) == [
            b"n NO [NONEXISTENT] Selected mailbox was deleted, have to disconnect.",
            b"* BYE [NONEXISTENT] Closing the connection",
        ]
        assert "Traceback" not in server.log.read_text()
