"""Dovecot and twistedmail on one Maildir at the same time: both take Dovecot's
dovecot-uidlist.lock dotlock, so no UID is handed out twice (RFC 3501 §2.3.1.1: a UID names
one message for the life of the UIDVALIDITY)."""

from __future__ import annotations

import imaplib
import os
import re
import threading
from pathlib import Path

from e2e_server import PASSWORDS, Server, client_tls
from test_e2e_dovecot import ALICE, NOBODY, Dovecot, message, pytestmark, root  # noqa: F401

ROUNDS = 40


def append_all(connect: object, first: int, uids: list[int], errors: list[str]) -> None:
    try:
        c = connect()  # type: ignore[operator]
        for n in range(first, first + ROUNDS):
            typ, data = c.append("INBOX", None, None, message(n % 60))
            found = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            if typ != "OK" or found is None:
                errors.append(f"{typ} {data!r}")
                continue
            uids.append(int(found.group(1)))
        c.logout()
    except Exception as e:  # noqa: BLE001 (reported by the test)
        errors.append(repr(e))


def uidlist(maildir: Path) -> dict[int, str]:
    lines = (maildir / "dovecot-uidlist").read_text().splitlines()[1:]
    out: dict[int, str] = {}
    for line in lines:
        head, _, name = line.partition(":")
        uid = int(head.split()[0])
        assert uid not in out, f"UID {uid} listed twice"
        out[uid] = name
    return out


def test_concurrent_appends_never_share_a_uid(root: Path) -> None:  # noqa: F811
    """APPENDs to Dovecot and to us at once: every APPENDUID is distinct and names the
    message the UID list gives it."""
    srv = Server(root / "server")
    srv.add_user(ALICE, PASSWORDS[ALICE])
    if os.getuid() == 0:  # one mail user for both servers, as a real deployment has
        (root / "server").chmod(0o755)
        for dirpath, _dirs, files in os.walk(srv.data_dir):
            os.chown(dirpath, NOBODY, NOBODY)
            for name in files:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        srv.start(("-u", str(NOBODY), "-g", str(NOBODY)))
    else:
        srv.start()
    dovecot = Dovecot(root / "dovecot", srv.maildir(ALICE))
    try:
        c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
        c.login(ALICE, PASSWORDS[ALICE])
        assert c.append("INBOX", None, None, message(0))[0] == "OK"
        c.logout()
        dovecot.start()

        def ours() -> imaplib.IMAP4:
            m = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
            m.login(ALICE, PASSWORDS[ALICE])
            return m

        our_uids: list[int] = []
        their_uids: list[int] = []
        errors: list[str] = []
        threads = [
            threading.Thread(target=append_all, args=(ours, 100, our_uids, errors)),
            threading.Thread(target=append_all, args=(dovecot.connect, 200, their_uids, errors)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert errors == [], dovecot.log.read_text()[-2500:]
        assert len(our_uids) == len(their_uids) == ROUNDS
        handed_out = our_uids + their_uids
        assert len(set(handed_out)) == len(handed_out), sorted(handed_out)
        listed = uidlist(srv.maildir(ALICE))
        assert set(handed_out) <= set(listed)
        # both servers now see the same UIDs
        d = dovecot.connect()
        d.select("INBOX", readonly=True)
        theirs = sorted(int(u) for u in d.uid("SEARCH", "ALL")[1][0].split())
        d.logout()
        m = ours()
        m.select("INBOX", readonly=True)
        assert sorted(int(u) for u in m.uid("SEARCH", "ALL")[1][0].split()) == theirs
        m.logout()
        assert theirs == sorted([1, *handed_out])
    finally:
        dovecot.stop()
        srv.stop()
    assert dovecot.errors() == []
