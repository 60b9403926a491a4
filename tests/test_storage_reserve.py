"""The free-space reserve for new SMTP mail (Postfix's queue_minfree): 452 4.3.1 at MAIL,
RCPT and after DATA (RFC 3463 §3.4, RFC 5321 §4.2.5), nothing delivered."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial import unittest

from tests.test_smtp_server import SessionTestCase, talk
from twistedmail.maildir import StorageReserve

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
