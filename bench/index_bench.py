"""Folder index benchmark (not a test): SELECT and FETCH times on a big INBOX.

Builds a Maildir INBOX of N messages (default 20,000; files written straight into cur/, no
fsync), then drives one in-process IMAP session per step (the real IMAPServer over a
StringTransport, disk work run synchronously) and prints wall-clock seconds for:

  - the first SELECT (builds the UID list, and the index where there is one),
  - SELECT again in a new session once the folder is quiet (the everyday case),
  - UID FETCH 1:* (UID FLAGS),
  - NOOP (the rescan every NOOP/IDLE does),
  - FETCH 1:1000 (ENVELOPE) twice (the second answered from the index cache, if any).

Run it with whichever twistedmail is importable, e.g. before/after a change:

  .venv/bin/python bench/index_bench.py [N]
  PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/index_bench.py [N]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import imap4

import twistedmail
from twistedmail.auth import MailRealm
from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.server import IMAPServer
from twistedmail.maildir import ChangeNotifier, UserMaildir, make_maildir

USER = "bench@example.test"
PASSWORD = b"bench"
QUIET = 1_600_000_000 * 10**9  # ns: directory mtimes set far in the past ("quiet" folder)


def run_now(f: Any, *args: Any) -> Any:
    return maybeDeferred(f, *args)


def build(root: Path, count: int) -> None:
    make_maildir(root)
    cur = root / "cur"
    for i in range(count):
        body = b"From: sender%d@example.org\r\nTo: %s\r\nSubject: message %d\r\n" % (
            i,
            USER.encode(),
            i,
        )
        body += b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n" + b"line of text\r\n" * 20
        base = "%d.M%06dP1Q%d.bench,S=%d" % (1_700_000_000 + i, i % 1_000_000, i, len(body))
        path = cur / (base + (":2,S" if i % 3 else ":2,"))
        path.write_bytes(body)
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))


def quiet(root: Path) -> None:
    """Age the directories and the UID list, as a folder nobody changed for a while."""
    for name in ("new", "cur", "dovecot-uidlist"):
        if (root / name).exists():
            os.utime(root / name, ns=(QUIET, QUIET))


class Session:
    def __init__(self, maildir: UserMaildir, notifier: ChangeNotifier) -> None:
        realm = MailRealm(
            {imap4.IAccount: lambda avatar: MaildirAccount(USER, maildir, notifier, run_now)}
        )
        portal = Portal(realm, [InMemoryUsernamePasswordDatabaseDontUse(**{USER: PASSWORD})])
        self.clock = Clock()
        self.server = IMAPServer(
            portal=portal, tls=None, implicit_tls=True, clock=self.clock, max_literal_size=10**6
        )
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.transport.clear()
        self.cmd(b"L LOGIN " + USER.encode() + b" " + PASSWORD)

    def cmd(self, line: bytes) -> tuple[float, bytes]:
        tag = line.split()[0]
        start = time.perf_counter()
        self.server.dataReceived(line + b"\r\n")
        while b"\r\n" + tag + b" " not in b"\r\n" + self.transport.value():
            self.clock.advance(0)
        elapsed = time.perf_counter() - start
        out = self.transport.value()
        self.transport.clear()
        return elapsed, out


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "example.test" / "bench"
        t0 = time.perf_counter()
        build(root, count)
        print(f"twistedmail from {Path(twistedmail.__file__).parent}")
        print(f"built {count} messages in {time.perf_counter() - t0:.1f} s")
        maildir, notifier = UserMaildir(root), ChangeNotifier()
        figures = []
        first = Session(maildir, notifier)
        figures.append(("first SELECT (cold)", first.cmd(b"a SELECT INBOX")[0]))
        quiet(root)
        Session(maildir, notifier).cmd(b"w SELECT INBOX")  # records the quiet stamps
        session = Session(maildir, notifier)
        elapsed, out = session.cmd(b"b SELECT INBOX")
        assert b"* %d EXISTS" % count in out, out[:300]
        figures.append(("SELECT (quiet folder)", elapsed))
        elapsed, out = session.cmd(b"c UID FETCH 1:* (UID FLAGS)")
        assert out.count(b" FETCH (") == count
        figures.append(("UID FETCH 1:* (UID FLAGS)", elapsed))
        figures.append(("NOOP (rescan)", session.cmd(b"d NOOP")[0]))
        figures.append(
            ("FETCH 1:1000 (ENVELOPE), 1st", session.cmd(b"e FETCH 1:1000 (ENVELOPE)")[0])
        )
        figures.append(
            ("FETCH 1:1000 (ENVELOPE), 2nd", session.cmd(b"f FETCH 1:1000 (ENVELOPE)")[0])
        )
        for name, seconds in figures:
            print(f"{name:32} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
