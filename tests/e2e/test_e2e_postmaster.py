"""postmaster@ every local domain, including one added while the server runs (RFC 5321 §4.5.1)."""

from __future__ import annotations

import smtplib

from e2e_server import PASSWORDS, Server, client_tls

REPORT = (
    b"From: dmarc-reports@elsewhere.test\r\n"
    b"To: postmaster@new.test\r\n"
    b"Subject: Report Domain: new.test\r\n"
    b"Message-ID: <report-1@elsewhere.test>\r\n"
    b"\r\n"
    b"aggregate report\r\n"
)


def _body(path: object) -> bytes:
    """A delivered file without its Return-Path and Received trace headers."""
    data = path.read_bytes()  # type: ignore[attr-defined]
    return data[data.index(b"From: dmarc-reports@") :]


def test_postmaster_of_a_domain_added_while_running(server: Server) -> None:
    """RFC 5321 §4.5.1: postmaster@ of a domain added by the CLI while the server runs is
    accepted in any case and delivered to the domain's first user (no alias defined), to the
    server's first user when the domain has no user, and to the postmaster alias once one is
    defined (the DMARC rua address `dns-records` prints)."""
    server.cli("domain", "add", "new.test")
    server.cli("domain", "add", "empty.test")
    server.add_user("carol@new.test", "carol-secret-3")
    server.add_user("dave@new.test", "dave-secret-4")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo("client.elsewhere.test")
        assert s.mail("dmarc-reports@elsewhere.test") == (250, b"2.1.0 Sender OK")
        assert s.rcpt("PostMaster@New.Test") == (250, b"2.1.5 Recipient OK")
        assert s.rcpt("postmaster@empty.test") == (250, b"2.1.5 Recipient OK")
        assert s.rcpt("nobody@new.test") == (550, b"5.1.1 No such user here")
        assert s.data(REPORT)[0] == 250
    (carol,) = server.wait_for_messages("carol@new.test", 1)
    (alice,) = server.wait_for_messages("alice@example.test", 1)
    assert _body(carol) == REPORT
    assert _body(alice) == REPORT
    assert server.messages("dave@new.test") == []

    server.cli("alias", "add", "postmaster@new.test", "dave@new.test")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo("client.elsewhere.test")
        s.sendmail("dmarc-reports@elsewhere.test", ["postmaster@new.test"], REPORT)
    (dave,) = server.wait_for_messages("dave@new.test", 1)
    assert _body(dave) == REPORT
    assert len(server.messages("carol@new.test")) == 1


def test_postmaster_from_submission_to_a_new_domain(server: Server) -> None:
    """RFC 5321 §4.5.1: a local user submitting on 587 to postmaster@ a domain added while
    the server runs is accepted and delivered to that domain's first user."""
    server.cli("domain", "add", "new.test")
    server.add_user("carol@new.test", "carol-secret-3")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"]) as s:
        s.ehlo("client")
        s.starttls(context=client_tls())
        s.ehlo("client")
        s.login("alice@example.test", PASSWORDS["alice@example.test"])
        assert s.mail("alice@example.test") == (250, b"2.1.0 Sender OK")
        assert s.rcpt("postmaster@new.test") == (250, b"2.1.5 Recipient OK")
        assert s.data(b"From: alice@example.test\r\nSubject: hi\r\n\r\nhello\r\n")[0] == 250
    (carol,) = server.wait_for_messages("carol@new.test", 1)
    assert carol.read_bytes().endswith(b"\r\nSubject: hi\r\n\r\nhello\r\n")
