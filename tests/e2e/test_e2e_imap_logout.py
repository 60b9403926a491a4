"""LOGOUT over implicit TLS ends with the server closing TCP (RFC 3501 §6.1.3), without waiting
for the client's close_notify (RFC 8446 §6.1), so a client that waits for the server's close
(imaptest, Dovecot's own clients) is never left hanging."""

from __future__ import annotations

import socket
import ssl

from e2e_server import PASSWORDS, Server, client_tls

ALICE = "alice@example.test"


def test_logout_over_tls_closes_tcp_without_waiting_for_the_client(server: Server) -> None:
    """After LOGOUT the raw socket sees close_notify and then EOF (FIN) while the client
    sends nothing more, not even its own close_notify."""
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_tls().wrap_bio(incoming, outgoing, server_hostname="mail.example.test")

    def pump_out() -> None:
        data = outgoing.read()
        if data:
            raw.sendall(data)

    def read_until(marker: bytes) -> bytes:
        got = b""
        while marker not in got:
            try:
                got += tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            chunk = raw.recv(65536)
            assert chunk, got
            incoming.write(chunk)
        return got

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pump_out()
            incoming.write(raw.recv(65536))
    pump_out()
    read_until(b"\r\n")
    tls.write(b'a LOGIN %s "%s"\r\n' % (ALICE.encode(), PASSWORDS[ALICE].encode()))
    pump_out()
    assert b"a OK" in read_until(b"a OK")
    tls.write(b"b LOGOUT\r\n")
    pump_out()
    got = read_until(b"b OK")
    assert got.endswith(b"* BYE Nice talking to you\r\nb OK LOGOUT successful\r\n"), got
    rest = b""
    while True:  # raw bytes to EOF: a socket timeout here means the server never closed
        chunk = raw.recv(65536)
        if not chunk:
            break
        rest += chunk
    incoming.write(rest)
    incoming.write_eof()
    try:
        assert tls.read(65536) == b""  # close_notify, then EOF: a clean TLS close
    except ssl.SSLZeroReturnError:
        pass  # the same, reported as an exception
    raw.close()
