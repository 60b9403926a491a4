"""The pregreet test (C{[antispam] greet_pause}, Postfix postscreen's): the 220 greeting
waits, and a client that talks first is refused and disconnected (RFC 5321 §4.3.1: the
client waits for the greeting).  Over StringTransport with a Clock."""

from __future__ import annotations

from test_smtp_server import PEER, FakePolicy
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twistedmail.settings import SMTPSettings
from twistedmail.smtp.server import SMTPSession
from twistedmail.wire import SessionFactory


def session(pause: float) -> tuple[Clock, StringTransport, object]:
    clock = Clock()
    factory = SessionFactory(
        SMTPSession,
        SMTPSettings(max_message_size=1000, greet_pause=pause),
        policy=FakePolicy(),
        hostname="mx.example.test",
        clock=clock,
    )
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return clock, transport, proto


def test_greeting_waits() -> None:
    """Nothing is sent before the pause is over, then the usual 220."""
    clock, transport, _ = session(3)
    assert transport.value() == b""
    clock.advance(3)
    assert transport.value() == b"220 mx.example.test ESMTP twistedmail ready\r\n"


def test_talking_first_is_refused() -> None:
    """Input before the 220: 554 5.5.1, the connection closed, no greeting later."""
    clock, transport, proto = session(3)
    proto.dataReceived(b"EHLO bot.test\r\nMAIL FROM:<a@b.test>\r\n")  # type: ignore[attr-defined]
    assert transport.value() == b"554 5.5.1 Protocol error: talked before greeting\r\n"
    assert transport.disconnecting
    clock.advance(10)
    assert transport.value() == b"554 5.5.1 Protocol error: talked before greeting\r\n"


def test_no_pause_by_default() -> None:
    """greet_pause 0 (the default): the greeting at once, as before."""
    _, transport, _ = session(0)
    assert transport.value() == b"220 mx.example.test ESMTP twistedmail ready\r\n"
