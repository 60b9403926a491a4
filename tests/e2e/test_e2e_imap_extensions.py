"""IMAP extensions against the real server with imapclient (over 993): UIDPLUS (RFC 4315),
MOVE (RFC 6851), SPECIAL-USE (RFC 6154) + LIST-EXTENDED (RFC 5258), ID (RFC 2971),
ENABLE (RFC 5161), UNSELECT (RFC 3691), LITERAL+ (RFC 7888); state checked on disk."""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl

import imapclient
import pytest
from e2e_server import Server, client_tls, imap_client
from imapclient.imapclient import ARCHIVE, DRAFTS, JUNK, SENT, TRASH

ALICE = "alice@example.test"
EXTENSIONS = {
    b"UIDPLUS",
    b"MOVE",
    b"SPECIAL-USE",
    b"LIST-EXTENDED",
    b"ID",
    b"ENABLE",
    b"UNSELECT",
    b"LITERAL+",
    b"CHILDREN",
}


def deliver(server: Server, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for i in range(count):
            s.sendmail(
                "x@elsewhere.test",
                [ALICE],
                b"From: x@elsewhere.test\r\nTo: %s\r\nSubject: m%d\r\n\r\nbody %d\r\n"
                % (ALICE.encode(), i, i),
            )


def flags_on_disk(server: Server, folder: str = "") -> list[str]:
    return [p.name.rpartition(":2,")[2] for p in server.messages(ALICE, folder)]


def test_capabilities_and_special_use_folders(server: Server) -> None:
    """The server advertises its IMAP extensions and imapclient finds each RFC 6154 special-use
    folder."""
    with imap_client(server) as c:
        assert EXTENSIONS <= set(c.capabilities())
        assert c.find_special_folder(SENT) == "Sent"
        assert c.find_special_folder(TRASH) == "Trash"
        assert c.find_special_folder(JUNK) == "Junk"
        assert c.find_special_folder(DRAFTS) == "Drafts"
        assert c.find_special_folder(ARCHIVE) == "Archive"
        subscribed = {name for _, _, name in c.list_sub_folders()}
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= subscribed
        typ, lines = c._imap._simple_command(  # Thunderbird's exact command
            "LIST", "(subscribed)", '""', '"*"', "return", "(special-use)"
        )
        assert typ == "OK"
        listed = c._imap.untagged_responses.pop("LIST", [])
        assert b'(\\HasNoChildren \\Subscribed \\Sent) "." "Sent"' in listed
        assert b'(\\HasNoChildren \\Subscribed) "." "INBOX"' in listed
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert (server.maildir(ALICE, name) / "maildirfolder").exists()


def test_appenduid_copyuid_uid_expunge(server: Server) -> None:
    """RFC 4315: APPEND answers APPENDUID, COPY answers COPYUID, and UID EXPUNGE removes only the
    given UIDs."""
    deliver(server, 3)
    with imap_client(server) as c:
        info = c.select_folder("INBOX")
        trash = c.folder_status("Trash", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        # LITERAL+: imapclient sends {n+} when advertised
        reply = c.append("Sent", b"Subject: sent\r\n\r\nhi\r\n", flags=[imapclient.SEEN])
        sent = c.folder_status("Sent", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        assert reply == b"[APPENDUID %d 1] APPEND completed" % sent
        # imaplib drops the tagged text of UID COPY; ask for it directly
        assert c._imap._simple_command("UID", "COPY", "1,3", "Trash") == (
            "OK",
            [b"[COPYUID %d 1,3 1:2] COPY completed" % trash],
        )
        c.add_flags([1, 2], [imapclient.DELETED])
        c.uid_expunge([2])
        assert c.search("ALL") == [1, 3]
        assert info[b"UIDVALIDITY"] == c.folder_status("INBOX", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
    assert flags_on_disk(server, "Sent") == ["S"]
    assert len(server.messages(ALICE, "Trash")) == 2
    assert sorted(flags_on_disk(server)) == ["", "T"]


def test_move_to_trash(server: Server) -> None:
    """RFC 6851: MOVE to Trash removes the message from INBOX and keeps its flags in Trash."""
    deliver(server, 3)
    with imap_client(server) as c:
        c.select_folder("INBOX")
        c.add_flags([2], [imapclient.FLAGGED])
        c.move([2], "Trash")
        assert c.search("ALL") == [1, 3]
        c.select_folder("Trash")
        fetched = c.fetch(c.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    assert [(v[b"FLAGS"], v[b"BODY[HEADER.FIELDS (SUBJECT)]"]) for v in fetched.values()] == [
        ((b"\\Flagged", b"\\Recent"), b"Subject: m1\r\n\r\n")  # new in Trash (RFC 3501 §2.3.2)
    ]
    assert flags_on_disk(server, "Trash") == ["F"]
    assert len(server.messages(ALICE)) == 2


def test_id_enable_unselect(server: Server) -> None:
    """RFC 2971 ID, RFC 5161 ENABLE (unknown names ignored) and RFC 3691 UNSELECT (no expunge)
    with imapclient."""
    deliver(server, 1)
    with imap_client(server) as c:
        assert c.id_({"name": "e2e", "version": "1"}) == ((b"name", b"twistedmail"),)
        assert c.enable("CONDSTORE", "X-UNKNOWN") == [b"CONDSTORE"]  # RFC 7162 §3.1.8
        c.select_folder("INBOX")
        c.add_flags([1], [imapclient.DELETED])
        c.unselect_folder()
        c.select_folder("INBOX")
        assert c.search("ALL") == [1]  # UNSELECT did not expunge


def test_oversized_non_synchronizing_literal_closes(server: Server) -> None:
    """RFC 7888 §4: the data after an oversized {n+} never runs as commands."""
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=10)
    with client_tls().wrap_socket(raw, server_hostname="localhost") as s:
        s.recv(4096)
        s.sendall(b"a LOGIN {5000+}\r\n" + b"b LOGOUT\r\n" * 10)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ssl.SSLError, ConnectionError):
            pass
    assert data == b"a BAD [TOOBIG] Literal too large\r\n* BYE [TOOBIG] Closing the connection\r\n"


def test_appendlimit_is_the_message_size_limit(server: Server) -> None:
    """RFC 7889: APPENDLIMIT=<max_message_size> (1 MiB here), STATUS APPENDLIMIT, and an
    APPEND one octet over it refused before its literal is sent, nothing stored."""
    limit = 1024 * 1024
    with imap_client(server) as c:
        assert f"APPENDLIMIT={limit}".encode() in c.capabilities()
        assert c.folder_status("INBOX", ["APPENDLIMIT"]) == {b"APPENDLIMIT": limit}
        with pytest.raises(imapclient.exceptions.IMAPClientError, match=r"\[TOOBIG\]"):
            c.append("INBOX", b"x" * (limit + 1))
        assert c.folder_status("INBOX", ["MESSAGES"]) == {b"MESSAGES": 0}


def test_login_remakes_inbox_under_a_shared_account(server: Server) -> None:
    """A login while another session of the user is open (one account object, shared) makes
    INBOX again when it was removed meanwhile, before the OK (RFC 3501 §6.3.1: INBOX exists)."""
    first = imap_client(server)
    try:
        shutil.rmtree(server.maildir(ALICE))
        second = imap_client(server)
        try:
            assert all((server.maildir(ALICE) / sub).is_dir() for sub in ("cur", "new", "tmp"))
            assert second.select_folder("INBOX")[b"EXISTS"] == 0
        finally:
            second.logout()
    finally:
        first.logout()
