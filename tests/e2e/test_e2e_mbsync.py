"""mbsync (isync) against the real server over IMAPS: a local Maildir++ tree and the server's
folders are synced both ways (Pull and Push), then kept in step.

What is checked, after each sync: mbsync exits 0 with nothing on stderr; every folder holds the
same messages on both sides (bodies compared with line ends normalised, since a Maildir keeps
LF and IMAP carries CRLF, and without the ``X-TUID`` header mbsync 1.4 inserts into every
message it propagates, in either direction, to find the copy again); the flags
\\Seen \\Flagged \\Answered \\Deleted \\Draft match the Maildir info letters; a second sync
changes nothing; and a flag change, a deletion (expunge) and a new message made on either side
arrive on the other.

mbsync 1.4 sends folder names verbatim (no modified UTF-7 conversion; that came in 1.5), so the
non-ASCII folder is named in modified UTF-7 on the local side too: ``Caf&AOk-`` is "Café"
(RFC 3501 §5.1.3), which our server decodes, validates and stores as ``.Caf&AOk-``.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, make_test_ca

ALICE = "alice@example.test"
MBSYNC = shutil.which("mbsync")
pytestmark = pytest.mark.skipif(
    MBSYNC is None, reason="mbsync not installed (Debian package isync; .ci/run installs it)"
)

# Maildir info letter <-> IMAP system flag (RFC 3501 §2.3.2; the Maildir spec's "info").
LETTER_TO_FLAG = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
FOLDERS = ("INBOX", "Work", "Work.Sub", "Caf&AOk-", "Remote")


def message(n: int, subject: str) -> bytes:
    return (
        f"From: Sender {n} <s{n}@elsewhere.test>\r\nTo: {ALICE}\r\n"
        f"Subject: {subject}\r\nMessage-ID: <m{n}.{subject.replace(' ', '-')}@elsewhere.test>\r\n"
        f"Date: Sun, 29 Nov 2026 12:{n % 60:02d}:00 +0000\r\n\r\n"
        f"body {n} of {subject}\r\nline 2\r\n"
    ).encode()


def normalise(data: bytes) -> bytes:
    """Message bytes with LF line ends and no X-TUID header (mbsync's upload marker)."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return b"\n".join(line for line in lines if not line.lower().startswith(b"x-tuid:"))


class Local:
    """mbsync's side: INBOX is ``root`` itself, subfolders ``root/.Name`` (``SubFolders
    Maildir++``), messages with LF line ends as mbsync writes them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, folder: str) -> Path:
        return self.root if folder == "INBOX" else self.root / f".{folder}"

    def make(self, folder: str) -> None:
        for sub in ("cur", "new", "tmp"):
            (self.path(folder) / sub).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (self.path(folder) / "maildirfolder").touch()

    def add(self, folder: str, data: bytes, letters: str = "", n: int = 0) -> None:
        self.make(folder)
        name = f"{1700000000 + n}.M{n}P1.local"
        sub = "cur" if letters else "new"
        info = f":2,{letters}" if letters else ""
        (self.path(folder) / sub / f"{name}{info}").write_bytes(data.replace(b"\r\n", b"\n"))

    def files(self, folder: str) -> list[Path]:
        return [
            p
            for sub in ("cur", "new")
            if (self.path(folder) / sub).is_dir()
            for p in (self.path(folder) / sub).iterdir()
        ]

    def contents(self, folder: str) -> dict[bytes, frozenset[str]]:
        """normalised body -> IMAP system flags, for every message of the folder."""
        out = {}
        for p in self.files(folder):
            info = p.name.partition(":2,")[2]
            out[normalise(p.read_bytes())] = frozenset(
                LETTER_TO_FLAG[c] for c in info if c in LETTER_TO_FLAG
            )
        return out

    def set_letters(self, folder: str, subject: bytes, letters: str) -> None:
        for p in self.files(folder):
            if b"Subject: " + subject + b"\n" in p.read_bytes():
                base = p.name.partition(":2,")[0]
                p.rename(self.path(folder) / "cur" / f"{base}:2,{letters}")
                return
        raise AssertionError(f"no local message {subject!r} in {folder}")

    def remove(self, folder: str, subject: bytes) -> None:
        for p in self.files(folder):
            if b"Subject: " + subject + b"\n" in p.read_bytes():
                p.unlink()
                return
        raise AssertionError(f"no local message {subject!r} in {folder}")


SYSTEM_FLAGS = frozenset(LETTER_TO_FLAG.values())


def imap(server: Server, ca: Path) -> imaplib.IMAP4_SSL:
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=ctx, timeout=30)
    c.login(ALICE, PASSWORDS[ALICE])
    return c


def remote_contents(c: imaplib.IMAP4_SSL, folder: str) -> dict[bytes, frozenset[str]]:
    typ, data = c.select(_quote(folder), readonly=True)
    assert typ == "OK", (folder, data)
    if int(data[0]) == 0:
        return {}
    typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
    assert typ == "OK"
    out = {}
    for item in data:
        if isinstance(item, tuple):
            flags = imaplib.ParseFlags(item[0])
            body = item[1]
            out[normalise(body)] = frozenset(f.decode() for f in flags) & SYSTEM_FLAGS
    return out


def remote_raw(c: imaplib.IMAP4_SSL, folder: str) -> list[bytes]:
    c.select(_quote(folder), readonly=True)
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
    return [item[1] for item in data if isinstance(item, tuple)]


def _quote(folder: str) -> str:
    return '"' + folder + '"'


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Server, Local, Path, Path]]:
    # mbsync 1.4 matches only DNS names against the host, not the certificate's IP address;
    # a certificate listed in CertificateFile is trusted as such (our chain file: leaf + CA).
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    ca, cert, key = make_test_ca(tls_dir)
    srv = Server(tmp_path / "server", tls=(cert, key))
    srv.add_user(ALICE, PASSWORDS[ALICE])
    srv.start()
    local = Local(tmp_path / "local")
    local.make("INBOX")
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORDS[ALICE])
    config = tmp_path / "mbsyncrc"
    config.write_text(
        f"""IMAPAccount remote
Host 127.0.0.1
Port {srv.ports["imaps"]}
User {ALICE}
PassCmd "cat {password_file}"
SSLType IMAPS
CertificateFile {cert}

IMAPStore remote
Account remote

MaildirStore local
Inbox {local.root}
SubFolders Maildir++

Channel both
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge None
Sync All
SyncState *
"""
    )
    try:
        yield srv, local, config, ca
    finally:
        srv.stop()


def mbsync(config: Path, *extra: str) -> str:
    """Run mbsync on every channel; assert exit 0 and a clean stderr; return stdout."""
    assert MBSYNC is not None
    result = subprocess.run(
        [MBSYNC, "-c", str(config), *extra, "-a"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(config.parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout


def snapshot(
    local: Local, c: imaplib.IMAP4_SSL, skip: tuple[str, ...] = ()
) -> dict[str, dict[bytes, frozenset[str]]]:
    """Assert both sides hold the same messages and flags per folder; return them."""
    seen = {}
    for folder in FOLDERS:
        if folder in skip:
            continue
        here, there = local.contents(folder), remote_contents(c, folder)
        assert here == there, folder
        seen[folder] = here
    return seen


def assert_noop_sync(config: Path, local: Local, srv: Server) -> None:
    """Sync again and assert no message file changed name or mtime on either side."""

    def files() -> dict[str, int]:
        paths = [p for f in FOLDERS for p in [*local.files(f), *srv.messages(ALICE, _disk(f))]]
        return {str(p): p.stat().st_mtime_ns for p in paths}

    before = files()
    mbsync(config)
    assert files() == before


def test_mbsync_pull_push_and_incremental_sync(world: tuple[Server, Local, Path, Path]) -> None:
    """mbsync pushes local folders, flags and non-ASCII names, pulls the server's, and later
    syncs only the changes."""
    srv, local, config, ca = world
    # The local side: INBOX, a folder, its subfolder and a non-ASCII folder, with flags.
    local.add("INBOX", message(1, "local one"), "S", 1)
    local.add("INBOX", message(2, "local two"), "FS", 2)
    local.add("INBOX", message(3, "local three"), "", 3)
    local.add("Work", message(4, "work four"), "RS", 4)
    local.add("Work", message(5, "work five"), "ST", 5)  # \Deleted, not expunged
    local.add("Work.Sub", message(6, "sub six"), "DS", 6)
    local.add("Caf&AOk-", message(7, "cafe seven"), "F", 7)
    # The server side: INBOX mail and a folder the local side does not have yet.
    c = imap(srv, ca)
    assert c.append("INBOX", "(\\Seen \\Answered)", None, message(10, "remote ten"))[0] == "OK"
    assert c.append("INBOX", None, None, message(11, "remote eleven"))[0] == "OK"
    assert c.create("Remote")[0] == "OK"
    assert c.append("Remote", "(\\Flagged)", None, message(12, "remote twelve"))[0] == "OK"
    c.logout()

    mbsync(config)  # first sync: Pull and Push, creating the missing folders on both sides
    # mbsync turns on COMPRESS=DEFLATE (RFC 4978) and pipelines its APPENDs inside it
    assert "imap compress session=" in srv.log.read_text()
    c = imap(srv, ca)
    first = snapshot(local, c)
    assert len(first["INBOX"]) == 5 and len(first["Remote"]) == 1
    assert first["Work"][normalise(message(5, "work five"))] == {"\\Seen", "\\Deleted"}
    assert first["Work.Sub"][normalise(message(6, "sub six"))] == {"\\Draft", "\\Seen"}
    # Uploaded copies are stored as sent: CRLF line ends, plus the X-TUID header mbsync 1.4
    # inserts into every message it propagates (it uses it to find the copy again).
    raw = remote_raw(c, "Work")
    assert all(b"\n" not in body.replace(b"\r\n", b"") for body in raw)
    assert any(b"\r\nX-TUID: " in body for body in raw)
    # The non-ASCII folder is "Café" on disk in modified UTF-7, as Dovecot names it.
    assert (srv.maildir(ALICE, "Caf&AOk-") / "maildirfolder").exists()
    c.logout()

    # A second sync is a no-op: nothing new on either side.
    assert_noop_sync(config, local, srv)

    # Changes on the local side: a flag, a deletion, a new message.
    local.set_letters("INBOX", b"local three", "FS")
    local.remove("Work.Sub", b"sub six")
    local.add("Caf&AOk-", message(20, "cafe new"), "S", 20)
    # Changes on the server side: a flag, an expunge, a new message.
    c = imap(srv, ca)
    c.select("INBOX")
    typ, data = c.uid("SEARCH", "SUBJECT", '"remote eleven"')
    assert typ == "OK" and data[0]
    assert c.uid("STORE", data[0].decode(), "+FLAGS", "(\\Flagged \\Seen)")[0] == "OK"
    c.select("Remote")
    assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert c.expunge()[0] == "OK"
    assert c.append("Work", "(\\Seen)", None, message(21, "work new"))[0] == "OK"
    c.logout()

    mbsync(config)
    c = imap(srv, ca)
    # A deletion on one side becomes \Deleted on the other (mbsync expunges only when told
    # to): the message unlinked locally, and the one expunged on the server. Everything else
    # is equal again.
    assert local.contents("Work.Sub") == {}
    assert remote_contents(c, "Work.Sub") == {
        normalise(message(6, "sub six")): {"\\Draft", "\\Seen", "\\Deleted"}
    }
    assert remote_contents(c, "Remote") == {}
    assert local.contents("Remote") == {
        normalise(message(12, "remote twelve")): {"\\Flagged", "\\Deleted"}
    }
    after = snapshot(local, c, skip=("Work.Sub", "Remote"))
    assert after["INBOX"][normalise(message(3, "local three"))] == {"\\Flagged", "\\Seen"}
    assert after["INBOX"][normalise(message(11, "remote eleven"))] == {"\\Flagged", "\\Seen"}
    assert after["Caf&AOk-"][normalise(message(20, "cafe new"))] == {"\\Seen"}
    assert after["Work"][normalise(message(21, "work new"))] == {"\\Seen"}
    c.logout()
    # mbsync -X expunges \Deleted messages on both sides: EXPUNGE on ours, unlink locally.
    mbsync(config, "-X")
    c = imap(srv, ca)
    final = snapshot(local, c)
    assert final["Work.Sub"] == {} and final["Remote"] == {}
    assert set(final["Work"]) == {
        normalise(message(4, "work four")),
        normalise(message(21, "work new")),
    }
    assert len(final["INBOX"]) == 5
    c.logout()
    assert_noop_sync(config, local, srv)


def _disk(folder: str) -> str:
    return "" if folder == "INBOX" else folder
