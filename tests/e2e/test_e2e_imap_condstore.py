"""CONDSTORE and QRESYNC end to end (RFC 7162) with imapclient against the real server:
MODSEQ in FETCH, STORE, SEARCH and STATUS, VANISHED for another session's expunge, a flag
change made directly in the Maildir getting a new MODSEQ, and a QRESYNC SELECT after a
restart answered from the folder index on disk (twistedmail.index)."""

from __future__ import annotations

import os

import imapclient
from e2e_server import Server, deliver, imap_client

ALICE = "alice@example.test"


def test_condstore_and_qresync(server: Server) -> None:
    """RFC 7162: MODSEQ in FETCH, STORE, SEARCH and STATUS, VANISHED for another session's
    expunge, and QRESYNC after a restart."""
    for subject in ("one", "two", "three"):
        deliver(server, ALICE, subject)
    with imap_client(server) as c, imap_client(server) as other:
        assert b"CONDSTORE" in c.capabilities() and b"QRESYNC" in c.capabilities()
        assert c.enable("QRESYNC") == [b"QRESYNC"]
        info = c.select_folder("INBOX")
        uidvalidity, start = info[b"UIDVALIDITY"], info[b"HIGHESTMODSEQ"]
        one, two, three = c.search("ALL")
        every = [one, two, three]
        modseqs = {u: d[b"MODSEQ"][0] for u, d in c.fetch(every, ["MODSEQ"]).items()}
        assert modseqs == {one: start, two: start, three: start}
        # STORE answers with the new MODSEQ; CHANGEDSINCE returns only what changed
        c.add_flags([one], [imapclient.SEEN])
        changed = c.fetch(every, ["FLAGS"], modifiers=[f"CHANGEDSINCE {start}"])
        assert list(changed) == [one]
        stored = changed[one][b"MODSEQ"][0]
        assert stored > start and imapclient.SEEN in changed[one][b"FLAGS"]
        found = c.search(["MODSEQ", str(stored)])
        assert list(found) == [one] and found.modseq == stored
        assert c.folder_status("INBOX", [b"HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"] == stored
        # another session expunges: this one (QRESYNC enabled) hears VANISHED, not EXPUNGE
        other.select_folder("INBOX")
        other.delete_messages([two])
        other.expunge()
        assert c.noop()[1] == [(b"VANISHED", two)]
        # a rename in cur/ by another program (Dovecot, by hand) gets a new MODSEQ
        path = next(p for p in server.messages(ALICE) if p.name.endswith(":2,"))
        os.rename(path, path.with_name(path.name + "F"))
        c.noop()
        after = c.fetch([one, three], ["FLAGS"], modifiers=[f"CHANGEDSINCE {stored}"])
        assert list(after) == [three] and imapclient.FLAGGED in after[three][b"FLAGS"]
        highest = max(d[b"MODSEQ"][0] for d in after.values())
        assert (server.maildir(ALICE) / "twistedmail.index").is_file()

    server.restart()
    with imap_client(server) as c:
        c.enable("QRESYNC")
        imap = c._imap
        typ, data = imap._simple_command(
            "SELECT", "INBOX", f"(QRESYNC ({uidvalidity} {start} 1:{three}))"
        )
        assert typ == "OK", data
        untagged = imap.untagged_responses
        assert untagged.get("VANISHED") == [b"(EARLIER) %d" % two]
        fetched = b" ".join(untagged.get("FETCH", []))
        assert b"UID %d FLAGS (\\Seen) MODSEQ (%d)" % (one, stored) in fetched
        assert b"UID %d FLAGS (\\Flagged) MODSEQ (%d)" % (three, highest) in fetched
        assert b"[HIGHESTMODSEQ %d]" % highest in b" ".join(untagged.get("OK", []))
