"""The spam filter end to end (issue 14): the real server with C{[antispam] rspamd} pointing at
the real rspamd (rspamd_server.py), mail sent to port 25 with smtplib, the result read over
IMAP and on disk; learning checked with rspamd's own C{/stat}."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import imapclient
import pytest
from e2e_server import PASSWORDS, Server, client_tls, free_ports
from rspamd_server import Rspamd, available

ALICE = "alice@example.test"
BOB = "bob@example.test"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def message(subject: str, extra: str = "", body: str = "") -> bytes:
    text = (
        "From: Sender <sender@elsewhere.test>\r\n"
        f"To: Alice <{ALICE}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {formatdate()}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@elsewhere.test>\r\n"
        f"{extra}"
        "\r\n"
        f"{body or 'Hello Alice, the minutes of the meeting are below as promised.'}\r\n"
    )
    return text.encode()


def send(server: Server, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo("client.elsewhere.test")
        s.sendmail("sender@elsewhere.test", [ALICE], data)


def stored(server: Server, folder: str, subject: str) -> list[bytes]:
    return [
        p.read_bytes()
        for p in server.messages(ALICE, folder)
        if f"Subject: {subject}\r\n".encode() in p.read_bytes()
    ]


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rspamd]:
    spam = Rspamd(tmp_path_factory.mktemp("rspamd"))
    try:
        spam.start()
        yield spam
    finally:
        spam.stop()


@pytest.fixture(scope="module")
def server(rspamd: Rspamd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server"))
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    srv.config.write_text(
        srv.config.read_text()
        + f'\n[antispam]\nrspamd = "{rspamd.url}"\nrspamd_controller = "{rspamd.controller}"\n'
        + "check_submission = true\n"
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_gtube_is_rejected_after_data_and_nothing_stored(server: Server) -> None:
    """rspamd's reject (GTUBE) -> 550 5.7.1 after the final dot; no copy anywhere."""
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(server, message("gtube test", body=GTUBE))
    assert (e.value.smtp_code, e.value.smtp_error) == (550, b"5.7.1 Message rejected as spam")
    assert stored(server, "", "gtube test") == []
    assert stored(server, "Junk", "gtube test") == []


def test_soft_reject_is_451_and_nothing_stored(server: Server) -> None:
    """rspamd's soft reject -> 451 4.7.1 (the client tries again later, RFC 5321 §4.2.5)."""
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(server, message("later test", extra="X-Test-Later: yes\r\n"))
    assert (e.value.smtp_code, e.value.smtp_error) == (451, b"4.7.1 Try again later")
    assert stored(server, "", "later test") == []
    assert stored(server, "Junk", "later test") == []


def test_add_header_goes_to_junk_with_rspamd_headers(server: Server) -> None:
    """rspamd's add header -> 250, the message in Junk (\\Junk over IMAP) with X-Spam: Yes
    and X-Spamd-Result naming the symbol; the body unchanged; nothing in INBOX."""
    data = message("spammy test", extra="X-Test-Spam: yes\r\nX-Spam: No (forged)\r\n")
    send(server, data)
    (copy,) = server.wait_for_messages(ALICE, 1, "Junk") and stored(server, "Junk", "spammy test")
    header, _, body = copy.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    assert lines[0] == b"Return-Path: <sender@elsewhere.test>"
    assert lines[1] == b"Delivered-To: " + ALICE.encode()  # every local copy's, at delivery
    assert lines[2] == b"X-Spam: Yes"
    assert lines[3].startswith(b"X-Spamd-Result: default: True [")
    assert b"TWISTEDMAIL_TEST_SPAM(10.00)" in header
    assert b"X-Spam: No" not in header  # rspamd's remove_headers: a forged verdict goes
    assert body == data.partition(b"\r\n\r\n")[2]
    assert stored(server, "", "spammy test") == []
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        junk = [f for f in c.list_folders() if f[2] == "Junk"]
        assert junk and b"\\Junk" in junk[0][0]
        c.select_folder("Junk")
        uids = c.search(["SUBJECT", "spammy test"])
        fetched = c.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (X-SPAM)]"])
        assert fetched[uids[0]][b"BODY[HEADER.FIELDS (X-SPAM)]"] == b"X-Spam: Yes\r\n\r\n"


def test_no_action_goes_to_inbox_unchanged(server: Server) -> None:
    """rspamd's no action -> INBOX, no X-Spam header added."""
    send(server, message("clean test"))
    deadline = time.monotonic() + 10
    while not stored(server, "", "clean test") and time.monotonic() < deadline:
        time.sleep(0.05)
    (copy,) = stored(server, "", "clean test")
    assert b"\r\nX-Spam" not in copy and not copy.startswith(b"X-Spam")


def learned(rspamd: Rspamd, above: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        count = int(str(rspamd.stat()["learned"]))
        if count > above or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def test_moves_into_and_out_of_junk_teach_rspamd(server: Server, rspamd: Rspamd) -> None:
    """MOVE into Junk -> rspamd learnspam, MOVE out of Junk -> learnham: rspamd's /stat
    counts each."""
    body = "Cheap watches and pills, the offer of the century for our valued customers today"
    send(server, message("learn test", body=body))
    deadline = time.monotonic() + 10
    while not stored(server, "", "learn test") and time.monotonic() < deadline:
        time.sleep(0.05)
    before = int(str(rspamd.stat()["learned"]))
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        c.select_folder("INBOX")
        uids = c.search(["SUBJECT", "learn test"])
        c.move(uids, "Junk")
        after_spam = learned(rspamd, before)
        assert after_spam == before + 1
        c.select_folder("Junk")
        uids = c.search(["SUBJECT", "learn test"])
        c.move(uids, "INBOX")
        assert learned(rspamd, after_spam) == after_spam + 1
    log = (server.root / "twistd.log").read_text()
    assert f"rspamd learnspam for {ALICE}" in log
    assert f"rspamd learnham for {ALICE}" in log


def test_rspamd_down_accepts_mail_untouched(tmp_path: Path) -> None:
    """rspamd not answering: 250, the message in INBOX unchanged, the failure logged."""
    (closed,) = free_ports(1)
    srv = Server(tmp_path)
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.config.write_text(
        srv.config.read_text() + f'\n[antispam]\nrspamd = "http://127.0.0.1:{closed}"\n'
    )
    srv.start()
    try:
        send(srv, message("down test", extra="X-Test-Spam: yes\r\n"))
        (copy,) = srv.wait_for_messages(ALICE, 1)
        assert b"X-Spam" not in copy.read_bytes().partition(b"\r\n\r\n")[0].replace(
            b"X-Test-Spam", b""
        )
        log = srv.log.read_text()
        assert "rspamd check of" in log and "accepted unchecked" in log
    finally:
        srv.stop()


def test_rspamd_garbage_accepts_mail_untouched(tmp_path: Path) -> None:
    """rspamd answering something that is not its JSON: 250, INBOX, logged."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    srv = Server(tmp_path)
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.config.write_text(
        srv.config.read_text() + f'\n[antispam]\nrspamd = "http://127.0.0.1:{port}"\n'
    )
    srv.start()
    try:
        import threading

        def answer() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")
            conn.close()

        t = threading.Thread(target=answer, daemon=True)
        t.start()
        send(srv, message("garbage test"))
        t.join(30)
        (copy,) = srv.wait_for_messages(ALICE, 1)
        assert b"X-Spam" not in copy.read_bytes()
        assert "reply is not JSON" in srv.log.read_text()
    finally:
        srv.stop()
        listener.close()


def test_sieve_runs_after_the_verdict(server: Server) -> None:
    """A user's Sieve script sees rspamd's X-Spam header (it runs after the verdict) and
    files as it says; a plain keep of spam goes to Junk."""
    home = server.maildir(BOB)
    (home / "sieve").mkdir(parents=True, exist_ok=True)
    (home / "sieve" / "main.sieve").write_text(
        'require ["fileinto", "mailbox"];\n'
        'if allof (header :is "X-Spam" "Yes", header :contains "Subject" "caught") {\n'
        '  fileinto :create "Caught";\n'
        "}\n"
    )
    (home / ".dovecot.sieve").symlink_to("sieve/main.sieve")
    for subject in ("caught test", "kept test"):
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
            s.sendmail(
                "sender@elsewhere.test",
                [BOB],
                message(subject, extra="X-Test-Spam: yes\r\n").replace(
                    ALICE.encode(), BOB.encode()
                ),
            )
    (caught,) = server.wait_for_messages(BOB, 1, "Caught")
    assert b"Subject: caught test\r\n" in caught.read_bytes()
    assert b"\r\nX-Spam: Yes\r\n" in caught.read_bytes()
    (kept,) = server.wait_for_messages(BOB, 1, "Junk")
    assert b"Subject: kept test\r\n" in kept.read_bytes()
    assert server.messages(BOB) == []


def test_submission_checked_with_check_submission(server: Server) -> None:
    """[antispam] check_submission: GTUBE submitted on 465 by an authenticated user is
    refused with 550 5.7.1 (a compromised account); nothing stored."""
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        s.login(BOB, PASSWORDS[BOB])
        with pytest.raises(smtplib.SMTPDataError) as e:
            data = message("submitted gtube", body=GTUBE)
            s.sendmail(BOB, [ALICE], data.replace(b"sender@elsewhere.test", BOB.encode()))
    assert (e.value.smtp_code, e.value.smtp_error) == (550, b"5.7.1 Message rejected as spam")
    assert stored(server, "", "submitted gtube") == []


def test_copy_into_junk_teaches_spam(server: Server, rspamd: Rspamd) -> None:
    """UID COPY into Junk is learnt as spam too (the message stays in INBOX)."""
    body = "Limited time offer on replica handbags, reply now to claim your discount voucher"
    send(server, message("copy learn test", body=body))
    deadline = time.monotonic() + 10
    while not stored(server, "", "copy learn test") and time.monotonic() < deadline:
        time.sleep(0.05)
    before = int(str(rspamd.stat()["learned"]))
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        c.select_folder("INBOX")
        c.copy(c.search(["SUBJECT", "copy learn test"]), "Junk")
        assert learned(rspamd, before) == before + 1


def test_rspamd_slow_accepts_mail_untouched(tmp_path: Path) -> None:
    """rspamd taking longer than [antispam] timeout (it never answers): 250, INBOX, logged."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    port = listener.getsockname()[1]
    srv = Server(tmp_path)
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.config.write_text(
        srv.config.read_text() + f'\n[antispam]\nrspamd = "http://127.0.0.1:{port}"\ntimeout = 1\n'
    )
    srv.start()
    try:
        send(srv, message("slow test", extra="X-Test-Spam: yes\r\n"))
        (copy,) = srv.wait_for_messages(ALICE, 1)
        assert b"\r\nX-Spam:" not in copy.read_bytes()
        assert "failed (1 so far): no answer in 1 s; accepted unchecked" in srv.log.read_text()
    finally:
        srv.stop()
        listener.close()
