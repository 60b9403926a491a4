"""COMPRESS=DEFLATE (RFC 4978) against the real server: a raw socket client with zlib
(wbits -15) over implicit TLS (993) and after STARTTLS (143): LOGIN, COMPRESS, SELECT,
FETCH, and an IDLE push of a message delivered by SMTP; a decompression bomb ends the
session at the line limit."""

from __future__ import annotations

import smtplib
import socket
import ssl
import zlib

from e2e_server import PASSWORDS, Server, client_tls

ALICE = "alice@example.test"
MESSAGE = b"From: x@elsewhere.test\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\n%s\r\n"


class DeflateIMAP:
    """A minimal IMAP client that can turn on COMPRESS=DEFLATE."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""
        self.deflate: zlib._Compress | None = None
        self.inflate: zlib._Decompress | None = None

    def send(self, data: bytes) -> None:
        if self.deflate is not None:
            data = self.deflate.compress(data) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += self.inflate.decompress(chunk) if self.inflate else chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        """Send one command; the untagged lines and the tagged one (literals inline)."""
        self.send(tag + b" " + text + b"\r\n")
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def compress(self) -> bytes:
        self.sock.sendall(b"z COMPRESS DEFLATE\r\n")
        reply = self.line()
        assert not self.buffer  # nothing may follow the OK uncompressed
        self.deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        return reply


def deliver(server: Server, subject: bytes, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("x@elsewhere.test", [ALICE], MESSAGE % (subject, body))


def login(client: DeflateIMAP) -> list[bytes]:
    password = PASSWORDS[ALICE].encode()
    return client.command(b"L", b'LOGIN %s "%s"' % (ALICE.encode(), password))


def session(client: DeflateIMAP, server: Server) -> None:
    assert b"COMPRESS=DEFLATE" in login(client)[-1]
    assert client.compress() == b"z OK DEFLATE active"
    assert client.command(b"c", b"CAPABILITY")[0].count(b"COMPRESS") == 0
    selected = client.command(b"s", b"SELECT INBOX")
    assert b"* 1 EXISTS" in selected and selected[-1] == b"s OK [READ-WRITE] SELECT completed"
    body = b"\r\n".join([b"compressible line of text " * 3] * 500)
    assert client.command(b"f", b"UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}",
        b"Subject: first",
        b"",
        b" UID 1)",
        b"f OK FETCH completed",
    ]
    client.send(b"i IDLE\r\n")
    assert client.line() == b"+ idling"
    deliver(server, b"pushed", body)
    assert client.line() == b"* 2 EXISTS"
    assert client.line() == b"* 2 RECENT"
    client.send(b"DONE\r\n")
    assert client.line() == b"i OK IDLE terminated"
    fetched = client.command(b"g", b"FETCH 2 (BODY.PEEK[TEXT])")
    assert fetched[0] == b"* 2 FETCH (BODY[TEXT] {%d}" % (len(body) + 2)
    assert b"\r\n".join(fetched[1:-2]) == body and fetched[-1] == b"g OK FETCH completed"
    assert client.command(b"y", b"COMPRESS DEFLATE") == [
        b"y NO [COMPRESSIONACTIVE] DEFLATE already active"
    ]
    assert client.command(b"o", b"LOGOUT")[-1] == b"o OK LOGOUT successful"


def test_compress_over_implicit_tls(server: Server) -> None:
    """RFC 4978: COMPRESS=DEFLATE on 993 after login; the session then runs deflated."""
    deliver(server, b"first", b"one")
    server.wait_for_messages(ALICE, 1)
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10)
    with client_tls().wrap_socket(raw, server_hostname="localhost") as sock:
        client = DeflateIMAP(sock)
        assert client.line().startswith(b"* OK [CAPABILITY ")
        session(client, server)


def test_compress_after_starttls(server: Server) -> None:
    """RFC 4978: COMPRESS=DEFLATE on 143 after STARTTLS and login."""
    deliver(server, b"first", b"one")
    server.wait_for_messages(ALICE, 1)
    raw = socket.create_connection(("127.0.0.1", server.ports["imap"]), timeout=10)
    plain = DeflateIMAP(raw)  # type: ignore[arg-type]
    assert plain.line().startswith(b"* OK [CAPABILITY ")
    assert plain.command(b"t", b"STARTTLS") == [b"t OK Begin TLS negotiation now"]
    with client_tls().wrap_socket(raw, server_hostname="localhost") as sock:
        session(DeflateIMAP(sock), server)


def test_decompression_bomb_closes_at_the_line_limit(server: Server) -> None:
    """A compressed 32 MiB line is cut at the line limit: the server closes the connection
    instead of inflating it all."""
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10)
    with client_tls().wrap_socket(raw, server_hostname="localhost") as sock:
        client = DeflateIMAP(sock)
        client.line()
        login(client)
        client.compress()
        client.send(b"a NOOP " + b"x" * (32 << 20))  # 32 MiB line, ~32 KiB compressed
        assert client.line() == b"* BYE [TOOBIG] Command line too long"
        try:
            assert sock.recv(4096) == b""
        except (ssl.SSLError, ConnectionError):
            pass
