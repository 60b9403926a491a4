"""Memory per idle IMAP session (issue 10): every attribute a session sets lives in
C{IMAPServer.__slots__}, so no session carries an instance C{__dict__} (45 names in a dict
cost 1.5 KiB a session; see README, "Memory per idle IMAP TLS connection")."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_imap_server import MSG1, Harness


class SessionSlotsTests(unittest.TestCase):
    def test_idle_selected_session_has_no_instance_dict_entries(self) -> None:
        """After LOGIN, SELECT, FETCH, ENABLE and IDLE (RFC 2177) every attribute is in a slot:
        a new per-session attribute belongs in IMAPServer.__slots__."""
        h = Harness(self)
        h.add(MSG1)
        h.login()
        h.cmd(b"e ENABLE CONDSTORE")
        h.cmd(b"s SELECT INBOX")
        h.cmd(b"f FETCH 1 (FLAGS BODY.PEEK[])")
        self.assertEqual(h.cmd(b"i IDLE"), [b"+ idling"])
        self.assertEqual(vars(h.server), {})
        self.assertEqual(h.cmd(b"DONE"), [b"i OK IDLE terminated"])
        h.server.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(vars(h.server), {})

    def test_slots_start_at_the_base_class_defaults(self) -> None:
        """A slot hides a base class's default; a new session reads the same values stock
        Twisted's class attributes give (state unauth, no mailbox, command parsing)."""
        h = Harness(self)
        server = h.server
        started = (server.state, server.mbox, server.parseState)
        self.assertEqual(started, ("unauth", None, "command"))
        self.assertFalse(h.server._lost)
