"""Import speed (issue 13): messages per second of C{twistedmail import maildir} (a Dovecot
Maildir on disk, UIDs kept) and C{twistedmail import imap} (from a Dovecot started here, over
IMAPS with a test CA), each as the whole command a user runs, on a mailbox of N messages in
INBOX and N/10 in a subfolder (about 3 KB each, varied flags and keywords).

    .venv/bin/python bench/import_bench.py [--count 10000]

Every message is fsynced before it is linked (the import's durability contract), so the
numbers depend on the disk's fsync latency more than on Python.  Prints a table and checks
that every message arrived equal: bytes, flags, keywords and internal date.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from e2e_server import PASSWORDS, Server, make_test_ca  # noqa: E402
from test_e2e_migrate import ALICE, BOB, TLSDovecot, make_dovecot_maildir, on_disk  # noqa: E402

BIN = Path(sys.executable).parent


def cli(srv: Server, *args: str) -> None:
    """The twistedmail command, without the e2e helper's 60 s timeout."""
    subprocess.run(
        [str(BIN / "twistedmail"), "--config", str(srv.config), *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )


from twistedmail.maildir import UserMaildir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="messages in INBOX")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="twistedmail-import-bench-"))
    root.chmod(0o755)
    try:
        ca, cert, key = make_test_ca(root / "ca")
        for path in (root / "ca", ca, cert, key):
            path.chmod(0o755 if path.is_dir() else 0o644)
        maildir = root / "dv" / "users" / "alice" / "Maildir"
        counts = make_dovecot_maildir(maildir, args.count)
        source = UserMaildir(maildir)
        expected = {name: on_disk(source.folder(name)) for name in counts}
        total = sum(counts.values())
        octets = sum(p.stat().st_size for p in maildir.rglob("*,S=*"))
        srv = Server(root / "server")
        srv.add_user(ALICE, PASSWORDS[ALICE])
        srv.add_user(BOB, PASSWORDS[BOB])
        rows = []

        started = time.perf_counter()
        cli(srv, "import", "maildir", str(maildir), BOB)
        rows.append(("import maildir (Dovecot Maildir, UIDs kept)", time.perf_counter() - started))
        again = time.perf_counter()
        cli(srv, "import", "maildir", str(maildir), BOB)
        rows.append(("import maildir, second run (nothing to copy)", time.perf_counter() - again))

        dovecot = TLSDovecot(root / "dovecot", maildir, cert, key)
        dovecot.start()
        try:
            warm = dovecot.connect_tls(ca)  # Dovecot indexes the folders outside the timing
            for folder in counts:
                warm.select(folder, readonly=True)
                warm.fetch("1:*", "(FLAGS)")
            warm.logout()
            password = root / "password"
            password.write_text(PASSWORDS[ALICE] + "\n")
            command = (
                "import", "imap", ALICE, "--host", "127.0.0.1", "--port", str(dovecot.imaps_port),
                "--user", ALICE, "--password-file", str(password), "--ca-file", str(ca),
            )  # fmt: skip
            started = time.perf_counter()
            cli(srv, *command)
            rows.append(("import imap (from Dovecot over IMAPS)", time.perf_counter() - started))
            again = time.perf_counter()
            cli(srv, *command)
            rows.append(("import imap, second run (nothing to copy)", time.perf_counter() - again))
        finally:
            dovecot.stop()

        # Every message equal: bytes as served, flags and keywords, internal date; import
        # maildir keeps the UIDs too, import imap gives the folder's own (outside the timing).
        bob, alice = UserMaildir(srv.maildir(BOB)), UserMaildir(srv.maildir(ALICE))
        for folder, n in counts.items():
            assert len(expected[folder]) == n, (folder, len(expected[folder]), n)
            assert on_disk(bob.folder(folder)) == expected[folder], folder
            got = [m[1:] for m in on_disk(alice.folder(folder))]
            assert got == [m[1:] for m in expected[folder]], folder
        print(f"every message equal (bytes, flags, keywords, date) in {len(counts)} folders")

        print(
            f"{total} messages ({octets / 1e6:.1f} MB) in {len(counts)} folders,"
            f" {os.cpu_count()} CPUs"
        )
        print(f"{'step':<48} {'seconds':>8} {'msg/s':>8}")
        for name, seconds in rows:
            print(f"{name:<48} {seconds:>8.2f} {total / seconds:>8.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
