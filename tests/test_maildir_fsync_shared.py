"""Concurrent deliveries to one Maildir directory share its fsync (group commit, issue 10),
and each still returns only after an fsync that began after its own link (the durability
behind SMTP's 250, RFC 5321 §6.1)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from twisted.trial import unittest

from twistedmail import maildir
from twistedmail.maildir import durable, make_maildir, write_durably


class SharedDirFsyncTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        self.events: list[str] = []
        self.first_fsync_entered = threading.Event()
        self.release_first = threading.Event()
        real_link = os.link

        def link(a: str, b: str) -> None:
            real_link(a, b)
            self.events.append("link " + Path(b).name.split(",")[0].rsplit("Q", 1)[1])

        def fsync_dir(path: Path) -> None:
            n = sum(e.endswith("begins") for e in self.events) + 1
            self.events.append(f"fsync {n} begins")
            if n == 1:
                self.first_fsync_entered.set()
                self.release_first.wait(60)
            self.events.append(f"fsync {n} ends")

        self.patch(os, "link", link)
        self.patch(durable, "fsync_dir", fsync_dir)

    def wait_for_users(self, count: int) -> None:
        for _ in range(6000):
            with maildir._dir_syncs_changed:
                state = maildir._dir_syncs.get(str(self.root / "new"))
                if state is not None and state.users == count:
                    return
            threading.Event().wait(0.01)
        self.fail(f"never {count} deliveries waiting")

    def test_two_waiting_share_the_next_fsync(self) -> None:
        """While one delivery's directory fsync runs, two more link their files and wait;
        one fsync that begins after both links covers them: 3 messages, 2 fsyncs, and no
        delivery returns before an fsync that began after its link ended."""
        returned: list[str] = []

        def deliver(text: bytes) -> None:
            base = write_durably(self.root / "new", text)
            self.events.append("return " + base.split(",")[0].rsplit("Q", 1)[1])
            returned.append(base)

        first = threading.Thread(target=deliver, args=(b"one\r\n",))
        first.start()
        self.assertTrue(self.first_fsync_entered.wait(60))
        others = [threading.Thread(target=deliver, args=(t,)) for t in (b"two\r\n", b"three\r\n")]
        for t in others:
            t.start()
        self.wait_for_users(3)
        self.release_first.set()
        for t in [first, *others]:
            t.join(60)
        self.assertEqual(len(returned), 3)
        fsyncs = [e for e in self.events if e.startswith("fsync")]
        self.assertEqual(
            fsyncs, ["fsync 1 begins", "fsync 1 ends", "fsync 2 begins", "fsync 2 ends"]
        )
        for base in returned:
            q = base.split(",")[0].rsplit("Q", 1)[1]
            linked = self.events.index("link " + q)
            done = self.events.index("return " + q)
            began = [i for i, e in enumerate(self.events) if e.endswith("begins") and i > linked]
            self.assertTrue(began, self.events)
            ended = self.events.index(self.events[began[0]].replace("begins", "ends"))
            self.assertLess(ended, done, self.events)
        self.assertEqual(maildir._dir_syncs, {})

    def test_failed_fsync_fails_only_its_caller(self) -> None:
        """A directory fsync that fails raises in the delivery that ran it; nothing is left
        waiting."""
        self.release_first.set()

        def broken(path: Path) -> None:
            raise OSError(5, "EIO")

        self.patch(durable, "fsync_dir", broken)
        self.assertRaises(OSError, write_durably, self.root / "new", b"x\r\n")
        self.assertEqual(maildir._dir_syncs, {})
