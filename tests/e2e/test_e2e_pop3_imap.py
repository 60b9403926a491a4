"""Reading mail end to end: IMAP (143 STARTTLS, 993) and POP3 (110 STLS, 995) with imaplib,
imapclient and poplib, against what SMTP delivered; flags, UIDs across restart, durability."""

from __future__ import annotations

import imaplib
import os
import poplib
import signal
import smtplib
import time

import imapclient
import pytest
from e2e_server import PASSWORDS, Server, client_tls, deliver

ALICE, BOB = "alice@example.test", "bob@example.test"


def test_imap_starttls_login_and_read(server: Server) -> None:
    """RFC 3501 §6.2.3: IMAP on 143 has LOGINDISABLED and refuses LOGIN until STARTTLS; then the
    delivered message is read byte for byte."""
    msg = deliver(server, ALICE, "first")
    (path,) = server.messages(ALICE)
    on_disk = path.read_bytes()
    m = imaplib.IMAP4("127.0.0.1", server.ports["imap"])
    try:
        assert "LOGINDISABLED" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            m.login(ALICE, PASSWORDS[ALICE])
        m.starttls(ssl_context=client_tls())
        assert m.login(ALICE, PASSWORDS[ALICE])[0] == "OK"
        typ, data = m.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        assert data[0][1] == on_disk
        assert on_disk.endswith(msg)
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


def test_imaps_flags_land_in_file_names_and_uids_survive_restart(server: Server) -> None:
    """Flags set over IMAPS land in the Maildir file names, and UIDs and UIDVALIDITY survive a
    restart."""
    deliver(server, ALICE, "one")
    deliver(server, ALICE, "two")
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        info = c.select_folder("INBOX")
        uidvalidity = info[b"UIDVALIDITY"]
        uids = c.search("ALL")
        assert len(uids) == 2
        c.add_flags([uids[0]], [imapclient.SEEN, imapclient.FLAGGED])
        c.add_flags([uids[1]], [imapclient.DELETED])
    names = sorted(p.name for p in server.messages(ALICE))
    assert [n.split(":2,")[1] for n in names] == ["FS", "T"] or sorted(
        n.split(":2,")[1] for n in names
    ) == ["FS", "T"]
    assert all(p.parent.name == "cur" for p in server.messages(ALICE))
    server.restart()
    deliver(server, ALICE, "three")
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        info = c.select_folder("INBOX")
        assert info[b"UIDVALIDITY"] == uidvalidity
        new_uids = c.search("ALL")
        assert new_uids[:2] == uids and len(new_uids) == 3 and new_uids[2] > uids[1]
        flags = c.get_flags(new_uids)
        assert set(flags[uids[0]]) == {imapclient.SEEN, imapclient.FLAGGED}


def test_pop3_stls_and_pop3s(server: Server) -> None:
    """RFC 2595: POP3 on 110 refuses USER/PASS until STLS; RETR and DELE then work, and on 995
    too."""
    msg1 = deliver(server, BOB, "pop one")
    msg2 = deliver(server, BOB, "pop two")
    p = poplib.POP3("127.0.0.1", server.ports["pop3"])
    try:
        assert "STLS" in p.capa()
        with pytest.raises(poplib.error_proto):
            p.user(BOB)
            p.pass_(PASSWORDS[BOB])
        p.stls(context=client_tls())
        p.user(BOB)
        p.pass_(PASSWORDS[BOB])
        assert p.stat()[0] == 2
        uidl = p.uidl()[1]
        lines = p.retr(1)[1]
        assert b"\r\n".join(lines).endswith(msg1.rstrip(b"\r\n"))
        p.dele(1)
        p.quit()
    except BaseException:
        p.close()
        raise
    assert len(server.messages(BOB)) == 1
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
    try:
        p.user(BOB)
        p.pass_(PASSWORDS[BOB])
        assert p.stat()[0] == 1
        assert p.uidl()[1][0].split()[1] == uidl[1].split()[1]  # UIDL stable
        assert b"\r\n".join(p.retr(1)[1]).endswith(msg2.rstrip(b"\r\n"))
        p.dele(1)
        p.close()  # no QUIT: nothing is deleted (RFC 1939 §6)
    except BaseException:
        p.close()
        raise
    assert len(server.messages(BOB)) == 1


def test_password_changed_with_cli_works_everywhere_at_once(server: Server) -> None:
    """A password changed with the CLI applies at once: the old one fails and the new one logs
    in."""
    server.cli("user", "passwd", ALICE, "--password-stdin", stdin="new-pass-3\n")
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    ) as c:
        with pytest.raises(imapclient.exceptions.LoginError):
            c.login(ALICE, PASSWORDS[ALICE])
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    ) as c:
        c.login(ALICE, "new-pass-3")
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
    p.user(ALICE)
    p.pass_("new-pass-3")
    p.quit()
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        s.login(ALICE, "new-pass-3")


def test_acknowledged_message_survives_kill_9(server: Server) -> None:
    """A message acknowledged with 250 survives kill -9 of the server and is readable after a
    restart."""
    msg = deliver(server, ALICE, "durable")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=10)
    (f,) = server.messages(ALICE)
    assert f.read_bytes().endswith(msg)
    server.start()
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        assert c.select_folder("INBOX")[b"EXISTS"] == 1


def test_imap_append_create_and_folders_on_disk(server: Server) -> None:
    """IMAP CREATE and APPEND make Maildir++ folders (with maildirfolder) holding the appended
    bytes; special-use folders exist at first login."""
    with imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    ) as c:
        c.login(ALICE, PASSWORDS[ALICE])
        c.create_folder("Lists.Work")
        assert c.folder_exists("Sent")  # special-use folders are created at first login
        c.append("Sent", b"Subject: sent copy\r\n\r\nhi\r\n", flags=[imapclient.SEEN])
        c.append("Sent", b"Subject: no flags\r\n\r\nhi\r\n")
    files = server.messages(ALICE, "Sent")
    assert sorted(f.read_bytes() for f in files) == [
        b"Subject: no flags\r\n\r\nhi\r\n",
        b"Subject: sent copy\r\n\r\nhi\r\n",
    ]
    assert (server.maildir(ALICE, "Sent") / "maildirfolder").exists()
    assert (server.maildir(ALICE, "Lists.Work") / "maildirfolder").exists()


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors")
def test_connections_are_freed_after_logout_on_every_tls_port(server: Server) -> None:
    """Regression: IMAPS LOGOUT left the socket open forever (reading stayed paused, so the
    client's TLS close was never seen); 150 logins leaked 150 descriptors."""
    assert server.proc is not None
    pid = server.proc.pid
    deliver(server, ALICE, "fd check")
    for _ in range(3):  # warm up (thread pool, store connections, the kept index connection)
        with imapclient.IMAPClient(
            "127.0.0.1", port=server.ports["imaps"], ssl_context=client_tls()
        ) as c:
            c.login(ALICE, PASSWORDS[ALICE])
            c.select_folder("INBOX")
    before = _open_fds(pid)
    for _ in range(20):
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        m.login(ALICE, PASSWORDS[ALICE])
        m.select("INBOX")
        m.logout()
        m = imaplib.IMAP4("127.0.0.1", server.ports["imap"])
        m.starttls(ssl_context=client_tls())
        m.logout()
        p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
        p.quit()
    deadline = time.monotonic() + 5
    while _open_fds(pid) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _open_fds(pid) <= before + 2
