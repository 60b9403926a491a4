"""A message file another program dropped into C{cur/} with bare LF line ends is sent with
CRLF line ends over IMAP (RFC 3501 §2.3.4) and POP3 (RFC 1939 §3), and every size the
server announces (RFC822.SIZE, literal lengths, partial fetches, LIST) counts those octets."""

from __future__ import annotations

import socket
import ssl

from e2e_server import PASSWORDS, Server, client_tls

ALICE = "alice@example.test"
LF_MESSAGE = b"From: x@elsewhere.test\nSubject: lf\n\nline1\nline2\r\n.dot\n"
CRLF_MESSAGE = LF_MESSAGE.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Wire:
    """A TLS connection read byte-exactly."""

    def __init__(self, port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock: ssl.SSLSocket = client_tls().wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""

    def until(self, end: bytes) -> bytes:
        while end not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, self.buffer
            self.buffer += chunk
        i = self.buffer.index(end) + len(end)
        out, self.buffer = self.buffer[:i], self.buffer[i:]
        return out

    def send(self, line: bytes, end: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.until(end)

    def close(self) -> None:
        self.sock.close()


def drop_lf_file(server: Server) -> None:
    cur = server.maildir(ALICE) / "cur"
    cur.mkdir(parents=True, exist_ok=True)
    (cur / "1700000000.M1P1.otherhost:2,").write_bytes(LF_MESSAGE)


def test_imap_serves_a_bare_lf_file_with_crlf(server: Server) -> None:
    """RFC 3501 §2.3.4: BODY[], its partial and TEXT are CRLF; RFC822.SIZE counts them."""
    drop_lf_file(server)
    w = Wire(server.ports["imaps"])
    try:
        w.until(b"\r\n")
        w.send(b"a LOGIN %s %s" % (ALICE.encode(), PASSWORDS[ALICE].encode()), b"a OK")
        w.until(b"\r\n")
        assert w.send(b"b SELECT INBOX", b"b OK").startswith(b"* FLAGS")
        w.until(b"\r\n")
        out = w.send(
            b"c FETCH 1 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[]<30.9> BODY.PEEK[TEXT])", b"c OK"
        )
        assert out == (
            b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%s BODY[]<30> {9}\r\n%s"
            b" BODY[TEXT] {20}\r\nline1\r\nline2\r\n.dot\r\n)\r\nc OK"
            % (len(CRLF_MESSAGE), len(CRLF_MESSAGE), CRLF_MESSAGE, CRLF_MESSAGE[30:39])
        )
        assert len(CRLF_MESSAGE) == 59
    finally:
        w.close()


def test_pop3_serves_a_bare_lf_file_with_crlf(server: Server) -> None:
    """RFC 1939 §3, §5: LIST counts the CRLF form, RETR and TOP send it, dot-stuffed."""
    drop_lf_file(server)
    w = Wire(server.ports["pop3s"])
    try:
        w.until(b"\r\n")
        w.send(b"USER " + ALICE.encode(), b"\r\n")
        assert w.send(b"PASS " + PASSWORDS[ALICE].encode(), b"\r\n").startswith(b"+OK")
        assert w.send(b"LIST", b"\r\n.\r\n") == b"+OK 1 messages (59 octets)\r\n1 59\r\n.\r\n"
        assert w.send(b"RETR 1", b"\r\n.\r\n") == (
            b"+OK 59 octets\r\n"
            b"From: x@elsewhere.test\r\nSubject: lf\r\n\r\nline1\r\nline2\r\n..dot\r\n.\r\n"
        )
        assert w.send(b"TOP 1 1", b"\r\n.\r\n").endswith(
            b"\r\nFrom: x@elsewhere.test\r\nSubject: lf\r\n\r\nline1\r\n.\r\n"
        )
        w.send(b"QUIT", b"\r\n")
    finally:
        w.close()
