"""Moving mail in and out against real programs (issue 13): a Dovecot started by the test
(TLS with a test CA) holds a mailbox with folders, flags, keywords and internal dates;
C{twistedmail import imap} pulls it while our server runs, every message and flag compares
equal over our IMAP, and a second run copies nothing; C{import maildir} of Dovecot's Maildir
on disk keeps its UIDVALIDITY and UIDs; C{backup} while the server receives mail, then
C{restore} into a new data dir, and the server started there serves everything back.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import smtplib
import sqlite3
import ssl
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, free_ports, make_test_ca
from test_e2e_dovecot import DOVECOT, Dovecot

from twistedmail.maildir import Folder, UserMaildir

ALICE, BOB = "alice@example.test", "bob@example.test"
pytestmark = pytest.mark.skipif(
    DOVECOT is None, reason="Dovecot not installed (Debian dovecot-imapd; .ci/run installs it)"
)
# name on Dovecot (delimiter "."), flags per message (None: none)
CONTENT: dict[str, list[str | None]] = {
    "INBOX": ["(\\Seen)", "(\\Seen $Junk)", "(\\Flagged project-x)", None, "(\\Answered \\Seen)"],
    "Work": ["(\\Draft)", "($label1 $label2 \\Seen)"],
    "Work.Sub": [None, "(\\Deleted \\Seen)"],
    "Entw&APw-rfe": ["(\\Seen)"],
}

# folder -> [(flags, INTERNALDATE as seconds since the epoch, bytes)] in UID order
Listing = dict[str, list[tuple[frozenset[str], float, bytes]]]


class TLSDovecot(Dovecot):
    """The team's test Dovecot (test_e2e_dovecot) with TLS required: IMAPS on its own
    loopback port and STARTTLS on the plain one, a certificate from the test CA."""

    def __init__(self, work: Path, maildir: Path, cert: Path, key: Path) -> None:
        super().__init__(work, maildir)
        self.cert, self.key = cert, key
        self.imaps_port = free_ports(1)[0]

    def _config(self) -> Path:
        conf = super()._config()
        text = conf.read_text()
        text = text.replace(
            "ssl = no\n", f"ssl = required\nssl_cert = <{self.cert}\nssl_key = <{self.key}\n"
        )
        text = text.replace(
            "inet_listener imaps {\n    port = 0",
            f"inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.imaps_port}",
        )
        conf.write_text(text)
        return conf

    def connect_tls(self, ca: Path) -> imaplib.IMAP4:
        ctx = ssl.create_default_context(cafile=str(ca))
        c = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=ctx, timeout=30)
        c.login(ALICE, PASSWORDS[ALICE])
        return c


def message(folder: str, n: int) -> bytes:
    return (
        f"From: Sender {n} <s{n}@elsewhere.test>\r\nTo: {ALICE}\r\n"
        f"Subject: {folder} message {n}\r\nMessage-ID: <{folder}.{n}@elsewhere.test>\r\n"
        f"Date: Sun, 29 Nov 2026 12:{n:02d}:00 +0000\r\n\r\nbody {n}\r\n>From a line\r\n"
    ).encode()


def listing(c: imaplib.IMAP4, folders: list[str]) -> Listing:
    """Every message of C{folders}: flags (without \\Recent), INTERNALDATE, bytes."""
    out: Listing = {}
    for folder in folders:
        typ, data = c.select(f'"{folder}"', readonly=True)
        assert typ == "OK", (folder, data)
        rows: list[tuple[int, frozenset[str], float, bytes]] = []
        if int(data[0] or 0):
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
            assert typ == "OK", data
            for item in data:
                if isinstance(item, tuple):
                    head = item[0].decode()
                    uid = int(head.split("UID ")[1].split()[0].rstrip(")"))
                    text = head.split('INTERNALDATE "')[1].split('"')[0]
                    date = datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
                    flags = frozenset(f.decode() for f in imaplib.ParseFlags(item[0]))
                    rows.append((uid, flags - {"\\Recent"}, date, item[1]))
        out[folder] = [row[1:] for row in sorted(rows)]
    return out


def uid_state(c: imaplib.IMAP4, folders: list[str]) -> dict[str, tuple[int, list[int]]]:
    """{folder: (UIDVALIDITY, UIDs)}."""
    out = {}
    for folder in folders:
        typ, data = c.status(f'"{folder}"', "(UIDVALIDITY)")
        assert typ == "OK", data
        uidvalidity = int(data[0].decode().rpartition("UIDVALIDITY ")[2].rstrip(")"))
        c.select(f'"{folder}"', readonly=True)
        typ, data = c.uid("SEARCH", "ALL")
        out[folder] = (uidvalidity, [int(u) for u in (data[0] or b"").split()])
    return out


def ours(srv: Server, address: str) -> imaplib.IMAP4:
    c = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls(), timeout=30)
    c.login(address, PASSWORDS[address])
    return c


@pytest.fixture
def root() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parents are 0700 root, which nobody cannot traverse.
    path = Path(tempfile.mkdtemp(prefix="twistedmail-migrate-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fill_dovecot(d: imaplib.IMAP4) -> None:
    """Folders, messages with flags and keywords and distinct INTERNALDATEs, a UID gap."""
    for folder in CONTENT:
        if folder != "INBOX":
            assert d.create(f'"{folder}"')[0] == "OK"
    for folder, flags in CONTENT.items():
        for n, f in enumerate(flags, 1):
            date = f'"0{n}-Mar-2025 10:1{n}:00 +0200"'
            assert d.append(f'"{folder}"', f, date, message(folder, n))[0] == "OK"
    assert d.append("INBOX", None, None, message("gone", 9))[0] == "OK"
    d.select("INBOX")
    typ, data = d.uid("SEARCH", "ALL")
    last = data[0].split()[-1].decode()
    assert d.uid("STORE", last, "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert d.expunge()[0] == "OK"
    assert d.append("INBOX", "(\\Seen)", None, message("INBOX", 6))[0] == "OK"
    assert d.subscribe('"Work.Sub"')[0] == "OK"


def test_import_imap_from_dovecot_then_maildir_on_disk(root: Path) -> None:
    """import imap copies every folder, message byte, flag, keyword and INTERNALDATE from
    a TLS Dovecot while our server runs (a session sees the new mail); a second run copies
    nothing; import maildir of Dovecot's Maildir keeps UIDVALIDITY and UIDs (RFC 3501
    §2.3.1.1)."""
    ca, cert, key = make_test_ca(root / "ca")
    for path in (root / "ca", ca, cert, key):
        path.chmod(0o755 if path.is_dir() else 0o644)
    srv = Server(root / "server")
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.add_user(BOB, PASSWORDS[BOB])
    # nested: Dovecot.start/stop chmod the three directories above the Maildir
    maildir = root / "dv" / "users" / "alice" / "Maildir"
    maildir.mkdir(parents=True)
    dovecot = TLSDovecot(root / "dovecot", maildir, cert, key)
    dovecot.start()
    try:
        d = dovecot.connect_tls(ca)
        fill_dovecot(d)
        folders = ["INBOX", *sorted(set(CONTENT) - {"INBOX"})]
        theirs = listing(d, folders)
        their_uids = uid_state(d, folders)
        d.logout()
        assert their_uids["INBOX"][1] == [1, 2, 3, 4, 5, 7]  # a gap where 6 was expunged
        srv.start()
        try:
            watcher = ours(srv, ALICE)
            assert watcher.select("INBOX")[1] == [b"0"]
            password = root / "password"
            password.write_text(PASSWORDS[ALICE] + "\n")
            command = (
                "import", "imap", ALICE, "--host", "127.0.0.1", "--port", str(dovecot.imaps_port),
                "--user", ALICE, "--password-file", str(password), "--ca-file", str(ca),
            )  # fmt: skip
            first = srv.cli(*command)
            assert "INBOX: 6 imported, 0 already there\n" in first.stdout, first.stdout
            assert "Entwürfe: 1 imported, 0 already there\n" in first.stdout
            # each message is recorded by the remote UIDVALIDITY and UID (RFC 3501 §2.3.1.1)
            ledger = sqlite3.connect(srv.data_dir / "import.sqlite3")
            keys = {k for (k,) in ledger.execute("SELECT key FROM imported WHERE done = 1")}
            ledger.close()
            assert {f"{their_uids['INBOX'][0]}:{uid}" for uid in their_uids["INBOX"][1]} <= keys
            # the running server's session sees the mail (RFC 3501 §7.3.1 EXISTS)
            typ, data = watcher.noop()
            assert watcher.response("EXISTS")[1][-1] == b"6", (typ, data)
            watcher.logout()
            c = ours(srv, ALICE)
            assert listing(c, folders) == theirs
            typ, subs = c.lsub()
            assert b'"Work.Sub"' in b" ".join(subs) or b" Work.Sub" in b" ".join(subs), subs
            c.logout()
            # STARTTLS on the plain port, and nothing copied twice
            second = srv.cli(*command[:6], str(dovecot.port), "--starttls", *command[7:])
            assert second.stdout.count(" 0 imported,") == len(folders), second.stdout
            c = ours(srv, ALICE)
            assert listing(c, folders) == theirs
            c.logout()
            # an unverifiable certificate is refused in one line
            bad = srv.cli(*command[:-2], check=False)
            assert bad.returncode == 1 and bad.stdout == ""
            assert "CERTIFICATE_VERIFY_FAILED" in bad.stderr and bad.stderr.count("\n") == 1
        finally:
            srv.stop()
    finally:
        dovecot.stop()
    assert dovecot.errors() == []

    srv.start()
    try:
        result = srv.cli("import", "maildir", str(maildir), BOB)
        assert "INBOX: 6 imported, 0 already there, UIDVALIDITY" in result.stdout, result.stdout
        c = ours(srv, BOB)
        assert uid_state(c, folders) == their_uids
        assert listing(c, folders) == theirs
        c.logout()
    finally:
        srv.stop()


def test_backup_while_receiving_then_restore(root: Path) -> None:
    """backup while the server runs and SMTP delivers; restore refused while it runs;
    restored into a new data dir, a server started there serves the same users (passwords),
    folders, UIDs, flags and bytes as the backup holds, and its queue and DKIM keys."""
    srv = Server(root / "server")
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.add_user(BOB, PASSWORDS[BOB])
    srv.cli("alias", "add", "info@example.test", BOB)
    srv.cli("dkim", "generate", "example.test")
    srv.start()
    stop = threading.Event()
    sent: list[int] = []

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
            n = 0
            while not stop.is_set() or n < 5:
                n += 1
                s.sendmail("x@remote.test", [ALICE, "info@example.test"], message("smtp", n % 60))
                sent.append(n)

    try:
        c = ours(srv, ALICE)
        c.create("Work")
        for n in range(1, 4):
            c.append("Work", "(\\Seen $Junk)" if n % 2 else "(\\Flagged)", None, message("w", n))
        c.logout()
        sender = threading.Thread(target=send)
        sender.start()
        try:
            srv.wait_for_messages(ALICE, 3, timeout=60)
            srv.wait_for_messages(BOB, 3, timeout=60)
            for address in (ALICE, BOB):  # UIDs for what is there so far
                c = ours(srv, address)
                c.select("INBOX")
                c.logout()
            backup = root / "backup"
            result = srv.cli("backup", str(backup))
            assert result.stdout.startswith(f"backup in {backup}: "), result.stdout
        finally:
            stop.set()
            sender.join(60)
        refused = srv.cli("restore", str(backup), check=False)
        assert (refused.returncode, refused.stdout, refused.stderr) == (
            1,
            "",
            "twistedmail: error: the server is running: stop it before a restore\n",
        )
    finally:
        srv.stop()
    # what the backup holds, read by our own server from the backup's copy
    snapshot = Server(root / "snapshot")
    shutil.copytree(backup / "data", snapshot.data_dir, symlinks=True)
    restored = Server(root / "restored")
    result = restored.cli("restore", str(backup))
    assert f"into {restored.data_dir}\n" in result.stdout
    views = []
    for server in (snapshot, restored):
        server.start()
        try:
            view = {}
            for address in (ALICE, BOB):
                c = ours(server, address)
                folders = ["INBOX", "Work"] if address == ALICE else ["INBOX"]
                view[address] = (uid_state(c, folders), listing(c, folders))
                c.logout()
            views.append(view)
        finally:
            server.stop()
    assert views[0] == views[1]
    inbox = views[1][ALICE][1]["INBOX"]
    assert len(inbox) >= 3 and len(views[1][ALICE][1]["Work"]) == 3
    assert views[1][ALICE][1]["Work"][0][0] == {"\\Seen", "$Junk"}
    assert len(views[1][BOB][1]["INBOX"]) >= 3  # through the alias
    assert sorted(os.listdir(restored.data_dir / "dkim")) == sorted(
        os.listdir(srv.data_dir / "dkim")
    )


def make_dovecot_maildir(path: Path, count: int) -> dict[str, int]:
    """A Maildir as Dovecot leaves it, with C{count} messages in INBOX (and a tenth of that in
    a subfolder): LF files named C{,S=,W=}, varied flags and keywords, a C{dovecot-uidlist}
    and C{dovecot-keywords}.  @return: {folder: message count}."""
    counts = {"INBOX": count, "Archive.2025": max(count // 10, 1)}
    flag_sets = ["S", "RS", "FS", "", "Sa", "Sab", "DS", "T"]
    for folder, n in counts.items():
        root = path if folder == "INBOX" else path / f".{folder}"
        for sub in ("cur", "new", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (root / "maildirfolder").touch()
        lines = [f"3 V{1_700_000_000 + len(folder)} N{n + 1} G0123456789abcdef"]
        for i in range(1, n + 1):
            body = f"line {i} of a message body that is long enough to look like mail\n" * 40
            data = (
                f"From: Sender {i} <s{i}@elsewhere.test>\nTo: {ALICE}\n"
                f"Subject: {folder} bench message {i}\nMessage-ID: <{folder}.{i}@bench.test>\n"
                f"Date: Sun, 29 Nov 2026 12:00:00 +0000\n\n{body}"
            ).encode()
            wire = len(data) + data.count(b"\n")
            base = f"{1_700_000_000 + i}.M{i}P1.bench,S={len(data)},W={wire}"
            name = f"{base}:2,{flag_sets[i % len(flag_sets)]}"
            (root / "cur" / name).write_bytes(data)
            os.utime(root / "cur" / name, (1_700_000_000 + i, 1_700_000_000 + i))
            lines.append(f"{i} :{base}")
        (root / "dovecot-uidlist").write_text("\n".join(lines) + "\n")
        (root / "dovecot-keywords").write_text("0 $Junk\n1 $label1\n")
    return counts


def on_disk(folder: Folder) -> list[tuple[int, str, bytes, float]]:
    """(UID, flags with keyword names, bytes as served, mtime) of every message."""
    keywords = folder.keywords()
    return [
        (e.uid, "".join(sorted(keywords.get(c, c) for c in e.flags)), folder.read(e), e.mtime)
        for e in folder.scan().messages
    ]


def test_import_1000_messages_maildir_and_imap(root: Path) -> None:
    """A 1,000-message Dovecot Maildir (and a subfolder) arrives whole: by import maildir
    with every UID, and by import imap from Dovecot serving it, every message's bytes,
    flags and internal date equal (bench/import_bench.py runs the same with 10,000)."""
    ca, cert, key = make_test_ca(root / "ca")
    for path in (root / "ca", ca, cert, key):
        path.chmod(0o755 if path.is_dir() else 0o644)
    maildir = root / "dv" / "users" / "alice" / "Maildir"
    counts = make_dovecot_maildir(maildir, 1000)
    srv = Server(root / "server")
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.add_user(BOB, PASSWORDS[BOB])
    srv.cli("import", "maildir", str(maildir), BOB)
    source = UserMaildir(maildir)
    expected = {name: on_disk(source.folder(name)) for name in counts}
    bob = UserMaildir(srv.maildir(BOB))
    for name, n in counts.items():
        assert len(expected[name]) == n
        assert on_disk(bob.folder(name)) == expected[name]
    dovecot = TLSDovecot(root / "dovecot", maildir, cert, key)
    dovecot.start()
    try:
        password = root / "password"
        password.write_text(PASSWORDS[ALICE] + "\n")
        result = srv.cli(
            "import", "imap", ALICE, "--host", "127.0.0.1", "--port", str(dovecot.imaps_port),
            "--user", ALICE, "--password-file", str(password), "--ca-file", str(ca),
        )  # fmt: skip
    finally:
        dovecot.stop()
    assert "INBOX: 1000 imported, 0 already there\n" in result.stdout, result.stdout
    alice = UserMaildir(srv.maildir(ALICE))
    for name in counts:
        # UIDs are new (the folder's own UIDVALIDITY); everything else is equal
        assert [m[1:] for m in on_disk(alice.folder(name))] == [m[1:] for m in expected[name]]


def not_owned_by(path: Path, uid: int, gid: int) -> list[str]:
    return [
        str(p.relative_to(path))
        for p in [path, *path.rglob("*")]
        if (p.lstat().st_uid, p.lstat().st_gid) != (uid, gid)
    ]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_as_root_everything_belongs_to_the_data_dir_owner(root: Path) -> None:
    """Run as root, import, backup and restore act as the data dir's owner (issue 9): every
    file they make in the data dir (Maildirs, the import record, restored files) and in the
    backup belongs to that user, so a server running as it can use them."""
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    srv = Server(root / "server")
    srv.add_user(ALICE, PASSWORDS[ALICE])
    for p in [srv.data_dir, *srv.data_dir.rglob("*")]:
        os.lchown(p, *owner)
    make_dovecot_maildir(root / "src", 20)
    result = srv.cli("import", "maildir", str(root / "src"), ALICE)
    assert "INBOX: 20 imported, 0 already there, UIDVALIDITY" in result.stdout
    assert not_owned_by(srv.data_dir, *owner) == []
    backup = root / "backup"
    denied = srv.cli("backup", str(backup), check=False)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr == f"twistedmail: error: Permission denied: {backup}\n"
    backup.mkdir()
    os.chown(backup, *owner)
    srv.cli("backup", str(backup))
    assert not_owned_by(backup, *owner) == []
    srv.cli("restore", str(backup), "--force")
    assert not_owned_by(srv.data_dir, *owner) == []
    assert len(srv.messages(ALICE)) == 20
