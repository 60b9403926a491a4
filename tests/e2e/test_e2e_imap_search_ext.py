"""ESEARCH (RFC 4731), LIST-STATUS (RFC 5819) and SORT (RFC 5256) against the real server
with imapclient (over 993), mail delivered by SMTP."""

from __future__ import annotations

import imaplib
import smtplib

import imapclient
from e2e_server import PASSWORDS, Server, client_tls, imap_client

ALICE = "alice@example.test"
MESSAGES = [
    (b"Re: beta", b"zed@x.test", b"Tue, 02 Jan 2024 10:00:00 +0000"),
    (b"alpha", b"amy@x.test", b"Mon, 01 Jan 2024 23:00:00 -0300"),
    (b"[list] Fwd: Beta", b"Bob@x.test", b"Sun, 31 Dec 2023 08:00:00 +0100"),
]


def deliver(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for subject, sender, date in MESSAGES:
            s.sendmail(
                sender.decode(),
                [ALICE],
                b"From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\n\r\nbody\r\n"
                % (sender, ALICE.encode(), subject, date),
            )
    assert len(server.wait_for_messages(ALICE, len(MESSAGES))) == len(MESSAGES)


def test_capabilities(server: Server) -> None:
    """The server advertises ESEARCH, LIST-STATUS, SORT and COMPRESS=DEFLATE."""
    with imap_client(server) as c:
        assert {b"ESEARCH", b"LIST-STATUS", b"SORT", b"COMPRESS=DEFLATE"} <= set(c.capabilities())


def test_sort(server: Server) -> None:
    """RFC 5256: SORT by SUBJECT, DATE and REVERSE DATE, ties by sequence number."""
    deliver(server)
    with imap_client(server) as c:
        c.select_folder("INBOX")
        c.add_flags([2], [imapclient.SEEN])
        assert c.sort("SUBJECT") == [2, 1, 3]  # alpha, beta, beta (ties by number)
        assert c.sort(["REVERSE DATE"]) == [1, 2, 3]
        assert c.sort("DATE") == [3, 2, 1]
        assert c.sort(["FROM", "SUBJECT"], ["UNSEEN"]) == [3, 1]
        assert c.sort("ARRIVAL", ["SUBJECT", "beta"]) == [1, 3]


def test_esearch(server: Server) -> None:
    """RFC 4731: UID SEARCH RETURN (MIN MAX ALL COUNT) answers one ESEARCH response."""
    deliver(server)
    with imap_client(server) as c:
        c.select_folder("INBOX")
        c.add_flags([2], [imapclient.SEEN])
        imap = c._imap
        tag = imap._new_tag()
        imap.send(tag + b" UID SEARCH RETURN (MIN MAX ALL COUNT) UNSEEN\r\n")
        assert imap.readline() == b'* ESEARCH (TAG "%s") UID MIN 1 MAX 3 ALL 1,3 COUNT 2\r\n' % tag
        assert imap.readline() == tag + b" OK SEARCH completed\r\n"
        tag = imap._new_tag()
        imap.send(tag + b" SEARCH RETURN () ALL\r\n")
        assert imap.readline() == b'* ESEARCH (TAG "%s") ALL 1:3\r\n' % tag
        assert imap.readline() == tag + b" OK SEARCH completed\r\n"
        tag = imap._new_tag()
        imap.send(tag + b" SEARCH RETURN (MIN COUNT) SUBJECT nothing\r\n")
        assert imap.readline() == b'* ESEARCH (TAG "%s") COUNT 0\r\n' % tag
        assert imap.readline() == tag + b" OK SEARCH completed\r\n"


def test_list_status(server: Server) -> None:
    """RFC 5819: LIST RETURN (STATUS ...) sends each mailbox's STATUS after its LIST line."""
    deliver(server)
    with imap_client(server) as c:
        c.create_folder("Lists.Work")
        imap = c._imap
        tag = imap._new_tag()
        imap.send(tag + b' LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))\r\n')
        lines = []
        while not (line := imap.readline()).startswith(tag):
            lines.append(line.rstrip(b"\r\n"))
        assert line == tag + b" OK LIST completed\r\n"
    assert lines[:2] == [
        b'* LIST (\\HasNoChildren) "." "INBOX"',
        b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 3)',
    ]
    assert b'* LIST (\\HasChildren) "." "Lists"' in lines
    assert b'* STATUS "Lists.Work" (MESSAGES 0 UNSEEN 0)' in lines
    statuses = [x for x in lines if x.startswith(b"* STATUS")]
    listed = [x for x in lines if x.startswith(b"* LIST")]
    assert len(statuses) == len(listed) == 8  # INBOX, 5 special-use, Lists, Lists.Work


def test_utf8_accept_with_imaplib(server: Server) -> None:
    """RFC 6855: imaplib's own UTF-8 mode (ENABLE UTF8=ACCEPT) creates, lists and selects
    UTF-8 names; imapclient without it still sees modified UTF-7; APPEND UTF8 (~{n})
    stores the UTF-8 message as sent."""
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    imap.login(ALICE, PASSWORDS[ALICE])
    assert imap.enable("UTF8=ACCEPT") == ("OK", [b"ENABLE completed"])
    assert imap.utf8_enabled
    assert imap.create('"Entwürfe & Co"')[0] == "OK"
    typ, listed = imap.list('""', '"Entw*"')
    assert (typ, listed) == ("OK", ['(\\HasNoChildren) "." "Entwürfe & Co"'.encode()])
    assert imap.select('"Entwürfe & Co"') == ("OK", [b"0"])
    message = "From: jörg@example.test\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    tag = imap._new_tag()
    imap.send(tag + b" APPEND INBOX UTF8 (~{%d+}\r\n" % len(message) + message + b")\r\n")
    reply = imap.readline()
    assert reply.startswith(tag + b" OK [APPENDUID "), reply
    imap.logout()
    assert [p.read_bytes() for p in server.messages(ALICE)] == [message]
    assert (server.maildir(ALICE) / ".Entw&APw-rfe &- Co").is_dir()
    with imap_client(server) as c:
        names = [name for _, _, name in c.list_folders(pattern="Entw*")]
        assert names == ["Entwürfe & Co"]  # decoded from "Entw&APw-rfe &- Co"
