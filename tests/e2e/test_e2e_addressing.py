"""Delivery routing against the real server: subaddresses (RFC 5233), @domain catch-all,
abuse@ (RFC 2142), and [delivery] plus_folder / recipient_delimiter."""

from __future__ import annotations

import imaplib
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, running

BODY = b"From: sender@elsewhere.test\r\nSubject: hi\r\n\r\nhello\r\n"


def _send(server: Server, rcpt: str) -> tuple[int, bytes]:
    """MAIL, RCPT C{rcpt} on port 25; DATA when accepted.  The RCPT reply."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo("client.elsewhere.test")
        assert s.mail("sender@elsewhere.test") == (250, b"2.1.0 Sender OK")
        reply = s.rcpt(rcpt)
        if reply[0] == 250:
            assert s.data(BODY)[0] == 250
        return reply


def _configured(tmp_path: Path, delivery: str) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.config.write_text(srv.config.read_text() + f"\n[delivery]\n{delivery}")
    with running(srv):
        yield srv


@pytest.fixture
def plus_folder_server(tmp_path: Path) -> Iterator[Server]:
    yield from _configured(tmp_path, "plus_folder = true\n")


@pytest.fixture
def no_delimiter_server(tmp_path: Path) -> Iterator[Server]:
    yield from _configured(tmp_path, 'recipient_delimiter = ""\n')


def test_subaddress_on_port_25(server: Server) -> None:
    """RFC 5233: alice+lists@ reaches alice's INBOX; the envelope keeps the full address."""
    assert _send(server, "alice+lists@example.test") == (250, b"2.1.5 Recipient OK")
    (stored,) = server.wait_for_messages("alice@example.test", 1)
    data = stored.read_bytes()
    assert b"\tfor <alice+lists@example.test>; " in data
    assert data.endswith(b"\r\n" + BODY)
    assert _send(server, "nobody+lists@example.test") == (550, b"5.1.1 No such user here")


def test_explicit_user_with_delimiter_wins(server: Server) -> None:
    """A user whose name holds the delimiter gets its own mail (full address first)."""
    server.add_user("alice+work@example.test", "work-secret-9")
    assert _send(server, "alice+work@example.test") == (250, b"2.1.5 Recipient OK")
    assert len(server.wait_for_messages("alice+work@example.test", 1)) == 1
    assert server.messages("alice@example.test") == []


def test_submission_sender_may_use_own_subaddress(server: Server) -> None:
    """RFC 6409 §6.1 sender check: alice may send as alice+news@ (envelope and From:), not
    as bob+news@."""
    with smtplib.SMTP("127.0.0.1", server.ports["submission"]) as s:
        s.ehlo("client")
        s.starttls(context=client_tls())
        s.ehlo("client")
        s.login("alice@example.test", PASSWORDS["alice@example.test"])
        refused = (553, b"5.7.1 Sender address not owned by authenticated user")
        assert s.mail("bob+news@example.test") == refused
        assert s.mail("alice+news@example.test") == (250, b"2.1.0 Sender OK")
        assert s.rcpt("bob+inbox@example.test") == (250, b"2.1.5 Recipient OK")
        message = b"From: alice+news@example.test\r\nSubject: news\r\n\r\nhello\r\n"
        assert s.data(message)[0] == 250
    (stored,) = server.wait_for_messages("bob@example.test", 1)
    assert stored.read_bytes().endswith(b"\r\n" + message)


def test_catch_all(server: Server) -> None:
    """A @domain alias takes unknown local parts of the domain instead of 550 5.1.1; users,
    aliases and subaddresses win; alias del restores 550."""
    assert _send(server, "whoever@example.test") == (550, b"5.1.1 No such user here")
    added = server.cli("alias", "add", "@example.test", "bob@example.test")
    assert added.stdout == "@example.test -> bob@example.test\n"
    assert "@example.test bob@example.test\n" in server.cli("alias", "list").stdout
    assert _send(server, "whoever@example.test") == (250, b"2.1.5 Recipient OK")
    assert len(server.wait_for_messages("bob@example.test", 1)) == 1
    assert _send(server, "alice@example.test") == (250, b"2.1.5 Recipient OK")
    assert _send(server, "alice+x@example.test") == (250, b"2.1.5 Recipient OK")
    assert len(server.wait_for_messages("alice@example.test", 2)) == 2
    assert len(server.messages("bob@example.test")) == 1
    deleted = server.cli("alias", "del", "@example.test")
    assert deleted.stdout == "deleted alias @example.test\n"
    assert _send(server, "whoever@example.test") == (550, b"5.1.1 No such user here")


def test_catch_all_refusals(server: Server) -> None:
    """The CLI refuses a wildcard, a bare @ and a remote domain with one line, exit 1."""
    wildcard = "invalid address '*@example.test': a catch-all is written @example.test"
    for bad, why in (
        ("*@example.test", wildcard),
        ("@", "invalid address '@': expected local@domain or @domain"),
        ("@@x", "invalid address '@@x': expected local@domain or @domain"),
        ("@remote.test", "remote.test is not a local domain; add it first"),
    ):
        result = server.cli("alias", "add", bad, "alice@example.test", check=False)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"twistedmail: error: {why}\n"


def test_abuse_reaches_the_postmaster(server: Server) -> None:
    """RFC 2142: abuse@ is accepted without an alias and goes where postmaster@ goes."""
    assert _send(server, "Abuse@example.test") == (250, b"2.1.5 Recipient OK")
    assert len(server.wait_for_messages("alice@example.test", 1)) == 1
    server.cli("alias", "add", "postmaster@example.test", "bob@example.test")
    assert _send(server, "abuse@example.test") == (250, b"2.1.5 Recipient OK")
    assert len(server.wait_for_messages("bob@example.test", 1)) == 1
    assert len(server.messages("alice@example.test")) == 1


def test_plus_folder(plus_folder_server: Server) -> None:
    """[delivery] plus_folder: alice+LISTS@ lands in her folder "Lists" (created over IMAP),
    alice+other@ (no such folder) in the INBOX."""
    server = plus_folder_server
    with imaplib.IMAP4("127.0.0.1", server.ports["imap"]) as imap:
        imap.starttls(ssl_context=client_tls())
        imap.login("alice@example.test", PASSWORDS["alice@example.test"])
        assert imap.create("Lists")[0] == "OK"
    assert _send(server, "alice+LISTS@example.test") == (250, b"2.1.5 Recipient OK")
    assert _send(server, "alice+other@example.test") == (250, b"2.1.5 Recipient OK")
    (filed,) = server.wait_for_messages("alice@example.test", 1, folder="Lists")
    assert b"\tfor <alice+lists@example.test>; " in filed.read_bytes()
    (inbox,) = server.wait_for_messages("alice@example.test", 1)
    assert b"\tfor <alice+other@example.test>; " in inbox.read_bytes()


def test_delimiter_off(no_delimiter_server: Server) -> None:
    """recipient_delimiter = "": alice+lists@ is an unknown user."""
    server = no_delimiter_server
    assert _send(server, "alice+lists@example.test") == (550, b"5.1.1 No such user here")
