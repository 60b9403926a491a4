"""IMAP keywords end to end (RFC 3501 §2.3.2, §7.1) with imapclient: $Junk and $label1 set over
IMAPS land as letters in the Maildir file names and in dovecot-keywords, and survive a restart."""

from __future__ import annotations

import imapclient
from e2e_server import Server, deliver, imap_client

ALICE = "alice@example.test"


def test_keywords_persist_in_file_names_across_restart(server: Server) -> None:
    """RFC 3501 §2.3.2: keywords set over IMAPS become Maildir letters and dovecot-keywords
    entries and survive a restart."""
    deliver(server, ALICE, "one")
    deliver(server, ALICE, "two")
    with imap_client(server) as c:
        info = c.select_folder("INBOX")
        assert b"\\*" in info[b"PERMANENTFLAGS"]
        uids = c.search("ALL")
        c.add_flags([uids[0]], [b"$Junk", imapclient.SEEN])
        c.add_flags([uids[1]], [b"$label1"])
        assert c.search(["KEYWORD", "$Junk"]) == [uids[0]]
    root = server.maildir(ALICE)
    assert (root / "dovecot-keywords").read_bytes() == b"0 $Junk\n1 $label1\n"
    infos = sorted(p.name.split(":2,")[1] for p in server.messages(ALICE))
    assert infos == ["Sa", "b"]
    server.restart()
    with imap_client(server) as c:
        info = c.select_folder("INBOX")
        assert b"$Junk" in info[b"FLAGS"] and b"$label1" in info[b"FLAGS"]
        flags = c.get_flags(uids)
        assert set(flags[uids[0]]) == {b"$Junk", imapclient.SEEN}
        assert set(flags[uids[1]]) == {b"$label1"}
        assert c.search(["UNKEYWORD", "$Junk"]) == [uids[1]]
