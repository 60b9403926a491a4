"""SMTP on 25 and submission on 587/465, end to end with smtplib and swaks."""

from __future__ import annotations

import shutil
import smtplib
import subprocess

import pytest
from e2e_server import PASSWORDS, Server, client_tls

MESSAGE = (
    b"From: Stranger <stranger@elsewhere.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: hello from outside\r\n"
    b"Message-ID: <e2e-1@elsewhere.test>\r\n"
    b"\r\n"
    b"Hi Alice,\r\n"
    b".leading dot line\r\n"
    b"bye\r\n"
)


def _split_trace(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(Return-Path line, Received header, the rest) of a delivered file, whose
    Delivered-To (after Return-Path) names alice."""
    return_path, rest = data.split(b"\r\n", 1)
    delivered_to, rest = rest.split(b"\r\n", 1)
    assert delivered_to == b"Delivered-To: alice@example.test"
    assert rest.startswith(b"Received: ")
    end = rest.index(b"\r\n", 0)
    while rest[end + 2 : end + 3] in (b" ", b"\t"):
        end = rest.index(b"\r\n", end + 2)
    return return_path + b"\r\n", rest[: end + 2], rest[end + 2 :]


def test_stranger_on_port_25_lands_in_inbox_exact_bytes(server: Server) -> None:
    """RFC 5321: a stranger's message on port 25 (EHLO listing PIPELINING, SIZE, 8BITMIME...)
    lands in the inbox byte for byte under the trace headers."""
    with smtplib.SMTP(
        "127.0.0.1", server.ports["smtp"], local_hostname="client.elsewhere.test"
    ) as s:
        code, caps = s.ehlo()
        assert code == 250
        for ext in (
            b"PIPELINING",
            b"SIZE 1048576",
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
            b"STARTTLS",
        ):
            assert ext in caps.split(b"\n"), caps
        assert b"AUTH" not in caps
        s.sendmail("stranger@elsewhere.test", ["alice@example.test"], MESSAGE)
    files = server.messages("alice@example.test")
    assert len(files) == 1
    assert files[0].parent.name == "new"
    data = files[0].read_bytes()
    return_path, received, body = _split_trace(data)
    assert return_path == b"Return-Path: <stranger@elsewhere.test>\r\n"
    assert received.startswith(b"Received: from client.elsewhere.test (")
    assert b"by mail.example.test" in received
    assert b"for <alice@example.test>" in received
    # smtplib dot-stuffs ".leading" on the wire; the server must store it unstuffed.
    assert body == MESSAGE
    assert files[0].name.endswith(f",S={len(data)},W={len(data)}")


def test_recipient_checks_at_rcpt(server: Server) -> None:
    """On port 25 an unknown local user is 550 5.1.1 and a remote domain 554 5.7.1 at RCPT; a
    local user in any case is accepted."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo("client.elsewhere.test")
        assert s.mail("stranger@elsewhere.test") == (250, b"2.1.0 Sender OK")
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")
        assert s.rcpt("someone@gmail.test") == (554, b"5.7.1 Relay access denied")
        assert s.rcpt("ALICE@Example.Test")[0] == 250
    assert server.messages("alice@example.test") == []


def test_unauthenticated_submission_is_refused(server: Server) -> None:
    """RFC 6409 §4.3 + RFC 4954 §4: 587 offers AUTH only after STARTTLS, and MAIL without AUTH is
    530 5.7.0."""
    with smtplib.SMTP("127.0.0.1", server.ports["submission"]) as s:
        s.ehlo("client")
        code, caps = s.ehlo("client")
        assert b"AUTH" not in caps  # not before TLS
        s.starttls(context=client_tls())
        code, caps = s.ehlo("client")
        assert b"AUTH PLAIN LOGIN" in caps
        assert s.mail("bob@example.test") == (530, b"5.7.0 Authentication required")


def test_bob_submits_on_587_with_starttls(server: Server) -> None:
    """A user submits on 587 after STARTTLS and AUTH; the message arrives byte for byte under
    Return-Path and Received."""
    msg = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: via 587\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", server.ports["submission"]) as s:
        s.starttls(context=client_tls())
        s.login("bob@example.test", PASSWORDS["bob@example.test"])
        s.sendmail("bob@example.test", ["alice@example.test"], msg)
    (f,) = server.messages("alice@example.test")
    data = f.read_bytes()
    assert data.startswith(
        b"Return-Path: <bob@example.test>\r\nDelivered-To: alice@example.test\r\nReceived: "
    )
    assert data.endswith(msg)
    assert b"with ESMTPSA" in data


def test_bob_submits_on_465_implicit_tls(server: Server) -> None:
    """RFC 8314: a user submits on 465 (implicit TLS, no STARTTLS offered); the message arrives
    byte for byte."""
    msg = (
        b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: via 465\r\n\r\nhello 465\r\n"
    )
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        code, caps = s.ehlo("client")
        assert b"STARTTLS" not in caps
        s.login("bob@example.test", PASSWORDS["bob@example.test"])
        s.sendmail("bob@example.test", ["alice@example.test"], msg)
    (f,) = server.messages("alice@example.test")
    assert f.read_bytes().endswith(msg)


def test_submission_sender_and_remote_recipient_policy(server: Server) -> None:
    """RFC 6409 §6.1: on 465 a MAIL FROM the user does not own is 553 5.7.1; its own address is
    accepted."""
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        s.login("bob@example.test", PASSWORDS["bob@example.test"])
        assert s.mail("alice@example.test") == (
            553,
            b"5.7.1 Sender address not owned by authenticated user",
        )
        s.rset()
        assert s.mail("bob@example.test")[0] == 250
        # Remote recipients go to the outbound queue (tests/e2e/test_e2e_outbound.py).
        assert s.rcpt("friend@remote.test") == (250, b"2.1.5 Recipient OK")


def test_wrong_password_is_535(server: Server) -> None:
    """RFC 4954 §6: a wrong password on 465 is 535."""
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("bob@example.test", "wrong")
        assert e.value.smtp_code == 535


def test_alias_expands_at_delivery(server: Server) -> None:
    """An alias added with the CLI expands at delivery: each member gets one copy."""
    server.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("x@elsewhere.test", ["team@example.test"], b"Subject: team\r\n\r\nhi all\r\n")
    assert len(server.messages("alice@example.test")) == 1
    assert len(server.messages("bob@example.test")) == 1


@pytest.mark.skipif(
    shutil.which("swaks") is None, reason="swaks is not installed (apt-get install swaks)"
)
def test_swaks_submission_with_starttls_auth(server: Server) -> None:
    """swaks submits on 587 with STARTTLS and AUTH and the message is delivered."""
    result = subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(server.ports["submission"]),
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "bob@example.test",
            "--auth-password",
            PASSWORDS["bob@example.test"],
            "--from",
            "bob@example.test",
            "--to",
            "alice@example.test",
            "--header",
            "Subject: swaks test",
            "--body",
            "sent by swaks",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    (f,) = server.messages("alice@example.test")
    assert b"Subject: swaks test\r\n" in f.read_bytes()
