"""The per-user IMAP session limit (issue 5; Dovecot's mail_max_userip_connections):
L{twistedmail.limits.UserSessionLimit} and its LOGIN/AUTHENTICATE hook in the IMAP server."""

from __future__ import annotations

import base64
from typing import Any

from test_imap_server import PASSWORD, USER, Harness
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from twistedmail.limits import UserSessionLimit

REFUSED = b"NO [UNAVAILABLE] Maximum number of connections from user+IP exceeded"


class UserSessionLimitTests(unittest.TestCase):
    def test_counts_per_user_and_ip(self) -> None:
        """Sessions are counted per user and IP: past the limit acquire is refused, another IP or
        user counts apart, release frees a slot."""
        limit = UserSessionLimit(2, "imap")
        self.assertTrue(limit.acquire("a@x.test", "192.0.2.1"))
        self.assertTrue(limit.acquire("a@x.test", "192.0.2.1"))
        self.assertFalse(limit.acquire("a@x.test", "192.0.2.1"))
        # Another IP, another user: counted apart.
        self.assertTrue(limit.acquire("a@x.test", "192.0.2.2"))
        self.assertTrue(limit.acquire("b@x.test", "192.0.2.1"))
        limit.release("a@x.test", "192.0.2.1")
        self.assertTrue(limit.acquire("a@x.test", "192.0.2.1"))
        for key in [("a@x.test", "192.0.2.1")] * 2 + [("a@x.test", "192.0.2.2")]:
            limit.release(*key)
        limit.release("b@x.test", "192.0.2.1")
        self.assertEqual(limit.open, {})

    def test_refusal_is_logged(self) -> None:
        """A refused session logs one event with user, IP, the open count and the limit."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        limit = UserSessionLimit(1, "imap")
        limit.acquire("a@x.test", "192.0.2.1")
        limit.acquire("a@x.test", "192.0.2.1")
        [event] = [e for e in events if e.get("log_namespace") == "twistedmail.limits"]
        self.assertEqual(
            (event["user"], event["ip"], event["count"], event["limit"]),
            ("a@x.test", "192.0.2.1", 1, 1),
        )


class IMAPLoginLimitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.limit = UserSessionLimit(2, "imap")
        self.first = self.harness()

    def harness(self) -> Harness:
        h = Harness(self, root=getattr(self, "first", None) and self.first.root)
        h.server.user_limit = self.limit
        return h

    def test_third_login_refused_then_allowed_after_logout(self) -> None:
        """RFC 5530: a login past imap_max_connections_per_user is NO [UNAVAILABLE], stays
        unauthenticated, and succeeds after another session logs out."""
        second, third = self.harness(), self.harness()
        self.first.login()
        second.login()
        self.assertEqual(
            third.cmd(b"a LOGIN " + USER.encode() + b' "' + PASSWORD + b'"'), [b"a " + REFUSED]
        )
        # Still not authenticated: the session may try again later.
        self.assertEqual(
            third.cmd(b"b SELECT INBOX"), [b"b BAD Command unknown or not valid in this state"]
        )
        token = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD)
        self.assertEqual(third.cmd(b"c AUTHENTICATE PLAIN " + token), [b"c " + REFUSED])
        second.server.connectionLost(None)  # the client went away
        third.login()
        self.assertEqual(self.limit.open, {(USER, third.server.peer): 2})

    def test_failed_login_takes_no_slot(self) -> None:
        """A failed login takes no session slot."""
        for _ in range(3):
            h = self.harness()
            self.assertEqual(h.cmd(b"a LOGIN " + USER.encode() + b" wrong")[0][:5], b"a NO ")
        self.assertEqual(self.limit.open, {})

    def test_disconnect_releases(self) -> None:
        """A lost connection releases its slot, once only."""
        self.first.login()
        self.first.server.connectionLost(None)
        self.first.server.connectionLost(None)  # released once only
        self.assertEqual(self.limit.open, {})
