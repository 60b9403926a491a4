"""A server killed with SIGKILL right after its OKs (twistedmail.index is written lazily,
as Dovecot's mail_fsync = optimized: the message file and its name are durable before OK,
the index is not): the flags are exactly in the file names on disk, and after a restart,
with the index as the crash left it or with the index lost, every UID, flag and keyword
is as the client was told (RFC 3501 §2.3.1.1 UIDs, §6.4.6 STORE), HIGHESTMODSEQ has not
gone back (RFC 7162 §3.1.2.1), and the header cache still answers SEARCH."""

from __future__ import annotations

import signal
from pathlib import Path

import imapclient
from e2e_server import Server, deliver, imap_client

from twistedmail.index import INDEX_FILE

ALICE = "alice@example.test"
APPENDED = b"From: Carol <carol@example.net>\r\nSubject: appended\r\n\r\nbody\r\n"


def _state(c: imapclient.IMAPClient) -> tuple[dict[int, tuple[bytes, ...]], int]:
    """{uid: sorted flags} of INBOX, and its HIGHESTMODSEQ."""
    info = c.select_folder("INBOX")
    fetched = c.fetch(c.search("ALL"), ["FLAGS"])
    flags = {
        uid: tuple(sorted(f for f in d[b"FLAGS"] if f != b"\\Recent")) for uid, d in fetched.items()
    }
    return flags, info[b"HIGHESTMODSEQ"]


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "cur").iterdir())


def test_kill9_after_store_and_expunge(server: Server) -> None:
    """SIGKILL after STORE, APPEND and EXPUNGE answered OK: the file names carry exactly the
    flags stored, and a restart (index as left, then index deleted) answers the same UIDs
    and flags, a HIGHESTMODSEQ no lower, and SEARCH FROM from the header cache."""
    for subject in ("one", "two", "three"):
        deliver(server, ALICE, subject)
    root = server.maildir(ALICE)
    with imap_client(server) as c:
        c.select_folder("INBOX")
        one, two, three = c.search("ALL")
        c.append("INBOX", APPENDED, flags=[imapclient.FLAGGED])
        c.add_flags([one], [imapclient.SEEN])
        c.add_flags([two], [imapclient.ANSWERED, b"$Label1"])
        c.add_flags([three], [imapclient.DELETED])
        c.expunge()
        before, highest = _state(c)
        assert c.search(["FROM", "carol"]) == [three + 1]
        server.stop(signal.SIGKILL)  # no clean shutdown: what is on disk is what survives
    names = _names(root)
    assert [n.split(":2,")[1] for n in names] == ["S", "Ra", "F"]
    assert before == {
        one: (b"\\Seen",),
        two: (b"$Label1", b"\\Answered"),
        three + 1: (b"\\Flagged",),
    }
    server.start()
    with imap_client(server) as c:
        after, highest_after = _state(c)
        assert after == before and highest_after >= highest
        server.stop(signal.SIGKILL)
    for leftover in root.glob(INDEX_FILE + "*"):  # the index lost in the crash
        leftover.unlink()
    server.start()
    with imap_client(server) as c:
        rebuilt, highest_rebuilt = _state(c)
        assert rebuilt == before and highest_rebuilt >= highest
        assert c.search(["FROM", "carol"]) == [three + 1]
        assert c.search(["SUBJECT", "two"]) == [two]
    assert _names(root) == names
