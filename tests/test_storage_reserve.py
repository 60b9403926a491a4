"""The free-space reserve for new SMTP mail (Postfix's queue_minfree): 452 4.3.1 at MAIL,
RCPT and after DATA (RFC 3463 §3.4, RFC 5321 §4.2.5), nothing delivered; a figure far above
the reserve reused for a second, one near it never (issue 10)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.test_smtp_server import SessionTestCase, talk
from twistedmail.maildir import StorageReserve, durable
from twistedmail.maildir.durable import RESERVE_MARGIN, RESERVE_RECHECK

FULL = b"452 4.3.1 Insufficient system storage\r\n"


class Switch:
    """A reserve whose answer the test sets."""

    room = True

    def has_room(self, size: int = 0) -> bool:
        return self.room


class ReserveTests(unittest.TestCase):
    def test_statvfs(self) -> None:
        """Room is what statvfs says is free, above the reserve; 0 keeps no reserve."""
        path = Path(self.mktemp())
        path.mkdir()
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        self.assertTrue(StorageReserve(path, 0).has_room(10**18))
        self.assertTrue(StorageReserve(path, 1).has_room())
        self.assertFalse(StorageReserve(path, free + 2**30).has_room())
        self.assertFalse(StorageReserve(path, 1).has_room(free + 2**30))


class FakeStatvfs:
    """os.statvfs with the free octets the test sets; counts its calls."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: Any) -> Any:
        self.calls += 1
        return os.statvfs_result((4096, 1, 0, 0, self.free, 0, 0, 0, 0, 255))


class ReuseTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.statvfs = FakeStatvfs(0)
        self.patch(durable.os, "statvfs", self.statvfs)

    def test_far_above_the_reserve(self) -> None:
        """Far above the reserve, one statvfs a second serves every check."""
        reserve = StorageReserve(Path("/"), 1000, self.clock.seconds)
        self.statvfs.free = 1000 + RESERVE_MARGIN + 10**6
        self.assertTrue(reserve.has_room(10**6))
        self.assertTrue(reserve.has_room(10**6))
        self.assertTrue(reserve.has_room())
        self.assertEqual(self.statvfs.calls, 1)
        self.clock.advance(RESERVE_RECHECK)
        self.statvfs.free = 999
        self.assertFalse(reserve.has_room())
        self.assertEqual(self.statvfs.calls, 2)

    def test_near_the_reserve(self) -> None:
        """Near the reserve (or a message that would bring it near), every check asks, so a
        disk filling up is refused at once; so is every check without a clock."""
        reserve = StorageReserve(Path("/"), 1000, self.clock.seconds)
        self.statvfs.free = 1000 + RESERVE_MARGIN // 2
        self.assertTrue(reserve.has_room())
        self.statvfs.free = 1500
        self.assertFalse(reserve.has_room(501))
        self.assertTrue(reserve.has_room(500))
        self.assertEqual(self.statvfs.calls, 3)
        self.statvfs.free = 1000 + RESERVE_MARGIN + 10
        self.assertTrue(reserve.has_room(0))
        self.assertTrue(reserve.has_room(10))  # reused
        self.assertTrue(reserve.has_room(11))  # would come nearer than the margin: asked
        self.assertEqual(self.statvfs.calls, 5)
        unclocked = StorageReserve(Path("/"), 1000)
        self.assertTrue(unclocked.has_room())
        self.assertTrue(unclocked.has_room())
        self.assertEqual(self.statvfs.calls, 7)


class SessionReserveTests(SessionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.proto, self.tr = self.ready()
        self.switch = Switch()
        self.proto.storage_reserve = self.switch  # type: ignore[assignment]

    def test_mail(self) -> None:
        """Below the reserve, MAIL FROM is 452 4.3.1."""
        self.switch.room = False
        self.assertEqual(talk(self.proto, self.tr, b"MAIL FROM:<a@b.test>\r\n"), FULL)

    def test_rcpt(self) -> None:
        """A disk that fills between MAIL and RCPT: RCPT is 452 4.3.1."""
        talk(self.proto, self.tr, b"MAIL FROM:<a@b.test>\r\n")
        self.switch.room = False
        self.assertEqual(talk(self.proto, self.tr, b"RCPT TO:<c@d.test>\r\n"), FULL)

    def test_after_data(self) -> None:
        """A disk that fills during DATA: 452 4.3.1 after the dot, nothing delivered."""
        talk(self.proto, self.tr, b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        self.switch.room = False
        self.assertEqual(talk(self.proto, self.tr, b"Subject: x\r\n\r\nbody\r\n.\r\n"), FULL)
        self.assertEqual(self.policy.delivered, [])
