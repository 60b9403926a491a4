"""The hostile SASL inputs of tests/test_sasl.py against a real server: on one connection per
protocol (SMTP AUTH on 465, IMAP AUTHENTICATE on 993, POP3 AUTH on 995) each input gets its
protocol's reply (RFC 4954 §4 and §6, RFC 3501 §6.2.2 and RFC 5530, RFC 5034 §4 and
RFC 3206), nothing closes the connection, and the right credentials still log in after."""

from __future__ import annotations

import base64
import socket
import ssl

from e2e_server import PASSWORDS, Server, client_tls

from tests.test_sasl import CANCELLED, HOSTILE, REPLIES

ALICE = "alice@example.test"


class Wire:
    """A line-oriented TLS client."""

    def __init__(self, port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sock: ssl.SSLSocket = client_tls().wrap_socket(raw)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def send(self, data: bytes) -> None:
        self.sock.sendall(data + b"\r\n")

    def close(self) -> None:
        self.sock.close()


def good() -> bytes:
    return base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode())


def test_hostile_sasl_inputs_on_every_protocol(server: Server) -> None:
    """Every input of the table, as an initial response and after the challenge, then "*"
    after the challenge, then a good login: each protocol's reply, same connection."""
    smtp = Wire(server.ports["submissions"])
    assert smtp.line().startswith(b"220 ")
    smtp.send(b"EHLO client")
    while not smtp.line().startswith(b"250 "):
        pass
    imap = Wire(server.ports["imaps"])
    assert imap.line().startswith(b"* OK")
    pop3 = Wire(server.ports["pop3s"])
    assert pop3.line().startswith(b"+OK")
    wires = {"smtp": smtp, "imap": imap, "pop3": pop3}
    command = {"smtp": b"AUTH PLAIN", "imap": b"a AUTHENTICATE PLAIN", "pop3": b"AUTH PLAIN"}
    challenge = {"smtp": b"334 ", "imap": b"+ ", "pop3": b"+ "}
    try:
        for service, wire in wires.items():
            for name, response, outcome in HOSTILE:
                if name == "wrong password":
                    continue  # counted by the throttle and SMTP's 3 tries: test_sasl has it
                wire.send(command[service] + b" " + response)
                assert (name, wire.line()) == (name, REPLIES[service][outcome])
                wire.send(command[service])
                assert wire.line() == challenge[service]
                wire.send(response)
                assert (name, wire.line()) == (name, REPLIES[service][outcome])
            wire.send(command[service])
            assert wire.line() == challenge[service]
            wire.send(b"*")
            assert wire.line() == REPLIES[service][CANCELLED]
            wire.send(command[service] + b" " + good())
            reply = wire.line()
            if service == "imap":
                assert reply.startswith(b"a OK [CAPABILITY IMAP4rev1 "), reply
            else:
                assert (
                    reply
                    == {
                        "smtp": b"235 2.7.0 Authentication successful",
                        "pop3": b"+OK Logged in",
                    }[service]
                )
    finally:
        for wire in wires.values():
            wire.close()
    log = server.log.read_text()
    assert "Traceback" not in log
    # Each malformed message is one "login failed" line (fail2ban sees it), never counted:
    assert "login throttle: blocking" not in log
