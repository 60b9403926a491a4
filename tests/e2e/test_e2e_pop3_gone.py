"""A POP3 session whose user is deleted (C{twistedmail user del}) before its QUIT: the
UPDATE state cannot remove the messages marked deleted (the Maildir was moved aside with
them), which QUIT says with -ERR (RFC 1939 §6) and [SYS/PERM] (RFC 2449 §8.1.2: a retry
cannot succeed); the log says so in one line, without a traceback, and nothing makes the
moved Maildir again."""

from __future__ import annotations

import socket
from pathlib import Path

from e2e_server import LineClient, Server, client_tls, deliver, running


def test_quit_after_user_deleted(tmp_path: Path) -> None:
    """DELE, then C{user del}, then QUIT: -ERR [SYS/PERM], one log line, no traceback."""
    with running(Server(tmp_path)) as server:
        deliver(server, "alice@example.test", "one")
        sock = client_tls().wrap_socket(
            socket.create_connection(("127.0.0.1", server.ports["pop3s"])), server_hostname="x"
        )
        sock.settimeout(60)
        c = LineClient(sock)
        assert c.line().startswith(b"+OK")
        for command in (b"USER alice@example.test", b"PASS alice-secret-1", b"DELE 1"):
            c.send(command + b"\r\n")
            assert c.line().startswith(b"+OK"), command
        server.cli("user", "del", "alice@example.test")
        c.send(b"QUIT\r\n")
        assert c.line() == (
            b"-ERR [SYS/PERM] some deleted messages not removed: the mailbox was deleted"
        )
        assert not server.maildir("alice@example.test").exists()
        log = server.log.read_text()
        assert "Traceback" not in log
        assert "mailbox was deleted: 1 message(s) marked deleted not removed" in log
