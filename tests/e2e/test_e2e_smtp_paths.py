"""MAIL FROM / RCPT TO paths over a real SMTP session, table-driven: RFC 5321 §4.1.2
(Path, Mailbox, Local-part, Quoted-string, address literals, source routes, Mail-
parameters), §4.5.3.1 (sizes) and RFC 6531 §3.5 (no SMTPUTF8 offered: 553 5.6.7)."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from e2e_server import Server

ALICE = "alice@example.test"
LONG_LOCAL = "a" * 65
# "<" + 64 + "@" + 190 + ">" = 257 octets: one over RFC 5321 §4.5.3.1.3.
LONG_PATH = "<" + "a" * 64 + "@" + ".".join(["b" * 63, "c" * 63, "d" * 62]) + ">"

SENDERS = [
    ("<a@sender.test>", b"250 2.1.0 Sender OK"),
    ("<>", b"250 2.1.0 Sender OK"),  # §4.5.5 null reverse-path
    ('<"john smith"@sender.test>', b"250 2.1.0 Sender OK"),  # Quoted-string
    ('<"a\\"b"@sender.test>', b"250 2.1.0 Sender OK"),  # quoted-pairSMTP
    ("<@relay.test,@other.test:a@sender.test>", b"250 2.1.0 Sender OK"),  # A-d-l ignored
    ("<a@[192.0.2.1]>", b"250 2.1.0 Sender OK"),  # IPv4-address-literal
    ("<a@[IPv6:2001:db8::1]>", b"250 2.1.0 Sender OK"),  # IPv6-address-literal
    ("<a@[x-tag:content]>", b"250 2.1.0 Sender OK"),  # General-address-literal
    ("<a@sender.test> SIZE=100 BODY=8BITMIME", b"250 2.1.0 Sender OK"),
    (" <a@sender.test>", b"250 2.1.0 Sender OK"),  # a space after the colon, tolerated
    ("<a..b@sender.test>", b"501 5.1.7 Bad sender address syntax"),  # Dot-string
    ("<.a@sender.test>", b"501 5.1.7 Bad sender address syntax"),
    ("<a.@sender.test>", b"501 5.1.7 Bad sender address syntax"),
    ('<"a"b"@sender.test>', b"501 5.1.7 Bad sender address syntax"),
    ("<a@sender..test>", b"501 5.1.7 Bad sender address syntax"),
    ("<a@-sender.test>", b"501 5.1.7 Bad sender address syntax"),
    ("<a@[300.0.0.1]>", b"501 5.1.7 Bad sender address syntax"),
    ("<a@[IPv6:xyz]>", b"501 5.1.7 Bad sender address syntax"),
    ("<@relay..test:a@sender.test>", b"501 5.1.7 Bad sender address syntax"),
    ("<a@sender.test", b"501 5.1.7 Bad sender address syntax"),
    ("a@sender.test", b"501 5.1.7 Bad sender address syntax"),
    ("<a@sender.test>SIZE=100", b"501 5.1.7 Bad sender address syntax"),  # SP required
    (f"<{LONG_LOCAL}@sender.test>", b"501 5.1.7 Bad sender address syntax"),  # §4.5.3.1.1
    (LONG_PATH, b"501 5.1.7 Path too long"),  # §4.5.3.1.3, reply per §4.5.3.1.10
    ("<jörg@sender.test>", b"553 5.6.7 Non-ASCII addresses require SMTPUTF8"),
    ("<a@sender.test> SIZE=", b"501 5.5.4 Syntax error in parameters or arguments"),
    ("<a@sender.test> X_Y=1", b"501 5.5.4 Syntax error in parameters or arguments"),
    ("<a@sender.test> =1", b"501 5.5.4 Syntax error in parameters or arguments"),
    ("<a@sender.test> FOO=1", b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized"),
]

RECIPIENTS = [
    (f"<{ALICE}>", b"250 2.1.5 Recipient OK"),
    ("<Alice@EXAMPLE.test>", b"250 2.1.5 Recipient OK"),
    ('<"alice"@example.test>', b"250 2.1.5 Recipient OK"),  # a quoted Dot-string
    ("<@relay.test:alice@example.test>", b"250 2.1.5 Recipient OK"),  # route ignored
    ('<"no such"@example.test>', b"550 5.1.1 No such user here"),
    ("<bob@[127.0.0.1]>", b"554 5.7.1 Relay access denied"),
    ("<@example.test:bob@remote.test>", b"554 5.7.1 Relay access denied"),
    ("<>", b"501 5.1.3 Bad address syntax"),  # §4.1.1.3: no null forward-path
    ("<a b@example.test>", b"501 5.1.3 Bad address syntax"),
    ("<alice@example.test.>", b"501 5.1.3 Bad address syntax"),
    (f"<{LONG_LOCAL}@example.test>", b"501 5.1.3 Bad address syntax"),
    (LONG_PATH, b"501 5.1.3 Path too long"),
    ("<jörg@example.test>", b"553 5.6.7 Non-ASCII addresses require SMTPUTF8"),
    ("<alice@exämple.test>", b"553 5.6.7 Non-ASCII addresses require SMTPUTF8"),
    (f"<{ALICE}> =x", b"501 5.5.4 Syntax error in parameters or arguments"),
    (f"<{ALICE}> NOTIFY=NEVER", b"555 5.5.4 MAIL FROM/RCPT TO parameters not recognized"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("smtp-paths"))
    try:
        server.add_user(ALICE, "alice-password")
        server.start()
        yield server
    finally:
        server.stop()


def command(s: smtplib.SMTP, line: str) -> bytes:
    """Send one command line as UTF-8 bytes, exactly; the reply as C{b"code text"}."""
    s.send(line.encode("utf-8") + b"\r\n")
    code, text = s.getreply()
    return b"%d %s" % (code, text)


@pytest.fixture(scope="module")
def session(server: Server) -> Iterator[smtplib.SMTP]:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="client.test") as s:
        s.ehlo()
        yield s


@pytest.mark.parametrize(("path", "reply"), SENDERS)
def test_mail_from(session: smtplib.SMTP, path: str, reply: bytes) -> None:
    """Each MAIL FROM path gets exactly its RFC 5321 reply."""
    assert command(session, "RSET") == b"250 2.0.0 Reset state"
    assert command(session, "MAIL FROM:" + path) == reply


@pytest.mark.parametrize(("path", "reply"), RECIPIENTS)
def test_rcpt_to(session: smtplib.SMTP, path: str, reply: bytes) -> None:
    """Each RCPT TO path gets exactly its RFC 5321 reply."""
    assert command(session, "RSET") == b"250 2.0.0 Reset state"
    assert command(session, "MAIL FROM:<a@sender.test>") == b"250 2.1.0 Sender OK"
    assert command(session, "RCPT TO:" + path) == reply


def test_source_route_and_quotes_deliver_to_the_mailbox(server: Server) -> None:
    """RFC 5321 §3.6.1: a source route is ignored; the quoted sender is kept as sent
    (quotes only where needed) in Return-Path."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="client.test") as s:
        s.ehlo()
        assert command(s, 'MAIL FROM:<@hop.test:"john smith"@sender.test>') == (
            b"250 2.1.0 Sender OK"
        )
        assert command(s, 'RCPT TO:<@relay.test:"alice"@example.test>') == (
            b"250 2.1.5 Recipient OK"
        )
        assert command(s, "DATA").startswith(b"354 ")
        assert command(s, "Subject: routed\r\n\r\nhello\r\n.") == (
            b"250 2.0.0 Message accepted for delivery"
        )
    (stored,) = server.wait_for_messages(ALICE, 1)
    data = stored.read_bytes()
    assert data.startswith(
        b'Return-Path: <"john smith"@sender.test>\r\nDelivered-To: alice@example.test\r\nReceived: '
    ), data
    assert b"\tfor <alice@example.test>; " in data
    assert data.endswith(b"\r\nSubject: routed\r\n\r\nhello\r\n")
