"""The per-user submission rate end to end (issue 14): over C{[limits]
submission_messages_per_hour} MAIL gets 451 4.7.1, over C{submission_recipients_per_hour}
RCPT does, with a log line naming the user and the client IP."""

from __future__ import annotations

import smtplib
from pathlib import Path

from e2e_server import PASSWORDS, Server, client_tls
from test_e2e_antispam_gates import fail2ban_matches

ALICE, BOB = "alice@example.test", "bob@example.test"
REFUSAL = (451, b"4.7.1 Sending rate limit exceeded, try again later")


def start(tmp_path: Path, messages: int, recipients: int) -> Server:
    server = Server(tmp_path)
    for address, password in PASSWORDS.items():
        server.add_user(address, password)
    server.config.write_text(
        server.config.read_text().replace(
            "[limits]\n",
            f"[limits]\nsubmission_messages_per_hour = {messages}\n"
            f"submission_recipients_per_hour = {recipients}\n",
        )
    )
    server.start()
    return server


def message(n: int) -> bytes:
    return f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: rate {n}\r\n\r\nhi\r\n".encode()


def test_messages_per_hour(tmp_path: Path) -> None:
    """Two messages an hour: the third MAIL FROM gets 451 4.7.1; the log names the user and IP."""
    server = start(tmp_path, messages=2, recipients=100)
    try:
        with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
            s.login(BOB, PASSWORDS[BOB])
            s.sendmail(BOB, [ALICE], message(1))
            s.sendmail(BOB, [ALICE], message(2))
            assert s.mail(BOB) == REFUSAL
        assert len(server.wait_for_messages(ALICE, 2)) == 2
        log = server.log.read_text()
        assert f"submission rate: user {BOB} from [127.0.0.1] over 2 messages per hour" in log
        assert fail2ban_matches(server.log) in (None, 1)
    finally:
        server.stop()


def test_recipients_per_hour(tmp_path: Path) -> None:
    """Three recipients an hour: the fourth RCPT gets 451 4.7.1, the others are delivered."""
    server = start(tmp_path, messages=100, recipients=3)
    try:
        with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
            s.login(BOB, PASSWORDS[BOB])
            s.mail(BOB)
            for _ in range(3):
                assert s.rcpt(ALICE)[0] == 250
            assert s.rcpt(BOB) == REFUSAL
        log = server.log.read_text()
        assert f"submission rate: user {BOB} from [127.0.0.1] over 3 recipients per hour" in log
    finally:
        server.stop()
