"""A ManageSieve session whose user is deleted (C{twistedmail user del}) while it is
logged in: its PUTSCRIPT must not make the deleted user's Maildir home again (scripts live
in it, C{sieve/} and C{.dovecot.sieve}), which also made a later C{user add} of the address
refuse ("already exists").  The session gets BYE, as Dovecot ends a removed user's
sessions (RFC 5804 §1.3: BYE, then the server closes the connection)."""

from __future__ import annotations

import base64
import socket
from pathlib import Path

from e2e_server import LineClient, Server, client_tls, running


def _login(server: Server) -> LineClient:
    sock = socket.create_connection(("127.0.0.1", server.ports["managesieve"]))
    sock.settimeout(60)
    c = LineClient(sock)
    c.until(lambda line: line.startswith(b"OK"))
    c.send(b"STARTTLS\r\n")
    c.until(lambda line: line.startswith(b"OK"))
    c.sock, c.buf = client_tls().wrap_socket(sock, server_hostname="x"), b""
    c.until(lambda line: line.startswith(b"OK"))
    cred = base64.b64encode(b"\0alice@example.test\0alice-secret-1")
    c.send(b'AUTHENTICATE "PLAIN" "' + cred + b'"\r\n')
    assert c.line() == b'OK "Logged in"'
    return c


def test_putscript_after_user_deleted(tmp_path: Path) -> None:
    """C{user del} of a user who never had mail, then the session's PUTSCRIPT: BYE, the
    Maildir home is not made again, and C{user add} of the address works."""
    with running(Server(tmp_path)) as server:
        c = _login(server)
        server.cli("user", "del", "alice@example.test")
        body = b"keep;\r\n"
        c.send(b'PUTSCRIPT "main" {%d+}\r\n' % len(body) + body + b"\r\n")
        assert c.line() == b'BYE "Account was deleted, have to disconnect."'
        assert not server.maildir("alice@example.test").exists()
        server.add_user("alice@example.test", "alice-secret-2")
        assert "Traceback" not in server.log.read_text()
