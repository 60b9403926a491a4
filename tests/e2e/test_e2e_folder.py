"""Folder correctness end to end: two IMAP clients, POP3 and a hand rename on one Maildir
(flags change by delta under the folder lock, DESIGN §6; RFC 3501 §6.4.6)."""

from __future__ import annotations

import imaplib
import os
import poplib

import imapclient
import pytest
from e2e_server import PASSWORDS, Server, client_tls, deliver, imap_client

ALICE = "alice@example.test"


def flags_on_disk(server: Server) -> list[str]:
    return sorted(p.name.partition(":2,")[2] for p in server.messages(ALICE))


def test_two_clients_flag_changes_both_survive(server: Server) -> None:
    """One client sets \\Answered, another removes \\Seen: both changes are on disk."""
    deliver(server, ALICE, "one")
    a, b = imap_client(server), imap_client(server)
    try:
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        (uid,) = a.search("ALL")
        a.add_flags([uid], [imapclient.SEEN])
        b.add_flags([uid], [imapclient.ANSWERED])
        assert a.remove_flags([uid], [imapclient.SEEN])[uid][0] == imapclient.ANSWERED
        assert flags_on_disk(server) == ["R"]
    finally:
        a.logout()
        b.logout()


def test_rename_by_hand_and_pop3_between_two_clients(server: Server) -> None:
    """A flag set by renaming the file, and a POP3 DELE, are kept by a client's STORE."""
    deliver(server, ALICE, "one")
    deliver(server, ALICE, "two")
    a = imap_client(server)
    try:
        a.select_folder("INBOX")
        uids = a.search("ALL")
        a.add_flags(uids, [imapclient.SEEN])
        (first, second) = server.messages(ALICE)
        os.rename(first, first.with_name(first.name.replace(":2,S", ":2,FS")))
        a.remove_flags(uids[:1], [imapclient.SEEN])
        assert flags_on_disk(server) == ["F", "S"]
        p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
        p.user(ALICE)
        p.pass_(PASSWORDS[ALICE])
        p.dele(2)
        p.quit()
        a.add_flags(uids, [imapclient.DELETED])
        assert flags_on_disk(server) == ["FT"]
        a.expunge()
        assert server.messages(ALICE) == []
    finally:
        a.logout()


def test_appenduid_after_the_selected_folder_was_deleted_and_created_again(
    server: Server,
) -> None:
    """APPEND into the selected folder after another session deleted and created it again
    answers APPENDUID with the folder's new UIDVALIDITY (RFC 4315 §3), not the selected one;
    then BYE, since the selected folder is gone (RFC 3501 §2.3.1.1)."""
    a, b = imap_client(server), imap_client(server)
    try:
        a.create_folder("Work")
        old = a.select_folder("Work")[b"UIDVALIDITY"]
        b.delete_folder("Work")
        b.create_folder("Work")
        new = b.folder_status("Work", ["UIDVALIDITY"])[b"UIDVALIDITY"]
        assert new != old
        reply = a.append("Work", b"Subject: one\r\n\r\nbody\r\n")
        assert reply == b"[APPENDUID %d 1] APPEND completed" % new
        assert b.folder_status("Work", ["UIDVALIDITY"])[b"UIDVALIDITY"] == new
        with pytest.raises(imaplib.IMAP4.abort):  # BYE, the connection closed
            a.noop()
    finally:
        b.logout()
