"""The control socket's AMP commands (twistedmail.control) for the login throttle, over an
in-memory connection: ThrottleList pages the blocks, ThrottleUnblock lifts them (issue 9)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial import unittest

from twistedmail import control
from twistedmail.auth import AuthCache
from twistedmail.throttle import LoginThrottle, ThrottlePolicy


async def no_flush() -> int:
    return 0


class ThrottleCommandTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.throttle = LoginThrottle(self.clock, ThrottlePolicy(block_after=1))

    def ask(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        server = control.ControlProtocol(no_flush, self.throttle)
        client = amp.AMP()
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
        d: defer.Deferred[dict[str, Any]] = client.callRemote(command, **arguments)
        pump.flush()
        return self.successResultOf(d)

    def test_list_pages_and_unblock(self) -> None:
        """Blocks come as JSON pages under the AMP value limit; unblock answers the counts."""
        self.patch(control, "THROTTLE_PAGE", 130)
        for i in range(5):
            self.throttle.failed("192.0.2.1", f"user{i}@example.test")
        first = self.ask(control.ThrottleList, start=0)
        self.assertEqual(first["next"], 2)
        self.assertEqual(
            first["blocks"],
            '[["ip+account", "192.0.2.1", "user0@example.test", 900.0, 1],'
            '["ip+account", "192.0.2.1", "user1@example.test", 900.0, 1]]',
        )
        self.assertEqual(self.ask(control.ThrottleList, start=4)["next"], 0)
        self.assertEqual(
            self.ask(control.ThrottleUnblock, target="192.0.2.1"), {"lifted": 5, "forgotten": 5}
        )
        self.assertEqual(self.ask(control.ThrottleList, start=0), {"blocks": "[]", "next": 0})


class AuthFlushCommandTests(unittest.TestCase):
    def test_flush_user(self) -> None:
        """AuthFlush forgets the user's cached logins and answers how many (issue 10)."""
        cache = AuthCache(Clock(), 300)
        cache.add("alice@example.test", "pw", "HASH")
        cache.add("bob@example.test", "pw", "HASH")
        server = control.ControlProtocol(no_flush, None, cache.flush)
        client = amp.AMP()
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
        d = client.callRemote(control.AuthFlush, user="alice@example.test")
        pump.flush()
        self.assertEqual(self.successResultOf(d), {"flushed": 1})
        self.assertFalse(cache.check("alice@example.test", "pw", "HASH"))
        self.assertTrue(cache.check("bob@example.test", "pw", "HASH"))

    def test_no_cache(self) -> None:
        """With the cache off ([auth] cache_ttl = 0) AuthFlush answers 0."""
        server = control.ControlProtocol(no_flush, None, None)
        client = amp.AMP()
        _, _, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
        d = client.callRemote(control.AuthFlush, user="alice@example.test")
        pump.flush()
        self.assertEqual(self.successResultOf(d), {"flushed": 0})
