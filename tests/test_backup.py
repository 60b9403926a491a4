"""Unit tests of twistedmail.backup and the backup/restore commands (issue 13)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from twisted.trial import unittest

from twistedmail.accounts import AccountStore
from twistedmail.maildir import UserMaildir
from twistedmail.passwords import verify
from twistedmail.sieve.store import SieveStore
from twistedmail.smtp.queue import Spool
from twistedmail.testing import run_cli

ALICE, BOB = "alice@example.org", "bob@example.org"


def tree(root: Path, skip: tuple[str, ...] = ("-wal", "-shm", ".lock")) -> dict[str, object]:
    """{relative path: bytes, or the link target for a symlink} of every file under root
    (SQLite databases by their dumped content, so that page layout does not matter)."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if name.endswith(skip) or path.is_socket():
                continue
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.read_bytes()[:16] == b"SQLite format 3\x00":
                db = sqlite3.connect(path)
                out[rel] = ("db", list(db.iterdump()))
                db.close()
            else:
                out[rel] = (
                    path.read_bytes(),
                    path.stat().st_mode & 0o777,
                    int(path.stat().st_mtime),
                )
    return out


class BackupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "data"
        self.config = self.base / "twistedmail.toml"
        self.write_config(self.data_dir)

    def write_config(self, data_dir: Path) -> None:
        self.config.write_text(f'[server]\ndata_dir = "{data_dir}"\nhostname = "m.example.org"\n')

    def cli(self, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        return run_cli(self, ["--config", str(self.config), *argv], stdin)

    def fill(self) -> None:
        """Users, an alias, DKIM keys, a queued message, a Sieve script, mail with flags,
        keywords and UID gaps in two folders."""
        self.assertEqual(self.cli("init")[0], 0)
        for address in (ALICE, BOB):
            self.assertEqual(
                self.cli(
                    "user",
                    "add",
                    address,
                    "--password-stdin",
                    stdin=b"pw-" + address.encode() + b"\n",
                )[0],
                0,
            )
        self.assertEqual(self.cli("alias", "add", "postmaster@example.org", ALICE)[0], 0)
        self.assertEqual(self.cli("dkim", "generate", "example.org")[0], 0)
        Spool(self.data_dir / "queue").add(
            ALICE, ["x@remote.test"], b"Subject: q\r\n\r\nq\r\n", 1e9
        )
        user = UserMaildir(self.data_dir / "mail" / "example.org" / "alice")
        user.ensure()
        user.create("Work")
        inbox = user.folder("INBOX")
        for n in range(5):
            letters = "S" + (inbox.keyword_letters(["$Junk"]) if n % 2 else "")
            inbox.add(b"Subject: %d\r\n\r\nbody\r\n" % n, letters)
        inbox.remove(inbox.scan().messages[1])
        user.folder("Work").add(b"Subject: w\r\n\r\nw\r\n", "F")
        sieve = SieveStore(user.root)
        sieve.put("main", b'require "fileinto";\r\nfileinto "Work";\r\n')
        sieve.activate("main")

    def test_round_trip(self) -> None:
        """backup then restore into a new data dir: mail, flags, UIDs, users (passwords still
        verify), aliases, DKIM keys, the queue, Sieve scripts and the active link, equal."""
        self.fill()
        # a write the account store holds only in its WAL: the online backup must see it
        store = AccountStore(self.data_dir / "accounts.sqlite3")
        self.addCleanup(store.close)
        store.add_alias("sales@example.org", [BOB])
        backup = self.base / "backup"
        code, out, err = self.cli("backup", str(backup))
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith(f"backup in {backup}: "), out)
        manifest = json.loads((backup / "manifest.json").read_text())
        self.assertEqual((manifest["version"], manifest["config"]), (1, "twistedmail.toml"))
        self.assertEqual(
            (backup / "config" / "twistedmail.toml").read_bytes(), self.config.read_bytes()
        )
        restored = self.base / "restored"
        self.write_config(restored)
        code, out, err = self.cli("restore", str(backup))
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"into {restored}\n", out)
        files = tree(restored)
        self.assertEqual(files, tree(self.data_dir))
        names = sorted(files)
        for wanted in (
            "accounts.sqlite3",
            "dkim/",
            "queue/",
            "mail/example.org/alice/.dovecot.sieve",
            "mail/example.org/alice/sieve/main.sieve",
            "mail/example.org/alice/.Work/cur/",
            "mail/example.org/alice/dovecot-keywords",
            "mail/example.org/alice/twistedmail.index",
        ):
            self.assertTrue(any(n.startswith(wanted) for n in names), (wanted, names))
        self.assertEqual(sum(n.startswith("queue/") for n in names), 2)
        after = AccountStore(restored / "accounts.sqlite3")
        self.addCleanup(after.close)
        hashed = after.password_hash(ALICE)
        assert hashed is not None
        self.assertTrue(verify("pw-" + ALICE, hashed))
        self.assertEqual(after.alias_targets("sales@example.org"), [BOB])
        user = UserMaildir(restored / "mail" / "example.org" / "alice")
        mine = UserMaildir(self.data_dir / "mail" / "example.org" / "alice")
        for name in ("INBOX", "Work"):
            a, b = mine.folder(name).scan(), user.folder(name).scan()
            self.assertEqual(
                (a.uidvalidity, a.uidnext, [(e.uid, e.filename) for e in a.messages]),
                (b.uidvalidity, b.uidnext, [(e.uid, e.filename) for e in b.messages]),
            )
        self.assertEqual(SieveStore(user.root).active(), "main")
        self.assertEqual(len(Spool(restored / "queue").entries()), 1)

    def test_message_files_are_hard_linked(self) -> None:
        """On one file system the backup's message files are hard links (no copy)."""
        self.fill()
        backup = self.base / "backup"
        self.assertEqual(self.cli("backup", str(backup))[0], 0)
        cur = self.data_dir / "mail" / "example.org" / "alice" / "cur"
        name = sorted(os.listdir(cur))[0]
        copy = backup / "data" / "mail" / "example.org" / "alice" / "cur" / name
        self.assertEqual(copy.stat().st_ino, (cur / name).stat().st_ino)

    def test_refusals(self) -> None:
        """A non-empty backup target, a non-empty data dir without --force, and a directory
        that is no backup are refused in one line; --force moves the old data dir aside."""
        self.fill()
        backup = self.base / "backup"
        backup.mkdir()
        (backup / "x").write_text("x")
        self.assertEqual(
            self.cli("backup", str(backup)), (1, "", f"twistedmail: error: {backup} is not empty\n")
        )
        good = self.base / "good"
        self.assertEqual(self.cli("backup", str(good))[0], 0)
        self.assertEqual(
            self.cli("restore", str(good)),
            (
                1,
                "",
                f"twistedmail: error: data dir {self.data_dir} is not empty (--force moves it"
                " aside first)\n",
            ),
        )
        self.assertEqual(
            self.cli("restore", str(backup)),
            (
                1,
                "",
                f"twistedmail: error: {backup} is not a twistedmail backup (no manifest.json)\n",
            ),
        )
        before = tree(self.data_dir)
        code, out, err = self.cli("restore", str(good), "--force")
        self.assertEqual((code, err), (0, ""))
        aside = [p for p in self.base.iterdir() if p.name.startswith("data.before-restore-")]
        self.assertEqual(len(aside), 1)
        self.assertIn(f"moved the old data dir to {aside[0]}\n", out)
        self.assertEqual(tree(self.data_dir), before)
