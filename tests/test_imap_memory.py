"""Memory per idle IMAP session (issue 10): every attribute a session sets lives in
C{IMAPServer.__slots__}, so no session carries an instance C{__dict__} (45 names in a dict
cost 1.5 KiB a session; see README, "Memory per idle IMAP TLS connection")."""

from __future__ import annotations

import gc
import inspect

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.test_imap_server import MSG1, MSG2, Harness
from twistedmail.imap.mailbox import NO_UIDS
from twistedmail.imap.server import NO_CAPABILITIES


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

    def test_idle_session_holds_no_running_command(self) -> None:
        """IDLE (RFC 2177) waits as a parse state, not as a suspended command: no coroutine of
        the session is alive while it idles; DONE and a command after it in one packet are
        answered in order (RFC 2177 §3)."""
        h = Harness(self)
        h.login()
        h.cmd(b"s SELECT INBOX")
        self.assertEqual(h.cmd(b"i IDLE"), [b"+ idling"])
        gc.collect()
        running = [
            o
            for o in gc.get_objects()
            if inspect.iscoroutine(o) and o.cr_frame and o.cr_frame.f_locals.get("self") is h.server
        ]
        self.assertEqual(running, [])
        self.assertEqual(
            h.cmd(b"DONE\r\nn NOOP"), [b"i OK IDLE terminated", b"n OK NOOP completed"]
        )
        self.assertIsNone(h.server._idle_tag)


class SharedEmptySetsTests(unittest.TestCase):
    def test_sessions_share_empty_sets_and_each_reports_its_own_expunge(self) -> None:
        """Idle selected sessions hold one shared empty UID set and capability set; an
        EXPUNGE elsewhere still reaches each session once (RFC 3501 §7.4.1: at once in
        IDLE, RFC 2177 §3; at the next NOOP otherwise), and ENABLE stays per session."""
        a = Harness(self)
        a.add(MSG1)
        a.add(MSG2)
        idle = Harness(self, root=a.root, notifier=a.notifier)
        quiet = Harness(self, root=a.root, notifier=a.notifier)
        a.login()
        enabled = a.cmd(b"e ENABLE CONDSTORE")
        self.assertEqual(enabled, [b"* ENABLED CONDSTORE", b"e OK ENABLE completed"])
        self.assertEqual(a.server.enabled, {b"CONDSTORE"})
        for h in (a, idle, quiet):
            if h is not a:
                h.login()
            h.cmd(b"s SELECT INBOX")
            mbox = h.server.mbox
            self.assertIs(mbox._gone, NO_UIDS)
            self.assertIs(mbox._unapplied_recent, NO_UIDS)
        self.assertIs(idle.server.enabled, NO_CAPABILITIES)
        self.assertEqual(idle.cmd(b"i IDLE"), [b"+ idling"])
        a.cmd(b"t STORE 1 +FLAGS.SILENT (\\Deleted)")
        idle.take()
        self.assertEqual(a.cmd(b"x EXPUNGE"), [b"* 1 EXPUNGE", b"x OK EXPUNGE completed"])
        self.assertEqual(idle.take(), b"* 1 EXPUNGE\r\n")
        self.assertEqual(idle.cmd(b"DONE"), [b"i OK IDLE terminated"])
        self.assertEqual(quiet.cmd(b"n NOOP")[-2:], [b"* 1 EXPUNGE", b"n OK NOOP completed"])
        self.assertEqual(quiet.cmd(b"n NOOP"), [b"n OK NOOP completed"])
        for h in (a, idle, quiet):
            self.assertIs(h.server.mbox._gone, NO_UIDS)
            fetched = h.cmd(b"f FETCH 1 (UID)")
            self.assertEqual(fetched, [b"* 1 FETCH (UID 2)", b"f OK FETCH completed"])
