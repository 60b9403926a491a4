"""Dovecot and twistedmail on the same Maildir, one after the other (DESIGN §3: a mailbox moves
between the two servers and keeps its UIDs).

twistedmail builds a Maildir over IMAP (flags, keywords, a subfolder, expunged messages so that
the UIDs have gaps) and stops; a private Dovecot (its own config, a passwd-file user, plain IMAP
on a loopback port) is pointed at that Maildir and must report, over imaplib, the same
UIDVALIDITY, UIDNEXT, UIDs, flags, keywords, sizes and bytes. Dovecot then changes the mailbox
(APPEND, a flag, a new keyword, an expunge) and stops; twistedmail starts again on it and must
see exactly Dovecot's view, with Dovecot's UIDs.

Dovecot refuses to access mail as root, so when the test runs as root the Maildir is handed to
``nobody`` while Dovecot runs (as dovecot.sh in the team's peers tools does) and back to root
after; run as another user, everything runs as that user.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, free_ports

ALICE = "alice@example.test"
DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
)
pytestmark = pytest.mark.skipif(
    DOVECOT is None, reason="Dovecot not installed (Debian dovecot-imapd; .ci/run installs it)"
)
NOBODY = 65534
FOLDERS = ("INBOX", "Work", "Work.Sub")

# folder -> (UIDVALIDITY, UIDNEXT, {uid: (flags, RFC822.SIZE, message bytes)})
State = dict[str, tuple[int, int, dict[int, tuple[frozenset[str], int, bytes]]]]


def message(n: int) -> bytes:
    return (
        f"From: Sender {n} <s{n}@elsewhere.test>\r\nTo: {ALICE}\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@elsewhere.test>\r\nDate: Sun, 29 Nov 2026 12:{n:02d}:00 +0000\r\n"
        f"\r\nbody of message {n}\r\nsecond line\r\n"
    ).encode()


class Dovecot:
    """A private Dovecot serving one user's Maildir on 127.0.0.1:C{port}, plain IMAP only."""

    def __init__(self, work: Path, maildir: Path) -> None:
        self.work, self.maildir = work, maildir
        self.port = free_ports(1)[0]
        self.log = work / "dovecot.log"
        self.pid = 0

    def _config(self) -> Path:
        run, state = self.work / "run", self.work / "state"
        run.mkdir(parents=True, exist_ok=True)
        state.mkdir(exist_ok=True)
        root = os.getuid() == 0
        uid, gid = (NOBODY, NOBODY) if root else (os.getuid(), os.getgid())
        passwd = self.work / "passwd"
        passwd.write_text(f"{ALICE}:{{PLAIN}}{PASSWORDS[ALICE]}:{uid}:{gid}::{self.maildir}::\n")
        passwd.chmod(0o644)
        privs = ""
        if not root:
            import grp
            import pwd

            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            privs = (
                f"default_internal_user = {user}\ndefault_internal_group = {group}\n"
                f"default_login_user = {user}\n"
                "service imap-login {\n  chroot =\n}\nservice anvil {\n  chroot =\n}\n"
            )
        conf = self.work / "dovecot.conf"
        conf.write_text(
            f"""instance_name = twistedmail-e2e-{self.port}
base_dir = {run}
state_dir = {state}
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
{privs}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{self.maildir}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""
        )
        return conf

    def start(self) -> None:
        if os.getuid() == 0:
            _hand_over(self.maildir, NOBODY)
        conf = self._config()
        assert DOVECOT is not None
        # Dovecot's master keeps the stdout/stderr it was started with: a file, never a pipe.
        with open(self.work / "dovecot.out", "wb") as out:
            rc = subprocess.run(
                [DOVECOT, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT, timeout=30
            ).returncode
        if rc != 0:
            text = (self.work / "dovecot.out").read_text(errors="replace").strip()
            pytest.skip(f"Dovecot did not start: {text}")
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                self.pid = int((self.work / "run" / "master.pid").read_text().split()[0])
                return
            except (OSError, ValueError, IndexError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        "Dovecot did not listen: " + self.log.read_text()
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if not self.pid:
            try:
                self.pid = int((self.work / "run" / "master.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid = 0
        if os.getuid() == 0:
            _hand_over(self.maildir, 0)

    def connect(self) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        c.login(ALICE, PASSWORDS[ALICE])
        return c

    def errors(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "Error:" in line or "Panic:" in line]


def _hand_over(maildir: Path, uid: int) -> None:
    """chown the Maildir tree to C{uid} and let it traverse the (0700) dirs above it."""
    for parent in (maildir.parent, maildir.parent.parent, maildir.parent.parent.parent):
        parent.chmod(0o755 if uid else 0o700)
    for dirpath, _dirs, files in os.walk(maildir):
        os.chown(dirpath, uid, uid)
        for name in files:
            os.chown(os.path.join(dirpath, name), uid, uid)


def state(c: imaplib.IMAP4) -> State:
    """Every folder's UIDVALIDITY, UIDNEXT and messages, as seen over IMAP."""
    out: State = {}
    for folder in FOLDERS:
        typ, data = c.status(folder, "(UIDVALIDITY UIDNEXT MESSAGES)")
        assert typ == "OK", (folder, data)
        fields = data[0].decode().rpartition("(")[2].rstrip(")").split()
        status = dict(zip(fields[::2], map(int, fields[1::2]), strict=True))
        typ, data = c.select(folder, readonly=True)
        assert typ == "OK", (folder, data)
        messages: dict[int, tuple[frozenset[str], int, bytes]] = {}
        if status["MESSAGES"]:
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
            assert typ == "OK"
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = int(head.split("UID ")[1].split()[0])
                size = int(head.split("RFC822.SIZE ")[1].split()[0])
                flags = frozenset(f.decode() for f in imaplib.ParseFlags(item[0])) - {"\\Recent"}
                messages[uid] = (flags, size, item[1])
        assert len(messages) == status["MESSAGES"], folder
        out[folder] = (status["UIDVALIDITY"], status["UIDNEXT"], messages)
    return out


def subscribed(c: imaplib.IMAP4) -> set[str]:
    typ, listing = c.lsub()
    assert typ == "OK"
    return {line.decode().rpartition(" ")[2].strip('"') for line in listing if line}


def names(c: imaplib.IMAP4) -> set[str]:
    typ, listing = c.list()
    assert typ == "OK"
    return {line.decode().rpartition(" ")[2].strip('"') for line in listing}


@pytest.fixture
def root() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700 root, which nobody cannot traverse.
    path = Path(tempfile.mkdtemp(prefix="twistedmail-dovecot-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_dovecot_reads_our_maildir_and_we_read_dovecots(root: Path) -> None:
    """Dovecot reads the Maildir we wrote (flags, UIDs) and we read one Dovecot wrote."""
    srv = Server(root / "server")
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.start()
    try:
        c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
        c.login(ALICE, PASSWORDS[ALICE])
        flags = [
            "(\\Seen)",
            "(\\Seen $Junk)",
            "(\\Flagged project-x)",
            None,
            "(\\Answered \\Seen $label1)",
            "(\\Draft)",
        ]
        for n, f in enumerate(flags, 1):
            assert c.append("INBOX", f, None, message(n))[0] == "OK"
        assert c.create("Work")[0] == "OK" and c.create("Work.Sub")[0] == "OK"
        for n in (7, 8, 9):
            assert c.append("Work.Sub", "($label2 \\Seen)", None, message(n))[0] == "OK"
        assert c.append("Work", None, None, message(10))[0] == "OK"
        # Expunge two INBOX messages and the first of Work.Sub: the UIDs have gaps.
        c.select("INBOX")
        assert c.uid("STORE", "2,4", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        c.select("Work.Sub")
        assert c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert c.expunge()[0] == "OK"
        ours = state(c)
        our_names = names(c)
        assert set(FOLDERS) < our_names  # and the special-use folders made at first login
        c.logout()
    finally:
        srv.stop()
    assert sorted(ours["INBOX"][2]) == [1, 3, 5, 6] and ours["INBOX"][1] == 7
    assert sorted(ours["Work.Sub"][2]) == [2, 3]
    assert ours["INBOX"][2][3][0] == {"\\Flagged", "project-x"}

    dovecot = Dovecot(root / "dovecot", srv.maildir(ALICE))
    try:
        dovecot.start()
        d = dovecot.connect()
        assert names(d) == our_names
        assert state(d) == ours
        # Dovecot changes the mailbox: APPEND, a flag, a new keyword, an expunge.
        typ, data = d.append("INBOX", "(\\Seen $Dovecot)", None, message(11))
        assert typ == "OK" and b"[APPENDUID " in data[0], data
        d.select("INBOX")
        assert d.uid("STORE", "1", "+FLAGS", "(\\Flagged)")[0] == "OK"
        assert d.uid("STORE", "3", "+FLAGS", "($label3)")[0] == "OK"
        assert d.uid("STORE", "5", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert d.expunge()[0] == "OK"
        assert d.subscribe("Work.Sub")[0] == "OK"
        theirs = state(d)
        their_subscriptions = subscribed(d)
        d.logout()
    finally:
        dovecot.stop()
    assert dovecot.errors() == []
    assert sorted(theirs["INBOX"][2]) == [1, 3, 6, 7] and theirs["INBOX"][1] == 8
    assert theirs["INBOX"][2][7][0] == {"\\Seen", "$Dovecot"}
    assert theirs["INBOX"][2][3][0] == {"\\Flagged", "project-x", "$label3"}

    srv.start()
    try:
        c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
        c.login(ALICE, PASSWORDS[ALICE])
        assert state(c) == theirs
        # Dovecot's subscriptions file is read; INBOX we list as always subscribed.
        assert subscribed(c) - {"INBOX"} == their_subscriptions
        assert "Work.Sub" in their_subscriptions
        # and a message we add now continues Dovecot's UID sequence
        typ, data = c.append("INBOX", None, None, message(12))
        assert typ == "OK" and data[0].startswith(b"[APPENDUID %d 8]" % theirs["INBOX"][0])
        c.logout()
    finally:
        srv.stop()
