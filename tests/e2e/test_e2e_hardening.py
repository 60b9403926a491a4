"""Issue 5 hardening over real sockets against the real server: SMTP smuggling byte
sequences with C{[smtp] bare_lf} in both modes, the text line and header section limits, and
the per-user IMAP session limit (C{[limits] imap_max_connections_per_user})."""

from __future__ import annotations

import imaplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, running

from twistedmail import control

ALICE, BOB = "alice@example.test", "bob@example.test"
OPEN = b"EHLO evil.test\r\nMAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
SMUGGLED = (
    b"MAIL FROM:<admin@bank.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: admin@bank.test\r\n\r\nsmuggled\r\n"
)
UP_TO_DATA = [
    b"250 2.1.0 Sender OK",
    b"250 2.1.5 Recipient OK",
    b"354 End data with <CR><LF>.<CR><LF>",
]


def configured(tmp_path: Path, limits: str = "", extra: str = "") -> Iterator[Server]:
    server = Server(tmp_path)
    text = server.config.read_text().replace("[limits]\n", "[limits]\n" + limits)
    server.config.write_text(text + extra)
    with running(server):
        yield server


@pytest.fixture
def normalizing(tmp_path: Path) -> Iterator[Server]:
    yield from configured(
        tmp_path, "imap_max_connections_per_user = 2\n", '\n[smtp]\nbare_lf = "normalize"\n'
    )


def smtp_raw(server: Server, data: bytes) -> list[bytes]:
    """Send C{data} then QUIT in one write after the greeting; the replies that came back,
    without EHLO's 250 lines and QUIT's 221."""
    with socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=20) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(data + b"QUIT\r\n")
        replies = [line.rstrip(b"\r\n") for line in f]
    assert replies[-1].startswith(b"221 ")
    ehlo = next(i for i, r in enumerate(replies) if not r.startswith(b"250-"))
    return replies[ehlo + 1 : -1]


def bodies(server: Server, address: str) -> list[bytes]:
    """Every stored message of C{address}, from its Subject: line on (after trace headers)."""
    return [m.read_bytes().split(b"Subject: ", 1)[1] for m in server.messages(address)]


VARIANTS = (b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n")


def test_smuggling_rejected_by_default(server: Server) -> None:
    """RFC 5321 §4.1.1.4 (SMTP smuggling): by default every bare CR/LF end-of-data variant is
    refused with 550 5.6.0 and nothing is stored."""
    for variant in VARIANTS:
        replies = smtp_raw(
            server, OPEN + b"Subject: x\r\n\r\nfirst" + variant + SMUGGLED + b".\r\n"
        )
        assert replies == [*UP_TO_DATA, b"550 5.6.0 Bare CR or LF in message data"], variant
    assert server.messages(ALICE) == [] and server.messages(BOB) == []


def test_smuggling_normalized_is_one_message(normalizing: Server) -> None:
    """bare_lf = normalize: the bare-LF end-of-data variants end nothing; the smuggled lines stay
    inside one accepted message."""
    server = normalizing
    expected = []
    for variant in (b"\n.\n", b"\r\n.\n", b"\n.\r\n"):
        replies = smtp_raw(
            server, OPEN + b"Subject: x\r\n\r\nfirst" + variant + SMUGGLED + b".\r\n"
        )
        assert replies == [*UP_TO_DATA, b"250 2.0.0 Message accepted for delivery"], variant
        expected.append(b"x\r\n\r\nfirst\r\n.\r\n" + SMUGGLED)
        assert bodies(server, ALICE) == expected
    for variant in (b"\r.\r", b"\r\n.\r", b"\r.\r\n"):
        replies = smtp_raw(
            server, OPEN + b"Subject: x\r\n\r\nfirst" + variant + SMUGGLED + b".\r\n"
        )
        assert replies == [*UP_TO_DATA, b"550 5.6.0 Bare CR or LF in message data"], variant
    # An LF-only client (CRLF only in the final dot line): stored with CRLF.
    replies = smtp_raw(server, OPEN + b"Subject: lf\nTo: alice\n\nbody\n..dot\r\n.\r\n")
    assert replies == [*UP_TO_DATA, b"250 2.0.0 Message accepted for delivery"]
    expected.append(b"lf\r\nTo: alice\r\n\r\nbody\r\n..dot\r\n")
    assert sorted(bodies(server, ALICE)) == sorted(expected)
    assert server.messages(BOB) == []


def test_long_text_line_and_big_header_refused(server: Server) -> None:
    """A 16385-octet DATA line is 500 5.6.0 and a 300 KB header section 552 5.3.4; nothing is
    stored."""
    line = b"a" * 16385
    replies = smtp_raw(server, OPEN + b"Subject: x\r\n\r\n" + line + b"\r\n" + SMUGGLED + b".\r\n")
    assert replies == [*UP_TO_DATA, b"500 5.6.0 Message text line too long"]
    header = b"Subject: x\r\n" + b"X-Big: " + b"h" * 1000 + b"\r\n"
    replies = smtp_raw(server, OPEN + header * 300 + b"\r\nbody\r\n.\r\n")
    assert replies == [*UP_TO_DATA, b"552 5.3.4 Message header section too large"]
    assert server.messages(ALICE) == [] and server.messages(BOB) == []
    ok = b"Subject: x\r\n\r\n" + b"a" * 16384 + b"\r\n"
    replies = smtp_raw(server, OPEN + ok + b".\r\n")
    assert replies == [*UP_TO_DATA, b"250 2.0.0 Message accepted for delivery"]
    assert bodies(server, ALICE) == [ok.split(b"Subject: ", 1)[1]]


def test_imap_sessions_per_user_and_ip(normalizing: Server) -> None:
    """imap_max_connections_per_user: a login past the limit from the same user and IP is NO
    [UNAVAILABLE]; another user counts apart and a logout frees a slot."""
    server = normalizing

    def connect() -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())

    first, second, third = connect(), connect(), connect()
    first.login(ALICE, PASSWORDS[ALICE])
    # 143 + STARTTLS counts together with 993.
    plain = imaplib.IMAP4("127.0.0.1", server.ports["imap"])
    plain.starttls(client_tls())
    plain.login(ALICE, PASSWORDS[ALICE])
    with pytest.raises(imaplib.IMAP4.error) as refused:
        third.login(ALICE, PASSWORDS[ALICE])
    assert refused.value.args == (
        b"[UNAVAILABLE] Maximum number of connections from user+IP exceeded",
    )
    second.login(BOB, PASSWORDS[BOB])  # another user is counted apart
    plain.logout()
    # The slot is free once the server has seen the close (with [server] workers: once the
    # process that served it has told the parent, which `connections` waits for).
    deadline = time.monotonic() + 30
    while control.connections(server.data_dir / "control")["imap_sessions"] != 2:
        assert time.monotonic() < deadline, "the LOGOUT's session still counted"
        time.sleep(0.05)
    third.login(ALICE, PASSWORDS[ALICE])  # a slot was freed
    assert third.select("INBOX")[0] == "OK"
    for session in (first, second, third):
        session.logout()
    log = server.log.read_text()
    assert "imap: refused a login: user=alice@example.test ip=127.0.0.1 has 2 sessions open" in log
